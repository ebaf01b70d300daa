"""The state machine of lifecycle.md on a task.Clock, with fake drivers (no process).

Each row of a table is a script: user requests (``deploy A``, ``migrate B``,
``shutdown``...) and driver answers (``DEPLOY ok``, ``TRANSFER fail``, ``SAVE
timeout``, ``POLL p``), and the VM's state, host and host shares it must end with.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nebula_xr.drivers.base import DriverError
from nebula_xr.model import LCMState, Reason, VMState
from tests.fake.lifecycle import POLLING_INTERVAL, TIMEOUT, Request, World

RUNNING_ON_A = ["deploy A", "TRANSFER ok", "DEPLOY ok"]
SUSPENDED_ON_A = RUNNING_ON_A + ["suspend", "SAVE ok"]


@pytest.fixture
def world(tmp_path: Path) -> World:
    world = World(tmp_path)
    world.add_hosts("A", "B")
    world.hypervisor.domains.update(A="a", B="a")
    yield world
    world.close()


def play(world: World, vid: int, script: list[str]) -> None:
    for step in script:
        verb, _, argument = step.partition(" ")
        if verb.isupper() and verb != "POLL":
            world.answer(verb, argument)
        elif verb == "POLL":
            vm = world.vm(vid)
            world.hypervisor.domains[vm.current.host_name] = argument
            world.lcm.poll(vm)
            world.turn()
        elif verb in ("deploy", "migrate", "livemigrate"):
            hid = world.host(argument).oid
            if verb == "deploy":
                result = world.dm.deploy(vid, hid)
            else:
                result = world.dm.migrate(vid, hid, verb == "livemigrate")
            assert result.ok, (step, result)
        elif verb == "resumeon":
            result = world.dm.resume_on(vid, world.host(argument).oid)
            assert result.ok, (step, result)
        elif verb in ("recover",):
            assert world.dm.recover(vid, argument == "success").ok
        else:
            assert world.dm.action(verb, vid).ok, step
        world.turn()


TRANSITIONS = [
    # (script, (state, lcm, host), running VMs on A and B, reasons of the records)
    (RUNNING_ON_A, ("ACTIVE", "RUNNING", "A"), (1, 0), [Reason.NONE]),
    (["deploy A", "TRANSFER fail"], ("FAILED", "-", "A"), (0, 0), [Reason.ERROR]),
    (["deploy A", "TRANSFER timeout"], ("FAILED", "-", "A"), (0, 0), [Reason.ERROR]),
    (["deploy A", "TRANSFER ok", "DEPLOY fail"], ("FAILED", "-", "A"), (0, 0), [Reason.ERROR]),
    (["deploy A", "TRANSFER ok", "DEPLOY timeout"], ("FAILED", "-", "A"), (0, 0), [Reason.ERROR]),
    (RUNNING_ON_A + ["shutdown", "SHUTDOWN ok", "TRANSFER ok"], ("DONE", "-", "A"), (0, 0), [0]),
    (RUNNING_ON_A + ["shutdown", "SHUTDOWN fail"], ("ACTIVE", "RUNNING", "A"), (1, 0), [0]),
    (RUNNING_ON_A + ["shutdown", "SHUTDOWN timeout"], ("ACTIVE", "RUNNING", "A"), (1, 0), [0]),
    (
        RUNNING_ON_A + ["shutdown", "SHUTDOWN ok", "TRANSFER fail"],
        ("FAILED", "-", "A"),
        (0, 0),
        [Reason.ERROR],
    ),
    (
        RUNNING_ON_A + ["stop", "SAVE ok", "TRANSFER ok"],
        ("STOPPED", "-", "A"),
        (0, 0),
        [Reason.STOP_RESUME],
    ),
    (RUNNING_ON_A + ["stop", "SAVE fail"], ("ACTIVE", "RUNNING", "A"), (1, 0), [0]),
    (
        RUNNING_ON_A + ["stop", "SAVE ok", "TRANSFER fail"],
        ("FAILED", "-", "A"),
        (0, 0),
        [Reason.ERROR],
    ),
    (
        RUNNING_ON_A
        + ["stop", "SAVE ok", "TRANSFER ok", "resume", "deploy B", "TRANSFER ok"]
        + ["RESTORE ok"],
        ("ACTIVE", "RUNNING", "B"),
        (0, 1),
        [Reason.STOP_RESUME, 0],
    ),
    (
        RUNNING_ON_A + ["suspend", "SAVE ok"],
        ("SUSPENDED", "-", "A"),
        (0, 0),
        [Reason.STOP_RESUME],
    ),
    (RUNNING_ON_A + ["suspend", "SAVE timeout"], ("ACTIVE", "RUNNING", "A"), (1, 0), [0]),
    (
        RUNNING_ON_A + ["suspend", "SAVE ok", "resume", "RESTORE ok"],
        ("ACTIVE", "RUNNING", "A"),
        (1, 0),
        [Reason.STOP_RESUME, 0],
    ),
    (
        RUNNING_ON_A + ["suspend", "SAVE ok", "resume", "RESTORE fail"],
        ("FAILED", "-", "A"),
        (0, 0),
        [Reason.STOP_RESUME, Reason.ERROR],
    ),
    # A suspended VM resumed on another host: the cold migration after its save.
    (
        SUSPENDED_ON_A + ["resumeon B", "TRANSFER ok", "RESTORE ok"],
        ("ACTIVE", "RUNNING", "B"),
        (0, 1),
        [Reason.STOP_RESUME, 0],
    ),
    (
        SUSPENDED_ON_A + ["resumeon B", "TRANSFER fail"],
        ("FAILED", "-", "B"),
        (0, 0),
        [Reason.STOP_RESUME, Reason.ERROR],
    ),
    (
        SUSPENDED_ON_A + ["resumeon B", "TRANSFER timeout"],
        ("FAILED", "-", "B"),
        (0, 0),
        [Reason.STOP_RESUME, Reason.ERROR],
    ),
    (
        SUSPENDED_ON_A + ["resumeon B", "TRANSFER ok", "RESTORE fail"],
        ("FAILED", "-", "B"),
        (0, 0),
        [Reason.STOP_RESUME, Reason.ERROR],
    ),
    (
        SUSPENDED_ON_A + ["resumeon B", "recover success", "RESTORE ok"],
        ("ACTIVE", "RUNNING", "B"),
        (0, 1),
        [Reason.STOP_RESUME, 0],
    ),
    (
        SUSPENDED_ON_A + ["resumeon A", "RESTORE ok"],
        ("ACTIVE", "RUNNING", "A"),
        (1, 0),
        [Reason.STOP_RESUME, 0],
    ),
    (RUNNING_ON_A + ["cancel", "CANCEL ok"], ("DONE", "-", "A"), (0, 0), [Reason.CANCEL]),
    (RUNNING_ON_A + ["cancel", "CANCEL fail"], ("ACTIVE", "RUNNING", "A"), (1, 0), [0]),
    (
        RUNNING_ON_A + ["migrate B", "SAVE ok", "TRANSFER ok", "RESTORE ok"],
        ("ACTIVE", "RUNNING", "B"),
        (0, 1),
        [Reason.USER, 0],
    ),
    (
        RUNNING_ON_A + ["migrate B", "SAVE fail"],
        ("ACTIVE", "RUNNING", "A"),
        (1, 0),
        [Reason.USER, Reason.ERROR, 0],
    ),
    (
        RUNNING_ON_A + ["migrate B", "SAVE ok", "TRANSFER fail"],
        ("FAILED", "-", "B"),
        (0, 0),
        [Reason.USER, Reason.ERROR],
    ),
    (
        RUNNING_ON_A + ["migrate B", "SAVE ok", "TRANSFER ok", "RESTORE timeout"],
        ("FAILED", "-", "B"),
        (0, 0),
        [Reason.USER, Reason.ERROR],
    ),
    (
        RUNNING_ON_A + ["livemigrate B", "MIGRATE ok"],
        ("ACTIVE", "RUNNING", "B"),
        (0, 1),
        [Reason.USER, 0],
    ),
    (
        RUNNING_ON_A + ["livemigrate B", "MIGRATE fail"],
        ("ACTIVE", "RUNNING", "A"),
        (1, 0),
        [Reason.USER, Reason.ERROR, 0],
    ),
    (
        RUNNING_ON_A + ["livemigrate B", "MIGRATE timeout"],
        ("ACTIVE", "RUNNING", "A"),
        (1, 0),
        [Reason.USER, Reason.ERROR, 0],
    ),
    (RUNNING_ON_A + ["POLL a"], ("ACTIVE", "RUNNING", "A"), (1, 0), [0]),
    (RUNNING_ON_A + ["POLL p"], ("SUSPENDED", "-", "A"), (0, 0), [Reason.STOP_RESUME]),
    (RUNNING_ON_A + ["POLL e"], ("FAILED", "-", "A"), (0, 0), [Reason.ERROR]),
    (RUNNING_ON_A + ["POLL d"], ("ACTIVE", "UNKNOWN", "A"), (1, 0), [0]),
    (RUNNING_ON_A + ["POLL d", "POLL a"], ("ACTIVE", "RUNNING", "A"), (1, 0), [0]),
    # recover (OpenNebula 4.2): the administrator settles a pending step.
    (["deploy A", "recover success", "DEPLOY ok"], ("ACTIVE", "RUNNING", "A"), (1, 0), [0]),
    (["deploy A", "recover failure"], ("FAILED", "-", "A"), (0, 0), [Reason.ERROR]),
    (
        ["deploy A", "TRANSFER ok", "recover success"],
        ("ACTIVE", "RUNNING", "A"),
        (1, 0),
        [0],
    ),
    (
        RUNNING_ON_A + ["migrate B", "recover failure"],
        ("ACTIVE", "RUNNING", "A"),
        (1, 0),
        [Reason.USER, Reason.ERROR, 0],
    ),
    (
        RUNNING_ON_A + ["shutdown", "recover success", "recover success"],
        ("DONE", "-", "A"),
        (0, 0),
        [0],
    ),
]


@pytest.mark.parametrize(
    "script,where,running,reasons", TRANSITIONS, ids=[" / ".join(t[0]) for t in TRANSITIONS]
)
def test_transition(
    world: World,
    script: list[str],
    where: tuple[str, str, str],
    running: tuple[int, int],
    reasons: list[int],
) -> None:
    vid = world.new_vm()
    play(world, vid, script)
    assert world.where(vid) == where
    assert world.running_vms() == {"A": running[0], "B": running[1]}
    assert [record.reason for record in world.vm(vid).history] == reasons
    if any(step.startswith("recover") for step in script):
        # Requests the administrator settled by hand: their answers are stale.
        for leftover in world.pending():
            world.answer(leftover.split()[0], "ok")
        assert world.where(vid) == where
        assert world.running_vms() == {"A": running[0], "B": running[1]}
    assert world.pending() == []  # nothing left in flight: the state is stable
    cpu = {host.name: host.shares.cpu_usage for host in world.hosts}
    assert cpu == {"A": 100 * running[0], "B": 100 * running[1]}


def test_driver_timeout_is_the_drivers_own(world: World) -> None:
    """A request unanswered for less than the driver's timeout is still waited for."""
    vid = world.new_vm()
    play(world, vid, ["deploy A"])
    world.clock.advance(TIMEOUT - 1)
    world.turn()
    assert world.where(vid) == ("ACTIVE", "PROLOG", "A")
    world.clock.advance(2)
    world.turn()
    assert world.where(vid) == ("FAILED", "-", "A")
    assert "Timeout: no answer from the driver in 60 seconds" in world.vm_log(vid)


