"""The Haizea plugin pip-installed into the real daemon, time scaled down to seconds.

Dummy drivers with a DELAY stand in for hosts; everything is observed through the 1.2
API (``one.vmget_info`` from loopback) and the daemon's own files.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from lxml import etree

from tests.oned import OneDaemon, wait_for, write_conf
from tests.test_tutorial import add_hosts, history, shares

ACTIVE, SUSPENDED, DONE, FAILED = 3, 5, 6, 7
RUNNING = 3

SCHEDULER = (
    'SCHEDULER = [ plugin = "haizea", suspend_rate = 256, resume_rate = 256, '
    "shutdown_time = 2, group_window = 0.2 ]"
)


def _daemon(tmp_path: Path) -> OneDaemon:
    write_conf(tmp_path, scheduler=SCHEDULER, vmm_extra=", DELAY = 0.2")
    return OneDaemon(tmp_path).start()


def _vm(name: str, haizea: str) -> str:
    # CPU = 2 is the whole of a dummy host (TOTALCPU = 200): one lease per host.
    return f"NAME = {name}\nCPU = 2\nMEMORY = 256\nHAIZEA = [ {haizea} ]\n"


def lease_state(one: OneDaemon, lid: int) -> str | None:
    """The lease's state as ``haizea.lease.list`` shows it (None while it is not listed)."""
    ok, document = one.call14("haizea.lease.list")
    assert ok, document
    for lease in etree.fromstring(document):
        if lease.findtext("ID") == str(lid):
            return lease.findtext("STATE")
    return None


class Timeline:
    """Every state change of some VMs with the time it was seen, polling the API."""

    def __init__(self, one: OneDaemon, vids: list[int]) -> None:
        self.one, self.vids = one, vids
        self.changes: list[tuple[float, int, tuple[int, int]]] = []
        self._last: dict[int, tuple[int, int]] = {}

    def wait(self, vid: int, state: tuple[int, int], after: float, timeout: float = 10) -> float:
        """When ``vid`` entered ``state`` after ``after`` (waiting for it if need be)."""
        deadline = time.time() + timeout
        while True:
            for at, each, seen in self.changes:
                if each == vid and seen == state and at > after:
                    return at
            assert time.time() < deadline, f"VM {vid} never {state}: {self.changes}"
            for each in self.vids:
                current = self.one.vm_state(each)
                if self._last.get(each) != current:
                    self._last[each] = current
                    self.changes.append((time.time(), each, current))
            time.sleep(0.02)


def test_an_advance_reservation_suspends_a_best_effort_vm_and_it_resumes(tmp_path) -> None:
    one = _daemon(tmp_path)
    try:
        add_hosts(one, "node01")
        ok, batch = one.call(
            "one.vmallocate",
            _vm("batch", 'START = best_effort, DURATION = "00:00:12", PREEMPTIBLE = yes'),
        )
        assert ok
        timeline = Timeline(one, [batch])
        started = timeline.wait(batch, (ACTIVE, RUNNING), 0)

        ok, reserved = one.call(
            "one.vmallocate",
            _vm("reserved", 'START = "+00:00:04", DURATION = "00:00:03", PREEMPTIBLE = no'),
        )
        assert ok
        stime = one.vm_row(reserved)[6]
        ar_start, ar_end = stime + 4, stime + 7
        timeline.vids.append(reserved)

        suspended = timeline.wait(batch, (SUSPENDED, 0), started)
        assert suspended < ar_start
        ar_running = timeline.wait(reserved, (ACTIVE, RUNNING), 0)
        assert ar_start <= ar_running < ar_start + 1
        ar_done = timeline.wait(reserved, (DONE, 0), ar_running)
        assert ar_end <= ar_done < ar_end + 1
        resumed = timeline.wait(batch, (ACTIVE, RUNNING), suspended)
        assert ar_done - 0.1 <= resumed < ar_done + 1.5
        finished = timeline.wait(batch, (DONE, 0), resumed, timeout=20)
        # 12 s of work: what ran before the suspension plus what ran after the resume.
        worked = (suspended - started) + (finished - resumed)
        assert 11 <= worked <= 14, timeline.changes

        # The daemon's history: suspended (STOP_RESUME) before the reservation ran on the
        # host, resumed on the same host once it was over.
        (reservation,) = history(one, reserved)
        first, second = history(one, batch)
        assert (first["host_name"], second["host_name"]) == ("node01", "node01")
        assert (first["reason"], second["reason"]) == (2, 0)
        assert first["retime"] <= reservation["rstime"] == ar_start
        assert reservation["etime"] <= second["rstime"]
    finally:
        assert one.stop() == 0


