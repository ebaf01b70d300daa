"""Start-up reconciliation (issue 11 item 1) on a task.Clock with fake drivers.

Each row brings a VM to a transient state, kills the daemon there (its driver requests
are lost; everything it acknowledged is in one.db), says what the hosts report when the
new daemon asks, starts the new daemon with every driver step succeeding, and checks
the stable state it reaches, the driver requests it made and the host shares.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nebula_xr.model import History, LCMState, VMState
from tests.fake.lifecycle import POLLING_INTERVAL, TIMEOUT, World
from tests.test_lifecycle import RUNNING_ON_A, SUSPENDED_ON_A, play

GONE = {}  # no host reports the domain
ON_A, ON_B = {"A": "a"}, {"B": "a"}

CRASHES = [
    # (id, script to the crash, domains at restart, unreachable hosts,
    #  requests made after the restart, (state, lcm, host), running VMs on A and B)
    ("PROLOG", ["deploy A"], GONE, (), ["TRANSFER A", "DEPLOY A"], ("ACTIVE", "RUNNING", "A"), (1, 0)),
    ("BOOT running", ["deploy A", "TRANSFER ok"], ON_A, (), ["POLL A"], ("ACTIVE", "RUNNING", "A"), (1, 0)),
    ("BOOT gone", ["deploy A", "TRANSFER ok"], GONE, (), ["POLL A", "DEPLOY A"], ("ACTIVE", "RUNNING", "A"), (1, 0)),
    ("BOOT crashed", ["deploy A", "TRANSFER ok"], {"A": "e"}, (), ["POLL A"], ("FAILED", "-", "A"), (0, 0)),
    ("BOOT unreachable", ["deploy A", "TRANSFER ok"], GONE, ("A",), ["POLL A"], ("ACTIVE", "UNKNOWN", "A"), (1, 0)),
    ("BOOT resume gone", RUNNING_ON_A + ["suspend", "SAVE ok", "resume"], GONE, (), ["POLL A", "RESTORE A"], ("ACTIVE", "RUNNING", "A"), (1, 0)),
    ("MIGRATE on target", RUNNING_ON_A + ["livemigrate B"], ON_B, (), ["POLL B", "POLL A"], ("ACTIVE", "RUNNING", "B"), (0, 1)),
    ("MIGRATE on source", RUNNING_ON_A + ["livemigrate B"], ON_A, (), ["POLL B", "POLL A", "POLL A"], ("ACTIVE", "RUNNING", "A"), (1, 0)),
    ("MIGRATE nowhere", RUNNING_ON_A + ["livemigrate B"], GONE, ("B",), ["POLL B", "POLL A", "POLL A"], ("ACTIVE", "UNKNOWN", "A"), (1, 0)),
    ("SAVE_MIGRATE running", RUNNING_ON_A + ["migrate B"], ON_A, (), ["POLL A", "SAVE A", "TRANSFER B", "RESTORE B"], ("ACTIVE", "RUNNING", "B"), (0, 1)),
    ("SAVE_MIGRATE saved", RUNNING_ON_A + ["migrate B"], GONE, (), ["POLL A", "TRANSFER B", "RESTORE B"], ("ACTIVE", "RUNNING", "B"), (0, 1)),
    ("SAVE_MIGRATE unreachable", RUNNING_ON_A + ["migrate B"], GONE, ("A",), ["POLL A", "POLL A"], ("ACTIVE", "UNKNOWN", "A"), (1, 0)),
    ("PROLOG_MIGRATE", RUNNING_ON_A + ["migrate B", "SAVE ok"], GONE, (), ["TRANSFER B", "RESTORE B"], ("ACTIVE", "RUNNING", "B"), (0, 1)),
    ("PROLOG_MIGRATE of a resume", SUSPENDED_ON_A + ["resumeon B"], GONE, (), ["TRANSFER B", "RESTORE B"], ("ACTIVE", "RUNNING", "B"), (0, 1)),
    ("BOOT resume on B gone", SUSPENDED_ON_A + ["resumeon B", "TRANSFER ok"], GONE, (), ["POLL B", "RESTORE B"], ("ACTIVE", "RUNNING", "B"), (0, 1)),
    ("BOOT resume on B running", SUSPENDED_ON_A + ["resumeon B", "TRANSFER ok"], ON_B, (), ["POLL B"], ("ACTIVE", "RUNNING", "B"), (0, 1)),
    ("BOOT resume on B crashed", SUSPENDED_ON_A + ["resumeon B", "TRANSFER ok"], {"B": "e"}, (), ["POLL B"], ("FAILED", "-", "B"), (0, 0)),
    ("SAVE_STOP running", RUNNING_ON_A + ["stop"], ON_A, (), ["POLL A", "SAVE A", "TRANSFER front"], ("STOPPED", "-", "A"), (0, 0)),
    ("SAVE_STOP saved", RUNNING_ON_A + ["stop"], GONE, (), ["POLL A", "TRANSFER front"], ("STOPPED", "-", "A"), (0, 0)),
    ("EPILOG_STOP", RUNNING_ON_A + ["stop", "SAVE ok"], GONE, (), ["TRANSFER front"], ("STOPPED", "-", "A"), (0, 0)),
    ("PROLOG_RESUME", RUNNING_ON_A + ["stop", "SAVE ok", "TRANSFER ok", "resume", "deploy B"], GONE, (), ["TRANSFER B", "RESTORE B"], ("ACTIVE", "RUNNING", "B"), (0, 1)),
    ("SAVE_SUSPEND running", RUNNING_ON_A + ["suspend"], {"A": "p"}, (), ["POLL A", "SAVE A"], ("SUSPENDED", "-", "A"), (0, 0)),
    ("SAVE_SUSPEND saved", RUNNING_ON_A + ["suspend"], GONE, (), ["POLL A"], ("SUSPENDED", "-", "A"), (0, 0)),
    ("SAVE_SUSPEND unreachable", RUNNING_ON_A + ["suspend"], GONE, ("A",), ["POLL A", "POLL A"], ("ACTIVE", "UNKNOWN", "A"), (1, 0)),
    ("SHUTDOWN running", RUNNING_ON_A + ["shutdown"], ON_A, (), ["POLL A", "SHUTDOWN A", "TRANSFER A"], ("DONE", "-", "A"), (0, 0)),
    ("SHUTDOWN gone", RUNNING_ON_A + ["shutdown"], GONE, (), ["POLL A", "TRANSFER A"], ("DONE", "-", "A"), (0, 0)),
    ("SHUTDOWN unreachable", RUNNING_ON_A + ["shutdown"], GONE, ("A",), ["POLL A", "POLL A"], ("ACTIVE", "UNKNOWN", "A"), (1, 0)),
    ("EPILOG", RUNNING_ON_A + ["shutdown", "SHUTDOWN ok"], GONE, (), ["TRANSFER A"], ("DONE", "-", "A"), (0, 0)),
    ("CANCEL running", RUNNING_ON_A + ["cancel"], ON_A, (), ["POLL A", "CANCEL A"], ("DONE", "-", "A"), (0, 0)),
    ("CANCEL gone", RUNNING_ON_A + ["cancel"], GONE, (), ["POLL A"], ("DONE", "-", "A"), (0, 0)),
    ("CANCEL unreachable", RUNNING_ON_A + ["cancel"], GONE, ("A",), ["POLL A", "POLL A"], ("ACTIVE", "UNKNOWN", "A"), (1, 0)),
    ("RUNNING", RUNNING_ON_A, ON_A, (), ["POLL A"], ("ACTIVE", "RUNNING", "A"), (1, 0)),
    ("RUNNING gone", RUNNING_ON_A, GONE, (), ["POLL A"], ("ACTIVE", "UNKNOWN", "A"), (1, 0)),
]  # fmt: skip


@pytest.mark.parametrize(
    "name,script,domains,unreachable,asked,where,running",
    CRASHES,
    ids=[row[0] for row in CRASHES],
)
def test_crash_in_transient_state(
    tmp_path: Path,
    name: str,
    script: list[str],
    domains: dict[str, str],
    unreachable: tuple[str, ...],
    asked: list[str],
    where: tuple[str, str, str],
    running: tuple[int, int],
) -> None:
    before = World(tmp_path)
    before.add_hosts("A", "B")
    before.hypervisor.domains.update(A="a", B="a")
    vid = before.new_vm()
    play(before, vid, script)
    crashed_in = before.vm(vid).lcm_state
    assert crashed_in.name == name.split()[0]
    # A host's shares as a crash may leave them (the daemon that wrote them is gone).
    before.host("A").shares.running_vms = 18
    before.hosts.save(before.host("A"))

    world = before.restart()
    world.hypervisor.domains.update(domains)
    world.hypervisor.unreachable.update(unreachable)
    world.hypervisor.auto = world.transfers.auto = True
    world.reconciler.start()
    world.turn()
    try:
        assert world.where(vid) == where
        made = sorted(world.hypervisor.asked + world.transfers.asked)
        assert made == sorted(asked)
        assert world.running_vms() == {"A": running[0], "B": running[1]}
        cpu = {host.name: host.shares.cpu_usage for host in world.hosts}
        assert cpu == {"A": 100 * running[0], "B": 100 * running[1]}
        if crashed_in is not LCMState.RUNNING:
            assert f"Found in {crashed_in.name} at start-up" in world.vm_log(vid)
            if world.vm(vid).lcm_state is LCMState.UNKNOWN:
                assert "Domain state unknown" in world.vm_log(vid)
    finally:
        world.close()


def test_every_transient_state_is_covered() -> None:
    reached = {row[0].split()[0] for row in CRASHES}
    transient = {
        state.name
        for state in LCMState
        if state not in (LCMState.LCM_INIT, LCMState.RUNNING, LCMState.UNKNOWN)
        and state not in (LCMState.FAILURE, LCMState.DELETE)  # 1.4 states never persisted
    }
    assert transient <= reached


def test_restart_without_transient_vms_changes_nothing(tmp_path: Path) -> None:
    before = World(tmp_path)
    before.add_hosts("A")
    vids = [before.new_vm() for _ in range(3)]
    play(before, vids[0], ["hold"])
    world = before.restart()
    world.reconciler.start()
    world.turn()
    assert [world.vm(vid).state for vid in vids] == [
        VMState.HOLD,
        VMState.PENDING,
        VMState.PENDING,
    ]
    assert world.hypervisor.asked == [] and world.transfers.asked == []
    world.close()


def test_a_poll_that_never_answers_leaves_the_vm_unknown(tmp_path: Path) -> None:
    before = World(tmp_path)
    before.add_hosts("A", "B")
    vid = before.new_vm()
    play(before, vid, ["deploy A", "TRANSFER ok"])
    world = before.restart()
    world.hypervisor.hold_polls = True
    world.reconciler.start()
    world.turn()
    assert world.pending() == ["POLL A"]
    world.clock.advance(TIMEOUT + 1)
    world.turn()
    assert world.where(vid) == ("ACTIVE", "UNKNOWN", "A")
    assert "Timeout: no answer from the driver" in world.vm_log(vid)
    world.close()


def test_crash_between_acceptance_and_the_lcm_action(tmp_path: Path) -> None:
    """A deploy whose history record and ACTIVE state were written, the LCM's not."""
    before = World(tmp_path)
    before.add_hosts("A", "B")
    vid = before.new_vm()
    vm = before.vm(vid)
    host = before.host("A")
    before.vms.add_history(vm, History(vid, 0, "A", "/vm", host.oid, "vmm", "tm"))
    before.vms.transition(vm, state=VMState.ACTIVE)
    world = before.restart()
    world.hypervisor.auto = world.transfers.auto = True
    world.reconciler.start()
    world.turn()
    assert world.where(vid) == ("ACTIVE", "RUNNING", "A")
    assert world.running_vms() == {"A": 1, "B": 0}
    assert "Found in LCM_INIT at start-up" in world.vm_log(vid)
    world.close()


