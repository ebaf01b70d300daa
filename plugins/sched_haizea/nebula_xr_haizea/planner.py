"""The lease planner: a slot table over the hosts and Haizea's scheduling rules.

Pure and deterministic: :func:`plan` takes the time, the hosts' capacity and every lease
that is not over, and says when and where each lease runs, which running leases are
suspended (and when) to make room for advance reservations, and which stay queued. The
plan is rebuilt from scratch after every event, so it only depends on the leases' state:

1. Advance reservations hold their hosts from their start to their end.
2. Running leases that can not be preempted hold their hosts until they end.
3. Running preemptible best-effort leases hold their hosts until they end, or until the
   first moment an advance reservation needs the room: they are then suspended so that
   the suspension (memory / ``suspend_rate``) completes by that moment, and queued again
   with the work they have left.
4. The best-effort queue, oldest submission first: a lease starts now if it fits now; if
   not, it gets a reservation at the earliest time it fits while the backfilling policy
   allows more future reservations (``off``: none, ``aggressive``: one, ``conservative``:
   every lease), otherwise it waits; with ``off`` nothing behind it may start.
   A suspended lease resumes on the hosts it was suspended on; with ``migration`` on,
   when those lack the room at some moment, it may resume there on other hosts after
   a cold migration that moves its memory and disk images ((memory + disk) /
   ``migrate_rate``, the nodes leaving one host one after another), as Haizea planned
   migrations.

Admission (:func:`admit`) checks an advance reservation or an immediate lease against
steps 1-3, with preemptible leases ignored when preemption is allowed.

Capacities are CPU in percent (``TOTALCPU``) and memory in KB (``TOTALMEMORY``).
"""

from __future__ import annotations

import bisect
import enum
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from nebula_xr_haizea.request import LeaseKind

INFINITY = math.inf

#: Haizea's backfilling policies: how many future reservations the queue may hold.
BACKFILLING = {"off": 0, "aggressive": 1, "conservative": None}
PREEMPTION = ("ar-preempts-everything", "no-preemption")


class LeaseState(enum.Enum):
    """Haizea's lease states (those this scheduler uses)."""

    PENDING = "pending"
    REJECTED = "rejected"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    ACTIVE = "active"
    SUSPENDING = "suspending"
    SUSPENDED = "suspended"
    DONE = "done"
    FAIL = "fail"


@dataclass(frozen=True)
class Node:
    """A usable host: its capacity and what REQUIREMENTS and RANK see."""

    hid: int
    cpu: int
    memory: int
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Lease:
    """A lease as the planner sees it: the request and how far it has got."""

    lid: int
    kind: LeaseKind
    #: Resources of each of its nodes.
    nodes: int
    cpu: int
    memory: int
    submitted: float
    #: Seconds of work asked for (``INFINITY``: unlimited).
    duration: float
    preemptible: bool = False
    #: Advance reservations: when they start.
    start: float | None = None
    state: LeaseState = LeaseState.PENDING
    #: Hosts of its nodes: fixed once admitted (AR) or started.
    hosts: tuple[int, ...] = ()
    #: When the current run (start or resume) began; None when not running.
    running_since: float | None = None
    #: Seconds of work done by earlier runs (before suspensions).
    work_done: float = 0.0
    #: MB of disk images a migration moves with each node (its DISKs' SIZE).
    disk: int = 0
    #: The lease is over and its VMs are shutting down: it holds its room until then.
    releasing_by: float | None = None
    #: Host filter (REQUIREMENTS) and preference (RANK, higher first).
    matches: Callable[[Node], bool] = field(default=lambda node: True, compare=False)
    rank: Callable[[Node], float] = field(default=lambda node: 0.0, compare=False)

    @property
    def remaining(self) -> float:
        if self.kind is LeaseKind.ADVANCE_RESERVATION:
            return self.duration
        return self.duration - self.work_done

    def end(self, now: float) -> float:
        """When a running lease ends if nothing stops it."""
        if self.releasing_by is not None:
            return self.releasing_by
        if self.kind is LeaseKind.ADVANCE_RESERVATION:
            return (self.start or 0.0) + self.duration
        since = self.running_since if self.running_since is not None else now
        return since + self.remaining


