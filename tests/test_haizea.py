"""The Haizea lease scheduler plugin (plugins/sched_haizea), on task.Clock with a fake context.

Times are those of Haizea's use cases (hours); the clock makes them instant. VM actions
take one second (the fake context's ``delay``).
"""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from importlib import metadata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from lxml import etree
from nebula_xr_haizea import api
from nebula_xr_haizea import scheduler as scheduler_module
from nebula_xr_haizea import store as store_module
from nebula_xr_haizea.planner import Lease, LeaseState, Node, Policy, plan
from nebula_xr_haizea.request import (
    LeaseKind,
    LeaseRequest,
    LeaseRequestError,
    parse_lease_request,
)
from nebula_xr_haizea.scheduler import HaizeaScheduler
from twisted.internet import task

from nebula_xr import hookimpl
from nebula_xr.database import Database, Delete, PluginStore, PluginTable, VMPoolRow
from nebula_xr.model import HostState, LCMState, VMState
from nebula_xr.plugin_manager import PluginError, PluginManager
from nebula_xr.scheduling import SchedulerConfig
from nebula_xr.template import Template
from tests.fake.scheduler import FakeSchedulerContext

ROOT = Path(__file__).resolve().parent.parent
HOUR = 3600.0
RUNNING = (VMState.ACTIVE, LCMState.RUNNING)


def cluster(hosts: int = 4, **options: str) -> tuple[FakeSchedulerContext, HaizeaScheduler]:
    context = FakeSchedulerContext(delay=1.0)
    for number in range(hosts):
        context.add_host(f"node{number}", cpu=100, memory_mb=1024, NODE=str(number))
    config = SchedulerConfig("haizea", options={k.upper(): v for k, v in options.items()})
    scheduler = HaizeaScheduler(config, context)
    context.deliver_to(scheduler)
    scheduler.start()
    return context, scheduler


def lease_vm(
    start: str = "best_effort",
    duration: str = "01:00:00",
    preemptible: str = "no",
    group: str | None = None,
    memory: int = 512,
    requirements: str | None = None,
    cpu: str = "1",
) -> str:
    group_key = f", GROUP = {group}" if group else ""
    text = (
        f"NAME = leased\nCPU = {cpu}\nMEMORY = {memory}\n"
        f'HAIZEA = [ START = "{start}", DURATION = "{duration}", '
        f'PREEMPTIBLE = "{preemptible}"{group_key} ]\n'
    )
    if requirements:
        text += f"REQUIREMENTS = {requirements}\n"
    return text


def submit(context: FakeSchedulerContext, count: int = 1, **lease: str | int | None) -> list[int]:
    return [context.submit(lease_vm(**lease)) for _ in range(count)]  # type: ignore[arg-type]


def advance_to(context: FakeSchedulerContext, moment: float) -> None:
    """Run the clock up to ``moment``, one second at a time (events take turns)."""
    clock = context.clock
    clock.advance(0)
    while clock.seconds() < moment:
        clock.advance(min(1.0, moment - clock.seconds()))
    clock.advance(0)


# -- the lease request ----------------------------------------------------------------


def _request(vector: str | None, submitted: float = 1000.0) -> LeaseRequest:
    text = "NAME = x\n" + (f"HAIZEA = {vector}\n" if vector else "")
    return parse_lease_request(Template.parse(text), submitted)


def test_no_haizea_vector_is_an_immediate_unlimited_non_preemptible_lease() -> None:
    assert _request(None) == LeaseRequest(LeaseKind.IMMEDIATE, None, math.inf, False, None)


def test_the_start_forms_of_haizea_1_0() -> None:
    best_effort = _request('[ START = best_effort, DURATION = "00:30:00", PREEMPTIBLE = yes ]')
    assert best_effort == LeaseRequest(LeaseKind.BEST_EFFORT, None, 1800.0, True, None)
    now = _request('[ START = now, DURATION = unlimited, PREEMPTIBLE = no, GROUP = "g1" ]')
    assert now == LeaseRequest(LeaseKind.IMMEDIATE, None, math.inf, False, "g1")
    relative = _request('[ START = "+01:30:05", DURATION = "26:00:00", PREEMPTIBLE = no ]')
    assert relative == LeaseRequest(
        LeaseKind.ADVANCE_RESERVATION, 1000.0 + 5405, 26 * HOUR, False, None
    )
    absolute = _request(
        '[ START = "2026-12-24 18:00:00", DURATION = "02:00:00", PREEMPTIBLE = no ]'
    )
    from datetime import datetime

    assert absolute.start == datetime(2026, 12, 24, 18).timestamp()
    assert absolute.kind is LeaseKind.ADVANCE_RESERVATION


