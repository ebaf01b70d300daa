"""``nebula-xr-host-error``: 2.2's host_error hook, for a HOST_HOOK on ERROR.

    HOST_HOOK = [ name = "error", on = "ERROR", command = "nebula-xr-host-error",
                  arguments = "$HID -r n", remote = "no" ]

Every VM running on the host (ACTIVE, its current history record there) is resubmitted
(``-r``, the default: back to PENDING, the scheduler places it on another host, where
its persistent disks are used again from shared storage) or deleted (``-d``, 1.4's
finalize). With ``y`` as the last argument SUSPENDED VMs of the host are included (2.2
refuses to resubmit them; they can be deleted).

It talks to the daemon over XML-RPC (``$ONE_XMLRPC``, set by the daemon for its hooks)
with the session of the ONE_AUTH file (``$ONE_AUTH``, else ``~/.one/one_auth``): run as a
local hook it inherits the daemon's environment, so that is the administrator's file the
daemon was started with (``nebula_xr.vm.resubmit`` is oneadmin's). It does nothing unless
the host is in ERROR (one being monitored again is waited for). The daemon
fences: a VM is resubmitted only once its domain is destroyed, or its host is in
ERROR and unreachable (the domain is then destroyed as soon as the host answers again).
"""

from __future__ import annotations

import time

import click

from nebula_xr import __version__
from nebula_xr.cli.common import FAILURE, Client, CliError, client

ACTIVE, SUSPENDED = 3, 5
HOST_MONITORING, HOST_ERROR = 1, 3
#: Seconds to wait for a monitoring under way to end: a host in ERROR is monitored again
#: (MONITORING meanwhile), and the hook may ask just then.
MONITORING_WAIT = 60.0


def vms_on_host(one: Client, hid: int, states: tuple[int, ...]) -> list[int]:
    """Ids of the VMs in ``states`` whose current history record is on host ``hid``."""
    return [
        vm["ID"]
        for vm in one.data("one.vmpool.info", -2)
        if vm["STATE"] in states and (vm.get("HISTORY") or {}).get("HID") == hid
    ]


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("hid", type=int)
@click.option("-r", "mode", flag_value="resubmit", default=True, help="Resubmit the VMs (default).")
@click.option("-d", "mode", flag_value="delete", help="Delete the VMs.")
@click.argument("force", required=False, default="n", type=click.Choice(["y", "n"]))
@click.version_option(__version__, prog_name="nebula-xr-host-error")
def main(hid: int, mode: str, force: str) -> None:
    """Resubmit (-r) or delete (-d) the VMs of host HID, which is in ERROR; FORCE y
    includes its SUSPENDED VMs."""
    one = client()
    host = one.data("one.host.info", hid)
    deadline = time.monotonic() + MONITORING_WAIT
    while host["STATE"] == HOST_MONITORING and time.monotonic() < deadline:
        time.sleep(0.2)
        host = one.data("one.host.info", hid)
    if host["STATE"] != HOST_ERROR:
        raise CliError(f"host {hid} ({host['NAME']}) is not in ERROR: nothing done")
    states = (ACTIVE, SUSPENDED) if force == "y" else (ACTIVE,)
    failed = 0
    for vid in vms_on_host(one, hid, states):
        try:
            if mode == "resubmit":
                one.call("nebula_xr.vm.resubmit", vid)
            else:
                one.call("one.vm.action", "finalize", vid)
        except CliError as error:
            failed += 1
            click.echo(f"VM {vid}: {error.message}", err=True)
        else:
            click.echo(f"VM {vid}: {'resubmitted' if mode == 'resubmit' else 'deleted'}")
    if failed:
        raise click.exceptions.Exit(FAILURE)
