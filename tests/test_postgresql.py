"""The PostgreSQL backend and the hot standby (issue 10 items 4 and 5), against a real
PostgreSQL server (tests/postgres.py) and real daemon processes."""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path

import peewee
import pytest
from lxml import etree

from nebula_xr.config import ConfigError, Layout, parse_config
from nebula_xr.database import Database, PluginTable, _PostgresWriter
from nebula_xr.migrate import migrate
from tests.oned import OneDaemon, wait_for, write_conf
from tests.postgres import CommitCutter, PostgresServer
from tests.test_haizea_daemon import SCHEDULER as HAIZEA
from tests.test_haizea_daemon import _vm as haizea_vm
from tests.test_haizea_daemon import lease_field, lease_state
from tests.test_tutorial import TUTORIAL, add_hosts, wait_state


def _pg_conf(location: Path, postgres: PostgresServer, db_name: str, extra: str = "") -> Path:
    return write_conf(location, extra=f"{postgres.oned_conf(db_name)}\n{extra}")


def _rows(postgres: PostgresServer, db_name: str, sql: str, *args: object) -> list[tuple]:
    with postgres.settings(db_name).connect("test") as connection:
        return connection.execute(sql, args).fetchall()


def _terminate(postgres: PostgresServer, db_name: str, application: str) -> None:
    """End the daemon's one server connection named ``application``, as a crash would."""
    terminated = _rows(
        postgres,
        db_name,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = %s AND datname = %s",
        application,
        db_name,
    )
    assert terminated == [(True,)]


@pytest.fixture
def db_name(postgres: PostgresServer) -> str:
    return postgres.create_database()


@pytest.fixture
def one(tmp_path: Path, postgres: PostgresServer, db_name: str) -> Iterator[OneDaemon]:
    _pg_conf(tmp_path, postgres, db_name)
    daemon = OneDaemon(tmp_path).start()
    yield daemon
    daemon.stop()


def test_the_db_vector_chooses_the_backend(tmp_path: Path) -> None:
    layout = Layout(tmp_path, tmp_path, tmp_path, tmp_path / "lock")
    assert parse_config("", layout).postgresql is None
    assert parse_config('DB = [ backend = "sqlite" ]\n', layout).postgresql is None
    settings = parse_config(
        'DB = [ backend = "postgresql", server = "db1", port = 0, user = "one",\n'
        '       passwd = "s3cret", db_name = "nebula" ]\n',
        layout,
    ).postgresql
    assert settings is not None
    assert (settings.server, settings.port, settings.user, settings.passwd) == (
        "db1",
        5432,
        "one",
        "s3cret",
    )
    assert settings.db_name == "nebula"
    assert "s3cret" not in settings.describe()
    with pytest.raises(ConfigError, match="sqlite or postgresql, not 'mysql'"):
        parse_config('DB = [ backend = "mysql" ]\n', layout)
    with pytest.raises(ConfigError, match="DB port must be an integer"):
        parse_config('DB = [ backend = "postgresql", port = "x; DROP" ]\n', layout)


