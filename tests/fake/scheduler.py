"""A scheduler context on ``task.Clock``: VMs and hosts whose actions take ``delay`` seconds.

It answers the :class:`~nebula_xr.scheduling.SchedulerContext` calls with the 1.2 rules
for the states they need, changes VM states after ``delay`` (deploy → RUNNING, suspend →
SUSPENDED, resume → RUNNING, resume on another host → PROLOG_MIGRATE, BOOT, RUNNING,
shutdown and cancel → DONE) and delivers each change to ``on_vm_changed`` on the next
clock turn, as the daemon does. A deploy charges the VM's CPU and memory to its host's
shares and leaving the host gives them back; a host's state change (``set_host_state``) is
told to ``on_host_changed`` and a monitoring (``monitor_host``) to ``on_host_monitored``.
:meth:`FakeSchedulerContext.deliver_to` points the three at a scheduler's event methods, as
the daemon's ``SchedulerService`` does. ``actions`` records ``(time, action, vid, hid)`` for
the tests to read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from twisted.internet import task

from nebula_xr.model import HostState, LCMState, VMState, cpu_reservation
from nebula_xr.scheduling import HostShares, HostView, RequestResult, Scheduler, VMView
from nebula_xr.template import Template

OK = RequestResult(True)
WRONG = RequestResult(False, "Wrong state to perform action")


class FakeSchedulerContext:
    def __init__(self, delay: float = 1.0) -> None:
        self.clock = task.Clock()
        self.delay = delay
        self.store = None  # no one.db: the plugin keeps nothing
        self.lines: list[str] = []
        self.rejections: dict[int, str] = {}
        self.actions: list[tuple[float, str, int, int | None]] = []
        self._vms: dict[int, VMView] = {}
        self._hosts: dict[int, HostView] = {}
        self.on_vm_changed: Callable[[VMView, int, int], None] = lambda vm, s, lcm: None
        self.on_host_changed: Callable[[HostView, int], None] = lambda host, previous: None
        self.on_host_monitored: Callable[[HostView], None] = lambda host: None
        #: Shutdowns fail back to RUNNING after ``delay`` (a guest ignoring ACPI), as in 1.2.
        self.shutdown_fails = False

    def deliver_to(self, scheduler: Scheduler) -> None:
        """Tell ``scheduler`` of every VM change, host state change and monitoring."""
        self.on_vm_changed = scheduler.vm_changed
        self.on_host_changed = scheduler.host_changed
        self.on_host_monitored = scheduler.host_monitored

    # -- building the world -----------------------------------------------------------

    def add_host(self, name: str, cpu: int = 100, memory_mb: int = 1024, **extra: str) -> int:
        hid = len(self._hosts)
        attributes = {"TOTALCPU": str(cpu), "TOTALMEMORY": str(memory_mb * 1024), **extra}
        self._hosts[hid] = HostView(
            hid, name, int(HostState.MONITORED), "im", "vmm", "tm", True, 0, attributes,
            HostShares(max_cpu=cpu, max_mem=memory_mb * 1024),
        )  # fmt: skip
        return hid

    def set_host_state(self, hid: int, state: HostState) -> None:
        previous = self._hosts[hid].state
        self._hosts[hid] = replace(self._hosts[hid], state=int(state))
        self.clock.callLater(0, self.on_host_changed, self._hosts[hid], previous)

    def monitor_host(self, hid: int, **attributes: str) -> None:
        """A monitoring of host ``hid`` answered ``attributes`` (merged into its own)."""
        host = self._hosts[hid]
        merged = {**host.attributes, **attributes}
        now = int(self.clock.seconds())
        self._hosts[hid] = replace(host, attributes=merged, last_mon_time=now)
        self.clock.callLater(0, self.on_host_monitored, self._hosts[hid])

    def shares(self, hid: int) -> HostShares:
        return self._hosts[hid].shares

    def submit(self, text: str, uid: int = 0) -> int:
        """``one.vmallocate`` by user ``uid``: a PENDING VM, announced like the daemon does."""
        vid = len(self._vms)
        template = Template.parse(text if text.endswith("\n") else text + "\n")
        memory = int(template.get_string("MEMORY") or 0) * 1024
        self._vms[vid] = VMView(
            vid, f"vm{vid}", int(VMState.INIT), 0, int(self.clock.seconds()), 0, "", template,
            None, None, cpu_reservation(template.get_string("CPU")), memory, uid=uid,
        )  # fmt: skip
        self._set(vid, VMState.PENDING, LCMState.LCM_INIT)
        return vid

    def state(self, vid: int) -> tuple[VMState, LCMState]:
        vm = self._vms[vid]
        return VMState(vm.state), LCMState(vm.lcm_state)

    def host_of(self, vid: int) -> int | None:
        return self._vms[vid].hid

    def times(self, action: str, vid: int) -> list[float]:
        return [at for at, name, v, _hid in self.actions if name == action and v == vid]

    # -- SchedulerContext -------------------------------------------------------------

    def log(self, message: str) -> None:
        self.lines.append(message)

    def hosts(self) -> list[HostView]:
        return [self._hosts[hid] for hid in sorted(self._hosts)]

    def vms(self, states: tuple[int, ...] | None = None) -> list[VMView]:
        return [
            vm for _vid, vm in sorted(self._vms.items()) if states is None or vm.state in states
        ]

    def deploy(self, vid: int, hid: int) -> RequestResult:
        vm = self._vms[vid]
        if vm.state != VMState.PENDING:
            return WRONG
        self._record("deploy", vid, hid)
        placed = int(self.clock.seconds())
        self._vms[vid] = replace(vm, hid=hid, host_name=self._hosts[hid].name, placed=placed)
        self._charge(hid, vm, 1)
        self._set(vid, VMState.ACTIVE, LCMState.PROLOG)
        self.clock.callLater(self.delay, self._set, vid, VMState.ACTIVE, LCMState.RUNNING)
        return OK

    def migrate(self, vid: int, hid: int, live: bool) -> RequestResult:
        return RequestResult(False, "not simulated")

    def action(self, action: str, vid: int) -> RequestResult:
        vm = self._vms[vid]
        running = vm.state == VMState.ACTIVE and vm.lcm_state == LCMState.RUNNING
        if action in ("shutdown", "suspend", "cancel") and not running:
            return WRONG
        if action == "resume" and vm.state != VMState.SUSPENDED:
            return WRONG
        if action not in ("shutdown", "suspend", "cancel", "resume"):
            return RequestResult(False, "not simulated")
        self._record(action, vid, vm.hid)
        if action == "suspend":
            self._set(vid, VMState.ACTIVE, LCMState.SAVE_SUSPEND)
            self.clock.callLater(self.delay, self._set, vid, VMState.SUSPENDED, LCMState.LCM_INIT)
        elif action == "resume":
            self._set(vid, VMState.ACTIVE, LCMState.BOOT)
            self.clock.callLater(self.delay, self._set, vid, VMState.ACTIVE, LCMState.RUNNING)
        elif action == "shutdown":
            self._set(vid, VMState.ACTIVE, LCMState.SHUTDOWN)
            after = (
                (VMState.ACTIVE, LCMState.RUNNING)
                if self.shutdown_fails
                else (VMState.DONE, LCMState.LCM_INIT)
            )
            self.clock.callLater(self.delay, self._set, vid, *after)
        else:
            self._set(vid, VMState.DONE, LCMState.LCM_INIT)
        return OK

    def resume_on(self, vid: int, hid: int) -> RequestResult:
        """On its own host a plain resume; on another PROLOG_MIGRATE, BOOT after ``delay``,
        RUNNING after another (the transfer, then the restore)."""
        vm = self._vms[vid]
        if vm.state != VMState.SUSPENDED:
            return WRONG
        if hid == vm.hid:
            return self.action("resume", vid)
        self._record("resume_on", vid, hid)
        self._vms[vid] = replace(vm, hid=hid, host_name=self._hosts[hid].name)
        self._set(vid, VMState.ACTIVE, LCMState.PROLOG_MIGRATE)
        self.clock.callLater(self.delay, self._set, vid, VMState.ACTIVE, LCMState.BOOT)
        self.clock.callLater(2 * self.delay, self._set, vid, VMState.ACTIVE, LCMState.RUNNING)
        return OK

    def reject(self, vid: int, reason: str) -> RequestResult:
        if self._vms[vid].state not in (VMState.PENDING, VMState.HOLD):
            return WRONG
        self.rejections[vid] = reason
        self._set(vid, VMState.FAILED, LCMState.LCM_INIT)
        return OK

    # -- test controls ----------------------------------------------------------------

    def finish(self, vid: int, state: VMState = VMState.DONE) -> None:
        """The VM ends on its own (deleted, failed, shut down by its user)."""
        self._set(vid, state, LCMState.LCM_INIT)

    def _record(self, action: str, vid: int, hid: int | None) -> None:
        self.actions.append((self.clock.seconds(), action, vid, hid))

    def _set(self, vid: int, state: VMState, lcm: LCMState) -> None:
        vm = self._vms[vid]
        if vm.state in (VMState.DONE, VMState.FAILED):
            return
        previous = (vm.state, vm.lcm_state)
        now = int(self.clock.seconds())
        if state == VMState.SUSPENDED:  # its history record's running phase ends
            vm = replace(vm, ran=vm.ran + now - vm.placed)
        elif previous[0] == VMState.SUSPENDED:  # a resume opens a new record
            vm = replace(vm, placed=now)
        self._vms[vid] = replace(vm, state=int(state), lcm_state=int(lcm))
        # Leaving the host gives its capacity back; a resume takes it again.
        if vm.hid is not None and previous[0] == VMState.ACTIVE and state != VMState.ACTIVE:
            self._charge(vm.hid, vm, -1)
        elif vm.hid is not None and previous[0] == VMState.SUSPENDED and state == VMState.ACTIVE:
            self._charge(vm.hid, vm, 1)
        self.clock.callLater(0, self.on_vm_changed, self._vms[vid], *previous)

    def _charge(self, hid: int, vm: VMView, sign: int) -> None:
        host = self._hosts[hid]
        shares = replace(
            host.shares,
            cpu_usage=host.shares.cpu_usage + sign * vm.cpu_demand,
            mem_usage=host.shares.mem_usage + sign * vm.memory_demand,
            running_vms=host.shares.running_vms + sign,
        )
        self._hosts[hid] = replace(host, shares=shares)