@pytest.mark.parametrize(
    ("vector", "message"),
    [
        ("yes", "HAIZEA must be a vector"),
        ("[ START = now, DURATION = unlimited ]", "HAIZEA lacks PREEMPTIBLE"),
        ("[ START = soon, DURATION = unlimited, PREEMPTIBLE = no ]", "HAIZEA START 'soon'"),
        ('[ START = "+1:00", DURATION = "01:00:00", PREEMPTIBLE = no ]', "not +HH:MM:SS"),
        ('[ START = "2026-13-01 00:00:00", DURATION = "01:00:00", PREEMPTIBLE = no ]', "date"),
        ('[ START = "0001-01-01 00:00:00", DURATION = "01:00:00", PREEMPTIBLE = no ]', "date"),
        ('[ START = now, DURATION = "1h", PREEMPTIBLE = no ]', "DURATION '1h'"),
        ('[ START = now, DURATION = "01:60:00", PREEMPTIBLE = no ]', "DURATION '01:60:00'"),
        ('[ START = now, DURATION = "00:00:00", PREEMPTIBLE = no ]', "longer than"),
        ("[ START = now, DURATION = unlimited, PREEMPTIBLE = maybe ]", "PREEMPTIBLE 'maybe'"),
        ('[ START = "+01:00:00", DURATION = unlimited, PREEMPTIBLE = no ]', "needs a DURATION"),
        ("[ START = now, DURATION = unlimited, PREEMPTIBLE = no, NODES = 4 ]", "unknown"),
    ],
)
def test_a_bad_vector_is_refused_with_a_clear_message(vector: str, message: str) -> None:
    with pytest.raises(LeaseRequestError, match=message.replace("+", r"\+").replace("(", r"\(")):
        _request(vector)


@given(
    st.text() | st.from_regex(r"[+]?\d{1,5}(-\d\d-\d\d[ T])?\d\d:\d\d:\d\d", fullmatch=True),
    st.text() | st.from_regex(r"\d{1,30}:\d\d:\d\d", fullmatch=True),
    st.text() | st.sampled_from(["yes", "no"]),
)
def test_any_value_is_a_request_or_a_lease_request_error(start, duration, preemptible) -> None:
    template = Template()
    template.add("HAIZEA", {"START": start, "DURATION": duration, "PREEMPTIBLE": preemptible})
    try:
        request = parse_lease_request(template, 0.0)
    except LeaseRequestError:
        return
    assert request.duration > 0


def test_a_bad_vector_fails_the_vm_with_the_reason_in_its_log() -> None:
    context, scheduler = cluster()
    vid = context.submit("NAME = x\nCPU = 1\nMEMORY = 64\nHAIZEA = [ START = tomorrow ]\n")
    advance_to(context, 1)
    assert context.state(vid)[0] is VMState.FAILED
    assert "Lease request refused: HAIZEA lacks DURATION, PREEMPTIBLE" in context.rejections[vid]
    assert not context.actions
    assert scheduler.leases == {}


# -- scenarios --------------------------------------------------------------------------


