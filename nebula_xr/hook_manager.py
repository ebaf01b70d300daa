"""The hook manager (HM): runs the VM_HOOK and HOST_HOOK programs of oned.conf.

OpenNebula 1.4/2.2 syntax::

    VM_HOOK   = [ name = "log", on = "RUNNING", command = "notify", arguments = "$VMID $NAME" ]
    HOST_HOOK = [ name = "error", on = "ERROR", command = "nebula-xr-host-error",
                  arguments = "$HID -r", remote = "no" ]

A hook runs when a VM enters the (state, LCM state) its ``on`` names, or a host enters
the named host state. ``arguments`` is split into words when oned.conf is read (at
blanks, quotes grouping words), and each ``$VARIABLE`` is then replaced
inside its own word: whatever a template holds (a VM name full of quotes and ``;``)
stays one argument of one program, never a shell line. Hooks run through the drivers'
process runner: an argument list, no shell, a timeout; ``remote = yes`` runs it over ssh
on the VM's (or the host's) host, every argument quoted for the remote shell. Their
output goes to oned.log (and the VM's log for VM hooks); a hook that fails, hangs or
cannot be started is logged and changes nothing else.

Relative commands are looked up in the hooks directory, ``$ONE_LOCATION/share/hooks``
(``/usr/share/one/hooks`` without ONE_LOCATION), as in 2.2, then on the PATH.
"""

from __future__ import annotations

import base64
import os
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from nebula_xr.drivers.base import DriverError
from nebula_xr.drivers.invoke import failure_message
from nebula_xr.drivers.remote import CommandResult, RemoteRunner, run_local
from nebula_xr.log import Log
from nebula_xr.model import Host, HostState, LCMState, VirtualMachine, VMState

VM, HOST = "VM_HOOK", "HOST_HOOK"

#: What ``on`` of a VM hook means: the (state, LCM state) the VM enters.
VM_EVENTS: dict[str, tuple[VMState, LCMState]] = {
    "CREATE": (VMState.PENDING, LCMState.LCM_INIT),  # from INIT only: the allocation
    "RUNNING": (VMState.ACTIVE, LCMState.RUNNING),
    "SHUTDOWN": (VMState.ACTIVE, LCMState.EPILOG),
    "STOP": (VMState.STOPPED, LCMState.LCM_INIT),
    "DONE": (VMState.DONE, LCMState.LCM_INIT),
    "FAILED": (VMState.FAILED, LCMState.LCM_INIT),
}
HOST_EVENTS: dict[str, HostState | None] = {
    "CREATE": None,  # allocation: any first state
    "ERROR": HostState.ERROR,
    "DISABLE": HostState.DISABLED,
}

#: Output of a hook kept for the log, per stream.
LOGGED_OUTPUT = 4096
#: Hooks running at once on the front-end; more wait their turn.
LOCAL_HOOKS = 16