def test_recover_is_refused_outside_transient_states(world: World) -> None:
    vid = world.new_vm()
    assert world.dm.recover(vid, True).message == "Wrong state to perform action"  # PENDING
    play(world, vid, RUNNING_ON_A)
    assert world.dm.recover(vid, False).message == "Wrong state to perform action"
    assert world.dm.recover(99, True).message == "Virtual machine does not exist"
    assert world.where(vid) == ("ACTIVE", "RUNNING", "A")


def test_resume_on_another_host_moves_the_checkpoint_then_restores_there(world: World) -> None:
    vid = world.new_vm()
    play(world, vid, SUSPENDED_ON_A)
    world.clock.advance(50)
    play(world, vid, ["resumeon B"])
    # The checkpoint and images move from A's VM directory to B's, B alone is charged.
    assert world.transfers.scripts[-1] == [f"MV A:/vm/{vid}/images B:/vm/{vid}/images"]
    assert world.where(vid) == ("ACTIVE", "PROLOG_MIGRATE", "B")
    assert world.running_vms() == {"A": 0, "B": 1}
    world.clock.advance(7)
    play(world, vid, ["TRANSFER ok"])
    assert world.pending() == ["RESTORE B"]
    play(world, vid, ["RESTORE ok"])
    suspended, resumed = world.vm(vid).history
    assert (suspended.host_name, resumed.host_name, resumed.seq) == ("A", "B", 1)
    assert resumed.stime == resumed.pstime == suspended.etime + 50
    assert resumed.petime == resumed.rstime == resumed.stime + 7
    assert resumed.etime == 0
    assert "New VM state is PROLOG_MIGRATE" in world.vm_log(vid)


