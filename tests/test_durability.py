"""Memory never ahead of one.db (issue 11 item 8), with real reader processes holding
SQLite locks on a real file: a change is durable and acknowledged, or undone and refused;
ids are never re-handed with what an older object left behind."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.oned import OneDaemon, wait_for, write_conf
from tests.test_tutorial import TUTORIAL, add_hosts, wait_state

#: A 1.2 client in the middle of a read: a transaction holding SQLite's SHARED lock, which
#: keeps a rollback-journal writer from committing until the reader lets go.
_READER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=5, isolation_level=None)
db.execute("BEGIN")
db.execute("SELECT * FROM vm_pool").fetchall()
print("holding", flush=True)
sys.stdin.readline()
db.execute("COMMIT")
"""


class ReaderHoldingALock:
    """A separate process holding a read lock on one.db until :meth:`release`."""

    def __init__(self, db_path: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", _READER, str(db_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline() == "holding\n"

    def release(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write("go\n")
            self.process.stdin.close()
            assert self.process.wait(10) == 0


@pytest.fixture
def location(tmp_path: Path) -> Path:
    write_conf(tmp_path, extra="DB_JOURNAL = delete\nDB_BUSY_TIMEOUT = 1")
    return tmp_path


@pytest.fixture
def one(location: Path) -> Iterator[OneDaemon]:
    daemon = OneDaemon(location).start()
    yield daemon
    daemon.stop()


def _log(location: Path) -> str:
    return (location / "var" / "oned.log").read_text(errors="replace")


def _call_in_background(
    one: OneDaemon, method: str, *args: object
) -> tuple[threading.Thread, list]:
    """Call in a thread; ``reply`` gets the answer, or the exception if there is none."""
    reply: list = []

    def call() -> None:
        try:
            reply.append(one.call(method, *args))
        except OSError as error:  # the daemon was killed before it answered
            reply.append(error)

    thread = threading.Thread(target=call)
    thread.start()
    return thread, reply


def _rows(one: OneDaemon, sql: str, *args: object) -> list[tuple]:
    with sqlite3.connect(one.db_path, timeout=5) as db:
        return db.execute(sql, args).fetchall()


def test_a_refused_allocation_is_undone_in_memory(one: OneDaemon, location: Path) -> None:
    assert one.call("one.vnallocate", "NAME = lan\nTYPE = FIXED\nLEASES = [ IP = 10.0.0.1 ]")[0]
    reader = ReaderHoldingALock(one.db_path)
    try:
        reply = one.call("one.vmallocate", 'NAME = lost\nNIC = [ NETWORK = "lan" ]')
    finally:
        reader.release()
    assert reply == [False, "Error inserting VM in the database, check oned.log"]
    assert "undone" in _log(location)
    # Nothing of it in memory: no VM, its directory gone, its lease free again...
    assert one.call("one.vmget_info", 0) == [False, "Error getting vm with VID = 0"]
    assert not (location / "var" / "0").exists()
    assert "USED = 0" in one.call("one.vninfo", 0)[1]
    # ...and nothing on disk.
    assert _rows(one, "SELECT * FROM vm_pool") == []
    assert _rows(one, "SELECT used FROM leases") == [(0,)]
    # The same lease can be handed to the next VM, which is durable.
    ok, vid = one.call("one.vmallocate", 'NAME = kept\nNIC = [ NETWORK = "lan" ]')
    assert ok
    assert _rows(one, "SELECT oid FROM vm_pool") == [(vid,)]
    assert _rows(one, "SELECT vid, used FROM leases") == [(vid, 1)]


def test_refused_host_and_network_changes_are_undone(one: OneDaemon) -> None:
    reader = ReaderHoldingALock(one.db_path)
    try:
        host = one.call("one.hostallocate", "node01", "im_xen", "vmm_xen", "tm_nfs", True)
        network = one.call(
            "one.vnallocate", "NAME = lan\nTYPE = RANGED\nNETWORK_ADDRESS = 10.0.0.0"
        )
    finally:
        reader.release()
    assert host == [False, "Can not allocate host node01 in the HostPool, returned error code [-1]"]
    assert network[0] is False
    assert one.call("one.hostinfo", 0) == [False, "Error getting host with HID = 0"]
    assert one.call("one.vninfo", 0) == [False, "Error getting Virtual Network with NID = 0"]

    hid = add_hosts(one, "node02")[0]
    reader = ReaderHoldingALock(one.db_path)
    try:
        assert one.call("one.hostdelete", hid) == [False]
    finally:
        reader.release()
    assert one.call("one.hostinfo", hid)[0] is True
    assert _rows(one, "SELECT host_name FROM host_pool") == [("node02",)]


def test_a_commit_blocked_for_a_while_is_retried_and_acknowledged(
    one: OneDaemon, location: Path
) -> None:
    one.stop()
    write_conf(location, extra="DB_JOURNAL = delete\nDB_BUSY_TIMEOUT = 60")
    one.start()
    reader = ReaderHoldingALock(one.db_path)
    try:
        thread, reply = _call_in_background(one, "one.vmallocate", "NAME = patient\n")
        wait_for(lambda: "is locked by another process" in _log(location), what="busy retries")
        assert reply == []  # not acknowledged while it is not on disk
    finally:
        reader.release()
    thread.join(30)
    assert reply == [[True, 0]]
    assert _rows(one, "SELECT oid FROM vm_pool") == [(0,)]


def test_a_life_cycle_step_is_never_refused_but_kept_until_durable(
    one: OneDaemon, location: Path
) -> None:
    add_hosts(one, "node01")
    assert one.call("one.vmallocate", TUTORIAL) == [True, 0]
    reader = ReaderHoldingALock(one.db_path)
    try:
        thread, reply = _call_in_background(one, "one.vmdeploy", 0, 0)
        # Past the busy timeout: the drivers already act on the deploy, so it cannot be
        # taken back; the daemon keeps retrying instead of answering.
        wait_for(lambda: "(retrying)" in _log(location), what="the first try given up")
        assert reply == []
        # Reads are answered meanwhile (after at most a second), not held up with it.
        reader_thread, info = _call_in_background(one, "one.vmget_info", 0)
        reader_thread.join(10)
        assert info and info[0][0] is True
        assert _rows(one, "SELECT * FROM history") == []
    finally:
        reader.release()
    thread.join(30)
    assert reply == [[True]]
    assert _rows(one, "SELECT vid, hid FROM history") == [(0, 0)]
    wait_state(one, 0, 3, 3)


def test_an_id_re_handed_after_a_crash_gets_a_fresh_directory(location: Path) -> None:
    write_conf(location, extra="DB_JOURNAL = delete\nDB_BUSY_TIMEOUT = 60")
    one = OneDaemon(location).start()
    try:
        reader = ReaderHoldingALock(one.db_path)
        try:
            thread, reply = _call_in_background(one, "one.vmallocate", "NAME = lost\n")
            wait_for(lambda: "is locked by another process" in _log(location), what="busy")
            assert one.process is not None
            one.process.send_signal(signal.SIGKILL)
            one.process.wait(10)
            thread.join(30)
        finally:
            reader.release()
        assert len(reply) == 1 and isinstance(reply[0], OSError)  # never acknowledged
        assert (location / "var" / "0" / "vm.log").exists()  # what the lost VM left behind
        one.stop()
        one = OneDaemon(location).start()
        ok, vid = one.call("one.vmallocate", "NAME = fresh\n")
        assert ok
        log = location / "var" / str(vid) / "vm.log"
        wait_for(lambda: "New VM state is PENDING" in log.read_text(), what="the PENDING line")
        assert log.read_text().count("New VM state is PENDING") == 1
        assert "lost" not in one.call("one.vmget_info", vid)[1]
    finally:
        one.stop()


def test_a_deleted_hosts_id_is_not_reused_under_its_running_vms(location: Path) -> None:
    write_conf(location)
    one = OneDaemon(location).start()
    try:
        assert add_hosts(one, "node01", "node02") == [0, 1]
        assert one.call("one.vmallocate", TUTORIAL) == [True, 0]
        assert one.call("one.vmdeploy", 0, 1) == [True]
        wait_state(one, 0, 3, 3)
        assert one.call("one.hostdelete", 1) == [True]
        one.stop()
        one = OneDaemon(location).start()
        hid = add_hosts(one, "node03")[0]
        assert hid == 2
        assert one.call("one.vmaction", "shutdown", 0) == [True]
        wait_state(one, 0, 6)
        for host in (0, hid):
            assert "RUNNING_VMS  = 0" in one.call("one.hostinfo", host)[1]
        assert _rows(one, "SELECT min(running_vms), min(cpu_usage) FROM host_shares") == [(0, 0)]
    finally:
        one.stop()


def test_a_change_the_file_refuses_for_good_blocks_nothing_else(one: OneDaemon) -> None:
    add_hosts(one, "node01")
    assert one.call("one.vmallocate", TUTORIAL) == [True, 0]
    with sqlite3.connect(one.db_path, timeout=5) as db:
        db.execute(
            "CREATE TRIGGER refuse_history BEFORE INSERT ON history "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"
        )
    assert one.call("one.vmdeploy", 0, 0) == [False, "Can not deploy VM 0, can not insert history"]
    # Only that change was left out: everything written with it or after it is durable.
    assert one.call("one.vmallocate", "NAME = next\n") == [True, 1]
    assert _rows(one, "SELECT oid FROM vm_pool ORDER BY oid") == [(0,), (1,)]
    assert one.call("one.hostallocate", "node02", "im_xen", "vmm_xen", "tm_nfs", True) == [True, 1]
    assert _rows(one, "SELECT host_name FROM host_pool ORDER BY oid") == [("node01",), ("node02",)]