def test_a_daemon_on_postgresql_keeps_its_state_there(
    tmp_path: Path, postgres: PostgresServer, db_name: str
) -> None:
    _pg_conf(tmp_path, postgres, db_name)
    one = OneDaemon(tmp_path).start()
    try:
        assert db_name in "".join(one.startup)
        add_hosts(one, "node01", "node02")
        network = "NAME = lan\nTYPE = RANGED\nNETWORK_ADDRESS = 192.168.0.0\nNETWORK_SIZE = C\n"
        assert one.call("one.vnallocate", network) == [True, 0]
        assert one.call("one.vmallocate", TUTORIAL + "\nNIC = [ NETWORK = lan ]") == [True, 0]
        assert one.call("one.vmallocate", "NAME = waiting\n") == [True, 1]
        # The reply came after the commit: the row is in PostgreSQL already.
        assert _rows(postgres, db_name, "SELECT oid, state FROM vm_pool ORDER BY oid") == [
            (0, 1),
            (1, 1),
        ]
        assert one.call("one.vmdeploy", 0, 1) == [True]
        wait_state(one, 0, 3, 3)
        before = {
            "vm": [one.call("one.vmget_info", vid) for vid in (0, 1)],
            "host": one.call("one.hostinfo", 1),
            "vn": one.call("one.vninfo", 0),
        }
        # A lease's IP (192.168.0.x as an integer) needs 64-bit integers, as in SQLite.
        assert _rows(postgres, db_name, "SELECT count(*) FROM leases WHERE ip > 2147483647") == [
            (1,)
        ]
    finally:
        assert one.stop() == 0
    assert not (tmp_path / "var" / "one.db").exists()

    one = OneDaemon(tmp_path).start()
    try:
        after_vm = [one.call("one.vmget_info", vid) for vid in (0, 1)]
        assert [text.split("MEMORY")[0] for _, text in after_vm] == [
            text.split("MEMORY")[0] for _, text in before["vm"]
        ]
        assert [t.split("Template")[1] for _, t in after_vm] == [
            t.split("Template")[1] for _, t in before["vm"]
        ]
        host = one.call("one.hostinfo", 1)[1]
        assert host.split("HOST SHARES")[1] == before["host"][1].split("HOST SHARES")[1]
        assert one.call("one.vninfo", 0) == before["vn"]
        assert one.call("one.vmallocate", "NAME = next\n") == [True, 2]
        assert one.call("one.vmaction", "shutdown", 0) == [True]
        wait_state(one, 0, 6)
        wait_for(lambda: "RUNNING_VMS  = 0" in one.call("one.hostinfo", 1)[1])
        assert _rows(postgres, db_name, "SELECT state FROM vm_pool WHERE oid = 0") == [(6,)]
    finally:
        one.stop()


def test_a_change_postgresql_refuses_is_undone_and_refused(
    one: OneDaemon, postgres: PostgresServer, db_name: str
) -> None:
    assert one.call("one.vmallocate", "NAME = kept\n") == [True, 0]
    with postgres.settings(db_name).connect("test") as connection:
        connection.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'refused by a trigger'; END $$"
        )
        # Only the new VM's template rows: the allocation is refused, the rest goes on.
        connection.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON vm_attributes FOR EACH ROW "
            "WHEN (NEW.value = 'lost') EXECUTE FUNCTION refuse()"
        )
    assert one.call("one.vmallocate", "NAME = lost\n") == [
        False,
        "Error inserting VM in the database, check oned.log",
    ]
    assert one.call("one.vmget_info", 1)[0] is False
    # The refused change blocked nothing else: a life-cycle step on the kept VM commits.
    assert one.call("one.vmaction", "hold", 0) == [True]
    assert _rows(postgres, db_name, "SELECT oid, state FROM vm_pool") == [(0, 2)]
    log = (one.location / "var" / "oned.log").read_text()
    assert "refused by a trigger" in log


def test_a_lost_database_connection_is_reopened_and_the_change_acknowledged(
    one: OneDaemon, postgres: PostgresServer, db_name: str
) -> None:
    assert one.call("one.vmallocate", "NAME = first\n") == [True, 0]
    _terminate(postgres, db_name, "nebula-xr writer")
    assert one.call("one.vmallocate", "NAME = second\n") == [True, 1]
    assert _rows(postgres, db_name, "SELECT oid FROM vm_pool ORDER BY oid") == [(0,), (1,)]


@pytest.fixture
def cutter(postgres: PostgresServer) -> Iterator[CommitCutter]:
    proxy = CommitCutter(postgres.port)
    yield proxy
    proxy.close()


@pytest.fixture
def one_via_cutter(
    tmp_path: Path, postgres: PostgresServer, db_name: str, cutter: CommitCutter
) -> Iterator[OneDaemon]:
    """A daemon whose database connections all go through ``cutter``."""
    conf = postgres.oned_conf(db_name).replace(f"port = {postgres.port}", f"port = {cutter.port}")
    write_conf(tmp_path, extra=conf)
    daemon = OneDaemon(tmp_path).start()
    yield daemon
    daemon.stop()


def _allocate_within(one: OneDaemon, template: str, seconds: float = 30) -> object:
    """one.vmallocate's answer, failing (instead of hanging) if none comes in time."""
    pool = concurrent.futures.ThreadPoolExecutor(1)
    try:
        return pool.submit(one.call, "one.vmallocate", template).result(seconds)
    finally:
        pool.shutdown(wait=False)  # a call still waiting ends with the daemon