@dataclass(frozen=True)
class Policy:
    backfilling: str = "off"
    preemption: str = "ar-preempts-everything"
    #: MB per second a host saves (suspend) and restores (resume) memory at.
    suspend_rate: float = 32.0
    resume_rate: float = 32.0
    #: ``local``: suspensions on one host run one after another; ``global``: on all hosts.
    suspendresume_exclusion: str = "local"
    #: Whether a suspended lease may resume on other hosts (Haizea's ``migration = yes``).
    migration: bool = False
    #: MB per second a cold migration moves a node's memory and disk images at.
    migrate_rate: float = 32.0

    def suspend_time(self, lease: Lease) -> float:
        return _serialised(lease, self.suspend_rate, self.suspendresume_exclusion)

    def resume_time(self, lease: Lease) -> float:
        return _serialised(lease, self.resume_rate, self.suspendresume_exclusion)

    def migrate_time(self, lease: Lease) -> float:
        """Moving every node of a suspended lease: hosts send in parallel, the nodes
        leaving one host one after another."""
        per_node = (lease.memory / 1024 + lease.disk) / self.migrate_rate
        return per_node * max((lease.hosts.count(hid) for hid in set(lease.hosts)), default=1)


def _serialised(lease: Lease, rate: float, exclusion: str) -> float:
    per_node = lease.memory / 1024 / rate
    if exclusion == "global":
        return per_node * lease.nodes
    per_host = max((lease.hosts.count(hid) for hid in set(lease.hosts)), default=1)
    return per_node * per_host


@dataclass(frozen=True)
class Reservation:
    """Where and when a lease runs in the plan."""

    lid: int
    hosts: tuple[int, ...]
    start: float
    end: float
    #: A running lease to suspend at this time (it must be suspended by ``end``).
    suspend_at: float | None = None
    #: The lease was suspended: its start is a resume.
    resume: bool = False
    #: The resume is on other hosts, after a cold migration (included in the length).
    migrated: bool = False


@dataclass
class Plan:
    reservations: dict[int, Reservation] = field(default_factory=dict)
    #: Best-effort leases with no reservation, in queue order.
    queued: list[int] = field(default_factory=list)
    #: Scheduled advance reservations that lost their hosts and fit nowhere else.
    rejected: list[int] = field(default_factory=list)


