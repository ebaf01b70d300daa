"""The test-cluster infrastructure itself: fake hosts, ssh, directories, the fake Xen toolstack
in fast and qemu mode. Timings are printed (run with -s to see them)."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.cluster.cluster import Cluster

XENTOP_HEADER = (
    "      NAME  STATE   CPU(sec) CPU(%)     MEM(k) MEM(%)  MAXMEM(k) MAXMEM(%) VCPUS"
    " NETS NETTX(k) NETRX(k) VBDS   VBD_OO   VBD_RD   VBD_WR  VBD_RSECT  VBD_WSECT"
    " SSID"
)


def deployment(c: Cluster, vid: int, memory: int = 128, with_disk: bool = True) -> str:
    """Write a Xen deployment file as oned generates it (drivers.md §3.1) into the shared dir,
    with its disk there too (shared storage, so the domain can live-migrate)."""
    images = c.shared_dir / str(vid) / "images"
    images.mkdir(parents=True, exist_ok=True)
    disk = images / "disk.0"
    with open(disk, "wb") as f:
        f.truncate(16 << 20)
    disks = f"    'tap:aio:{disk},sda1,w',\n" if with_disk else ""
    path = images / "deployment.0"
    path.write_text(
        f"name = 'one-{vid}'\n#O CPU_CREDITS = 128\nmemory  = '{memory}'\n"
        "kernel = '/vmlinuz'\nramdisk = '/initrd.img'\nroot = '/dev/sda1'\n"
        f"disk = [\n{disks}]\n"
        "vif = [\n    'mac=00:ff:72:17:20:27',\n    'mac=00:03:0a:00:00:01,bridge=eth0',\n]\n"
        "vfb = ['type=vnc,vnclisten=127.0.0.1,vncdisplay=5']\n"
    )
    return str(path)


def xm(c: Cluster, host: str, args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """Run the Xen command as OpenNebula's driver does: ``sudo /usr/sbin/xm ...``."""
    proc = c.run(host, f"sudo /usr/sbin/xm {args}")
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def domains(c: Cluster, host: str) -> dict[str, list[str]]:
    """``xm list`` as {name: [id, mem, vcpus, state, time]}."""
    lines = xm(c, host, "list").stdout.splitlines()
    assert lines[0].split() == ["Name", "ID", "Mem", "VCPUs", "State", "Time(s)"]
    return {fields[0]: fields[1:] for fields in (line.split() for line in lines[1:])}


def xentop_last_sample(c: Cluster, host: str) -> dict[str, list[str]]:
    out = c.run(host, "sudo /usr/sbin/xentop -bi2 -d 0.3").stdout
    samples = out.split(XENTOP_HEADER + "\n")
    assert len(samples) == 3 and samples[0] == "", out
    rows = samples[2].replace("no limit", "no_limit").splitlines()
    return {fields[0]: fields[1:] for fields in (row.split() for row in rows)}


