"""The daemon drives a Xen cluster over SSH: real sshd hosts in network namespaces, the
fake Xen toolstack on them (fast mode, and QEMU guests for the live-migration proof).

The daemon is started with 1.2-style driver entries (the 1.2 executables one_im_ssh,
one_vmm_xen and one_tm select the shipped im_xen, vmm_xen, tm_nfs and tm_ssh plugins).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from tests.cluster.cluster import Cluster
from tests.oned import OneDaemon, wait_for, write_conf
from tests.test_tutorial import history, wait_state

RUNNING, SUSPENDED, STOPPED, DONE, FAILED = (3, 3), (5, 0), (4, 0), (6, 0), (7, 0)


def start_daemon(
    location: Path,
    cluster: Cluster,
    vm_dir: str,
    timeout: float = 20,
    toolstack: str = "xm",
    extra_settings: str = "",
    vm_polling: int = 1,
    extra: str = "",
    scheduler: str = 'SCHEDULER = [ plugin = "none" ]',
) -> OneDaemon:
    etc = location / "etc"
    (etc / "tm_nfs").mkdir(parents=True)
    (etc / "tm_ssh").mkdir()
    settings = (
        f'SSH = "ssh -F {cluster.ssh_config}"\n'
        f"SSH_CONTROL_DIR = {location}/ssh\n"
        f"TOOLSTACK = {toolstack}\nSUDO = yes\nCOMMAND_TIMEOUT = 30\nSHUTDOWN_TIMEOUT = 10\n"
        f"{extra_settings}"
    )
    for name in ("xen.conf", "tm_nfs/tm_nfs.conf", "tm_ssh/tm_ssh.conf"):
        (etc / name).write_text(settings)
    (etc / "vmm_xen.conf").write_text(
        "CREDIT = 256\nMEMORY = 128\nOS = [ kernel = /boot/vmlinuz, root = sda1 ]\n"
    )
    drivers = (
        'IM_MAD = [ name = "im_xen", executable = "one_im_ssh", arguments = "xen.conf" ]\n'
        'VM_MAD = [ name = "vmm_xen", executable = "one_vmm_xen", arguments = "xen.conf",'
        ' default = "vmm_xen.conf", type = "xen" ]\n'
        'TM_MAD = [ name = "tm_nfs", executable = "one_tm", arguments = "tm_nfs/tm_nfs.conf" ]\n'
        'TM_MAD = [ name = "tm_ssh", executable = "one_tm", arguments = "tm_ssh/tm_ssh.conf" ]\n'
    )
    write_conf(
        location, drivers=drivers, scheduler=scheduler, extra=f"DRIVER_TIMEOUT = {timeout}\n{extra}"
    )
    conf = etc / "oned.conf"
    text = re.sub(r"(?m)^VM_DIR = .*$", f"VM_DIR = {vm_dir}", conf.read_text())
    text = re.sub(r"(?m)^VM_POLLING_INTERVAL = .*$", f"VM_POLLING_INTERVAL = {vm_polling}", text)
    conf.write_text(text)
    return OneDaemon(location).start()


def add_cluster_hosts(one: OneDaemon, tm: str) -> None:
    for name in ("node01", "node02", "node03"):
        assert one.call("one.hostallocate", name, "im_xen", "vmm_xen", tm, True)[0]
    for hid in range(3):
        wait_for(lambda hid=hid: "HYPERVISOR=xen" in one.call("one.hostinfo", hid)[1], timeout=20)


def xm_domains(cluster: Cluster, host: str) -> set[str]:
    lines = cluster.run(host, "xm list", check=True).stdout.splitlines()[1:]
    return {line.split()[0] for line in lines} - {"Domain-0"}


def tutorial(source: Path) -> str:
    source.write_bytes(b"root file system\n" * 64)
    return (
        "NAME = xen01\nCPU = 1\nMEMORY = 156\n"
        'OS = [ kernel = /boot/vmlinuz-2.6.22.9-rock, initrd = /boot/initrd.img-2.6.22.9-rock, root = sda2, kernel_cmd = "ro xencons=tty console=tty1" ]\n'
        f"DISK = [ source = {source}, clone = no, target = sda2, readonly = no ]\n"
        'DISK = [ type = swap, size = 16, target = "sda1", readonly = "no" ]\n'
        'NIC = [ mac="" ]\n'
    )


@pytest.mark.parametrize("toolstack", ["xm", "xl"])
def test_tutorial_on_a_cluster_with_tm_nfs(fast_cluster: Cluster, tmp_path, toolstack: str) -> None:
    c = fast_cluster
    vm_dir = str(c.shared_dir / "one")
    one = start_daemon(tmp_path, c, vm_dir, toolstack=toolstack)
    try:
        add_cluster_hosts(one, "tm_nfs")
        info = one.call("one.hostinfo", 1)[1]
        # xm info: 2 CPUs, 4096 MiB of which dom0 has 512; units as in 1.2.
        assert "\tTOTALCPU=200\n" in info and "\tTOTALMEMORY=4194304\n" in info
        assert "\tFREEMEMORY=3670016\n" in info and "\tHOSTNAME=node02\n" in info

        assert one.call("one.vmallocate", tutorial(tmp_path / "disk.img")) == [True, 0]
        started = time.monotonic()
        assert one.call("one.vmdeploy", 0, 1) == [True]
        wait_state(one, 0, *RUNNING)
        deploy_time = time.monotonic() - started
        assert xm_domains(c, "node02") == {"one-0"}
        assert one.vm_row(0)[8] == "one-0"
        images = c.shared_dir / "one" / "0" / "images"
        assert (images / "disk.0").resolve() == tmp_path / "disk.img"  # clone = no: a link
        # The swap, its directory created; 1.2's dd (bs=1 count=1 seek=<size>M) adds one byte.
        assert (images / "disk.1").stat().st_size == (16 << 20) + 1
        deployment = (images / "deployment.0").read_text()
        assert deployment == (tmp_path / "var" / "0" / "deployment.0").read_text()
        assert deployment.startswith("name = 'one-0'\n#O CPU_CREDITS = 256\nmemory  = '156'\n")
        wait_for(lambda: one.vm_row(0)[9] > 0, what="a poll with xentop's memory")

        started = time.monotonic()
        assert one.call("one.vmmigrate", 0, 0, False) == [True]
        wait_for(lambda: len(history(one, 0)) == 2)
        wait_state(one, 0, *RUNNING)
        cold_time = time.monotonic() - started
        assert xm_domains(c, "node01") == {"one-0"} and xm_domains(c, "node02") == set()
        assert any(
            cmd["argv"][:2] == ["xm", "save"] or "save" in cmd["argv"][:3]
            for cmd in c.xen_commands("node02")
        )

        assert one.call("one.vmmigrate", 0, 1, True) == [True]
        wait_for(lambda: len(history(one, 0)) == 3)
        wait_state(one, 0, *RUNNING)
        assert xm_domains(c, "node02") == {"one-0"} and xm_domains(c, "node01") == set()
        assert [r["host_name"] for r in history(one, 0)] == ["node02", "node01", "node02"]

        assert one.call("one.vmaction", "shutdown", 0) == [True]
        wait_state(one, 0, *DONE)
        assert xm_domains(c, "node02") == set()
        assert not images.exists()  # the epilog deleted the VM's directory
        print(
            f"\ntm_nfs ({toolstack}): deploy to RUNNING {deploy_time:.2f} s, cold migration {cold_time:.2f} s"
        )
    finally:
        one.stop()


def test_tm_ssh_really_moves_the_images(fast_cluster: Cluster, tmp_path) -> None:
    c = fast_cluster
    one = start_daemon(tmp_path, c, str(c.vm_dir))
    try:
        add_cluster_hosts(one, "tm_ssh")
        template = tutorial(tmp_path / "disk.img").replace("clone = no", "clone = yes")
        assert one.call("one.vmallocate", template) == [True, 0]
        assert one.call("one.vmdeploy", 0, 1) == [True]
        wait_state(one, 0, *RUNNING)

        def images(host: str) -> Path:
            return c.private_dir(host) / "0" / "images"

        assert (images("node02") / "disk.0").read_bytes() == (tmp_path / "disk.img").read_bytes()
        assert not (images("node01")).exists()

        started = time.monotonic()
        assert one.call("one.vmmigrate", 0, 0, False) == [True]
        wait_for(lambda: len(history(one, 0)) == 2)
        wait_state(one, 0, *RUNNING)
        cold_time = time.monotonic() - started
        assert (images("node01") / "disk.0").exists() and (images("node01") / "checkpoint").exists()
        assert not images("node02").exists()
        assert xm_domains(c, "node01") == {"one-0"}

        # stop: the images go to the front-end; resume + deploy brings them to node03
        assert one.call("one.vmaction", "stop", 0) == [True]
        wait_state(one, 0, *STOPPED)
        assert (tmp_path / "var" / "0" / "images" / "disk.0").exists()
        assert not images("node01").exists()
        assert one.call("one.vmaction", "resume", 0) == [True]
        assert one.call("one.vmdeploy", 0, 2) == [True]
        wait_state(one, 0, *RUNNING)
        assert (images("node03") / "disk.0").exists()
        assert not (tmp_path / "var" / "0" / "images").exists()
        assert xm_domains(c, "node03") == {"one-0"}

        # Without shared storage a live migration fails; the VM stays where it was.
        assert one.call("one.vmmigrate", 0, 0, True) == [True]
        wait_for(lambda: len(history(one, 0)) == 5, what="the failed migration's records")
        wait_state(one, 0, *RUNNING)
        assert [r["host_name"] for r in history(one, 0)][-2:] == ["node01", "node03"]
        assert history(one, 0)[-2]["reason"] == 1  # ERROR
        assert xm_domains(c, "node03") == {"one-0"}

        assert one.call("one.vmaction", "shutdown", 0) == [True]
        wait_state(one, 0, *DONE)
        assert not images("node03").exists()
        print(f"\ntm_ssh: cold migration {cold_time:.2f} s")
    finally:
        one.stop()


def test_a_dead_host_fails_alone(fast_cluster: Cluster, tmp_path) -> None:
    c = fast_cluster
    one = start_daemon(tmp_path, c, str(c.shared_dir / "one"), timeout=8)
    try:
        add_cluster_hosts(one, "tm_nfs")
        template = "NAME = v\nCPU = 0.5\nMEMORY = 64\n"
        assert one.call("one.vmallocate", template) == [True, 0]
        assert one.call("one.vmdeploy", 0, 0) == [True]
        wait_state(one, 0, *RUNNING)

        c.kill_host("node03")
        with one.db() as db:
            wait_for(
                lambda: db.execute("SELECT state FROM host_pool WHERE oid = 2").fetchone() == (3,),
                what="node03 in ERROR",
            )
        assert one.call("one.vmallocate", template) == [True, 1]
        assert one.call("one.vmallocate", template) == [True, 2]
        assert one.call("one.vmdeploy", 1, 2) == [True]
        started = time.monotonic()
        assert one.call("one.vmdeploy", 2, 1) == [True]
        wait_state(one, 2, *RUNNING)
        assert time.monotonic() - started < 5, "the dead host delayed another host"
        wait_state(one, 1, *FAILED)
        assert one.vm_state(0) == RUNNING and xm_domains(c, "node01") == {"one-0"}
        assert xm_domains(c, "node02") == {"one-2"}
    finally:
        one.stop()


def ticks(log: str) -> list[int]:
    return [int(n) for n in re.findall(r"^tick (\d+)$", log, re.M)]


def assert_never_rebooted(c: Cluster, domain: str) -> int:
    """One boot in all the hosts' console logs, and a counter without gap or repeat."""
    logs = [c.console_log(host, domain) for host in ("node01", "node02", "node03")]
    assert sum(log.count("GUEST-BOOTED") for log in logs) == 1
    seen = sorted(n for log in logs for n in ticks(log))
    assert seen == list(range(seen[0], seen[-1] + 1)), seen
    return seen[-1]


