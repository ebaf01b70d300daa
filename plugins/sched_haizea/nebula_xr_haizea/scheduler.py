"""The Haizea scheduler inside the daemon: leases from VM events, a plan, timers to enact it.

Nothing polls. A new PENDING VM becomes a lease (after ``group_window`` seconds when it
names a GROUP, so the group's other VMs can join); advance reservations and immediate
leases are admitted or rejected at once. Every event that changes what leases hold
(a lease admitted, started, suspended or over, a VM gone, a host usable or not, or a
host's capacity) rebuilds the plan (:func:`nebula_xr_haizea.planner.plan`) and
re-arms one ``context.clock`` timer per planned start, suspension and end. Actions on
the VMs of one lease are issued in the same reactor turn, so the daemon runs them in
parallel across hosts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from nebula_xr.expressions import ExpressionError, compile_requirements, rank
from nebula_xr.model import HostState, LCMState, VMState, leading_int
from nebula_xr.plugin_manager import PluginError
from nebula_xr.scheduling import HostView, Scheduler, SchedulerConfig, SchedulerContext, VMView
from nebula_xr_haizea.planner import (
    BACKFILLING,
    PREEMPTION,
    Lease,
    LeaseState,
    Node,
    Plan,
    Policy,
    admit,
    plan,
)
from nebula_xr_haizea.request import LeaseKind, LeaseRequest, LeaseRequestError, parse_lease_request
from nebula_xr_haizea.store import (
    forget_finished,
    load_finished,
    load_rates,
    save_finished,
    save_rate,
)

_UNUSABLE = (HostState.ERROR, HostState.DISABLED)
_OVER = (VMState.DONE, VMState.FAILED)

#: How many finished leases the API still shows.
FINISHED_KEPT = 1000


@dataclass
class _Forming:
    """VMs of one GROUP gathered before their lease is requested."""

    request: LeaseRequest
    vms: list[VMView] = field(default_factory=list)
    timer: Any = None


def node_of(host: HostView) -> Node | None:
    """The host as the planner sees it, or None if it can not take leases now."""
    if host.state in _UNUSABLE or "TOTALCPU" not in host.attributes:
        return None
    return Node(
        host.hid,
        leading_int(host.attributes.get("TOTALCPU")),
        leading_int(host.attributes.get("TOTALMEMORY")),
        dict(host.attributes),
    )


def _policy(options: dict[str, str]) -> tuple[Policy, float, float]:
    def number(key: str, default: float) -> float:
        try:
            value = float(options.get(key, default))
        except ValueError:
            raise PluginError(f"haizea: {key.lower()} must be a number") from None
        if value < 0 or (value == 0 and key.endswith("_RATE")):
            raise PluginError(f"haizea: {key.lower()} must be positive")
        return value

    def choice(key: str, allowed: tuple[str, ...], default: str) -> str:
        value = options.get(key, default).strip().lower()
        if value not in allowed:
            raise PluginError(f"haizea: {key.lower()} must be one of {', '.join(allowed)}")
        return value

    policy = Policy(
        backfilling=choice("BACKFILLING", tuple(BACKFILLING), "off"),
        preemption=choice("PREEMPTION", PREEMPTION, "ar-preempts-everything"),
        suspend_rate=number("SUSPEND_RATE", 32.0),
        resume_rate=number("RESUME_RATE", 32.0),
        suspendresume_exclusion=choice("SUSPENDRESUME_EXCLUSION", ("local", "global"), "local"),
        migration=choice("MIGRATION", ("no", "yes"), "no") == "yes",
        migrate_rate=number("MIGRATE_RATE", 32.0),
    )
    return policy, number("SHUTDOWN_TIME", 10.0), number("GROUP_WINDOW", 1.0)


def _disk_mb(vm: VMView) -> int:
    """MB of disk a migration moves with the VM: the SIZE its DISKs declare."""
    return sum(max(0, leading_int(disk.get("SIZE"))) for disk in vm.template.vectors("DISK"))


class HaizeaScheduler(Scheduler):
    def __init__(self, config: SchedulerConfig, context: SchedulerContext) -> None:
        super().__init__(config, context)
        self.policy, self.shutdown_time, self.group_window = _policy(config.options)
        self.leases: dict[int, Lease] = {}
        #: VM ids of each lease's nodes, in the order of ``Lease.hosts``.
        self.vids: dict[int, list[int]] = {}
        #: Every VM a lease had (``vids`` loses those that are over).
        self.vids_ever: dict[int, tuple[int, ...]] = {}
        self.lease_of: dict[int, int] = {}
        self.nodes: dict[int, Node] = {}
        self.last_plan = Plan()
        self._forming: dict[str, _Forming] = {}
        self._timers: list[Any] = []
        self._replan_call: Any = None
        self._grace: dict[int, Any] = {}
        #: Leases being shut down at their end: their room is held until then.
        self._ending: dict[int, float] = {}
        self._suspend_issued: dict[int, float] = {}
        self._suspended_vms: dict[int, set[int]] = {}
        self._resume_issued: dict[int, float] = {}
        self._resumed_vms: dict[int, set[int]] = {}
        #: VMs being suspended or resumed, with the action and the VMs after them.
        self._lane_of: dict[int, tuple[str, list[int]]] = {}
        #: VMs whose resume is on another host (``migration = yes``): that host.
        self._resume_targets: dict[int, int] = {}
        #: Leases resuming after a migration, as they were on the hosts they left.
        self._migrating: dict[int, Lease] = {}
        #: Owner (uid of its first VM) of every lease, for the API's ownership rules.
        self.owners: dict[int, int] = {}
        #: Leases that are over, latest last: what they were and how they ended.
        self.finished: dict[int, tuple[Lease, list[int], LeaseState]] = {}

    # -- life -------------------------------------------------------------------------

    def start(self) -> None:
        self._load_stored()
        for host in self.context.hosts():
            node = node_of(host)
            if node is not None:
                self.nodes[node.hid] = node
        self.recover(self.context.vms())
        self.replan()

    def _load_stored(self) -> None:
        """The corrected rates and the finished leases an earlier run kept in one.db."""
        if self.context.store is None:
            return
        rates = {f"{action}_rate": rate for action, rate in load_rates(self.context.store).items()}
        self.policy = replace(self.policy, **rates)
        for lease, vids, uid in load_finished(self.context.store):
            self.finished[lease.lid] = (lease, vids, lease.state)
            self.owners[lease.lid] = uid

    def recover(self, vms: list[VMView]) -> None:
        """Rebuild the leases of a daemon that restarted from what its VMs say.

        PENDING VMs are requests again; running and suspended VMs are leases on their
        hosts, grouped by GROUP, with the work their history records show done.
        """
        placed: dict[tuple[str | int, int], tuple[LeaseRequest, list[VMView]]] = {}
        for vm in vms:
            if vm.state == VMState.PENDING:
                self.vm_submitted(vm)
            elif vm.state in (VMState.ACTIVE, VMState.SUSPENDED) and vm.hid is not None:
                try:
                    request = parse_lease_request(vm.template, float(vm.stime))
                except LeaseRequestError as error:
                    self.context.log(f"haizea: VM {vm.vid} runs outside any lease: {error}")
                    continue
                key = (request.group or vm.vid, vm.state)
                placed.setdefault(key, (request, []))[1].append(vm)
        for (_key, state), (request, group) in placed.items():
            lease = self._lease(group, request)
            hosts = tuple(vm.hid for vm in group if vm.hid is not None)
            lease = replace(lease, hosts=hosts, work_done=float(min(vm.ran for vm in group)))
            if state == VMState.SUSPENDED:
                self._add(lease, group, LeaseState.SUSPENDED)
            else:
                since = float(min(vm.placed for vm in group))
                self._add(replace(lease, running_since=since), group, LeaseState.ACTIVE)

    def stop(self) -> None:
        self._cancel_timers()
        pending = [*self._grace.values(), *(f.timer for f in self._forming.values())]
        for timer in [*pending, self._replan_call]:
            if timer is not None and timer.active():
                timer.cancel()

    @property
    def now(self) -> float:
        return float(self.context.clock.seconds())

    # -- events -----------------------------------------------------------------------

    def vm_changed(self, vm: VMView, previous_state: int, previous_lcm_state: int) -> None:
        if previous_state == VMState.INIT and vm.state == VMState.PENDING:
            self.vm_submitted(vm)
            self.replan_soon()
        elif vm.state in _OVER:
            self.vm_over(vm.vid, failed=vm.state == VMState.FAILED)
        elif vm.state == VMState.SUSPENDED and previous_state == VMState.ACTIVE:
            self.vm_suspended(vm.vid)
        elif (
            vm.state == VMState.ACTIVE
            and vm.lcm_state == LCMState.RUNNING
            and previous_lcm_state != LCMState.RUNNING
        ):
            lid = self.lease_of.get(vm.vid)
            if lid in self._resume_issued:
                self.vm_resumed(lid, vm.vid)
            elif lid in self._ending and lid not in self._grace:
                # Its shutdown failed after the grace time: nothing else will end it.
                self.context.action("cancel", vm.vid)

    def host_changed(self, host: HostView, previous_state: int) -> None:
        self._host_seen(host)

    def host_monitored(self, host: HostView) -> None:
        self._host_seen(host)

    def _host_seen(self, host: HostView) -> None:
        node = node_of(host) if host.state != -1 else None
        known = self.nodes.get(host.hid)
        if node is None:
            if self.nodes.pop(host.hid, None) is not None:
                self.replan_soon()
            return
        self.nodes[host.hid] = node
        # Fresh monitored attributes alone (FREECPU...) change no plan: only room does.
        if known is None or (known.cpu, known.memory) != (node.cpu, node.memory):
            self.replan_soon()

    # -- leases from VMs --------------------------------------------------------------

    def vm_submitted(self, vm: VMView) -> None:
        try:
            request = parse_lease_request(vm.template, float(vm.stime))
            for key in ("REQUIREMENTS", "RANK"):
                compile_requirements(vm.template.get_string(key) or "")
        except (LeaseRequestError, ExpressionError) as error:
            self.context.reject(vm.vid, f"Lease request refused: {error}")
            return
        if request.group is None:
            self.request_lease([vm], request)
            return
        forming = self._forming.get(request.group)
        if forming is None:
            forming = self._forming[request.group] = _Forming(request)
            forming.timer = self.context.clock.callLater(
                self.group_window, self._group_formed, request.group
            )
        forming.vms.append(vm)

    def _group_formed(self, group: str) -> None:
        forming = self._forming.pop(group)
        if forming.vms:
            self.request_lease(forming.vms, forming.request)
            self.replan_soon()

    def _lease(self, vms: list[VMView], request: LeaseRequest) -> Lease:
        first = vms[0]
        rank_expression = first.template.get_string("RANK") or ""
        try:
            matches = compile_requirements(first.template.get_string("REQUIREMENTS") or "")
        except ExpressionError:
            matches = compile_requirements("")
        return Lease(
            lid=first.vid,
            kind=request.kind,
            nodes=len(vms),
            cpu=max(vm.cpu_demand for vm in vms),
            memory=max(vm.memory_demand for vm in vms),
            disk=max(_disk_mb(vm) for vm in vms),
            submitted=float(first.stime),
            duration=request.duration,
            preemptible=request.preemptible,
            start=request.start,
            matches=lambda node: matches(node.attributes),
            rank=lambda node: rank(rank_expression, node.attributes),
        )

    def request_lease(self, vms: list[VMView], request: LeaseRequest) -> None:
        lease = self._lease(vms, request)
        vids = [vm.vid for vm in vms]
        if lease.kind is LeaseKind.BEST_EFFORT:
            self._add(lease, vms, LeaseState.QUEUED)
            return
        if self._replan_call is not None and self._replan_call.active():
            self.replan()  # earlier requests of this turn are placed first
        now = self.now
        if lease.kind is LeaseKind.ADVANCE_RESERVATION and (lease.start or 0) < now:
            self._refuse(lease, vms, f"advance reservation {lease.lid} starts in the past")
            return
        hosts = admit(
            now, list(self.nodes.values()), list(self.leases.values()), lease, self.policy
        )
        if hosts is None:
            what = "advance reservation" if lease.start is not None else "immediate lease"
            self._refuse(
                lease, vms, f"{what} {lease.lid} rejected: no room for {len(vids)} node(s)"
            )
            return
        if lease.kind is LeaseKind.ADVANCE_RESERVATION:
            self._add(replace(lease, hosts=hosts), vms, LeaseState.SCHEDULED)
        else:
            self._add(lease, vms, LeaseState.PENDING)
            self._start(lease.lid, hosts)

    def _add(self, lease: Lease, vms: list[VMView], state: LeaseState) -> None:
        vids = [vm.vid for vm in vms]
        self.owners[lease.lid] = vms[0].uid
        self.leases[lease.lid] = replace(lease, state=state)
        self.vids[lease.lid] = vids
        self.vids_ever[lease.lid] = tuple(vids)
        for vid in vids:
            self.lease_of[vid] = lease.lid
        self.context.log(
            f"haizea: lease {lease.lid} ({lease.kind.value}, VMs {vids}) {state.value}"
        )

    def _reject(self, vids: list[int], reason: str) -> None:
        for vid in vids:
            self.context.reject(vid, reason)

    def _refuse(self, lease: Lease, vms: list[VMView], reason: str) -> None:
        """A request that is never admitted: shown as rejected, its VMs FAILED."""
        self.owners[lease.lid] = vms[0].uid
        self._finish(replace(lease, state=LeaseState.REJECTED), [vm.vid for vm in vms])
        self._reject([vm.vid for vm in vms], reason)

    def _finish(self, lease: Lease, vids: list[int]) -> None:
        self.finished[lease.lid] = (lease, vids, lease.state)
        store = self.context.store
        if store is not None:
            save_finished(store, lease, vids, self.owners.get(lease.lid, 0))
        if len(self.finished) > FINISHED_KEPT:
            oldest = next(iter(self.finished))
            del self.finished[oldest]
            if store is not None:
                forget_finished(store, oldest)

    def vm_over(self, vid: int, failed: bool = False) -> None:
        for forming in self._forming.values():
            forming.vms = [vm for vm in forming.vms if vm.vid != vid]
        lid = self.lease_of.pop(vid, None)
        if lid is None:
            return
        self._lane_moves_on(lid, vid)
        lease, vids = self.leases[lid], self.vids[lid]
        index = vids.index(vid)
        del vids[index]
        hosts = lease.hosts[:index] + lease.hosts[index + 1 :] if lease.hosts else ()
        if vids:
            self.leases[lid] = replace(lease, nodes=len(vids), hosts=hosts)
            # The VMs left may be the ones a suspension or a resume was waiting for.
            if set(vids) <= self._suspended_vms.get(lid, set()):
                self.vm_suspended(vids[0])
                return
            if set(vids) <= self._resumed_vms.get(lid, set()):
                self.vm_resumed(lid, vids[0])
                return
        else:
            self.context.log(f"haizea: lease {lid} done")
            if lease.state is not LeaseState.REJECTED:
                lease = replace(lease, state=LeaseState.FAIL if failed else LeaseState.DONE)
            self._finish(lease, list(self.vids_ever[lid]))
            del self.leases[lid], self.vids[lid]
            self._ending.pop(lid, None)
            self._migrating.pop(lid, None)
            grace = self._grace.pop(lid, None)
            if grace is not None and grace.active():
                grace.cancel()
        self.replan_soon()

    def vm_suspended(self, vid: int) -> None:
        lid = self.lease_of.get(vid)
        if lid is None or self.leases[lid].state is not LeaseState.SUSPENDING:
            return
        self._lane_moves_on(lid, vid)
        suspended = self._suspended_vms.setdefault(lid, set())
        suspended.add(vid)
        if not set(self.vids[lid]) <= suspended:
            return
        del self._suspended_vms[lid]
        lease = self.leases[lid]
        issued = self._suspend_issued.pop(lid)
        since = lease.running_since if lease.running_since is not None else issued
        self.leases[lid] = replace(
            lease,
            state=LeaseState.SUSPENDED,
            running_since=None,
            work_done=lease.work_done + max(0.0, issued - since),
        )
        self._measured("suspend", lease, self.now - issued)
        self.replan_soon()

    def vm_resumed(self, lid: int, vid: int) -> None:
        self._lane_moves_on(lid, vid)
        resumed = self._resumed_vms.setdefault(lid, set())
        resumed.add(vid)
        if not set(self.vids[lid]) <= resumed:
            return
        del self._resumed_vms[lid]
        issued = self._resume_issued.pop(lid)
        lease = self.leases[lid]
        moved = self._migrating.pop(lid, None)
        if moved is None:
            self._measured("resume", lease, self.now - issued)
        else:
            # The restore is taken to have gone as planned: the rest was the transfer.
            self._measured("migrate", moved, self.now - issued - self.policy.resume_time(lease))
        # Its work goes on from now, not from when the plan expected the memory back.
        self.leases[lid] = replace(lease, running_since=self.now)
        self.replan_soon()

    def _measured(self, action: str, lease: Lease, seconds: float) -> None:
        """Correct the rate planning uses with what a real suspend, resume or migration took."""
        self.context.log(f"haizea: lease {lease.lid} {action} took {seconds:.1f} s")
        planned = {
            "suspend": self.policy.suspend_time,
            "resume": self.policy.resume_time,
            "migrate": self.policy.migrate_time,
        }[action](lease)
        if seconds <= 0 or planned <= 0:
            return
        key = f"{action}_rate"
        rate = getattr(self.policy, key)
        corrected = (rate + rate * planned / seconds) / 2
        self.policy = replace(self.policy, **{key: corrected})
        if self.context.store is not None:
            save_rate(self.context.store, action, corrected)

    # -- the plan and its enactment ---------------------------------------------------

    def _cancel_timers(self) -> None:
        for timer in self._timers:
            if timer.active():
                timer.cancel()
        self._timers = []

    def _at(self, moment: float, function: Any, *args: Any) -> None:
        delay = max(0.0, moment - self.now)
        self._timers.append(self.context.clock.callLater(delay, function, *args))

    def _planned_leases(self) -> list[Lease]:
        return [
            replace(lease, releasing_by=self._ending[lid]) if lid in self._ending else lease
            for lid, lease in self.leases.items()
        ]

    def replan_soon(self) -> None:
        """Re-plan once on the next reactor turn, however many events this turn brings
        (the 16 VMs of a lease ending are one re-plan, not 16)."""
        if self._replan_call is None or not self._replan_call.active():
            self._replan_call = self.context.clock.callLater(0, self.replan)

    def replan(self) -> None:
        if self._replan_call is not None and self._replan_call.active():
            self._replan_call.cancel()
        self._cancel_timers()
        now = self.now
        # Leases due to end go first, so what starts now never overlaps them.
        for lid, lease in list(self.leases.items()):
            if lease.state is LeaseState.ACTIVE and lid not in self._ending:
                if lease.end(now) <= now:
                    self._end(lid)
        self.last_plan = result = plan(
            now, list(self.nodes.values()), self._planned_leases(), self.policy
        )
        for lid in result.rejected:
            self.leases[lid] = replace(self.leases[lid], state=LeaseState.REJECTED)
            self._reject(list(self.vids[lid]), f"advance reservation {lid} lost its hosts")
        for lid, lease in list(self.leases.items()):
            if lid in self._ending or lid in result.rejected:
                continue
            reservation = result.reservations.get(lid)
            if lease.state is LeaseState.ACTIVE and reservation is not None:
                if reservation.suspend_at is not None:
                    self._at(reservation.suspend_at, self._suspend, lid)
                elif not math.isinf(reservation.end):
                    self._at(reservation.end, self._end, lid)
            elif lease.state in (LeaseState.QUEUED, LeaseState.SCHEDULED, LeaseState.SUSPENDED):
                if reservation is None:
                    if lease.state is LeaseState.SCHEDULED:
                        self.leases[lid] = replace(lease, state=LeaseState.QUEUED)
                    continue
                if reservation.start <= now:
                    self._start(lid, reservation.hosts)
                    continue
                if lease.state is LeaseState.QUEUED:
                    self.leases[lid] = replace(lease, state=LeaseState.SCHEDULED)
                if lease.kind is LeaseKind.ADVANCE_RESERVATION:
                    self.leases[lid] = replace(self.leases[lid], hosts=reservation.hosts)
                self._at(reservation.start, self.replan)

    def _start(self, lid: int, hosts: tuple[int, ...]) -> None:
        lease = self.leases[lid]
        now = self.now
        resume = lease.state is LeaseState.SUSPENDED
        if resume:
            # Its clock restarts once its memory is back (corrected when its VMs are seen
            # RUNNING); nodes given other hosts are moved there first (``migration``).
            since = now + self.policy.resume_time(lease)
            moving = {
                vid: hid
                for vid, old, hid in zip(self.vids[lid], lease.hosts, hosts, strict=True)
                if old != hid
            }
            if moving:
                since += self.policy.migrate_time(lease)
                self._migrating[lid] = lease
                self._resume_targets.update(moving)
                self.context.log(f"haizea: lease {lid} migrates from {lease.hosts} to {hosts}")
            self._resume_issued[lid] = now
            # Lanes by the hosts the VMs resume on.
            self.leases[lid] = replace(lease, hosts=hosts)
            self._enact_in_lanes(lid, "resume")
        else:
            since = now
            for vid, hid in zip(self.vids[lid], hosts, strict=True):
                result = self.context.deploy(vid, hid)
                if not result.ok:
                    self.context.log(
                        f"haizea: lease {lid}: VM {vid} not deployed: {result.message}"
                    )
        self.leases[lid] = lease = replace(
            lease, state=LeaseState.ACTIVE, hosts=hosts, running_since=since
        )
        self.context.log(f"haizea: lease {lid} {'resumed' if resume else 'started'} on {hosts}")
        end = lease.end(now)
        if not math.isinf(end):
            self._at(end, self._end, lid)

    def _suspend(self, lid: int) -> None:
        lease = self.leases[lid]
        self._suspend_issued[lid] = self.now
        self.leases[lid] = replace(lease, state=LeaseState.SUSPENDING)
        self._enact_in_lanes(lid, "suspend")
        self.replan_soon()

    def _enact_in_lanes(self, lid: int, action: str) -> None:
        """Suspend or resume a lease's VMs: hosts in parallel, one VM at a time per host
        (``suspendresume_exclusion = local``) or one at a time in all (``global``)."""
        if self.policy.suspendresume_exclusion == "global":
            lanes = [list(self.vids[lid])]
        else:
            by_host: dict[int, list[int]] = {}
            for vid, hid in zip(self.vids[lid], self.leases[lid].hosts, strict=False):
                by_host.setdefault(hid, []).append(vid)
            lanes = list(by_host.values())
        for lane in lanes:
            self._next_in_lane(lid, action, lane)

    def _next_in_lane(self, lid: int, action: str, lane: list[int]) -> None:
        while lane:
            vid = lane.pop(0)
            target = self._resume_targets.pop(vid, None) if action == "resume" else None
            if target is not None:
                result = self.context.resume_on(vid, target)
            else:
                result = self.context.action(action, vid)
            if result.ok:
                self._lane_of[vid] = (action, lane)
                return
            self.context.log(f"haizea: lease {lid}: VM {vid}: {action} refused: {result.message}")

    def _lane_moves_on(self, lid: int, vid: int) -> None:
        """``vid`` is done with its suspend or resume (or gone): its host's next VM goes."""
        entry = self._lane_of.pop(vid, None)
        if entry is not None:
            self._next_in_lane(lid, *entry)

    def _end(self, lid: int) -> None:
        self._ending[lid] = self.now + self.shutdown_time
        for vid in self.vids[lid]:
            self.context.action("shutdown", vid)
        self._grace[lid] = self.context.clock.callLater(self.shutdown_time, self._cancel, lid)
        self.context.log(f"haizea: lease {lid} ended, shutting down its VMs")

    def _cancel(self, lid: int) -> None:
        self._grace.pop(lid, None)
        for vid in list(self.vids.get(lid, ())):
            result = self.context.action("cancel", vid)
            if result.ok:
                self.context.log(f"haizea: lease {lid}: VM {vid} cancelled after shutdown_time")
