"""Haizea's preemption on the namespace cluster with real QEMU guests.

The pip-installed plugin schedules a best-effort guest on a real sshd host (the fake Xen
toolstack in qemu mode); an advance reservation for the whole host suspends it (QEMU saves
its memory) and, once the reservation is over, resumes it from that save. The guest's serial
console proves it continued: one boot, and a tick counter without gap or repeat.
Times are scaled down to seconds, with room for QEMU's save and restore on a loaded machine.
"""

from __future__ import annotations

import time

from tests.cluster.cluster import Cluster
from tests.oned import wait_for
from tests.test_haizea_daemon import Timeline, lease_state
from tests.test_tutorial import history
from tests.test_xen_cluster import assert_never_rebooted, start_daemon, ticks

ACTIVE, RUNNING, SUSPENDED, DONE = 3, 3, 5, 6

# 128 MB at 16 MB/s: the suspension is planned 8 s before the reservation, the resume 4 s.
SCHEDULER = (
    'SCHEDULER = [ plugin = "haizea", suspend_rate = 16, resume_rate = 32, shutdown_time = 8 ]'
)


def _guest(name: str, haizea: str) -> str:
    # CPU = 2 is the whole host (2 CPUs in `xm info`): the reservation needs the guest's room.
    return (
        f"NAME = {name}\nCPU = 2\nMEMORY = 128\nOS = [ kernel = /boot/vmlinuz ]\n"
        f"HAIZEA = [ {haizea} ]\n"
    )


def test_a_reservation_suspends_a_best_effort_guest_which_continues(
    qemu_cluster: Cluster, tmp_path
) -> None:
    c = qemu_cluster
    one = start_daemon(tmp_path, c, str(c.shared_dir / "one"), timeout=60, scheduler=SCHEDULER)
    try:
        assert one.call("one.hostallocate", "node01", "im_xen", "vmm_xen", "tm_nfs", True)[0]
        wait_for(lambda: "TOTALCPU=200" in one.call("one.hostinfo", 0)[1], timeout=20)

        ok, batch = one.call(
            "one.vmallocate",
            _guest("batch", 'START = best_effort, DURATION = "00:05:00", PREEMPTIBLE = yes'),
        )
        assert ok, batch
        timeline = Timeline(one, [batch])
        started = timeline.wait(batch, (ACTIVE, RUNNING), 0, timeout=60)
        wait_for(lambda: len(ticks(c.console_log("node01", "one-0"))) >= 3, timeout=60)
        assert lease_state(one, batch) == "active"

        ok, reserved = one.call(
            "one.vmallocate",
            _guest("reserved", 'START = "+00:00:14", DURATION = "00:00:10", PREEMPTIBLE = no'),
        )
        assert ok, reserved
        stime = one.vm_row(reserved)[6]
        ar_start, ar_end = stime + 14, stime + 24
        timeline.vids.append(reserved)

        suspended = timeline.wait(batch, (SUSPENDED, 0), started, timeout=30)
        assert suspended < ar_start, (suspended, ar_start, timeline.changes)
        assert lease_state(one, batch) == "suspended"
        ticks_when_saved = ticks(c.console_log("node01", "one-0"))[-1]

        ar_running = timeline.wait(reserved, (ACTIVE, RUNNING), 0, timeout=30)
        assert ar_start <= ar_running < ar_start + 3
        # The reservation's own guest runs on the host the best-effort one left.
        wait_for(lambda: len(ticks(c.console_log("node01", "one-1"))) >= 3, timeout=60)
        assert ticks(c.console_log("node01", "one-0"))[-1] == ticks_when_saved
        ar_done = timeline.wait(reserved, (DONE, 0), ar_running, timeout=40)
        assert ar_end <= ar_done < ar_end + 10  # ACPI shutdown of a TCG guest

        resumed = timeline.wait(batch, (ACTIVE, RUNNING), suspended, timeout=40)
        assert ar_done - 0.5 <= resumed, timeline.changes
        assert lease_state(one, batch) == "active"
        # Restored from its save: the same boot, the counter continuing past where it stopped.
        wait_for(
            lambda: assert_never_rebooted(c, "one-0") > ticks_when_saved + 3,
            timeout=30,
            what="ticks after the resume",
        )

        # The daemon's records: saved (STOP_RESUME) before the reservation ran, restored on
        # the same host after it was over.
        (reservation,) = history(one, reserved)
        first, second = history(one, batch)
        assert (first["host_name"], second["host_name"]) == ("node01", "node01")
        assert (first["reason"], second["reason"]) == (2, 0)
        assert first["retime"] <= reservation["rstime"]
        assert reservation["etime"] <= second["rstime"]
        print(
            f"\nhaizea on qemu: suspended {ar_start - suspended:.1f} s before the reservation, "
            f"reservation running {ar_running - ar_start:.1f} s after its start, done "
            f"{ar_done - ar_end:.1f} s after its end, guest resumed {resumed - ar_done:.1f} s "
            f"later; {time.time() - started:.0f} s in all"
        )
        assert one.call("one.vmaction", "shutdown", batch) == [True]
        timeline.wait(batch, (DONE, 0), resumed, timeout=30)
    finally:
        one.stop()
