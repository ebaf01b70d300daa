"""Benchmark of pool listings and info calls at scale, against a real nebula-xr process.

Fills a daemon (dummy drivers, no scheduler) with ``--hosts`` hosts and ``--vms`` VMs
(``--deployed`` of them deployed, one per host in turn, so that listings carry HISTORY),
then measures, repeating each figure ``--repeat`` times and printing the median:

* ``one.vmpool.info`` (oneadmin, all VMs), ``one.hostpool.info`` and ``one.vnpool.info``:
  time to the last byte on a keep-alive connection, and the reply's size;
* p99/max latency of a ``one.vmget_info`` client while another one lists the VM pool
  without pause (the listing must not block the reactor);
* the daemon's RSS after filling it, after the listings (memory must come back) and its
  peak (VmHWM);
* ``one.vmget_info`` and ``one.hostinfo`` rates with 1 and 8 raw keep-alive clients
  (bench/rpc_load.py), and with one client opening a new connection per call, as the 1.2
  CLI does; for each, the daemon's CPU time per call (from /proc/<pid>/stat over the run,
  so that the clients' share does not hide it).

The targets of issue 10 are printed beside the figures. The machine is shared: the load
average is printed before and after.

    python bench/scale_bench.py [--hosts 1250] [--vms 20000] [--seconds 5] [--repeat 3]
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import threading
import time
import xmlrpc.client
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.rpc_load import run_load  # noqa: E402
from tests.oned import OneDaemon, wait_for, write_conf  # noqa: E402

VM_TEMPLATE = (
    'NAME = "vm-{i}"\nCPU = 0.1\nMEMORY = 64\nDISK = [ source = "/img/a.img", target = "sda1" ]\n'
)
NETWORK = 'NAME = "net-{i}"\nTYPE = FIXED\nBRIDGE = br0\nLEASES = [ IP = 10.0.{i}.1 ]\n'
TICKS = os.sysconf("SC_CLK_TCK")


def _body(method: str, *params: object, session: str = "sessionID") -> bytes:
    return xmlrpc.client.dumps((session, *params), method).encode()


class Connection:
    """One keep-alive connection posting pre-encoded bodies."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.path = parts.path
        self.http = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)

    def post(self, body: bytes) -> bytes:
        self.http.request("POST", self.path, body, {"Content-Type": "text/xml"})
        return self.http.getresponse().read()

    def call(self, body: bytes) -> list:
        return xmlrpc.client.loads(self.post(body))[0][0]


def _fill(url: str, bodies: list[bytes], connections: int = 4) -> None:
    def send(share: list[bytes]) -> None:
        connection = Connection(url)
        for body in share:
            reply = connection.call(body)
            assert reply[0] is True, reply

    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(send, [bodies[i::connections] for i in range(connections)]))


