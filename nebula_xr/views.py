"""Frozen views of VMs and hosts for plugins, and the scheduler's door to the daemon."""

from __future__ import annotations

from typing import Any

from nebula_xr.database import PluginStore
from nebula_xr.dispatch_manager import DispatchManager
from nebula_xr.log import Log
from nebula_xr.model import Host, VirtualMachine, VMState
from nebula_xr.pools import HostPool, VirtualMachinePool
from nebula_xr.scheduling import HostShares, HostView, RequestResult, VMView


def vm_view(vm: VirtualMachine) -> VMView:
    cpu, memory, _disk = vm.reservation()
    current = vm.current
    return VMView(
        vid=vm.oid,
        name=vm.name,
        state=int(vm.state),
        lcm_state=int(vm.lcm_state),
        stime=vm.stime,
        etime=vm.etime,
        deploy_id=vm.deploy_id,
        template=vm.template.copy(),
        hid=current.hid if current is not None else None,
        host_name=current.host_name if current is not None else None,
        cpu_demand=cpu,
        memory_demand=memory,
        placed=current.stime if current is not None else 0,
        uid=vm.uid,
        ran=sum(max(0, h.retime - h.stime) for h in vm.history if h.retime),
    )


def host_view(host: Host, state: int | None = None) -> HostView:
    shares = host.shares
    return HostView(
        hid=host.oid,
        name=host.name,
        state=int(host.state) if state is None else state,
        im_mad=host.im_mad,
        vm_mad=host.vm_mad,
        tm_mad=host.tm_mad,
        managed=host.managed,
        last_mon_time=host.last_mon_time,
        attributes=dict(host.attributes),
        shares=HostShares(
            max_cpu=shares.max_cpu,
            max_mem=shares.max_mem,
            max_disk=shares.max_disk,
            cpu_usage=shares.cpu_usage,
            mem_usage=shares.mem_usage,
            disk_usage=shares.disk_usage,
            running_vms=shares.running_vms,
        ),
    )


class DaemonSchedulerContext:
    """:class:`~nebula_xr.scheduling.SchedulerContext` backed by the dispatch manager."""

    def __init__(
        self,
        dm: DispatchManager,
        vms: VirtualMachinePool,
        hosts: HostPool,
        clock: Any,
        log: Log,
        store: PluginStore | None = None,
    ) -> None:
        self.dm = dm
        self.store = store
        self._vms = vms
        self._hosts = hosts
        self.clock = clock
        self._log = log

    def log(self, message: str) -> None:
        self._log.info("SCHED", message)

    def hosts(self) -> list[HostView]:
        return [host_view(host) for host in sorted(self._hosts, key=lambda h: h.oid)]

    def vms(self, states: tuple[int, ...] | None = None) -> list[VMView]:
        return [
            vm_view(vm)
            for vm in sorted(self._vms, key=lambda v: v.oid)
            if states is None or int(vm.state) in states
        ]

    def deploy(self, vid: int, hid: int) -> RequestResult:
        return self.dm.deploy(vid, hid)

    def migrate(self, vid: int, hid: int, live: bool) -> RequestResult:
        return self.dm.migrate(vid, hid, live)

    def action(self, action: str, vid: int) -> RequestResult:
        return self.dm.action(action, vid)

    def resume_on(self, vid: int, hid: int) -> RequestResult:
        return self.dm.resume_on(vid, hid)

    def reject(self, vid: int, reason: str) -> RequestResult:
        vm = self._vms.get(vid)
        if vm is None:
            return RequestResult(False, "Virtual machine does not exist")
        if vm.state not in (VMState.PENDING, VMState.HOLD):
            return RequestResult(False, "Wrong state to perform action")
        self._log.vm(vid, "SCHED", 0, reason)
        self._log.info("SCHED", f"Rejected virtual machine {vid}: {reason}")
        self.dm.states.failed(vid)
        return RequestResult(True)
