"""XML-RPC load generator: N client processes hammering one URL over keep-alive sockets.

Each client sends pre-encoded HTTP requests on a raw socket and parses only the
``Content-Length`` of the answers, so what is measured is the server. Use it as a
library::

    from bench.rpc_load import run_load
    stats = run_load("http://127.0.0.1:2633/RPC2", body, clients=8, seconds=5)

or run it to benchmark a trivial registry served by nebula_xr.transport::

    python bench/rpc_load.py [--seconds 5] [--clients 1 8] [--url URL]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import socket
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

#: A request body, or a function of the client index giving that client's body or
#: bodies (sent in turn).
Bodies = bytes | Callable[[int], "bytes | Sequence[bytes]"]

#: What one.vmget_info answers for a freshly allocated VM: about 600 bytes of text.
INFO_TEXT = (
    "VID               : 0\nAID               : -1\nTID               : -1\n"
    "UID               : 0\nSTATE             : 3\nLCM STATE         : 3\n"
    "DEPLOY ID         : one-0\nMEMORY            : 131072\nCPU               : 12\n"
    "NET_TX            : 1024\nNET_RX            : 2048\nLAST POLL         : 1234567890\n"
    "\n....: Template :....\n\tCPU=0.5\n\tDISK=SOURCE=/srv/images/ttylinux.img,"
    "TARGET=hda,READONLY=no\n\tMEMORY=128\n\tNAME=ttylinux\n\tNIC=NETWORK=public,"
    "MAC=00:03:c0:a8:00:05,IP=192.168.0.5,BRIDGE=br0\n\tOS=KERNEL=/vmlinuz,"
    "INITRD=/initrd.img,ROOT=hda1\n\tVMID=0\n\n\n"
)


def _requests(host: str, port: int, path: str, bodies: bytes | Sequence[bytes]) -> list[bytes]:
    if isinstance(bodies, bytes):
        bodies = [bodies]
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: rpc_load\r\n"
        "Content-Type: text/xml\r\n"
    ).encode()
    return [b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body) for body in bodies]


def _client(
    index: int,
    url: str,
    bodies: Bodies,
    start_at: float,
    seconds: float,
) -> tuple[list[int], int, float, int]:
    """One client process: (latencies in ns, error count, its CPU seconds meanwhile,
    reconnections)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    requests = _requests(
        host, port, parts.path or "/", bodies(index) if callable(bodies) else bodies
    )

    def connect() -> socket.socket:
        sock = socket.create_connection((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    sock = connect()
    clock = time.perf_counter_ns
    latencies: list[int] = []
    errors = reconnects = 0
    buf = b""
    count = len(requests)
    sent = 0
    time.sleep(max(0.0, start_at - time.time()))
    deadline = clock() + int(seconds * 1e9)
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    while True:
        begun = clock()
        if begun >= deadline:
            break
        sock.sendall(requests[sent % count])
        sent += 1
        while True:  # one response: head, then Content-Length bytes
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                at = buf.find(b"Content-Length:", 0, end)
                if at < 0:  # xmlrpc-c's Abyss (oned 1.2) writes "Content-length"
                    at = buf.lower().find(b"content-length:", 0, end)
                total = end + 4 + int(buf[at + 15 : buf.find(b"\r\n", at)])
                if len(buf) >= total:
                    break
            chunk = sock.recv(262144)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        latencies.append(clock() - begun)
        if not buf.startswith(b"HTTP/1.1 200 ") or b"<fault>" in buf[end:total]:
            errors += 1
        if b"Connection: close" in buf[:end]:
            # A server that ends keep-alive after some calls (Abyss, oned 1.2's: 30); the
            # new connection's cost falls on the next call, as a client lives it.
            sock.close()
            sock = connect()
            reconnects += 1
        buf = buf[total:]
    used = resource.getrusage(resource.RUSAGE_SELF)
    sock.close()
    seconds_used = used.ru_utime - cpu.ru_utime + used.ru_stime - cpu.ru_stime
    return latencies, errors, seconds_used, reconnects


def _percentile(ordered: list[int], fraction: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1e6


def run_load(url: str, bodies: Bodies, clients: int, seconds: float) -> dict[str, float]:
    """Run ``clients`` processes for ``seconds`` against ``url``; throughput and latency.

    Returns ``requests``, ``errors`` (non-200 or fault answers), ``rps``,
    ``p50_ms``, ``p99_ms``, ``max_ms`` request latencies, and ``client_cpu_us``: the
    clients' own CPU time (user + system) per request. On a machine with few cores that
    bounds what any server can be shown to do. ``reconnects``: connections the server
    ended between answers, opened again.
    """
    start_at = time.time() + 0.3 + 0.05 * clients  # every process connected and waiting
    with multiprocessing.get_context("fork").Pool(clients) as pool:
        results = pool.starmap(
            _client, [(i, url, bodies, start_at, seconds) for i in range(clients)]
        )
    latencies = sorted(ns for result in results for ns in result[0])
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": len(latencies),
        "errors": sum(result[1] for result in results),
        "rps": len(latencies) / seconds,
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
        "max_ms": _percentile(latencies, 1.0),
        "client_cpu_us": sum(result[2] for result in results) / max(len(latencies), 1) * 1e6,
        "reconnects": sum(result[3] for result in results),
    }


def _serve() -> None:
    """The benchmark server: one.vmget_info and echo, on an ephemeral port it prints."""
    from twisted.internet import reactor

    from nebula_xr.transport.xmlrpc import MethodRegistry, make_factory

    registry = MethodRegistry()
    registry.register("one.vmget_info", lambda _session, _vid: [True, INFO_TEXT], "A:si")
    registry.register("echo", lambda _session, text: [True, text], "A:ss")
    port = reactor.listenTCP(0, make_factory(registry), interface="127.0.0.1")  # type: ignore[attr-defined]
    print(port.getHost().port, flush=True)
    reactor.run()  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="benchmark this server instead of a local one")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve()
        return
    body = xmlrpc.client.dumps(("sessionID", 0), "one.vmget_info").encode()
    server = None
    url = args.url
    if url is None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        server = subprocess.Popen(
            [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, env=env
        )
        assert server.stdout is not None
        url = f"http://127.0.0.1:{int(server.stdout.readline())}/RPC2"
    try:
        for clients in args.clients:
            stats = run_load(url, body, clients, args.seconds)
            print(
                f"{clients:3d} client(s): {stats['rps']:8.0f} req/s   "
                f"p50 {stats['p50_ms']:.3f} ms   p99 {stats['p99_ms']:.3f} ms   "
                f"max {stats['max_ms']:.3f} ms   errors {stats['errors']}",
                flush=True,
            )
    finally:
        if server is not None:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