def _status(pid: int, key: str) -> float:
    """A /proc/<pid>/status figure in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _listing(url: str, body: bytes, repeat: int) -> tuple[float, int]:
    """Median seconds to the last byte of a listing, and its size in bytes."""
    connection = Connection(url)
    times, size = [], 0
    for _ in range(repeat):
        begun = time.perf_counter()
        reply = connection.post(body)
        times.append(time.perf_counter() - begun)
        size = len(reply)
        assert b"<fault>" not in reply[:200], reply[:300]
    return _median(times), size


def _new_connection_rate(url: str, body: bytes, seconds: float) -> float:
    """Calls per second of one client opening a connection per call (the 1.2 CLI)."""
    count, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        connection = Connection(url)
        connection.post(body)
        connection.http.close()
        count += 1
    return count / seconds


def _rates(one: OneDaemon, name: str, body: bytes, args: argparse.Namespace) -> None:
    pid = one.process.pid  # type: ignore[union-attr]
    for clients in (1, 8):
        rates, costs = [], []
        for _ in range(args.repeat):
            cpu = _cpu_seconds(pid)
            stats = run_load(one.url, body, clients, args.seconds)
            assert stats["errors"] == 0, stats
            rates.append(stats["rps"])
            costs.append((_cpu_seconds(pid) - cpu) / stats["requests"] * 1e6)
        target = {1: "≥ 4,400 (hostinfo)", 8: "≥ 15,000"}[clients]
        print(
            f"  {name} {clients} keep-alive client(s): {_median(rates):8.0f} req/s "
            f"(runs {', '.join(f'{r:.0f}' for r in rates)}), server CPU "
            f"{_median(costs):5.1f} µs/call   [target {target}]"
        )
    rates, costs = [], []
    for _ in range(args.repeat):
        cpu = _cpu_seconds(pid)
        rate = _new_connection_rate(one.url, body, args.seconds)
        rates.append(rate)
        costs.append((_cpu_seconds(pid) - cpu) / (rate * args.seconds) * 1e6)
    print(
        f"  {name} 1 client, new connection per call (1.2 CLI): {_median(rates):6.0f} req/s, "
        f"server CPU {_median(costs):5.1f} µs/call"
    )


def _latency_during_listing(one: OneDaemon, listing: bytes, seconds: float) -> dict:
    """vmget_info latencies of one client while another lists the VM pool non-stop."""
    stop = threading.Event()
    listings: list[float] = []

    def lister() -> None:
        connection = Connection(one.url)
        while not stop.is_set():
            begun = time.perf_counter()
            connection.post(listing)
            listings.append(time.perf_counter() - begun)

    thread = threading.Thread(target=lister)
    thread.start()
    try:
        stats = run_load(one.url, _body("one.vmget_info", 0), 1, seconds)
    finally:
        stop.set()
        thread.join()
    stats["listings"] = len(listings)
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=1250)
    parser.add_argument("--vms", type=int, default=20000)
    parser.add_argument("--deployed", type=int, default=1250)
    parser.add_argument("--networks", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-rates", action="store_true", help="listings and memory only")
    args = parser.parse_args()

    print(f"load average before: {_load()}  ({os.cpu_count()} cores, shared)")
    with tempfile.TemporaryDirectory(prefix="nebula-scale-") as location:
        conf = write_conf(Path(location))  # DEBUG_LEVEL = 3: with the access log, as shipped
        # Slow timers: monitoring and polling are not what is measured here.
        text = conf.read_text()
        for key in ("HOST_MONITORING_INTERVAL", "VM_POLLING_INTERVAL"):
            text = text.replace(f"{key} = 1\n", f"{key} = 3600\n")
        conf.write_text(text.replace("MANAGER_TIMER = 0.2", "MANAGER_TIMER = 5"))
        one = OneDaemon(Path(location)).start()
        pid = one.process.pid  # type: ignore[union-attr]
        try:
            begun = time.perf_counter()
            _fill(
                one.url,
                [
                    _body("one.hostallocate", f"node{i:04d}", "im_xen", "vmm_xen", "tm_nfs", True)
                    for i in range(args.hosts)
                ],
            )
            _fill(
                one.url,
                [_body("one.vnallocate", NETWORK.format(i=i)) for i in range(args.networks)],
            )
            _fill(
                one.url, [_body("one.vmallocate", VM_TEMPLATE.format(i=i)) for i in range(args.vms)]
            )
            _fill(
                one.url,
                [
                    _body("one.vmdeploy", i, i % args.hosts)
                    for i in range(min(args.deployed, args.vms))
                ],
            )
            wait_for(lambda: one.vm_state(0)[0] == 3, timeout=60)
            print(
                f"filled: {args.hosts} hosts, {args.vms} VMs ({args.deployed} deployed), "
                f"{args.networks} networks in {time.perf_counter() - begun:.1f} s"
            )
            rss_filled = _status(pid, "VmRSS")

            session = one.session
            Connection(one.url).call(_body("one.vm.info", 0, session=session))  # sign in once
            vm_pool = _body("one.vmpool.info", -2, session=session)
            listings = (
                ("one.vmpool.info", vm_pool, "< 0.2 s"),
                ("one.hostpool.info", _body("one.hostpool.info", session=session), ""),
                ("one.vnpool.info", _body("one.vnpool.info", -2, session=session), ""),
            )
            for name, body, target in listings:
                seconds, size = _listing(one.url, body, args.repeat + 2)
                print(
                    f"  {name:17}: {seconds * 1000:7.1f} ms  {size / 1e6:5.2f} MB"
                    + (f"   [target {target}]" if target else "")
                )

            p99s, maxes, counts = [], [], []
            for _ in range(args.repeat):
                stats = _latency_during_listing(one, vm_pool, args.seconds)
                p99s.append(stats["p99_ms"])
                maxes.append(stats["max_ms"])
                counts.append(stats["listings"])
            print(
                f"  one.vmget_info during back-to-back 20k-VM listings: p99 {_median(p99s):.1f} ms"
                f" (runs {', '.join(f'{p:.1f}' for p in p99s)}), max {_median(maxes):.1f} ms, "
                f"{_median(counts):.0f} listings per {args.seconds:g} s   [target p99 < 50 ms]"
            )
            time.sleep(1.0)  # let the allocator return what the listings took
            print(
                f"  RSS: {rss_filled:.1f} MB filled, {_status(pid, 'VmRSS'):.1f} MB after "
                f"{sum(counts) + 3 * (args.repeat + 2)} listings, "
                f"peak {_status(pid, 'VmHWM'):.1f} MB"
                "   [target < 100 MB]"
            )

            if not args.no_rates:
                _rates(one, "one.vmget_info", _body("one.vmget_info", 0), args)
                _rates(one, "one.hostinfo  ", _body("one.hostinfo", 0), args)
        finally:
            one.stop()
    print(f"load average after: {_load()}")


if __name__ == "__main__":
    main()