def test_resume_on_is_refused_unless_suspended(world: World) -> None:
    vid = world.new_vm()
    wrong = "Wrong state to perform action"
    assert world.dm.resume_on(vid, world.host("B").oid).message == wrong  # PENDING
    play(world, vid, RUNNING_ON_A)
    assert world.dm.resume_on(vid, world.host("B").oid).message == wrong
    play(world, vid, ["suspend", "SAVE ok"])
    assert world.dm.resume_on(vid, 99).message == "The host 99 does not exists"
    assert world.dm.resume_on(99, world.host("B").oid).message == "Virtual machine does not exist"
    assert world.where(vid) == ("SUSPENDED", "-", "A")
    assert len(world.vm(vid).history) == 1
    assert world.pending() == []


def test_late_answer_after_recover_is_ignored(world: World) -> None:
    vid = world.new_vm()
    play(world, vid, RUNNING_ON_A + ["stop", "recover failure"])
    assert world.where(vid) == ("ACTIVE", "RUNNING", "A")
    world.answer("SAVE", "ok")  # the driver's own answer, after the administrator's
    assert world.where(vid) == ("ACTIVE", "RUNNING", "A")
    assert "Ignoring stale SAVE answer from A" in world.vm_log(vid)


# -- stale answers (issue 11 item 2) ------------------------------------------------------

