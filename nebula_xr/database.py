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
is durable: the request manager replies only then, as 1.2 did. A commit that readers'
locks block is retried with back-off; one that fails for good undoes the changes written
with an ``undo`` (and the request that made them is refused) and keeps retrying the
others, so the memory is never ahead of the file for anything acknowledged.
"""

from __future__ import annotations

import queue
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import peewee
from twisted.internet.defer import Deferred

from nebula_xr.postgresql import (
    BackendUnavailable,
    PostgresSettings,
    is_transient,
    replace_statements,
    row_order,
)

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


class MonitoringSampleRow(_Table):
    """The monitoring history (:mod:`nebula_xr.monitoring_history`): one row per host
    monitoring or VM poll. An extra table, which 1.2 readers ignore; ``max_*`` are a
    host's, ``net_*`` a VM's (NULL for the other kind)."""

    kind = _text()  # "host" or "vm"
    oid = _integer()
    time = peewee.DoubleField(null=True)
    cpu = peewee.DoubleField(null=True)
    memory = peewee.DoubleField(null=True)
    max_cpu = peewee.DoubleField(null=True)
    max_memory = peewee.DoubleField(null=True)
    net_tx = peewee.DoubleField(null=True)
    net_rx = peewee.DoubleField(null=True)

    class Meta:
        table_name = "nebula_xr_monitoring"
        primary_key = False
        indexes = ((("time",), False),)  # the purge finds the oldest rows by it


class PluginTable(_Table):
    """Base of a table a plugin keeps in one.db (declared with ``nebula_xr_tables``).

    A peewee model; its ``Meta.table_name`` must be the plugin's name, an underscore and
    lower-case letters, digits or underscores (``haizea_rates``), so it never meets a 1.2
    table. It is created, if missing, when one.db is opened.
    """


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
#: Every table of the core: 1.2's, 1.4's user table and the monitoring history (the
#: scheduler plugin's own tables come on top, from ``nebula_xr_tables``).
CORE_TABLES: tuple[type[_Table], ...] = (*TABLES, UserPoolRow, MonitoringSampleRow)


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


@dataclass(frozen=True)
class DeleteOldest:
    """``DELETE`` of the ``limit`` oldest rows whose ``column`` is below ``before`` (and
    of those sharing the last one's value): a purge in bounded batches, so no commit
    holds the file for long."""

    table: type[_Table]
    column: str
    before: Any
    limit: int


Operation = Replace | Insert | Delete | Update | DeleteOldest


def _where(where: tuple[tuple[str, Any], ...], mark: str) -> tuple[str, list[Any]]:
    condition = " AND ".join(f"{column} = {mark}" for column, _ in where)
    return condition, [value for _, value in where]


def _statement(operation: Delete | Update | DeleteOldest, mark: str) -> tuple[str, list[Any]]:
    # Plain SQL built from the peewee models' metadata: the schema has one definition,
    # and the writer avoids a query builder per row. Values are always parameters.
    name = operation.table._meta.table_name
    if isinstance(operation, DeleteOldest):
        # The limit-th oldest value bounds the batch (rows sharing it go with it): the
        # same SQL for both backends, with neither SQLite's rowid nor PostgreSQL's ctid.
        column, before = operation.column, operation.before
        batch = (
            f"SELECT {column} FROM {name} WHERE {column} < {mark} ORDER BY {column} LIMIT {mark}"
        )
        bound = f"SELECT max({column}) FROM ({batch}) AS oldest"
        sql = f"DELETE FROM {name} WHERE {column} < {mark} AND {column} <= ({bound})"
        return sql, [before, before, operation.limit]
    condition, arguments = _where(operation.where, mark)
    if isinstance(operation, Delete):
        return f"DELETE FROM {name} WHERE {condition}", arguments
    assignments = ", ".join(f"{column} = {mark}" for column, _ in operation.values)
    values = [value for _, value in operation.values]
    return f"UPDATE {name} SET {assignments} WHERE {condition}", values + arguments


class _SqliteWriter:
    """The writer thread's SQLite connection and dialect."""

    errors: tuple[type[BaseException], ...] = (sqlite3.DatabaseError,)

    def __init__(self, connection: sqlite3.Connection, wal: bool) -> None:
        self.connection = connection
        self.wal = wal
        self.busy_ms = 0

    def execute(self, sql: str) -> None:
        self.connection.execute(sql)

    def prepare(self) -> None:
        """Before the first attempt of a commit."""
        self._busy_timeout(_WRITER_BUSY_MS if self.wal else _ROLLBACK_FIRST_BUSY_MS)

    def _busy_timeout(self, milliseconds: int) -> None:
        if milliseconds != self.busy_ms:
            self.connection.execute(f"PRAGMA busy_timeout = {milliseconds}")
            self.busy_ms = milliseconds

    def begin(self) -> None:
        self.connection.execute("BEGIN IMMEDIATE")

    def commit_at_once(self, group: list[_Change]) -> bool:
        return False  # statements cost no round trip: a savepoint per change is cheap

    def commit(self) -> None:
        self.connection.execute("COMMIT")

    def apply(self, operation: Operation) -> None:
        if isinstance(operation, Replace | Insert):
            if operation.rows:
                name = operation.table._meta.table_name
                verb = "INSERT OR REPLACE" if isinstance(operation, Replace) else "INSERT"
                marks = ",".join("?" * len(operation.table._meta.sorted_fields))
                self.connection.executemany(f"{verb} INTO {name} VALUES ({marks})", operation.rows)
        else:
            self.connection.execute(*_statement(operation, "?"))

    def is_busy(self, error: BaseException) -> bool:
        return _is_busy(error)

    def rollback(self) -> None:
        if self.connection.in_transaction:
            self.connection.execute("ROLLBACK")

    def close(self) -> None:
        pass  # the peewee database closes it

    def retrying(self) -> None:
        # Rollback-journal mode: later attempts wait only a moment (see _WRITER_BUSY_MS).
        if not self.wal:
            self._busy_timeout(_ROLLBACK_RETRY_BUSY_MS)


#: The transaction's id, asked before COMMIT (xid8: never wraps around).
_TRANSACTION_ID = "SELECT pg_current_xact_id()"
#: pg_xact_status's SQLSTATE for a transaction id the server has not reached.
_INVALID_PARAMETER_VALUE = "22023"


class CommitOutcomeUnknown(Exception):
    """The connection was lost during COMMIT and the daemon stops before the server could
    say whether the transaction committed: it must not be tried again blindly."""


class _PostgresWriter:
    """The writer thread's own PostgreSQL connection (reopened when it is lost)."""

    def __init__(
        self,
        settings: PostgresSettings,
        report: Callable[[str], None],
        stopping: threading.Event,
    ) -> None:
        import psycopg

        self.errors: tuple[type[BaseException], ...] = (
            psycopg.Error,
            ValueError,
            CommitOutcomeUnknown,
        )
        self.settings = settings
        self.connection: Any = None
        self._replace: dict[type[_Table], list[tuple[str, tuple[int, ...] | None]]] = {}
        #: Called (from this thread) with a line for oned.log.
        self.report = report
        #: Set when the daemon stops: an unknown commit outcome is then no longer awaited.
        self.stopping = stopping

    def _connect(self) -> None:
        # A reply waits for COMMIT, which returns once the WAL is flushed.
        self.connection = self.settings.connect("writer", options="-c synchronous_commit=on")

    def execute(self, sql: str) -> None:
        self.connection.execute(sql)

    def prepare(self) -> None:
        pass

    def begin(self) -> None:
        self.connection.execute("BEGIN")

    def commit_at_once(self, group: list[_Change]) -> bool:
        """The whole group in one round trip (a pipeline, no savepoints), then COMMIT; False,
        with nothing written, if a change is refused: the caller then isolates it with a
        savepoint per change. A transient failure is raised, as from :meth:`begin`."""
        if self.connection is None or self.connection.closed:
            self._connect()
        try:
            with self.connection.pipeline():
                self.connection.execute("BEGIN")
                for change in group:
                    for operation in change.operations:
                        self.apply(operation)
                transaction = self.connection.execute(_TRANSACTION_ID)
        except self.errors as error:
            if is_transient(error):
                raise
            self.rollback()
            return False
        self.commit(transaction.fetchone()[0])
        return True

    def commit(self, xid: int | str | None = None) -> None:
        """COMMIT the open transaction, whose id is ``xid`` (asked first if not given).
        The id is known before COMMIT is sent: if the connection is lost during COMMIT,
        the server may have committed and only the answer be lost, so the server is
        asked, on a new connection, what became of it. Returns once it is known
        committed; raises if it was not (the group is then tried again)."""
        if xid is None:
            xid = self.connection.execute(_TRANSACTION_ID).fetchone()[0]
        backend = self.connection.info.backend_pid
        try:
            self.connection.execute("COMMIT")
        except self.errors as error:
            if not self.connection.broken:
                raise  # the server answered: it refused the COMMIT
            self.connection.close()
            if not self._committed(int(xid), backend, error):
                raise
            self.report(
                f"Connection to {self.settings.describe()} lost during COMMIT ({error}): "
                f"transaction {xid} was committed"
            )

    def _committed(self, xid: int, backend: int, lost: BaseException) -> bool:
        """Whether transaction ``xid``, whose COMMIT was sent on the lost connection of
        server process ``backend``, committed. While the server still counts it in progress
        (its process has not noticed the loss yet, or holds a half-open connection), that
        process is ended: then the COMMIT either happened or never will."""
        pause = _BACKOFF_SECONDS[0]
        give_up_at: float | None = None  # once the daemon stops
        while True:
            try:
                if self.connection is None or self.connection.closed:
                    self._connect()
                status = self.connection.execute(
                    "SELECT pg_xact_status(%s::text::xid8)", (str(xid),)
                ).fetchone()[0]
                if status == "committed":
                    return True
                if status == "aborted":
                    self.report(
                        f"Connection to {self.settings.describe()} lost during COMMIT "
                        f"({lost}): transaction {xid} was not committed; retrying"
                    )
                    return False
                # In progress (NULL is never the answer for a transaction this recent).
                self.connection.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE pid = %s AND backend_xid = %s::text::xid",
                    (backend, str(xid & 0xFFFFFFFF)),
                )
            except self.errors as error:
                if getattr(error, "sqlstate", None) == _INVALID_PARAMETER_VALUE:
                    # "transaction ID ... is in the future": this server (a promoted
                    # replica, a restored backup) never had the transaction at all.
                    self.report(
                        f"Connection to {self.settings.describe()} lost during COMMIT "
                        f"({lost}): transaction {xid} is unknown to the server; retrying"
                    )
                    return False
                if self.connection is not None:
                    self.connection.close()  # the server is unreachable: ask again
            if self.stopping.is_set() and give_up_at is None:
                give_up_at = time.monotonic() + _STOPPING_OUTCOME_WAIT
            if give_up_at is not None and time.monotonic() > give_up_at:
                raise CommitOutcomeUnknown(
                    f"stopping without knowing whether transaction {xid} was committed"
                )
            time.sleep(pause)
            pause = min(pause * 2, _BACKOFF_SECONDS[1])

    def apply(self, operation: Operation) -> None:
        cursor = self.connection.cursor()
        if isinstance(operation, Replace):
            if not operation.rows:
                return
            statements = self._replace.get(operation.table)
            if statements is None:
                statements = self._replace[operation.table] = replace_statements(operation.table)
            for sql, positions in statements:
                rows = operation.rows
                if positions is not None:
                    rows = [tuple(row[position] for position in positions) for row in rows]
                cursor.executemany(sql, rows)
        elif isinstance(operation, Insert):
            if operation.rows:
                name = operation.table._meta.table_name
                marks = ",".join(["%s"] * len(operation.table._meta.sorted_fields))
                cursor.executemany(f"INSERT INTO {name} VALUES ({marks})", operation.rows)
        else:
            cursor.execute(*_statement(operation, "%s"))

    def is_busy(self, error: BaseException) -> bool:
        return is_transient(error)

    def rollback(self) -> None:
        if self.connection is None or self.connection.closed:
            return
        from psycopg.pq import TransactionStatus

        if self.connection.info.transaction_status != TransactionStatus.IDLE:
            try:
                self.connection.execute("ROLLBACK")
            except self.errors:
                self.connection.close()  # reopened by the next attempt

    def retrying(self) -> None:
        pass

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


