"""SIGKILL, SIGTERM or SIGINT of the real daemon in every transient state, then a restart
(issue 11 item 11).

The dummy drivers take an hour (DELAY) for the step the VMs must be caught in, so each
VM waits in its transient state, written in one.db, when the daemon is killed. The
daemon then starts again with instant drivers and every VM must reach the stable state
its interrupted request leads to, within two polling intervals, with the host shares
that state implies. Also: ``one.vm.recover`` and ``onevm recover`` on a real daemon, and
stops during live and cold migrations on the namespace cluster (fake toolstack faults,
then real QEMU guests whose console shows they never rebooted).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sysconfig
import time
from pathlib import Path

import pytest

from nebula_xr.model import LCMState, VMState
from tests.cluster.cluster import Cluster, netns_pids
from tests.oned import OneDaemon, wait_for, write_conf
from tests.test_xen_cluster import (
    RUNNING,
    add_cluster_hosts,
    assert_never_rebooted,
    start_daemon,
    ticks,
    tutorial,
    xm_domains,
)

POLLING_INTERVAL = 5
SLOW = ", DELAY = 3600"
TEMPLATE = (
    "NAME = crash{n}\nCPU = 1\nMEMORY = 64\nOS = [ kernel = /k ]\n"
    "DISK = [ source = /i, target = sda ]\n"
)
L = LCMState


def configure(location: Path, *, slow_vmm: bool = False, slow_tm: bool = False) -> None:
    conf = write_conf(
        location, vmm_extra=SLOW if slow_vmm else "", tm_extra=SLOW if slow_tm else ""
    )
    text = conf.read_text().replace(
        "VM_POLLING_INTERVAL = 1", f"VM_POLLING_INTERVAL = {POLLING_INTERVAL}"
    )
    conf.write_text(text)


def ok(one: OneDaemon, method: str, *args: object) -> object:
    """A call that must succeed: 1.4 methods with oneadmin's session, 1.2 ones as 1.2 sends."""
    reply = one.call14(method, *args) if method.count(".") > 1 else one.call(method, *args)
    assert reply[0] is True, (method, args, reply)
    return reply[1] if len(reply) > 1 else None


def stored(one: OneDaemon, vid: int) -> tuple[int, int]:
    """(state, lcm_state) as committed to one.db."""
    with one.db() as db:
        return db.execute("SELECT state, lcm_state FROM vm_pool WHERE oid = ?", (vid,)).fetchone()


def wait_stored(one: OneDaemon, wanted: dict[int, tuple[int, int]]) -> None:
    wait_for(
        lambda: all(stored(one, vid) == state for vid, state in wanted.items()),
        timeout=30,
        what=f"states {wanted}",
    )


def active(lcm: LCMState) -> tuple[int, int]:
    return (int(VMState.ACTIVE), int(lcm))


def in_flight(one: OneDaemon) -> int:
    """VMs in a transient state in one.db: caught mid-operation by a kill now."""
    stable = (int(L.RUNNING), int(L.UNKNOWN))
    with one.db() as db:
        states = db.execute("SELECT state, lcm_state FROM vm_pool").fetchall()
    return sum(1 for state, lcm in states if state == int(VMState.ACTIVE) and lcm not in stable)


def kill(one: OneDaemon, sig: signal.Signals = signal.SIGKILL) -> None:
    """Stop the daemon with ``sig``; a graceful stop must end the process promptly and
    with status 0 even while driver operations are outstanding."""
    assert one.process is not None
    one.process.send_signal(sig)
    code = one.process.wait(10)
    one.stop()
    assert code == (-signal.SIGKILL if sig is signal.SIGKILL else 0)