def _template_rows(postgres: PostgresServer, db_name: str, vid: int) -> list[tuple]:
    return _rows(
        postgres,
        db_name,
        "SELECT name, count(*) FROM vm_attributes WHERE id = %s GROUP BY name ORDER BY name",
        vid,
    )


def test_a_commit_whose_answer_is_lost_is_acknowledged_once(
    one_via_cutter: OneDaemon, postgres: PostgresServer, db_name: str, cutter: CommitCutter
) -> None:
    one = one_via_cutter
    assert one.call("one.vmallocate", "NAME = before\nCPU = 1\n") == [True, 0]
    cutter.arm(b"reply-lost", "reply-lost")
    assert _allocate_within(one, "NAME = reply-lost\nCPU = 1\n") == [True, 1]
    assert cutter.cut.is_set()
    # The server committed before the connection went: the writer asked it, by the
    # transaction's id, instead of inserting the template rows a second time.
    assert _template_rows(postgres, db_name, 1) == _template_rows(postgres, db_name, 0)
    assert _rows(postgres, db_name, "SELECT count(*) FROM vm_pool WHERE oid = 1") == [(1,)]
    log = (one.location / "var" / "oned.log").read_text()
    assert re.search(r"lost during COMMIT .*: transaction \d+ was committed", log)
    assert one.call("one.vmallocate", "NAME = after\n") == [True, 2]


@pytest.mark.parametrize("mode", ["never-sent", "half-open"])
def test_a_commit_cut_before_the_server_got_it_is_retried(
    one_via_cutter: OneDaemon,
    postgres: PostgresServer,
    db_name: str,
    cutter: CommitCutter,
    mode: str,
) -> None:
    one = one_via_cutter
    assert one.call("one.vmallocate", "NAME = before\nCPU = 1\n") == [True, 0]
    cutter.arm(b"not-committed", mode)
    # half-open: the server still holds the transaction, and its lock on the new VM's
    # row, until the writer ends that server process; only then can the retry commit.
    assert _allocate_within(one, "NAME = not-committed\nCPU = 1\n") == [True, 1]
    assert cutter.cut.is_set()
    assert _template_rows(postgres, db_name, 1) == _template_rows(postgres, db_name, 0)
    log = (one.location / "var" / "oned.log").read_text()
    assert re.search(r"lost during COMMIT .*: transaction \d+ was not committed; retrying", log)
    assert one.call("one.vmget_info", 1)[0] is True


def test_a_transaction_the_server_never_had_counts_as_not_committed(
    postgres: PostgresServer, db_name: str
) -> None:
    """After a fail-over to a server that never saw the transaction (a promoted replica),
    pg_xact_status refuses the id as in its future: the writer retries instead of waiting
    for an answer that never comes."""
    reports: list[str] = []
    stopping = threading.Event()
    stopping.set()  # were the answer not understood, the writer would give up in 5 s
    writer = _PostgresWriter(postgres.settings(db_name), reports.append, stopping)
    future = _rows(postgres, db_name, "SELECT pg_current_xact_id()::text::bigint")[0][0] + 10**6
    try:
        assert writer._committed(future, 0, ConnectionError("lost")) is False
    finally:
        writer.close()
    assert reports == [
        f"Connection to {postgres.settings(db_name).describe()} lost during COMMIT (lost): "
        f"transaction {future} is unknown to the server; retrying"
    ]


#: Values a client controls, which reach PostgreSQL only as parameters.
_HOSTILE = [
    "'; DROP TABLE vm_pool; --",
    '"quoted" \\ back\\slash',
    "%s %(name)s %% $1 $$ $tag$",
    "E'\\x00' /* */ -- ",
    "ünïcödé ✓ 漢字 \U0001f600",
    "a" * 5000,
]


