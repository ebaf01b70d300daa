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
average is printed before and after, and ``--before DIR`` measures the code of another
checkout too (a second daemon run from DIR), alternating run by run, so
that both see the same load::

    git archive <commit> | tar -x -C /tmp/before
    python bench/scale_bench.py [--hosts 1250] [--vms 20000] [--seconds 5] [--repeat 3]
                                [--before /tmp/before] [--no-rates]
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


def _cpu_times(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


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


def _rate(one: OneDaemon, body: bytes, clients: int, seconds: float) -> tuple[float, ...]:
    """(req/s, server user µs/call, server system µs/call); clients 0: one client
    opening a new connection per call."""
    pid = one.process.pid  # type: ignore[union-attr]
    user, system = _cpu_times(pid)
    if clients:
        stats = run_load(one.url, body, clients, seconds)
        assert stats["errors"] == 0, stats
        rate, calls = stats["rps"], stats["requests"]
    else:
        rate = _new_connection_rate(one.url, body, seconds)
        calls = rate * seconds
    user_after, system_after = _cpu_times(pid)
    return rate, (user_after - user) / calls * 1e6, (system_after - system) / calls * 1e6


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


def _start(location: Path, code: str | None) -> OneDaemon:
    """A daemon with slow timers (monitoring and polling are not what is measured here),
    DEBUG_LEVEL 3 as shipped (with the access log); ``code``: a checkout whose nebula_xr
    it runs instead of this one."""
    conf = write_conf(location)
    text = conf.read_text()
    for key in ("HOST_MONITORING_INTERVAL", "VM_POLLING_INTERVAL"):
        text = text.replace(f"{key} = 1\n", f"{key} = 3600\n")
    conf.write_text(text.replace("MANAGER_TIMER = 0.2", "MANAGER_TIMER = 5"))
    if code is None:
        return OneDaemon(location).start()
    # `python -m` puts the working directory first on sys.path, before this worktree's
    # editable install: run the daemon from the checkout.
    here = os.getcwd()
    os.chdir(code)
    try:
        return OneDaemon(location).start()
    finally:
        os.chdir(here)


def _populate(one: OneDaemon, args: argparse.Namespace) -> float:
    begun = time.perf_counter()
    _fill(
        one.url,
        [
            _body("one.hostallocate", f"node{i:04d}", "im_xen", "vmm_xen", "tm_nfs", True)
            for i in range(args.hosts)
        ],
    )
    _fill(one.url, [_body("one.vnallocate", NETWORK.format(i=i)) for i in range(args.networks)])
    _fill(one.url, [_body("one.vmallocate", VM_TEMPLATE.format(i=i)) for i in range(args.vms)])
    deploys = min(args.deployed, args.vms)
    _fill(one.url, [_body("one.vmdeploy", i, i % args.hosts) for i in range(deploys)])
    wait_for(lambda: one.vm_state(0)[0] == 3, timeout=60)
    return time.perf_counter() - begun


def _runs(values: list[float], form: str = "{:.0f}") -> str:
    return f"{form.format(_median(values))} (runs {', '.join(form.format(v) for v in values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=1250)
    parser.add_argument("--vms", type=int, default=20000)
    parser.add_argument("--deployed", type=int, default=1250)
    parser.add_argument("--networks", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-rates", action="store_true", help="listings and memory only")
    parser.add_argument(
        "--before",
        metavar="DIR",
        help="also measure the code in DIR (e.g. `git archive main | tar -x -C DIR`), "
        "alternating with this one, run after run",
    )
    args = parser.parse_args()

    print(f"load average before: {_load()}  ({os.cpu_count()} cores, shared)")
    versions = {"after": None, **({"before": args.before} if args.before else {})}
    daemons: dict[str, OneDaemon] = {}
    results: dict[str, dict[str, list]] = {name: {} for name in versions}

    def record(name: str, key: str, value: object) -> None:
        results[name].setdefault(key, []).append(value)

    with tempfile.TemporaryDirectory(prefix="nebula-scale-") as location:
        try:
            for name, code in versions.items():
                daemons[name] = one = _start(Path(location) / name, code)
                took = _populate(one, args)
                print(
                    f"{name}: filled with {args.hosts} hosts, {args.vms} VMs ({args.deployed} "
                    f"deployed), {args.networks} networks in {took:.1f} s"
                )
                record(name, "rss_filled", _status(one.process.pid, "VmRSS"))  # type: ignore[union-attr]
                Connection(one.url).call(_body("one.vm.info", 0, session=one.session))  # sign in

            for _ in range(args.repeat):
                for name, one in daemons.items():
                    session = one.session
                    for method, body in (
                        ("one.vmpool.info", _body("one.vmpool.info", -2, session=session)),
                        ("one.hostpool.info", _body("one.hostpool.info", session=session)),
                        ("one.vnpool.info", _body("one.vnpool.info", -2, session=session)),
                    ):
                        seconds, size = _listing(one.url, body, 3)
                        record(name, method, seconds * 1000)
                        record(name, method + " size", size)
                    stats = _latency_during_listing(
                        one, _body("one.vmpool.info", -2, session=session), args.seconds
                    )
                    record(name, "p99", stats["p99_ms"])
                    record(name, "max", stats["max_ms"])
                    record(name, "listings", stats["listings"])
            for name, one in daemons.items():
                time.sleep(1.0)  # let the allocator return what the listings took
                pid = one.process.pid  # type: ignore[union-attr]
                record(name, "rss_after", _status(pid, "VmRSS"))
                record(name, "rss_peak", _status(pid, "VmHWM"))

            calls = (("one.vmget_info", _body("one.vmget_info", 0)),)
            calls += (("one.hostinfo", _body("one.hostinfo", 0)),)
            for _ in range(0 if args.no_rates else args.repeat):
                for method, body in calls:
                    for clients in (1, 8, 0):
                        for name, one in daemons.items():
                            record(name, (method, clients), _rate(one, body, clients, args.seconds))
        finally:
            for one in daemons.values():
                one.stop()

    for name in versions:
        got = results[name]
        print(f"{name}{'' if name == 'after' else ' (' + str(args.before) + ')'}:")
        for method, target in (
            ("one.vmpool.info", "< 200 ms"),
            ("one.hostpool.info", ""),
            ("one.vnpool.info", ""),
        ):
            print(
                f"  {method:17}: {_runs(got[method], '{:.1f}')} ms, "
                f"{got[method + ' size'][0] / 1e6:.2f} MB"
                + (f"   [target {target}]" if target else "")
            )
        print(
            f"  one.vmget_info during back-to-back listings: p99 {_runs(got['p99'], '{:.1f}')} ms,"
            f" max {_median(got['max']):.1f} ms, {_median(got['listings']):.0f} listings per "
            f"{args.seconds:g} s   [target p99 < 50 ms]"
        )
        print(
            f"  RSS: {got['rss_filled'][0]:.1f} MB filled, {got['rss_after'][0]:.1f} MB after "
            f"{sum(got['listings']) + 9 * args.repeat} listings, peak {got['rss_peak'][0]:.1f} MB"
            "   [target < 100 MB]"
        )
        for method, _ in calls:
            for clients, label in (
                (1, "1 keep-alive client "),
                (8, "8 keep-alive clients"),
                (0, "1 client, a connection per call (1.2 CLI)"),
            ):
                runs = got.get((method, clients))
                if not runs:
                    continue
                rates = [run[0] for run in runs]
                print(
                    f"  {method:14} {label}: {_runs(rates)} req/s, server CPU "
                    f"{_median([run[1] for run in runs]):.0f} user + "
                    f"{_median([run[2] for run in runs]):.0f} system µs/call"
                )
    print(
        "targets: one.hostinfo 1 keep-alive client ≥ 4,400 req/s; vmget_info and hostinfo "
        "8 clients ≥ 15,000 req/s"
    )
    print(f"load average after: {_load()}")


if __name__ == "__main__":
    main()
