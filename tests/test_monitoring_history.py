"""The monitoring history: samples of host monitoring and VM polling, bounded in time,
kept in one.db's ``nebula_xr_monitoring`` table across restarts, and read through
``one.host.monitoring`` / ``one.vm.monitoring``.

The unit tests run :class:`MonitoringHistory` on a ``task.Clock`` with a real one.db and
its real group-commit writer thread; the daemon tests use a real daemon with the dummy
drivers."""

from __future__ import annotations

import hashlib
import queue
import sqlite3
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet import task

from nebula_xr.config import ConfigError, Layout, parse_config
from nebula_xr.database import Database
from nebula_xr.model import Host, HostShares, VirtualMachine
from nebula_xr.monitoring_history import FLUSH_INTERVAL, PURGE_BATCH, MonitoringHistory
from nebula_xr.template import Template
from tests.oned import OneDaemon, wait_for, write_conf
from tests.postgres import PostgresServer

START = 1_700_000_000.0


class WriterClock(task.Clock):
    """A task.Clock that is also the database's reactor: the writer thread's
    ``callFromThread`` answers are queued, and dropped (nothing here waits on them)."""

    def __init__(self) -> None:
        super().__init__()
        self.rightNow = START
        self.from_thread: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def callFromThread(self, function: Callable[..., Any], *args: Any) -> None:  # noqa: N802
        self.from_thread.put((function, args))


def make_host(oid: int, used_cpu: int, used_memory: int) -> Host:
    host = Host(oid, f"node{oid}", "im", "vmm", "tm", managed=True, last_mon_time=0)
    host.attributes.update(USEDCPU=str(used_cpu), USEDMEMORY=str(used_memory))
    host.shares = HostShares(hid=oid, max_cpu=200, max_mem=2097152)
    return host


def make_vm(oid: int, cpu: int, memory: int, net_tx: int, net_rx: int) -> VirtualMachine:
    vm = VirtualMachine(oid=oid, template=Template(), stime=0)
    vm.cpu, vm.memory, vm.net_tx, vm.net_rx = cpu, memory, net_tx, net_rx
    return vm