def test_with_migration_a_suspended_vm_resumes_on_another_host(tmp_path) -> None:
    """The best-effort VM is suspended on node01 for a reservation of that host; node02
    frees up first, and it resumes there (PROLOG_MIGRATE, BOOT, RUNNING) at once."""
    scheduler = SCHEDULER.replace(" ]", ", migration = yes, migrate_rate = 256 ]")
    write_conf(tmp_path, scheduler=scheduler, vmm_extra=", DELAY = 0.2")
    one = OneDaemon(tmp_path).start()
    try:
        add_hosts(one, "node01", "node02")
        ok, batch = one.call(
            "one.vmallocate",
            _vm("batch", 'START = best_effort, DURATION = "00:01:00", PREEMPTIBLE = yes'),
        )
        assert ok
        timeline = Timeline(one, [batch])
        started = timeline.wait(batch, (ACTIVE, RUNNING), 0)
        # node02 is taken for 8 s by a lease that can not be preempted...
        ok, blocker = one.call(
            "one.vmallocate", _vm("blocker", 'START = now, DURATION = "00:00:08", PREEMPTIBLE = no')
        )
        assert ok
        timeline.vids.append(blocker)
        timeline.wait(blocker, (ACTIVE, RUNNING), 0)
        # ... so a reservation from +4 s for a minute can only have node01.
        ok, reserved = one.call(
            "one.vmallocate",
            _vm("reserved", 'START = "+00:00:04", DURATION = "00:01:00", PREEMPTIBLE = no'),
        )
        assert ok
        ar_start = one.vm_row(reserved)[6] + 4
        timeline.vids.append(reserved)

        suspended = timeline.wait(batch, (SUSPENDED, 0), started)
        assert suspended < ar_start
        ar_running = timeline.wait(reserved, (ACTIVE, RUNNING), 0)
        assert ar_start <= ar_running < ar_start + 1
        blocker_done = timeline.wait(blocker, (DONE, 0), 0, timeout=15)
        resumed = timeline.wait(batch, (ACTIVE, RUNNING), suspended)
        assert blocker_done - 0.1 <= resumed < blocker_done + 2.5
        assert resumed < ar_start + 60  # not waiting for node01 to be free again
        assert lease_state(one, batch) == "active"

        # one.db: suspended on node01 (STOP_RESUME), then a record on node02 whose
        # prolog (the move of the checkpoint and images) ran before its restore.
        first, second = history(one, batch)
        (reservation,) = history(one, reserved)
        (blocking,) = history(one, blocker)
        assert (first["host_name"], second["host_name"]) == ("node01", "node02")
        assert (first["reason"], second["reason"]) == (2, 0)
        assert first["retime"] <= reservation["rstime"] == ar_start
        assert reservation["host_name"] == "node01"
        assert blocking["etime"] <= second["stime"] == second["pstime"]
        assert second["pstime"] <= second["petime"] <= second["rstime"]
        assert second["etime"] == 0
        log = (tmp_path / "var" / str(batch) / "vm.log").read_text()
        assert "New VM state is PROLOG_MIGRATE" in log
        # The shares moved with it: node02 holds the batch VM, node01 the reservation.
        assert shares(one, 0)[2] == shares(one, 1)[2] == 1
    finally:
        assert one.stop() == 0


def test_a_bad_haizea_vector_fails_the_vm_with_the_reason_in_its_log(tmp_path) -> None:
    one = _daemon(tmp_path)
    try:
        ok, vid = one.call("one.vmallocate", _vm("bad", "START = tomorrow"))
        assert ok
        wait_for(lambda: one.vm_state(vid) == (FAILED, 0), what="the VM FAILED")
        log = (tmp_path / "var" / str(vid) / "vm.log").read_text()
        assert "Lease request refused: HAIZEA lacks DURATION, PREEMPTIBLE" in log
        assert history(one, vid) == []
    finally:
        assert one.stop() == 0


