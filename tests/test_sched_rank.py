"""sched_rank, the shipped placement scheduler: event-driven passes on a ``task.Clock``
(FakeSchedulerContext), the 1.2 placement rules, and one daemon placing a VM long before
its 30-second cycle."""

from __future__ import annotations

import pytest

from nebula_xr.model import HostState, LCMState, VMState
from nebula_xr.scheduling import SchedulerConfig
from nebula_xr_plugins import sched_rank
from nebula_xr_plugins.sched_rank import RankScheduler
from tests.fake.scheduler import FakeSchedulerContext
from tests.oned import OneDaemon, wait_for, write_conf

INTERVAL = 30.0
#: Monitored attributes of a host with room: 2 CPUs, 2 GB.
ROOMY = {"FREECPU": "200", "FREEMEMORY": str(2048 * 1024)}


def started(context: FakeSchedulerContext) -> RankScheduler:
    scheduler = RankScheduler(SchedulerConfig("sched_rank", INTERVAL), context)
    scheduler.pause_ratio = 0.0  # slices follow each other on the next turns
    context.deliver_to(scheduler)
    scheduler.start()
    context.clock.advance(0)
    return scheduler


def deployed(context: FakeSchedulerContext) -> dict[int, tuple[float, int | None]]:
    """vid -> (time, host) of each deploy."""
    return {vid: (at, hid) for at, action, vid, hid in context.actions if action == "deploy"}


def test_a_pending_vm_is_placed_at_once_not_at_the_next_cycle() -> None:
    context = FakeSchedulerContext(delay=1.0)
    context.add_host("a", cpu=200, memory_mb=2048, **ROOMY)
    started(context)
    context.clock.advance(7)
    vid = context.submit("CPU = 1\nMEMORY = 64")
    context.clock.advance(0)
    assert deployed(context) == {vid: (7.0, 0)}
    context.clock.advance(1)
    assert context.state(vid) == (VMState.ACTIVE, LCMState.RUNNING)


def test_vms_arriving_together_are_placed_in_one_pass() -> None:
    context = FakeSchedulerContext()
    for name in "abcd":
        context.add_host(name, cpu=1000, memory_mb=4096, FREECPU="400", FREEMEMORY="4194304")
    scheduler = started(context)
    before = scheduler.passes
    vids = [context.submit("CPU = 0.1\nMEMORY = 16") for _ in range(200)]
    context.clock.advance(0)
    assert set(deployed(context)) == set(vids)
    assert scheduler.passes == before + 1


def test_freed_capacity_and_a_monitoring_place_waiting_vms_without_the_cycle() -> None:
    context = FakeSchedulerContext(delay=1.0)
    context.add_host("a", cpu=100, memory_mb=1024, FREECPU="100", FREEMEMORY="1048576")
    context.add_host("b", cpu=100, memory_mb=1024, FREECPU="100", FREEMEMORY="1000")
    started(context)
    first = context.submit("CPU = 1\nMEMORY = 1000")
    second = context.submit("CPU = 1\nMEMORY = 1000")
    third = context.submit("CPU = 1\nMEMORY = 1000")
    context.clock.advance(2)
    assert set(deployed(context)) == {first}  # b's monitored FREEMEMORY is too small
    context.clock.advance(3)
    context.finish(first)  # a's shares have room again
    context.clock.advance(0)
    assert deployed(context)[second] == (5.0, 0)
    context.clock.advance(4)
    context.monitor_host(1, FREEMEMORY="1048576")  # b has room now
    context.clock.advance(0)
    assert third not in deployed(context)  # waiting for other hosts' events
    context.clock.advance(sched_rank.HOST_EVENTS_DELAY)
    assert deployed(context)[third] == (9.5, 1)
    assert context.clock.seconds() < INTERVAL


def on_hypervisor(name: str, cpu: float = 0.5) -> str:
    return f"CPU = {cpu}\nMEMORY = 64\nREQUIREMENTS = 'HYPERVISOR = \"{name}\"'\n"


def test_placement_rules_requirements_rank_threshold_and_unusable_hosts() -> None:
    context = FakeSchedulerContext()
    # 0: best RANK but disabled; 1: in ERROR; 2: kvm; 3 and 4: xen, 4 has more memory.
    for name, hypervisor, memory in (
        ("off", "xen", 9000000), ("err", "xen", 9000000), ("kvm", "kvm", 8000000),
        ("small", "xen", 1000000), ("big", "xen", 2000000),
    ):  # fmt: skip
        context.add_host(
            name, cpu=200, memory_mb=8192, FREECPU="185", FREEMEMORY=str(memory),
            HYPERVISOR=hypervisor,
        )  # fmt: skip
    context.set_host_state(0, HostState.DISABLED)
    context.set_host_state(1, HostState.ERROR)
    started(context)
    # FREECPU 185 is ≥ 90% of TOTALCPU 200: counted as 200, so 2 CPUs fit.
    ranked = context.submit(on_hypervisor("xen", cpu=2) + "RANK = FREEMEMORY\n")
    unranked = context.submit(on_hypervisor("kvm"))
    nowhere = context.submit(on_hypervisor("hvm"))
    context.clock.advance(0)
    placed = deployed(context)
    assert placed[ranked][1] == 4 and placed[unranked][1] == 2 and nowhere not in placed
    context.monitor_host(4, FREECPU="150", FREEMEMORY="9999999")  # below 90%: 150 is 150
    context.monitor_host(3, FREECPU="150")
    context.clock.advance(0)
    too_big = context.submit(on_hypervisor("xen", cpu=1.6))
    context.clock.advance(0)
    assert too_big not in deployed(context)
    assert context.state(nowhere)[0] == VMState.PENDING