class DatabaseError(Exception):
    """The database file cannot be opened or written."""


#: How long the writer keeps retrying a commit that readers block (SQLITE_BUSY) before it
#: gives up: undoable changes are then undone and refused, the others retried later.
BUSY_RETRY_SECONDS = 20.0
#: The writer's own SQLite busy timeout (WAL: only another writer can block it). In
#: rollback-journal mode SQLite's busy handler holds the PENDING lock while it waits, which
#: locks every new reader out: the first attempt waits half a second (enough for short read
#: transactions to drain), later ones only a moment, so that while one reader holds its
#: lock for long the others still get in between the writer's attempts.
_WRITER_BUSY_MS = 5000
_ROLLBACK_FIRST_BUSY_MS, _ROLLBACK_RETRY_BUSY_MS = 500, 20
#: A commit blocked this long is reported in oned.log (once per commit).
_REPORT_BUSY_AFTER = 0.5
#: Pause between two commit attempts: doubles from the first to the last value.
_BACKOFF_SECONDS = (0.01, 0.25)
#: Seconds a stopping daemon still asks PostgreSQL whether a COMMIT cut off by a lost
#: connection happened (while running, it asks until it knows).
_STOPPING_OUTCOME_WAIT = 5.0


def _is_busy(error: BaseException) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(error) or "busy" in str(error)


