"""The OpenNebula 1.2 tutorial, end to end, over XML-RPC against a real daemon process.

Dummy drivers stand in under the 1.2 names (im_xen, vmm_xen, tm_nfs), so the whole life
cycle runs here; states, history rows, host shares, leases, files and info texts are
checked against the spec.
"""

from __future__ import annotations

import pytest

from tests.oned import OneDaemon, wait_for, write_conf

TUTORIAL = """NAME = xen01
CPU = 1
MEMORY = 156
OS = [ kernel = /boot/vmlinuz-2.6.22.9-rock, initrd = /boot/initrd.img-2.6.22.9-rock, root = sda2, kernel_cmd = "ro xencons=tty console=tty1" ]
DISK = [ source = /home/domains/xen01/disk.img, clone = no, target = sda2, readonly = no ]
DISK = [ type = swap, size = 512, target = "sda1", readonly = "no" ]
NIC = [ mac="" ]"""

PENDING, HOLD, ACTIVE, STOPPED, SUSPENDED, DONE = 1, 2, 3, 4, 5, 6
RUNNING = 3
USER, STOP_RESUME, CANCEL = 3, 2, 4


@pytest.fixture
def one(tmp_path):
    write_conf(tmp_path)
    daemon = OneDaemon(tmp_path).start()
    yield daemon
    assert daemon.stop() == 0


def history(one: OneDaemon, vid: int) -> list[dict]:
    columns = (
        "vid seq host_name vm_dir hid vm_mad tm_mad stime etime pstime petime "
        "rstime retime estime eetime reason"
    ).split()
    with one.db() as db:
        rows = db.execute("SELECT * FROM history WHERE vid = ?", (vid,)).fetchall()
    return [dict(zip(columns, row, strict=True)) for row in rows]


def shares(one: OneDaemon, hid: int) -> tuple:
    with one.db() as db:
        return db.execute(
            "SELECT cpu_usage, mem_usage, running_vms FROM host_shares WHERE hid = ?", (hid,)
        ).fetchone()


def wait_state(one: OneDaemon, vid: int, state: int, lcm: int = 0) -> None:
    wait_for(lambda: one.vm_state(vid) == (state, lcm), what=f"VM {vid} in {(state, lcm)}")


def add_hosts(one: OneDaemon, *names: str) -> list[int]:
    hids = []
    for name in names:
        ok, hid = one.call("one.hostallocate", name, "im_xen", "vmm_xen", "tm_nfs", True)
        assert ok
        hids.append(hid)
    for hid in hids:
        wait_for(lambda hid=hid: "TOTALCPU=200" in one.call("one.hostinfo", hid)[1])
    return hids