def wait_for(condition, timeout: float, interval: float = 0.1) -> float:
    """Seconds until ``condition()`` held; fails after ``timeout``."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{condition} not met in {timeout}s"
        time.sleep(interval)
    return time.monotonic() - started


# -- hosts -------------------------------------------------------------------------------------


def test_every_host_answers_ssh_by_name(cluster: Cluster) -> None:
    for host in cluster.hosts:
        proc = subprocess.run(
            [*cluster.ssh_command(host), "hostname"], capture_output=True, text=True, timeout=10
        )
        assert (proc.returncode, proc.stdout) == (0, f"{host}\n"), proc.stderr
    started = time.monotonic()
    for _ in range(10):
        cluster.run("node01", "true", check=True)
    print(f"\nssh command through the control master: {(time.monotonic() - started) * 100:.0f} ms")
    assert cluster.address("node02") == "10.77.0.12"


def test_hosts_are_isolated_but_share_the_shared_dir(fast_cluster: Cluster) -> None:
    c = fast_cluster
    marker = f"{c.vm_dir}/private-marker"
    c.run("node01", f"echo node01 > {marker}", check=True)
    assert (c.private_dir("node01") / "private-marker").read_text() == "node01\n"
    assert c.run("node02", f"cat {marker}").returncode != 0
    assert not Path(marker).exists()  # the root namespace sees an empty vm_dir

    c.run("node01", f"echo hello > {c.shared_dir}/note", check=True)
    assert c.run("node03", f"cat {c.shared_dir}/note", check=True).stdout == "hello\n"
    assert (c.shared_dir / "note").read_text() == "hello\n"

    # Each host has its own PID namespace: it sees only its own init, sshd and session.
    ps = c.run(
        "node02", "for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done", check=True
    ).stdout
    assert "nodes/node02/init.sh" in ps and "node01" not in ps and "node03" not in ps
    assert len(ps.splitlines()) < 10


def test_hosts_reach_each_other_by_name(cluster: Cluster) -> None:
    c = cluster
    assert c.run("node01", "ssh node02 hostname", check=True).stdout == "node02\n"
    c.run(
        "node01",
        f"head -c 1M /dev/urandom > {c.vm_dir}/blob && "
        f"scp -q {c.vm_dir}/blob node02:{c.vm_dir}/blob.copy",
        check=True,
    )
    assert (c.private_dir("node01") / "blob").read_bytes() == (
        c.private_dir("node02") / "blob.copy"
    ).read_bytes()


def test_killed_host_refuses_ssh_at_once_and_can_be_restarted(fast_cluster: Cluster) -> None:
    c = fast_cluster
    xm(c, "node03", f"create {deployment(c, 5)}")
    c.kill_host("node03")
    started = time.monotonic()
    proc = c.run("node03", "true")
    elapsed = time.monotonic() - started
    assert proc.returncode == 255 and "refused" in proc.stderr
    assert elapsed < 2
    print(f"\nssh to a dead host failed after {elapsed * 1000:.0f} ms")
    # Other hosts cannot reach it either (a live migration to it fails).
    assert c.run("node01", "ssh node03 true").returncode == 255
    c.start_host("node03")
    assert c.run("node03", "hostname", check=True).stdout == "node03\n"
    assert "one-5" not in domains(c, "node03")  # lost with the "power failure"


# -- fake Xen, fast mode -----------------------------------------------------------------------


def test_fast_mode_lifecycle(fast_cluster: Cluster) -> None:
    c = fast_cluster
    out = xm(c, "node01", f"create {deployment(c, 3)}").stdout
    assert out.splitlines()[-1] == "Started domain one-3"
    xm(c, "node01", "sched-cred -d one-3 -w 128")
    assert "one-3" in xm(c, "node01", "sched-credit -d one-3").stdout.split("\n")[1]
    listed = domains(c, "node01")
    assert listed["Domain-0"][0] == "0" and listed["one-3"][1:4] == ["128", "1", "-b----"]

    lines = xm(c, "node01", "info").stdout.splitlines()
    assert lines[0] == "host                   : node01"
    info = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    assert (info["nr_cpus"], info["cpu_mhz"], info["total_memory"]) == ("2", "2992", "4096")
    assert int(info["free_memory"]) == 4096 - 512 - 128

    top = xentop_last_sample(c, "node01")
    state, _, cpu_pct, mem_k = top["one-3"][:4]
    assert (state, mem_k) == ("--b---", "131072") and float(cpu_pct) > 0
    assert top["Domain-0"][5] == "no_limit"

    checkpoint = f"{c.shared_dir}/3/images/checkpoint"
    xm(c, "node01", f"save one-3 {checkpoint}")
    assert "one-3" not in domains(c, "node01")
    xm(c, "node02", f"restore {checkpoint}")
    assert "one-3" in domains(c, "node02")

    xm(c, "node02", "migrate -l one-3 node03")
    assert "one-3" not in domains(c, "node02") and "one-3" in domains(c, "node03")
    assert "one-3" in xentop_last_sample(c, "node03")

    # OpenNebula's SHUTDOWN: the guest halts within the delay, so the destroy fails.
    c.configure_xen("node03", shutdown_delay=0.3)
    xm(c, "node03", "shutdown one-3")
    assert "one-3" in domains(c, "node03")
    wait_for(lambda: "one-3" not in domains(c, "node03"), timeout=10)
    proc = xm(c, "node03", "destroy one-3", ok=False)
    assert (proc.returncode, proc.stderr) == (1, "Error: Domain 'one-3' does not exist.\n")
    assert [e["argv"][1] for e in c.xen_commands("node03")][:2] == [
        "migrate-receive",
        "migrate-finish",
    ]


def test_fast_mode_errors_and_injected_faults(fast_cluster: Cluster) -> None:
    c = fast_cluster
    proc = xm(c, "node01", f"create {deployment(c, 4, memory=4000)}", ok=False)
    assert proc.returncode == 1 and proc.stderr.startswith("Error: Not enough free memory")
    c.inject_fault(
        "node01", "create", message="Device 51713 (tap) could not be connected.", times=1
    )
    proc = xm(c, "node01", f"create {deployment(c, 4)}", ok=False)
    assert proc.stderr == "Error: Device 51713 (tap) could not be connected.\n"
    xm(c, "node01", f"create {deployment(c, 4)}")  # the fault was for one call only
    proc = xm(c, "node01", f"create {deployment(c, 4)}", ok=False)
    assert proc.stderr == "Error: VM name 'one-4' already in use by domain 1\n"

    c.inject_fault("node02", "migrate-receive", message="Receive failed")
    proc = xm(c, "node01", "migrate -l one-4 node02", ok=False)
    assert proc.stderr == "Error: node02: Receive failed\n"
    assert domains(c, "node01")["one-4"][3] == "-b----"  # still running at the source

    c.inject_fault("node01", "xentop", action="hang")
    with pytest.raises(subprocess.TimeoutExpired):
        c.run("node01", "xentop -bi2", timeout=1)
    proc = c.run("node01", "xl destroy one-9")
    assert (proc.returncode, proc.stderr) == (1, "one-9 is an invalid domain identifier (rc=-6)\n")


# -- fake Xen, qemu mode -----------------------------------------------------------------------


def ticks(log: str) -> list[int]:
    return [int(n) for n in re.findall(r"^tick (\d+)$", log, re.M)]


def assert_one_continuous_run(logs: list[str]) -> None:
    """The guest booted once and its counter has no gap: it was never restarted."""
    text = "".join(logs)
    assert text.count("GUEST-BOOTED") == 1, text[-500:]
    seen = ticks(text)
    assert seen == list(range(seen[0], seen[-1] + 1)), seen


def test_qemu_guest_survives_live_migration_and_save_restore(qemu_cluster: Cluster) -> None:
    c = qemu_cluster
    started = time.monotonic()
    xm(c, "node01", f"create {deployment(c, 7)}")
    boot = wait_for(lambda: "GUEST-BOOTED" in c.console_log("node01", "one-7"), timeout=60)
    wait_for(lambda: len(ticks(c.console_log("node01", "one-7"))) >= 3, timeout=10)
    print(
        f"\nguest boot (xm create to GUEST-BOOTED): {time.monotonic() - started:.1f} s"
        f" ({boot:.1f} s after create returned)"
    )
    top = xentop_last_sample(c, "node01")["one-7"]
    assert top[0] == "--b---" and int(top[3]) > 10_000  # a real RSS, in KiB
    proc = xm(c, "node02", f"create {c.shared_dir}/7/images/deployment.0", ok=False)
    assert "already in use" not in proc.stderr and "lock" in proc.stderr  # QEMU's image lock

    started = time.monotonic()
    xm(c, "node01", "migrate -l one-7 node02")
    wall = time.monotonic() - started
    migration = c.xen_commands("node01")[-1]["migration"]
    print(
        f"live migration node01 -> node02: {wall:.2f} s wall, QEMU total "
        f"{migration['total_time_ms']} ms, downtime {migration['downtime_ms']} ms"
    )
    assert "one-7" not in domains(c, "node01")
    assert domains(c, "node02")["one-7"][3] == "-b----"
    wait_for(lambda: len(ticks(c.console_log("node02", "one-7"))) >= 3, timeout=10)
    assert_one_continuous_run([c.console_log("node01", "one-7"), c.console_log("node02", "one-7")])

    checkpoint = f"{c.shared_dir}/7/images/checkpoint"
    xm(c, "node02", f"save one-7 {checkpoint}")
    save = c.xen_commands("node02")[-1]["save"]
    assert "one-7" not in domains(c, "node02")
    xm(c, "node03", f"restore {checkpoint}")
    restore = c.xen_commands("node03")[-1]["restore"]
    print(
        f"save: {save['seconds']:.2f} s ({Path(checkpoint).stat().st_size >> 20} MiB), "
        f"restore: {restore['seconds']:.2f} s"
    )
    wait_for(lambda: len(ticks(c.console_log("node03", "one-7"))) >= 3, timeout=10)
    assert_one_continuous_run([c.console_log(h, "one-7") for h in ("node01", "node02", "node03")])

    console = c.run("node03", "timeout 1 xm console one-7 < /dev/null")
    assert ticks(console.stdout), console

    started = time.monotonic()
    xm(c, "node03", "shutdown one-7")
    down = wait_for(lambda: "one-7" not in domains(c, "node03"), timeout=20)
    print(f"graceful shutdown (ACPI power button): {down:.2f} s")


def test_fast_mode_parallel_commands_and_xl_syntax(fast_cluster: Cluster) -> None:
    c = fast_cluster
    files = " ".join(deployment(c, vid, memory=64, with_disk=False) for vid in range(10, 20))
    c.run("node01", f"for f in {files}; do xm create $f > /dev/null & done; wait", check=True)
    listed = domains(c, "node01")
    assert sorted(int(listed[f"one-{vid}"][0]) for vid in range(10, 20)) == list(range(1, 11))

    proc = c.run("node02", f"xl create {c.shared_dir}/10/images/deployment.0")
    assert (proc.returncode, proc.stdout) == (0, "")
    assert proc.stderr == f"Parsing config from {c.shared_dir}/10/images/deployment.0\n"
    assert c.run("node02", "xl list", check=True).stdout.startswith(
        "Name                                        ID   Mem VCPUs\tState\tTime(s)\n"
    )
    proc = c.run("node02", "xl migrate one-10 node03")
    assert proc.returncode == 0 and proc.stderr.endswith("Migration successful.\n")
    assert "one-10" in domains(c, "node03")