@pytest.mark.parametrize(
    "sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda sig: sig.name
)
def test_stop_in_every_transient_state(tmp_path: Path, sig: signal.Signals) -> None:
    configure(tmp_path)
    one = OneDaemon(tmp_path).start()
    h1 = ok(one, "one.host.allocate", "h1", "im_xen", "vmm_xen", "tm_nfs")
    h2 = ok(one, "one.host.allocate", "h2", "im_xen", "vmm_xen", "tm_nfs")
    vids = [ok(one, "one.vm.allocate", TEMPLATE.format(n=n)) for n in range(13)]
    for vid in vids[:11]:
        ok(one, "one.vm.deploy", vid, h1)
    wait_stored(one, {vid: active(L.RUNNING) for vid in vids[:11]})
    ok(one, "one.vm.action", "suspend", vids[9])
    ok(one, "one.vm.action", "stop", vids[10])
    wait_stored(one, {vids[9]: (int(VMState.SUSPENDED), 0), vids[10]: (int(VMState.STOPPED), 0)})
    assert one.stop() == 0

    # Every VMM step takes an hour: caught in BOOT, SHUTDOWN, SAVE_*, CANCEL, MIGRATE.
    configure(tmp_path, slow_vmm=True)
    one = OneDaemon(tmp_path).start()
    ok(one, "one.vm.action", "shutdown", vids[0])
    ok(one, "one.vm.action", "stop", vids[1])
    ok(one, "one.vm.action", "suspend", vids[2])
    ok(one, "one.vm.action", "cancel", vids[3])
    ok(one, "one.vm.migrate", vids[4], h2, False)
    ok(one, "one.vm.migrate", vids[5], h2, True)
    ok(one, "one.vm.action", "resume", vids[9])
    ok(one, "one.vm.deploy", vids[11], h1)
    caught = {
        vids[0]: L.SHUTDOWN,
        vids[1]: L.SAVE_STOP,
        vids[2]: L.SAVE_SUSPEND,
        vids[3]: L.CANCEL,
        vids[4]: L.SAVE_MIGRATE,
        vids[5]: L.MIGRATE,
        vids[9]: L.BOOT,
        vids[11]: L.BOOT,
    }
    wait_stored(one, {vid: active(lcm) for vid, lcm in caught.items()})
    assert in_flight(one) == 8
    kill(one, sig)

    # Every transfer takes an hour: caught in PROLOG*, EPILOG*. The VMs killed above
    # are settled first by this daemon (its VMM is instant).
    configure(tmp_path, slow_tm=True)
    one = OneDaemon(tmp_path).start()
    wait_stored(
        one,
        {
            vids[0]: active(L.EPILOG),
            vids[1]: active(L.EPILOG_STOP),
            vids[4]: active(L.PROLOG_MIGRATE),
            vids[5]: active(L.RUNNING),
            vids[2]: (int(VMState.SUSPENDED), 0),
            vids[3]: (int(VMState.DONE), 0),
            vids[9]: active(L.RUNNING),
            vids[11]: active(L.RUNNING),
        },
    )
    assert in_flight(one) == 3  # killed again, in the transfers the restart started
    kill(one, sig)
    configure(tmp_path, slow_tm=True)
    one = OneDaemon(tmp_path).start()
    ok(one, "one.vm.action", "shutdown", vids[6])
    ok(one, "one.vm.action", "stop", vids[7])
    ok(one, "one.vm.migrate", vids[8], h2, False)
    ok(one, "one.vm.action", "resume", vids[10])
    ok(one, "one.vm.deploy", vids[10], h2)
    ok(one, "one.vm.deploy", vids[12], h1)
    caught2 = {
        vids[6]: L.EPILOG,
        vids[7]: L.EPILOG_STOP,
        vids[8]: L.PROLOG_MIGRATE,
        vids[10]: L.PROLOG_RESUME,
        vids[12]: L.PROLOG,
    }
    wait_stored(one, {vid: active(lcm) for vid, lcm in caught2.items()})
    assert in_flight(one) == 8  # these five, and the three still in their transfers
    killed_in = {lcm for lcm in (*caught.values(), *caught2.values())}
    kill(one, sig)

    configure(tmp_path)
    one = OneDaemon(tmp_path).start()
    done, stopped, suspended = (
        (int(VMState.DONE), 0),
        (int(VMState.STOPPED), 0),
        (
            int(VMState.SUSPENDED),
            0,
        ),
    )
    expected = {
        vids[0]: done,
        vids[1]: stopped,
        vids[2]: suspended,
        vids[3]: done,
        vids[4]: active(L.RUNNING),
        vids[5]: active(L.RUNNING),
        vids[6]: done,
        vids[7]: stopped,
        vids[8]: active(L.RUNNING),
        vids[9]: active(L.RUNNING),
        vids[10]: active(L.RUNNING),
        vids[11]: active(L.RUNNING),
        vids[12]: active(L.RUNNING),
    }
    # Within two polling intervals of the start (wait_for's deadline).
    started = time.monotonic()
    wait_for(
        lambda: all(stored(one, vid) == state for vid, state in expected.items()),
        timeout=2 * POLLING_INTERVAL,
        what="every VM stable",
    )
    took = time.monotonic() - started
    print(f"19 VMs caught mid-operation in 3 {sig.name}s: all stable {took:.2f} s")
    assert in_flight(one) == 0
    with one.db() as db:
        assert db.execute("SELECT COUNT(*) FROM vm_pool").fetchone() == (13,)  # nothing lost
        hosts = dict(db.execute("SELECT hid, running_vms FROM host_shares").fetchall())
        cpu = dict(db.execute("SELECT hid, cpu_usage FROM host_shares").fetchall())
        where = dict(
            db.execute(
                "SELECT h.vid, h.hid FROM history h WHERE h.seq = "
                "(SELECT MAX(seq) FROM history WHERE vid = h.vid)"
            ).fetchall()
        )
    running = [vid for vid, state in expected.items() if state == active(L.RUNNING)]
    assert {vid: where[vid] for vid in running} == {
        vids[4]: h2,
        vids[5]: h2,
        vids[8]: h2,
        vids[9]: h1,
        vids[10]: h2,
        vids[11]: h1,
        vids[12]: h1,
    }
    assert hosts == {h1: 3, h2: 4}
    assert cpu == {h1: 300, h2: 400}
    assert killed_in == {
        L.PROLOG, L.BOOT, L.MIGRATE, L.SAVE_STOP, L.SAVE_SUSPEND, L.SAVE_MIGRATE,
        L.PROLOG_MIGRATE, L.PROLOG_RESUME, L.EPILOG_STOP, L.EPILOG, L.SHUTDOWN, L.CANCEL,
    }  # fmt: skip
    log = (tmp_path / "var" / str(vids[5]) / "vm.log").read_text()
    assert "Found in MIGRATE at start-up" in log
    assert one.stop() == 0