def test_ar_preempts_a_running_best_effort_lease_on_4_hosts_and_it_resumes_after() -> None:
    context, scheduler = cluster(suspend_rate="8", resume_rate="8", shutdown_time="5")
    batch = submit(context, 4, preemptible="yes", duration="02:00:00", group="batch")
    advance_to(context, 1)  # the group window
    assert [context.times("deploy", vid) for vid in batch] == [[1.0]] * 4
    assert {context.host_of(vid) for vid in batch} == {0, 1, 2, 3}  # one 100% CPU VM per host
    advance_to(context, 600)
    reservation = submit(context, 4, start="+01:00:00", duration="00:30:00", group="ar")
    advance_to(context, 601)
    ar_start = 600 + HOUR
    assert scheduler.leases[reservation[0]].state is LeaseState.SCHEDULED

    # 512 MB at 8 MB/s: the suspension is planned 64 s before the reservation starts.
    advance_to(context, ar_start + 2)
    assert [context.times("suspend", vid) for vid in batch] == [[ar_start - 64]] * 4
    assert all(context.state(vid)[0] is VMState.SUSPENDED for vid in batch)
    assert [context.times("deploy", vid) for vid in reservation] == [[ar_start]] * 4
    assert all(context.state(vid) == RUNNING for vid in reservation)

    ar_end = ar_start + 1800
    advance_to(context, ar_end + 2)
    assert [context.times("shutdown", vid) for vid in reservation] == [[ar_end]] * 4
    assert all(context.state(vid)[0] is VMState.DONE for vid in reservation)
    # Resumed on the same hosts as soon as the reservation's VMs are gone.
    assert [context.times("resume", vid) for vid in batch] == [[ar_end + 1]] * 4
    assert all(context.state(vid) == RUNNING for vid in batch)
    # The real suspend and resume took 1 s, not 64: the rates used to plan are corrected
    # halfway (512 MB / 1 s against 8 MB/s).
    assert (scheduler.policy.suspend_rate, scheduler.policy.resume_rate) == (260.0, 260.0)

    # Total work is preserved: it ran 1 → ar_start-64, then the rest once running again.
    worked = (ar_start - 64) - 1
    end = ar_end + 2 + (2 * HOUR - worked)
    advance_to(context, end + 2)
    assert [context.times("shutdown", vid) for vid in batch] == [[end]] * 4
    assert all(context.state(vid)[0] is VMState.DONE for vid in batch)


def _preempted_while_its_host_is_taken(
    migration: str,
) -> tuple[FakeSchedulerContext, HaizeaScheduler, int]:
    """A preemptible lease on node0, a non-preemptible one on node1 until 4801 s, then an
    advance reservation of node0 for three hours from 4200 s: the first is suspended."""
    context, scheduler = cluster(hosts=2, suspend_rate="8", resume_rate="512",
                                 migrate_rate="16", migration=migration)  # fmt: skip
    (batch,) = submit(context, preemptible="yes", duration="02:00:00")
    advance_to(context, 1)
    submit(context, start="now", duration="01:20:00", requirements='"NODE = 1"')
    advance_to(context, 600)
    assert (context.host_of(batch), context.host_of(1)) == (0, 1)
    (ar,) = submit(context, start="+01:00:00", duration="03:00:00", requirements='"NODE = 0"')
    advance_to(context, 601)
    assert scheduler.leases[ar].state is LeaseState.SCHEDULED
    advance_to(context, 4200 + 2)
    assert context.times("suspend", batch) == [4200 - 64]
    assert context.state(batch)[0] is VMState.SUSPENDED
    assert context.state(ar) == RUNNING
    return context, scheduler, batch


def test_a_preempted_lease_resumes_on_another_host_when_its_own_is_taken() -> None:
    context, scheduler, batch = _preempted_while_its_host_is_taken("yes")
    # node1's lease (deployed at 1) ends at 4801, DONE a second later: the batch lease
    # moves there at once rather than wait for the reservation's end on node0 (15000 s).
    advance_to(context, 4801 + 5)
    assert context.times("resume_on", batch) == [4802]
    assert context.times("resume", batch) == []
    assert context.host_of(batch) == 1
    assert context.state(batch) == RUNNING  # PROLOG_MIGRATE, BOOT, RUNNING at 4804
    # Planned: 512 MB / 512 MB/s to restore, 512 MB / 16 MB/s to move. It took 2 s, the
    # restore's planned second aside 1 s: the migrate rate moves halfway to 512 MB/s.
    assert scheduler.policy.migrate_rate == (16 + 16 * 32 / 1) / 2
    assert scheduler.policy.resume_rate == 512  # a migration is not a resume's measure
    # Its work goes on from 4804: it ran 0 → 4136, 7200 - 4136 s are left.
    end = 4804 + 7200 - 4136
    advance_to(context, end + 2)
    assert context.times("shutdown", batch) == [end]
    assert context.state(batch)[0] is VMState.DONE


