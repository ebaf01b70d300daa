"""What a driver is: the base classes IM, VMM and TM plugins implement.

The daemon never talks to a hypervisor or a file system itself. For every action it
hands a driver object a frozen description of the work and gets back a Deferred:
it fires with the result, or fails with :class:`DriverError` whose message becomes the
``FAILURE`` text of 1.2 (written to the VM log). The daemon puts a timeout on every
Deferred it is given; cancelling the Deferred must stop the work (kill the process).

Driver objects are made by the ``nebula_xr_*_driver`` hooks (see
:mod:`nebula_xr.hookspecs`) from a :class:`DriverConfig` (what oned.conf says) and a
:class:`DriverContext` (the running daemon's services).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred

from nebula_xr.template import Template, TemplateSyntaxError

#: Kinds of driver, as in oned.conf: IM_MAD, VM_MAD, TM_MAD.
INFORMATION = "im"
VIRTUAL_MACHINE = "vmm"
TRANSFER = "tm"


#: The keys oned.conf itself uses in a driver entry (the rest belong to the plugin).
DRIVER_ENTRY_KEYS = frozenset({"NAME", "EXECUTABLE", "ARGUMENTS", "DEFAULT", "TYPE", "TIMEOUT"})


class DriverError(Exception):
    """A driver action failed; ``str(error)`` is the message shown to the user."""


@dataclass(frozen=True)
class DriverConfig:
    """One ``IM_MAD``/``VM_MAD``/``TM_MAD`` entry of oned.conf, resolved."""

    #: The driver name hosts refer to (``onehost add node01 im_xen vmm_xen tm_nfs``).
    name: str
    #: INFORMATION, VIRTUAL_MACHINE or TRANSFER.
    kind: str
    #: Entry-point name of the plugin implementing it (the resolved ``executable``).
    plugin: str
    #: ``arguments`` as written (one string, not split); '' when absent.
    arguments: str = ""
    #: The ``default`` file parsed as a replace-template (empty when absent).
    defaults: Template = field(default_factory=Template)
    #: ``type`` of a VM_MAD, lower-case (xen, kvm...); '' otherwise.
    type: str = ""
    #: Every key of the oned.conf vector, upper-case (NAME, EXECUTABLE, TIMEOUT...).
    options: dict[str, str] = field(default_factory=dict)
    #: Seconds after which the daemon fails (and cancels) any action of this driver.
    timeout: float = 300.0

    def resolve(self, path: str, etc_dir: Path) -> Path:
        """A configuration path as 1.2 resolves it: relative paths under the etc dir."""
        candidate = Path(path)
        return candidate if candidate.is_absolute() else etc_dir / candidate

    def settings(self, etc_dir: Path) -> Template:
        """The plugin's own settings: the ``arguments`` file (template syntax, a later
        attribute replacing an earlier one), then any other key of the oned.conf vector."""
        settings = Template(replace=True)
        if self.arguments:
            path = self.resolve(self.arguments, etc_dir)
            try:
                text = path.read_text(encoding="utf-8")
                settings = Template.parse(
                    text if text.endswith("\n") else text + "\n", replace=True
                )
            except (OSError, TemplateSyntaxError) as error:
                raise DriverError(f"Can not read {path}: {error}") from error
        for key, value in self.options.items():
            if key not in DRIVER_ENTRY_KEYS:
                settings.set(key, value)
        return settings


@dataclass(frozen=True)
class DriverContext:
    """Services of the running daemon that drivers may use."""

    #: The Twisted reactor (IReactorTime + IReactorProcess); tests pass a fake one.
    reactor: Any
    #: ``$ONE_LOCATION/var`` or ``/var/lib/one``: the front-end's VM directories.
    var_dir: Path
    #: ``$ONE_LOCATION/etc`` or ``/etc/one``: where driver configuration files live.
    etc_dir: Path
    #: The front-end's host name, as used in ``host:path`` transfer locations.
    frontend: str
    #: ``vm_log(vid, message)`` appends an informational line to a VM's log.
    vm_log: Callable[[int, str], None]
    #: ``log(message)`` writes an informational line to oned.log.
    log: Callable[[str], None]
    #: ``vm_owner(vid)``: the uid owning a VM (-1 when unknown: treated as no privilege).
    vm_owner: Callable[[int], int] = field(default=lambda vid: -1)


@dataclass(frozen=True)
class VMAction:
    """Everything a VMM driver needs to act on one VM on one host."""

    vid: int
    #: Host the action runs on (the *source* host for save and live migration).
    host: str
    #: The hypervisor's name for the domain (``one-<vid>`` for Xen); '' before deploy.
    deploy_id: str
    #: The VM template (a copy; changing it changes nothing).
    template: Template
    #: VM_DIR of the history record: the remote base directory.
    vm_dir: str
    #: ``<VM_DIR>/<vid>/images`` on the host.
    remote_dir: str
    #: ``$VAR/<vid>`` on the front-end.
    local_dir: Path
    #: Sequence number of the history record the action belongs to.
    seq: int


@dataclass(frozen=True)
class TransferCommand:
    """One line of a 1.2 transfer script: ``CLONE src dst``, ``MV src dst``..."""

    action: str
    args: tuple[str, ...]

    def __str__(self) -> str:
        return " ".join((self.action, *self.args))


#: Console methods a client knows how to reach: the fixed remote command of each
#: (``onevm console`` runs ``ssh -t <host> -- <command> <domain>``, nothing else).
CONSOLE_METHODS: dict[str, tuple[str, ...]] = {
    "xm": ("xm", "console"),
    "xl": ("xl", "console"),
    "sudo-xm": ("sudo", "xm", "console"),
    "sudo-xl": ("sudo", "xl", "console"),
}


@dataclass(frozen=True)
class ConsoleTarget:
    """Where a VM's console is: the client builds the command itself from these."""

    #: The host to ssh to (a plain host name).
    host: str
    #: The hypervisor's name for the domain.
    domain: str
    #: A key of :data:`CONSOLE_METHODS`.
    method: str
    #: What the user should be told (e.g. how to detach).
    banner: str = ""