def test_tutorial_life_cycle(one: OneDaemon, tmp_path) -> None:
    assert add_hosts(one, "node01", "node02") == [0, 1]
    with one.db() as db:
        assert db.execute("SELECT state FROM host_pool ORDER BY oid").fetchall() == [(2,), (2,)]
        assert db.execute("SELECT max_cpu, max_mem FROM host_shares WHERE hid = 1").fetchone() == (
            200,
            2097152,
        )

    assert one.call("one.vmallocate", TUTORIAL) == [True, 0]
    assert one.vm_row(0)[3:6] == (0, PENDING, 0)  # template_id == oid, PENDING
    with one.db() as db:
        names = [row[0] for row in db.execute("SELECT name FROM vm_attributes WHERE id = 0")]
    assert names == ["CPU", "DISK", "DISK", "MEMORY", "NAME", "NIC", "OS"]

    # deploy to the second host
    assert one.call("one.vmdeploy", 0, 1) == [True]
    wait_state(one, 0, ACTIVE, RUNNING)
    (record,) = history(one, 0)
    assert (record["host_name"], record["hid"], record["vm_mad"], record["tm_mad"]) == (
        "node02",
        1,
        "vmm_xen",
        "tm_nfs",
    )
    assert record["vm_dir"] == f"{tmp_path}/remote"
    assert record["stime"] == record["pstime"] > 0
    assert record["petime"] == record["rstime"] >= record["pstime"]
    assert shares(one, 1) == (100, 156 * 1024, 1)
    assert one.vm_row(0)[8] == "one-0"
    transfer = (tmp_path / "var" / "0" / "transfer.0").read_text()
    frontend = transfer.split(":", 1)[0].split()[1]
    assert transfer == (
        f"LN {frontend}:/home/domains/xen01/disk.img node02:{tmp_path}/remote/0/images/disk.0\n"
        f"MKSWAP 512 node02:{tmp_path}/remote/0/images/disk.1\n"
    )
    assert (tmp_path / "var" / "0" / "deployment.0").exists()

    # cold migration to the first host: save, move, restore
    assert one.call("one.vmmigrate", 0, 0, False) == [True]
    wait_state(one, 0, ACTIVE, RUNNING)
    first, second = history(one, 0)
    assert first["reason"] == USER and first["etime"] == first["retime"] > 0
    assert (second["host_name"], second["seq"]) == ("node01", 1)
    assert second["pstime"] > 0 and second["petime"] == second["rstime"] > 0
    assert shares(one, 0) == (100, 159744, 1) and shares(one, 1) == (0, 0, 0)
    assert (tmp_path / "var" / "0" / "transfer.1").read_text() == (
        f"MV node02:{tmp_path}/remote/0/images node01:{tmp_path}/remote/0/images\n"
    )

    # live migration back to the second host
    assert one.call("one.vmmigrate", 0, 1, True) == [True]
    wait_state(one, 0, ACTIVE, RUNNING)
    records = history(one, 0)
    assert [r["host_name"] for r in records] == ["node02", "node01", "node02"]
    assert records[1]["reason"] == USER and records[2]["rstime"] > 0
    assert shares(one, 0) == (0, 0, 0) and shares(one, 1) == (100, 159744, 1)

    # migrating onto the host it is on is refused (1.2 destroyed images with tm_ssh)
    assert one.call("one.vmmigrate", 0, 1, True) == [False, "Can not deploy VM 0, wrong state"]

    # suspend / resume: a new record on the same host
    assert one.call("one.vmaction", "suspend", 0) == [True]
    wait_state(one, 0, SUSPENDED)
    assert history(one, 0)[-1]["reason"] == STOP_RESUME
    assert shares(one, 1) == (0, 0, 0)
    assert one.call("one.vmaction", "resume", 0) == [True]
    wait_state(one, 0, ACTIVE, RUNNING)
    latest = history(one, 0)[-1]
    assert (latest["seq"], latest["host_name"]) == (3, "node02")
    assert latest["stime"] == latest["rstime"] > 0
    assert shares(one, 1) == (100, 159744, 1)

    # stop / resume / redeploy: the images come back from the front-end
    assert one.call("one.vmaction", "stop", 0) == [True]
    wait_state(one, 0, STOPPED)
    stopped = history(one, 0)[-1]
    assert stopped["reason"] == STOP_RESUME and stopped["eetime"] == stopped["etime"] > 0
    assert one.call("one.vmaction", "resume", 0) == [True]
    assert one.vm_state(0) == (PENDING, 0)
    assert one.call("one.vmdeploy", 0, 0) == [True]
    wait_state(one, 0, ACTIVE, RUNNING)
    assert (tmp_path / "var" / "0" / "transfer.4").read_text() == (
        f"MV {frontend}:{tmp_path}/var/0/images node01:{tmp_path}/remote/0/images\n"
    )

    # cancel: destroyed without epilog; retime stays unset
    assert one.call("one.vmaction", "cancel", 0) == [True]
    wait_state(one, 0, DONE)
    cancelled = history(one, 0)[-1]
    assert cancelled["reason"] == CANCEL and cancelled["retime"] == 0 and cancelled["etime"] > 0
    assert shares(one, 0) == (0, 0, 0)
    assert one.vm_row(0)[7] > 0  # etime

    # a DONE VM can still be shown, but not acted on
    ok, text = one.call("one.vmget_info", 0)
    assert ok and text.startswith("VID               : 0\n")
    assert one.call("one.vmaction", "finalize", 0) == [False, "Wrong state to perform action"]