def test_without_migration_a_preempted_lease_waits_for_its_own_host() -> None:
    context, _scheduler, batch = _preempted_while_its_host_is_taken("no")
    advance_to(context, 15000 + 3)
    assert context.times("resume_on", batch) == []
    assert context.times("resume", batch) == [15000 + 1]
    assert context.host_of(batch) == 0
    assert context.state(batch) == RUNNING


def test_a_migrating_gang_lease_keeps_every_node_it_can_on_its_host() -> None:
    """Only the node whose host the reservation takes moves, to the free host."""
    context, scheduler = cluster(hosts=3, suspend_rate="8", resume_rate="8", migration="yes")
    batch = submit(context, 2, preemptible="yes", duration="02:00:00", group="batch")
    advance_to(context, 600)
    assert [context.host_of(vid) for vid in batch] == [0, 1]
    submit(context, start="+01:00:00", duration="00:30:00", requirements='"NODE = 0"')
    ar_start = 600 + HOUR
    advance_to(context, ar_start)
    # Suspended as a whole (all or nothing), resumed as soon as the suspension is over.
    assert [context.times("suspend", vid) for vid in batch] == [[ar_start - 64]] * 2
    assert context.times("resume_on", batch[0]) == [ar_start - 63]
    assert context.times("resume", batch[1]) == [ar_start - 63]
    assert context.times("resume_on", batch[1]) == context.times("resume", batch[0]) == []
    assert [context.host_of(vid) for vid in batch] == [2, 1]
    assert all(context.state(vid) == RUNNING for vid in batch)
    assert scheduler.leases[batch[0]].hosts == (2, 1)


def test_a_migration_is_planned_from_memory_and_disk_at_migrate_rate() -> None:
    nodes = [Node(0, 100, 1024 * 1024), Node(1, 100, 1024 * 1024)]
    suspended = Lease(1, LeaseKind.BEST_EFFORT, 1, 100, 512 * 1024, 0.0, 1000.0,
                      preemptible=True, state=LeaseState.SUSPENDED, hosts=(0,),
                      work_done=400.0, disk=256)  # fmt: skip
    holder = Lease(2, LeaseKind.IMMEDIATE, 1, 100, 512 * 1024, 0.0, 5000.0,
                   state=LeaseState.ACTIVE, hosts=(0,), running_since=0.0)  # fmt: skip
    policy = Policy(resume_rate=8.0, migrate_rate=16.0, migration=True)
    moved = plan(100.0, nodes, [suspended, holder], policy).reservations[1]
    # 600 s of work left, 512 MB / 8 MB/s to restore, (512 + 256) MB / 16 MB/s to move.
    assert (moved.hosts, moved.start, moved.end, moved.migrated) == (
        (1,),
        100.0,
        100 + 600 + 64 + 48,
        True,
    )
    stays = plan(100.0, nodes, [suspended, holder], replace(policy, migration=False))
    # Without migration it waits for node0 (backfilling off: no future reservation).
    assert 1 not in stays.reservations and stays.queued == [1]


def test_a_vm_deleted_while_its_lease_is_being_suspended_does_not_stall_it() -> None:
    context, scheduler = cluster(hosts=2, suspend_rate="8", resume_rate="8")
    batch = submit(context, 2, preemptible="yes", duration="02:00:00", group="batch")
    advance_to(context, 600)
    submit(context, 2, start="+01:00:00", duration="00:30:00", group="ar")
    ar_start = 600 + HOUR
    advance_to(context, ar_start - 64)
    assert context.times("suspend", batch[1]) == [ar_start - 64]
    context.finish(batch[1])  # deleted by its owner before its suspension completed
    advance_to(context, ar_start - 60)
    assert scheduler.leases[batch[0]].state is LeaseState.SUSPENDED
    assert scheduler.leases[batch[0]].hosts == (0,)
    advance_to(context, ar_start + 1800 + 3)
    assert context.times("resume", batch[0]) == [ar_start + 1800 + 1]