def test_live_migration_of_a_running_guest(qemu_cluster: Cluster, tmp_path) -> None:
    c = qemu_cluster
    one = start_daemon(tmp_path, c, str(c.shared_dir / "one"), timeout=60)
    try:
        add_cluster_hosts(one, "tm_nfs")
        template = "NAME = guest\nCPU = 1\nMEMORY = 128\nOS = [ kernel = /boot/vmlinuz ]\n"
        assert one.call("one.vmallocate", template) == [True, 0]
        started = time.monotonic()
        assert one.call("one.vmdeploy", 0, 1) == [True]
        wait_state(one, 0, *RUNNING)
        deploy_time = time.monotonic() - started
        wait_for(lambda: len(ticks(c.console_log("node02", "one-0"))) >= 3, timeout=60)
        boot_time = time.monotonic() - started

        started = time.monotonic()
        assert one.call("one.vmmigrate", 0, 0, False) == [True]  # cold: save, restore
        wait_for(lambda: len(history(one, 0)) == 2)
        wait_state(one, 0, *RUNNING)
        cold_time = time.monotonic() - started
        wait_for(lambda: len(ticks(c.console_log("node01", "one-0"))) >= 3, timeout=20)
        before = assert_never_rebooted(c, "one-0")

        started = time.monotonic()
        assert one.call("one.vmmigrate", 0, 1, True) == [True]
        wait_for(lambda: len(history(one, 0)) == 3)
        wait_state(one, 0, *RUNNING)
        live_wall = time.monotonic() - started
        migration = next(
            cmd["migration"] for cmd in reversed(c.xen_commands("node01")) if cmd.get("migration")
        )
        wait_for(lambda: assert_never_rebooted(c, "one-0") > before + 3, timeout=20)

        assert one.call("one.vmaction", "suspend", 0) == [True]
        wait_state(one, 0, *SUSPENDED)
        assert one.call("one.vmaction", "resume", 0) == [True]
        wait_state(one, 0, *RUNNING)
        after_restore = assert_never_rebooted(c, "one-0")
        wait_for(lambda: assert_never_rebooted(c, "one-0") > after_restore + 3, timeout=20)
        print(
            f"\nqemu guest: deploy to RUNNING {deploy_time:.2f} s (booted {boot_time:.1f} s), "
            f"cold migration {cold_time:.2f} s, live migration {live_wall:.2f} s wall, "
            f"QEMU total {migration['total_time_ms']} ms, downtime {migration['downtime_ms']} ms"
        )
        assert one.call("one.vmaction", "shutdown", 0) == [True]
        wait_state(one, 0, *DONE)
    finally:
        one.stop()


