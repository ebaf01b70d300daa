"""Benchmark of the Haizea scheduler plugin (plugins/sched_haizea, pip-installed).

* planning: admitting and planning 1,000 leases over 100 hosts (a third advance
  reservations, the rest best effort, conservative backfilling, a quarter of the hosts'
  room taken by running leases): time to admit every reservation, and time of one full
  re-plan (what every event costs);
* enactment: a real daemon with dummy drivers taking ``--delay`` seconds per action, an
  advance reservation of 16 VMs on 4 hosts: seconds from its start to all 16 RUNNING,
  against the ``16 × per-VM time`` Haizea's one-command-at-a-time enactment needed.

    python bench/haizea_bench.py [--leases 1000] [--hosts 100] [--delay 0.5]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nebula_xr_haizea.planner import Lease, LeaseState, Node, Policy, admit, plan  # noqa: E402
from nebula_xr_haizea.request import LeaseKind  # noqa: E402

from tests.oned import OneDaemon, write_conf  # noqa: E402
from tests.test_tutorial import add_hosts, history  # noqa: E402

HOUR = 3600.0


def planning(leases: int, hosts: int) -> None:
    rng = random.Random(8)
    nodes = [Node(hid, 800, 16 * 1024 * 1024) for hid in range(hosts)]
    policy = Policy(backfilling="conservative")
    admitted: list[Lease] = []
    for lid in range(hosts):  # running leases: a quarter of every host
        admitted.append(
            Lease(lid, LeaseKind.BEST_EFFORT, 1, 200, 4 * 1024 * 1024, 0.0, 8 * HOUR,
                  preemptible=bool(lid % 2), state=LeaseState.ACTIVE, hosts=(lid,),
                  running_since=0.0)
        )  # fmt: skip
    requests = []
    for lid in range(hosts, hosts + leases):
        nodes_wanted = rng.choice((1, 1, 2, 4))
        if rng.random() < 1 / 3:
            start = rng.uniform(0, 48) * HOUR
            requests.append(
                Lease(lid, LeaseKind.ADVANCE_RESERVATION, nodes_wanted, 100, 1024 * 1024,
                      float(lid), rng.choice((1, 2, 4)) * HOUR, start=start)
            )  # fmt: skip
        else:
            requests.append(
                Lease(lid, LeaseKind.BEST_EFFORT, nodes_wanted, 100, 1024 * 1024, float(lid),
                      rng.choice((0.5, 1, 3, 6)) * HOUR, preemptible=rng.random() < 0.5,
                      state=LeaseState.QUEUED)
            )  # fmt: skip
    started = time.perf_counter()
    rejected = 0
    for request in requests:
        if request.kind is LeaseKind.ADVANCE_RESERVATION:
            hosts_found = admit(0.0, nodes, admitted, request, policy)
            if hosts_found is None:
                rejected += 1
                continue
            request = replace(request, hosts=hosts_found, state=LeaseState.SCHEDULED)
        admitted.append(request)
    admission = time.perf_counter() - started
    started = time.perf_counter()
    result = plan(0.0, nodes, admitted, policy)
    replan = time.perf_counter() - started
    ars = sum(1 for r in requests if r.kind is LeaseKind.ADVANCE_RESERVATION)
    print(f"planning: {leases} leases ({ars} AR, {rejected} rejected) over {hosts} hosts")
    print(f"  admitting every AR: {admission:.2f} s")
    print(
        f"  one full plan: {replan:.2f} s ({len(result.reservations)} reservations, "
        f"{len(result.queued)} queued)"
    )


def enactment(delay: float) -> None:
    with tempfile.TemporaryDirectory() as location:
        root = Path(location)
        write_conf(
            root,
            scheduler='SCHEDULER = [ plugin = "haizea", group_window = 0.5 ]',
            vmm_extra=f", DELAY = {delay}",
            tm_extra=f", DELAY = {delay}",
        )
        one = OneDaemon(root).start()
        try:
            add_hosts(one, "node01", "node02", "node03", "node04")
            # A dummy host has TOTALCPU 200: four VMs of CPU 0.5 each.
            template = (
                "NAME = ar\nCPU = 0.5\nMEMORY = 128\n"
                'HAIZEA = [ START = "+00:00:05", DURATION = "00:01:00", PREEMPTIBLE = no, '
                "GROUP = bench ]\n"
            )
            vids = [one.call("one.vmallocate", template)[1] for _ in range(16)]
            start = one.vm_row(vids[0])[6] + 5
            pending = set(vids)
            while pending and time.time() < start + 60:
                pending = {vid for vid in pending if one.vm_state(vid) != (3, 3)}
                time.sleep(0.02)
            all_running = time.time()
            placed = {history(one, vid)[0]["host_name"] for vid in vids if history(one, vid)}
        finally:
            one.stop()
    if pending:
        print(f"enactment: {len(pending)} VMs never ran")
        return
    per_vm = 2 * delay  # prolog (transfer driver) then boot (VM driver)
    took = all_running - start
    print(f"enactment: AR of 16 VMs on 4 hosts, dummy drivers {delay} s per action")
    print(f"  its start to all RUNNING: {took:.2f} s (on {len(placed)} hosts, in parallel)")
    print(f"  Haizea's sequential enactment: 16 × {per_vm:.1f} s = {16 * per_vm:.1f} s")
    print(f"  speed-up: {16 * per_vm / took:.1f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--delay", type=float, default=0.5)
    args = parser.parse_args()
    planning(args.leases, args.hosts)
    enactment(args.delay)


if __name__ == "__main__":
    main()
