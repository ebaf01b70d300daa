"""``nebula-xr db migrate``: copy a one.db (SQLite) into a PostgreSQL database.

Every table the daemon owns is copied: 1.2's nine, and those nebula-xr adds when one.db
has them (1.4's users, the monitoring history, and the tables of the installed scheduler
plugins, which each plugin declares with ``nebula_xr_tables``). The list comes from the
models, so a table added to the core or a plugin is copied without a change here; a
table in one.db that no model declares (a plugin that is not installed) is refused
rather than left behind. The target gets every table (created if missing) and every
row, in one transaction: either all of one.db is there afterwards or nothing is. A
target that already holds rows is refused, so a second run never duplicates a database
that a daemon may be using.

Ids are the rows' own: the daemon allocates the next one above the highest it loads, so
copying the rows keeps them; a plugin table with an automatic key gets its sequence set
past the copied rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import peewee

from nebula_xr.database import CORE_TABLES, TABLES, PluginTable, database_proxy
from nebula_xr.plugin_manager import PluginError, PluginManager
from nebula_xr.postgresql import (
    BackendUnavailable,
    PostgresSettings,
    driver_errors,
    replace_statements,
)
from nebula_xr.scheduling import SchedulerConfig


class MigrationError(Exception):
    """The copy cannot be made; the message says why (nothing was written)."""


def installed_plugin_tables() -> list[type[PluginTable]]:
    """The tables each installed plugin keeps when oned.conf makes it the scheduler."""
    manager = PluginManager()
    manager.load()
    tables: list[type[PluginTable]] = []
    for plugin in manager.installed():
        try:
            tables.extend(manager.plugin_tables(SchedulerConfig(plugin=plugin.name)))
        except PluginError as error:
            raise MigrationError(str(error)) from error
    return tables


def _source_columns(source: sqlite3.Connection) -> dict[str, list[str]]:
    """Each table of one.db (SQLite's own left out) with its column names, in order."""
    rows = source.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' "
        "ESCAPE '\\'"
    ).fetchall()
    return {
        name: [
            column.lower()
            for (column,) in source.execute("SELECT name FROM pragma_table_info(?)", (name,))
        ]
        for (name,) in rows
    }


def _columns(table: type[peewee.Model]) -> list[str]:
    return [field.column_name for field in table._meta.sorted_fields]


def migrate(
    path: Path, target: PostgresSettings, plugin_tables: Sequence[type[PluginTable]] = ()
) -> dict[str, int]:
    """Copy one.db at ``path`` into ``target``: the core's tables and ``plugin_tables``;
    returns the rows copied per table."""
    if not path.is_file():
        raise MigrationError(f"{path} is not a file")
    try:
        source = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        present = _source_columns(source)
    except sqlite3.DatabaseError as error:
        raise MigrationError(f"Can not read {path}: {error}") from error
    missing = [table._meta.table_name for table in TABLES if table._meta.table_name not in present]
    if missing:
        raise MigrationError(f"{path} is not a one.db: no table {', '.join(missing)}")
    owned = (*CORE_TABLES, *plugin_tables)
    unknown = sorted(set(present) - {table._meta.table_name for table in owned})
    if unknown:
        raise MigrationError(
            f"{path} holds tables that neither nebula-xr nor an installed plugin declares: "
            f"{', '.join(unknown)} (install the plugin that keeps them); nothing copied"
        )
    for table in owned:
        name = table._meta.table_name
        if name in present and present[name] != _columns(table):
            raise MigrationError(
                f"{path}: {name} has columns ({', '.join(present[name])}), "
                f"not ({', '.join(_columns(table))})"
            )
    try:
        database = target.peewee_database()
        database_proxy.initialize(database)
        database.connect()
        database.create_tables(owned, safe=True)
    except (BackendUnavailable, peewee.DatabaseError) as error:
        raise MigrationError(f"Can not open {target.describe()}: {error}") from error
    copied: dict[str, int] = {}
    try:
        with database.atomic():
            cursor = database.cursor()
            for table in owned:
                name = table._meta.table_name
                cursor.execute(f"SELECT 1 FROM {name} LIMIT 1")
                if cursor.fetchone() is not None:
                    raise MigrationError(
                        f"{target.describe()} already holds rows in {name}: not copied"
                    )
            for table in owned:
                name = table._meta.table_name
                if name not in present:
                    continue
                rows = source.execute(f"SELECT * FROM {name} ORDER BY rowid").fetchall()
                # 1.2 wrote with INSERT OR REPLACE too: the same rows survive.
                for sql, positions in replace_statements(table):
                    keyed = rows
                    if positions is not None:
                        keyed = [tuple(row[position] for position in positions) for row in rows]
                    if keyed:
                        cursor.executemany(sql, keyed)
                _advance_sequences(cursor, table)
                copied[name] = len(rows)
    except (peewee.DatabaseError, *driver_errors()) as error:
        # psycopg's own errors too: peewee does not wrap a raw cursor's executemany.
        raise MigrationError(f"Can not copy into {target.describe()}: {error}") from error
    finally:
        source.close()
        database.close()
    return copied


def _advance_sequences(cursor: Any, table: type[peewee.Model]) -> None:
    """An automatic key's next value comes after the copied rows' highest."""
    name = table._meta.table_name
    for field in table._meta.sorted_fields:
        if isinstance(field, peewee.AutoField):
            column = field.column_name
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{name}', '{column}'), "
                f"coalesce(max({column}), 0) + 1, false) FROM {name}"
            )


@click.group("db")
def db_command() -> None:
    """Database tools."""


@db_command.command("migrate")
@click.option(
    "--from",
    "source",
    required=True,
    metavar="sqlite:PATH",
    help="The one.db to copy (it is only read).",
)
@click.option(
    "--to",
    "target",
    required=True,
    metavar="postgresql://USER:PASSWD@SERVER:PORT/DB_NAME",
    help="The PostgreSQL database to fill (its tables must hold no rows).",
)
def migrate_command(source: str, target: str) -> None:
    """Copy a one.db into PostgreSQL, for DB = [ backend = "postgresql", ... ]: every
    table of nebula-xr and of the installed scheduler plugins."""
    if not source.startswith("sqlite:"):
        raise click.BadParameter("must be sqlite:PATH", param_hint="--from")
    try:
        settings = PostgresSettings.from_url(target)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--to") from error
    try:
        copied = migrate(Path(source.removeprefix("sqlite:")), settings, installed_plugin_tables())
    except MigrationError as error:
        raise click.ClickException(" ".join(str(error).split())) from error
    total = sum(copied.values())
    detail = ", ".join(f"{name} {count}" for name, count in copied.items())
    click.echo(f"Copied {total} rows into {settings.describe()}: {detail}")