STALE = [
    # (script before the late poll's answer, letter it answers, (state, lcm, host))
    (["migrate B", "SAVE ok", "TRANSFER ok", "RESTORE ok"], "p", ("ACTIVE", "RUNNING", "B")),
    (["livemigrate B", "MIGRATE ok"], "e", ("ACTIVE", "RUNNING", "B")),
    (["migrate B"], "p", ("ACTIVE", "SAVE_MIGRATE", "B")),
    (["shutdown"], "d", ("ACTIVE", "SHUTDOWN", "A")),
    (["suspend", "SAVE ok", "resume", "RESTORE ok"], "p", ("ACTIVE", "RUNNING", "A")),
    (["stop"], "e", ("ACTIVE", "SAVE_STOP", "A")),
    (["livemigrate B", "MIGRATE fail"], "d", ("ACTIVE", "RUNNING", "A")),
]


def ask_late_poll(world: World, vid: int) -> Request:
    """Poll the VM the way the polling timer does, and keep the answer back."""
    world.hypervisor.hold_polls = True
    world.lcm.poll(world.vm(vid))
    world.turn()
    world.hypervisor.hold_polls = False
    late = world.hypervisor.pending.pop()
    assert late.kind == "POLL"
    return late


@pytest.mark.parametrize("script,letter,where", STALE, ids=[" / ".join(s[0]) for s in STALE])
def test_stale_poll_answer_is_ignored(
    world: World, script: list[str], letter: str, where: tuple[str, str, str]
) -> None:
    vid = world.new_vm()
    play(world, vid, RUNNING_ON_A)
    late = ask_late_poll(world, vid)
    play(world, vid, script)
    usage = world.vm(vid).memory
    late.deferred.callback({"STATE": letter, "USEDMEMORY": "7"})
    world.turn()
    assert world.where(vid) == where
    assert world.vm(vid).memory == usage  # nothing of the answer applied
    assert "Ignoring stale POLL answer from A (asked in RUNNING, record 0)" in world.vm_log(vid)