def test_naming_haizea_without_its_package_is_a_clear_startup_error(tmp_path) -> None:
    """The same Python and packages, minus nebula-xr-haizea (a site dir without it)."""
    site_dir = tmp_path / "site-packages"
    site_dir.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if "haizea" not in entry.name.lower():
            (site_dir / entry.name).symlink_to(entry)
    conf = write_conf(tmp_path, scheduler='SCHEDULER = [ plugin = "haizea" ]')
    start = (
        f"import site, sys; site.addsitedir({str(site_dir)!r}); "
        f"sys.argv = ['nebula-xr', '--conf', {str(conf)!r}]; "
        "from nebula_xr.daemon import main; main()"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", start],
        env=dict(os.environ, ONE_LOCATION=str(tmp_path)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "No plugin named 'haizea' for the scheduler; installed plugins: " in result.stderr
    assert "im_dummy" in result.stderr and "sched_rank" in result.stderr
    assert "Traceback" not in result.stderr


def test_after_a_restart_running_leases_still_end_on_time_and_queued_ones_start(
    tmp_path,
) -> None:
    one = _daemon(tmp_path)
    try:
        add_hosts(one, "node01")
        lease = 'START = best_effort, DURATION = "00:00:06", PREEMPTIBLE = no'
        ok, first = one.call("one.vmallocate", _vm("first", lease))
        assert ok
        wait_for(lambda: one.vm_state(first) == (ACTIVE, RUNNING), what="first VM running")
        ok, second = one.call("one.vmallocate", _vm("second", lease))
        assert ok
        assert one.stop() == 0
        one.start()
        wait_for(lambda: one.vm_state(first) == (DONE, 0), timeout=15, what="first VM done")
        ended = time.time()
        (placement,) = history(one, first)
        # It ended when its lease did, counted from its placement before the restart.
        assert placement["rstime"] + 6 <= ended < placement["rstime"] + 6 + 2.5
        wait_for(lambda: one.vm_state(second) == (ACTIVE, RUNNING), what="second VM running")
        assert history(one, second)[0]["rstime"] >= placement["etime"]
    finally:
        one.stop()


def test_leases_are_listed_over_xmlrpc_and_by_onelease(tmp_path) -> None:
    one = _daemon(tmp_path)
    try:
        add_hosts(one, "node01")
        long = 'START = best_effort, DURATION = "01:00:00", PREEMPTIBLE = yes'
        ok, running = one.call("one.vmallocate", _vm("running", long))
        assert ok
        wait_for(lambda: one.vm_state(running) == (ACTIVE, RUNNING), what="the VM running")
        ok, waiting = one.call("one.vmallocate", _vm("waiting", long))
        assert ok
        assert "haizea.lease.list" in one.call("system.listMethods")
        wait_for(lambda: f"<ID>{waiting}</ID>" in one.call14("haizea.lease.list")[1])

        env = dict(os.environ, ONE_XMLRPC=one.url, ONE_AUTH=str(one.one_auth))
        onelease = str(Path(sys.executable).parent / "onelease")

        def run(*args: str) -> str:
            return subprocess.run(
                [onelease, *args], env=env, capture_output=True, text=True, check=True
            ).stdout

        leases = json.loads(run("list", "-o", "json"))
        assert [(lease["ID"], lease["STATE"], lease["VMS"]) for lease in leases] == [
            (running, "active", [running]),
            (waiting, "queued", [waiting]),
        ]
        assert leases[0]["HOSTS"] == [0] and leases[0]["DURATION"] == 3600
        assert [lease["ID"] for lease in json.loads(run("queue", "-o", "json"))] == [waiting]
        table = run("list").splitlines()
        assert table[0].split()[:3] == ["ID", "TYPE", "STATE"]
        assert table[1].split()[:3] == [str(running), "best_effort", "active"]
        assert "STATE     : queued" in run("show", str(waiting))

        missing = subprocess.run([onelease, "show", "42"], env=env, capture_output=True, text=True)
        assert missing.returncode == 255
        assert "Error getting lease with ID = 42" in missing.stderr
    finally:
        assert one.stop() == 0


def test_gangs_rejections_and_early_termination_on_the_daemon(tmp_path) -> None:
    one = _daemon(tmp_path)
    try:
        add_hosts(one, "node01", "node02")

        def allocate(name: str, haizea: str) -> int:
            ok, vid = one.call("one.vmallocate", _vm(name, haizea))
            assert ok
            return vid

        # Three nodes now, on two hosts: all or nothing, so nothing.
        gang = [allocate("gang", "START = now, DURATION = unlimited, PREEMPTIBLE = no, "
                         "GROUP = three") for _ in range(3)]  # fmt: skip
        for vid in gang:
            wait_for(lambda vid=vid: one.vm_state(vid) == (FAILED, 0), what=f"VM {vid} FAILED")
            assert history(one, vid) == []
        log = (tmp_path / "var" / str(gang[0]) / "vm.log").read_text()
        assert f"immediate lease {gang[0]} rejected: no room for 3 node(s)" in log

        # Both hosts reserved from +5 s for 3 s; a reservation overlapping it is refused.
        pair = [allocate("pair", 'START = "+00:00:05", DURATION = "00:00:03", '
                         "PREEMPTIBLE = no, GROUP = two") for _ in range(2)]  # fmt: skip
        wait_for(lambda: lease_state(one, pair[0]) == "scheduled", what="the pair admitted")
        late = allocate("late", 'START = "+00:00:06", DURATION = "00:00:03", PREEMPTIBLE = no')
        wait_for(lambda: one.vm_state(late) == (FAILED, 0), what="the overlapping AR FAILED")
        stime = one.vm_row(pair[0])[6]
        for vid in pair:
            wait_for(lambda vid=vid: one.vm_state(vid) == (ACTIVE, RUNNING), timeout=10)
        assert time.time() >= stime + 5
        assert sorted(history(one, vid)[0]["host_name"] for vid in pair) == ["node01", "node02"]
        for vid in pair:
            wait_for(lambda vid=vid: one.vm_state(vid) == (DONE, 0), timeout=10)
        assert time.time() >= stime + 8

        # A lease ended early by its user frees its host for the next one at once.
        long = 'START = best_effort, DURATION = "01:00:00", PREEMPTIBLE = no'
        first = [allocate("first", long + ", GROUP = wide") for _ in range(2)]
        for vid in first:
            wait_for(lambda vid=vid: one.vm_state(vid) == (ACTIVE, RUNNING))
        second = allocate("second", long)
        wait_for(lambda: lease_state(one, second) == "queued", what="the next lease queued")
        assert one.vm_state(second)[0] == 1  # PENDING: both hosts are taken for an hour
        assert one.call("one.vmaction", "cancel", first[0]) == [True]
        wait_for(lambda: one.vm_state(second) == (ACTIVE, RUNNING), what="the next lease")
        assert history(one, second)[0]["host_name"] == history(one, first[0])[0]["host_name"]
    finally:
        assert one.stop() == 0


def lease_field(one: OneDaemon, lid: int, name: str) -> str:
    ok, document = one.call14("haizea.lease.info", lid)
    assert ok, document
    return etree.fromstring(document).findtext(name)


def test_corrected_rates_and_finished_leases_survive_a_restart(tmp_path) -> None:
    """The plugin's own tables in one.db: a restarted daemon plans suspensions with the
    rates real suspensions corrected, and still lists the leases that were over."""
    # 1536 MB at the configured 256 MB/s: suspensions planned 6 s before a reservation;
    # a dummy suspension takes a fraction of a second, so the corrected rate is far higher.
    best_effort = 'START = best_effort, DURATION = "00:01:00", PREEMPTIBLE = yes'

    def reservation() -> str:
        return _vm("reserved", 'START = "+00:00:10", DURATION = "00:00:02", PREEMPTIBLE = no')

    def planned_lead(lid: int, reserved: int) -> int:
        """Seconds between the planned suspension of ``lid`` and the reservation's start."""
        wait_for(lambda: lease_field(one, lid, "SUSPEND") != "-1", what="a planned suspension")
        return one.vm_row(reserved)[6] + 10 - int(lease_field(one, lid, "SUSPEND"))

    one = _daemon(tmp_path)
    try:
        add_hosts(one, "node01")
        ok, batch = one.call("one.vmallocate", _vm("batch", best_effort).replace("256", "1536"))
        assert ok
        timeline = Timeline(one, [batch])
        started = timeline.wait(batch, (ACTIVE, RUNNING), 0)
        ok, reserved = one.call("one.vmallocate", reservation())
        assert ok
        assert planned_lead(batch, reserved) == 6  # the configured rate
        timeline.vids.append(reserved)
        suspended = timeline.wait(batch, (SUSPENDED, 0), started)
        timeline.wait(reserved, (DONE, 0), 0, timeout=20)
        timeline.wait(batch, (ACTIVE, RUNNING), suspended)
        wait_for(lambda: lease_state(one, reserved) == "done", what="the reservation done")
    finally:
        assert one.stop() == 0

    with sqlite3.connect(tmp_path / "var" / "one.db") as db:
        rates = dict(db.execute("SELECT action, rate FROM haizea_rates"))
    assert set(rates) == {"suspend", "resume"} and rates["suspend"] > 256 * 3

    one = OneDaemon(tmp_path).start()
    try:
        assert lease_state(one, reserved) == "done"  # a finished lease, listed again
        assert lease_field(one, reserved, "VMS") == str(reserved)
        assert lease_field(one, reserved, "TYPE") == "advance_reservation"
        assert lease_state(one, batch) == "active"  # rebuilt from its VM
        ok, again = one.call("one.vmallocate", reservation())
        assert ok
        assert planned_lead(batch, again) <= 2  # 1536 MB at the corrected rate
    finally:
        assert one.stop() == 0
