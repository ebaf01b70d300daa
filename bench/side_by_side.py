"""Info-call rates of nebula-xr beside the C++ oned 1.2 (and an older nebula-xr), in one run.

For ``one.vmget_info`` of VM 0 and ``one.hostinfo`` of host 0, with 1 and 8 raw keep-alive
clients (bench/rpc_load.py), the servers are measured in turn, round after round, so that
all see the same machine load. Printed per server: the median rate over the rounds, the
server's CPU time per call (from /proc/<pid>/stat, when its pid is known) and the clients'
own CPU time per call. On 2 cores the clients' share bounds every server's rate: with C µs
of client CPU and S µs of server CPU per call, no run can exceed 2 / (C + S) calls per µs.

nebula-xr runs as shipped (DEBUG_LEVEL 3, so every call writes an access line) with
dummy drivers. oned 1.2 is not part of this project: build it from OpenNebula's
``release-1.2`` tag yourself, start it, and name its URL (and pid)::

    python bench/side_by_side.py [--seconds 4] [--rounds 3]
        [--oned12 http://127.0.0.1:2634/RPC2 --oned12-pid PID] [--before /tmp/before]

The bench allocates host 0 and VM 0 on oned 1.2 if it has none.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.rpc_load import run_load  # noqa: E402
from bench.scale_bench import _body, _cpu_times, _load, _start  # noqa: E402

CALLS = ("one.vmget_info", "one.hostinfo")
TARGETS = {  # issue 10, on this machine kind
    ("one.hostinfo", 1): "≥ 4,400 req/s and not slower than oned 1.2",
    ("one.vmget_info", 8): "≥ 15,000 req/s (2x oned 1.2)",
    ("one.hostinfo", 8): "≥ 15,000 req/s (2x oned 1.2)",
}


@dataclass
class Server:
    name: str
    url: str
    pid: int | None
    rates: dict[tuple[str, int], list[tuple[float, float, float]]] = field(default_factory=dict)
    reconnects: int = 0  # keep-alive connections the server ended (Abyss: every 30 calls)

    def measure(self, call: str, clients: int, seconds: float) -> None:
        before = _cpu_times(self.pid) if self.pid else None
        stats = run_load(self.url, _body(call, 0), clients, seconds)
        assert stats["errors"] == 0, (self.name, call, stats)
        server_us = float("nan")
        if before is not None:
            after = _cpu_times(self.pid)  # type: ignore[arg-type]
            server_us = (sum(after) - sum(before)) / stats["requests"] * 1e6
        self.rates.setdefault((call, clients), []).append(
            (stats["rps"], server_us, stats["client_cpu_us"])
        )
        self.reconnects += int(stats["reconnects"])

    def median(self, key: tuple[str, int]) -> tuple[float, float, float]:
        runs = self.rates[key]
        return tuple(statistics.median(run[i] for run in runs) for i in range(3))  # type: ignore[return-value]


def _ensure_objects(url: str) -> None:
    """Host 0 and VM 0, on a server that lacks them (oned 1.2 started empty)."""
    proxy = xmlrpc.client.ServerProxy(url)
    if not proxy.one.hostinfo("sessionID", 0)[0]:
        assert proxy.one.hostallocate("sessionID", "node01", "im_xen", "vmm_xen", "tm_nfs", True)[0]
    if not proxy.one.vmget_info("sessionID", 0)[0]:
        assert proxy.one.vmallocate("sessionID", "NAME = bench\nCPU = 1\nMEMORY = 64\n")[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--oned12", help="URL of a running C++ oned 1.2")
    parser.add_argument("--oned12-pid", type=int, help="its pid, for its CPU time per call")
    parser.add_argument("--before", help="a checkout of an older nebula-xr to run too")
    args = parser.parse_args()

    print(f"load average before: {_load()}  ({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory(prefix="nebula-side-") as location:
        daemons = {"nebula-xr": _start(Path(location, "after"), None)}
        if args.before:
            daemons["nebula-xr before"] = _start(Path(location, "before"), args.before)
        try:
            servers = []
            for name, one in daemons.items():
                _ensure_objects(one.url)
                servers.append(Server(name, one.url, one.process.pid))  # type: ignore[union-attr]
            if args.oned12:
                _ensure_objects(args.oned12)
                servers.append(Server("oned 1.2", args.oned12, args.oned12_pid))
            for _ in range(args.rounds):
                for call in CALLS:
                    for clients in (1, 8):
                        for server in servers:
                            server.measure(call, clients, args.seconds)
        finally:
            for one in daemons.values():
                one.stop()

    reference = servers[-1] if args.oned12 else None
    print(f"median of {args.rounds} rounds of {args.seconds:g} s, servers in turn:")
    for call in CALLS:
        for clients in (1, 8):
            key = (call, clients)
            target = f"   target: {TARGETS[key]}" if key in TARGETS else ""
            print(f"{call}, {clients} keep-alive client(s):{target}")
            for server in servers:
                rate, server_us, client_us = server.median(key)
                runs = ", ".join(f"{run[0]:.0f}" for run in server.rates[key])
                ratio = ""
                if reference is not None and server is not reference:
                    ratio = f"  {rate / reference.median(key)[0]:.2f}x oned 1.2"
                print(
                    f"  {server.name:17s} {rate:7.0f} req/s (runs {runs}){ratio}; CPU per call: "
                    f"server {server_us:.0f} µs, clients {client_us:.0f} µs"
                )
    for server in servers:
        if server.reconnects:
            print(f"{server.name} ended keep-alive connections {server.reconnects} times")
    print(f"load average after: {_load()}")


if __name__ == "__main__":
    main()
