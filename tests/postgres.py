"""A throw-away PostgreSQL server for the tests: Debian's binaries, a cluster in a temporary
directory, an ephemeral TCP port on 127.0.0.1 and the unix socket in that directory.

PostgreSQL refuses to run as root: as root the cluster belongs to the ``postgres`` account
(created by Debian's package) and its programs run through ``runuser``. The tests skip only
when the binaries are missing and the tests are not root (root, as in CI, gets them from
``tests/cluster/install.sh``, so there a missing server is a failure).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nebula_xr.postgresql import PostgresSettings

_names = itertools.count()


def binaries() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4])
    )
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class PostgresServer:
    bindir: Path
    directory: Path
    port: int
    run_as: list[str]

    def settings(self, db_name: str) -> PostgresSettings:
        return PostgresSettings(server="127.0.0.1", port=self.port, user="nebula", db_name=db_name)

    def url(self, db_name: str) -> str:
        return f"postgresql://nebula@127.0.0.1:{self.port}/{db_name}"

    def _run(self, *command: str) -> None:
        subprocess.run([*self.run_as, *command], check=True, capture_output=True, timeout=120)

    def create_database(self) -> str:
        """A new, empty database for one test."""
        name = f"one_{os.getpid()}_{next(_names)}"
        self._run(
            str(self.bindir / "createdb"), "-h", str(self.directory), "-p", str(self.port),
            "-U", "nebula", name,
        )  # fmt: skip
        return name

    def oned_conf(self, db_name: str) -> str:
        """The DB vector of an oned.conf using that database."""
        return (
            f'DB = [ backend = "postgresql", server = "127.0.0.1", port = {self.port}, '
            f'user = "nebula", db_name = "{db_name}" ]'
        )

    def stop(self) -> None:
        subprocess.run(
            [*self.run_as, str(self.bindir / "pg_ctl"), "-D", str(self.directory / "data"),
             "-m", "immediate", "-w", "stop"],
            capture_output=True,
            timeout=60,
        )  # fmt: skip
        shutil.rmtree(self.directory, ignore_errors=True)


def start_server(bindir: Path) -> PostgresServer:
    """initdb and start a server in a new temporary directory (as ``postgres`` if root)."""
    directory = Path(tempfile.mkdtemp(prefix="nebula-pg-"))
    run_as: list[str] = []
    if os.geteuid() == 0:
        account = pwd.getpwnam("postgres")
        os.chown(directory, account.pw_uid, account.pw_gid)
        run_as = ["runuser", "-u", "postgres", "--"]
    data = directory / "data"
    port = _free_port()
    server = PostgresServer(bindir, directory, port, run_as)
    try:
        server._run(
            str(bindir / "initdb"), "-D", str(data), "-U", "nebula", "--auth=trust",
            "--no-sync", "-E", "UTF8", "--locale=C",
        )  # fmt: skip
        options = (
            f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={directory} "
            "-c max_connections=100 -c shared_buffers=32MB"
        )
        server._run(
            str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l",
            str(directory / "log"), "-w", "-t", "60", "start",
        )  # fmt: skip
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    bindir = binaries()
    if bindir is None:
        if os.geteuid() != 0:
            pytest.skip("PostgreSQL (initdb) is not installed")
        pytest.fail("PostgreSQL is not installed: run tests/cluster/install.sh (or tests/run)")
    server = start_server(bindir)
    try:
        yield server
    finally:
        server.stop()
