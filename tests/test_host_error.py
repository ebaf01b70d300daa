"""Hooks and host failure through the real daemon: real hook processes, the installed
``nebula-xr-host-error`` command talking XML-RPC back to the daemon, the dummy drivers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from nebula_xr.auth import password_hash, session_for
from tests.oned import OneDaemon, wait_for, write_conf
from tests.test_tutorial import history, shares, wait_state

PENDING, RUNNING, DONE, ERROR_STATE, ERROR_REASON = (1, 0), (3, 3), (6, 0), 3, 1

DRIVERS = """
IM_MAD = [ name = "im_xen",  executable = "im_dummy", fail_hosts = "gone*" ]
VM_MAD = [ name = "vmm_xen", executable = "vmm_dummy" ]
TM_MAD = [ name = "tm_nfs",  executable = "tm_dummy" ]
"""


def installed(command: str) -> str:
    """The console script next to this interpreter (the daemon's PATH may lack it)."""
    beside = Path(sys.executable).parent / command
    found = str(beside) if beside.exists() else shutil.which(command)
    assert found, f"{command} is not installed"
    return found


def host_state(one: OneDaemon, hid: int) -> int:
    with one.db() as db:
        return db.execute("SELECT state FROM host_pool WHERE oid = ?", (hid,)).fetchone()[0]


def record_script(path: Path, out: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"with open({str(out)!r}, 'a') as f: f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    path.chmod(0o755)


def test_vm_hooks_run_as_processes_and_a_broken_hook_never_stops_the_vm(tmp_path: Path) -> None:
    out = tmp_path / "hook.out"
    # Relative commands are found in $ONE_LOCATION/share/hooks.
    record_script(tmp_path / "share" / "hooks" / "record", out)
    hooks = (
        'VM_HOOK = [ name = "made", on = "CREATE", command = "record", arguments = "$VMID $NAME" ]\n'
        'VM_HOOK = [ name = "fails", on = "RUNNING", command = "false" ]\n'
        'VM_HOOK = [ name = "hangs", on = "RUNNING", command = "sleep", arguments = "60", timeout = 1 ]\n'
        'VM_HOOK = [ name = "missing", on = "RUNNING", command = "no-such-hook-program" ]\n'
        'VM_HOOK = [ name = "up", on = "RUNNING", command = "record", arguments = "up $VMID" ]\n'
        'VM_HOOK = [ name = "end", on = "DONE", command = "record", arguments = "done $VMID" ]\n'
    )
    write_conf(tmp_path, drivers=DRIVERS, extra=hooks)
    one = OneDaemon(tmp_path).start()
    try:
        assert one.call("one.hostallocate", "good01", "im_xen", "vmm_xen", "tm_nfs", True)[0]
        name = "x' ; touch CANARY; $(touch CANARY) `touch CANARY` | * $HOME"
        assert one.call("one.vmallocate", f'NAME = "{name}"\nMEMORY = 64\nCPU = 1\n') == [True, 0]
        assert one.call("one.vmdeploy", 0, 0) == [True]
        wait_state(one, 0, *RUNNING)
        assert one.call("one.vmaction", "shutdown", 0) == [True]
        wait_state(one, 0, *DONE)
        wait_for(lambda: out.exists() and len(out.read_text().splitlines()) == 3, what="3 hooks")
        runs = [json.loads(line) for line in out.read_text().splitlines()]
        # Hooks run concurrently: their order is not the VM's.
        assert sorted(runs) == sorted([["0", name], ["up", "0"], ["done", "0"]])
        assert not list(tmp_path.glob("**/CANARY")) and not Path("CANARY").exists()
        wait_for(lambda: "Hook hangs could not run: Timeout" in log_text(tmp_path), timeout=10)
        log = log_text(tmp_path)
        assert "Hook fails failed (exit status 1)" in log
        assert "Hook missing could not run: no-such-hook-program: command not found" in log
        assert "Hook made succeeded" in (tmp_path / "var" / "0" / "vm.log").read_text()
    finally:
        one.stop()


def log_text(location: Path) -> str:
    return (location / "var" / "oned.log").read_text()


def test_the_host_error_command_waits_for_a_monitoring_under_way(tmp_path: Path) -> None:
    """A host in ERROR is monitored again, MONITORING meanwhile: the hook command, asked
    just then, waits for that monitoring to end instead of doing nothing."""
    # Each monitoring takes 3 s, every 6 s: MONITORING and ERROR 3 s each in turn.
    slow = DRIVERS.replace('fail_hosts = "gone*"', 'fail_hosts = "gone*", delay = 3')
    conf = write_conf(tmp_path, drivers=slow, extra="HOST_ERROR_THRESHOLD = 1\n")
    text = conf.read_text().replace(
        "HOST_MONITORING_INTERVAL = 1\n", "HOST_MONITORING_INTERVAL = 6\n"
    )
    conf.write_text(text)
    one = OneDaemon(tmp_path).start()
    try:
        ok, gone = one.call("one.hostallocate", "gone01", "im_xen", "vmm_xen", "tm_nfs", True)
        assert ok
        assert one.call("one.hostenable", gone, False) == [True]
        assert one.call("one.vmallocate", "NAME = v\nCPU = 0.5\nMEMORY = 64\n") == [True, 0]
        assert one.call("one.vmdeploy", 0, gone) == [True]
        wait_state(one, 0, *RUNNING)
        assert one.call("one.hostenable", gone, True) == [True]
        wait_for(lambda: f"Error monitoring host {gone} :" in log_text(tmp_path), what="ERROR")
        wait_for(lambda: host_state(one, gone) == 1, what="gone01 monitored again")
        env = dict(os.environ, ONE_XMLRPC=one.url, ONE_AUTH=str(one.one_auth))
        run = subprocess.run(
            [installed("nebula-xr-host-error"), str(gone), "-r", "n"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert (run.returncode, run.stdout) == (0, "VM 0: resubmitted\n"), run.stderr
        wait_state(one, 0, *PENDING)
    finally:
        one.stop()


def test_host_error_hook_resubmits_the_vms_of_a_failed_host(tmp_path: Path) -> None:
    """gone01's monitoring fails; after HOST_ERROR_THRESHOLD failures it is in ERROR, the
    HOST_HOOK runs nebula-xr-host-error, which resubmits its VMs: their domains are
    destroyed on gone01 first, the records closed with reason ERROR, the VMs PENDING."""
    hooks = (
        "HOST_ERROR_THRESHOLD = 3\n"
        f'HOST_HOOK = [ name = "error", on = "ERROR", command = "{installed("nebula-xr-host-error")}",'
        ' arguments = "$HID -r n" ]\n'
    )
    write_conf(tmp_path, drivers=DRIVERS, extra=hooks)
    one = OneDaemon(tmp_path).start()
    try:
        assert one.call("one.hostallocate", "good01", "im_xen", "vmm_xen", "tm_nfs", True)[0]
        ok, gone = one.call("one.hostallocate", "gone01", "im_xen", "vmm_xen", "tm_nfs", True)
        assert one.call("one.hostenable", gone, False) == [True]  # VMs go there first
        template = "NAME = v\nCPU = 0.5\nMEMORY = 64\n"
        for vid in (0, 1):
            assert one.call("one.vmallocate", template) == [True, vid]
            assert one.call("one.vmdeploy", vid, gone) == [True]
            wait_state(one, vid, *RUNNING)
        assert one.call("one.vmallocate", template) == [True, 2]
        assert one.call("one.vmdeploy", 2, 0) == [True]  # on good01: untouched
        wait_state(one, 2, *RUNNING)
        assert shares(one, gone)[2] == 2

        assert one.call("one.hostenable", gone, True) == [True]
        wait_for(lambda: "(2 of 3 failures before ERROR)" in log_text(tmp_path))
        assert host_state(one, gone) != ERROR_STATE
        wait_for(lambda: host_state(one, gone) == ERROR_STATE, what="gone01 in ERROR")
        for vid in (0, 1):
            wait_state(one, vid, *PENDING)
            (record,) = history(one, vid)
            assert record["reason"] == ERROR_REASON and record["etime"] > 0
            vm_log = (tmp_path / "var" / str(vid) / "vm.log").read_text()
            destroying = vm_log.index(f"Resubmitting: destroying domain one-{vid} on gone01")
            assert vm_log.index("Leaving host gone01: host error") > destroying
        assert shares(one, gone) == (0, 0, 0)
        assert one.vm_state(2) == RUNNING

        # The last monitoring message is the host's ERROR attribute, for onehost show.
        env = dict(os.environ, ONE_XMLRPC=one.url, ONE_AUTH=str(one.one_auth))
        shown = subprocess.run(
            [installed("onehost"), "show", "gone01"], env=env, capture_output=True, text=True
        )
        assert shown.returncode == 0, shown.stderr
        assert "ERROR=" in shown.stdout and "MONITOR failed on gone01" in shown.stdout

        # The scheduler's part: the PENDING VMs are deployed again, on good01.
        for vid in (0, 1):
            assert one.call("one.vmdeploy", vid, 0) == [True]
            wait_state(one, vid, *RUNNING)
            assert [r["host_name"] for r in history(one, vid)] == ["gone01", "good01"]

        # Run by hand on a host that is not in ERROR, the command does nothing.
        refused = subprocess.run(
            [installed("nebula-xr-host-error"), "0", "-r"], env=env, capture_output=True, text=True
        )
        assert refused.returncode != 0 and "is not in ERROR" in refused.stderr
        assert one.vm_state(2) == RUNNING
    finally:
        one.stop()


def test_resubmit_through_the_api(tmp_path: Path) -> None:
    write_conf(tmp_path, drivers=DRIVERS)
    one = OneDaemon(tmp_path).start()
    try:
        assert one.call("one.hostallocate", "good01", "im_xen", "vmm_xen", "tm_nfs", True)[0]
        assert one.call("one.vmallocate", "NAME = v\nCPU = 1\nMEMORY = 64\n") == [True, 0]
        assert one.call14("nebula_xr.vm.resubmit", 0) == [True]  # PENDING already
        assert one.call14("nebula_xr.vm.resubmit", 7) == [
            False,
            "The virtual machine 7 does not exists",
        ]
        assert one.call("one.vmdeploy", 0, 0) == [True]
        wait_state(one, 0, *RUNNING)
        # Host failure handling is oneadmin's: neither a 1.2 client nor another user.
        ok, _alice = one.call14("one.user.allocate", "alice", password_hash("alice-pw"))
        assert ok
        refused = [False, "User not authorized to perform operation upon VirtualMachine [0]"]
        assert one.call("nebula_xr.vm.resubmit", 0) == refused
        alice = session_for("alice", "alice-pw")
        assert one.call14("nebula_xr.vm.resubmit", 0, session=alice) == refused
        assert one.vm_state(0) == RUNNING
        assert one.call14("nebula_xr.vm.resubmit", 0) == [True]
        assert one.vm_state(0) == PENDING  # the answer comes once it is done
        (record,) = history(one, 0)
        assert record["reason"] == 3  # USER: the host was fine, the domain destroyed
        assert shares(one, 0) == (0, 0, 0)
        assert one.call("one.vmaction", "finalize", 0) == [True]
        assert one.call14("nebula_xr.vm.resubmit", 0) == [False, "Wrong state to perform action"]
    finally:
        one.stop()


def test_host_error_hook_deletes_the_vms_of_a_failed_host_with_d(tmp_path: Path) -> None:
    hooks = (
        "HOST_ERROR_THRESHOLD = 2\n"
        f'HOST_HOOK = [ name = "error", on = "ERROR", command = "{installed("nebula-xr-host-error")}",'
        ' arguments = "$HID -d" ]\n'
    )
    write_conf(tmp_path, drivers=DRIVERS, extra=hooks)
    one = OneDaemon(tmp_path).start()
    try:
        ok, gone = one.call("one.hostallocate", "gone01", "im_xen", "vmm_xen", "tm_nfs", True)
        assert one.call("one.hostenable", gone, False) == [True]
        assert one.call("one.vmallocate", "NAME = v\nCPU = 0.5\nMEMORY = 64\n") == [True, 0]
        assert one.call("one.vmdeploy", 0, gone) == [True]
        wait_state(one, 0, *RUNNING)
        assert one.call("one.hostenable", gone, True) == [True]
        wait_state(one, 0, *DONE)
        assert host_state(one, gone) == ERROR_STATE
        wait_for(lambda: "Hook error stdout: VM 0: deleted" in log_text(tmp_path))
        assert shares(one, gone) == (0, 0, 0)
    finally:
        one.stop()