_VARIABLE = re.compile(
    r"\$(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"(?:\[\s*(?P<key>[A-Za-z_][A-Za-z0-9_]*)"
    r'(?:\s*,\s*(?P<ckey>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*"(?P<cvalue>[^"]*)")?\s*\])?'
)


class HookConfigError(ValueError):
    """A VM_HOOK or HOST_HOOK vector cannot be used; the message says why."""


@dataclass(frozen=True)
class Hook:
    kind: str  # VM or HOST
    name: str
    on: str
    command: str
    #: ``arguments`` split into words, variables not yet substituted.
    arguments: tuple[str, ...]
    remote: bool
    timeout: float | None = None


def parse_hook(kind: str, vector: Mapping[str, str]) -> Hook:
    """A hook from its oned.conf vector (upper-case keys); raises HookConfigError."""
    events = VM_EVENTS if kind == VM else HOST_EVENTS
    on = (vector.get("ON") or "").strip().upper()
    command = (vector.get("COMMAND") or "").strip()
    if not on or not command:
        raise HookConfigError(f"{kind} needs on and command: {dict(vector)}")
    if on not in events:
        raise HookConfigError(f"{kind} on = {on!r}: use one of {', '.join(events)}")
    try:
        arguments = split_arguments(vector.get("ARGUMENTS") or "")
    except ValueError as error:
        raise HookConfigError(f"{kind} {command}: arguments: {error}") from error
    remote = (vector.get("REMOTE") or "no").strip().lower()
    if remote not in ("yes", "no"):
        raise HookConfigError(f"{kind} {command}: remote must be yes or no, not {remote!r}")
    timeout = vector.get("TIMEOUT")
    try:
        seconds = float(timeout) if timeout is not None else None
    except ValueError as error:
        raise HookConfigError(f"{kind} {command}: timeout must be a number") from error
    if seconds is not None and not seconds > 0:
        raise HookConfigError(f"{kind} {command}: timeout must be positive")
    name = (vector.get("NAME") or command).strip()
    return Hook(kind, name, on, command, arguments, remote == "yes", seconds)


def split_arguments(text: str) -> tuple[str, ...]:
    """``arguments`` as words: split at blanks outside quotes and outside the brackets
    of ``$NIC[MAC, NETWORK="x"]``; quotes group words and are removed, except within
    brackets where they belong to the condition. Raises ValueError on an open quote."""
    words: list[str] = []
    word: list[str] = []
    quote: str | None = None
    depth = 0
    in_word = False
    for char in text:
        if quote is not None:
            if char == quote:
                quote = None
            else:
                word.append(char)
        elif depth:
            word.append(char)
            depth += {"[": 1, "]": -1}.get(char, 0)
        elif char in "'\"":
            quote, in_word = char, True
        elif char.isspace():
            if in_word:
                words.append("".join(word))
                word, in_word = [], False
        else:
            word.append(char)
            in_word = True
            depth += char == "["
    if quote is not None or depth:
        raise ValueError("unbalanced quote or bracket")
    if in_word:
        words.append("".join(word))
    return tuple(words)


def hooks_directory(environ: Mapping[str, str] | None = None) -> Path:
    """Where relative hook commands live: 2.2's ``share/hooks``."""
    environ = os.environ if environ is None else environ
    location = environ.get("ONE_LOCATION")
    return Path(location) / "share" / "hooks" if location else Path("/usr/share/one/hooks")


def substitute(word: str, lookup: Callable[[str, str | None, str | None, str | None], str]) -> str:
    """``word`` with each ``$NAME``, ``$NAME[KEY]`` or ``$NAME[KEY, CKEY="value"]``
    replaced by ``lookup``; the result is one argument, whatever the values hold."""

    def replace(match: re.Match[str]) -> str:
        return lookup(
            match["name"].upper(), _upper(match["key"]), _upper(match["ckey"]), match["cvalue"]
        )

    return _VARIABLE.sub(replace, word)


def _upper(text: str | None) -> str | None:
    return text.upper() if text is not None else None


def _base64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def vm_variables(vm: VirtualMachine, document: Callable[[VirtualMachine], str]) -> Callable:
    """Lookup of a VM hook's variables: VMID, TEMPLATE (base64 of the VM's XML
    document), then the VM template's attributes (first value; vectors by key, with an
    optional condition on another key of the same vector, as 2.2)."""

    def lookup(name: str, key: str | None, ckey: str | None, cvalue: str | None) -> str:
        if key is None:
            if name == "VMID":
                return str(vm.oid)
            if name == "TEMPLATE":
                return _base64(document(vm))
            return vm.template.get_string(name) or ""
        for vector in vm.template.vectors(name):
            if ckey is None or vector.get(ckey) == cvalue:
                return vector.get(key, "")
        return ""

    return lookup


def host_variables(host: Host, document: Callable[[Host], str]) -> Callable:
    """Lookup of a host hook's variables: HID, NAME, TEMPLATE (base64 of its XML
    document) and the monitored attributes."""

    def lookup(name: str, key: str | None, _ckey: str | None, _cvalue: str | None) -> str:
        if key is not None:
            return ""
        if name == "HID":
            return str(host.oid)
        if name in ("NAME", "HOSTNAME") and name not in host.attributes:
            return host.name
        if name == "TEMPLATE":
            return _base64(document(host))
        return host.attributes.get(name, "")

    return lookup


class HookManager:
    """Listens to the VM and host pools and runs the matching hooks."""

    def __init__(
        self,
        hooks: Sequence[Hook],
        reactor: Any,
        clock: Any,
        log: Log,
        *,
        directory: Path,
        timeout: float,
        remote: RemoteRunner | None = None,
        environment: Callable[[], dict[str, str]] = lambda: dict(os.environ),
        vm_document: Callable[[VirtualMachine], str],
        host_document: Callable[[Host], str],
        run: Callable[..., defer.Deferred] = run_local,
    ) -> None:
        self.vm_hooks = [hook for hook in hooks if hook.kind == VM]
        self.host_hooks = [hook for hook in hooks if hook.kind == HOST]
        self.reactor = reactor
        self.clock = clock
        self.log = log
        self.directory = directory
        self.timeout = timeout
        self.remote = remote or RemoteRunner(reactor, timeout=timeout)
        self.environment = environment
        self.vm_document = vm_document
        self.host_document = host_document
        self.run_local = run
        self._local = defer.DeferredSemaphore(LOCAL_HOOKS)
        #: The last state of each host other than MONITORING: a host failing one
        #: monitoring after another stays in ERROR and its hooks run once.
        self._settled: dict[int, HostState] = {}

    def watch(self, vms: Any, hosts: Any) -> None:
        """Subscribe to the pools' state changes (the hosts' current states are the
        starting point: a host already in ERROR at start-up does not fire again)."""
        for host in hosts:
            if host.state is not HostState.MONITORING:
                self._settled[host.oid] = host.state
        if self.vm_hooks:
            vms.listeners.append(self.vm_changed)
        hosts.listeners.append(lambda host, previous: self.host_changed(host, previous, hosts))

    # -- events ---------------------------------------------------------------------------

    def vm_changed(self, vm: VirtualMachine, state: int, _lcm: int) -> None:
        for hook in self.vm_hooks:
            if VM_EVENTS[hook.on] != (vm.state, vm.lcm_state):
                continue
            if hook.on == "CREATE" and state != VMState.INIT:
                continue  # PENDING again (release, resubmit) is no creation
            host = vm.current.host_name if vm.current is not None else None
            if hook.remote and host is None:
                self.log.vm(vm.oid, "HKM", 1, f"Hook {hook.name} skipped: the VM has no host")
                continue
            self._prepare(hook, vm_variables(vm, self.vm_document), host, vm.oid)

    def host_changed(self, host: Host, previous: int, hosts: Any) -> None:
        if hosts.get(host.oid) is None:  # deleted
            self._settled.pop(host.oid, None)
            return
        if host.state is HostState.MONITORING:
            return
        created = previous == -1
        before = self._settled.get(host.oid)
        self._settled[host.oid] = host.state
        if not created and before is host.state:
            return
        for hook in self.host_hooks:
            wanted = HOST_EVENTS[hook.on]
            if (wanted is None and created) or (wanted is not None and wanted is host.state):
                self._prepare(hook, host_variables(host, self.host_document), host.name, None)

    # -- running --------------------------------------------------------------------------

    def _prepare(self, hook: Hook, lookup: Callable, host: str | None, vid: int | None) -> None:
        """Substitute now (the values of the moment of the change), run on the next turn.
        This runs inside a pool's state change: nothing may escape to the caller."""
        try:
            argv = self._argv(hook, lookup)
        except Exception as error:  # a hook must never break the life cycle
            self._log(vid, 0, f"Hook {hook.name} not run: {error!r}")
            return
        self._schedule(hook, argv, host if hook.remote else None, vid)

    def _argv(self, hook: Hook, lookup: Callable) -> list[str]:
        return [self._command(hook), *(substitute(word, lookup) for word in hook.arguments)]

    def _command(self, hook: Hook) -> str:
        """Local hooks: a relative command found in the hooks directory, else the PATH.
        Remote hooks run the command as written, on the host."""
        if hook.remote or os.path.isabs(hook.command):
            return hook.command
        candidate = self.directory / hook.command
        return str(candidate) if candidate.exists() else hook.command

    def _schedule(self, hook: Hook, argv: list[str], host: str | None, vid: int | None) -> None:
        # The next turn: the state change that fired the hook finishes first.
        self.clock.callLater(0, self.run, hook, argv, host, vid)

    def run(self, hook: Hook, argv: list[str], host: str | None, vid: int | None) -> defer.Deferred:
        """Run one hook; the Deferred fires with its CommandResult, or None when it could
        not run or timed out (after logging it). It never fails."""
        timeout = hook.timeout or self.timeout
        where = host or "the front-end"
        self._log(vid, 2, f"Executing hook {hook.name} on {where}: {shlex.join(argv)}")
        if host is None:
            started = self._local.run(
                self.run_local, self.reactor, argv, timeout=timeout, env=self.environment()
            )
        else:
            started = defer.maybeDeferred(self.remote.run, host, argv, timeout=timeout)

        def finished(result: CommandResult) -> CommandResult:
            level = 2 if result.ok else 0
            status = "succeeded" if result.ok else f"failed (exit status {result.exit_code})"
            self._log(vid, level, f"Hook {hook.name} {status}")
            for stream, text in (("stdout", result.stdout), ("stderr", result.stderr)):
                for line in text[:LOGGED_OUTPUT].splitlines():
                    if line.strip():
                        self._log(vid, level, f"Hook {hook.name} {stream}: {line}")
            return result

        def failed(failure: Failure) -> None:
            message = (
                str(failure.value)
                if failure.check(DriverError)
                else failure_message(failure, timeout)
            )
            self._log(vid, 0, f"Hook {hook.name} could not run: {message}")

        return started.addCallbacks(finished, failed)

    def _log(self, vid: int | None, level: int, message: str) -> None:
        self.log.write("HKM", level, message)
        if vid is not None:
            self.log.vm(vid, "HKM", level, message)