@pytest.mark.parametrize("exclusion", ["local", "global"])
def test_suspensions_and_resumes_run_one_at_a_time_per_host_or_in_all(exclusion: str) -> None:
    context, _ = cluster(hosts=2, suspend_rate="8", resume_rate="8",
                         suspendresume_exclusion=exclusion)  # fmt: skip
    # Two half-host VMs on each host, then a reservation of both hosts.
    batch = submit(context, 4, cpu="0.5", preemptible="yes", duration="02:00:00", group="b")
    advance_to(context, 600)
    assert sorted(context.host_of(vid) for vid in batch) == [0, 0, 1, 1]
    submit(context, 2, start="+01:00:00", duration="00:30:00", group="ar")
    ar_start, ar_end = 600 + HOUR, 600 + HOUR + 1800
    advance_to(context, ar_end + 10)
    suspends = sorted(context.times("suspend", vid)[0] for vid in batch)
    resumes = sorted(context.times("resume", vid)[0] for vid in batch)
    if exclusion == "local":
        # 2 × 512 MB at 8 MB/s per host: 128 s before the start, hosts side by side.
        first = ar_start - 128
        assert suspends == [first, first, first + 1, first + 1]
        assert resumes == [ar_end + 1, ar_end + 1, ar_end + 2, ar_end + 2]
    else:
        first = ar_start - 256  # 4 × 512 MB, one after another
        assert suspends == [first, first + 1, first + 2, first + 3]
        assert resumes == [ar_end + 1, ar_end + 2, ar_end + 3, ar_end + 4]
    assert all(context.state(vid) == RUNNING for vid in batch)


def test_ar_is_rejected_when_the_slot_table_can_not_hold_it() -> None:
    context, scheduler = cluster(hosts=1)
    first = submit(context, start="+01:00:00", duration="01:00:00")
    overlapping = submit(context, start="+01:30:00", duration="01:00:00")
    after = submit(context, start="+02:00:00", duration="01:00:00")
    advance_to(context, 1)
    assert context.state(overlapping[0])[0] is VMState.FAILED
    assert "advance reservation 1 rejected: no room" in context.rejections[overlapping[0]]
    assert scheduler.leases[first[0]].state is LeaseState.SCHEDULED
    assert scheduler.leases[after[0]].state is LeaseState.SCHEDULED


def test_ar_does_not_preempt_a_non_preemptible_lease_nor_under_no_preemption() -> None:
    context, _ = cluster(hosts=1)
    submit(context, duration="unlimited", start="now")
    advance_to(context, 1)
    ar = submit(context, start="+01:00:00", duration="01:00:00")
    advance_to(context, 2)
    assert context.state(ar[0])[0] is VMState.FAILED

    context, _ = cluster(hosts=1, preemption="no-preemption")
    submit(context, preemptible="yes", duration="unlimited")
    advance_to(context, 1)
    ar = submit(context, start="+01:00:00", duration="01:00:00")
    advance_to(context, 2)
    assert context.state(ar[0])[0] is VMState.FAILED


def _backfilling_queue(policy: str) -> tuple[FakeSchedulerContext, dict[str, list[int]]]:
    """node0 is busy for an hour and B waits for it; C needs both hosts after B."""
    context, _ = cluster(hosts=2, backfilling=policy)
    on_node0 = '"NODE = 0"'
    leases = {"A": submit(context, requirements=on_node0)}
    advance_to(context, 10)
    leases["B"] = submit(context, requirements=on_node0)
    leases["C"] = submit(context, 2, group="c")
    advance_to(context, 20)
    leases["long"] = submit(context, duration="03:00:00")  # would delay C
    leases["short"] = submit(context, duration="00:30:00")  # ends before C starts
    advance_to(context, 30)
    return context, leases


def test_conservative_backfilling_starts_a_short_job_only_when_it_delays_no_one() -> None:
    context, leases = _backfilling_queue("conservative")
    started = {name: bool(context.times("deploy", vids[0])) for name, vids in leases.items()}
    assert started == {"A": True, "B": False, "C": False, "long": False, "short": True}
    advance_to(context, 4 * HOUR)
    # B when A's VM is gone, C when B's is: nobody was delayed by the short job.
    assert context.times("deploy", leases["B"][0]) == [HOUR + 1]
    assert context.times("deploy", leases["C"][0]) == [2 * HOUR + 2]
    assert context.times("deploy", leases["long"][0]) == [3 * HOUR + 3]  # after C


