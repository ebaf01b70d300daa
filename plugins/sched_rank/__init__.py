"""sched_rank: the match-making scheduler of OpenNebula 1.2 (mm_sched), bugs fixed.

Every cycle it places each PENDING VM, in id order, on the best host that is usable
(not DISABLED nor in ERROR), satisfies the VM's REQUIREMENTS, has the monitored free
CPU and memory, and whose shares still have room, counting what this cycle already
placed. "Best" is the highest RANK (1.2 sorted candidates by memory address, so RANK had
no effect); ties go to the lowest host id. Configured in oned.conf with
``SCHEDULER = [ plugin = "sched_rank", interval = 30 ]``.
"""

from __future__ import annotations

from dataclasses import dataclass

from twisted.internet import task

from nebula_xr import hookimpl
from nebula_xr.expressions import ExpressionError, compile_requirements, rank
from nebula_xr.model import HostState, VMState, leading_int
from nebula_xr.scheduling import HostView, Scheduler, SchedulerConfig, SchedulerContext, VMView

_UNUSABLE = (HostState.DISABLED, HostState.ERROR)


@dataclass
class _Capacity:
    """A host's room during one cycle: its shares minus what this cycle placed."""

    free_cpu: int
    free_mem: int
    free_disk: int

    @classmethod
    def of(cls, host: HostView) -> _Capacity:
        s = host.shares
        return cls(s.max_cpu - s.cpu_usage, s.max_mem - s.mem_usage, s.max_disk - s.disk_usage)

    def fits(self, cpu: int, mem: int) -> bool:
        return self.free_cpu >= cpu and self.free_mem >= mem and self.free_disk >= 0

    def take(self, cpu: int, mem: int) -> None:
        self.free_cpu -= cpu
        self.free_mem -= mem


def monitored_room(host: HostView, cpu: int, mem: int) -> bool:
    """mm_sched's test against the monitored FREECPU/FREEMEMORY.

    A nearly idle host (FREECPU ≥ 90% of TOTALCPU) counts its free CPU rounded up to
    whole CPUs; 1.2 truncated the 0.9 threshold to 0 and rounded up every host.
    """
    attributes = host.attributes
    free_cpu = leading_int(attributes.get("FREECPU"))
    total_cpu = leading_int(attributes.get("TOTALCPU"))
    if total_cpu > 0 and free_cpu >= 0.9 * total_cpu:
        free_cpu = -(-free_cpu // 100) * 100
    return mem <= leading_int(attributes.get("FREEMEMORY")) and cpu <= free_cpu


class RankScheduler(Scheduler):
    def __init__(self, config: SchedulerConfig, context: SchedulerContext) -> None:
        super().__init__(config, context)
        self._loop = task.LoopingCall(self.cycle)
        self._loop.clock = context.clock

    def start(self) -> None:
        # Like mm_sched, the first cycle runs one period after start-up.
        self._loop.start(self.config.interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def cycle(self) -> None:
        hosts = [host for host in self.context.hosts() if host.state not in _UNUSABLE]
        capacity = {host.hid: _Capacity.of(host) for host in hosts}
        for vm in self.context.vms((VMState.PENDING,)):
            for host in self.candidates(vm, hosts):
                if not capacity[host.hid].fits(vm.cpu_demand, vm.memory_demand):
                    continue
                result = self.context.deploy(vm.vid, host.hid)
                if result.ok:
                    capacity[host.hid].take(vm.cpu_demand, vm.memory_demand)
                else:
                    self.context.log(
                        f"Error deploying virtual machine {vm.vid} to HID: {host.hid}. "
                        f"Reason: {result.message}"
                    )
                break

    def candidates(self, vm: VMView, hosts: list[HostView]) -> list[HostView]:
        """Hosts that match the VM, best RANK first."""
        requirements = vm.template.get_string("REQUIREMENTS") or ""
        try:
            matches = compile_requirements(requirements)
        except ExpressionError as error:
            self.context.log(f"Error evaluating REQUIREMENTS of VM {vm.vid}: {error}")
            return []
        matching = [
            host
            for host in hosts
            if matches(host.attributes)
            and monitored_room(host, vm.cpu_demand, vm.memory_demand)
            and _Capacity.of(host).fits(vm.cpu_demand, vm.memory_demand)
        ]
        rank_expression = vm.template.get_string("RANK") or ""
        return sorted(
            matching, key=lambda host: (-rank(rank_expression, host.attributes), host.hid)
        )


@hookimpl
def nebula_xr_scheduler(config: SchedulerConfig, context: SchedulerContext) -> Scheduler | None:
    if config.plugin == "sched_rank":
        return RankScheduler(config, context)
    return None