def test_a_deletion_cut_short_is_finished(tmp_path: Path) -> None:
    before = World(tmp_path)
    before.add_hosts("A")
    before.hypervisor.domains["A"] = "a"
    vid = before.new_vm()
    play(before, vid, RUNNING_ON_A)
    before.vms.transition(before.vm(vid), lcm=LCMState.DELETE)  # the DONE never written
    world = before.restart()
    world.reconciler.start()
    world.turn()
    assert world.where(vid) == ("DONE", "-", "A")
    assert world.running_vms() == {"A": 0}
    world.close()


def _restarted_mid_live_migration(tmp_path: Path) -> tuple[World, int]:
    """A restart while the stopped daemon's live migration from A to B still runs: A
    shows the domain being migrated away (``m``), B nothing yet."""
    before = World(tmp_path)
    before.add_hosts("A", "B")
    before.hypervisor.domains["A"] = "a"
    vid = before.new_vm()
    play(before, vid, RUNNING_ON_A + ["livemigrate B"])
    world = before.restart()
    world.hypervisor.domains.update(A="m", B="d")
    world.hypervisor.auto = world.transfers.auto = True
    world.reconciler.start()
    world.turn()
    return world, vid


def test_a_migration_still_running_is_waited_for(tmp_path: Path) -> None:
    world, vid = _restarted_mid_live_migration(tmp_path)
    try:
        assert world.where(vid) == ("ACTIVE", "MIGRATE", "B")
        assert sorted(world.hypervisor.asked) == ["POLL A", "POLL B"]
        world.clock.advance(POLLING_INTERVAL)
        world.turn()
        assert world.where(vid) == ("ACTIVE", "MIGRATE", "B")
        assert sorted(world.hypervisor.asked) == ["POLL A", "POLL A", "POLL B", "POLL B"]
        assert world.running_vms() == {"A": 1, "B": 1}  # both hosts, as during a migration
        world.hypervisor.domains.update(A="d", B="a")  # the migration completes
        world.clock.advance(POLLING_INTERVAL)
        world.turn()
        assert world.where(vid) == ("ACTIVE", "RUNNING", "B")
        assert world.running_vms() == {"A": 0, "B": 1}
        log = world.vm_log(vid)
        assert "migrating away on A: the migration still runs, waiting" in log
        assert "gone on A: the migration completed" in log
    finally:
        world.close()


def test_a_migration_that_never_ends_is_waited_for_until_the_driver_timeout(
    tmp_path: Path,
) -> None:
    world, vid = _restarted_mid_live_migration(tmp_path)
    try:
        waited = 0
        while waited + POLLING_INTERVAL < TIMEOUT:
            world.clock.advance(POLLING_INTERVAL)
            waited += POLLING_INTERVAL
            world.turn()
            assert world.where(vid) == ("ACTIVE", "MIGRATE", "B"), waited
        world.clock.advance(POLLING_INTERVAL)
        world.turn()
        assert world.where(vid) == ("ACTIVE", "RUNNING", "A")
        assert world.running_vms() == {"A": 1, "B": 0}
        assert "rolled back, running on the source" in world.vm_log(vid)
        asked = len(world.hypervisor.asked)
        world.clock.advance(10 * POLLING_INTERVAL)
        world.turn()
        assert len(world.hypervisor.asked) == asked  # the reconciler stopped polling
    finally:
        world.close()
