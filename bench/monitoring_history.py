"""Benchmark of the monitoring history: what recording costs the API, and what it costs
one.db.

1. A real daemon with the dummy drivers, ``--hosts`` hosts and ``--vms`` RUNNING VMs polled
   every ``--polling`` seconds (hosts monitored as often), is measured twice: history off
   (``MONITORING_HISTORY = [ retention = 0 ]``) and on (the default day). Each time
   ``one.vm.info`` with oneadmin's 1.4 session is called by 1 and 8 client processes for
   ``--seconds`` seconds, while the polls go on; then ``one.vm.monitoring`` of one VM.
2. The history of a day at the default intervals (``HOST_MONITORING_INTERVAL`` and
   ``VM_POLLING_INTERVAL`` 300 s) for ``--vms`` VMs and ``--hosts`` hosts is recorded on a
   simulated clock into a real one.db: its size (the steady state, since a day is kept),
   how long a start-up takes to load it, and what one ``samples()`` of a VM costs.

::

    python bench/monitoring_history.py [--vms 1000] [--hosts 4] [--polling 10] [--seconds 10]
"""

from __future__ import annotations

import argparse
import queue
import sqlite3
import sys
import tempfile
import time
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


def measure_api(vms: int, hosts: int, polling: int, seconds: float, retention: int) -> None:
    with tempfile.TemporaryDirectory(prefix="nebula-bench-") as location:
        conf = write_conf(
            Path(location),
            extra=f"DEBUG_LEVEL = 0\nMONITORING_HISTORY = [ retention = {retention} ]",
        )
        conf.write_text(
            conf.read_text()
            .replace("HOST_MONITORING_INTERVAL = 1", f"HOST_MONITORING_INTERVAL = {polling}")
            .replace("VM_POLLING_INTERVAL = 1", f"VM_POLLING_INTERVAL = {polling}")
            .replace("MANAGER_TIMER = 0.2", "MANAGER_TIMER = 1")
        )
        one = OneDaemon(Path(location)).start()
        try:
            for n in range(hosts):
                assert one.call14("one.host.allocate", f"node{n:02}", "im_xen", "vmm_xen", "tm_nfs")
            created = []
            for start in range(0, vms, 500):
                chunk = range(start, min(vms, start + 500))
                answers = _multicall(one, [("one.vm.allocate", (VM_TEMPLATE,)) for _ in chunk])
                created += [answer[1] for answer in answers]
            for start in range(0, vms, 500):
                chunk = created[start : start + 500]
                calls = [("one.vm.deploy", (vid, vid % hosts)) for vid in chunk]
                assert all(answer == [True] for answer in _multicall(one, calls))
            wait_for(lambda: _running(one) == vms, timeout=300, what="every VM running")
            time.sleep(polling)  # a whole polling round, so the polls run during the load
            state = "on (a day)" if retention else "off"
            print(
                f"history {state}: {vms} VMs polled and {hosts} hosts monitored every {polling} s"
            )
            body = xmlrpc.client.dumps((one.session, created[0]), "one.vm.info").encode()
            assert one.call14("one.vm.info", created[0])[0] is True  # session verified once
            for clients in (1, 8):
                stats = run_load(one.url, body, clients, seconds)
                print(
                    f"  one.vm.info, {clients} client(s): {stats['rps']:7.0f} req/s  "
                    f"p50 {stats['p50_ms']:.3f} ms  p99 {stats['p99_ms']:.3f} ms  "
                    f"errors {stats['errors']:.0f}"
                )
            ok, document = one.call14("one.vm.monitoring", created[0])
            assert ok, document
            samples = document.count("<VM>")
            body = xmlrpc.client.dumps((one.session, created[0]), "one.vm.monitoring").encode()
            stats = run_load(one.url, body, 1, min(seconds, 5.0))
            print(
                f"  one.vm.monitoring ({samples} samples), 1 client: {stats['rps']:7.0f} req/s  "
                f"p50 {stats['p50_ms']:.3f} ms"
            )
        finally:
            one.stop()
        with sqlite3.connect(Path(location) / "var" / "one.db") as db:
            rows = db.execute("SELECT count(*) FROM nebula_xr_monitoring").fetchone()[0]
        print(f"  samples written to one.db: {rows}")


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
        begun = time.perf_counter()
        for _ in range(rounds):
            for host in nodes:
                history.host_monitored(host)
            for vm in machines:
                vm.net_tx += 4096
                history.vm_polled(vm)
            clock.advance(DEFAULT_INTERVAL)
        recording = time.perf_counter() - begun
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
        f"  start-up load of the day: {loading:.2f} s; samples of one VM ({kept}) as "
        f"one.vm.monitoring's document: {reading * 1000:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--hosts", type=int, default=4)
    parser.add_argument("--polling", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--skip-api", action="store_true", help="only the one.db figures")
    args = parser.parse_args()
    if not args.skip_api:
        for retention in (0, DAY):
            measure_api(args.vms, args.hosts, args.polling, args.seconds, retention)
    measure_storage(args.vms, args.hosts)


if __name__ == "__main__":
    main()
