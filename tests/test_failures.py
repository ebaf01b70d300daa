"""Failure paths of the life cycle, driver timeouts, and host monitoring states."""

from __future__ import annotations

import time

from tests.oned import OneDaemon, wait_for, write_conf
from tests.test_tutorial import history, shares, wait_state

FAILED, RUNNING, ERROR_REASON, USER = 7, 3, 1, 3

DRIVERS = """
IM_MAD = [ name = "im_xen",  executable = "im_dummy", fail_hosts = "bad*" ]
VM_MAD = [ name = "vmm_xen", executable = "vmm_dummy", fail_hosts = "bad*" ]
VM_MAD = [ name = "vmm_slow", executable = "vmm_dummy", delay = 30, timeout = 0.5 ]
TM_MAD = [ name = "tm_nfs",  executable = "tm_dummy" ]
TM_MAD = [ name = "tm_bad",  executable = "tm_dummy", fail_hosts = "*" ]
"""


def start(tmp_path) -> OneDaemon:
    write_conf(tmp_path, drivers=DRIVERS)
    return OneDaemon(tmp_path).start()


def host(one: OneDaemon, name: str, vmm: str = "vmm_xen", tm: str = "tm_nfs") -> int:
    ok, hid = one.call("one.hostallocate", name, "im_xen", vmm, tm, True)
    assert ok
    return hid


def vm_log(one: OneDaemon, vid: int) -> str:
    return (one.location / "var" / str(vid) / "vm.log").read_text()


def test_failures(tmp_path) -> None:
    one = start(tmp_path)
    try:
        good = host(one, "good")
        bad = host(one, "bad01")
        slow = host(one, "slow", vmm="vmm_slow")
        noimages = host(one, "noimages", tm="tm_bad")
        template = "NAME = v\nCPU = 0.5\nMEMORY = 64\n"

        # Monitoring: the failing host goes to ERROR, the others are MONITORED.
        wait_for(lambda: "TOTALCPU" in one.call("one.hostinfo", good)[1])
        with one.db() as db:
            wait_for(
                lambda: (
                    db.execute("SELECT state FROM host_pool WHERE oid = ?", (bad,)).fetchone()
                    == (3,)
                )
            )

        # A boot failure fails the VM and closes its record with reason ERROR.
        assert one.call("one.vmallocate", template) == [True, 0]
        assert one.call("one.vmdeploy", 0, bad) == [True]
        wait_state(one, 0, FAILED)
        (record,) = history(one, 0)
        assert record["reason"] == ERROR_REASON and record["retime"] == record["etime"] > 0
        assert shares(one, bad) == (0, 0, 0)
        assert "DEPLOY failed on bad01" in vm_log(one, 0)
        assert one.call("one.vmaction", "finalize", 0) == [True]

        # A prolog failure too.
        disk = "DISK = [ source = /images/a.img, target = sda1 ]\n"
        assert one.call("one.vmallocate", template + disk) == [True, 1]
        assert one.call("one.vmdeploy", 1, noimages) == [True]
        wait_state(one, 1, FAILED)
        assert history(one, 1)[0]["petime"] > 0 and history(one, 1)[0]["reason"] == ERROR_REASON

        # A slow host times out on its own while another host deploys at once.
        assert one.call("one.vmallocate", template) == [True, 2]
        assert one.call("one.vmallocate", template) == [True, 3]
        begun = time.monotonic()
        assert one.call("one.vmdeploy", 2, slow) == [True]
        assert one.call("one.vmdeploy", 3, good) == [True]
        wait_state(one, 3, 3, RUNNING)
        assert time.monotonic() - begun < 0.5, "the slow host delayed the other one"
        wait_state(one, 2, FAILED)
        assert 0.4 < time.monotonic() - begun < 5
        assert "Timeout" in vm_log(one, 2)

        # A failed live migration leaves the VM running where it was, on a new record.
        assert one.call("one.vmmigrate", 3, bad, True) == [True]
        wait_for(lambda: len(history(one, 3)) == 3, what="third history record")
        wait_state(one, 3, 3, RUNNING)
        first, target, back = history(one, 3)
        assert target["host_name"] == "bad01" and target["reason"] == ERROR_REASON
        assert first["reason"] == USER and first["etime"] == first["retime"] > 0
        assert back["host_name"] == "good" and back["stime"] == back["rstime"] > 0
        assert shares(one, bad) == (0, 0, 0) and shares(one, good) == (50, 65536, 1)

        # Disabling a host stops its monitoring; enabling puts it back to INIT.
        assert one.call("one.hostenable", good, False) == [True]
        with one.db() as db:

            def mon_time(hid: int = good) -> int:
                return db.execute(
                    "SELECT last_mon_time FROM host_pool WHERE oid = ?", (hid,)
                ).fetchone()[0]

            before, other = mon_time(), mon_time(slow)
            # Two monitoring rounds of an enabled host (HOST_MONITORING_INTERVAL = 1 s).
            wait_for(lambda: mon_time(slow) >= other + 2, what="two monitoring rounds")
            assert mon_time() == before
            assert db.execute("SELECT state FROM host_pool WHERE oid = ?", (good,)).fetchone() == (
                4,
            )
        assert one.call("one.hostenable", good, True) == [True]
        with one.db() as db:
            state = db.execute("SELECT state FROM host_pool WHERE oid = ?", (good,)).fetchone()[0]
            assert state in (0, 1, 2)  # INIT, then monitored again
    finally:
        one.stop()


def test_running_vms_are_polled_on_the_interval(tmp_path) -> None:
    one = start(tmp_path)
    try:
        host(one, "good")
        wait_for(lambda: "TOTALCPU" in one.call("one.hostinfo", 0)[1])
        assert one.call("one.vmallocate", "NAME = p\nCPU = 1\nMEMORY = 100\n") == [True, 0]
        assert one.call("one.vmdeploy", 0, 0) == [True]
        wait_state(one, 0, 3, RUNNING)
        # vmm_dummy reports the VM's MEMORY (in KB) and 10% CPU.
        wait_for(lambda: one.vm_row(0)[9:11] == (102400, 10), what="poll result")
        first = one.vm_row(0)[2]
        wait_for(lambda: one.vm_row(0)[2] > first, timeout=5, what="a second poll")
    finally:
        one.stop()
