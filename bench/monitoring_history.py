"""Benchmark of the monitoring history: what recording costs the API, and what it costs
one.db.

1. A real daemon with the dummy drivers, ``--hosts`` hosts and ``--vms`` RUNNING VMs polled
   every ``--polling`` seconds (hosts monitored as often), is measured twice: history off
   (``MONITORING_HISTORY = [ retention = 0 ]``) and on (the default day): both daemons run
   at once and, in turn for ``--rounds`` rounds, ``one.vm.info`` with oneadmin's 1.4 session
   is called by 1 and 8 client processes for ``--seconds`` seconds while the polls go on;
   then ``one.vm.monitoring`` of one VM.
2. The history of a day at the default intervals (``HOST_MONITORING_INTERVAL`` and
   ``VM_POLLING_INTERVAL`` 300 s) for ``--vms`` VMs and ``--hosts`` hosts is recorded on a
   simulated clock into a real one.db: its size (the steady state, since a day is kept),
   how long a start-up takes to load it, and what one ``samples()`` of a VM costs.

::

    python bench/monitoring_history.py [--vms 1000] [--hosts 4] [--polling 10] [--seconds 5]
        [--rounds 3]
"""

from __future__ import annotations

import argparse
import queue
import resource
import sqlite3
import statistics
import sys
import tempfile
import time
import tracemalloc
import xmlrpc.client
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import task  # noqa: E402

from bench.rpc_load import run_load  # noqa: E402
from nebula_xr import xmldoc  # noqa: E402
from nebula_xr.database import Database  # noqa: E402
from nebula_xr.model import Host, VirtualMachine  # noqa: E402
from nebula_xr.monitoring_history import FLUSH_INTERVAL, MonitoringHistory  # noqa: E402
from nebula_xr.template import Template  # noqa: E402
from tests.oned import OneDaemon, wait_for, write_conf  # noqa: E402

DEFAULT_INTERVAL = 300
DAY = 86400
VM_TEMPLATE = "NAME = bench\nCPU = 0.1\nMEMORY = 64"


def _multicall(one: OneDaemon, calls: list[tuple[str, tuple]]) -> list[Any]:
    with one.proxy() as proxy:
        batch = xmlrpc.client.MultiCall(proxy)
        for method, params in calls:
            getattr(batch, method)(one.session, *params)
        return list(batch())


def _running(one: OneDaemon) -> int:
    with one.db() as db:
        return db.execute("SELECT count(*) FROM vm_pool WHERE lcm_state = 3").fetchone()[0]


def _cloud(location: Path, vms: int, hosts: int, polling: int, retention: int) -> OneDaemon:
    """A daemon with ``vms`` RUNNING VMs on ``hosts`` hosts, all polled every ``polling`` s."""
    conf = write_conf(
        location, extra=f"DEBUG_LEVEL = 0\nMONITORING_HISTORY = [ retention = {retention} ]"
    )
    conf.write_text(
        conf.read_text()
        .replace("HOST_MONITORING_INTERVAL = 1", f"HOST_MONITORING_INTERVAL = {polling}")
        .replace("VM_POLLING_INTERVAL = 1", f"VM_POLLING_INTERVAL = {polling}")
        .replace("MANAGER_TIMER = 0.2", "MANAGER_TIMER = 1")
    )
    one = OneDaemon(location).start()
    for n in range(hosts):
        assert one.call14("one.host.allocate", f"node{n:02}", "im_xen", "vmm_xen", "tm_nfs")
    created = []
    for start in range(0, vms, 500):
        chunk = range(start, min(vms, start + 500))
        answers = _multicall(one, [("one.vm.allocate", (VM_TEMPLATE,)) for _ in chunk])
        created += [answer[1] for answer in answers]
    for start in range(0, vms, 500):
        calls = [("one.vm.deploy", (vid, vid % hosts)) for vid in created[start : start + 500]]
        assert all(answer == [True] for answer in _multicall(one, calls))
    wait_for(lambda: _running(one) == vms, timeout=300, what="every VM running")
    assert one.call14("one.vm.info", 0)[0] is True  # the session is verified once, then cached
    return one


