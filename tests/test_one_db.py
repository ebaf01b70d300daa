"""one.db as the 1.2 clients see it: exact schema, their queries while the daemon runs,
no torn state, no "database is locked", and everything back after a restart."""

from __future__ import annotations

import sqlite3
import threading

import pytest

from tests.oned import OneDaemon, wait_for, write_conf
from tests.test_tutorial import TUTORIAL, add_hosts, wait_state

#: database.md §2: table → (column, declared type, position in the primary key).
SCHEMA = {
    "vm_pool": [("oid", "INTEGER", 1)]
    + [
        (c, t, 0)
        for c, t in [
            ("uid", "INTEGER"),
            ("last_poll", "INTEGER"),
            ("template_id", "INTEGER"),
            ("state", "INTEGER"),
            ("lcm_state", "INTEGER"),
            ("stime", "INTEGER"),
            ("etime", "INTEGER"),
            ("deploy_id", "TEXT"),
            ("memory", "INTEGER"),
            ("cpu", "INTEGER"),
            ("net_tx", "INTEGER"),
            ("net_rx", "INTEGER"),
        ]
    ],
    "vm_attributes": [
        ("id", "INTEGER", 0),
        ("name", "TEXT", 0),
        ("type", "INTEGER", 0),
        ("value", "TEXT", 0),
    ],
    "history": [("vid", "INTEGER", 1), ("seq", "INTEGER", 2)]
    + [
        (c, "TEXT" if c in ("host_name", "vm_dir", "vm_mad", "tm_mad") else "INTEGER", 0)
        for c in "host_name vm_dir hid vm_mad tm_mad stime etime pstime petime rstime retime estime eetime reason".split()
    ],
    "host_pool": [
        ("oid", "INTEGER", 1),
        ("host_name", "TEXT", 0),
        ("state", "INTEGER", 0),
        ("im_mad", "TEXT", 0),
        ("vm_mad", "TEXT", 0),
        ("tm_mad", "TEXT", 0),
        ("last_mon_time", "INTEGER", 0),
        ("managed", "INTEGER", 0),
    ],
    "host_attributes": [
        ("id", "INTEGER", 1),
        ("name", "TEXT", 2),
        ("type", "INTEGER", 0),
        ("value", "TEXT", 0),
    ],
    "host_shares": [("hid", "INTEGER", 1), ("endpoint", "TEXT", 0)]
    + [
        (c, "INTEGER", 0)
        for c in "disk_usage mem_usage cpu_usage max_disk max_mem max_cpu running_vms".split()
    ],
    "network_pool": [
        ("oid", "INTEGER", 0),
        ("uid", "INTEGER", 0),
        ("name", "TEXT", 1),
        ("type", "INTEGER", 0),
        ("bridge", "TEXT", 0),
    ],
    "vn_template": [
        ("id", "INTEGER", 0),
        ("name", "TEXT", 0),
        ("type", "INTEGER", 0),
        ("value", "TEXT", 0),
    ],
    "leases": [
        ("oid", "INTEGER", 1),
        ("ip", "INTEGER", 2),
        ("mac_prefix", "INTEGER", 0),
        ("mac_suffix", "INTEGER", 0),
        ("vid", "INTEGER", 0),
        ("used", "INTEGER", 0),
    ],
}

COLUMN_COUNTS = {"vm_pool": 13, "history": 16, "host_pool": 8, "host_shares": 9, "vm_attributes": 4}


@pytest.fixture
def one(tmp_path):
    write_conf(tmp_path)
    daemon = OneDaemon(tmp_path).start()
    yield daemon
    daemon.stop()


def test_schema_is_exactly_1_2(one: OneDaemon) -> None:
    with one.db() as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        # Plus 1.4's user table (api-1.4.md §2.5) and the monitoring history, which 1.2
        # readers never look at.
        assert tables == {*SCHEMA, "user_pool", "nebula_xr_monitoring"}
        for table, columns in SCHEMA.items():
            info = db.execute(f"PRAGMA table_info({table})").fetchall()
            assert [(row[1], row[2], row[5]) for row in info] == columns, table
        assert db.execute("SELECT count(*) FROM sqlite_master WHERE type='trigger'").fetchone() == (
            0,
        )


def _mm_sched_cycle(db: sqlite3.Connection) -> None:
    """The queries of one mm_sched cycle, with its column-count checks."""
    for (hid,) in db.execute("SELECT oid FROM host_pool WHERE state != 4").fetchall():
        (row,) = db.execute("SELECT * FROM host_pool WHERE oid = ?", (hid,)).fetchall()
        assert len(row) == 8 and None not in row
        db.execute("SELECT * FROM host_attributes WHERE id = ?", (hid,)).fetchall()
        for row in db.execute("SELECT * FROM host_shares WHERE hid = ?", (hid,)):
            assert len(row) == 9 and None not in row
    for (vid,) in db.execute("SELECT oid FROM vm_pool WHERE state == 1").fetchall():
        (row,) = db.execute("SELECT * FROM vm_pool WHERE oid = ?", (vid,)).fetchall()
        assert len(row) == 13 and None not in row[:8] + row[9:]
        attributes = db.execute("SELECT * FROM vm_attributes WHERE id = ?", (row[3],)).fetchall()
        assert attributes, f"VM {vid} visible without its template (torn write)"


