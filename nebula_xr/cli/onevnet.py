"""``onevnet``: create, show, list and delete virtual networks (the 1.2 verbs)."""

from __future__ import annotations

import click

from nebula_xr import __version__
from nebula_xr.cli.common import (
    Client,
    CliError,
    Column,
    add_common_options,
    client,
    column_help,
    pick_columns,
    read_file,
    render,
    render_table,
    resolve,
    say,
    settings,
)

VNET_COLUMNS = {
    "nid": Column("NID", 4, lambda vn: vn["ID"], "ONE identifier for virtual network"),
    "name": Column("NAME", 15, lambda vn: vn["NAME"], "Name of the virtual network", left=True),
    "user": Column("USER", 8, lambda vn: vn["USERNAME"], "Owner of the virtual network"),
    "type": Column(
        "TYPE",
        6,
        lambda vn: "Ranged" if vn["TYPE"] == 0 else "Fixed",
        "Type of virtual network",
    ),
    "bridge": Column("BRIDGE", 6, lambda vn: vn["BRIDGE"], "Bridge of the virtual network"),
    "leases": Column("LEASES", 6, lambda vn: vn["TOTAL_LEASES"], "Number of leases in use"),
}
VNET_DEFAULT = ("nid", "name", "type", "bridge")


def resolve_vnet(one: Client, text: str) -> int:
    return resolve(
        text,
        "virtual network",
        lambda: one.data("one.vnpool.info", -2),
        lambda network, name: network["NAME"] == name,
        lambda network: str(network["ID"]),
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onevnet (nebula-xr)")
def main() -> None:
    """Manage virtual networks. NETWORK arguments are ids or names."""


@main.command()
@click.argument("template_file", metavar="TEMPLATE")
def create(template_file: str) -> None:
    """Create a virtual network described in the TEMPLATE file."""
    # The 1.4 method says why a network cannot be created, on the line after the template
    # (1.2's only echoed the template).
    try:
        nid = client().call("one.vn.allocate", read_file(template_file))
    except CliError as error:
        if not error.message.startswith("Error allocating VN with template:"):
            raise
        reason = error.message.rsplit("\n", 1)[-1]
        raise CliError(f"Can not create a network from {template_file}: {reason}") from error
    say(f"NID: {nid}")


@main.command()
@click.argument("network")
def delete(network: str) -> None:
    """Remove a virtual network (even with leases in use)."""
    one = client()
    one.call("one.vndelete", resolve_vnet(one, network))
    say("Virtual Network deleted")


@main.command("list")
def list_() -> None:
    """Show every virtual network."""
    columns = pick_columns(VNET_COLUMNS, VNET_DEFAULT)
    document = client().document("one.vnpool.info", -2)
    click.echo(render(document, lambda networks: render_table(columns, networks)))


@main.command()
@click.argument("network")
def show(network: str) -> None:
    """Show a virtual network, its template and its leases (1.2's text by default)."""
    one = client()
    nid = resolve_vnet(one, network)
    if settings().output == "table":
        click.echo(one.call("one.vninfo", nid), nl=False)
    else:
        click.echo(render(one.document("one.vn.info", nid), str))


@main.command("list-columns")
def list_columns() -> None:
    """Describe the columns --list chooses from."""
    click.echo(column_help(VNET_COLUMNS))


add_common_options(main)