class Store:
    """one.db in a temporary directory, opened and reopened as a restart would."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.clock = WriterClock()
        self.db: Database | None = None

    def open(self, retention: int) -> MonitoringHistory:
        self.db = Database(self.path, reactor=self.clock)
        self.db.open()
        history = MonitoringHistory(self.db, self.clock, retention)
        history.startService()
        return history

    def close(self, history: MonitoringHistory) -> None:
        history.stopService()
        assert self.db is not None
        self.db.close()  # commits what is queued: the daemon's stop

    def rows(self, query: str = "SELECT count(*) FROM nebula_xr_monitoring") -> Any:
        with sqlite3.connect(self.path) as reader:
            return reader.execute(query).fetchone()[0]

    def flush_due(self) -> None:
        """Let the flush timer fire and the writer pick the batch up."""
        self.clock.advance(FLUSH_INTERVAL)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "one.db")


def test_samples_are_recorded_in_order_with_their_values(store: Store) -> None:
    history = store.open(retention=3600)
    try:
        for step in range(3):
            history.host_monitored(make_host(1, used_cpu=10 + step, used_memory=1000 * step))
            history.vm_polled(make_vm(7, cpu=step, memory=65536, net_tx=100 * step, net_rx=5))
            store.clock.advance(60)
        assert history.samples("host", 1) == [
            {
                "time": START + 60 * step,
                "used_cpu": 10.0 + step,
                "max_cpu": 200.0,
                "used_memory": 1000.0 * step,
                "max_memory": 2097152.0,
            }
            for step in range(3)
        ]
        assert history.samples("vm", 7) == [
            {
                "time": START + 60 * step,
                "cpu": float(step),
                "memory": 65536.0,
                "net_tx": 100.0 * step,
                "net_rx": 5.0,
            }
            for step in range(3)
        ]
        assert [s["time"] for s in history.samples("vm", 7, since=START + 60)] == [
            START + 60,
            START + 120,
        ]
        assert history.samples("vm", 1) == [] and history.samples("host", 7) == []
        assert history.samples("network", 1) == []
    finally:
        store.close(history)


def test_samples_survive_a_restart(store: Store) -> None:
    history = store.open(retention=3600)
    history.host_monitored(make_host(0, used_cpu=25, used_memory=4096))
    store.clock.advance(30)
    history.vm_polled(make_vm(3, cpu=50, memory=1024, net_tx=7, net_rx=9))
    before = (history.samples("host", 0), history.samples("vm", 3))
    store.close(history)  # stopped before any flush was due: the stop writes them
    assert store.rows() == 2

    store.clock.advance(600)
    history = store.open(retention=3600)
    try:
        assert (history.samples("host", 0), history.samples("vm", 3)) == before
        history.vm_polled(make_vm(3, cpu=60, memory=1024, net_tx=8, net_rx=10))
        assert [s["cpu"] for s in history.samples("vm", 3)] == [50.0, 60.0]
    finally:
        store.close(history)


def test_rows_another_hand_wrote_do_not_stop_the_start(store: Store) -> None:
    history = store.open(retention=3600)
    history.vm_polled(make_vm(3, cpu=50, memory=1024, net_tx=7, net_rx=9))
    store.close(history)
    with sqlite3.connect(store.path) as db:
        db.execute(
            "INSERT INTO nebula_xr_monitoring VALUES ('vm', 3, ?, NULL, 1, NULL, NULL, 2, 3)",
            (START + 1,),
        )
        db.execute(
            "INSERT INTO nebula_xr_monitoring VALUES ('disk', 3, ?, 1, 1, 1, 1, 1, 1)",
            (START + 2,),
        )
    history = store.open(retention=3600)
    try:
        assert [sample["cpu"] for sample in history.samples("vm", 3)] == [50.0]
    finally:
        store.close(history)


def test_the_history_is_bounded_in_memory_and_in_the_file(store: Store) -> None:
    history = store.open(retention=100)
    try:
        for _ in range(50):  # 500 s of polls every 10 s, kept for 100 s
            history.vm_polled(make_vm(1, cpu=1, memory=2, net_tx=3, net_rx=4))
            history.host_monitored(make_host(0, used_cpu=1, used_memory=2))
            store.clock.advance(10)
        now = store.clock.seconds()
        for kind, oid in (("vm", 1), ("host", 0)):
            times = [sample["time"] for sample in history.samples(kind, oid)]
            assert len(times) == 10 and min(times) >= now - 100
        # Every flush purged the rows that had expired by then.
        store.flush_due()
        window = store.clock.seconds() - 100
        kept = len(history.samples("vm", 1)) + len(history.samples("host", 0))
        assert kept == 18  # at 505 s: the polls of 410 s to 490 s

        def purged() -> bool:
            oldest = store.rows("SELECT min(time) FROM nebula_xr_monitoring")
            return store.rows() == kept and oldest >= window

        wait_for(purged, what="expired rows purged")
    finally:
        store.close(history)


def test_a_series_no_longer_recorded_expires_too(store: Store) -> None:
    """A deleted VM is polled no more: its samples go when the window passes them."""
    history = store.open(retention=100)
    try:
        history.vm_polled(make_vm(9, cpu=1, memory=2, net_tx=3, net_rx=4))
        store.clock.advance(99)
        assert len(history.samples("vm", 9)) == 1
        store.clock.advance(2)
        assert history.samples("vm", 9) == []
        store.flush_due()
        wait_for(lambda: store.rows() == 0, what="the row purged")
    finally:
        store.close(history)


def test_a_deleted_host_leaves_no_samples_for_a_host_given_its_id(store: Store) -> None:
    history = store.open(retention=3600)
    history.host_monitored(make_host(2, used_cpu=1, used_memory=2))
    history.vm_polled(make_vm(5, cpu=1, memory=2, net_tx=3, net_rx=4))
    store.flush_due()  # one written already
    history.host_monitored(make_host(2, used_cpu=1, used_memory=2))  # one still buffered
    history.host_deleted(2)
    assert history.samples("host", 2) == []
    store.close(history)
    assert store.rows("SELECT group_concat(kind || oid) FROM nebula_xr_monitoring") == "vm5"

    history = store.open(retention=3600)
    try:
        assert history.samples("host", 2) == [] and len(history.samples("vm", 5)) == 1
    finally:
        store.close(history)


def test_samples_are_written_in_batches_not_one_commit_each(store: Store) -> None:
    history = store.open(retention=3600)
    with sqlite3.connect(store.path) as reader:
        version = reader.execute("PRAGMA data_version").fetchone()[0]
        try:
            for vid in range(500):
                history.vm_polled(make_vm(vid, cpu=1, memory=2, net_tx=3, net_rx=4))
                store.clock.advance(FLUSH_INTERVAL / 1000)
            assert store.rows() == 0  # buffered: nothing handed to the writer yet
            store.clock.advance(FLUSH_INTERVAL)
            wait_for(lambda: store.rows() == 500, what="the batch committed")
            # data_version counts the other connections' commits: one for 500 samples.
            assert reader.execute("PRAGMA data_version").fetchone()[0] == version + 1
        finally:
            store.close(history)


def test_a_restart_after_a_long_stop_purges_in_batches(store: Store) -> None:
    history = store.open(retention=100)
    for vid in range(PURGE_BATCH + 10):  # each at its own time: a batch ends at the 5000th
        history.vm_polled(make_vm(vid, cpu=1, memory=2, net_tx=3, net_rx=4))
        store.clock.advance(0.001)
    store.close(history)
    assert store.rows() == PURGE_BATCH + 10

    store.clock.advance(1000)  # everything expired while the daemon was stopped
    history = store.open(retention=100)
    try:
        assert history.samples("vm", 0) == []
        store.flush_due()
        wait_for(lambda: store.rows() == 10, what="a first batch purged")
        store.flush_due()
        wait_for(lambda: store.rows() == 0, what="the rest purged")
    finally:
        store.close(history)


def test_retention_zero_keeps_nothing(store: Store) -> None:
    history = store.open(retention=0)
    try:
        history.vm_polled(make_vm(1, cpu=1, memory=2, net_tx=3, net_rx=4))
        assert history.samples("vm", 1) == []
        store.flush_due()
    finally:
        store.close(history)
    assert store.rows() == 0


@pytest.mark.parametrize(
    ("text", "retention"),
    [("", 86400), ("MONITORING_HISTORY = [ retention = 3600 ]", 3600)],
)
def test_the_retention_is_configured_in_oned_conf(text: str, retention: int) -> None:
    layout = Layout(Path("/v"), Path("/e"), Path("/v"), Path("/v/.lock"))
    config = parse_config(text, layout)
    assert config.monitoring_retention == retention
    assert config.warnings == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("MONITORING_HISTORY = 3600", "must be a vector"),
        ("MONITORING_HISTORY = [ retention = -1 ]", "must be seconds"),
        ("MONITORING_HISTORY = [ retention = 1h ]", "must be seconds"),
        ("MONITORING_HISTORY = [ keep = 1 ]", "unknown keys"),
    ],
)
def test_a_wrong_retention_is_refused(text: str, message: str) -> None:
    layout = Layout(Path("/v"), Path("/e"), Path("/v"), Path("/v/.lock"))
    with pytest.raises(ConfigError, match=message):
        parse_config(text, layout)


# -- a real daemon ------------------------------------------------------------------------


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


ALICE = f"alice:{sha1('alice-pw')}"


def monitoring(one: OneDaemon, method: str, oid: int, session: str | None = None) -> list:
    """The samples of a monitoring call, as dicts of their elements' texts."""
    ok, document = one.call14(method, oid, session=session)
    assert ok, document
    root = ElementTree.fromstring(document)
    assert root.tag == "MONITORING_DATA"
    return [{child.tag: child for child in element} for element in root]