class _HostSlots:
    """One host's commitments as a step function of use over time."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.slots: list[tuple[float, float, int, int]] = []
        self._steps: tuple[list[float], list[int], list[int]] | None = None

    def add(self, start: float, end: float, cpu: int, memory: int) -> None:
        self.slots.append((start, end, cpu, memory))
        self._steps = None

    def steps(self) -> tuple[list[float], list[int], list[int]]:
        """Times at which use changes, and the CPU and memory used from each on."""
        if self._steps is None:
            changes: dict[float, list[int]] = {}
            for start, end, cpu, memory in self.slots:
                for moment, sign in ((start, 1), (end, -1)):
                    delta = changes.setdefault(moment, [0, 0])
                    delta[0] += sign * cpu
                    delta[1] += sign * memory
            times, cpus, memories = [-INFINITY], [0], [0]
            for moment in sorted(changes):
                times.append(moment)
                cpus.append(cpus[-1] + changes[moment][0])
                memories.append(memories[-1] + changes[moment][1])
            self._steps = (times, cpus, memories)
        return self._steps

    def peak(self, start: float, end: float) -> tuple[int, int]:
        """The most CPU and memory used at any moment of ``[start, end)``."""
        times, cpus, memories = self.steps()
        index = bisect.bisect_right(times, start) - 1
        cpu = memory = 0
        while index < len(times) and times[index] < end:
            cpu, memory = max(cpu, cpus[index]), max(memory, memories[index])
            index += 1
        return cpu, memory

    def shortage(self, start: float, end: float, cpu: int, memory: int) -> float | None:
        """The first moment of ``[start, end)`` the host lacks ``cpu`` or ``memory``."""
        times, cpus, memories = self.steps()
        index = bisect.bisect_right(times, start) - 1
        while index < len(times) and times[index] < end:
            if cpus[index] + cpu > self.node.cpu or memories[index] + memory > self.node.memory:
                return max(start, times[index])
            index += 1
        return None

    def earliest(self, not_before: float, length: float, cpu: int, memory: int) -> float:
        """The first moment from ``not_before`` the host has the room for ``length``."""
        times, cpus, memories = self.steps()
        spare_cpu, spare_memory = self.node.cpu - cpu, self.node.memory - memory
        start = not_before
        # Jump past every stretch that lacks the room and begins before the run would end.
        for index in range(bisect.bisect_right(times, not_before) - 1, len(times)):
            segment_end = times[index + 1] if index + 1 < len(times) else INFINITY
            if segment_end <= start:
                continue
            if times[index] >= start + length:
                break
            if cpus[index] > spare_cpu or memories[index] > spare_memory:
                start = segment_end
        return start


class SlotTable:
    """What every host has committed over time."""

    def __init__(self, nodes: Iterable[Node]) -> None:
        self.nodes = {node.hid: node for node in nodes}
        self._hosts = {node.hid: _HostSlots(node) for node in self.nodes.values()}
        #: Every finite end of a commitment, sorted.
        self._ends: list[float] = []

    def add(self, hosts: Sequence[int], start: float, end: float, cpu: int, memory: int) -> None:
        if end <= start:
            return
        for hid in hosts:
            if hid in self._hosts:
                self._hosts[hid].add(start, end, cpu, memory)
        index = bisect.bisect_left(self._ends, end)
        if end < INFINITY and (index == len(self._ends) or self._ends[index] != end):
            self._ends.insert(index, end)

    def free(self, hid: int, start: float, end: float) -> tuple[int, int]:
        """The least free CPU and memory of a host over ``[start, end)``."""
        node = self.nodes[hid]
        cpu, memory = self._hosts[hid].peak(start, end)
        return node.cpu - cpu, node.memory - memory

    def first_shortage(
        self, hosts: Sequence[int], start: float, end: float, cpu: int, memory: int
    ) -> float | None:
        """The first moment in ``[start, end)`` the hosts can not give the lease its room."""
        shortages = []
        for hid in set(hosts):
            if hid not in self._hosts:
                return start
            count = hosts.count(hid)
            shortage = self._hosts[hid].shortage(start, end, count * cpu, count * memory)
            if shortage is not None:
                shortages.append(shortage)
        return min(shortages) if shortages else None

    def ends_after(self, moment: float) -> list[float]:
        """Moments after ``moment`` at which some room is given back."""
        return self._ends[bisect.bisect_right(self._ends, moment) :]

    def candidates(self, lease: Lease) -> list[Node]:
        """Hosts matching the lease, best RANK first, lowest id on ties."""
        return sorted(
            (node for node in self.nodes.values() if lease.matches(node)),
            key=lambda node: (-lease.rank(node), node.hid),
        )

    def earliest(
        self, lease: Lease, not_before: float, length: float, candidates: list[Node]
    ) -> float:
        """No node of the lease can start before this (one node per host is a lower bound)."""
        return min(
            (
                self._hosts[node.hid].earliest(not_before, length, lease.cpu, lease.memory)
                for node in candidates
            ),
            default=INFINITY,
        )

    def map(
        self,
        lease: Lease,
        start: float,
        end: float,
        hosts: Sequence[int] | None = None,
        candidates: list[Node] | None = None,
    ) -> tuple[int, ...] | None:
        """Hosts for every node of the lease over ``[start, end)``, or None.

        With ``hosts`` the lease must run there (it was suspended there); otherwise each
        node goes to the first of ``candidates`` (default: :meth:`candidates`) with room.
        """
        if hosts is not None:
            if self.first_shortage(hosts, start, end, lease.cpu, lease.memory) is None:
                return tuple(hosts)
            return None
        chosen: list[int] = []
        room: dict[int, tuple[int, int]] = {}
        for node in candidates if candidates is not None else self.candidates(lease):
            if node.hid not in room:
                room[node.hid] = self.free(node.hid, start, end)
            cpu, memory = room[node.hid]
            while cpu >= lease.cpu and memory >= lease.memory and len(chosen) < lease.nodes:
                cpu, memory = cpu - lease.cpu, memory - lease.memory
                chosen.append(node.hid)
            if len(chosen) == lease.nodes:
                return tuple(chosen)
        return None


def _is_running(lease: Lease) -> bool:
    return lease.state in (LeaseState.ACTIVE, LeaseState.SUSPENDING)


def _preemptible(lease: Lease, policy: Policy) -> bool:
    return (
        policy.preemption == "ar-preempts-everything"
        and lease.preemptible
        and lease.kind is LeaseKind.BEST_EFFORT
    )


def _commitments(
    now: float,
    nodes: Sequence[Node],
    leases: Sequence[Lease],
    policy: Policy,
    plan: Plan,
    *,
    include_preemptible: bool,
) -> tuple[SlotTable, list[tuple[Lease, float]]]:
    """Steps 1-3: the slot table of ARs and running leases; the leases to queue again."""
    table = SlotTable(nodes)
    by_age = sorted(leases, key=lambda lease: (lease.submitted, lease.lid))
    for lease in by_age:
        if lease.kind is not LeaseKind.ADVANCE_RESERVATION or lease.state not in (
            LeaseState.SCHEDULED,
            LeaseState.ACTIVE,
        ):
            continue
        start, end = max(lease.start or now, now), lease.end(now)
        hosts: tuple[int, ...] | None = lease.hosts
        if lease.state is LeaseState.SCHEDULED and any(h not in table.nodes for h in lease.hosts):
            hosts = table.map(lease, start, end)
            if hosts is None:
                plan.rejected.append(lease.lid)
                continue
        table.add(hosts, start, end, lease.cpu, lease.memory)
        plan.reservations[lease.lid] = Reservation(lease.lid, hosts, start, end)
    for lease in by_age:
        if lease.kind is LeaseKind.ADVANCE_RESERVATION or not _is_running(lease):
            continue
        if _preemptible(lease, policy):
            continue
        end = lease.end(now)
        table.add(lease.hosts, now, end, lease.cpu, lease.memory)
        plan.reservations[lease.lid] = Reservation(lease.lid, lease.hosts, now, end)
    requeued: list[tuple[Lease, float]] = []
    if not include_preemptible:
        return table, requeued
    for lease in by_age:
        if lease.kind is LeaseKind.ADVANCE_RESERVATION or not _is_running(lease):
            continue
        if not _preemptible(lease, policy):
            continue
        end = lease.end(now)
        if lease.state is LeaseState.SUSPENDING:
            # Already being saved: it holds its room until the save is over.
            done = now + policy.suspend_time(lease)
            table.add(lease.hosts, now, done, lease.cpu, lease.memory)
            plan.reservations[lease.lid] = Reservation(lease.lid, lease.hosts, now, done, now)
            requeued.append((lease, done))
            continue
        shortage = table.first_shortage(lease.hosts, now, end, lease.cpu, lease.memory)
        if shortage is None:
            table.add(lease.hosts, now, end, lease.cpu, lease.memory)
            plan.reservations[lease.lid] = Reservation(lease.lid, lease.hosts, now, end)
            continue
        suspend_at = max(now, shortage - policy.suspend_time(lease))
        table.add(lease.hosts, now, shortage, lease.cpu, lease.memory)
        plan.reservations[lease.lid] = Reservation(
            lease.lid, lease.hosts, now, shortage, suspend_at
        )
        since = lease.running_since if lease.running_since is not None else now
        run_left = replace(
            lease,
            state=LeaseState.SUSPENDED,
            work_done=lease.work_done + max(0.0, suspend_at - since),
            running_since=None,
        )
        requeued.append((run_left, shortage))
    return table, requeued


def plan(now: float, nodes: Sequence[Node], leases: Sequence[Lease], policy: Policy) -> Plan:
    """Where and when every lease runs from ``now`` on (see the module's docstring)."""
    result = Plan()
    table, requeued = _commitments(now, nodes, leases, policy, result, include_preemptible=True)
    eligible = {lease.lid: at for lease, at in requeued}
    waiting = [lease for lease, _at in requeued] + [
        lease
        for lease in leases
        if lease.kind is LeaseKind.BEST_EFFORT
        and lease.state in (LeaseState.PENDING, LeaseState.QUEUED, LeaseState.SCHEDULED)
        or lease.state is LeaseState.SUSPENDED
    ]
    waiting.sort(key=lambda lease: (lease.submitted, lease.lid))
    allowed = BACKFILLING[policy.backfilling]
    in_future = 0
    blocked = False
    for lease in waiting:
        if blocked:
            result.queued.append(lease.lid)
            continue
        resume = lease.state is LeaseState.SUSPENDED
        length = lease.remaining + (policy.resume_time(lease) if resume else 0.0)
        fixed = lease.hosts if resume else None
        not_before = eligible.get(lease.lid, now)
        future_ok = allowed is None or in_future < allowed
        candidates = [table.nodes[h] for h in fixed if h in table.nodes] if fixed else None
        candidates = candidates or table.candidates(lease)
        # Migrating: its own hosts first (nodes that stay move nothing), then the others.
        elsewhere = _migration_candidates(table, lease) if resume and policy.migration else []
        moved_length = length + policy.migrate_time(lease) if elsewhere else length
        # Skip the moments at which not even one of its nodes would fit.
        bound = max(not_before, table.earliest(lease, not_before, length, elsewhere or candidates))
        placed = None
        if not math.isinf(bound):
            for moment in [bound, *table.ends_after(bound)]:
                if moment > now and not future_ok:
                    break
                hosts = table.map(lease, moment, moment + length, fixed, candidates)
                if hosts is not None:
                    placed = (moment, hosts, length)
                    break
                if elsewhere:
                    end = moment + moved_length
                    hosts = table.map(lease, moment, end, None, elsewhere)
                    if hosts is not None:
                        placed = (moment, _stay_where_possible(lease.hosts, hosts), moved_length)
                        break
        if placed is None:
            result.queued.append(lease.lid)
            blocked = policy.backfilling == "off"
            continue
        start, hosts, length = placed
        if start > now:
            in_future += 1
        table.add(hosts, start, start + length, lease.cpu, lease.memory)
        result.reservations[lease.lid] = Reservation(
            lease.lid,
            hosts,
            start,
            start + length,
            resume=resume,
            migrated=resume and hosts != fixed,
        )
    return result


def _migration_candidates(table: SlotTable, lease: Lease) -> list[Node]:
    """Where a suspended lease may resume with migration on: the hosts it was suspended
    on (if still usable and matching), then every other matching host by RANK."""
    matching = table.candidates(lease)
    own = [node for hid in dict.fromkeys(lease.hosts) for node in matching if node.hid == hid]
    return own + [node for node in matching if node.hid not in lease.hosts]


def _stay_where_possible(old: tuple[int, ...], new: tuple[int, ...]) -> tuple[int, ...]:
    """``new``'s hosts given to the nodes so that as many as possible keep their host."""
    left = list(new)
    kept: list[int | None] = []
    for hid in old:
        kept.append(hid if hid in left else None)
        if hid in left:
            left.remove(hid)
    return tuple(hid if hid is not None else left.pop(0) for hid in kept)


def admit(
    now: float, nodes: Sequence[Node], leases: Sequence[Lease], request: Lease, policy: Policy
) -> tuple[int, ...] | None:
    """Hosts for an advance reservation or an immediate lease, or None to reject it.

    Preemptible best-effort leases do not count when preemption is on: the plan
    suspends them. Queued best-effort leases never count: they are planned around it.
    """
    preempting = policy.preemption == "ar-preempts-everything"
    table, _requeued = _commitments(
        now,
        nodes,
        leases,
        policy,
        Plan(),
        include_preemptible=not (preempting and request.kind is LeaseKind.ADVANCE_RESERVATION),
    )
    if request.kind is LeaseKind.ADVANCE_RESERVATION:
        start = request.start if request.start is not None else now
        if start < now:
            return None
        return table.map(request, start, start + request.duration)
    return table.map(request, now, now + request.remaining)
