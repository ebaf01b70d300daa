"""The life-cycle manager (LCM): what happens to an ACTIVE VM (lifecycle.md §3–§6).

Actions come from the dispatch manager once it accepted a request; each checks the
state again, updates the VM, its history records and the host shares, and asks the
VMM or TM manager for the driver operation, whose Deferred it gives the callbacks that
raise the next event (``prolog_success``, ``save_failure``...). Events move the VM on
and, when it leaves ACTIVE, are passed to the dispatch manager. Times are the clock's,
in whole seconds.

An answer is applied only to the VM state it was asked for: a reply that arrives after
the VM moved to another history record or changed phase is logged and dropped (a poll
sent before a cold migration must not suspend the VM running on its new host).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python import log as twisted_log
from twisted.python.failure import Failure

from nebula_xr.cadence import Cadence
from nebula_xr.interfaces import (
    DispatchEvents,
    DriverFailure,
    TransferOperations,
    VirtualMachineOperations,
    ignore_driver_failure,
)
from nebula_xr.log import Log
from nebula_xr.model import History, LCMState, Reason, VirtualMachine, VMState
from nebula_xr.pools import HostPool, VirtualMachinePool
from nebula_xr.virtual_machine_manager import record_usage

L = LCMState

#: Polled LCM states: a VM gone from its host (UNKNOWN) is watched until it reappears.
POLLED = (L.RUNNING, L.UNKNOWN)


@dataclass(frozen=True)
class Question:
    """What a driver was asked, and about which state of the VM."""

    vid: int
    what: str
    host: str
    seq: int
    lcm_state: LCMState
    phase: int


class LifeCycleManager:
    def __init__(
        self,
        vms: VirtualMachinePool,
        hosts: HostPool,
        vmm: VirtualMachineOperations,
        tm: TransferOperations,
        dm: DispatchEvents,
        clock: IReactorTime,
        log: Log,
        polling_interval: int,
        polling_concurrency: int = 32,
        on_polled: Callable[[VirtualMachine], None] | None = None,
    ) -> None:
        self.vms = vms
        self.hosts = hosts
        self.vmm = vmm
        self.tm = tm
        self.dm = dm
        self.clock = clock
        self.log = log
        self.polling_interval = polling_interval
        #: Each polled VM once per VM_POLLING_INTERVAL, MONITORING_CONCURRENCY at once.
        self.polling = Cadence(
            clock,
            polling_interval,
            polling_concurrency,
            self._poll_on_cadence,
            "VM polling",
            lambda message: log.warning("LCM", message),
        )
        #: Told of every poll answer applied (the monitoring history records it).
        self.on_polled = on_polled
        #: Bumped at every LCM state change: an answer asked in an older phase is stale.
        self._phases: dict[int, int] = {}

    def now(self) -> int:
        return int(self.clock.seconds())

    # -- asking the drivers -------------------------------------------------------------

    def ask(
        self,
        vm: VirtualMachine,
        what: str,
        record: History | None,
        request: Deferred[Any],
        on_success: Callable[[int, Any], None],
        on_failure: Callable[[int], None],
    ) -> None:
        """Attach ``on_success(vid, answer)`` / ``on_failure(vid)`` to a driver request
        about ``record``'s host, applied only while the VM is in the state it is now."""
        current = vm.current
        question = Question(
            vm.oid,
            what,
            record.host_name if record is not None else "",
            current.seq if current is not None else -1,
            vm.lcm_state,
            self._phases.get(vm.oid, 0),
        )

        def answered(answer: Any) -> None:
            if self._still_asked(question):
                on_success(question.vid, answer)

        def failed(failure: Failure) -> None:
            failure.trap(DriverFailure)
            if self._still_asked(question):
                on_failure(question.vid)

        request.addCallbacks(answered, failed).addErrback(_report_bug)

    def _still_asked(self, question: Question) -> bool:
        vm = self.vms.get(question.vid)
        if vm is None:
            return False
        current = vm.current
        if (
            vm.state is VMState.ACTIVE
            and self._phases.get(vm.oid, 0) == question.phase
            and (current.seq if current is not None else -1) == question.seq
        ):
            return True
        now = vm.lcm_state.name if vm.state is VMState.ACTIVE else vm.state.name
        where = f", host {current.host_name} record {current.seq}" if current else ""
        self.log.vm(
            vm.oid,
            "LCM",
            1,
            f"Ignoring stale {question.what} answer from {question.host} (asked in "
            f"{question.lcm_state.name}, record {question.seq}): the VM is now {now}{where}",
        )
        return False

    def _deploy(self, vm: VirtualMachine) -> None:
        self.ask(vm, "DEPLOY", vm.current, self.vmm.deploy(vm), self._deployed, self.deploy_failure)

    def _deployed(self, vid: int, deploy_id: object) -> None:
        vm = self.vms.get(vid)
        if vm is not None:
            # 1.2 keeps the first token of the driver's answer as the deploy id.
            token = str(deploy_id or "").split()
            vm.deploy_id = token[0] if token else f"one-{vid}"
            self.vms.update(vm)
        self.deploy_success(vid)

    def _restore(self, vm: VirtualMachine) -> None:
        request = self.vmm.restore(vm)
        self.ask(
            vm, "RESTORE", vm.current, request, _event(self.deploy_success), self.deploy_failure
        )

    def _save(self, vm: VirtualMachine) -> None:
        """Save to the checkpoint; a cold migration saves on the previous (source) host."""
        record = vm.previous if vm.lcm_state is L.SAVE_MIGRATE else vm.current
        request = self.vmm.save(vm, record)
        self.ask(vm, "SAVE", record, request, _event(self.save_success), self.save_failure)

    def _shutdown(self, vm: VirtualMachine) -> None:
        request = self.vmm.shutdown(vm)
        on_success = _event(self.shutdown_success)
        self.ask(vm, "SHUTDOWN", vm.current, request, on_success, self.shutdown_failure)

    def _cancel(self, vm: VirtualMachine) -> None:
        request = self.vmm.cancel(vm, vm.current)
        self.ask(
            vm, "CANCEL", vm.current, request, _event(self.cancel_success), self.cancel_failure
        )

    def _prolog(self, vm: VirtualMachine, request: Deferred[None]) -> None:
        on_success = _event(self.prolog_success)
        self.ask(vm, "TRANSFER", vm.current, request, on_success, self.prolog_failure)

    def _prolog_migrate(self, vm: VirtualMachine) -> None:
        """Move the checkpoint and images from the previous record's host to the current
        one's; then a restore there (``prolog_success``), as a cold migration does."""
        self._set(vm, L.PROLOG_MIGRATE)
        self._prolog(vm, self.tm.prolog_migrate(vm))

    def _epilog(self, vm: VirtualMachine, request: Deferred[None]) -> None:
        on_success = _event(self.epilog_success)
        self.ask(vm, "TRANSFER", vm.current, request, on_success, self.epilog_failure)

    # -- polling ------------------------------------------------------------------------

    def poll_due(self) -> None:
        """Timer tick: put the RUNNING or UNKNOWN VMs not on the polling cadence yet on it,
        due one VM_POLLING_INTERVAL after their last poll."""
        polling = self.polling
        self.polling.add(
            (vm.oid, vm.last_poll + self.polling_interval)
            for vm in list(self.vms)
            if vm.state is VMState.ACTIVE and vm.lcm_state in POLLED and vm.oid not in polling
        )

    def _poll_on_cadence(self, vid: int) -> Deferred[Any] | None:
        vm = self.vms.get(vid)
        if vm is None or vm.state is not VMState.ACTIVE or vm.lcm_state not in POLLED:
            return None
        return self.poll(vm)

    def poll(self, vm: VirtualMachine) -> Deferred[Any]:
        """Ask the VM's driver for its state; the Deferred fires once the answer is applied."""
        vm.last_poll = self.now()
        self.vms.update(vm)
        # A failed poll is only logged (1.2 raised CANCEL_FAILURE here, a bug).
        request = self.vmm.poll(vm, vm.current)
        self.ask(vm, "POLL", vm.current, request, self._polled, _nothing)
        return request

    def _polled(self, vid: int, info: dict[str, str]) -> None:
        vm = self.vms.get(vid)
        if vm is None:
            return
        state = record_usage(self.vms, vm, info)
        if self.on_polled is not None:
            self.on_polled(vm)
        # The state letter only matters while the VM is meant to be running.
        if vm.lcm_state in POLLED:
            event = {
                "a": self.monitor_running,
                "p": self.monitor_suspend,
                "e": self.monitor_failure,
                "d": self.monitor_unknown,
            }.get(state)
            if event is not None:
                event(vid)

    # -- helpers ------------------------------------------------------------------------

    def _vm(self, vid: int, action: str, *allowed: LCMState) -> VirtualMachine | None:
        """The VM if it is ACTIVE (and in one of ``allowed``), else log and None."""
        vm = self.vms.get(vid)
        if vm is None:
            return None
        if vm.state is not VMState.ACTIVE or (allowed and vm.lcm_state not in allowed):
            self.log.vm(vid, "LCM", 1, f"{action}, VM in a wrong state.")
            return None
        return vm

    def _charge(self, vm: VirtualMachine, record: History) -> None:
        host = self.hosts.get(record.hid)
        if host is not None:
            host.shares.add(*vm.reservation())
            self.hosts.save(host)

    def _release(self, vm: VirtualMachine, record: History | None) -> None:
        host = self.hosts.get(record.hid) if record is not None else None
        if host is not None:
            host.shares.remove(*vm.reservation())
            self.hosts.save(host)

    def _leave_host(
        self,
        vm: VirtualMachine,
        record: History,
        times: tuple[str, ...],
        reason: Reason | None,
        now: int | None = None,
    ) -> None:
        """The VM left ``record``'s host: stamp ``times``, set ``reason``, free the host."""
        now = self.now() if now is None else now
        for name in times:
            setattr(record, name, now)
        if reason is not None:
            record.reason = reason
        self.vms.save_history(record)
        self._release(vm, record)

    def _set(self, vm: VirtualMachine, lcm: LCMState) -> None:
        self.log.vm(vm.oid, "LCM", 2, f"New VM state is {lcm.name}")
        self._phases[vm.oid] = self._phases.get(vm.oid, 0) + 1
        self.vms.transition(vm, lcm=lcm)

    def _back_on_previous_host(self, vm: VirtualMachine, now: int) -> None:
        """A migration failed: close both records, open a new one on the source host."""
        cur, prev = vm.current, vm.previous
        assert cur is not None and prev is not None
        cur.etime, cur.reason = now, Reason.ERROR
        prev.etime = prev.retime = now
        prev.reason = Reason.USER
        back = prev.copy_for(cur.seq + 1)
        back.stime = back.rstime = now
        self.vms.save_history(cur, prev)
        self.vms.add_history(vm, back)
        self._release(vm, cur)
        self._set(vm, L.RUNNING)
        self.poll(vm)

    # -- actions (from the DM) ----------------------------------------------------------

    def deploy(self, vid: int) -> None:
        vm = self._vm(vid, "deploy_action")
        if vm is None or vm.current is None:
            return
        cur, prev = vm.current, vm.previous
        resume = prev is not None and prev.reason == Reason.STOP_RESUME
        cur.stime = cur.pstime = self.now()
        self.vms.save_history(cur)
        self._charge(vm, cur)
        self._set(vm, L.PROLOG_RESUME if resume else L.PROLOG)
        self._prolog(vm, self.tm.prolog_resume(vm) if resume else self.tm.prolog(vm))

    def migrate(self, vid: int) -> None:
        vm = self._vm(vid, "migrate_action", L.RUNNING)
        if vm is None or vm.current is None:
            return
        vm.current.stime = self.now()
        self.vms.save_history(vm.current)
        self._charge(vm, vm.current)
        self._set(vm, L.SAVE_MIGRATE)
        self._save(vm)

    def live_migrate(self, vid: int) -> None:
        vm = self._vm(vid, "live_migrate_action", L.RUNNING)
        if vm is None or vm.current is None:
            return
        vm.current.stime = self.now()
        self.vms.save_history(vm.current)
        self._charge(vm, vm.current)
        self._set(vm, L.MIGRATE)
        request = self.vmm.migrate(vm)
        on_success = _event(self.deploy_success)
        self.ask(vm, "MIGRATE", vm.previous, request, on_success, self.deploy_failure)

    def shutdown(self, vid: int) -> None:
        vm = self._vm(vid, "shutdown_action", L.RUNNING)
        if vm is not None:
            self._set(vm, L.SHUTDOWN)
            self._shutdown(vm)

    def stop(self, vid: int) -> None:
        vm = self._vm(vid, "stop_action", L.RUNNING)
        if vm is not None:
            self._set(vm, L.SAVE_STOP)
            self._save(vm)

    def suspend(self, vid: int) -> None:
        vm = self._vm(vid, "suspend_action", L.RUNNING)
        if vm is not None:
            self._set(vm, L.SAVE_SUSPEND)
            self._save(vm)

    def cancel(self, vid: int) -> None:
        vm = self._vm(vid, "cancel_action", L.RUNNING)
        if vm is not None:
            self._set(vm, L.CANCEL)
            self._cancel(vm)

    def restore(self, vid: int) -> None:
        """Resume a SUSPENDED VM (the DM already made it ACTIVE) on the same host."""
        vm = self._vm(vid, "restore_action")
        if vm is None or vm.current is None:
            return
        record = vm.current.copy_for(vm.current.seq + 1)
        record.stime = record.rstime = self.now()
        self.vms.add_history(vm, record)
        self._charge(vm, record)
        self._set(vm, L.BOOT)
        self._restore(vm)

    def resume_migrate(self, vid: int) -> None:
        """Resume a SUSPENDED VM on another host: the DM made it ACTIVE and opened the
        record on the target host. It goes on as a cold migration after its save (the
        suspension already saved it): PROLOG_MIGRATE, BOOT with a restore, RUNNING, and
        fails the same way."""
        vm = self._vm(vid, "resume_migrate_action", L.LCM_INIT)
        if vm is None or vm.current is None:
            return
        vm.current.stime = vm.current.pstime = self.now()
        self.vms.save_history(vm.current)
        self._charge(vm, vm.current)
        self._prolog_migrate(vm)

    # -- events (from the VMM and TM managers) ------------------------------------------

    def prolog_success(self, vid: int) -> None:
        vm = self._vm(vid, "prolog_success", L.PROLOG, L.PROLOG_MIGRATE, L.PROLOG_RESUME)
        if vm is None or vm.current is None:
            return
        fresh = vm.lcm_state is L.PROLOG
        vm.current.petime = vm.current.rstime = self.now()
        self.vms.save_history(vm.current)
        self._set(vm, L.BOOT)
        if fresh:
            self._deploy(vm)
        else:
            self._restore(vm)

    def prolog_failure(self, vid: int) -> None:
        vm = self._vm(vid, "prolog_failure", L.PROLOG, L.PROLOG_MIGRATE, L.PROLOG_RESUME)
        if vm is None or vm.current is None:
            return
        self._leave_host(vm, vm.current, ("petime", "etime"), Reason.ERROR)
        self.dm.failed(vid)

    def deploy_success(self, vid: int) -> None:
        vm = self._vm(vid, "deploy_success", L.BOOT, L.MIGRATE)
        if vm is None or vm.current is None:
            return
        if vm.lcm_state is L.MIGRATE:
            now = vm.current.rstime = self.now()
            self.vms.save_history(vm.current)
            if vm.previous is not None:
                self._leave_host(vm, vm.previous, ("etime", "retime"), Reason.USER, now)
        self._set(vm, L.RUNNING)

    def deploy_failure(self, vid: int) -> None:
        vm = self._vm(vid, "deploy_failure", L.BOOT, L.MIGRATE)
        if vm is None or vm.current is None:
            return
        now = self.now()
        if vm.lcm_state is L.MIGRATE and vm.previous is not None:
            self._back_on_previous_host(vm, now)
            return
        self._leave_host(vm, vm.current, ("retime", "etime"), Reason.ERROR)
        self.dm.failed(vid)

    def save_success(self, vid: int) -> None:
        vm = self._vm(vid, "save_success", L.SAVE_MIGRATE, L.SAVE_SUSPEND, L.SAVE_STOP)
        if vm is None or vm.current is None:
            return
        now = self.now()
        cur = vm.current
        if vm.lcm_state is L.SAVE_MIGRATE:
            cur.pstime = now
            self.vms.save_history(cur)
            if vm.previous is not None:
                self._leave_host(vm, vm.previous, ("etime", "retime"), Reason.USER, now)
            self._prolog_migrate(vm)
        elif vm.lcm_state is L.SAVE_SUSPEND:
            self._leave_host(vm, cur, ("retime", "etime"), Reason.STOP_RESUME)
            self.dm.suspend_success(vid)
        else:
            cur.estime = cur.retime = now
            cur.reason = Reason.STOP_RESUME
            self.vms.save_history(cur)
            self._set(vm, L.EPILOG_STOP)
            self._epilog(vm, self.tm.epilog_stop(vm))

    def save_failure(self, vid: int) -> None:
        vm = self._vm(vid, "save_failure", L.SAVE_MIGRATE, L.SAVE_SUSPEND, L.SAVE_STOP)
        if vm is None:
            return
        if vm.lcm_state is L.SAVE_MIGRATE and vm.previous is not None:
            self._back_on_previous_host(vm, self.now())
            return
        self._set(vm, L.RUNNING)
        self.poll(vm)

    def shutdown_success(self, vid: int) -> None:
        vm = self._vm(vid, "shutdown_success", L.SHUTDOWN)
        if vm is None or vm.current is None:
            return
        vm.current.estime = vm.current.retime = self.now()
        self.vms.save_history(vm.current)
        self._set(vm, L.EPILOG)
        self._epilog(vm, self.tm.epilog(vm))

    def shutdown_failure(self, vid: int) -> None:
        vm = self._vm(vid, "shutdown_failure", L.SHUTDOWN)
        if vm is not None:
            self._set(vm, L.RUNNING)
            self.poll(vm)

    def cancel_success(self, vid: int) -> None:
        vm = self._vm(vid, "cancel_success", L.CANCEL)
        if vm is None or vm.current is None:
            return
        # No epilog: the images stay on the host, and retime stays unset, as in 1.2.
        self._leave_host(vm, vm.current, ("etime",), Reason.CANCEL)
        self.dm.done(vid)

    def cancel_failure(self, vid: int) -> None:
        vm = self._vm(vid, "cancel_failure", L.CANCEL)
        if vm is not None:
            self._set(vm, L.RUNNING)
            self.poll(vm)

    def epilog_success(self, vid: int) -> None:
        vm = self._vm(vid, "epilog_success", L.EPILOG, L.EPILOG_STOP)
        if vm is None or vm.current is None:
            return
        self._leave_host(vm, vm.current, ("eetime", "etime"), None)
        if vm.lcm_state is L.EPILOG_STOP:
            self.dm.stop_success(vid)
        else:
            self.dm.done(vid)

    def epilog_failure(self, vid: int) -> None:
        vm = self._vm(vid, "epilog_failure", L.EPILOG, L.EPILOG_STOP)
        if vm is None or vm.current is None:
            return
        self._leave_host(vm, vm.current, ("eetime", "etime"), Reason.ERROR)
        self.dm.failed(vid)

    def monitor_suspend(self, vid: int) -> None:
        """The guest was found paused: treat it as suspended by the user."""
        vm = self._vm(vid, "monitor_suspend", L.RUNNING, L.UNKNOWN)
        if vm is None or vm.current is None:
            return
        self._leave_host(vm, vm.current, ("retime", "etime"), Reason.STOP_RESUME)
        self.dm.suspend_success(vid)

    def monitor_failure(self, vid: int) -> None:
        """The guest crashed."""
        vm = self._vm(vid, "monitor_failure", L.RUNNING, L.UNKNOWN)
        if vm is None or vm.current is None:
            return
        self._leave_host(vm, vm.current, ("retime", "etime"), Reason.ERROR)
        self.dm.failed(vid)

    def monitor_unknown(self, vid: int) -> None:
        """The domain is gone from its host.

        1.2 took this for a halt and ran the epilog, which lost the VM when the host had
        only rebooted; as 1.4 does, the VM keeps its host and capacity and stays polled
        until it reappears, ``restart`` boots it again or ``finalize`` ends it.
        """
        vm = self._vm(vid, "monitor_unknown", L.RUNNING, L.UNKNOWN)
        if vm is not None and vm.lcm_state is L.RUNNING:
            self._set(vm, L.UNKNOWN)

    def monitor_running(self, vid: int) -> None:
        """A poll found the domain running: an UNKNOWN VM is back."""
        vm = self._vm(vid, "monitor_running", L.RUNNING, L.UNKNOWN)
        if vm is not None and vm.lcm_state is L.UNKNOWN:
            self._set(vm, L.RUNNING)

    # -- 1.4 actions --------------------------------------------------------------------

    def restart(self, vid: int) -> None:
        """Boot a VM stuck in BOOT or lost (UNKNOWN) again: a new DEPLOY on the same
        host with the same history record, no prolog (api-1.4.md §5.2)."""
        vm = self._vm(vid, "restart_action", L.BOOT, L.UNKNOWN)
        if vm is not None:
            self._set(vm, L.BOOT)
            self._deploy(vm)

    def recover(self, vid: int, success: bool) -> None:
        """``onevm recover``: the administrator says how the pending step of a VM in a
        transient state ended (OpenNebula 4.2's semantics); it goes on from there, and a
        late driver answer to the step is stale."""
        vm = self._vm(vid, "recover_action", *RECOVERABLE)
        if vm is None:
            return
        events = RECOVERABLE[vm.lcm_state]
        outcome = "success" if success else "failure"
        self.log.vm(vid, "LCM", 2, f"Recovering VM from {vm.lcm_state.name} as a {outcome}")
        self._phases[vid] = self._phases.get(vid, 0) + 1
        if success and vm.lcm_state is L.BOOT and not vm.deploy_id:
            vm.deploy_id = f"one-{vid}"  # the name 1.2's drivers give the domain
            self.vms.update(vm)
        getattr(self, events[0] if success else events[1])(vid)

    # -- start-up reconciliation (reconciliation.py decides, these act) ----------------

    def retry(self, vid: int) -> None:
        """Ask again for the pending driver step of a VM in a transient state, for the
        steps that are idempotent (every one but a live migration)."""
        vm = self.vms.get(vid)
        if vm is None or vm.state is not VMState.ACTIVE or vm.current is None:
            return
        state, prev = vm.lcm_state, vm.previous
        self._phases[vid] = self._phases.get(vid, 0) + 1
        if state is L.PROLOG:
            self._prolog(vm, self.tm.prolog(vm))
        elif state is L.PROLOG_RESUME:
            self._prolog(vm, self.tm.prolog_resume(vm))
        elif state is L.PROLOG_MIGRATE:
            self._prolog(vm, self.tm.prolog_migrate(vm))
        elif state is L.BOOT:
            # A record that follows a save (suspend, stop, cold migration) boots from
            # the checkpoint; any other boots from the deployment file.
            if prev is not None and prev.reason in (Reason.STOP_RESUME, Reason.USER):
                self._restore(vm)
            else:
                self._deploy(vm)
        elif state in (L.SAVE_STOP, L.SAVE_SUSPEND, L.SAVE_MIGRATE):
            self._save(vm)
        elif state is L.SHUTDOWN:
            self._shutdown(vm)
        elif state is L.CANCEL:
            self._cancel(vm)
        elif state is L.EPILOG:
            self._epilog(vm, self.tm.epilog(vm))
        elif state is L.EPILOG_STOP:
            self._epilog(vm, self.tm.epilog_stop(vm))

    def lost(self, vid: int, why: str) -> None:
        """Nothing can tell where the domain of a RUNNING VM is: UNKNOWN, still charged
        to its host and polled until it reappears (or recover/restart/finalize)."""
        vm = self._vm(vid, "lost", L.RUNNING, L.UNKNOWN)
        if vm is not None:
            self.log.vm(vid, "LCM", 0, f"Domain state unknown: {why}")
            self._set(vm, L.UNKNOWN)

    def resubmit(self, vid: int, reason: Reason) -> bool:
        """Take a RUNNING or UNKNOWN VM, whose domain is gone, off its host before the DM
        makes it PENDING again (2.2's resubmit): the record is closed with ``reason``
        and the capacity released. False when the VM is in another state."""
        vm = self._vm(vid, "resubmit_action", L.RUNNING, L.UNKNOWN)
        if vm is None or vm.current is None:
            return False
        why = "host error" if reason == Reason.ERROR else "resubmitted by the user"
        self.log.vm(vid, "LCM", 2, f"Leaving host {vm.current.host_name}: {why}")
        self._leave_host(vm, vm.current, ("retime", "etime"), reason)
        return True

    def delete(self, vid: int) -> None:
        """1.4 ``finalize`` of an ACTIVE VM: abandon whatever runs, then DONE.

        The domain is destroyed (on both hosts while migrating) and the VM directory
        deleted, without waiting for the drivers: their late answers find the VM DONE and
        are dropped. The records are closed with reason USER and the capacity released.
        """
        vm = self._vm(vid, "delete_action")
        if vm is None or vm.lcm_state in (L.LCM_INIT, L.DELETE, L.FAILURE):
            return
        cur, prev, state, now = vm.current, vm.previous, vm.lcm_state, self.now()
        self._set(vm, L.DELETE)
        if cur is not None:
            cur.etime, cur.reason = now, Reason.USER
            if state in (L.PROLOG, L.PROLOG_RESUME, L.PROLOG_MIGRATE):
                cur.petime = now
            elif state in (L.EPILOG, L.EPILOG_STOP):
                cur.eetime = now
            else:
                cur.retime = now
            self.vms.save_history(cur)
            self._release(vm, cur)
        both = state in (L.MIGRATE, L.SAVE_MIGRATE) and prev is not None
        if both:
            prev.etime = prev.retime = now
            prev.reason = Reason.USER
            self.vms.save_history(prev)
            self._release(vm, prev)
        if cur is not None and state not in _NO_DOMAIN:
            # Nothing waits for these: the outcome is only logged.
            if state is not L.SAVE_MIGRATE:
                self.vmm.cancel(vm, cur).addErrback(ignore_driver_failure)
            if both:
                self.vmm.cancel(vm, prev).addErrback(ignore_driver_failure)
        # The images are where the last transfer left them.
        if state is L.SAVE_MIGRATE:
            doomed = [prev]
        elif state is L.PROLOG_MIGRATE:
            doomed = [cur, prev]
        else:
            doomed = [cur]
        for record in doomed:
            if record is not None:
                self.tm.delete(vm, record).addErrback(ignore_driver_failure)
        self.dm.done(vid)


