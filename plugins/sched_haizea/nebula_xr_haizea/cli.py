"""onelease: the Haizea leases of a nebula-xr daemon, as a table or ``-o json|xml``.

It talks to the daemon like onevm does (``ONE_XMLRPC``, the ONE_AUTH session), through
the plugin's ``haizea.lease.list`` and ``haizea.lease.info`` methods.
"""

from __future__ import annotations

from typing import Any

import click
from lxml import etree

from nebula_xr.cli.common import (
    Column,
    add_common_options,
    client,
    json_text,
    parse,
    pick_columns,
    render_table,
    settings,
    short_time,
)

#: Leaves that are numbers; the others are text.
_NUMBERS = {"ID", "UID", "PREEMPTIBLE", "SUBMITTED", "DURATION", "WORK_DONE", "START", "END"}
_NUMBERS |= {"SUSPEND"}
#: States of leases waiting for their turn, in ``onelease queue``.
_WAITING = ("queued", "scheduled", "suspended", "pending")


def lease_data(element: etree._Element) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for child in element:
        text = child.text or ""
        if child.tag in _NUMBERS:
            data[child.tag] = int(text)
        elif child.tag in ("VMS", "HOSTS"):
            data[child.tag] = [int(part) for part in text.split(",") if part]
        else:
            data[child.tag] = text
    return data


def _time(epoch: int) -> str:
    return short_time(epoch) if epoch >= 0 else "--"


def _duration(seconds: int) -> str:
    if seconds < 0:
        return "unlimited"
    return f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _ids(values: list[int]) -> str:
    return ",".join(str(value) for value in values) or "--"


LEASE_COLUMNS = {
    "id": Column("ID", 4, lambda lease: lease["ID"], "Lease id (its first VM's id)"),
    "type": Column("TYPE", 18, lambda lease: lease["TYPE"], "Lease type", left=True),
    "state": Column("STATE", 10, lambda lease: lease["STATE"], "Haizea lease state", left=True),
    "vms": Column("VMS", 8, lambda lease: _ids(lease["VMS"]), "VM ids", left=True),
    "hosts": Column("HOSTS", 8, lambda lease: _ids(lease["HOSTS"]), "Host ids", left=True),
    "duration": Column("DURATION", 9, lambda lease: _duration(lease["DURATION"]), "Asked for"),
    "start": Column("START", 14, lambda lease: _time(lease["START"]), "Planned start"),
    "end": Column("END", 14, lambda lease: _time(lease["END"]), "Planned end"),
}
LEASE_DEFAULT = tuple(LEASE_COLUMNS)


def _leases() -> tuple[str, list[dict[str, Any]]]:
    document = client().document("haizea.lease.list")
    return document, [lease_data(element) for element in parse(document)]


def _show(document: str, leases: list[dict[str, Any]]) -> None:
    output = settings().output
    if output == "xml":
        click.echo(document)
    elif output == "json":
        click.echo(json_text(leases))
    else:
        click.echo(render_table(pick_columns(LEASE_COLUMNS, LEASE_DEFAULT), leases))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """The Haizea leases: advance reservations, immediate and best-effort leases."""


@main.command("list")
def list_() -> None:
    """Every lease you can see, with its state and planned start and end."""
    _show(*_leases())


@main.command()
def queue() -> None:
    """Leases waiting for their turn, in queue (submission) order."""
    document, leases = _leases()
    waiting = sorted(
        (lease for lease in leases if lease["STATE"] in _WAITING),
        key=lambda lease: (lease["SUBMITTED"], lease["ID"]),
    )
    root = parse(document)
    for element in list(root):
        if element.findtext("STATE") not in _WAITING:
            root.remove(element)
    _show(etree.tostring(root, encoding="unicode"), waiting)


@main.command()
@click.argument("lease_id", type=int)
def show(lease_id: int) -> None:
    """One lease."""
    document = client().document("haizea.lease.info", lease_id)
    lease = lease_data(parse(document))
    output = settings().output
    if output == "xml":
        click.echo(document)
    elif output == "json":
        click.echo(json_text(lease))
    else:
        for column in LEASE_COLUMNS.values():
            click.echo(f"{column.header:<10}: {column.value(lease)}")


add_common_options(main)
