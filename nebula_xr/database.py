"""one.db: the exact OpenNebula 1.2 schema, and a writer that never blocks the reactor.

The 1.2 clients (Ruby CLI, mm_sched, Haizea) read this file directly with positional
``SELECT *``, so the nine tables keep 1.2's names, column order, column count and
declared types (database.md §2). Nothing else is stored in them.

The daemon keeps its objects in memory (the pools) and only *writes* here while it runs;
it reads the file once, at start-up. Each change is turned into row snapshots at the
moment it happens and queued. A single writer thread commits everything queued so far
in one short transaction (group commit, one fsync for many changes), so readers in
other processes never see half of a change and never wait long for the write lock.
:meth:`Database.committed` gives a Deferred that fires once everything queued before it
is durable: the request manager replies only then, as 1.2 did.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peewee
from twisted.internet.defer import Deferred, fail, succeed

database_proxy = peewee.DatabaseProxy()


def _integer(**kwargs: Any) -> peewee.IntegerField:
    return peewee.IntegerField(null=True, **kwargs)


def _text(**kwargs: Any) -> peewee.TextField:
    return peewee.TextField(null=True, **kwargs)


class _Table(peewee.Model):
    class Meta:
        database = database_proxy
        legacy_table_names = False


class VMPoolRow(_Table):
    oid = peewee.IntegerField(primary_key=True)
    uid = _integer()
    last_poll = _integer()
    template_id = _integer()
    state = _integer()
    lcm_state = _integer()
    stime = _integer()
    etime = _integer()
    deploy_id = _text()
    memory = _integer()
    cpu = _integer()
    net_tx = _integer()
    net_rx = _integer()

    class Meta:
        table_name = "vm_pool"


class _AttributeRow(_Table):
    id = _integer()
    name = _text()
    type = _integer()
    value = _text()


class VMAttributeRow(_AttributeRow):
    class Meta:
        table_name = "vm_attributes"
        primary_key = False


class HistoryRow(_Table):
    vid = _integer()
    seq = _integer()
    host_name = _text()
    vm_dir = _text()
    hid = _integer()
    vm_mad = _text()
    tm_mad = _text()
    stime = _integer()
    etime = _integer()
    pstime = _integer()
    petime = _integer()
    rstime = _integer()
    retime = _integer()
    estime = _integer()
    eetime = _integer()
    reason = _integer()

    class Meta:
        table_name = "history"
        primary_key = peewee.CompositeKey("vid", "seq")


class HostPoolRow(_Table):
    oid = peewee.IntegerField(primary_key=True)
    host_name = _text()
    state = _integer()
    im_mad = _text()
    vm_mad = _text()
    tm_mad = _text()
    last_mon_time = _integer()
    managed = _integer()

    class Meta:
        table_name = "host_pool"


class HostAttributeRow(_AttributeRow):
    class Meta:
        table_name = "host_attributes"
        primary_key = peewee.CompositeKey("id", "name")


class HostSharesRow(_Table):
    hid = peewee.IntegerField(primary_key=True)
    endpoint = _text()
    disk_usage = _integer()
    mem_usage = _integer()
    cpu_usage = _integer()
    max_disk = _integer()
    max_mem = _integer()
    max_cpu = _integer()
    running_vms = _integer()

    class Meta:
        table_name = "host_shares"


class NetworkPoolRow(_Table):
    oid = _integer()
    uid = _integer()
    name = _text()
    type = _integer()
    bridge = _text()

    class Meta:
        table_name = "network_pool"
        # A table constraint keeps `name` third: peewee moves a column key first.
        primary_key = peewee.CompositeKey("name")


class VNTemplateRow(_AttributeRow):
    class Meta:
        table_name = "vn_template"
        primary_key = False


class LeaseRow(_Table):
    oid = _integer()
    ip = _integer()
    mac_prefix = _integer()
    mac_suffix = _integer()
    vid = _integer()
    used = _integer()

    class Meta:
        table_name = "leases"
        primary_key = peewee.CompositeKey("oid", "ip")


class UserPoolRow(_Table):
    """1.4's user table (api-1.4.md §2.5): an extra table, which 1.2 readers ignore."""

    oid = _integer()
    user_name = _text(unique=True)
    password = _text()
    enabled = _integer()

    class Meta:
        table_name = "user_pool"
        primary_key = peewee.CompositeKey("oid", "user_name")


#: The nine 1.2 tables, in the order 1.2 creates them.
TABLES: tuple[type[_Table], ...] = (
    VMPoolRow,
    VMAttributeRow,
    HistoryRow,
    HostPoolRow,
    HostAttributeRow,
    HostSharesRow,
    NetworkPoolRow,
    VNTemplateRow,
    LeaseRow,
)


# --- write operations ------------------------------------------------------------------


@dataclass(frozen=True)
class Replace:
    """``INSERT OR REPLACE`` of whole rows (a tuple of every column, in order)."""

    table: type[_Table]
    rows: Sequence[tuple]


@dataclass(frozen=True)
class Insert:
    """Plain ``INSERT`` of whole rows (tables without a key: attribute rows)."""

    table: type[_Table]
    rows: Sequence[tuple]


@dataclass(frozen=True)
class Delete:
    """``DELETE FROM table WHERE col = value AND ...``."""

    table: type[_Table]
    where: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Update:
    """``UPDATE table SET col = value ... WHERE col = value AND ...``."""

    table: type[_Table]
    values: tuple[tuple[str, Any], ...]
    where: tuple[tuple[str, Any], ...]


Operation = Replace | Insert | Delete | Update


