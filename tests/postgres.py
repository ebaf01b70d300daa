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
import selectors
import shutil
import socket
import subprocess
import tempfile
import threading
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


class CommitCutter:
    """A TCP proxy between the daemon and the server that, once armed, cuts the writer's
    connection at its COMMIT: the one after a statement carrying ``marker``.

    The writer's connection is the one whose start-up message names the application
    ``nebula-xr writer``; the others pass untouched. How the COMMIT is cut:

    * ``"reply-lost"``: the COMMIT reaches the server, which commits and answers; the
      answer is dropped with the connection;
    * ``"never-sent"``: both connections close before the COMMIT is passed on: the server
      sees its client go and aborts the transaction;
    * ``"half-open"``: the daemon's side closes, but the server's stays open, silent, as
      after a partition: the transaction stays in progress until someone ends it.
    """

    _WRITER = b"nebula-xr writer\x00"
    _COMMIT = b"COMMIT\x00"  # the query's text, in a Query or a Parse message

    def __init__(self, server_port: int) -> None:
        self.server_port = server_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._plan: tuple[bytes, str] | None = None
        #: Set once a COMMIT was cut as planned.
        self.cut = threading.Event()
        self._held: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, marker: bytes, mode: str) -> None:
        assert mode in ("reply-lost", "never-sent", "half-open")
        with self._lock:
            self._plan = (marker, mode)
            self.cut.clear()

    def close(self) -> None:
        self._listener.close()
        for held in self._held:
            held.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _address = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.server_port))
            threading.Thread(target=self._relay, args=(client, server), daemon=True).start()

    def _take_plan(self, seen: bytes) -> str | None:
        """The cut to make now, if this data (from the writer) is the planned COMMIT."""
        with self._lock:
            if self._plan is None or self._COMMIT not in seen:
                return None
            marker, mode = self._plan
            if marker not in seen:
                return None
            self._plan = None
            return mode

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        is_writer = False
        since_commit = b""  # what the writer sent since its last COMMIT
        with selectors.DefaultSelector() as selector:
            selector.register(client, selectors.EVENT_READ, server)
            selector.register(server, selectors.EVENT_READ, client)
            while True:
                for key, _events in selector.select():
                    source, destination = key.fileobj, key.data
                    data = source.recv(65536)
                    if not data:
                        client.close()
                        server.close()
                        return
                    if source is client:
                        is_writer = is_writer or self._WRITER in data
                        since_commit = (since_commit + data) if is_writer else b""
                        mode = self._take_plan(since_commit) if is_writer else None
                        if self._COMMIT in since_commit:
                            since_commit = b""
                        if mode is not None:
                            self._cut(mode, data, client, server)
                            return
                    destination.sendall(data)

    def _cut(self, mode: str, commit: bytes, client: socket.socket, server: socket.socket) -> None:
        if mode == "reply-lost":
            server.sendall(commit)
            server.recv(65536)  # the server's answer: it committed
            server.close()
        elif mode == "never-sent":
            server.close()
        else:
            self._held.append(server)
        client.close()
        self.cut.set()