@dataclass(eq=False)
class _Change:
    """The operations of one :meth:`Database.write` call and how to take it back."""

    seq: int
    operations: tuple[Operation, ...]
    undo: Callable[[], None] | None


@dataclass(eq=False)
class _Waiter:
    since: int
    upto: int  # the changes seq in [since, upto) must be durable
    deferred: Deferred


class Database:
    """one.db: schema creation, start-up reads, and the group-commit writer.

    Every change is either made durable or, when a commit fails for good, undone: a change
    written with ``undo`` (a new VM, host or network, a deleted host or network) is taken
    back in memory and refused; one without (a life-cycle step the drivers already act on)
    stays queued and is retried, ahead of everything written after it, until it commits.
    So the memory is never ahead of the file for anything acknowledged.
    """

    def __init__(
        self,
        path: Path,
        *,
        wal: bool = True,
        reactor: Any = None,
        on_error: Callable[[str], None] | None = None,
        busy_retry: float = BUSY_RETRY_SECONDS,
        postgresql: PostgresSettings | None = None,
    ) -> None:
        self.path = Path(path)
        #: With PostgreSQL settings, the database is there and ``path`` is unused.
        self.postgresql = postgresql
        #: Where the database is, for messages.
        self.location = str(self.path) if postgresql is None else postgresql.describe()
        self.wal = wal
        self.busy_retry = busy_retry
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.on_error = on_error
        self._db: peewee.Database
        if postgresql is not None:
            try:
                self._db = postgresql.peewee_database()
            except BackendUnavailable as error:
                raise DatabaseError(str(error)) from error
        else:
            self._db = peewee.SqliteDatabase(
                str(self.path),
                pragmas={
                    "journal_mode": "wal" if wal else "delete",
                    # Every acknowledged change must survive a power cut, as in 1.2.
                    "synchronous": "full",
                    "busy_timeout": _WRITER_BUSY_MS if wal else _ROLLBACK_FIRST_BUSY_MS,
                },
                check_same_thread=False,
            )
        self._queue: queue.SimpleQueue[list[_Change] | None] = queue.SimpleQueue()
        self._pending: list[_Change] = []
        self._flush_scheduled = False
        self._writer: threading.Thread | None = None
        self._seq = 0  # changes written so far
        self._durable_upto = 0  # every change below this seq is durable or undone
        self._since = 0  # first change not yet covered by a committed() call
        self._refused: set[int] = set()  # changes undone or refused by the file
        self._waiters: list[_Waiter] = []
        self._stopping = threading.Event()

    # -- lifecycle --

    def open(self, plugin_tables: Sequence[type[PluginTable]] = ()) -> None:
        """Open the file and create the 1.2 tables (and 1.4's user table, the monitoring
        history and the ``plugin_tables``) that are missing."""
        database_proxy.initialize(self._db)
        try:
            self._db.connect(reuse_if_open=True)
            self._db.create_tables((*CORE_TABLES, *plugin_tables), safe=True)
        except (peewee.DatabaseError, sqlite3.DatabaseError) as error:
            raise DatabaseError(f"Can not open database {self.location}: {error}") from error
        self._writer = threading.Thread(target=self._write_loop, name="one.db writer", daemon=True)
        self._writer.start()

    def close(self) -> None:
        """Commit what is queued, stop the writer and close the file (blocking: at exit)."""
        self._flush()
        if self._writer is not None:
            self._stopping.set()
            self._queue.put(None)
            self._writer.join()
            self._writer = None
        self._db.close()

    # -- reads (start-up only) --

    def rows(self, table: type[_Table]) -> list[tuple]:
        """Every row of ``table`` as tuples in column order, in rowid order (PostgreSQL: in
        key order, or where the rows are for tables without a key)."""
        order = peewee.SQL("rowid") if self.postgresql is None else row_order(table)
        return list(table.select().order_by(order).tuples())

    def rows_since(self, table: type[_Table], column: str, since: Any) -> list[tuple]:
        """The rows of ``table`` whose ``column`` is at least ``since``, in no set order,
        as the database returns them: without peewee's conversions, a large table (the
        monitoring history) loads several times faster."""
        name, mark = table._meta.table_name, self._db.param
        query = f"SELECT * FROM {name} WHERE {column} >= {mark}"
        return list(self._db.execute_sql(query, (since,)).fetchall())

    def count_before(self, table: type[_Table], column: str, before: Any) -> int:
        """How many rows of ``table`` have ``column`` below ``before``."""
        name, mark = table._meta.table_name, self._db.param
        query = f"SELECT count(*) FROM {name} WHERE {column} < {mark}"
        return self._db.execute_sql(query, (before,)).fetchone()[0]

    # -- writes --

    def write(self, *operations: Operation, undo: Callable[[], None] | None = None) -> None:
        """Queue operations; they are committed together with everything queued this turn.

        ``undo`` takes the change back in memory if its commit fails for good; it may
        write again (e.g. delete rows a later change re-created).
        """
        self._pending.append(_Change(self._seq, operations, undo))
        self._seq += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.reactor.callLater(0, self._flush)

    def is_settled(self) -> bool:
        """True when nothing written so far is still waiting for its commit."""
        return self._durable_upto >= self._seq

    def committed(self) -> Deferred:
        """A Deferred firing once every operation queued so far is durable in the file.

        It fails with :class:`DatabaseError` when a change written in this reactor turn,
        since the previous call, was undone or refused: a request calls this once, right
        after making its changes in the same turn, so the failure means its own change
        was refused (and not a change the drivers' answers made in earlier turns).
        """
        turn_start = self._pending[0].seq if self._pending else self._seq
        since, self._since = max(self._since, turn_start), self._seq
        self._flush()
        waiter = _Waiter(since, self._seq, Deferred())
        if not self._resolve(waiter):
            self._waiters.append(waiter)
        return waiter.deferred

    def settled(self, timeout: float) -> Deferred:
        """A Deferred firing (never failing) once everything written so far is durable, or
        after ``timeout`` seconds: a read should not wait long for a commit readers block."""
        self._flush()
        waiter = _Waiter(self._seq, self._seq, Deferred())
        if self._resolve(waiter):
            return waiter.deferred
        self._waiters.append(waiter)
        expiry = self.reactor.callLater(timeout, self._expire, waiter)

        def durable(result: object) -> object:
            if expiry.active():
                expiry.cancel()
            return result

        return waiter.deferred.addBoth(durable)

    def _expire(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            waiter.deferred.callback(None)

    def _resolve(self, waiter: _Waiter) -> bool:
        if any(waiter.since <= seq < waiter.upto for seq in self._refused):
            waiter.deferred.errback(DatabaseError("the change could not be written"))
            return True
        if self._durable_upto >= waiter.upto:
            waiter.deferred.callback(None)
            return True
        return False

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._pending:
            return
        changes, self._pending = self._pending, []
        self._queue.put(changes)

    def _write_loop(self) -> None:
        writer: _SqliteWriter | _PostgresWriter
        if self.postgresql is None:
            writer = _SqliteWriter(self._db.connection(), self.wal)
        else:
            writer = _PostgresWriter(self.postgresql, self._report_from_writer, self._stopping)
        carried: list[_Change] = []  # failed changes without undo, retried first
        backoff = _BACKOFF_SECONDS[0]
        stopping = False
        while True:
            try:
                changes = self._queue.get(timeout=backoff if carried else None)
            except queue.Empty:
                changes = []
            if changes is None:
                if not carried:
                    writer.close()
                    return
                stopping, changes = True, []
            # Group commit: everything queued meanwhile goes into the same transaction.
            group = carried + changes
            while not stopping:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                group.extend(more)
            error, refused = self._commit(writer, group)
            if error is None:
                carried = []
                backoff = _BACKOFF_SECONDS[0]
                first = refused[0][1] if refused else None
                changes_refused = [change for change, _ in refused]
                self.reactor.callFromThread(self._finish, group[-1].seq + 1, changes_refused, first)
            else:
                # The file stayed busy (or the commit itself failed): new objects are
                # undone, life-cycle steps retried ahead of everything written later.
                undone = [change for change in group if change.undo is not None]
                carried = [change for change in group if change.undo is None]
                backoff = min(backoff * 2, _BACKOFF_SECONDS[1])
                durable_upto = carried[0].seq if carried else group[-1].seq + 1
                self.reactor.callFromThread(self._finish, durable_upto, undone, error)
            if stopping and (not carried or error is not None):
                writer.close()
                return

    def _commit(
        self, writer: _SqliteWriter | _PostgresWriter, group: list[_Change]
    ) -> tuple[Exception | None, list[tuple[_Change, Exception]]]:
        """One transaction for the group; a busy file is retried with back-off for
        ``busy_retry`` s. Each change is its own savepoint: one the file refuses for good
        (a constraint, a trigger, a full disk on that statement) is left out and returned
        with its error, and the others commit. Returns (error of the whole group, refused)."""
        start = time.monotonic()
        deadline = start + self.busy_retry
        pause = _BACKOFF_SECONDS[0]
        reported = False
        writer.prepare()
        while True:
            refused: list[tuple[_Change, Exception]] = []
            try:
                if writer.commit_at_once(group):
                    return None, []
                writer.begin()
                for change in group:
                    writer.execute("SAVEPOINT change")
                    try:
                        for operation in change.operations:
                            writer.apply(operation)
                    except writer.errors as error:
                        if writer.is_busy(error):
                            raise
                        writer.execute("ROLLBACK TO change")
                        refused.append((change, error))
                    writer.execute("RELEASE change")
                writer.commit()
                return None, refused
            except writer.errors as error:
                writer.rollback()
                if not writer.is_busy(error) or time.monotonic() + pause > deadline:
                    return error, []
            if not reported and time.monotonic() - start > _REPORT_BUSY_AFTER:
                reported = True
                self.reactor.callFromThread(self._report_busy)
            writer.retrying()
            # Randomised, so that the writer and polling readers do not keep colliding.
            time.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(pause * 2, _BACKOFF_SECONDS[1])

    def _report_from_writer(self, message: str) -> None:
        if self.on_error is not None:
            self.reactor.callFromThread(self.on_error, message)

    def _report_busy(self) -> None:
        if self.on_error is not None:
            self.on_error(
                f"{self.location} is locked by another process (a reader?); "
                f"retrying the commit for up to {self.busy_retry:g} s"
            )

    def _finish(self, durable_upto: int, refused: list[_Change], error: Exception | None) -> None:
        """On the reactor: undo what was refused (what can be), answer the waiters."""
        if error is not None and self.on_error is not None:
            undone = sum(change.undo is not None for change in refused)
            what = (
                f"{undone} change(s) undone, {len(refused) - undone} refused"
                if refused
                else "retrying"
            )
            self.on_error(f"Error writing {self.location}: {error} ({what})")
        for change in reversed(refused):
            self._refused.add(change.seq)
            if change.undo is not None:
                change.undo()
        self._durable_upto = max(self._durable_upto, durable_upto)
        # A waiter's callbacks may run a request that waits in turn: keep what they add.
        waiting, self._waiters = self._waiters, []
        still = [waiter for waiter in waiting if not self._resolve(waiter)]
        self._waiters[:0] = still


class PluginStore:
    """A plugin's view of one.db: only the tables its ``nebula_xr_tables`` declared.

    Reads are for start-up (``rows``); writes (:class:`Replace`, :class:`Insert`,
    :class:`Delete`, :class:`Update`) go through the daemon's group-commit writer, so they
    never block the reactor and are durable in order with the core's own changes.
    """

    def __init__(self, db: Database, tables: Sequence[type[PluginTable]]) -> None:
        self._db = db
        self.tables = tuple(tables)

    def _check(self, table: type[_Table]) -> None:
        if table not in self.tables:
            raise ValueError(f"{table._meta.table_name} is not one of this plugin's tables")

    def rows(self, table: type[PluginTable]) -> list[tuple]:
        """Every row of one of the plugin's tables, as tuples in column order."""
        self._check(table)
        return self._db.rows(table)

    def write(self, *operations: Operation) -> None:
        """Queue changes to the plugin's tables for the next group commit."""
        for operation in operations:
            self._check(operation.table)
        self._db.write(*operations)

    def committed(self) -> Deferred:
        """Fires once everything written so far is durable."""
        return self._db.committed()


def schema_sql(connection: sqlite3.Connection) -> dict[str, list[tuple[str, str, int]]]:
    """``{table: [(column, declared type, pk position)]}`` as SQLite reports it."""
    result: dict[str, list[tuple[str, str, int]]] = {}
    for table in TABLES:
        name = table._meta.table_name
        info = connection.execute(f"PRAGMA table_info({name})").fetchall()
        result[name] = [(row[1], row[2], row[5]) for row in info]
    return result