SCRIPTS = Path(sysconfig.get_path("scripts"))


def onevm(one: OneDaemon, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "ONE_LOCATION"}
    env["ONE_XMLRPC"] = one.url
    env["ONE_AUTH"] = str(one.one_auth)
    return subprocess.run(
        [str(SCRIPTS / "onevm"), *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_recover_settles_a_stuck_vm_by_hand(tmp_path: Path) -> None:
    configure(tmp_path, slow_tm=True)
    one = OneDaemon(tmp_path).start()
    hid = ok(one, "one.host.allocate", "h1", "im_xen", "vmm_xen", "tm_nfs")
    first, second = (ok(one, "one.vm.allocate", TEMPLATE.format(n=n)) for n in range(2))
    for vid in (first, second):
        ok(one, "one.vm.deploy", vid, hid)
    wait_stored(one, {first: active(L.PROLOG), second: active(L.PROLOG)})

    done = onevm(one, "recover", "--failure", str(first))
    assert (done.returncode, done.stdout, done.stderr) == (0, "", ""), done
    assert ok(one, "one.vm.recover", second, True) is None
    wait_stored(one, {first: (int(VMState.FAILED), 0), second: active(L.RUNNING)})
    assert one.call14("one.vm.recover", second, False) == [False, "Wrong state to perform action"]
    assert one.call14("one.vm.recover", 99, True) == [
        False,
        "The virtual machine 99 does not exists",
    ]
    unsaid = onevm(one, "recover", str(second))
    assert unsaid.returncode == 2 and "--success or --failure" in unsaid.stderr
    refused = onevm(one, "recover", "--success", str(second))
    assert refused.returncode == 255
    assert refused.stderr == "Error: Wrong state to perform action\n"
    log = (tmp_path / "var" / str(first) / "vm.log").read_text()
    assert "Recovering VM from PROLOG as a failure" in log
    assert one.stop() == 0


# -- on the namespace cluster: the domain ends on exactly one host ------------------------


def _stored_history(one: OneDaemon, vid: int) -> list[tuple[str, int]]:
    with one.db() as db:
        return db.execute(
            "SELECT host_name, reason FROM history WHERE vid = ? ORDER BY seq", (vid,)
        ).fetchall()


def _cluster_vm(c: Cluster, tmp_path: Path) -> OneDaemon:
    one = start_daemon(tmp_path, c, str(c.shared_dir / "one"), timeout=60)
    add_cluster_hosts(one, "tm_nfs")
    assert one.call("one.vmallocate", tutorial(tmp_path / "disk.img")) == [True, 0]
    assert one.call("one.vmdeploy", 0, 0) == [True]
    wait_stored(one, {0: active(L.RUNNING)})
    return one


def test_sigkill_during_a_live_migration_on_a_cluster(fast_cluster: Cluster, tmp_path) -> None:
    """The migration hangs on the source when the daemon dies: it is rolled back, the
    domain stays on node01 alone, and the daemon's records say so."""
    c = fast_cluster
    one = _cluster_vm(c, tmp_path)
    try:
        c.inject_fault("node01", "migrate", action="hang", times=1)
        assert one.call("one.vmmigrate", 0, 1, True) == [True]
        wait_stored(one, {0: active(L.MIGRATE)})
        kill(one)
        one = OneDaemon(tmp_path).start()
        wait_stored(one, {0: active(L.RUNNING)})
        assert _stored_history(one, 0) == [("node01", 3), ("node02", 1), ("node01", 0)]
        assert xm_domains(c, "node01") == {"one-0"} and xm_domains(c, "node02") == set()
        with one.db() as db:
            shares = db.execute("SELECT hid, running_vms FROM host_shares ORDER BY hid")
            assert shares.fetchall() == [(0, 1), (1, 0), (2, 0)]
        assert "rolled back, running on the source" in (tmp_path / "var/0/vm.log").read_text()
    finally:
        one.stop()


def test_sigkill_during_a_cold_migration_on_a_cluster(fast_cluster: Cluster, tmp_path) -> None:
    """The save hangs on the source when the daemon dies: the restarted daemon saves
    again and finishes the migration; the domain runs on node02 alone."""
    c = fast_cluster
    one = _cluster_vm(c, tmp_path)
    try:
        c.inject_fault("node01", "save", action="hang", times=1)
        assert one.call("one.vmmigrate", 0, 1, False) == [True]
        wait_stored(one, {0: active(L.SAVE_MIGRATE)})
        kill(one)
        one = OneDaemon(tmp_path).start()
        wait_stored(one, {0: active(L.RUNNING)})
        assert _stored_history(one, 0) == [("node01", 3), ("node02", 0)]
        assert xm_domains(c, "node01") == set() and xm_domains(c, "node02") == {"one-0"}
        with one.db() as db:
            shares = db.execute("SELECT hid, running_vms FROM host_shares ORDER BY hid")
            assert shares.fetchall() == [(0, 0), (1, 1), (2, 0)]
        assert "saving it again" in (tmp_path / "var/0/vm.log").read_text()
    finally:
        one.stop()


# -- with a real QEMU guest: the kill lands while the toolstack holds the operation -------

#: Seconds the toolstack holds the operation before doing it: the daemon is stopped in
#: this window, and the operation then completes while no daemon runs.
HOLD = 3.0
#: Long enough for a restarted daemon (under load) to see the migration in flight.
ORPHAN_HOLD = 20.0
GUEST = "NAME = guest\nCPU = 1\nMEMORY = 128\nOS = [ kernel = /boot/vmlinuz ]\n"


def toolstack_busy(c: Cluster, host: str, command: str) -> bool:
    """An ``xm <command>`` process is running on ``host`` now."""
    for pid in netns_pids(host):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        names = [os.path.basename(arg).decode(errors="replace") for arg in argv[:4]]
        if "xm" in names and names[names.index("xm") + 1 :][:1] == [command]:
            return True
    return False


def finished(c: Cluster, host: str, command: str) -> dict | None:
    """The log entry of the last ``xm <command>`` that ended on ``host``."""
    entries = [entry for entry in c.xen_commands(host) if entry["argv"][1:2] == [command]]
    return entries[-1] if entries else None


def shares(one: OneDaemon) -> list[tuple[int, int, int]]:
    with one.db() as db:
        rows = db.execute("SELECT hid, running_vms, cpu_usage FROM host_shares ORDER BY hid")
        return rows.fetchall()


def _qemu_guest(c: Cluster, tmp_path: Path) -> OneDaemon:
    """The daemon, the three hosts, and a booted guest (VM 0) on node01."""
    one = start_daemon(tmp_path, c, str(c.shared_dir / "one"), timeout=60)
    add_cluster_hosts(one, "tm_nfs")
    assert one.call("one.vmallocate", GUEST) == [True, 0]
    assert one.call("one.vmdeploy", 0, 0) == [True]
    wait_stored(one, {0: active(L.RUNNING)})
    wait_for(lambda: len(ticks(c.console_log("node01", "one-0"))) >= 3, timeout=60, what="boot")
    return one


def _settled_on(one: OneDaemon, c: Cluster, host: str, hid: int) -> None:
    """The domain runs on ``host`` alone, the daemon says so, and the guest never rebooted."""
    started = time.monotonic()
    wait_for(lambda: one.vm_state(0) == RUNNING, timeout=2 * POLLING_INTERVAL, what="RUNNING")
    settled = time.monotonic() - started
    domains = {h: xm_domains(c, h) for h in c.hosts}
    assert domains == {h: {"one-0"} if h == host else set() for h in c.hosts}
    info = one.call14("one.vm.info", 0)
    assert info[0] is True, info
    assert f"<HOSTNAME>{host}</HOSTNAME>" in info[1] and "<LCM_STATE>3</LCM_STATE>" in info[1]
    assert shares(one) == [(h, int(h == hid), 100 * (h == hid)) for h in range(3)]
    before = assert_never_rebooted(c, "one-0")
    wait_for(lambda: assert_never_rebooted(c, "one-0") > before + 3, timeout=20, what="ticks")
    print(f"settled {settled:.2f} s after the restart")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=lambda sig: sig.name)
def test_stop_during_a_live_migration_of_a_qemu_guest(
    qemu_cluster: Cluster, tmp_path: Path, sig: signal.Signals
) -> None:
    """The daemon stops while `xm migrate -l` runs; the migration completes without it.
    The restarted daemon finds the guest on node02 alone and records it there."""
    c = qemu_cluster
    one = _qemu_guest(c, tmp_path)
    try:
        c.inject_fault("node01", "migrate", action="delay", seconds=HOLD, times=1)
        assert one.call("one.vmmigrate", 0, 1, True) == [True]
        wait_stored(one, {0: active(L.MIGRATE)})
        wait_for(lambda: toolstack_busy(c, "node01", "migrate"), what="xm migrate on node01")
        kill(one, sig)
        assert toolstack_busy(c, "node01", "migrate"), "the kill came after the migration"
        migration = wait_for(lambda: finished(c, "node01", "migrate"), timeout=60)
        assert migration["rc"] == 0, migration
        one = OneDaemon(tmp_path).start()
        _settled_on(one, c, "node02", 1)
        assert _stored_history(one, 0) == [("node01", 3), ("node02", 0)]
        log = (tmp_path / "var/0/vm.log").read_text()
        assert "Found in MIGRATE at start-up; domain running on node02" in log
        stats = migration["migration"]
        print(
            f"QEMU live migration without a daemon: {migration['seconds']:.2f} s "
            f"(held {HOLD} s), total {stats['total_time_ms']} ms, "
            f"downtime {stats['downtime_ms']} ms"
        )
    finally:
        one.stop()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=lambda sig: sig.name)
