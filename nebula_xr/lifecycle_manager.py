"""The life-cycle manager (LCM): what happens to an ACTIVE VM (lifecycle.md §3–§6).

Actions come from the dispatch manager once it accepted a request; each checks the
state again, updates the VM, its history records and the host shares, and asks the
VMM or TM manager for the driver operation. Driver outcomes come back as events
(``prolog_success``, ``save_failure``...), which move the VM on and, when the VM leaves
ACTIVE, are passed to the dispatch manager. Times are the clock's, in whole seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from nebula_xr.log import Log
from nebula_xr.model import History, LCMState, Reason, VirtualMachine, VMState
from nebula_xr.pools import HostPool, VirtualMachinePool

if TYPE_CHECKING:
    from nebula_xr.dispatch_manager import DispatchManager
    from nebula_xr.transfer_manager import TransferManager
    from nebula_xr.virtual_machine_manager import VirtualMachineManager

L = LCMState


class LifeCycleManager:
    def __init__(self, vms: VirtualMachinePool, hosts: HostPool, clock: Any, log: Log) -> None:
        self.vms = vms
        self.hosts = hosts
        self.clock = clock
        self.log = log
        # Wired by the daemon: the LCM drives both managers and reports to the DM.
        self.vmm: VirtualMachineManager
        self.tm: TransferManager
        self.dm: DispatchManager

    def now(self) -> int:
        return int(self.clock.seconds())

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
        self.vmm.poll(vm)

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
        if resume:
            self.tm.prolog_resume(vm)
        else:
            self.tm.prolog(vm)

    def migrate(self, vid: int) -> None:
        vm = self._vm(vid, "migrate_action", L.RUNNING)
        if vm is None or vm.current is None:
            return
        vm.current.stime = self.now()
        self.vms.save_history(vm.current)
        self._charge(vm, vm.current)
        self._set(vm, L.SAVE_MIGRATE)
        self.vmm.save(vm)

    def live_migrate(self, vid: int) -> None:
        vm = self._vm(vid, "live_migrate_action", L.RUNNING)
        if vm is None or vm.current is None:
            return
        vm.current.stime = self.now()
        self.vms.save_history(vm.current)
        self._charge(vm, vm.current)
        self._set(vm, L.MIGRATE)
        self.vmm.migrate(vm)

    def shutdown(self, vid: int) -> None:
        vm = self._vm(vid, "shutdown_action", L.RUNNING)
        if vm is not None:
            self._set(vm, L.SHUTDOWN)
            self.vmm.shutdown(vm)

    def stop(self, vid: int) -> None:
        vm = self._vm(vid, "stop_action", L.RUNNING)
        if vm is not None:
            self._set(vm, L.SAVE_STOP)
            self.vmm.save(vm)

    def suspend(self, vid: int) -> None:
        vm = self._vm(vid, "suspend_action", L.RUNNING)
        if vm is not None:
            self._set(vm, L.SAVE_SUSPEND)
            self.vmm.save(vm)

    def cancel(self, vid: int) -> None:
        vm = self._vm(vid, "cancel_action", L.RUNNING)
        if vm is not None:
            self._set(vm, L.CANCEL)
            self.vmm.cancel(vm)

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
        self.vmm.restore(vm)

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
            self.vmm.deploy(vm)
        else:
            self.vmm.restore(vm)

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
            self._set(vm, L.PROLOG_MIGRATE)
            self.tm.prolog_migrate(vm)
        elif vm.lcm_state is L.SAVE_SUSPEND:
            self._leave_host(vm, cur, ("retime", "etime"), Reason.STOP_RESUME)
            self.dm.suspend_success(vid)
        else:
            cur.estime = cur.retime = now
            cur.reason = Reason.STOP_RESUME
            self.vms.save_history(cur)
            self._set(vm, L.EPILOG_STOP)
            self.tm.epilog_stop(vm)

    def save_failure(self, vid: int) -> None:
        vm = self._vm(vid, "save_failure", L.SAVE_MIGRATE, L.SAVE_SUSPEND, L.SAVE_STOP)
        if vm is None:
            return
        if vm.lcm_state is L.SAVE_MIGRATE and vm.previous is not None:
            self._back_on_previous_host(vm, self.now())
            return
        self._set(vm, L.RUNNING)
        self.vmm.poll(vm)

    def shutdown_success(self, vid: int) -> None:
        vm = self._vm(vid, "shutdown_success", L.SHUTDOWN)
        if vm is None or vm.current is None:
            return
        vm.current.estime = vm.current.retime = self.now()
        self.vms.save_history(vm.current)
        self._set(vm, L.EPILOG)
        self.tm.epilog(vm)

    def shutdown_failure(self, vid: int) -> None:
        vm = self._vm(vid, "shutdown_failure", L.SHUTDOWN)
        if vm is not None:
            self._set(vm, L.RUNNING)
            self.vmm.poll(vm)

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
            self.vmm.poll(vm)

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
            self.vmm.deploy(vm)

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
            if state is not L.SAVE_MIGRATE:
                self.vmm.cancel_domain(vm, cur)
            if both:
                self.vmm.cancel_domain(vm, prev)
        # The images are where the last transfer left them.
        if state is L.SAVE_MIGRATE:
            doomed = [prev]
        elif state is L.PROLOG_MIGRATE:
            doomed = [cur, prev]
        else:
            doomed = [cur]
        for record in doomed:
            if record is not None:
                self.tm.delete(vm, record)
        self.dm.done(vid)


#: LCM states in which no domain exists on the current host.
_NO_DOMAIN = (L.PROLOG, L.PROLOG_RESUME, L.PROLOG_MIGRATE, L.EPILOG, L.EPILOG_STOP)