@pytest.mark.parametrize(
    "hostile", ["node01; touch /tmp/nebula-pwned", "-oProxyCommand=touch /tmp/nebula-pwned"]
)
def test_hostile_host_names_never_reach_a_shell(
    fast_cluster: Cluster, tmp_path, hostile: str
) -> None:
    one = start_daemon(tmp_path, fast_cluster, str(fast_cluster.shared_dir / "one"), timeout=5)
    try:
        assert one.call("one.hostallocate", hostile, "im_xen", "vmm_xen", "tm_nfs", True) == [
            True,
            0,
        ]
        with one.db() as db:
            wait_for(lambda: db.execute("SELECT state FROM host_pool").fetchone() == (3,))
        assert one.call("one.vmallocate", "NAME = x\nMEMORY = 64\nOS = [ kernel = /k ]\n") == [
            True,
            0,
        ]
        assert one.call("one.vmdeploy", 0, 0) == [True]
        wait_state(one, 0, *FAILED)
        assert not Path("/tmp/nebula-pwned").exists()
        assert "Invalid host name" in (tmp_path / "var" / "0" / "vm.log").read_text()
    finally:
        one.stop()


def test_hostile_image_paths_are_copied_literally(fast_cluster: Cluster, tmp_path) -> None:
    c = fast_cluster
    one = start_daemon(tmp_path, c, str(c.vm_dir))
    try:
        add_cluster_hosts(one, "tm_ssh")
        source = tmp_path / "disk $(touch PWNED) `touch PWNED` ;touch PWNED;'x.img"
        source.write_bytes(b"image")
        template = (
            "NAME = odd\nMEMORY = 64\nOS = [ kernel = /k ]\n"
            f'DISK = [ source = "{source}", target = sda1 ]\n'
        )
        assert one.call("one.vmallocate", template) == [True, 0]
        assert one.call("one.vmdeploy", 0, 0) == [True]
        wait_state(one, 0, *RUNNING)
        assert (c.private_dir("node01") / "0" / "images" / "disk.0").read_bytes() == b"image"
        # A shell would have run `touch PWNED` in its working directory: the daemon's, or
        # the remote user's home.
        assert not Path("PWNED").exists() and not (tmp_path / "var" / "PWNED").exists()
        assert c.run("node01", "ls ~/PWNED").returncode != 0
    finally:
        one.stop()