def test_fresh_poll_answer_is_applied(world: World) -> None:
    """The control of the table above: the same late answer, nothing happened since."""
    vid = world.new_vm()
    play(world, vid, RUNNING_ON_A)
    late = ask_late_poll(world, vid)
    late.deferred.callback({"STATE": "p", "USEDMEMORY": "7"})
    world.turn()
    assert world.where(vid) == ("SUSPENDED", "-", "A")
    assert world.vm(vid).memory == 7


def test_late_deploy_answer_after_restart_is_ignored(world: World) -> None:
    """1.4 restart re-sends DEPLOY; the first DEPLOY's failure must not fail the VM."""
    vid = world.new_vm()
    play(world, vid, ["deploy A", "TRANSFER ok"])
    world.lcm.restart(vid)
    world.turn()
    first = world.hypervisor.pending[0]
    assert [r.kind for r in world.hypervisor.pending] == ["DEPLOY", "DEPLOY"]
    world.hypervisor.pending.remove(first)
    first.deferred.errback(DriverError("DEPLOY failed"))  # the first DEPLOY fails, late
    world.answer("DEPLOY", "ok")
    assert world.where(vid) == ("ACTIVE", "RUNNING", "A")


def test_late_transfer_answer_after_finalize_is_ignored(world: World) -> None:
    vid = world.new_vm()
    play(world, vid, ["deploy A"])
    assert world.dm.finalize(vid).ok
    world.turn()
    world.answer("TRANSFER", "fail")
    assert world.where(vid) == ("DONE", "-", "A")
    assert world.vm(vid).state is VMState.DONE
    assert world.running_vms() == {"A": 0, "B": 0}


def test_polling_is_driven_by_the_clock(world: World) -> None:
    vid = world.new_vm()
    play(world, vid, RUNNING_ON_A)
    world.hypervisor.domains["A"] = "a"
    world.hypervisor.asked.clear()
    world.lcm.poll_due()
    world.turn()
    assert world.hypervisor.asked == ["POLL A"]
    world.clock.advance(5)
    world.lcm.poll_due()
    world.turn()
    assert world.hypervisor.asked == ["POLL A"]  # not due yet
    world.clock.advance(5)
    world.lcm.poll_due()
    world.turn()
    assert world.hypervisor.asked == ["POLL A", "POLL A"]
    assert world.vm(vid).lcm_state is LCMState.RUNNING


def test_polls_are_spread_over_the_interval_and_bounded(world: World) -> None:
    vids = [world.new_vm() for _ in range(40)]
    for vid in vids:
        play(world, vid, RUNNING_ON_A)
    world.lcm.polling.concurrency = 8
    world.hypervisor.hold_polls = True
    world.lcm.poll_due()
    world.turn()
    assert len(world.hypervisor.pending) == 1  # 40 VMs: one every 10 s / 40, not all at once
    under_way = []
    for _ in range(40):
        world.clock.advance(POLLING_INTERVAL / 40)
        world.turn()
        under_way.append(len(world.hypervisor.pending))
    assert max(under_way) == 8  # never more than MONITORING_CONCURRENCY at once
    for request in list(world.hypervisor.pending):
        world.hypervisor.pending.remove(request)
        request.deferred.callback({"STATE": "a"})
    world.turn()
    assert len(world.hypervisor.pending) == 8  # the next ones start as answers come