def test_stop_during_a_cold_migration_of_a_qemu_guest(
    qemu_cluster: Cluster, tmp_path: Path, sig: signal.Signals
) -> None:
    """The daemon stops while `xm save` runs for a cold migration; the save completes
    without it. The restarted daemon moves the checkpoint and restores it on node02."""
    c = qemu_cluster
    one = _qemu_guest(c, tmp_path)
    try:
        c.inject_fault("node01", "save", action="delay", seconds=HOLD, times=1)
        assert one.call("one.vmmigrate", 0, 1, False) == [True]
        wait_stored(one, {0: active(L.SAVE_MIGRATE)})
        wait_for(lambda: toolstack_busy(c, "node01", "save"), what="xm save on node01")
        kill(one, sig)
        assert toolstack_busy(c, "node01", "save"), "the kill came after the save"
        save = wait_for(lambda: finished(c, "node01", "save"), timeout=60)
        assert save["rc"] == 0, save
        assert xm_domains(c, "node01") == set()
        one = OneDaemon(tmp_path).start()
        _settled_on(one, c, "node02", 1)
        assert _stored_history(one, 0) == [("node01", 3), ("node02", 0)]
        log = (tmp_path / "var/0/vm.log").read_text()
        assert "Found in SAVE_MIGRATE at start-up; domain gone: the save completed" in log
        restore = finished(c, "node02", "restore")
        assert restore is not None and restore["rc"] == 0
        print(
            f"QEMU save without a daemon: {save['seconds']:.2f} s (held {HOLD} s), "
            f"restore by the restarted daemon {restore['seconds']:.2f} s"
        )
    finally:
        one.stop()


