"""The PostgreSQL backend: connection settings, and the SQL that differs from SQLite's.

The tables are the 1.2 ones (same names, columns and order), with INTEGER as BIGINT
(SQLite's integers are 64-bit: a lease's IP or a VM's traffic counters do not fit 32 bits)
and a float as DOUBLE PRECISION (SQLite's REAL).
``INSERT OR REPLACE`` becomes ``INSERT ... ON CONFLICT DO UPDATE`` on the table's key, or a
delete on each unique key then an insert where a table has more than one (SQLite's REPLACE
removes every row any unique key conflicts with). Start-up reads order rows by their key,
or by ``ctid`` (where a row lives: insertion order for the append-mostly attribute tables)
where SQLite used ``rowid``.

psycopg (3) is an optional dependency (``pip install nebula-xr[postgresql]``): nothing
here imports it until a PostgreSQL database is actually used.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import peewee

if TYPE_CHECKING:
    import psycopg

#: PostgreSQL's default port; ``port = 0`` in oned.conf means it, as in OpenNebula's DB.
DEFAULT_PORT = 5432
#: Seconds a connection attempt may take before it counts as failed (and is retried).
CONNECT_TIMEOUT = 5
#: SQLSTATEs of a transaction that may succeed when tried again: serialization failure,
#: deadlock, lock not available, and the server shutting down or starting up.
_TRANSIENT_STATES = frozenset({"40001", "40P01", "55P03", "57P01", "57P02", "57P03"})


class BackendUnavailable(Exception):
    """psycopg is not installed."""


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError as error:
        raise BackendUnavailable(
            "the postgresql backend needs psycopg: pip install 'nebula-xr[postgresql]'"
        ) from error
    return psycopg


@dataclass(frozen=True)
class PostgresSettings:
    """``DB = [ backend = "postgresql", server, port, user, passwd, db_name ]``.

    ``server`` may be a directory: the server's unix socket is there (libpq's rule).
    """

    server: str = "localhost"
    port: int = DEFAULT_PORT
    user: str = "oneadmin"
    passwd: str = ""
    db_name: str = "opennebula"

    @classmethod
    def from_url(cls, url: str) -> PostgresSettings:
        """``postgresql://user:passwd@server:port/db_name`` (a socket directory as server
        is percent-encoded: ``postgresql://user@%2Frun%2Fpostgresql/one``)."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError(f"not a postgresql:// URL: {url!r}")
        try:
            port = parts.port
        except ValueError as error:
            raise ValueError(f"bad port in {url!r}") from error
        defaults = cls()
        return cls(
            server=urllib.parse.unquote(parts.hostname or "") or defaults.server,
            port=port or DEFAULT_PORT,
            user=urllib.parse.unquote(parts.username or "") or defaults.user,
            passwd=urllib.parse.unquote(parts.password or ""),
            db_name=urllib.parse.unquote(parts.path.lstrip("/")) or defaults.db_name,
        )

    def connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "host": self.server,
            "port": self.port or DEFAULT_PORT,
            "user": self.user,
            "connect_timeout": CONNECT_TIMEOUT,
            "application_name": "nebula-xr",
        }
        if self.passwd:
            kwargs["password"] = self.passwd
        return kwargs

    def describe(self) -> str:
        """Where the database is, for messages (never the password)."""
        server = self.server if not self.server.startswith("/") else f"[{self.server}]"
        return f"postgresql://{self.user}@{server}:{self.port or DEFAULT_PORT}/{self.db_name}"

    def connect(self, purpose: str, **extra: Any) -> psycopg.Connection:
        """A new autocommit connection (transactions are begun explicitly), named
        ``nebula-xr <purpose>`` in pg_stat_activity."""
        psycopg = _psycopg()
        kwargs = {**self.connect_kwargs(), "application_name": f"nebula-xr {purpose}"}
        return psycopg.connect(dbname=self.db_name, autocommit=True, **kwargs, **extra)

    def peewee_database(self) -> peewee.PostgresqlDatabase:
        _psycopg()
        return _Postgresql(self.db_name, prefer_psycopg3=True, **self.connect_kwargs())


class _Postgresql(peewee.PostgresqlDatabase):
    # SQLite's REAL is 8 bytes: peewee's FloatField would be PostgreSQL's 4-byte REAL,
    # which keeps 7 digits of a plugin's epoch times (Haizea's lease times).
    field_types = {
        **peewee.PostgresqlDatabase.field_types,
        "INT": "BIGINT",
        "FLOAT": "DOUBLE PRECISION",
    }


def unique_keys(table: type[peewee.Model]) -> list[tuple[str, ...]]:
    """The column sets of a table's primary key and unique columns."""
    meta = table._meta
    keys: list[tuple[str, ...]] = []
    primary = meta.primary_key
    if isinstance(primary, peewee.CompositeKey):
        keys.append(tuple(primary.field_names))
    elif primary is not None and primary is not False:
        keys.append((primary.column_name,))
    keys.extend((field.column_name,) for field in meta.sorted_fields if field.unique)
    return keys


def replace_statements(table: type[peewee.Model]) -> list[tuple[str, tuple[int, ...] | None]]:
    """SQLite's ``INSERT OR REPLACE`` as statements each run for every row: (SQL, the row
    positions that are its parameters, or None for the whole row)."""
    name = table._meta.table_name
    columns = [field.column_name for field in table._meta.sorted_fields]
    marks = ",".join(["%s"] * len(columns))
    insert = f"INSERT INTO {name} VALUES ({marks})"
    keys = unique_keys(table)
    if not keys:
        return [(insert, None)]
    if len(keys) == 1:
        key = keys[0]
        others = [column for column in columns if column not in key]
        action = (
            "DO UPDATE SET " + ", ".join(f"{column} = EXCLUDED.{column}" for column in others)
            if others
            else "DO NOTHING"
        )
        return [(f"{insert} ON CONFLICT ({', '.join(key)}) {action}", None)]
    deletes = [
        (
            f"DELETE FROM {name} WHERE " + " AND ".join(f"{column} = %s" for column in key),
            tuple(columns.index(column) for column in key),
        )
        for key in keys
    ]
    return [*deletes, (insert, None)]


def row_order(table: type[peewee.Model]) -> peewee.Node:
    """SQLite's ``rowid`` order: the key where there is one, else the physical order."""
    meta = table._meta
    primary = meta.primary_key
    if isinstance(primary, peewee.CompositeKey):
        return peewee.SQL(", ".join(primary.field_names))
    if primary is not None and primary is not False:
        return peewee.SQL(primary.column_name)
    return peewee.SQL("ctid")


def driver_errors() -> tuple[type[Exception], ...]:
    """psycopg's errors (a bad value, a constraint, a lost connection)."""
    return (_psycopg().Error, ValueError)


def is_transient(error: BaseException) -> bool:
    """A failure worth retrying: a conflict, or the connection or server went away."""
    psycopg = _psycopg()
    if getattr(error, "sqlstate", None) in _TRANSIENT_STATES:
        return True
    return isinstance(error, psycopg.OperationalError)
