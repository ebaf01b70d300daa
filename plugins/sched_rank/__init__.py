"""sched_rank: the match-making scheduler of OpenNebula 1.2 (mm_sched), bugs fixed, event-driven.

A pass places each PENDING VM, in id order, on the best host that is usable (not DISABLED
nor in ERROR), satisfies the VM's REQUIREMENTS, has the monitored free CPU and memory, and
whose shares still have room, counting what this pass already placed. "Best" is the
highest RANK (1.2 sorted candidates by memory address, so RANK had no effect); ties go to
the lowest host id. Configured in oned.conf with
``SCHEDULER = [ plugin = "sched_rank", interval = 30 ]``.

Unlike mm_sched, VMs do not wait for the periodic cycle: a pass runs as soon as a VM
becomes PENDING or frees capacity, and half a second after a host is monitored or changes
state (gathering the events of many hosts); events that arrive while a pass is scheduled
or running are served by it or by one more pass. The cycle every
``interval`` seconds stays as a safety net: it re-reads the pending VMs from the daemon.
A pass never holds the reactor for long: it runs in slices of a few milliseconds
(:func:`twisted.internet.task.Cooperator`), so API calls are served between them. A host's
monitored attributes are parsed once per monitoring, and REQUIREMENTS and RANK evaluated
once per host and monitoring, not per VM and host; VMs asking the same (REQUIREMENTS, RANK,
CPU, MEMORY) share one candidate list per pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import task
from twisted.python import log
from twisted.python.failure import Failure

from nebula_xr import hookimpl
from nebula_xr.expressions import ExpressionError, compile_rank, compile_requirements
from nebula_xr.model import HostState, LCMState, VMState, leading_int
from nebula_xr.scheduling import HostView, Scheduler, SchedulerConfig, SchedulerContext, VMView

_UNUSABLE = (HostState.DISABLED, HostState.ERROR)
#: An ACTIVE VM leaving these LCM states (still ACTIVE) gave back its previous host.
_MIGRATING = (LCMState.MIGRATE, LCMState.SAVE_MIGRATE)
#: Wall-clock seconds a slice of a pass may run before the reactor gets a turn.
SLICE_SECONDS = 0.003
#: Seconds host events wait for others before a pass: with 1,250 hosts monitored every
#: minute and a VM that fits nowhere, a pass per monitoring would keep the daemon busy.
HOST_EVENTS_DELAY = 0.5
#: The pause between two slices of a pass, as a fraction of the slice's duration.
PAUSE_RATIO = 1.0
#: Hosts whose candidacy is worked out between two checks of the slice's time.
HOSTS_PER_STEP = 64
#: Distinct expressions whose results a host keeps (beyond: forgotten, recomputed).
EXPRESSIONS_PER_HOST = 256


@dataclass
class _Capacity:
    """A host's room during one pass: its shares minus what this pass placed."""

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