def vm_samples(one: OneDaemon, vid: int, session: str | None = None) -> list[dict[str, int]]:
    return [
        {tag: int(element.text) for tag, element in sample.items()}
        for sample in monitoring(one, "one.vm.monitoring", vid, session)
    ]


def host_samples(one: OneDaemon, hid: int, session: str | None = None) -> list[dict[str, int]]:
    samples = []
    for sample in monitoring(one, "one.host.monitoring", hid, session):
        share = {child.tag: int(child.text) for child in sample.pop("HOST_SHARE")}
        samples.append({**{tag: int(e.text) for tag, e in sample.items()}, **share})
    return samples


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[OneDaemon, int, int]]:
    """A daemon with host node01 and a RUNNING VM of oneadmin's, and user alice."""
    write_conf(tmp_path)
    one = OneDaemon(tmp_path).start()
    try:
        ok, hid = one.call14("one.host.allocate", "node01", "im_xen", "vmm_xen", "tm_nfs")
        assert ok
        ok, vid = one.call14("one.vm.allocate", "NAME = web\nCPU = 1\nMEMORY = 64")
        assert ok
        assert one.call14("one.user.allocate", "alice", sha1("alice-pw"))[0]
        wait_for(lambda: one.call14("one.vm.deploy", vid, hid) == [True], what="deployed")
        wait_for(lambda: one.vm_state(vid) == (3, 3), what="the VM running")
        yield one, hid, vid
    finally:
        one.stop()


