"""Resubmitting the VMs of a failed host, fenced: a VM never runs on two hosts.

``resubmit`` (2.2's action) sends a VM back to PENDING so that the scheduler places it
again; for a RUNNING (or UNKNOWN) VM its domain must first be known to be gone from its
host. The domain is destroyed through the host's VMM driver; when that fails, a poll
saying the domain is not there also settles it. When neither answers, the host is
unreachable: only a host in ERROR (HOST_ERROR_THRESHOLD monitoring failures in a row)
is then taken for dead, and the domain is remembered as *stale*: every time the host is
monitored successfully again the destroy is retried, until it is confirmed gone. A host
that is not in ERROR but does not answer refuses the resubmit.

The stale domains are kept in memory: after a restart of the daemon, a host that comes
back with an old domain is not cleaned up by this module.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from nebula_xr.dispatch_manager import DispatchManager
from nebula_xr.drivers.base import VirtualMachineDriver, VMAction
from nebula_xr.drivers.invoke import failure_message
from nebula_xr.log import Log
from nebula_xr.model import History, Host, LCMState, Reason, VirtualMachine, VMState
from nebula_xr.pools import HostPool, VirtualMachinePool
from nebula_xr.scheduling import RequestResult

#: LCM states a VM can be resubmitted from: nothing but polls is in flight for them.
RESUBMITTABLE = (LCMState.RUNNING, LCMState.UNKNOWN)


class Fencing:
    def __init__(
        self,
        vms: VirtualMachinePool,
        hosts: HostPool,
        dm: DispatchManager,
        drivers: dict[str, VirtualMachineDriver],
        timeouts: dict[str, float],
        clock: Any,
        log: Log,
        local_dir: Callable[[int], Any],
        in_error: Callable[[Host], bool],
    ) -> None:
        self.vms = vms
        self.hosts = hosts
        self.dm = dm
        self.drivers = drivers
        self.timeouts = timeouts
        self.clock = clock
        self.log = log
        self.local_dir = local_dir
        #: Whether a host reached HOST_ERROR_THRESHOLD (the IM knows, even while it
        #: monitors the host again).
        self.in_error = in_error
        #: host id → vid → the action that destroys the VM's stale domain there.
        self.stale: dict[int, dict[int, tuple[str, VMAction]]] = {}

    # -- resubmit -------------------------------------------------------------------------

    def resubmit(self, vid: int) -> defer.Deferred:
        """Fire with the RequestResult of resubmitting ``vid`` once its domain is settled."""
        vm = self.vms.get(vid)
        if vm is None or vm.state is not VMState.ACTIVE:
            return defer.succeed(self.dm.resubmit(vid))
        record = vm.current
        if vm.lcm_state not in RESUBMITTABLE or record is None:
            return defer.succeed(RequestResult(False, "Wrong state to perform action"))
        action = self._action(vm, record)
        self.log.vm(
            vid,
            "HFM",
            2,
            f"Resubmitting: destroying domain {action.deploy_id} on {record.host_name}",
        )

        def settled(gone: str | None) -> RequestResult:
            host = self.hosts.get(record.hid)
            in_error = host is None or self.in_error(host)
            current = self.vms.get(vid)
            if current is None or current.current is not record:
                return RequestResult(False, f"VM {vid} changed while it was being resubmitted")
            if gone is not None:
                if not in_error:
                    return RequestResult(
                        False,
                        f"Can not resubmit VM {vid}: the domain on {record.host_name} could "
                        f"not be destroyed ({gone}) and the host is not in ERROR",
                    )
                self.stale.setdefault(record.hid, {})[vid] = (record.vm_mad, action)
                self.log.vm(
                    vid,
                    "HFM",
                    1,
                    f"Host {record.host_name} is in ERROR and does "
                    f"not answer ({gone}): the domain will be destroyed "
                    "when it answers again",
                )
            reason = Reason.ERROR if in_error else Reason.USER
            return self.dm.resubmit(vid, reason=reason)

        return self._destroy(record.vm_mad, action).addCallback(settled)

    # -- stale domains --------------------------------------------------------------------

    def host_monitored(self, host: Host) -> None:
        """A host answered its monitoring: destroy the stale domains it may still run."""
        for vid, (vm_mad, action) in list(self.stale.get(host.oid, {}).items()):

            def settled(gone: str | None, vid: int = vid, action: VMAction = action) -> None:
                if gone is not None:
                    self.log.vm(
                        vid,
                        "HFM",
                        0,
                        f"Stale domain {action.deploy_id} on "
                        f"{action.host} still not destroyed: {gone}",
                    )
                    return
                pending = self.stale.get(host.oid, {})
                pending.pop(vid, None)
                if not pending:
                    self.stale.pop(host.oid, None)
                self.log.vm(
                    vid, "HFM", 2, f"Stale domain {action.deploy_id} on {action.host} destroyed"
                )

            self._destroy(vm_mad, action).addCallback(settled)

    # -- driver calls ---------------------------------------------------------------------

    def _action(self, vm: VirtualMachine, record: History) -> VMAction:
        return VMAction(
            vid=vm.oid,
            host=record.host_name,
            deploy_id=vm.deploy_id or f"one-{vm.oid}",
            template=vm.template.copy(),
            vm_dir=record.vm_dir,
            remote_dir=record.remote_dir,
            local_dir=self.local_dir(vm.oid),
            seq=record.seq,
        )

    def _destroy(self, vm_mad: str, action: VMAction) -> defer.Deferred:
        """Fire with None once the domain is known to be gone, else with the reason."""
        driver = self.drivers.get(vm_mad)
        if driver is None:
            return defer.succeed(f"VMM driver {vm_mad} not loaded")
        timeout = self.timeouts.get(vm_mad, 300.0)

        def call(method: Callable[[], Any]) -> defer.Deferred:
            deferred = defer.maybeDeferred(method)
            deferred.addTimeout(timeout, self.clock)
            return deferred

        def not_destroyed(failure: Failure) -> defer.Deferred:
            reason = failure_message(failure, timeout)

            def polled(info: object) -> str | None:
                state = str(info.get("STATE", "")) if isinstance(info, dict) else ""
                return None if state[:1] == "d" else f"{reason}; the domain is still there"

            return call(lambda: driver.poll(action)).addCallbacks(
                polled, lambda poll: f"{reason}; poll: {failure_message(poll, timeout)}"
            )

        return call(lambda: driver.cancel(action)).addCallbacks(lambda _: None, not_destroyed)