def _where(where: tuple[tuple[str, Any], ...]) -> tuple[str, list[Any]]:
    return " AND ".join(f"{column} = ?" for column, _ in where), [value for _, value in where]


def _apply(connection: sqlite3.Connection, operation: Operation) -> None:
    # Plain SQL built from the peewee models' metadata: the schema has one definition,
    # and the writer avoids a query builder per row.
    name = operation.table._meta.table_name
    if isinstance(operation, Replace | Insert):
        if operation.rows:
            verb = "INSERT OR REPLACE" if isinstance(operation, Replace) else "INSERT"
            marks = ",".join("?" * len(operation.table._meta.sorted_fields))
            connection.executemany(f"{verb} INTO {name} VALUES ({marks})", operation.rows)
    elif isinstance(operation, Delete):
        condition, arguments = _where(operation.where)
        connection.execute(f"DELETE FROM {name} WHERE {condition}", arguments)
    else:
        assignments = ", ".join(f"{column} = ?" for column, _ in operation.values)
        condition, arguments = _where(operation.where)
        values = [value for _, value in operation.values]
        connection.execute(f"UPDATE {name} SET {assignments} WHERE {condition}", values + arguments)


class DatabaseError(Exception):
    """The database file cannot be opened or written."""


class _Batch:
    """Operations committed together, and who waits for that commit."""

    __slots__ = ("operations", "waiters", "done", "error")

    def __init__(self, operations: list[Operation]) -> None:
        self.operations = operations
        self.waiters: list[Deferred] = []
        self.done = False
        self.error: Exception | None = None


class Database:
    """one.db: schema creation, start-up reads, and the group-commit writer."""

    def __init__(
        self,
        path: Path,
        *,
        wal: bool = True,
        reactor: Any = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.wal = wal
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.on_error = on_error
        self._db = peewee.SqliteDatabase(
            str(self.path),
            pragmas={
                "journal_mode": "wal" if wal else "delete",
                # Every acknowledged change must survive a power cut, as in 1.2.
                "synchronous": "full",
                "busy_timeout": 5000,
            },
            check_same_thread=False,
        )
        self._queue: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._pending: list[Operation] = []
        self._flush_scheduled = False
        self._last: _Batch | None = None
        self._writer: threading.Thread | None = None

    # -- lifecycle --

    def open(self) -> None:
        """Open the file and create the 1.2 tables (and 1.4's user table) that are missing."""
        database_proxy.initialize(self._db)
        try:
            self._db.connect(reuse_if_open=True)
            self._db.create_tables((*TABLES, UserPoolRow), safe=True)
        except (peewee.DatabaseError, sqlite3.DatabaseError) as error:
            raise DatabaseError(f"Can not open database {self.path}: {error}") from error
        self._writer = threading.Thread(target=self._write_loop, name="one.db writer", daemon=True)
        self._writer.start()

    def close(self) -> None:
        """Commit what is queued, stop the writer and close the file (blocking: at exit)."""
        self._flush()
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join()
            self._writer = None
        self._db.close()

    # -- reads (start-up only) --

    def rows(self, table: type[_Table]) -> list[tuple]:
        """Every row of ``table`` as tuples in column order, in rowid order."""
        return list(table.select().order_by(peewee.SQL("rowid")).tuples())

    # -- writes --

    def write(self, *operations: Operation) -> None:
        """Queue operations; they are committed together with everything queued this turn."""
        self._pending.extend(operations)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.reactor.callLater(0, self._flush)

    def is_settled(self) -> bool:
        """True when nothing written so far is still waiting for its commit."""
        return not self._pending and (self._last is None or self._last.done)

    def committed(self) -> Deferred:
        """A Deferred firing once every operation queued so far is durable in the file.

        It fails with :class:`DatabaseError` when that commit failed.
        """
        self._flush()
        last = self._last
        if last is None or last.done:
            if last is not None and last.error is not None:
                return fail(DatabaseError(str(last.error)))
            return succeed(None)
        waiter: Deferred = Deferred()
        last.waiters.append(waiter)
        return waiter

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending:
            return
        batch = _Batch(self._pending)
        self._pending = []
        self._last = batch
        self._queue.put(batch)

    def _write_loop(self) -> None:
        connection = self._db.connection()
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            batches = [batch]
            # Group commit: everything queued meanwhile goes into the same transaction.
            while True:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                batches.append(more)
            error = self._commit(connection, [op for b in batches for op in b.operations])
            self.reactor.callFromThread(self._finish, batches, error)

    def _commit(
        self, connection: sqlite3.Connection, operations: list[Operation]
    ) -> Exception | None:
        try:
            with self._db.atomic():
                for operation in operations:
                    _apply(connection, operation)
        except (peewee.DatabaseError, sqlite3.DatabaseError) as error:
            return error
        return None

    def _finish(self, batches: list[_Batch], error: Exception | None) -> None:
        if error is not None and self.on_error is not None:
            self.on_error(f"Error writing {self.path}: {error}")
        for batch in batches:
            batch.done = True
            batch.error = error
            for waiter in batch.waiters:
                if error is None:
                    waiter.callback(None)
                else:
                    waiter.errback(DatabaseError(str(error)))


def schema_sql(connection: sqlite3.Connection) -> dict[str, list[tuple[str, str, int]]]:
    """``{table: [(column, declared type, pk position)]}`` as SQLite reports it."""
    result: dict[str, list[tuple[str, str, int]]] = {}
    for table in TABLES:
        name = table._meta.table_name
        info = connection.execute(f"PRAGMA table_info({name})").fetchall()
        result[name] = [(row[1], row[2], row[5]) for row in info]
    return result
