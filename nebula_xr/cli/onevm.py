"""``onevm``: submit, control and watch virtual machines (the 1.2 verbs, plus console)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
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
    json_text,
    parse,
    pick_columns,
    read_file,
    render,
    render_table,
    resolve,
    running_time,
    say,
    settings,
    short_time,
    to_data,
    top,
)
from nebula_xr.cli.onehost import resolve_host
from nebula_xr.drivers.base import CONSOLE_METHODS
from nebula_xr.model import HostState, LCMState, VMState

_SHORT_VM_STATES = ("init", "pend", "hold", "actv", "stop", "susp", "done", "fail")
_SHORT_LCM_STATES = {
    LCMState.PROLOG: "prol",
    LCMState.BOOT: "boot",
    LCMState.RUNNING: "runn",
    LCMState.MIGRATE: "migr",
    LCMState.SAVE_STOP: "save",
    LCMState.SAVE_SUSPEND: "save",
    LCMState.SAVE_MIGRATE: "save",
    LCMState.PROLOG_MIGRATE: "migr",
    LCMState.PROLOG_RESUME: "prol",
    LCMState.EPILOG_STOP: "epil",
    LCMState.EPILOG: "epil",
    LCMState.SHUTDOWN: "shut",
    LCMState.CANCEL: "shut",
    LCMState.FAILURE: "fail",
    LCMState.DELETE: "dele",
    LCMState.UNKNOWN: "unkn",
}
_SHORT_REASONS = ("none", "erro", "stop", "user", "canc")


def short_state(vm: dict[str, Any]) -> str:
    """``onevm list``'s STAT: the VM state, or the LCM state of an ACTIVE VM."""
    state = vm["STATE"]
    if state == VMState.ACTIVE:
        return _SHORT_LCM_STATES.get(vm["LCM_STATE"], "actv")
    return _SHORT_VM_STATES[state] if 0 <= state < len(_SHORT_VM_STATES) else str(state)


def _state_name(enum: type[VMState] | type[LCMState], value: int) -> str:
    try:
        return enum(value).name
    except ValueError:
        return str(value)


def _hostname(vm: dict[str, Any]) -> str:
    return vm.get("HISTORY", {}).get("HOSTNAME", "")


def _reason(record: dict[str, Any]) -> str:
    reason = record["REASON"]
    return _SHORT_REASONS[reason] if 0 <= reason < len(_SHORT_REASONS) else str(reason)


VM_COLUMNS = {
    "id": Column("ID", 4, lambda vm: vm["ID"], "ONE identifier for the VM"),
    "name": Column("NAME", 8, lambda vm: vm["NAME"], "Name of the VM"),
    "deploy_id": Column(
        "DEPLOY_ID", 9, lambda vm: vm["DEPLOY_ID"], "Name of the domain on its hypervisor"
    ),
    "user": Column("USER", 8, lambda vm: vm["USERNAME"], "Owner of the VM"),
    "stat": Column("STAT", 4, short_state, "Actual status of the VM"),
    "cpu": Column("CPU", 3, lambda vm: vm["CPU"], "CPU percentage used by the VM"),
    "mem": Column("MEM", 7, lambda vm: vm["MEMORY"], "Memory used by the VM (KB)"),
    "hostname": Column("HOSTNAME", 15, _hostname, "Machine where the VM is running"),
    "time": Column(
        "TIME",
        11,
        lambda vm: running_time(vm["STIME"], vm["ETIME"]),
        "Time since the VM was submitted",
    ),
}
VM_DEFAULT = ("id", "name", "deploy_id", "stat", "cpu", "mem", "hostname", "time")

HISTORY_COLUMNS = {
    "id": Column("ID", 4, lambda r: r["VID"], "ONE identifier for the VM"),
    "seq": Column("SEQ", 3, lambda r: r["SEQ"], "Sequence number"),
    "hostname": Column("HOSTNAME", 15, lambda r: r["HOSTNAME"], "Host of this placement"),
    "stime": Column("STIME", 14, lambda r: short_time(r["STIME"]), "Start time"),
    "etime": Column("ETIME", 14, lambda r: short_time(r["ETIME"]), "End time"),
    "time": Column(
        "TIME", 11, lambda r: running_time(r["STIME"], r["ETIME"]), "Time spent on the host"
    ),
    "reason": Column("REASON", 6, _reason, "Why the VM left the host"),
}