def test_hostile_values_round_trip_through_postgresql(
    tmp_path: Path, postgres: PostgresServer, db_name: str
) -> None:
    rng = random.Random(10)
    alphabet = "'\\%$;:-/*()[]=,\t ab\u00e9\u4e2d"
    values = _HOSTILE + ["".join(rng.choices(alphabet, k=rng.randint(1, 40))) for _ in range(20)]
    _pg_conf(tmp_path, postgres, db_name)
    one = OneDaemon(tmp_path).start()
    try:
        before = {}
        for value in values:
            quote = '"' if '"' not in value else "'"  # 1.2 templates have no escapes
            template = f"NAME = vm\nNOTE = [ text = {quote}{value}{quote} ]\n"
            ok, vid = one.call("one.vmallocate", template)
            if ok:
                before[vid] = one.call("one.vmget_info", vid)
        assert len(before) >= len(_HOSTILE)
    finally:
        assert one.stop() == 0
    assert _rows(postgres, db_name, "SELECT count(*) FROM vm_pool") == [(len(before),)]
    one = OneDaemon(tmp_path).start()
    try:
        for vid, info in before.items():
            assert one.call("one.vmget_info", vid) == info
    finally:
        one.stop()


# --- migration ---------------------------------------------------------------------------


def _nebula_xr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nebula_xr", *args], capture_output=True, text=True, timeout=120
    )


def test_a_1_2_one_db_is_migrated_and_served(
    tmp_path: Path, postgres: PostgresServer, db_name: str
) -> None:
    sqlite_site, pg_site = tmp_path / "sqlite", tmp_path / "pg"
    sqlite_site.mkdir()
    pg_site.mkdir()
    write_conf(sqlite_site)
    one = OneDaemon(sqlite_site).start()
    try:
        add_hosts(one, "node01", "node02")
        network = "NAME = lan\nTYPE = RANGED\nNETWORK_ADDRESS = 10.1.0.0\nNETWORK_SIZE = C\n"
        assert one.call("one.vnallocate", network)[0]
        assert one.call("one.vmallocate", TUTORIAL + "\nNIC = [ NETWORK = lan ]") == [True, 0]
        assert one.call("one.vmallocate", "NAME = waiting\n") == [True, 1]
        assert one.call("one.vmdeploy", 0, 1) == [True]
        wait_state(one, 0, 3, 3)
        pending = one.call("one.vmget_info", 1)
        network_info = one.call("one.vninfo", 0)
    finally:
        assert one.stop() == 0
    with one.db() as source:
        # A 1.2 oned's one.db has only the nine 1.2 tables.
        source.execute("DROP TABLE user_pool")
    with one.db() as source:
        counts = {
            table: source.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("vm_pool", "vm_attributes", "history", "host_pool", "leases")
        }
        vm_rows = source.execute("SELECT * FROM vm_pool ORDER BY oid").fetchall()

    url = postgres.url(db_name)
    done = _nebula_xr("db", "migrate", "--from", f"sqlite:{one.db_path}", "--to", url)
    assert done.returncode == 0, done.stderr
    assert "Copied" in done.stdout
    for table, count in counts.items():
        assert _rows(postgres, db_name, f"SELECT count(*) FROM {table}") == [(count,)]
    assert _rows(postgres, db_name, "SELECT * FROM vm_pool ORDER BY oid") == vm_rows

    # A second copy into the now filled database is refused and changes nothing.
    again = _nebula_xr("db", "migrate", "--from", f"sqlite:{one.db_path}", "--to", url)
    assert again.returncode == 1
    assert "already holds rows in vm_pool" in again.stderr
    assert _rows(postgres, db_name, "SELECT count(*) FROM vm_pool") == [(2,)]

    _pg_conf(pg_site, postgres, db_name)
    served = OneDaemon(pg_site).start()
    try:
        state = served.vm_state(0)
        assert state == (3, 3)
        assert served.call("one.vmget_info", 1) == pending
        assert served.call("one.vninfo", 0) == network_info
        assert served.call("one.hostinfo", 1)[0] is True
        assert served.call("one.vmallocate", "NAME = new\n") == [True, 2]
        # oneadmin was created in PostgreSQL at the first start, as on a 1.2 one.db.
        assert served.call14("one.vm.info", 1)[0] is True
    finally:
        served.stop()


def _monitoring_times(one: OneDaemon, hid: int) -> list[str]:
    ok, document = one.call14("one.host.monitoring", hid)
    assert ok, document
    return [host.findtext("LAST_MON_TIME") for host in etree.fromstring(document)]


BEST_EFFORT = 'START = best_effort, DURATION = "01:00:00", PREEMPTIBLE = yes'


