"""Benchmark of the daemon's XML-RPC API, measured against a real nebula-xr process.

* ``one.vmget_info`` of a running VM: 1 and 8 client processes, keep-alive, N seconds each;
* ``one.vm.info`` of the same VM with oneadmin's 1.4 session (authenticated: the session is
  verified with bcrypt once, then from the in-memory cache), the same loads;
* 1000 sequential ``one.vmallocate`` of the tutorial template on one keep-alive
  connection, each acknowledged only once durable in one.db.

Prints rates and p50/p99 latencies, and the ratio to what the C++ oned 1.2 did once on
the same machine kind (vmget_info ~1,900 req/s with 1 client and ~3,600 with 8; 1000
allocations in 8–11 s). For both measured in one run, under the same load, use
bench/side_by_side.py::

    python bench/rpc_bench.py [--seconds 10] [--allocations 1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import xmlrpc.client
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.rpc_load import run_load  # noqa: E402
from tests.oned import OneDaemon, wait_for, write_conf  # noqa: E402
from tests.test_tutorial import TUTORIAL  # noqa: E402

ONED_12 = {"info_1": 1900.0, "info_8": 3600.0, "alloc_1000_s": (8.0, 11.0)}


def _body(method: str, *params: object, session: str = "sessionID") -> bytes:
    return xmlrpc.client.dumps((session, *params), method).encode()


def _sequential(url: str, bodies: list[bytes]) -> list[float]:
    """Send requests one after another on one keep-alive connection; latencies in s."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port)
    latencies = []
    for body in bodies:
        begun = time.perf_counter()
        connection.request("POST", parts.path, body, {"Content-Type": "text/xml"})
        reply = xmlrpc.client.loads(connection.getresponse().read())[0][0]
        latencies.append(time.perf_counter() - begun)
        assert reply[0] is True, reply
    connection.close()
    return latencies


def _ms(latencies: list[float], fraction: float) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--allocations", type=int, default=1000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="nebula-bench-") as location:
        write_conf(Path(location), extra="DEBUG_LEVEL = 1")
        one = OneDaemon(Path(location)).start()
        try:
            assert one.call("one.hostallocate", "node01", "im_xen", "vmm_xen", "tm_nfs", True)[0]
            wait_for(lambda: "TOTALCPU" in one.call("one.hostinfo", 0)[1])
            assert one.call("one.vmallocate", TUTORIAL) == [True, 0]
            assert one.call("one.vmdeploy", 0, 0) == [True]
            wait_for(lambda: one.vm_state(0) == (3, 3))
            size = len(one.call("one.vmget_info", 0)[1])
            print(
                f"one.vmget_info of a RUNNING VM ({size} bytes of text), {args.seconds:g} s each:"
            )
            info = _body("one.vmget_info", 0)
            for clients in (1, 8):
                stats = run_load(one.url, info, clients, args.seconds)
                reference = ONED_12[f"info_{clients}"]
                print(
                    f"  {clients} client(s): {stats['rps']:8.0f} req/s  "
                    f"p50 {stats['p50_ms']:.3f} ms  p99 {stats['p99_ms']:.3f} ms  "
                    f"errors {stats['errors']:.0f}  ({stats['rps'] / reference:.2f}x oned 1.2)"
                )

            print(f"one.vm.info with a 1.4 session (authenticated), {args.seconds:g} s each:")
            assert one.call14("one.vm.info", 0)[0] is True  # verified once, then cached
            info14 = _body("one.vm.info", 0, session=one.session)
            for clients in (1, 8):
                stats = run_load(one.url, info14, clients, args.seconds)
                print(
                    f"  {clients} client(s): {stats['rps']:8.0f} req/s  "
                    f"p50 {stats['p50_ms']:.3f} ms  p99 {stats['p99_ms']:.3f} ms  "
                    f"errors {stats['errors']:.0f}"
                )

            bodies = [_body("one.vmallocate", TUTORIAL)] * args.allocations
            begun = time.perf_counter()
            latencies = _sequential(one.url, bodies)
            total = time.perf_counter() - begun
            low, high = ONED_12["alloc_1000_s"]
            scale = args.allocations / 1000
            print(
                f"{args.allocations} sequential one.vmallocate (durable before each reply): "
                f"{total:.2f} s, {args.allocations / total:.0f}/s  "
                f"p50 {_ms(latencies, 0.5):.3f} ms  p99 {_ms(latencies, 0.99):.3f} ms  "
                f"({low * scale / total:.1f}-{high * scale / total:.1f}x faster than oned 1.2)"
            )
        finally:
            one.stop()


if __name__ == "__main__":
    main()