#: The events ``recover`` raises for each transient state: (success, failure).
RECOVERABLE: dict[LCMState, tuple[str, str]] = {
    **dict.fromkeys(
        (L.PROLOG, L.PROLOG_MIGRATE, L.PROLOG_RESUME), ("prolog_success", "prolog_failure")
    ),
    **dict.fromkeys((L.BOOT, L.MIGRATE), ("deploy_success", "deploy_failure")),
    **dict.fromkeys(
        (L.SAVE_STOP, L.SAVE_SUSPEND, L.SAVE_MIGRATE), ("save_success", "save_failure")
    ),
    L.SHUTDOWN: ("shutdown_success", "shutdown_failure"),
    L.CANCEL: ("cancel_success", "cancel_failure"),
    **dict.fromkeys((L.EPILOG, L.EPILOG_STOP), ("epilog_success", "epilog_failure")),
}

#: LCM states in which no domain exists on the current host.
_NO_DOMAIN = (L.PROLOG, L.PROLOG_RESUME, L.PROLOG_MIGRATE, L.EPILOG, L.EPILOG_STOP)


def _event(event: Callable[[int], None]) -> Callable[[int, Any], None]:
    """An LCM event as the callback of a request whose answer carries nothing more."""
    return lambda vid, _answer: event(vid)


def _nothing(_vid: int) -> None:
    """A failed request whose failure is only logged (by the manager that made it)."""


def _report_bug(failure: Failure) -> None:
    # A bug in an event handler must not vanish silently.
    twisted_log.err(failure, "Error while handling a driver answer")