def test_every_table_of_a_daemon_and_its_scheduler_plugin_is_migrated(
    tmp_path: Path, postgres: PostgresServer, db_name: str
) -> None:
    """A one.db written by a daemon with Haizea as its scheduler: the plugin's finished
    leases and the monitoring history move to PostgreSQL with the 1.2 tables."""
    sqlite_site, pg_site = tmp_path / "sqlite", tmp_path / "pg"
    sqlite_site.mkdir()
    pg_site.mkdir()
    write_conf(sqlite_site, scheduler=HAIZEA)
    one = OneDaemon(sqlite_site).start()
    try:
        add_hosts(one, "node01", "node02")
        ok, running = one.call("one.vmallocate", haizea_vm("batch", BEST_EFFORT))
        assert ok
        wait_for(lambda: one.vm_state(running) == (3, 3), what="the best-effort VM running")
        # Three whole-host nodes on two hosts: rejected at once, kept as a finished lease.
        gang = "START = now, DURATION = unlimited, PREEMPTIBLE = no, GROUP = three"
        rejected = [one.call("one.vmallocate", haizea_vm("gang", gang))[1] for _ in range(3)]
        wait_for(lambda: lease_state(one, rejected[0]) == "rejected", what="the gang rejected")
        wait_for(lambda: len(_monitoring_times(one, 0)) >= 2, what="monitoring samples")
        infos = {vid: one.call("one.vmget_info", vid) for vid in (running, *rejected)}
    finally:
        assert one.stop() == 0
    with one.db() as source:
        tables = [
            name
            for (name,) in source.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"
            )
        ]
        counts = {
            name: source.execute(f"SELECT count(*) FROM {name}").fetchone()[0] for name in tables
        }
        finished = source.execute("SELECT * FROM haizea_finished ORDER BY lid").fetchall()
        samples = source.execute("SELECT * FROM nebula_xr_monitoring ORDER BY time").fetchall()
    # What a daemon with Haizea keeps besides the 1.2 tables, each with rows to copy.
    assert {"user_pool", "nebula_xr_monitoring", "haizea_finished"} <= set(tables)
    assert all(counts[name] > 0 for name in ("history", "user_pool", "haizea_finished"))
    assert counts["nebula_xr_monitoring"] >= 2

    url = postgres.url(db_name)
    done = _nebula_xr("db", "migrate", "--from", f"sqlite:{one.db_path}", "--to", url)
    assert done.returncode == 0, done.stderr
    for name, count in counts.items():
        assert _rows(postgres, db_name, f"SELECT count(*) FROM {name}") == [(count,)], name
    assert _rows(postgres, db_name, "SELECT * FROM haizea_finished ORDER BY lid") == finished
    assert _rows(postgres, db_name, "SELECT * FROM nebula_xr_monitoring ORDER BY time") == samples

    write_conf(pg_site, scheduler=HAIZEA, extra=postgres.oned_conf(db_name))
    served = OneDaemon(pg_site).start()
    try:
        for vid, info in infos.items():
            assert (
                served.call("one.vmget_info", vid)[1].split("MEMORY")[0]
                == info[1].split("MEMORY")[0]
            )
        # The plugin's table: the rejected lease is listed again, with its VMs.
        assert lease_state(served, rejected[0]) == "rejected"
        assert lease_field(served, rejected[0], "VMS") == ",".join(map(str, rejected))
        # The monitoring history: every sample taken before the move is served.
        times = {str(int(row[2])) for row in samples if row[0] == "host" and row[1] == 0}
        assert times <= set(_monitoring_times(served, 0))
        assert served.call("one.vmallocate", "NAME = next\n") == [True, rejected[-1] + 1]
    finally:
        served.stop()


class _NoteRow(PluginTable):
    """A plugin table whose key PostgreSQL draws from a sequence."""

    id = peewee.AutoField()
    note = peewee.TextField()

    class Meta:
        table_name = "notes_plugin_notes"


def test_a_plugin_table_s_sequence_continues_after_the_copied_ids(
    tmp_path: Path, postgres: PostgresServer, db_name: str
) -> None:
    path = tmp_path / "one.db"
    database = Database(path)
    database.open([_NoteRow])
    database.close()
    with sqlite3.connect(path) as source:
        source.executemany("INSERT INTO notes_plugin_notes VALUES (?, ?)", [(3, "a"), (7, "b")])
    copied = migrate(path, postgres.settings(db_name), [_NoteRow])
    assert copied["notes_plugin_notes"] == 2
    assert _rows(
        postgres, db_name, "INSERT INTO notes_plugin_notes (note) VALUES ('c') RETURNING id"
    ) == [(8,)]


