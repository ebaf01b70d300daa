"""Benchmark of the web console against a real nebula-xr process.

* the cost of the console to the API: 400 ``one.vm.action hold``/``release`` calls in a row
  with no page open, then with 5 pages listening to the server-sent events;
* ``/api/state`` (what a page loads: every VM, host and network) with 1,000 VMs.

Prints rates and p50/p99 latencies::

    python bench/web_bench.py [--vms 1000] [--actions 400] [--listeners 5]
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import threading
import time
import xmlrpc.client
from pathlib import Path
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.web_support import WebClient, start_web_daemon  # noqa: E402


def _percentiles(latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"


def _actions(url: str, session: str, count: int) -> list[float]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port)
    latencies = []
    for n in range(count):
        action = "hold" if n % 2 == 0 else "release"
        body = xmlrpc.client.dumps((session, action, 0), "one.vm.action").encode()
        begun = time.perf_counter()
        connection.request("POST", parts.path, body, {"Content-Type": "text/xml"})
        reply = xmlrpc.client.loads(connection.getresponse().read())[0][0]
        latencies.append(time.perf_counter() - begun)
        assert reply == [True], reply
    connection.close()
    return latencies


def _listen(base: str, cookie: str, stop: threading.Event, received: list[int]) -> None:
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    connection.request("GET", "/api/events", headers={"Cookie": cookie})
    response = connection.getresponse()
    while not stop.is_set():
        line = response.readline()
        if not line:
            break
        if line.startswith(b"event: vm"):
            received[0] += 1
    connection.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vms", type=int, default=1000)
    parser.add_argument("--actions", type=int, default=400)
    parser.add_argument("--listeners", type=int, default=5)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as location:
        daemon, base = start_web_daemon(Path(location))
        try:
            session = daemon.session
            calls = [
                {"methodName": "one.vm.allocate", "params": [session, f"NAME = vm{n}\nMEMORY = 64"]}
                for n in range(options.vms)
            ]
            with daemon.proxy() as proxy:
                for start in range(0, len(calls), 100):
                    proxy.system.multicall(calls[start : start + 100])
            quiet = _actions(daemon.url, session, options.actions)
            print(
                f"{options.actions} hold/release, no page open: "
                f"{options.actions / sum(quiet):.0f} calls/s, {_percentiles(quiet)}"
            )
            stop = threading.Event()
            received = [0]
            readers = []
            for _ in range(options.listeners):
                client = WebClient(base)
                assert client.sign_in() == 200
                cookie = "; ".join(f"{c.name}={c.value}" for c in client.cookies)
                reader = threading.Thread(
                    target=_listen, args=(base, cookie, stop, received), daemon=True
                )
                reader.start()
                readers.append(reader)
            time.sleep(1)  # the streams are open
            listened = _actions(daemon.url, session, options.actions)
            print(
                f"{options.actions} hold/release, {options.listeners} pages listening: "
                f"{options.actions / sum(listened):.0f} calls/s, {_percentiles(listened)} "
                f"({received[0]} VM events received)"
            )
            stop.set()
            client = WebClient(base)
            assert client.sign_in() == 200
            loads = []
            for _ in range(20):
                begun = time.perf_counter()
                status, state, _ = client.request("/api/state")
                loads.append(time.perf_counter() - begun)
                assert status == 200 and len(state["vms"]) == options.vms
            print(f"/api/state with {options.vms} VMs: {_percentiles(loads)}")
        finally:
            daemon.stop()


if __name__ == "__main__":
    main()
