"""Start-up problems as a new user meets them, on the real daemon process: each is one
clear line on stderr (and in oned.log when its directory already exists), exit status 1,
no traceback, and nothing created on disk; and what the start-up line tells."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from tests.oned import OneDaemon, write_conf

ROOT = Path(__file__).resolve().parent.parent


def run_daemon(location: Path, conf: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """Run nebula-xr to its end (it must refuse to start)."""
    conf = conf or location / "etc" / "oned.conf"
    environ = dict(os.environ, ONE_LOCATION=str(location), **env)
    return subprocess.run(
        [sys.executable, "-m", "nebula_xr", "--conf", str(conf)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
    )


def refused(done: subprocess.CompletedProcess) -> str:
    """The one error line of a daemon that refused to start."""
    assert done.returncode == 1, done
    assert done.stdout == "", done
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def created(location: Path) -> set[str]:
    return {path.name for path in location.iterdir()} - {"etc"}


def test_port_in_use_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    write_conf(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = tmp_path / "etc" / "oned.conf"
        conf.write_text(conf.read_text().replace("PORT = 0", f"PORT = {port}"))
        line = refused(run_daemon(tmp_path))
    assert line == f"Error: Can not listen on 127.0.0.1:{port}: Address already in use"
    assert created(tmp_path) == set()


def test_refusal_is_also_in_an_existing_oned_log(tmp_path: Path) -> None:
    write_conf(
        tmp_path,
        extra='IM_MAD = [ name = "im_kvm", executable = "im_dummy", arguments = "kvm.conf" ]',
    )
    (tmp_path / "var").mkdir()  # as a previous run left it
    line = refused(run_daemon(tmp_path))
    missing = tmp_path / "etc" / "kvm.conf"
    assert line == f"Error: Driver im_kvm: its arguments file {missing} does not exist"
    log = (tmp_path / "var" / "oned.log").read_text()
    assert log.endswith(f"[ONE][E]: {line.removeprefix('Error: ')}\n")
    assert {path.name for path in (tmp_path / "var").iterdir()} == {"oned.log"}  # no db, lock


def test_missing_default_file_is_named(tmp_path: Path) -> None:
    write_conf(
        tmp_path,
        drivers='VM_MAD = [ name = "vmm_xen", executable = "vmm_dummy", '
        'default = "vmm_xen/vmm_xen.conf" ]',
    )
    line = refused(run_daemon(tmp_path))
    assert "vmm_xen: its default file" in line and line.endswith("does not exist")
    assert created(tmp_path) == set()


def test_one_location_must_be_a_directory(tmp_path: Path) -> None:
    conf = write_conf(tmp_path / "real")
    not_a_directory = tmp_path / "one"
    not_a_directory.write_text("")
    assert refused(run_daemon(not_a_directory, conf)) == (
        f"Error: ONE_LOCATION={not_a_directory} is not a directory"
    )
    nowhere = tmp_path / "nowhere"
    assert refused(run_daemon(nowhere, conf)) == f"Error: ONE_LOCATION={nowhere} does not exist"
    assert not nowhere.exists()
    assert created(tmp_path / "real") == set()


def test_syntax_error_gives_the_file_and_its_real_line(tmp_path: Path) -> None:
    conf = write_conf(tmp_path)
    lines = conf.read_text().splitlines()
    lines[4:4] = ["# a comment", "", 'IM_MAD = [ name = "im_kvm", executable = "im_dummy"']
    conf.write_text("\n".join(lines) + "\n")
    line = refused(run_daemon(tmp_path))
    assert line == (f"Error: {conf}:7:52: syntax error, unexpected NL, expecting COMMA or CBRACKET")
    assert created(tmp_path) == set()


def test_unknown_key_is_a_warning_and_the_startup_line_says_what_runs(tmp_path: Path) -> None:
    write_conf(
        tmp_path,
        extra="HOST_MONITORING_INTERVALL = 10\nDB_JOURNAL = wal\nDRIVER_TIMEOUT = 30",
        scheduler='SCHEDULER = [ plugin = "sched_rank", interval = 30 ]',
    )
    one = OneDaemon(tmp_path)
    environ = dict(os.environ, ONE_LOCATION=str(tmp_path))
    process = subprocess.Popen(
        [sys.executable, "-m", "nebula_xr", "--conf", str(one.conf)],
        env=environ,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stderr is not None
        warning = process.stderr.readline()
        startup = process.stderr.readline()
    finally:
        process.terminate()
        process.wait(20)
    assert warning == (
        f"Warning: {one.conf}: unknown key HOST_MONITORING_INTERVALL (ignored)\n"
    )  # and nothing about the known DB_JOURNAL and DRIVER_TIMEOUT
    var = tmp_path / "var"
    assert f", database {var / 'one.db'}, log {var / 'oned.log'}, " in startup
    assert startup.rstrip().endswith(
        "drivers im_xen (im_dummy), vmm_xen (vmm_dummy), tm_nfs (tm_dummy), scheduler sched_rank"
    )
    assert "unknown key HOST_MONITORING_INTERVALL" in (var / "oned.log").read_text()
    assert process.returncode == 0


@pytest.fixture(scope="module")
def broken_plugin():
    """A package of broken plugins, installed as users install plugins."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-build-isolation",
            str(ROOT / "tests" / "broken_plugin"),
        ],
        check=True,
    )
    assert metadata.distribution("nebula-xr-broken").version == "0.3"
    yield
    subprocess.run(
        [sys.executable, "-m", "pip", "uninstall", "-q", "-y", "nebula-xr-broken"], check=False
    )


def test_broken_plugin_not_named_does_not_stop_the_daemon(tmp_path, broken_plugin) -> None:
    write_conf(tmp_path)
    one = OneDaemon(tmp_path).start()
    try:
        assert one.call("one.hostallocate", "node01", "im_xen", "vmm_xen", "tm_nfs", True) == [
            True,
            0,
        ]
    finally:
        assert one.stop() == 0


@pytest.mark.parametrize(
    ("drivers", "reason"),
    [
        (
            'IM_MAD = [ name = "im_xen", executable = "im_broken" ]',
            "RuntimeError: im_broken cannot be imported: its dependency is missing",
        ),
        (
            'VM_MAD = [ name = "vmm_xen", executable = "vmm_misspelt", type = "xen" ]',
            "unknown hook 'nebula_xr_vmm_drvier'",
        ),
    ],
)
def test_broken_plugin_named_is_named_with_its_package(
    tmp_path, broken_plugin, drivers: str, reason: str
) -> None:
    write_conf(tmp_path, drivers=drivers)
    line = refused(run_daemon(tmp_path))
    plugin = drivers.split('executable = "')[1].split('"')[0]
    assert f"Plugin '{plugin}' (package nebula-xr-broken 0.3)" in line
    assert reason in line
    assert created(tmp_path) == set()


def test_list_plugins_shows_the_broken_ones(broken_plugin) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nebula_xr", "--list-plugins"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "im_broken      nebula-xr-broken 0.3" in out and "BROKEN: RuntimeError" in out