def test_migrate_refuses_a_table_no_installed_plugin_declares(
    tmp_path: Path, postgres: PostgresServer, db_name: str
) -> None:
    write_conf(tmp_path)
    one = OneDaemon(tmp_path).start()
    assert one.call("one.vmallocate", "NAME = kept\n") == [True, 0]
    assert one.stop() == 0
    with one.db() as source:
        source.execute("CREATE TABLE gone_plugin_state (x INTEGER)")
        source.execute("INSERT INTO gone_plugin_state VALUES (1)")
    done = _nebula_xr(
        "db", "migrate", "--from", f"sqlite:{one.db_path}", "--to", postgres.url(db_name)
    )
    assert done.returncode == 1
    assert "an installed plugin declares: gone_plugin_state" in done.stderr
    # Nothing was written: not even the tables.
    assert _rows(
        postgres, db_name, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    ) == [(0,)]


def test_migrate_refuses_what_is_not_a_one_db(tmp_path: Path, postgres: PostgresServer) -> None:
    not_one_db = tmp_path / "other.db"
    not_one_db.write_bytes(b"")
    url = postgres.url(postgres.create_database())
    done = _nebula_xr("db", "migrate", "--from", f"sqlite:{not_one_db}", "--to", url)
    assert done.returncode == 1
    assert "is not a one.db" in done.stderr
    done = _nebula_xr("db", "migrate", "--from", str(not_one_db), "--to", url)
    assert done.returncode == 2
    assert "must be sqlite:PATH" in done.stderr


# --- hot standby -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _listening_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    inodes.add(fields[9])
    return inodes


def _listens(pid: int) -> bool:
    """True if the process holds a listening TCP socket."""
    sockets = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            sockets.add(target[8:-1])
    return bool(sockets & _listening_inodes())


