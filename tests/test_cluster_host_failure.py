"""A host fails under running VMs on the namespace cluster (issue 11, item 11).

The daemon runs the shipped Xen plugins over ssh against the fake toolstack, with
``HOST_ERROR_THRESHOLD = 2``, the scheduler, and the 2.2-style ``HOST_HOOK`` on ERROR
running ``nebula-xr-host-error $HID -r``. The VMs' disk is a persistent image on the
shared directory (the NFS stand-in), so they can run again anywhere. A remote VM_HOOK
records, on the host itself, where each VM started.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.cluster.cluster import Cluster
from tests.oned import OneDaemon, wait_for
from tests.test_host_error import installed
from tests.test_tutorial import history
from tests.test_xen_cluster import RUNNING, add_cluster_hosts, start_daemon, xm_domains

ERROR_STATE, ERROR_REASON = 3, 1
SURVIVORS = ("node01", "node02")
HOSTILE_NAME = "ha; touch CANARY $(touch CANARY) `touch CANARY` '*'"


def start(tmp_path: Path, c: Cluster) -> tuple[OneDaemon, Path]:
    """The daemon with the host-error hook and a remote hook writing to ``hook_dir``."""
    hook_dir = c.shared_dir / "hooks-out"
    hook_dir.mkdir(exist_ok=True)
    for old in hook_dir.iterdir():
        old.unlink()
    script = c.shared_dir / "record-start"  # the same path on every host
    script.write_text(
        "#!/bin/sh\n"
        "vid=$1; shift\n"
        f'{{ hostname; printf "%s\\0" "$@"; }} > {hook_dir}/"$(hostname)-$vid"\n'
    )
    script.chmod(0o755)
    extra = (
        "HOST_ERROR_THRESHOLD = 2\n"
        f'HM_MAD = [ executable = "one_hm", ssh = "ssh -F {c.ssh_config}", timeout = 30 ]\n'
        f'HOST_HOOK = [ name = "error", on = "ERROR", command = "{installed("nebula-xr-host-error")}",'
        ' arguments = "$HID -r n", remote = "no" ]\n'
        f'VM_HOOK = [ name = "where", on = "RUNNING", command = "{script}",'
        ' arguments = "$VMID $NAME", remote = "yes" ]\n'
    )
    scheduler = 'SCHEDULER = [ plugin = "sched_rank", interval = 0.5 ]'
    one = start_daemon(
        tmp_path, c, str(c.shared_dir / "one"), timeout=8, extra=extra, scheduler=scheduler
    )
    return one, hook_dir


def run_two_vms_on_node03(one: OneDaemon, c: Cluster, tmp_path: Path) -> None:
    """Two VMs placed by the scheduler on node03 (the only enabled host then)."""
    add_cluster_hosts(one, "tm_nfs")
    for hid in (0, 1):
        assert one.call("one.hostenable", hid, False) == [True]
    disk = c.shared_dir / "ha-disk.img"
    disk.write_bytes(b"persistent disk\n" * 64)
    for vid, name in enumerate(("ha0", HOSTILE_NAME)):
        template = (
            f'NAME = "{name}"\nCPU = 0.5\nMEMORY = 64\nOS = [ kernel = /boot/vmlinuz ]\n'
            f"DISK = [ source = {disk}, clone = no, target = sda1, readonly = yes ]\n"
        )
        assert one.call("one.vmallocate", template) == [True, vid]
    for vid in (0, 1):
        wait_for(lambda vid=vid: one.vm_state(vid) == RUNNING, timeout=30, what=f"VM {vid}")
    assert xm_domains(c, "node03") == {"one-0", "one-1"}
    for hid in (0, 1):
        assert one.call("one.hostenable", hid, True) == [True]
    for hid in (0, 1):
        wait_for(lambda hid=hid: host_state(one, hid) == 2, timeout=20, what="monitored")


def host_state(one: OneDaemon, hid: int) -> int:
    with one.db() as db:
        return db.execute("SELECT state FROM host_pool WHERE oid = ?", (hid,)).fetchone()[0]


def placed_once(c: Cluster) -> dict[str, str]:
    """Domain → the one surviving host running it; fails if a domain runs twice."""
    where: dict[str, str] = {}
    for host in SURVIVORS:
        for domain in xm_domains(c, host):
            assert domain not in where, f"{domain} runs on {where[domain]} and {host}"
            where[domain] = host
    return where


def wait_running_elsewhere(one: OneDaemon, c: Cluster) -> dict[str, str]:
    deadline = time.monotonic() + 60
    while True:
        where = placed_once(c)  # checked at every step: never twice
        states = [one.vm_state(vid) for vid in (0, 1)]
        if states == [RUNNING, RUNNING] and set(where) == {"one-0", "one-1"}:
            return where
        assert time.monotonic() < deadline, f"VMs not running again: {states} {where}"
        time.sleep(0.1)


def vm_log(tmp_path: Path, vid: int) -> str:
    return (tmp_path / "var" / str(vid) / "vm.log").read_text()


def test_vms_of_a_dead_host_run_again_on_another_host(fast_cluster: Cluster, tmp_path) -> None:
    c = fast_cluster
    one, hook_dir = start(tmp_path, c)
    try:
        run_two_vms_on_node03(one, c, tmp_path)
        # The remote hook ran on node03 itself, the hostile name as one argument.
        wait_for(lambda: (hook_dir / "node03-1").exists(), what="the remote hook on node03")
        recorded = (hook_dir / "node03-1").read_bytes().split(b"\n", 1)
        assert recorded == [b"node03", HOSTILE_NAME.encode() + b"\0"]
        assert (
            not list(Path(c.shared_dir).glob("**/CANARY"))
            and c.run("node03", "ls ~/CANARY").returncode != 0
        )

        killed = time.monotonic()
        c.kill_host("node03")  # power cut: the domains die with it
        wait_for(lambda: host_state(one, 2) == ERROR_STATE, timeout=30, what="node03 in ERROR")
        in_error = time.monotonic() - killed
        where = wait_running_elsewhere(one, c)
        print(
            f"\nhost failure: node03 in ERROR {in_error:.2f} s after the kill (threshold 2,"
            f" interval 1 s), both VMs running again {time.monotonic() - killed:.2f} s after it"
        )
        assert set(where.values()) <= set(SURVIVORS)
        for vid in (0, 1):
            records = history(one, vid)
            assert [r["host_name"] for r in records] == ["node03", where[f"one-{vid}"]]
            assert records[0]["reason"] == ERROR_REASON and records[0]["etime"] > 0
            assert "Leaving host node03: host error" in vm_log(tmp_path, vid)
            host = where[f"one-{vid}"]
            # The remote hook saw it start there too.
            wait_for(lambda vid=vid, host=host: (hook_dir / f"{host}-{vid}").exists())
        info = one.call("one.hostinfo", 2)[1]
        assert "ERROR=" in info and "node03" in info

        # node03 reboots (without its domains): monitored again, it is fenced: the
        # daemon makes sure the stale domains are gone before forgetting them.
        c.start_host("node03")
        wait_for(lambda: host_state(one, 2) == 2, timeout=30, what="node03 monitored again")
        for vid in (0, 1):
            wait_for(
                lambda vid=vid: (
                    f"Stale domain one-{vid} on node03 destroyed" in vm_log(tmp_path, vid)
                ),
                timeout=20,
            )
        assert xm_domains(c, "node03") == set()
        assert placed_once(c) == where
        assert "ERROR=" not in one.call("one.hostinfo", 2)[1]
    finally:
        one.stop()


def test_a_failed_host_that_still_answers_has_its_domains_destroyed_first(
    fast_cluster: Cluster, tmp_path
) -> None:
    """node03's monitoring breaks (its toolstack's ``info`` fails) while its domains
    still run and ssh still works: each domain is destroyed on node03 before the VM is
    created on another host."""
    c = fast_cluster
    one, _hooks = start(tmp_path, c)
    try:
        run_two_vms_on_node03(one, c, tmp_path)
        c.inject_fault("node03", "info", message="xend is not responding")
        wait_for(lambda: host_state(one, 2) == ERROR_STATE, timeout=30, what="node03 in ERROR")
        assert "xend is not responding" in one.call("one.hostinfo", 2)[1]
        where = wait_running_elsewhere(one, c)
        assert xm_domains(c, "node03") == set()
        destroyed = {
            cmd["argv"][-1]: cmd["time"]
            for cmd in c.xen_commands("node03")
            if "destroy" in cmd["argv"][:3] and cmd["rc"] == 0
        }
        assert set(destroyed) == {"one-0", "one-1"}
        for domain, host in where.items():
            vid = domain.removeprefix("one-")
            (created,) = [
                cmd["time"]
                for cmd in c.xen_commands(host)
                if "create" in cmd["argv"][:3] and f"/{vid}/images/" in cmd["argv"][-1]
            ]
            assert created > destroyed[domain], (domain, host)
        for vid in (0, 1):
            (first, _second) = history(one, vid)
            assert first["host_name"] == "node03" and first["reason"] == ERROR_REASON
    finally:
        one.stop()