class Driver:
    """Common part of every driver: its configuration and the daemon's services."""

    def __init__(self, config: DriverConfig, context: DriverContext) -> None:
        self.config = config
        self.context = context

    def stop(self) -> Deferred | None:
        """Release resources (connections, processes) when the daemon stops."""
        return None


class InformationDriver(Driver):
    """Monitors hosts (IM)."""

    def monitor(self, hid: int, host: str) -> Deferred:
        """Fire with the host's attributes, ``{"TOTALCPU": "200", ...}`` (string values).

        Names are upper-case; units are those of 1.2 (drivers.md §4): CPU in percent,
        memory in KB. Fail with :class:`DriverError` when the host cannot be monitored.
        """
        raise NotImplementedError


class VirtualMachineDriver(Driver):
    """Runs VMs on hosts (VMM). Every method returns a Deferred."""

    def deployment_file(self, vm: VMAction) -> str:
        """The hypervisor's deployment file for ``vm`` (raise DriverError if invalid)."""
        raise NotImplementedError

    def deploy(self, vm: VMAction, local_file: Path, remote_file: str) -> Deferred:
        """Copy ``local_file`` to ``remote_file`` on the host and boot it; fire with deploy id."""
        raise NotImplementedError

    def shutdown(self, vm: VMAction) -> Deferred:
        """Shut the guest down and fire only once it is gone (destroy after a timeout)."""
        raise NotImplementedError

    def cancel(self, vm: VMAction) -> Deferred:
        """Destroy the domain at once."""
        raise NotImplementedError

    def save(self, vm: VMAction, checkpoint: str) -> Deferred:
        """Save the domain's memory to ``checkpoint`` (a path on ``vm.host``) and stop it."""
        raise NotImplementedError

    def restore(self, vm: VMAction, checkpoint: str) -> Deferred:
        """Start the domain again from ``checkpoint`` on ``vm.host``."""
        raise NotImplementedError

    def migrate(self, vm: VMAction, destination: str) -> Deferred:
        """Live-migrate the running domain from ``vm.host`` to ``destination``."""
        raise NotImplementedError

    def poll(self, vm: VMAction) -> Deferred:
        """Fire with ``{"USEDMEMORY": ..., "USEDCPU": ..., "NETTX": ..., "NETRX": ...,
        "STATE": "a"|"p"|"e"|"d"}`` plus any other key to store in the VM template."""
        raise NotImplementedError

    def console(self, vm: VMAction) -> ConsoleTarget | None:
        """Where the console of the running VM is, or None if it has none.

        ``onevm console`` asks for it (XML-RPC ``nebula_xr.vm.console``) and runs the
        fixed command of the method on the user's machine with the terminal attached,
        ``ssh -t <host> -- sudo xm console <domain>``; it never runs a command a server
        sends. Called on the reactor: answer without blocking.
        """
        return None


class TransferDriver(Driver):
    """Moves images between the front-end and hosts (TM)."""

    def transfer(self, vid: int, script: Path, commands: list[TransferCommand]) -> Deferred:
        """Run ``commands`` (also written to ``script`` in 1.2 form) in order.

        Stop at the first failure and fail with its message; fire with None on success.
        """
        raise NotImplementedError