class _Stderr:
    """Collects a process's stderr lines in a thread."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        assert process.stderr is not None
        stream = process.stderr
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream) -> None:
        for line in iter(stream.readline, b""):
            self.lines.append(line.decode(errors="replace"))

    def text(self) -> str:
        return "".join(self.lines)


def _start_standby(location: Path) -> tuple[subprocess.Popen[bytes], _Stderr]:
    auth = location / "one_auth"
    env = dict(os.environ, ONE_LOCATION=str(location), ONE_AUTH=str(auth))
    process = subprocess.Popen(
        [sys.executable, "-m", "nebula_xr", "--conf", str(location / "etc" / "oned.conf")],
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    return process, _Stderr(process)


def _two_front_ends(
    tmp_path: Path, postgres: PostgresServer, db_name: str, tm_extras: tuple[str, str] = ("", "")
) -> tuple[list[Path], int]:
    """Two daemons' locations on one database and one port of one address (clients never
    change their URL), with the TM settings given; and that port."""
    port = _free_port()
    sites = [tmp_path / "a", tmp_path / "b"]
    for site, tm_extra in zip(sites, tm_extras, strict=True):
        site.mkdir()
        conf = write_conf(site, extra=postgres.oned_conf(db_name), tm_extra=tm_extra)
        conf.write_text(conf.read_text().replace("PORT = 0\n", f"PORT = {port}\n"))
        (site / "one_auth").write_text("oneadmin:test-admin-password\n")
    return sites, port


def test_the_standby_takes_over_when_the_active_daemon_is_killed(
    tmp_path: Path, postgres: PostgresServer, db_name: str
) -> None:
    sites, port = _two_front_ends(tmp_path, postgres, db_name)
    active = OneDaemon(sites[0]).start()
    standby, standby_err = _start_standby(sites[1])
    try:
        wait_for(lambda: "Standby:" in standby_err.text(), what="the standby to wait")
        add_hosts(active, "node01")
        assert active.call("one.vmallocate", TUTORIAL) == [True, 0]
        assert active.call("one.vmdeploy", 0, 0) == [True]
        wait_state(active, 0, 3, 3)
        assert not _listens(standby.pid)
        assert "XML-RPC on" not in standby_err.text()
        assert f":{port}/" in active.url

        # Allocate in a loop; every acknowledged id must survive the kill.
        acknowledged: list[int] = []
        refusals: list[object] = []
        stop = threading.Event()

        def allocate() -> None:
            while not stop.is_set():
                try:
                    with xmlrpc.client.ServerProxy(active.url) as proxy:
                        ok, vid = proxy.one.vmallocate("sessionID", "NAME = loop\n")
                except (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError):
                    continue  # the daemon was killed mid-call, or nobody serves yet
                (acknowledged if ok else refusals).append(vid)

        client = threading.Thread(target=allocate)
        client.start()
        wait_for(lambda: len(acknowledged) >= 20, what="allocations before the kill")
        assert active.process is not None
        killed_at = time.monotonic()
        active.process.send_signal(signal.SIGKILL)
        active.process.wait()
        wait_for(lambda: "XML-RPC on" in standby_err.text(), timeout=30, what="the takeover")
        served = None
        deadline = time.monotonic() + 30
        count_at_kill = len(acknowledged)
        while time.monotonic() < deadline:
            if len(acknowledged) > count_at_kill:
                served = time.monotonic() - killed_at
                break
            time.sleep(0.01)
        stop.set()
        client.join(30)
        assert served is not None, (refusals, standby_err.text())
        assert refusals == []
        print(f"\nfail-over: the standby served {served:.2f} s after the SIGKILL")
        assert served < 10
        acknowledged_before = sorted(acknowledged)

        # Every acknowledged VM is there, in the database and in the new daemon's memory.
        stored = {row[0] for row in _rows(postgres, db_name, "SELECT oid FROM vm_pool")}
        assert set(acknowledged_before) <= stored
        with xmlrpc.client.ServerProxy(active.url) as proxy:
            for vid in acknowledged_before[-5:]:
                assert proxy.one.vmget_info("sessionID", vid)[0] is True
            # The VM deployed before the kill was reconciled and still runs.
            info = proxy.one.vmget_info("sessionID", 0)[1]
            assert "STATE             : 3" in info
            assert proxy.one.vmallocate("sessionID", "NAME = after\n")[0] is True
        assert "Active: holding the database lock" in standby_err.text()
        assert f"XML-RPC on {active.url}" in standby_err.text()
    finally:
        active.stop()
        if standby.poll() is None:
            standby.send_signal(signal.SIGTERM)
            standby.wait(10)


def test_an_active_daemon_that_loses_its_lock_stops_at_once(
    one: OneDaemon, postgres: PostgresServer, db_name: str
) -> None:
    assert one.call("one.vmallocate", "NAME = before\n") == [True, 0]
    _terminate(postgres, db_name, "nebula-xr lock")
    # Another daemon may hold the lock now: this one must not go on writing.
    assert one.process is not None
    assert one.process.wait(10) == 1
    log = (one.location / "var" / "oned.log").read_text()
    assert "Lost the database lock" in log


def test_the_standby_reconciles_a_vm_the_dead_daemon_left_mid_deploy(
    tmp_path: Path, postgres: PostgresServer, db_name: str
) -> None:
    sites, _port = _two_front_ends(tmp_path, postgres, db_name, (", DELAY = 3600", ""))
    active = OneDaemon(sites[0]).start()
    standby, standby_err = _start_standby(sites[1])
    try:
        wait_for(lambda: "Standby:" in standby_err.text(), what="the standby to wait")
        add_hosts(active, "node01")
        assert active.call("one.vmallocate", TUTORIAL) == [True, 0]
        assert active.call("one.vmdeploy", 0, 0) == [True]
        wait_state(active, 0, 3, 1)  # PROLOG: the transfer takes an hour on this front-end
        assert active.process is not None
        active.process.send_signal(signal.SIGKILL)
        active.process.wait()
        wait_for(lambda: "XML-RPC on" in standby_err.text(), timeout=30, what="the takeover")
        # The new active daemon transfers and deploys again (its drivers answer at once).
        wait_state(active, 0, 3, 3)
        assert _rows(postgres, db_name, "SELECT state, lcm_state FROM vm_pool") == [(3, 3)]
    finally:
        active.stop()
        if standby.poll() is None:
            standby.send_signal(signal.SIGTERM)
            standby.wait(10)
