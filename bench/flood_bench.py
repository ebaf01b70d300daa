"""Latency of a normal client while idle and slow connections flood the daemon.

Starts nebula-xr (default connection limits), measures ``one.vmget_info`` on a new
connection per call (as the 1.2 CLI calls), then opens the flood (idle connections
from several loopback addresses, heads and bodies trickling a byte at a time) and
measures again. Prints p50/p99 of both, and how many flood connections the daemon
still held at the end::

    python bench/flood_bench.py [--idle 1000] [--heads 100] [--bodies 20] [--calls 500]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.oned import wait_for  # noqa: E402
from tests.test_security_transport import (  # noqa: E402
    SlowClients,
    address_of,
    latencies,
    open_descriptors,
    percentiles,
    start_daemon,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--idle", type=int, default=1000)
    parser.add_argument("--heads", type=int, default=100)
    parser.add_argument("--bodies", type=int, default=20)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory() as location:
        one = start_daemon(Path(location), "LIMITS = [ head_timeout = 60, body_timeout = 60 ]")
        flood = SlowClients(address_of(one))
        try:
            assert one.call("one.vmallocate", "NAME = probe\nMEMORY = 64\n") == [True, 0]
            address = address_of(one)
            before = percentiles(latencies(address, args.calls))
            descriptors = open_descriptors(one)
            for n in range(args.idle):
                flood.open("idle", f"127.0.0.{2 + n // 100}", b"")
            for n in range(args.heads):
                flood.open("head", f"127.1.0.{2 + n // 100}", b"POST /RPC2 HTTP/1.1\r\nX-Slow: ")
            body_head = b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
            for n in range(args.bodies):
                flood.open("body", f"127.2.0.{2 + n // 100}", body_head)
            flood.thread.start()
            total = args.idle + args.heads + args.bodies
            wait_for(lambda: open_descriptors(one) >= descriptors + min(total, 1000), 60)
            during = percentiles(latencies(address, args.calls))
            held = open_descriptors(one) - descriptors
        finally:
            flood.close()
            one.stop()
    print(f"one.vmget_info, new connection per call, {args.calls} calls each:")
    print(f"  alone:        p50 {before[0] * 1000:7.2f} ms  p99 {before[1] * 1000:7.2f} ms")
    print(
        f"  under flood:  p50 {during[0] * 1000:7.2f} ms  p99 {during[1] * 1000:7.2f} ms"
        f"  ({args.idle} idle, {args.heads} slow heads, {args.bodies} slow bodies; "
        f"{held} held by the daemon at the end)"
    )


if __name__ == "__main__":
    main()
