"""vmm_xen: runs VMs on Xen hosts over SSH with the ``xm`` or ``xl`` toolstack.

The deployment file is generated from the VM template exactly as OpenNebula 1.2 did,
with per-cluster defaults from the driver's ``default`` file (CREDIT, MEMORY and
``OS = [ KERNEL, INITRD, ROOT, KERNEL_CMD, BOOTLOADER ]``), so nobody edits domU files
by hand. Domains are named ``one-<vid>``, which is the deploy id the daemon records.
Settings (toolstack, sudo, tool paths, ssh) are described in :mod:`nebula_xr_plugins.xen`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer, task

from nebula_xr import hookimpl
from nebula_xr.drivers.base import (
    ConsoleTarget,
    DriverConfig,
    DriverContext,
    DriverError,
    VirtualMachineDriver,
    VMAction,
)
from nebula_xr.drivers.remote import CommandResult, check_host, require_ok
from nebula_xr.template import Template
from nebula_xr_plugins import xen

#: Seconds between two looks at a domain that is shutting down.
SHUTDOWN_POLL = 1.0


#: What a string literal may hold: printable ASCII. xm reads the file as Python 2 source
#: (non-ASCII needs a coding line) and neither xm nor xl can carry a control character
#: inside a one-line literal.
_PRINTABLE = re.compile(r"[\x20-\x7e]*\Z")
#: A decimal number as MEMORY and CPU are written (no sign, exponent, inf or nan).
_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?\Z")
#: Bootloaders allowed when the driver's settings do not say (``BOOTLOADERS``).
DEFAULT_BOOTLOADERS = ("pygrub",)
#: Where a bootloader named without a directory in BOOTLOADERS may live.
_SYSTEM_DIRS = ("/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin", "/usr/lib/xen/bin")


def literal(value: str, what: str, quote: str = "'") -> str:
    """``value`` as a string literal that Python (xm) and libxlu (xl) both read back
    unchanged: quote and backslash escaped, anything else refused (DriverError)."""
    if not _PRINTABLE.match(value):
        raise DriverError(f"{what} holds characters a Xen deployment file can not carry")
    escaped = value.replace("\\", "\\\\").replace(quote, "\\" + quote)
    return f"{quote}{escaped}{quote}"


def spec_field(value: str, what: str) -> str:
    """A value embedded in a ``key=value,...`` device spec (disk, vif, vfb): a ``,`` or
    ``=`` would add options of its own (a vif ``script=`` runs a program on dom0)."""
    if any(c in value for c in ",='\"\\") or not _PRINTABLE.match(value):
        raise DriverError(f"{what} can not contain ',', '=', quotes or control characters")
    return value


def decimal(value: str, what: str) -> str:
    """A non-negative decimal number, written as given."""
    if not _DECIMAL.match(value):
        raise DriverError(f"{what} must be a number, not {value!r}")
    return value


def bootloader_allowed(path: str, allowed: Sequence[str]) -> bool:
    """``path`` is in the allow-list; an entry without a directory also allows that
    program in the usual system directories (``pygrub`` → ``/usr/bin/pygrub``)."""
    for entry in allowed:
        if path == entry:
            return True
        if "/" not in entry and os.path.dirname(path) in _SYSTEM_DIRS:
            if os.path.basename(path) == entry:
                return True
    return False


def deployment_file(
    vm: VMAction, defaults: Template, bootloaders: Sequence[str] = DEFAULT_BOOTLOADERS
) -> str:
    """The Xen domain configuration of drivers.md §3.1; DriverError when it cannot be made.

    Every template value is a literal (:func:`literal`, :func:`spec_field`) or a checked
    number; only RAW data (an administrator's, checked at allocation) is copied as is.
    """
    template = vm.template
    lines = [f"name = 'one-{vm.vid}'"]
    credits = float(decimal(defaults.get_string("CREDIT") or "1", "CREDIT"))
    cpu = float(decimal(template.get_string("CPU") or "1", "CPU"))
    lines.append(f"#O CPU_CREDITS = {math.ceil(cpu * credits)}")

    memory = template.get_string("MEMORY") or defaults.get_string("MEMORY")
    if not memory:
        raise DriverError("No MEMORY defined and no default provided.")
    lines.append(f"memory  = '{decimal(memory, 'MEMORY')}'")

    os_vector = template.get_vector("OS") or {}
    os_defaults = defaults.get_vector("OS") or {}

    def boot(key: str) -> str:
        return os_vector.get(key) or os_defaults.get(key) or ""

    kernel, bootloader = boot("KERNEL"), boot("BOOTLOADER")
    if kernel:
        lines.append(f"kernel = {literal(kernel, 'OS/KERNEL')}")
        if boot("INITRD"):
            lines.append(f"ramdisk = {literal(boot('INITRD'), 'OS/INITRD')}")
        if boot("ROOT"):
            lines.append(f"root = {literal('/dev/' + boot('ROOT'), 'OS/ROOT')}")
        if boot("KERNEL_CMD"):
            lines.append(f"extra = {literal(boot('KERNEL_CMD'), 'OS/KERNEL_CMD')}")
    elif bootloader:
        if not bootloader_allowed(bootloader, bootloaders):
            raise DriverError(f"Bootloader {bootloader!r} is not in BOOTLOADERS of vmm_xen")
        lines.append("bootloader = " + literal(bootloader, "OS/BOOTLOADER", quote='"'))
    else:
        raise DriverError("No kernel or bootloader defined and no default provided.")

    lines.append("disk = [")
    for index, disk in enumerate(template.get_all("DISK")):
        if not isinstance(disk, dict):
            continue  # 1.2 skips a DISK that is not a vector but still counts it
        target = disk.get("TARGET")
        if not target:
            raise DriverError("Wrong target value in DISK.")
        mode = "r" if disk.get("READONLY", "").upper() == "YES" else "w"
        path = spec_field(f"{vm.remote_dir}/disk.{index}", "VM_DIR")
        spec = f"tap:aio:{path},{spec_field(target, 'DISK/TARGET')},{mode}"
        lines.append(f"    {literal(spec, 'DISK')},")
    lines.append("]")

    lines.append("vif = [")
    for nic in template.vectors("NIC"):
        parts = []
        if nic.get("MAC"):
            parts.append(f"mac={spec_field(nic['MAC'], 'NIC/MAC')}")
        if nic.get("BRIDGE"):
            parts.append(f"bridge={spec_field(nic['BRIDGE'], 'NIC/BRIDGE')}")
        # 1.2 wrote a blank before a bridge that has no MAC in front of it.
        spec = ",".join(parts) if nic.get("MAC") else "".join(f" {p}" for p in parts)
        lines.append(f"    {literal(spec, 'NIC')},")
    lines.append("]")

    graphics = template.vectors("GRAPHICS")
    if graphics and graphics[0].get("TYPE") in ("vnc", "VNC"):
        vfb = "type=vnc"
        for key, name in (("LISTEN", "vnclisten"), ("PORT", "vncdisplay"), ("PASSWD", "vncpasswd")):
            if graphics[0].get(key):
                vfb += f",{name}={spec_field(graphics[0][key], f'GRAPHICS/{key}')}"
        lines.append(f"vfb = [{literal(vfb, 'GRAPHICS')}]")
    for raw in template.vectors("RAW"):
        if raw.get("TYPE", "").lower() == "xen" and raw.get("DATA"):
            lines.append(raw["DATA"])
    return "\n".join(lines) + "\n"


def parse_xentop(output: str, domain: str) -> dict[str, str]:
    """POLL information from ``xentop -bi2``: the domain's line of the last sample.

    Xen names a domain being migrated away ``migrating-<name>`` on the source; unless it
    crashed, its STATE is ``m`` (migrating away), which the LCM ignores and start-up
    reconciliation waits on."""
    line = None
    for candidate in output.splitlines():
        fields = candidate.split()
        if fields and fields[0] in (domain, f"migrating-{domain}"):
            line = candidate
    if line is None:
        return {"STATE": "d"}
    fields = line.replace("no limit", "no_limit").split()
    if len(fields) < 12:
        raise DriverError(f"Can not parse xentop line: {line.strip()}")
    flags = fields[1].replace("-", "")
    state = {"r": "a", "b": "a", "s": "a", "d": "a", "p": "p", "c": "e"}.get(flags, "u")
    if fields[0] != domain and state in ("a", "p"):
        state = "m"
    return {
        "USEDMEMORY": fields[4],
        "USEDCPU": fields[3],
        "NETTX": fields[10],
        "NETRX": fields[11],
        "STATE": state,
    }


def migration_error(result: CommandResult) -> str:
    """Why a migration failed, in the destination's words when it gave them.

    xl relays what the receiving side printed (``migration target: ...`` and its
    ``libxl: error`` lines) before its own closing ``Migration failed, resuming at
    sender.``, which alone says nothing; xm prints an ``Error:`` line."""
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    reasons = [
        line
        for line in lines
        if line.lower().startswith(("libxl: error", "xc: error", "error:"))
        or (line.startswith("migration target:") and "ready to receive" not in line.lower())
    ]
    return " / ".join(reasons) if reasons else result.error_text()


class XenDriver(VirtualMachineDriver):
    def __init__(self, config: DriverConfig, context: DriverContext) -> None:
        super().__init__(config, context)
        settings = xen.load_settings(config, context)
        self.tools = xen.toolstack(settings)
        self.remote = xen.runner(settings, context)

    def _run(self, host: str, *args: str) -> defer.Deferred:
        return self.remote.run(host, self.tools.tool(*args))

    def _checked(self, host: str, what: str, *args: str) -> defer.Deferred:
        return self._run(host, *args).addCallback(require_ok, what)

    def deployment_file(self, vm: VMAction) -> str:
        allowed = self.config.defaults.get_string("BOOTLOADERS")
        bootloaders = allowed.split() if allowed is not None else DEFAULT_BOOTLOADERS
        return deployment_file(vm, self.config.defaults, bootloaders)

    @defer.inlineCallbacks
    def deploy(self, vm: VMAction, local_file: Path, remote_file: str) -> Any:
        text = local_file.read_bytes()
        copy = 'umask 027 && mkdir -p "$(dirname "$1")" && cat > "$1"'
        result = yield self.remote.run(vm.host, ["sh", "-c", copy, "sh", remote_file], stdin=text)
        require_ok(result, f"Can not copy the deployment file to {vm.host}")
        result = yield self._checked(vm.host, "Error creating domain", "create", remote_file)
        name = f"one-{vm.vid}"
        for line in result.stdout.splitlines():
            if line.startswith("Started domain "):
                name = line.split()[2]
        credits = next(
            (
                line.split("=", 1)[1].strip()
                for line in text.decode().splitlines()
                if line.startswith("#O CPU_CREDITS")
            ),
            None,
        )
        if credits:
            command = "sched-credit" if self.tools.xl else "sched-cred"
            result = yield self._run(vm.host, command, "-d", name, "-w", credits)
            if not result.ok:
                self.context.vm_log(vm.vid, f"Can not set CPU credits: {result.error_text()}")
        return name

    @defer.inlineCallbacks
    def shutdown(self, vm: VMAction) -> Any:
        """Ask the guest to halt, wait until the domain is gone, destroy it after a while."""
        yield self._checked(vm.host, "Error shutting down", "shutdown", vm.deploy_id)
        clock = self.context.reactor
        deadline = clock.seconds() + self.tools.shutdown_timeout
        while clock.seconds() < deadline:
            listed = yield self._run(vm.host, "list", vm.deploy_id)
            if not listed.ok:
                return None  # gone
            yield task.deferLater(clock, SHUTDOWN_POLL, lambda: None)
        self.context.vm_log(vm.vid, "The guest did not halt in time: destroying it")
        result = yield self._run(vm.host, "destroy", vm.deploy_id)
        listed = yield self._run(vm.host, "list", vm.deploy_id)
        if listed.ok:
            require_ok(result, "Error destroying the domain")
        return None

    def cancel(self, vm: VMAction) -> defer.Deferred:
        return self._checked(vm.host, "Error destroying the domain", "destroy", vm.deploy_id)

    def save(self, vm: VMAction, checkpoint: str) -> defer.Deferred:
        return self._checked(vm.host, "Error saving", "save", vm.deploy_id, checkpoint)

    def restore(self, vm: VMAction, checkpoint: str) -> defer.Deferred:
        return self._checked(vm.host, "Error restoring", "restore", checkpoint)

    def migrate(self, vm: VMAction, destination: str) -> defer.Deferred:
        args = ("migrate", vm.deploy_id, destination)
        if not self.tools.xl:
            args = ("migrate", "-l", vm.deploy_id, destination)

        def checked(result: CommandResult) -> CommandResult:
            if not result.ok:
                raise DriverError(f"Error migrating to {destination}: {migration_error(result)}")
            return result

        return self._run(vm.host, *args).addCallback(checked)

    def poll(self, vm: VMAction) -> defer.Deferred:
        def parsed(result: CommandResult) -> dict[str, str]:
            require_ok(result, "Error polling")
            return parse_xentop(result.stdout, vm.deploy_id)

        return self.remote.run(vm.host, self.tools.xentop("-b", "-i", "2")).addCallback(parsed)

    def console(self, vm: VMAction) -> ConsoleTarget | None:
        method = f"sudo-{self.tools.name}" if self.tools.sudo else self.tools.name
        return ConsoleTarget(
            check_host(vm.host), vm.deploy_id, method, banner="Escape character is '^]'"
        )


@hookimpl
def nebula_xr_vmm_driver(
    config: DriverConfig, context: DriverContext
) -> VirtualMachineDriver | None:
    if config.plugin == "vmm_xen":
        return XenDriver(config, context)
    return None