def _cli_and_haizea(db: sqlite3.Connection) -> None:
    for row in db.execute("SELECT * FROM vm_pool WHERE state <> 6").fetchall():
        assert len(row) == 13
        names = db.execute("SELECT * FROM vm_attributes WHERE id = ?", (row[3],)).fetchall()
        assert any(r[1] == "NAME" and r[2] == 0 for r in names)
        for record in db.execute("SELECT * FROM history WHERE vid = ?", (row[0],)):
            assert len(record) == 16 and None not in record
    for oid, _name in db.execute(
        "SELECT oid, host_name FROM host_pool WHERE state != 4"
    ).fetchall():
        values = dict(db.execute("SELECT name, value FROM host_attributes WHERE id = ?", (oid,)))
        for key in ("TOTALCPU", "TOTALMEMORY"):
            if key in values:
                int(values[key])  # Haizea needs plain integers
    db.execute('SELECT * FROM network_pool WHERE name = "Private LAN"').fetchall()


def test_clients_read_while_the_daemon_writes(one: OneDaemon) -> None:
    add_hosts(one, "node01", "node02")
    assert one.call(
        "one.vnallocate", 'NAME = "Private LAN"\nTYPE = RANGED\nNETWORK_ADDRESS = 10.0.0.0\n'
    )[0]
    errors: list[BaseException] = []
    stop = threading.Event()
    reads = [0]

    def reader() -> None:
        db = sqlite3.connect(one.db_path, timeout=1.0)  # shorter than any client's
        try:
            while not stop.is_set():
                with db:
                    db.execute("BEGIN")
                    _mm_sched_cycle(db)
                    _cli_and_haizea(db)
                reads[0] += 1
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            db.close()

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        template = TUTORIAL + '\nNIC = [ NETWORK = "Private LAN" ]'
        for _ in range(40):
            ok, vid = one.call("one.vmallocate", template)
            assert ok
        for vid in range(0, 40, 4):
            assert one.call("one.vmdeploy", vid, vid % 2) == [True]
        for vid in range(0, 40, 4):
            wait_state(one, vid, 3, 3)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, errors
    assert reads[0] > 10


def test_everything_survives_a_restart(tmp_path) -> None:
    write_conf(tmp_path)
    one = OneDaemon(tmp_path).start()
    add_hosts(one, "node01", "node02")
    assert one.call(
        "one.vnallocate",
        "NAME = lan\nTYPE = RANGED\nNETWORK_ADDRESS = 10.1.0.0\nNETWORK_SIZE = C\n",
    )[0]
    assert one.call("one.vmallocate", TUTORIAL + "\nNIC = [ NETWORK = lan ]")[0]
    assert one.call("one.vmallocate", "NAME = waiting\n") == [True, 1]
    assert one.call("one.vmdeploy", 0, 1) == [True]
    wait_state(one, 0, 3, 3)
    before = {
        "vm": [one.call("one.vmget_info", vid) for vid in (0, 1)],
        "host": [one.call("one.hostinfo", hid) for hid in (0, 1)],
        "vn": one.call("one.vninfo", 0),
    }
    assert one.stop() == 0

    one = OneDaemon(tmp_path).start()
    try:
        after_vm = [one.call("one.vmget_info", vid) for vid in (0, 1)]
        # Polling goes on after the restart, so compare what polling does not touch.
        assert [text.split("MEMORY")[0] for _, text in after_vm] == [
            text.split("MEMORY")[0] for _, text in before["vm"]
        ]
        assert [t.split("Template")[1] for _, t in after_vm] == [
            t.split("Template")[1] for _, t in before["vm"]
        ]
        host = one.call("one.hostinfo", 1)[1]
        assert host.split("HOST SHARES")[1] == before["host"][1][1].split("HOST SHARES")[1]
        assert one.call("one.vninfo", 0) == before["vn"]
        assert one.call("one.vmallocate", "NAME = next\n") == [True, 2]
        # The pools are live again: the VM still runs its life cycle.
        assert one.call("one.vmaction", "shutdown", 0) == [True]
        wait_state(one, 0, 6)
        wait_for(lambda: "RUNNING_VMS  = 0" in one.call("one.hostinfo", 1)[1])
    finally:
        one.stop()


def test_a_second_daemon_refuses_to_start(one: OneDaemon) -> None:
    second = OneDaemon(one.location)
    with pytest.raises(RuntimeError, match="another nebula-xr"):
        second.start(timeout=10)  # returns once the refused process has exited
    assert one.call("one.vmallocate", "NAME = still-here\n")[0]