def test_restart_while_the_orphaned_live_migration_still_runs(
    qemu_cluster: Cluster, tmp_path: Path
) -> None:
    """The daemon is killed during `xm migrate -l` and restarted before the migration
    ends: node01 shows the domain as migrating-one-0, so the VM stays in MIGRATE (no roll
    back to node01) until the migration completes, then it is recorded on node02."""
    c = qemu_cluster
    one = _qemu_guest(c, tmp_path)
    log = tmp_path / "var/0/vm.log"
    try:
        c.inject_fault("node01", "migrate-send", action="delay", seconds=ORPHAN_HOLD, times=1)
        assert one.call("one.vmmigrate", 0, 1, True) == [True]
        wait_stored(one, {0: active(L.MIGRATE)})
        wait_for(lambda: xm_domains(c, "node01") == {"migrating-one-0"}, what="migrating-one-0")
        kill(one)
        one = OneDaemon(tmp_path).start()
        wait_for(
            lambda: "the migration still runs, waiting" in log.read_text(),
            timeout=ORPHAN_HOLD,
            what="the restarted daemon waiting for the migration",
        )
        assert wait_for(lambda: finished(c, "node01", "migrate"), timeout=60)["rc"] == 0
        _settled_on(one, c, "node02", 1)
        text = log.read_text()
        assert "the migration completed" in text and "rolled back" not in text
        assert _stored_history(one, 0)[-1] == ("node02", 0)
    finally:
        one.stop()