def test_a_1_2_vm_mad_uses_the_toolstack_im_xen_monitors_with(
    fast_cluster: Cluster, tmp_path
) -> None:
    """1.2's VM_MAD names no settings file: TOOLSTACK = xl in im_xen/im_xen.conf must
    reach vmm_xen too, or hosts are monitored through xl and deployed through xm."""
    c = fast_cluster
    etc = tmp_path / "etc"
    (etc / "im_xen").mkdir(parents=True)
    settings = (
        f'SSH = "ssh -F {c.ssh_config}"\nSSH_CONTROL_DIR = {tmp_path}/ssh\n'
        "TOOLSTACK = xl\nSUDO = yes\nCOMMAND_TIMEOUT = 30\nSHUTDOWN_TIMEOUT = 10\n"
    )
    (etc / "im_xen" / "im_xen.conf").write_text(settings)
    (etc / "tm_nfs.conf").write_text(settings)
    (etc / "vmm_xen.conf").write_text("OS = [ kernel = /boot/vmlinuz, root = sda1 ]\n")
    drivers = (
        'IM_MAD = [ name = "im_xen", executable = "one_im_ssh", arguments = "im_xen/im_xen.conf" ]\n'
        'VM_MAD = [ name = "vmm_xen", executable = "one_vmm_xen", default = "vmm_xen.conf",'
        ' type = "xen" ]\n'
        'TM_MAD = [ name = "tm_nfs", executable = "one_tm", arguments = "tm_nfs.conf" ]\n'
    )
    conf = write_conf(tmp_path, drivers=drivers, extra="DRIVER_TIMEOUT = 20")
    vm_dir = str(c.shared_dir / "one")
    conf.write_text(re.sub(r"(?m)^VM_DIR = .*$", f"VM_DIR = {vm_dir}", conf.read_text()))
    one = OneDaemon(tmp_path).start()
    try:
        add_cluster_hosts(one, "tm_nfs")
        assert one.call("one.vmallocate", "NAME = v\nCPU = 0.5\nMEMORY = 64\n") == [True, 0]
        assert one.call("one.vmdeploy", 0, 1) == [True]
        wait_state(one, 0, *RUNNING)
        tools = {Path(cmd["argv"][0]).name for cmd in c.xen_commands("node02")}
        assert "xl" in tools and "xm" not in tools, tools
        assert xm_domains(c, "node02") == {"one-0"}  # (this runs xm itself)
        log = (tmp_path / "var" / "oned.log").read_text()
        assert f"vmm_xen: Xen toolstack xl (from {etc / 'im_xen' / 'im_xen.conf'})" in log
    finally:
        one.stop()