def test_hold_release_shutdown_finalize_and_leases(one: OneDaemon) -> None:
    add_hosts(one, "node01")
    ranged = 'NAME = "Private LAN"\nTYPE = RANGED\nBRIDGE = eth0\nNETWORK_SIZE = 250\nNETWORK_ADDRESS = 10.0.0.0\n'
    fixed = "NAME = Public\nTYPE = FIXED\nBRIDGE = eth1\nLEASES = [IP=130.10.0.1,MAC=50:20:20:20:20:20]\nLEASES = [IP=130.10.0.4]"
    assert one.call("one.vnallocate", ranged) == [True, 0]
    assert one.call("one.vnallocate", fixed) == [True, 1]

    template = 'NAME = web\nCPU = 0.29\nMEMORY = 64\nNIC = [ NETWORK = "Private LAN" ]\nNIC = [ NETWORK = Public, IP = 130.10.0.4 ]\n'
    assert one.call("one.vmallocate", template) == [True, 0]
    ok, text = one.call("one.vmget_info", 0)
    assert (
        "\tNIC=BRIDGE=eth0,IP=10.0.0.1,MAC=00:03:0a:00:00:01,NETWORK=Private LAN,VNID=0\n" in text
    )
    assert "\tNIC=BRIDGE=eth1,IP=130.10.0.4,MAC=00:03:82:0a:00:04,NETWORK=Public,VNID=1\n" in text
    with one.db() as db:
        assert db.execute("SELECT * FROM leases ORDER BY oid, ip").fetchall() == [
            (0, 167772161, 3, 167772161, 0, 1),
            (1, 2181693441, 0x5020, 0x20202020, -1, 0),
            (1, 2181693444, 3, 2181693444, 0, 1),
        ]
    ok, text = one.call("one.vninfo", 0)
    assert text.endswith(
        "\n....: Leases :....\nIP = 10.0.0.1       MAC = 00:03:0a:00:00:01  USED = 1 VID = 0\n\n"
    )

    # hold / release
    assert one.call("one.vmaction", "hold", 0) == [True]
    assert one.vm_state(0) == (HOLD, 0)
    assert one.call("one.vmaction", "hold", 0) == [False, "Wrong state to perform action"]
    assert one.call("one.vmaction", "release", 0) == [True]
    assert one.vm_state(0) == (PENDING, 0)

    # deploy and shut down: the CPU reservation is computed in single precision
    assert one.call("one.vmdeploy", 0, 0) == [True]
    wait_state(one, 0, ACTIVE, RUNNING)
    assert shares(one, 0) == (29, 64 * 1024, 1)
    assert one.call("one.vmaction", "shutdown", 0) == [True]
    wait_state(one, 0, DONE)
    (record,) = history(one, 0)
    assert record["reason"] == 0
    assert record["estime"] == record["retime"] > 0 and record["eetime"] == record["etime"] > 0
    assert shares(one, 0) == (0, 0, 0)
    with one.db() as db:  # leases released at DONE
        assert db.execute("SELECT oid, ip, vid, used FROM leases ORDER BY oid, ip").fetchall() == [
            (1, 2181693441, -1, 0),
            (1, 2181693444, -1, 0),
        ]

    # finalize a held VM
    assert one.call("one.vmallocate", "NAME = later\n") == [True, 1]
    assert one.call("one.vmaction", "hold", 1) == [True]
    assert one.call("one.vmaction", "finalize", 1) == [True]
    assert one.vm_row(1)[4] == DONE and one.vm_row(1)[7] > 0


def test_sched_rank_places_by_requirements_and_rank(tmp_path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "kvm.conf").write_text("HYPERVISOR = kvm\nFREEMEMORY = 9000000\n")
    (etc / "big.conf").write_text("FREEMEMORY = 1900000\n")
    drivers = (
        'IM_MAD = [ name = "im_xen", executable = "im_dummy" ]\n'
        'IM_MAD = [ name = "im_big", executable = "im_dummy", arguments = "big.conf" ]\n'
        'IM_MAD = [ name = "im_kvm", executable = "im_dummy", arguments = "kvm.conf" ]\n'
        'VM_MAD = [ name = "vmm_xen", executable = "vmm_dummy" ]\n'
        'TM_MAD = [ name = "tm_nfs", executable = "tm_dummy" ]\n'
    )
    write_conf(
        tmp_path, drivers=drivers, scheduler='SCHEDULER = [ plugin = "sched_rank", interval = 0.3 ]'
    )
    one = OneDaemon(tmp_path).start()
    try:
        for name, im in (("xen-small", "im_xen"), ("xen-big", "im_big"), ("kvm-huge", "im_kvm")):
            assert one.call("one.hostallocate", name, im, "vmm_xen", "tm_nfs", True)[0]
        wait_for(lambda: all("TOTALCPU" in one.call("one.hostinfo", h)[1] for h in range(3)))
        template = (
            "NAME = placed\nCPU = 0.5\nMEMORY = 128\n"
            "REQUIREMENTS = 'FREECPU > 50 & HYPERVISOR = \"xen\"'\nRANK = FREEMEMORY\n"
        )
        assert one.call("one.vmallocate", template) == [True, 0]
        wait_state(one, 0, ACTIVE, RUNNING)
        assert history(one, 0)[0]["host_name"] == "xen-big"
        # A VM nothing can hold stays pending.
        assert one.call("one.vmallocate", "NAME = huge\nCPU = 1\nMEMORY = 100000\n") == [True, 1]
        assert one.call(
            "one.vmallocate", 'NAME = none\nCPU = 1\nMEMORY = 1\nREQUIREMENTS = "ARCH = sparc"\n'
        ) == [True, 2]
        wait_for(lambda: history(one, 0), what="first placement")
        # A later VM that fits is placed: the scheduler went past the two it left.
        assert one.call("one.vmallocate", "NAME = small\nCPU = 0.1\nMEMORY = 1\n") == [True, 3]
        wait_state(one, 3, ACTIVE, RUNNING)
        assert one.vm_state(1) == (PENDING, 0) and one.vm_state(2) == (PENDING, 0)
    finally:
        one.stop()
