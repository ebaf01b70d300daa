"""pytest fixtures for tests that need fake cluster hosts.

They are registered once, in ``tests/conftest.py``: a test just names them::

    def test_x(fast_cluster): ...

* ``cluster`` (session): 3 hosts node01..node03, fake Xen toolstack in fast mode;
* ``fast_cluster`` (function): the same cluster, its toolstack reset (no domain, no fault);
* ``qemu_cluster`` (function): the same cluster with the toolstack in qemu mode, reset before
  and after (so its guests never outlive the test).

They skip, with the reason, when the machine cannot run the cluster (not root, no network
namespaces, tests/cluster/install.sh not run), except under CI (``CI=true``), where a missing
prerequisite fails the test instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from tests.cluster.cluster import Cluster, guest_built

N_HOSTS = 3
INSTALL = "run tests/cluster/install.sh as root"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"cluster tests cannot run: {reason}", pytrace=False)
    pytest.skip(f"cluster tests cannot run: {reason}")


def _check_prerequisites() -> None:
    if os.geteuid() != 0:
        _unavailable("not root")
    probe = "nebula-xr-probe"
    added = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if added.returncode != 0:
        _unavailable(f"'ip netns add' failed: {added.stderr.strip()}")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    for tool in ("/usr/sbin/sshd", "/usr/bin/python3", "unshare"):
        if shutil.which(tool) is None:
            _unavailable(f"{tool} is missing ({INSTALL})")


@pytest.fixture(scope="session", name="cluster")
def cluster_fixture() -> Iterator[Cluster]:
    _check_prerequisites()
    c = Cluster().up(N_HOSTS)
    try:
        c.reset_xen()
        yield c
    finally:
        c.down()


@pytest.fixture(name="fast_cluster")
def fast_cluster_fixture(cluster: Cluster) -> Cluster:
    cluster.reset_xen()
    return cluster


@pytest.fixture(name="qemu_cluster")
def qemu_cluster_fixture(cluster: Cluster) -> Iterator[Cluster]:
    if shutil.which("qemu-system-x86_64") is None or not guest_built():
        _unavailable(f"QEMU or the test guest is missing ({INSTALL})")
    cluster.reset_xen(mode="qemu")
    try:
        yield cluster
    finally:
        cluster.reset_xen()


cluster = cluster_fixture
fast_cluster = fast_cluster_fixture
qemu_cluster = qemu_cluster_fixture
