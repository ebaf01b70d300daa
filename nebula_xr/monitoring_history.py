"""The monitoring history: what host monitoring and VM polling reported, over time.

The information manager and the life-cycle manager's poll only keep the last values
(host attributes and shares, vm_pool columns); the plots of the web console and the
``one.host.monitoring`` / ``one.vm.monitoring`` calls need the values before. Each
monitored host and polled VM adds a sample here; samples older than
``MONITORING_HISTORY = [ retention = N ]`` seconds are dropped.

Reads are answered from memory, so the API never waits for the file. Samples are also
kept in one.db's ``nebula_xr_monitoring`` table, an extra table 1.2 readers ignore, so
the history survives a restart: they are buffered and handed to the group-commit writer
every :data:`FLUSH_INTERVAL` seconds of the daemon clock (and when the daemon stops),
with a purge of at most :data:`PURGE_BATCH` expired rows, so no commit holds the file
long and the reactor only queues rows.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Iterator

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall

from nebula_xr.database import (
    Database,
    Delete,
    DeleteOldest,
    Insert,
    MonitoringSampleRow,
    Operation,
)
from nebula_xr.model import Host, VirtualMachine, leading_int

HOST, VM = "host", "vm"
#: The values of a sample of each kind, besides its "time", in the order they are kept.
FIELDS: dict[str, tuple[str, ...]] = {
    HOST: ("used_cpu", "max_cpu", "used_memory", "max_memory"),
    VM: ("cpu", "memory", "net_tx", "net_rx"),
}
#: Seconds between two hand-overs of buffered samples to the writer.
FLUSH_INTERVAL = 5.0
#: Expired rows deleted at most per flush (a restart after a long stop purges gradually).
PURGE_BATCH = 5000

_Sample = tuple[float, float, float, float, float]  # time and the kind's four FIELDS
_WIDTH = 5


class _Series:
    """One host's or VM's samples, oldest first, flat in an array of doubles: a day of a
    thousand VMs polled every 5 minutes takes 12 MB, not the 45 MB of tuples."""

    __slots__ = ("values",)

    def __init__(self, samples: Iterable[_Sample] = ()) -> None:
        self.values = array("d")
        for sample in samples:
            self.values.extend(sample)

    def __len__(self) -> int:
        return len(self.values) // _WIDTH

    def append(self, sample: _Sample) -> None:
        self.values.extend(sample)

    def drop_before(self, oldest: float) -> int:
        """Drop the samples older than ``oldest``; how many went."""
        values, count = self.values, 0
        while count * _WIDTH < len(values) and values[count * _WIDTH] < oldest:
            count += 1
        if count:
            del values[: count * _WIDTH]
        return count

    def since(self, oldest: float) -> Iterator[_Sample]:
        values = self.values
        for start in range(0, len(values), _WIDTH):
            if values[start] >= oldest:
                yield tuple(values[start : start + _WIDTH])  # type: ignore[misc]


def _row(kind: str, oid: int, sample: _Sample) -> tuple:
    """A ``nebula_xr_monitoring`` row, in column order."""
    time, first, second, third, fourth = sample
    if kind == HOST:  # used_cpu, max_cpu, used_memory, max_memory
        return (HOST, oid, time, first, third, second, fourth, None, None)
    return (VM, oid, time, first, second, None, None, third, fourth)


def _sample(row: tuple) -> tuple[str, int, _Sample]:
    kind, oid, time, cpu, memory, max_cpu, max_memory, net_tx, net_rx = row
    if kind == HOST:
        return kind, oid, (time, cpu, max_cpu, memory, max_memory)
    return kind, oid, (time, cpu, memory, net_tx, net_rx)


class MonitoringHistory(Service):
    """Samples of every host and VM over the last ``retention`` seconds (0: none kept).

    A twisted Service: started, it flushes on ``clock`` every :data:`FLUSH_INTERVAL`
    seconds; stopped, it flushes what is left (before the daemon closes one.db).
    """

    def __init__(self, db: Database, clock: IReactorTime, retention: int) -> None:
        self.db = db
        self.clock = clock
        self.retention = retention
        self._series: dict[tuple[str, int], _Series] = {}
        self._unwritten: list[tuple] = []
        #: Rows of one.db known to be out of the window: the purge runs while some are.
        self._expired_in_file = 0
        self._flushing = LoopingCall(self.flush)
        self._flushing.clock = clock
        self._load()

    @property
    def enabled(self) -> bool:
        return self.retention > 0

    def _load(self) -> None:
        """The samples one.db kept from the last run that are still in the window (read
        once, at start-up, like the pools); the older rows are left to the purge."""
        if not self.enabled:
            return
        oldest = self.clock.seconds() - self.retention
        kept: dict[tuple[str, int], list[_Sample]] = {}
        for row in self.db.rows_since(MonitoringSampleRow, "time", oldest):
            kind, oid, sample = _sample(row)
            if kind in FIELDS and None not in sample:  # a row written by another hand
                kept.setdefault((kind, oid), []).append(sample)
        self._series = {key: _Series(sorted(samples)) for key, samples in kept.items()}
        self._expired_in_file = self.db.count_before(MonitoringSampleRow, "time", oldest)

    # -- recording ------------------------------------------------------------------------

    def host_monitored(self, host: Host) -> None:
        """Record a successful monitoring of ``host``: the CPU (percent) and memory (KB)
        its driver reported used, and the maxima of its share."""
        used_cpu = leading_int(host.attributes.get("USEDCPU"))
        used_memory = leading_int(host.attributes.get("USEDMEMORY"))
        shares = host.shares
        self._record(HOST, host.oid, (used_cpu, shares.max_cpu, used_memory, shares.max_mem))

    def vm_polled(self, vm: VirtualMachine) -> None:
        """Record a poll answer of ``vm``, as stored in its vm_pool columns."""
        self._record(VM, vm.oid, (vm.cpu, vm.memory, vm.net_tx, vm.net_rx))

    def _record(self, kind: str, oid: int, values: tuple[float, float, float, float]) -> None:
        if not self.enabled:
            return
        now = self.clock.seconds()
        sample: _Sample = (now, *(float(value) for value in values))  # type: ignore[assignment]
        series = self._series.get((kind, oid))
        if series is None:
            series = self._series[kind, oid] = _Series()
        series.append(sample)
        # Written already, or about to be: the file has as many to purge.
        self._expired_in_file += series.drop_before(now - self.retention)
        self._unwritten.append(_row(kind, oid, sample))

    def host_deleted(self, hid: int) -> None:
        """Forget a deleted host's samples, in memory and in one.db: a restart may give
        its id to a new host, which must not inherit them."""
        if self._series.pop((HOST, hid), None) is None:
            return
        self._unwritten = [row for row in self._unwritten if row[:2] != (HOST, hid)]
        self.db.write(Delete(MonitoringSampleRow, (("kind", HOST), ("oid", hid))))

    # -- reading --------------------------------------------------------------------------

    def samples(self, kind: str, oid: int, since: float | None = None) -> list[dict[str, float]]:
        """The samples of host or VM ``oid`` (``kind`` "host" or "vm") in the window,
        oldest first, those from ``since`` (epoch seconds) on if given: dicts of "time"
        and the kind's :data:`FIELDS`."""
        names = FIELDS.get(kind)
        series = self._series.get((kind, oid))
        if names is None or not series:
            return []
        oldest = self.clock.seconds() - self.retention
        if since is not None:
            oldest = max(oldest, since)
        keys = ("time", *names)
        return [dict(zip(keys, sample, strict=True)) for sample in series.since(oldest)]

    # -- storing --------------------------------------------------------------------------

    def flush(self) -> None:
        """Hand the buffered samples and a batch of the expired rows to one.db's writer,
        and forget the series whose samples all expired."""
        if not self.enabled:
            return
        oldest = self.clock.seconds() - self.retention
        for key in list(self._series):
            series = self._series[key]
            self._expired_in_file += series.drop_before(oldest)
            if not series:
                del self._series[key]
        operations: list[Operation] = []
        if self._unwritten:
            rows, self._unwritten = self._unwritten, []
            operations.append(Insert(MonitoringSampleRow, rows))
        if self._expired_in_file > 0:
            operations.append(DeleteOldest(MonitoringSampleRow, "time", oldest, PURGE_BATCH))
            self._expired_in_file = max(0, self._expired_in_file - PURGE_BATCH)
        if operations:  # an idle daemon does not commit every few seconds
            self.db.write(*operations)

    def startService(self) -> None:
        super().startService()
        if self.enabled:
            self._flushing.start(FLUSH_INTERVAL, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._flushing.running:
            self._flushing.stop()
        self.flush()