def spans_two_seconds(samples: list[dict[str, int]], time_tag: str) -> list[dict[str, int]]:
    """``samples`` if they were taken in at least two different seconds, else []."""
    return samples if len({sample[time_tag] for sample in samples}) >= 2 else []


def test_polls_and_monitorings_are_read_through_the_api(
    running: tuple[OneDaemon, int, int],
) -> None:
    one, hid, vid = running
    # Samples a second apart (times are whole seconds; the tests poll every second).
    polls = wait_for(lambda: spans_two_seconds(vm_samples(one, vid), "LAST_POLL"))
    # vmm_dummy's poll: all of MEMORY (64 MB, in KB) and a tenth of the CPU.
    assert {(s["ID"], s["CPU"], s["MEMORY"], s["NET_TX"], s["NET_RX"]) for s in polls} == {
        (vid, 10, 65536, 0, 0)
    }
    times = [sample["LAST_POLL"] for sample in polls]
    assert times == sorted(times) and times[0] < times[-1] <= time.time() + 1

    monitorings = wait_for(lambda: spans_two_seconds(host_samples(one, hid), "LAST_MON_TIME"))
    # im_dummy's host: 2 CPUs (200 %), 2 GB, 10 % and 256 MB of it used.
    assert {
        (s["ID"], s["USED_CPU"], s["MAX_CPU"], s["USED_MEM"], s["MAX_MEM"]) for s in monitorings
    } == {(hid, 10, 200, 262144, 2097152)}
    times = [sample["LAST_MON_TIME"] for sample in monitorings]
    assert times == sorted(times) and times[0] < times[-1]


def test_the_history_survives_a_restart(running: tuple[OneDaemon, int, int]) -> None:
    one, hid, vid = running
    wait_for(lambda: len(vm_samples(one, vid)) >= 2, what="two polls")
    wait_for(lambda: len(host_samples(one, hid)) >= 2, what="two monitorings")
    one.stop()  # SIGTERM: the buffered samples are written as the daemon stops
    polls, monitorings = stored_times(one.db_path)
    assert len(polls[vid]) >= 2 and len(monitorings[hid]) >= 2

    one.start()
    assert [s["LAST_POLL"] for s in vm_samples(one, vid)][: len(polls[vid])] == polls[vid]
    host_times = [s["LAST_MON_TIME"] for s in host_samples(one, hid)]
    assert host_times[: len(monitorings[hid])] == monitorings[hid]