def measure_api(vms: int, hosts: int, polling: int, seconds: float, rounds: int) -> None:
    """Both daemons run at once (so each measurement has the same background load) and are
    measured in turn, ``rounds`` times."""
    with tempfile.TemporaryDirectory(prefix="nebula-bench-") as location:
        daemons: dict[str, OneDaemon] = {}
        try:
            for name, retention in (("off", 0), ("on", DAY)):
                (Path(location) / name).mkdir()
                daemons[name] = _cloud(Path(location) / name, vms, hosts, polling, retention)
            time.sleep(polling)  # a whole polling round: the polls run during the load
            print(
                f"one.vm.info (1.4 session), history off and on: {vms} VMs polled and {hosts} "
                f"hosts monitored every {polling} s by each of the two daemons, {seconds:g} s "
                "a measurement"
            )
            rates: dict[tuple[str, int], list[float]] = {}
            for round_number in range(rounds):
                for name, one in daemons.items():
                    body = xmlrpc.client.dumps((one.session, 0), "one.vm.info").encode()
                    for clients in (1, 8):
                        stats = run_load(one.url, body, clients, seconds)
                        rates.setdefault((name, clients), []).append(stats["rps"])
                        print(
                            f"  round {round_number + 1}, history {name:3}, {clients} client(s): "
                            f"{stats['rps']:6.0f} req/s  p50 {stats['p50_ms']:.3f} ms  "
                            f"p99 {stats['p99_ms']:.3f} ms  errors {stats['errors']:.0f}"
                        )
            for clients in (1, 8):
                off = statistics.median(rates["off", clients])
                on = statistics.median(rates["on", clients])
                print(
                    f"  median, {clients} client(s): off {off:.0f} req/s, on {on:.0f} req/s "
                    f"({(on - off) / off * 100:+.1f} %)"
                )
            one = daemons["on"]
            ok, document = one.call14("one.vm.monitoring", 0)
            assert ok, document
            body = xmlrpc.client.dumps((one.session, 0), "one.vm.monitoring").encode()
            stats = run_load(one.url, body, 1, seconds)
            print(
                f"  one.vm.monitoring ({document.count('<VM>')} samples), 1 client: "
                f"{stats['rps']:.0f} req/s  p50 {stats['p50_ms']:.3f} ms"
            )
        finally:
            for one in daemons.values():
                one.stop()
        with sqlite3.connect(Path(location) / "on" / "var" / "one.db") as db:
            rows = db.execute("SELECT count(*) FROM nebula_xr_monitoring").fetchone()[0]
        print(f"  samples the daemon with history wrote to one.db: {rows}")


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


class _WriterClock(task.Clock):
    """A simulated clock that is also one.db's reactor (the writer's answers are dropped)."""

    def __init__(self) -> None:
        super().__init__()
        self.rightNow = time.time()
        self.answers: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def callFromThread(self, function: Any, *args: Any) -> None:  # noqa: N802
        self.answers.put((function, args))


def measure_storage(vms: int, hosts: int) -> None:
    with tempfile.TemporaryDirectory(prefix="nebula-bench-") as location:
        path = Path(location) / "one.db"
        clock = _WriterClock()
        db = Database(path, reactor=clock)
        db.open()
        db.close()
        empty = path.stat().st_size

        db = Database(path, reactor=clock)
        db.open()
        history = MonitoringHistory(db, clock, DAY)
        history.startService()
        machines = [VirtualMachine(oid=vid, template=Template(), stime=0) for vid in range(vms)]
        nodes = [Host(hid, f"node{hid}", "im", "vmm", "tm", True, 0) for hid in range(hosts)]
        for number, vm in enumerate(machines):
            vm.cpu, vm.memory, vm.net_tx, vm.net_rx = 10, 65536, 1000 * number, 500 * number
        for host in nodes:
            host.attributes.update(USEDCPU="37", USEDMEMORY="1048576")
            host.shares.max_cpu, host.shares.max_mem = 800, 16777216
        rounds = DAY // DEFAULT_INTERVAL
        resident = _resident_bytes()
        begun = time.perf_counter()
        for _ in range(rounds):
            for host in nodes:
                history.host_monitored(host)
            for vm in machines:
                vm.net_tx += 4096
                history.vm_polled(vm)
            clock.advance(DEFAULT_INTERVAL)
        recording = time.perf_counter() - begun
        grown = _resident_bytes() - resident
        samples = rounds * (vms + hosts)
        begun = time.perf_counter()
        for _ in range(100):
            xmldoc.vm_monitoring_document(0, history.samples("vm", 0))
        reading = (time.perf_counter() - begun) / 100
        history.stopService()
        db.close()
        size = path.stat().st_size - empty

        begun = time.perf_counter()
        db = Database(path, reactor=clock)
        db.open()
        reloaded = MonitoringHistory(db, clock, DAY)
        loading = time.perf_counter() - begun
        kept = len(reloaded.samples("vm", 0))
        db.close()
        del reloaded

        tracemalloc.start()  # what a loaded day holds, once the start-up's rows are freed
        db = Database(path, reactor=clock)
        db.open()
        reloaded = MonitoringHistory(db, clock, DAY)
        db.close()
        held = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert len(reloaded.samples("vm", 0)) == kept

    print(
        f"a day at the default intervals ({DEFAULT_INTERVAL} s), {vms} VMs and {hosts} hosts: "
        f"{samples} samples, flushed every {FLUSH_INTERVAL:g} s of the clock"
    )
    print(
        f"  one.db growth: {size / 2**20:.1f} MiB per day ({size / samples:.0f} bytes a sample, "
        "index included); a day is kept, so this is also the steady size"
    )
    print(f"  recording on the reactor: {recording / samples * 1e6:.1f} us a sample")
    print(
        f"  memory: the day held by the history {held / 2**20:.1f} MiB; the process grew by "
        f"{grown / 2**20:.0f} MiB while recording it"
    )
    print(
        f"  start-up load of the day: {loading:.2f} s; samples of one VM ({kept}) as "
        f"one.vm.monitoring's document: {reading * 1000:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--polling", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-api", action="store_true", help="only the one.db figures")
    args = parser.parse_args()
    if not args.skip_api:
        measure_api(args.vms, args.hosts, args.polling, args.seconds, args.rounds)
    measure_storage(args.vms, args.hosts)


if __name__ == "__main__":
    main()