def test_a_host_is_parsed_once_per_monitoring_not_per_vm(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = sched_rank.leading_int
    monkeypatch.setattr(sched_rank, "leading_int", lambda text: calls.append(text) or real(text))
    context = FakeSchedulerContext()
    for n in range(50):
        context.add_host(f"h{n}", cpu=200, memory_mb=2048, FREECPU="10", FREEMEMORY="10")
    started(context)
    for _ in range(200):  # none fits the monitored room: every pass looks at every host
        context.submit("CPU = 1\nMEMORY = 64")
        context.clock.advance(0)
    assert not deployed(context)
    assert len(calls) == 3 * 50  # FREECPU, TOTALCPU, FREEMEMORY of each host, once
    context.monitor_host(7, FREEMEMORY="999999")
    context.clock.advance(0)  # the event
    context.clock.advance(sched_rank.HOST_EVENTS_DELAY)
    assert len(calls) == 3 * 51


def test_a_long_pass_yields_to_the_reactor_between_slices() -> None:
    context = FakeSchedulerContext()
    for n in range(20):
        context.add_host(f"h{n}", cpu=10000, memory_mb=10000, FREECPU="10000", FREEMEMORY="9" * 9)
    scheduler = started(context)
    scheduler.slice_seconds = 0.0  # one step per turn
    seen: list[int] = []
    deploy = context.deploy

    def deploy_and_probe(vid: int, hid: int) -> object:
        if not seen:  # an API call arriving during the pass: when is it served?
            context.clock.callLater(0, lambda: seen.append(len(deployed(context))))
        return deploy(vid, hid)

    context.deploy = deploy_and_probe  # type: ignore[method-assign]
    vids = [context.submit("CPU = 1\nMEMORY = 1") for _ in range(300)]
    context.clock.advance(0)
    assert set(deployed(context)) == set(vids)
    assert seen and seen[0] < 5  # served after a few VMs, not after the 300


def test_slices_of_a_pass_leave_the_reactor_a_pause_as_long_as_themselves() -> None:
    context = FakeSchedulerContext()
    context.add_host("a", cpu=10000, memory_mb=10000, FREECPU="10000", FREEMEMORY="9" * 9)
    scheduler = started(context)
    scheduler.slice_seconds = 0.0
    scheduler.pause_ratio = 1.0
    vids = [context.submit("CPU = 1\nMEMORY = 1") for _ in range(50)]
    context.clock.advance(0)  # the events, the pass's first slice
    context.clock.advance(0)
    assert len(deployed(context)) <= 1  # each next slice waits for its pause on the clock
    context.clock.pump([0.01] * 60)
    assert set(deployed(context)) == set(vids)


def test_the_periodic_cycle_places_what_no_event_announced() -> None:
    context = FakeSchedulerContext()
    context.add_host("a", cpu=200, memory_mb=2048, **ROOMY)
    started(context)
    context.on_vm_changed = lambda vm, state, lcm: None  # the event is lost
    vid = context.submit("CPU = 1\nMEMORY = 64")
    context.clock.advance(INTERVAL - 1)
    assert vid not in deployed(context)
    context.clock.advance(1)
    assert deployed(context)[vid] == (INTERVAL, 0)


def test_a_bad_requirements_is_reported_once_and_the_others_are_placed() -> None:
    context = FakeSchedulerContext()
    context.add_host("a", cpu=200, memory_mb=2048, **ROOMY)
    started(context)
    bad = context.submit('CPU = 1\nMEMORY = 64\nREQUIREMENTS = "FREECPU >"')
    good = context.submit("CPU = 1\nMEMORY = 64")
    context.clock.advance(0)
    context.clock.advance(INTERVAL * 2)
    assert set(deployed(context)) == {good}
    reports = [line for line in context.lines if f"VM {bad}" in line]
    assert len(reports) == 1
    assert reports[0].startswith(f"Error evaluating REQUIREMENTS of VM {bad}: ")


def test_the_daemon_places_a_new_vm_long_before_the_cycle(tmp_path) -> None:
    write_conf(tmp_path, scheduler='SCHEDULER = [ plugin = "sched_rank", interval = 30 ]')
    one = OneDaemon(tmp_path).start()
    try:
        assert one.call("one.hostallocate", "node01", "im_xen", "vmm_xen", "tm_nfs", True)[0]
        wait_for(lambda: "TOTALCPU=200" in one.call("one.hostinfo", 0)[1])
        assert one.call("one.vmallocate", "NAME = quick\nCPU = 1\nMEMORY = 32\n") == [True, 0]
        # The first cycle is 30 s away: only the PENDING event can place it in time.
        wait_for(lambda: one.vm_state(0) == (3, 3), timeout=10, what="RUNNING")
    finally:
        one.stop()


def test_host_events_close_together_make_one_pass() -> None:
    context = FakeSchedulerContext()
    for n in range(50):
        context.add_host(f"h{n}", cpu=200, memory_mb=2048, FREECPU="10", FREEMEMORY="10")
    scheduler = started(context)
    context.submit("CPU = 1\nMEMORY = 64")  # fits nowhere: stays PENDING
    context.clock.advance(0)
    before = scheduler.passes
    for hid in range(50):  # 50 monitorings within 0.4 s
        context.monitor_host(hid, FREECPU="20")
        context.clock.advance(0.008)
    context.clock.advance(sched_rank.HOST_EVENTS_DELAY)
    assert scheduler.passes == before + 1