def stored_times(path: Path) -> tuple[dict[int, list[int]], dict[int, list[int]]]:
    """The sample times one.db holds, by VM and by host."""
    found: tuple[dict[int, list[int]], dict[int, list[int]]] = ({}, {})
    with sqlite3.connect(path) as db:
        rows = db.execute("SELECT kind, oid, time FROM nebula_xr_monitoring ORDER BY time")
        for kind, oid, moment in rows:
            found[0 if kind == "vm" else 1].setdefault(oid, []).append(int(moment))
    return found


def test_monitoring_follows_the_ownership_rules(running: tuple[OneDaemon, int, int]) -> None:
    one, hid, vid = running
    wait_for(lambda: vm_samples(one, vid) and host_samples(one, hid), what="samples")
    # oneadmin's VM: alice may not read its polls; every user may read a host's.
    refused = one.call14("one.vm.monitoring", vid, session=ALICE)
    assert refused[0] is False and refused[1].startswith("User not authorized")
    assert {s["ID"] for s in host_samples(one, hid, session=ALICE)} == {hid}
    wrong = f"oneadmin:{sha1('not-the-password')}"
    # A wrong password gets the refusal of the info call of the same object.
    assert one.call14("one.vm.monitoring", vid, session=wrong) == one.call14(
        "one.vm.info", vid, session=wrong
    )
    assert one.call14("one.host.monitoring", hid, session=wrong) == one.call14(
        "one.host.info", hid, session=wrong
    )
    assert one.call14("one.vm.info", vid, session=wrong)[1].startswith("User not authorized")
    assert one.call14("one.host.info", hid, session=wrong)[1].startswith("User not authenticated")
    assert one.call14("one.vm.monitoring", 999) == [False, "Error getting vm with VID = 999"]
    assert one.call14("one.host.monitoring", 999) == [False, "Error getting host with HID = 999"]


def test_the_history_in_postgresql_is_kept_reloaded_and_purged(postgres: PostgresServer) -> None:
    """The same SQL on the PostgreSQL backend: batches written, reloaded at start-up,
    expired rows purged a batch at a time."""
    settings = postgres.settings(postgres.create_database())
    clock = WriterClock()

    def start(retention: int) -> tuple[Database, MonitoringHistory]:
        db = Database(Path("unused"), reactor=clock, postgresql=settings)
        db.open()
        history = MonitoringHistory(db, clock, retention)
        history.startService()
        return db, history

    def stored() -> int:
        with settings.connect("test") as connection:
            return connection.execute("SELECT count(*) FROM nebula_xr_monitoring").fetchone()[0]

    db, history = start(retention=100)
    for vid in range(PURGE_BATCH + 10):
        history.vm_polled(make_vm(vid, cpu=vid, memory=2, net_tx=3, net_rx=4))
        clock.advance(0.001)
    monitored_at = clock.seconds()
    history.host_monitored(make_host(0, used_cpu=7, used_memory=8))
    history.stopService()
    db.close()
    assert stored() == PURGE_BATCH + 11

    db, history = start(retention=100)
    try:
        assert [s["cpu"] for s in history.samples("vm", 42)] == [42.0]
        # Times come back exact (double precision: a REAL column would round by minutes).
        assert [(s["time"], s["used_cpu"]) for s in history.samples("host", 0)] == [
            (monitored_at, 7.0)
        ]
    finally:
        history.stopService()
        db.close()

    clock.advance(1000)
    db, history = start(retention=100)
    try:
        assert history.samples("vm", 42) == []
        clock.advance(FLUSH_INTERVAL)
        wait_for(lambda: stored() == 11, what="a first batch purged")
        clock.advance(FLUSH_INTERVAL)
        wait_for(lambda: stored() == 0, what="the rest purged")
    finally:
        history.stopService()
        db.close()
