"""``onehost``: add, enable, disable, watch and remove hosts (the 1.2 verbs)."""

from __future__ import annotations

from typing import Any

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
    render,
    render_table,
    resolve,
    say,
    settings,
    top,
)

_SHORT_HOST_STATES = ("on", "on", "on", "err", "off")


def _short_state(host: dict[str, Any]) -> str:
    state = host["STATE"]
    return _SHORT_HOST_STATES[state] if 0 <= state < len(_SHORT_HOST_STATES) else str(state)


def _share(name: str) -> Any:
    return lambda host: host["HOST_SHARE"][name]


def _available_cpu(host: dict[str, Any]) -> int:
    # 1.2 counts an unmonitored host as one CPU.
    share = host["HOST_SHARE"]
    return (share["MAX_CPU"] or 100) - share["CPU_USAGE"]


HOST_COLUMNS = {
    "hid": Column("HID", 4, lambda host: host["ID"], "ONE identifier for host"),
    "name": Column("NAME", 25, lambda host: host["NAME"], "Hostname", left=True),
    "rvm": Column("RVM", 3, _share("RUNNING_VMS"), "Number of virtual machines running"),
    "tcpu": Column("TCPU", 6, _share("MAX_CPU"), "Total cpu percentage"),
    "fcpu": Column(
        "FCPU",
        6,
        lambda host: host["HOST_SHARE"]["MAX_CPU"] - host["HOST_SHARE"]["USED_CPU"],
        "Free cpu percentage",
    ),
    "acpu": Column("ACPU", 6, _available_cpu, "Available cpu percentage (not reserved by VMs)"),
    "tmem": Column("TMEM", 7, _share("MAX_MEM"), "Total memory (KB)"),
    "fmem": Column("FMEM", 7, _share("FREE_MEM"), "Free memory (KB)"),
    "stat": Column("STAT", 4, _short_state, "Host status"),
}
HOST_DEFAULT = tuple(HOST_COLUMNS)


def resolve_host(one: Client, text: str) -> int:
    return resolve(
        text,
        "host",
        lambda: one.data("one.hostpool.info"),
        lambda host, name: host["NAME"] == name,
        lambda host: f"{host['ID']} ({_short_state(host)})",
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onehost (nebula-xr)")
def main() -> None:
    """Manage the hosts VMs run on. HOST arguments are ids or names."""


@main.command("add")
@click.argument("hostname")
@click.argument("im_mad")
@click.argument("vmm_mad")
@click.argument("tm_mad")
@click.argument("managed", required=False, default="true")
def add(hostname: str, im_mad: str, vmm_mad: str, tm_mad: str, managed: str) -> None:
    """Add HOSTNAME, monitored with IM_MAD, running VMs with VMM_MAD, images moved with
    TM_MAD (alias: create). MANAGED: true (default) or false, 1 or 0."""
    flags = {"true": True, "1": True, "false": False, "0": False}
    if managed.lower() not in flags:
        raise CliError("use true/false or 0/1 for the managed parameter")
    one = client()
    same_name = [host["ID"] for host in one.data("one.hostpool.info") if host["NAME"] == hostname]
    if same_name:
        ids = ", ".join(str(hid) for hid in same_name)
        click.echo(f"Warning: a host named {hostname} already exists (ID {ids})", err=True)
    if flags[managed.lower()]:
        # The 1.4 method refuses drivers oned.conf does not configure (1.2 accepted them).
        hid = one.call("one.host.allocate", hostname, im_mad, vmm_mad, tm_mad)
    else:
        hid = one.call("one.hostallocate", hostname, im_mad, vmm_mad, tm_mad, False)
    say(f"HID: {hid}")


main.add_command(add, "create")


@main.command()
@click.argument("host")
def delete(host: str) -> None:
    """Remove a host (its VMs are not touched)."""
    one = client()
    one.call("one.hostdelete", resolve_host(one, host))
    say("Host deleted")


@main.command()
@click.argument("host")
def enable(host: str) -> None:
    """Monitor a host again and let VMs be scheduled on it."""
    one = client()
    one.call("one.hostenable", resolve_host(one, host), True)
    say("Host enabled")


@main.command()
@click.argument("host")
def disable(host: str) -> None:
    """Stop monitoring a host and scheduling VMs on it."""
    one = client()
    one.call("one.hostenable", resolve_host(one, host), False)
    say("Host disabled")


def _host_list(one: Client) -> str:
    columns = pick_columns(HOST_COLUMNS, HOST_DEFAULT)
    return render(one.document("one.hostpool.info"), lambda hosts: render_table(columns, hosts))


@main.command("list")
def list_() -> None:
    """Show every host and its capacity."""
    click.echo(_host_list(client()))


@main.command("top")
def top_() -> None:
    """List the hosts continuously, until interrupted."""
    one = client()
    top(lambda: _host_list(one))


@main.command()
@click.argument("host")
def show(host: str) -> None:
    """Show a host: drivers, monitored attributes and capacity (1.2's text by default)."""
    one = client()
    hid = resolve_host(one, host)
    if settings().output == "table":
        click.echo(one.call("one.hostinfo", hid), nl=False)
    else:
        click.echo(render(one.document("one.host.info", hid), str))


@main.command("list-columns")
def list_columns() -> None:
    """Describe the columns --list chooses from."""
    click.echo(column_help(HOST_COLUMNS))


add_common_options(main)