def test_aggressive_backfilling_protects_only_the_first_waiting_lease() -> None:
    context, leases = _backfilling_queue("aggressive")
    started = {name: bool(context.times("deploy", vids[0])) for name, vids in leases.items()}
    assert started == {"A": True, "B": False, "C": False, "long": True, "short": False}
    advance_to(context, 4 * HOUR)
    assert context.times("deploy", leases["B"][0]) == [HOUR + 1]
    # C waits for the long job (it ran 20 s → 3 h 20 s).
    assert context.times("deploy", leases["C"][0]) == [3 * HOUR + 21]


def test_without_backfilling_the_queue_is_strictly_fifo() -> None:
    context, leases = _backfilling_queue("off")
    started = {name: bool(context.times("deploy", vids[0])) for name, vids in leases.items()}
    assert started == {"A": True, "B": False, "C": False, "long": False, "short": False}


def test_gang_leases_are_all_or_nothing() -> None:
    context, scheduler = cluster(hosts=2)
    immediate = submit(context, 3, start="now", group="now3")
    reservation = submit(context, 3, start="+01:00:00", group="ar3")
    best_effort = submit(context, 3, group="be3")
    advance_to(context, 5)
    assert all(context.state(vid)[0] is VMState.FAILED for vid in immediate + reservation)
    assert not context.actions  # nothing partially deployed
    assert scheduler.leases[best_effort[0]].state is LeaseState.QUEUED
    context.add_host("node2", cpu=100, memory_mb=1024)
    context.set_host_state(2, HostState.MONITORED)
    advance_to(context, 6)
    assert [context.times("deploy", vid) for vid in best_effort] == [[5.0]] * 3


def test_duration_is_enforced_with_a_grace_time_then_cancel() -> None:
    context, _ = cluster(hosts=1, shutdown_time="30")
    polite, stubborn = submit(context, duration="00:10:00"), []
    advance_to(context, 700)
    assert context.times("shutdown", polite[0]) == [600.0]
    assert context.state(polite[0])[0] is VMState.DONE
    assert context.times("cancel", polite[0]) == []

    context.shutdown_fails = True
    stubborn = submit(context, duration="00:10:00")
    advance_to(context, 1400)
    assert context.times("shutdown", stubborn[0]) == [1300.0]
    assert context.times("cancel", stubborn[0]) == [1330.0]
    assert context.state(stubborn[0])[0] is VMState.DONE


def test_early_termination_frees_the_slots_and_the_queue_moves_up() -> None:
    context, scheduler = cluster(hosts=1, backfilling="conservative")
    first = submit(context, duration="02:00:00")
    second = submit(context, duration="01:00:00")
    advance_to(context, 10)
    assert scheduler.last_plan.reservations[second[0]].start == 2 * HOUR
    context.finish(first[0])  # deleted by its owner
    advance_to(context, 12)
    assert context.times("deploy", second[0]) == [10.0]


def test_the_events_of_one_turn_cost_one_replan(monkeypatch) -> None:
    context, _ = cluster(hosts=4)
    vids = submit(context, 4, duration="01:00:00", group="gang")
    advance_to(context, 10)
    plans: list[float] = []
    real_plan = scheduler_module.plan
    monkeypatch.setattr(
        scheduler_module, "plan", lambda now, *rest: plans.append(now) or real_plan(now, *rest)
    )
    for vid in vids:
        context.finish(vid)  # all four in the same turn
    advance_to(context, 11)
    assert plans == [10.0]