@dataclass
class _Monitored:
    """What one monitoring of a host says, parsed once: mm_sched's free CPU and memory,
    and the REQUIREMENTS and RANK results computed so far for these attributes."""

    last_mon_time: int
    attributes: dict[str, str]
    free_cpu: int
    free_mem: int
    matches: dict[str, bool] = field(default_factory=dict)
    ranks: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, host: HostView) -> _Monitored:
        attributes = host.attributes
        free_cpu = leading_int(attributes.get("FREECPU"))
        total_cpu = leading_int(attributes.get("TOTALCPU"))
        # A nearly idle host (FREECPU ≥ 90% of TOTALCPU) counts its free CPU rounded up to
        # whole CPUs; 1.2 truncated the 0.9 threshold to 0 and rounded up every host.
        if total_cpu > 0 and free_cpu >= 0.9 * total_cpu:
            free_cpu = -(-free_cpu // 100) * 100
        free_mem = leading_int(attributes.get("FREEMEMORY"))
        return cls(host.last_mon_time, attributes, free_cpu, free_mem)

    def room(self, cpu: int, mem: int) -> bool:
        """mm_sched's test against the monitored FREECPU/FREEMEMORY."""
        return mem <= self.free_mem and cpu <= self.free_cpu

    def match(self, text: str, requirements: Callable[[dict[str, str]], bool]) -> bool:
        matched = self.matches.get(text)
        if matched is None:
            if len(self.matches) >= EXPRESSIONS_PER_HOST:
                self.matches.clear()
            matched = self.matches[text] = bool(requirements(self.attributes))
        return matched

    def rank(self, text: str) -> int:
        value = self.ranks.get(text)
        if value is None:
            if len(self.ranks) >= EXPRESSIONS_PER_HOST:
                self.ranks.clear()
            try:
                value = compile_rank(text)(self.attributes)
            except ExpressionError:
                value = 0
            self.ranks[text] = value
        return value


def monitored_room(host: HostView, cpu: int, mem: int) -> bool:
    """mm_sched's test against the monitored FREECPU/FREEMEMORY of ``host``."""
    return _Monitored.of(host).room(cpu, mem)


#: What VMs sharing one candidate list have in common.
_Shape = tuple[str, str, int, int]


class RankScheduler(Scheduler):
    def __init__(self, config: SchedulerConfig, context: SchedulerContext) -> None:
        super().__init__(config, context)
        self._loop = task.LoopingCall(self.cycle)
        self._loop.clock = context.clock
        self._cooperator = task.Cooperator(
            terminationPredicateFactory=self._slice_over, scheduler=self._after_pause
        )
        #: Wall-clock seconds one slice of a pass may take.
        self.slice_seconds = SLICE_SECONDS
        #: The pause after a slice, as a fraction of the slice's duration: 1 leaves the
        #: reactor at least half of its time for the API and for the VMs being deployed.
        self.pause_ratio = PAUSE_RATIO
        self._slice_began = 0.0
        self._pass_began = 0.0
        self._slices = 0
        self._placed = 0
        #: The longest slice of the last pass (wall-clock seconds): what it made the API wait.
        self.longest_slice = 0.0
        #: PENDING VMs as their last event showed them, by id.
        self._pending: dict[int, VMView] = {}
        #: Parsed monitoring of each host, by id.
        self._monitored: dict[int, _Monitored] = {}
        #: VMs whose REQUIREMENTS do not parse, already reported.
        self._reported: set[int] = set()
        self._scheduled: Any = None
        self._running = False
        #: Another pass is wanted once the running one ends.
        self._again = False
        #: Passes run so far (for tests and benchmarks).
        self.passes = 0

    def start(self) -> None:
        # Like mm_sched, the periodic cycle runs one period after start-up; VMs left
        # PENDING by a previous run are placed at once.
        self._loop.start(self.config.interval, now=False)
        self.context.clock.callLater(0, self.cycle)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        if self._scheduled is not None and self._scheduled.active():
            self._scheduled.cancel()
        self._cooperator.stop()

    # -- events ---------------------------------------------------------------------------

    def cycle(self) -> None:
        """The safety net: re-read the PENDING VMs and every host, then place."""
        self._pending = {vm.vid: vm for vm in self.context.vms((VMState.PENDING,))}
        self._monitored.clear()
        self.request_pass()

    def vm_changed(self, vm: VMView, previous_state: int, previous_lcm_state: int) -> None:
        if vm.state == VMState.PENDING:
            self._pending[vm.vid] = vm
            self.request_pass()
            return
        self._pending.pop(vm.vid, None)
        self._reported.discard(vm.vid)
        freed = previous_state == VMState.ACTIVE and (
            vm.state != VMState.ACTIVE or previous_lcm_state in _MIGRATING
        )
        if freed and self._pending:
            self.request_pass()

    def host_changed(self, host: HostView, previous_state: int) -> None:
        if host.state == -1:  # deleted
            self._monitored.pop(host.hid, None)
        self._host_news(host)

    def host_monitored(self, host: HostView) -> None:
        self._monitored.pop(host.hid, None)
        self._host_news(host)

    def _host_news(self, host: HostView) -> None:
        if self._pending and host.state != HostState.MONITORING:
            self.request_pass(HOST_EVENTS_DELAY)

    def request_pass(self, delay: float = 0.0) -> None:
        """Run a pass ``delay`` seconds from now (or sooner if one is due sooner), or once
        more after the one running."""
        if self._running:
            self._again = True
            return
        clock = self.context.clock
        if self._scheduled is not None and self._scheduled.active():
            if self._scheduled.getTime() <= clock.seconds() + delay:
                return
            self._scheduled.cancel()
        self._scheduled = clock.callLater(delay, self._start_pass)

    # -- a pass -----------------------------------------------------------------------------

    def _start_pass(self) -> None:
        self._scheduled = None
        if self._running or not self._pending:
            return
        self._running = True
        self.passes += 1
        self._pass_began = time.perf_counter()
        self._slices = 0
        self._placed = 0
        self.longest_slice = 0.0
        done = self._cooperator.cooperate(self._place()).whenDone()
        done.addErrback(self._pass_failed)
        done.addBoth(self._pass_done)

    def _pass_failed(self, failure: Failure) -> None:
        if not failure.check(task.SchedulerStopped):
            self.context.log(f"Scheduling pass failed: {failure.getErrorMessage()}")
            log.err(failure, "sched_rank pass")

    def _pass_done(self, _result: object) -> None:
        self._running = False
        self._slice_ended()
        self._slice_began = 0.0  # the next pass starts without a pause
        if self._slices > 1:  # a big pass: say what it cost the reactor
            self.context.log(
                f"Placed {self._placed} VMs in {time.perf_counter() - self._pass_began:.2f} s, "
                f"{self._slices} slices, the longest {self.longest_slice * 1000:.1f} ms"
            )
        if self._again:
            self._again = False
            self.request_pass()

    def _slice_over(self) -> Callable[[], bool]:
        self._slice_began = time.perf_counter()
        deadline = self._slice_began + self.slice_seconds
        return lambda: time.perf_counter() >= deadline

    def _after_pause(self, work: Callable[[], None]) -> object:
        """Run the next slice after a pause as long as the last one (times the ratio): a
        deploy also costs the reactor its pipeline's steps, which follow on later turns."""
        spent = self._slice_ended()
        return self.context.clock.callLater(spent * self.pause_ratio, work)

    def _slice_ended(self) -> float:
        """Count the slice that just ended; its duration (0 when none ran since a pass)."""
        if not self._slice_began:
            return 0.0
        spent = time.perf_counter() - self._slice_began
        self._slices += 1
        self.longest_slice = max(self.longest_slice, spent)
        return spent

    def _place(self) -> Iterator[None]:
        """Place the pending VMs; yields wherever the reactor may take a turn."""
        hosts = [host for host in self.context.hosts() if host.state not in _UNUSABLE]
        yield None
        monitored: dict[int, _Monitored] = {}
        capacity: dict[int, _Capacity] = {}
        for start in range(0, len(hosts), HOSTS_PER_STEP):
            for host in hosts[start : start + HOSTS_PER_STEP]:
                monitored[host.hid] = self._parsed(host)
                capacity[host.hid] = _Capacity.of(host)
            yield None
        candidates: dict[_Shape, list[int]] = {}
        #: Shapes no host has room for any more in this pass (capacity only shrinks).
        full: set[_Shape] = set()
        for vid in sorted(self._pending):
            vm = self._pending.get(vid)
            if vm is None:
                continue  # left PENDING during the pass
            requirements = vm.template.get_string("REQUIREMENTS") or ""
            rank_text = vm.template.get_string("RANK") or ""
            shape = (requirements, rank_text, vm.cpu_demand, vm.memory_demand)
            if shape in full:
                continue
            if shape not in candidates:
                try:
                    matches = compile_requirements(requirements)
                except ExpressionError as error:
                    if vid not in self._reported:
                        self._reported.add(vid)
                        self.context.log(f"Error evaluating REQUIREMENTS of VM {vid}: {error}")
                    continue
                found: list[tuple[int, int]] = []
                for start in range(0, len(hosts), HOSTS_PER_STEP):
                    for host in hosts[start : start + HOSTS_PER_STEP]:
                        parsed = monitored[host.hid]
                        if (
                            parsed.match(requirements, matches)
                            and parsed.room(vm.cpu_demand, vm.memory_demand)
                            and capacity[host.hid].fits(vm.cpu_demand, vm.memory_demand)
                        ):
                            found.append((-parsed.rank(rank_text), host.hid))
                    yield None
                candidates[shape] = [hid for _rank, hid in sorted(found)]
            placed = self._place_one(vm, candidates[shape], capacity)
            if not placed:
                full.add(shape)
            yield None

    def _place_one(self, vm: VMView, candidates: list[int], capacity: dict[int, _Capacity]) -> bool:
        """Deploy ``vm`` on the first candidate with room; False when none has room."""
        if vm.vid not in self._pending:
            return True
        for hid in candidates:
            room = capacity[hid]
            if not room.fits(vm.cpu_demand, vm.memory_demand):
                continue
            result = self.context.deploy(vm.vid, hid)
            if result.ok:
                room.take(vm.cpu_demand, vm.memory_demand)
                self._pending.pop(vm.vid, None)
                self._placed += 1
            else:
                self.context.log(
                    f"Error deploying virtual machine {vm.vid} to HID: {hid}. "
                    f"Reason: {result.message}"
                )
            return True
        return False

    def _parsed(self, host: HostView) -> _Monitored:
        parsed = self._monitored.get(host.hid)
        if parsed is None or parsed.last_mon_time != host.last_mon_time:
            parsed = self._monitored[host.hid] = _Monitored.of(host)
        return parsed


@hookimpl
def nebula_xr_scheduler(config: SchedulerConfig, context: SchedulerContext) -> Scheduler | None:
    if config.plugin == "sched_rank":
        return RankScheduler(config, context)
    return None