def _candidate(vm: dict[str, Any]) -> str:
    details = (vm["DEPLOY_ID"], short_state(vm), _hostname(vm))
    return f"{vm['ID']} ({', '.join(detail for detail in details if detail)})"


def resolve_vm(one: Client, text: str) -> int:
    """A VM by id, by name or by deploy id (its hypervisor's name), among the VMs
    ``onevm list`` shows."""
    return resolve(
        text,
        "VM",
        lambda: one.data("one.vmpool.info", -2),
        lambda vm, name: name in (vm["NAME"], vm["DEPLOY_ID"]),
        _candidate,
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onevm (nebula-xr)")
def main() -> None:
    """Manage virtual machines. VM and HOST arguments are ids or names; a VM may also be
    named by its deploy id (the hypervisor's domain name)."""


def _state_text(vm: dict[str, Any]) -> str:
    """``PENDING``, or ``ACTIVE (PROLOG)`` for an ACTIVE VM (as the 1.4 replies say it)."""
    state = _state_name(VMState, vm["STATE"])
    if vm["STATE"] == VMState.ACTIVE:
        return f"{state} ({_state_name(LCMState, vm['LCM_STATE'])})"
    return state


def _vm_call(one: Client, vid: int, method: str, *args: Any, hid: int | None = None) -> Any:
    """A request about VM ``vid`` (to host ``hid``); a wrong-state refusal also says the
    VM's state, or that it already runs on that host."""
    try:
        return one.call(method, *args)
    except CliError as error:
        if error.message == WRONG_STATE or error.message.endswith(", wrong state"):
            vm = one.data("one.vm.info", vid)
            running = (vm["STATE"], vm["LCM_STATE"]) == (VMState.ACTIVE, LCMState.RUNNING)
            if running and hid is not None and vm.get("HISTORY", {}).get("HID") == hid:
                raise CliError(f"{error.message}: VM {vid} already runs on host {hid}") from error
            raise CliError(f"{error.message}: VM {vid} is {_state_text(vm)}") from error
        raise


def _usable_host(one: Client, host: str, force: bool, verb: str) -> int:
    """The id of HOST; a DISABLED or ERROR host is refused unless ``force``."""
    hid = resolve_host(one, host)
    if not force:
        found = one.data("one.host.info", hid)
        if found["STATE"] in (HostState.DISABLED, HostState.ERROR):
            state = HostState(found["STATE"]).name
            raise CliError(f"Host {found['NAME']} is {state}: use --force to {verb} on it anyway")
    return hid


WRONG_STATE = "Wrong state to perform action"
_FORCE = click.option(
    "--force", is_flag=True, help="Use the host even if it is DISABLED or in ERROR."
)


@main.command("create")
@click.argument("template_file", metavar="TEMPLATE")
def create(template_file: str) -> None:
    """Submit a VM described in the TEMPLATE file (alias: submit)."""
    # The 1.4 method says where a template is wrong (MEMORY = lots included) and why
    # leases could not be had; 1.2's only said "Error parsing VM template".
    vid = client().call("one.vm.allocate", read_file(template_file))
    say(f"ID: {vid}")


main.add_command(create, "submit")


@main.command()
@click.argument("vm")
@click.argument("host")
@_FORCE
def deploy(vm: str, host: str, force: bool) -> None:
    """Start a pending VM on HOST."""
    one = client()
    vid = resolve_vm(one, vm)
    _vm_call(one, vid, "one.vmdeploy", vid, _usable_host(one, host, force, "deploy"))
    say("Deploying VM")


def _migrate(vm: str, host: str, live: bool, force: bool) -> None:
    one = client()
    vid = resolve_vm(one, vm)
    hid = _usable_host(one, host, force, "migrate")
    _vm_call(one, vid, "one.vmmigrate", vid, hid, live, hid=hid)
    say("Migrating VM")


@main.command()
@click.argument("vm")
@click.argument("host")
@_FORCE
def livemigrate(vm: str, host: str, force: bool) -> None:
    """Move a running VM to HOST without stopping it."""
    _migrate(vm, host, True, force)


@main.command()
@click.argument("vm")
@click.argument("host")
@_FORCE
def migrate(vm: str, host: str, force: bool) -> None:
    """Save a running VM and start it again on HOST."""
    _migrate(vm, host, False, force)


def _add_action(verb: str, action: str, done: str, summary: str) -> None:
    """``onevm <verb> VM``: one.vmaction with 1.2's rules and messages."""

    def command(vm: str) -> None:
        one = client()
        vid = resolve_vm(one, vm)
        _vm_call(one, vid, "one.vmaction", action, vid)
        say(done)

    main.command(verb, help=summary)(click.argument("vm")(command))


for _verb, _action, _done, _summary in (
    ("shutdown", "shutdown", "Shutting down VM", "Shut a running VM down."),
    ("hold", "hold", "Setting VM to hold state", "Keep a pending VM from being scheduled."),
    ("release", "release", "Releasing VM", "Let a held VM be scheduled again."),
    ("stop", "stop", "Stopping VM", "Save a running VM and move its images off its host."),
    ("cancel", "cancel", "Cancelling VM", "Destroy a running VM at once."),
    ("suspend", "suspend", "Suspending VM", "Save a running VM; its images stay on its host."),
    ("resume", "resume", "Resuming VM", "Resume a stopped or suspended VM."),
    ("delete", "finalize", "VM correctly deleted", "Remove a VM that is not active."),
):
    _add_action(_verb, _action, _done, _summary)


@main.command()
@click.argument("vm")
def restart(vm: str) -> None:
    """Boot again a VM stuck booting or lost by its host (state unkn)."""
    one = client()
    one.call("one.vm.action", "restart", resolve_vm(one, vm))
    say("Restarting VM")


@main.command()
@click.option("--success", "outcome", flag_value="success", help="The pending step succeeded.")
@click.option("--failure", "outcome", flag_value="failure", help="The pending step failed.")
@click.argument("vm")
def recover(vm: str, outcome: str | None) -> None:
    """Settle by hand a VM stuck waiting for a driver (prol, boot, migr, save, epil,
    shut...): say whether its pending step succeeded or failed; it goes on from there."""
    if outcome is None:
        raise click.UsageError("say how the pending step ended: --success or --failure")
    one = client()
    one.call("one.vm.recover", resolve_vm(one, vm), outcome == "success")
    say("Recovering VM")


def _vm_list(one: Client) -> str:
    columns = pick_columns(VM_COLUMNS, VM_DEFAULT)
    return render(one.document("one.vmpool.info", -2), lambda vms: render_table(columns, vms))


@main.command("list")
def list_() -> None:
    """Show the VMs that are not done."""
    click.echo(_vm_list(client()))


@main.command("top")
def top_() -> None:
    """List the VMs continuously, until interrupted."""
    one = client()
    top(lambda: _vm_list(one))


def _show_text(vm: dict[str, Any]) -> str:
    """1.2's ``onevm show`` layout (with the name added)."""
    header = (
        ("VID", vm["ID"]),
        ("NAME", vm["NAME"]),
        ("UID", vm["UID"]),
        ("STATE", _state_name(VMState, vm["STATE"])),
        ("LCM STATE", _state_name(LCMState, vm["LCM_STATE"])),
        ("DEPLOY ID", vm["DEPLOY_ID"]),
        ("MEMORY", vm["MEMORY"]),
        ("CPU", vm["CPU"]),
        ("LAST POLL", vm["LAST_POLL"]),
        ("START TIME", short_time(vm["STIME"])),
        ("STOP TIME", short_time(vm["ETIME"])),
        ("NET TX", vm["NET_TX"]),
        ("NET RX", vm["NET_RX"]),
    )
    lines = [f"{label:<15}: {value!s:<20}" for label, value in header]
    lines += ["", "....: Template :...."]
    for name, value in sorted(vm["TEMPLATE"].items()):
        for item in value if isinstance(value, list) else [value]:
            text = item if isinstance(item, str) else ",".join(f"{k}={v}" for k, v in item.items())
            lines.append(f"    {name:<16}: {text:<20}")
    return "\n".join(lines)


@main.command()
@click.argument("vm")
def show(vm: str) -> None:
    """Show a VM and its template."""
    one = client()
    click.echo(render(one.document("one.vm.info", resolve_vm(one, vm)), _show_text))


@main.command()
@click.argument("vms", nargs=-1, metavar="[VM]...")
def history(vms: tuple[str, ...]) -> None:
    """Show where VMs ran: every placement, one table per VM (all listed VMs by default)."""
    one = client()
    if vms:
        targets = [(text, resolve_vm(one, text)) for text in vms]
    else:
        targets = [(str(vm["ID"]), vm["ID"]) for vm in one.data("one.vmpool.info", -2)]
    documents = [(text, vid, one.document("nebula_xr.vm.history", vid)) for text, vid in targets]
    output = settings().output
    if output == "xml":
        click.echo("\n".join(document for _, _, document in documents))
        return
    records = [
        (text, vid, [dict(record, VID=vid) for record in to_data(parse(document))])
        for text, vid, document in documents
    ]
    if output == "json":
        click.echo(json_text([{"ID": vid, "HISTORY": rows} for _, vid, rows in records]))
        return
    columns = pick_columns(HISTORY_COLUMNS, tuple(HISTORY_COLUMNS))
    for text, _, rows in records:
        click.echo(f"History for VM {text}\n\n{render_table(columns, rows)}\n")


#: Host and domain names the console command accepts (never an option or shell syntax).
_CONSOLE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


def console_argv(target: Any, ssh: str) -> list[str]:
    """``ssh -t <host> -- <fixed console command> <domain>`` for what the server said
    (``{host, domain, method}``); CliError for anything else. ``ssh`` is the user's own
    ssh command (``$ONE_SSH``), never the server's."""
    if not isinstance(target, dict):
        raise CliError("The server did not say where the console is")
    host, domain, method = (target.get(key) for key in ("host", "domain", "method"))
    for what, value in (("host", host), ("domain", domain)):
        if not isinstance(value, str) or not _CONSOLE_NAME.match(value):
            raise CliError(f"Invalid console {what} {value!r}")
    command = CONSOLE_METHODS.get(method) if isinstance(method, str) else None
    if command is None:
        raise CliError(f"Unknown console method {method!r}")
    return [*shlex.split(ssh), "-t", host, "--", *command, domain]


@main.command()
@click.argument("vm")
def console(vm: str) -> None:
    """Attach this terminal to the console of a running VM.

    oned says where the console is (host, domain, toolstack) and this command runs
    ``ssh -t <host> -- [sudo] xm console <domain>``. ``$ONE_SSH`` (default ``ssh``) is the
    ssh command and options to use, e.g. ``ssh -F ~/cluster.cfg``.
    """
    one = client()
    target, banner = one.request("nebula_xr.vm.console", resolve_vm(one, vm))[:2]
    argv = console_argv(target, os.environ.get("ONE_SSH") or "ssh")
    program = shutil.which(argv[0])
    if program is None:
        raise CliError(f"Can not run {argv[0]}: No such file or directory")
    if banner:
        click.echo(banner, err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        # The terminal goes to the console command as it is: this process becomes it.
        os.execv(program, argv)
    except OSError as error:
        raise CliError(f"Can not run {argv[0]}: {error.strerror}") from error


@main.command("list-columns")
def list_columns() -> None:
    """Describe the columns --list chooses from (list, top; history has its own)."""
    click.echo(column_help(VM_COLUMNS))


add_common_options(main)