def test_host_failure_replans_reservations_elsewhere_or_rejects_them() -> None:
    context, scheduler = cluster(hosts=2)
    reservation = submit(context, start="+01:00:00", duration="00:30:00")
    advance_to(context, 1)
    assert scheduler.leases[reservation[0]].hosts == (0,)
    context.set_host_state(0, HostState.ERROR)
    advance_to(context, 2)
    assert scheduler.leases[reservation[0]].hosts == (1,)
    advance_to(context, HOUR + 1)
    assert context.actions == [(HOUR, "deploy", reservation[0], 1)]

    context, scheduler = cluster(hosts=1)
    reservation = submit(context, start="+01:00:00", duration="00:30:00")
    advance_to(context, 1)
    context.set_host_state(0, HostState.DISABLED)
    advance_to(context, 2)
    assert context.state(reservation[0])[0] is VMState.FAILED
    assert "lost its hosts" in context.rejections[reservation[0]]


def test_a_restarted_scheduler_rebuilds_its_leases_from_the_vms() -> None:
    context, before = cluster(hosts=1)
    running = submit(context, duration="01:00:00")
    waiting = submit(context, duration="00:30:00")
    reservation = submit(context, start="+02:00:00", duration="00:10:00")
    advance_to(context, 100)
    assert context.times("deploy", running[0]) == [0.0]
    before.stop()  # the daemon goes down, and its timers with it

    after = HaizeaScheduler(before.config, context)
    context.deliver_to(after)
    after.start()
    assert after.leases[running[0]].state is LeaseState.ACTIVE
    advance_to(context, 2 * HOUR + 5)
    assert context.times("shutdown", running[0]) == [HOUR]  # on time, from its placement
    assert context.times("deploy", waiting[0]) == [HOUR + 1]
    assert context.times("deploy", reservation[0]) == [2 * HOUR]


def test_a_restart_after_a_preemption_keeps_the_work_already_done() -> None:
    context, before = cluster(hosts=1, suspend_rate="8", resume_rate="8")
    batch = submit(context, preemptible="yes", duration="02:00:00")
    advance_to(context, 600)
    submit(context, start="+01:00:00", duration="00:30:00")
    ar_start, ar_end = 600 + HOUR, 600 + HOUR + 1800
    advance_to(context, ar_end + 100)
    assert context.times("resume", batch[0]) == [ar_end + 1]
    before.stop()

    after = HaizeaScheduler(before.config, context)
    context.deliver_to(after)
    after.start()
    advance_to(context, 4 * HOUR)
    # It ran 0 → ar_start-63 (suspended), then again from its resume: 2 h in all.
    worked = ar_start - 63
    assert context.times("shutdown", batch[0]) == [ar_end + 1 + (2 * HOUR - worked)]


# -- the API ----------------------------------------------------------------------------


def _listed(reply: list) -> dict[int, dict[str, str]]:
    assert reply[0] is True
    return {
        int(lease.findtext("ID")): {child.tag: child.text for child in lease}
        for lease in etree.fromstring(reply[1])
    }


def test_the_lease_list_shows_states_and_plan_to_owners_and_oneadmin() -> None:
    context, scheduler = cluster(hosts=1, backfilling="conservative")
    mine = context.submit(lease_vm(), uid=5)
    theirs = context.submit(lease_vm(), uid=6)
    refused = context.submit(lease_vm(start="now"), uid=5)  # the host is taken
    advance_to(context, 10)
    everything = _listed(api.lease_list(scheduler, 0))
    assert sorted(everything) == [mine, theirs, refused]
    assert everything[mine] | {"SUBMITTED": "0"} == {
        "ID": str(mine), "UID": "5", "TYPE": "best_effort", "STATE": "active", "VMS": "0",
        "HOSTS": "0", "PREEMPTIBLE": "0", "SUBMITTED": "0", "DURATION": "3600",
        "WORK_DONE": "0", "START": "0", "END": "3600", "SUSPEND": "-1",
    }  # fmt: skip
    assert (everything[theirs]["STATE"], everything[theirs]["START"]) == ("scheduled", "3600")
    assert everything[refused]["STATE"] == "rejected"

    assert sorted(_listed(api.lease_list(scheduler, 5))) == [mine, refused]
    assert sorted(_listed(api.lease_list(scheduler, 6))) == [theirs]
    assert api.lease_info(scheduler, 6, mine) == [False, f"Error getting lease with ID = {mine}"]
    assert api.lease_info(scheduler, 0, 99) == [False, "Error getting lease with ID = 99"]
    ok, document = api.lease_info(scheduler, 5, mine)
    assert ok and etree.fromstring(document).findtext("STATE") == "active"

    advance_to(context, HOUR + 5)
    states = {lid: lease["STATE"] for lid, lease in _listed(api.lease_list(scheduler, 0)).items()}
    assert states == {mine: "done", theirs: "active", refused: "rejected"}


