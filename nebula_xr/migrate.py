"""``nebula-xr db migrate``: copy a 1.2 one.db (SQLite) into a PostgreSQL database.

The target gets the same tables (created if missing) and every row, in one transaction:
either all of one.db is there afterwards or nothing is. A target that already holds rows
is refused, so a second run never duplicates a database that a daemon may be using.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import click
import peewee

from nebula_xr.database import TABLES, UserPoolRow, database_proxy
from nebula_xr.postgresql import (
    BackendUnavailable,
    PostgresSettings,
    driver_errors,
    replace_statements,
)

#: What is copied: the nine 1.2 tables, and 1.4's user table when one.db has it.
COPIED = (*TABLES, UserPoolRow)


class MigrationError(Exception):
    """The copy cannot be made; the message says why (nothing was written)."""


def _source_tables(source: sqlite3.Connection) -> set[str]:
    rows = source.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    return {row[0] for row in rows}


def migrate(path: Path, target: PostgresSettings) -> dict[str, int]:
    """Copy one.db at ``path`` into ``target``; returns the rows copied per table."""
    if not path.is_file():
        raise MigrationError(f"{path} is not a file")
    try:
        source = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        present = _source_tables(source)
    except sqlite3.DatabaseError as error:
        raise MigrationError(f"Can not read {path}: {error}") from error
    missing = [table._meta.table_name for table in TABLES if table._meta.table_name not in present]
    if missing:
        raise MigrationError(f"{path} is not a one.db: no table {', '.join(missing)}")
    try:
        database = target.peewee_database()
        database_proxy.initialize(database)
        database.connect()
        database.create_tables(COPIED, safe=True)
    except (BackendUnavailable, peewee.DatabaseError) as error:
        raise MigrationError(f"Can not open {target.describe()}: {error}") from error
    copied: dict[str, int] = {}
    try:
        with database.atomic():
            cursor = database.cursor()
            for table in COPIED:
                name = table._meta.table_name
                cursor.execute(f"SELECT 1 FROM {name} LIMIT 1")
                if cursor.fetchone() is not None:
                    raise MigrationError(
                        f"{target.describe()} already holds rows in {name}: not copied"
                    )
            for table in COPIED:
                name = table._meta.table_name
                if name not in present:
                    continue
                width = len(table._meta.sorted_fields)
                rows = source.execute(f"SELECT * FROM {name} ORDER BY rowid").fetchall()
                if rows and len(rows[0]) != width:
                    raise MigrationError(
                        f"{path}: {name} has {len(rows[0])} columns, not 1.2's {width}"
                    )
                # 1.2 wrote with INSERT OR REPLACE too: the same rows survive.
                for sql, positions in replace_statements(table):
                    keyed = rows
                    if positions is not None:
                        keyed = [tuple(row[position] for position in positions) for row in rows]
                    if keyed:
                        cursor.executemany(sql, keyed)
                copied[name] = len(rows)
    except (peewee.DatabaseError, *driver_errors()) as error:
        # psycopg's own errors too: peewee does not wrap a raw cursor's executemany.
        raise MigrationError(f"Can not copy into {target.describe()}: {error}") from error
    finally:
        source.close()
        database.close()
    return copied


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
    help="The PostgreSQL database to fill (it must hold no rows of the 1.2 tables).",
)
def migrate_command(source: str, target: str) -> None:
    """Copy a 1.2 one.db into PostgreSQL, for DB = [ backend = "postgresql", ... ]."""
    if not source.startswith("sqlite:"):
        raise click.BadParameter("must be sqlite:PATH", param_hint="--from")
    try:
        settings = PostgresSettings.from_url(target)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--to") from error
    try:
        copied = migrate(Path(source.removeprefix("sqlite:")), settings)
    except MigrationError as error:
        raise click.ClickException(" ".join(str(error).split())) from error
    total = sum(copied.values())
    detail = ", ".join(f"{name} {count}" for name, count in copied.items())
    click.echo(f"Copied {total} rows into {settings.describe()}: {detail}")