# -- packaging --------------------------------------------------------------------------


def test_the_plugin_is_its_own_distribution_registered_as_haizea() -> None:
    distribution = metadata.distribution("nebula-xr-haizea")
    assert "nebula-xr" in distribution.requires
    (entry_point,) = [ep for ep in distribution.entry_points if ep.group == "nebula_xr"]
    assert (entry_point.name, entry_point.value) == ("haizea", "nebula_xr_haizea")
    core = metadata.distribution("nebula-xr")
    assert not [ep for ep in core.entry_points if ep.name == "haizea"]


def test_the_plugin_metadata_is_in_its_own_setup_cfg() -> None:
    import configparser
    import tomllib

    plugin = ROOT / "plugins" / "sched_haizea"
    setup = configparser.ConfigParser()
    setup.read(plugin / "setup.cfg")
    assert setup["metadata"]["name"] == "nebula-xr-haizea"
    assert setup["options"]["install_requires"].split() == ["nebula-xr"]
    assert setup["options.entry_points"]["nebula_xr"].split() == ["haizea", "=", "nebula_xr_haizea"]
    scripts = setup["options.entry_points"]["console_scripts"].split()
    assert scripts == ["onelease", "=", "nebula_xr_haizea.cli:main"]
    pyproject = tomllib.loads((plugin / "pyproject.toml").read_text())
    assert set(pyproject) == {"build-system"}  # the metadata lives in setup.cfg alone


def test_the_core_package_list_leaves_the_plugin_out() -> None:
    import configparser

    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    packages = setup["options"]["packages"].split()
    assert packages and not [name for name in packages if "haizea" in name]
    # The core maps nebula_xr_plugins to plugins/: sched_haizea must not be a package
    # reachable from there by a find_packages either.
    assert not (ROOT / "plugins" / "sched_haizea" / "__init__.py").exists()


def test_list_plugins_shows_haizea_from_its_distribution() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nebula_xr", "--list-plugins"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert any(line.split()[:2] == ["haizea", "nebula-xr-haizea"] for line in out.splitlines()), out


# -- the plugin's own tables (the core's nebula_xr_tables hook) -------------------------


class _Tables:
    def __init__(self, tables: list) -> None:
        self.tables = tables

    @hookimpl
    def nebula_xr_tables(self, config: SchedulerConfig) -> list:
        return self.tables


def test_the_haizea_tables_are_declared_to_the_core_and_named_after_it() -> None:
    manager = PluginManager()
    manager.load()
    tables = manager.plugin_tables(SchedulerConfig(plugin="haizea"))
    assert [table._meta.table_name for table in tables] == ["haizea_rates", "haizea_finished"]


@pytest.mark.parametrize(
    "name", ["vm_pool", "other_rates", "haizea_x; DROP TABLE vm_pool", "Haizea_x"]
)
def test_a_table_not_named_after_its_plugin_is_refused(name: str) -> None:
    class Row(PluginTable):
        class Meta:
            table_name = name

    manager = PluginManager()
    manager.register(_Tables([Row]), "haizea")
    with pytest.raises(PluginError, match="a plugin's tables are PluginTable models named haizea_"):
        manager.plugin_tables(SchedulerConfig(plugin="haizea"))


def test_the_store_refuses_the_core_tables(tmp_path) -> None:
    db = Database(tmp_path / "one.db", reactor=task.Clock())
    db.open(store_module.TABLES)
    try:
        store = PluginStore(db, store_module.TABLES)
        with pytest.raises(ValueError, match="vm_pool is not one of this plugin's tables"):
            store.write(Delete(VMPoolRow, (("oid", 0),)))
        with pytest.raises(ValueError, match="vm_pool is not one of this plugin's tables"):
            store.rows(VMPoolRow)
        assert store.rows(store_module.RateRow) == []
    finally:
        db.close()
