"""SQLite versus PostgreSQL in one run, and the hot standby's fail-over time.

For each backend, a real daemon (dummy drivers) with one RUNNING VM:

* ``one.vmget_info`` with 1 and 8 client processes, N seconds each;
* ``one.vmallocate`` one after another on one connection (each reply waits for its commit),
  and from 8 client processes at once (the group commit then shares each commit);

then two daemons on one PostgreSQL database and one port, the active one SIGKILLed while a
client allocates in a loop: the time until the standby answers, and whether every
acknowledged VM is in the database. PostgreSQL is a throw-away server started here (fsync on,
as a real one), on the same machine as the daemon::

    python bench/postgresql.py [--seconds 5] [--allocations 1000] [--rounds 3] [--failovers 3]

Target (issue 10): PostgreSQL allocations at least half SQLite's rate; fail-over under 10 s.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.rpc_bench import _body, _ms, _sequential  # noqa: E402
from bench.rpc_load import run_load  # noqa: E402
from tests.oned import OneDaemon, wait_for, write_conf  # noqa: E402
from tests.postgres import PostgresServer, binaries, start_server  # noqa: E402
from tests.test_tutorial import TUTORIAL  # noqa: E402


def _rates(one: OneDaemon, seconds: float, allocations: int) -> dict[str, float]:
    assert one.call("one.hostallocate", "node01", "im_xen", "vmm_xen", "tm_nfs", True)[0]
    wait_for(lambda: "TOTALCPU" in one.call("one.hostinfo", 0)[1])
    assert one.call("one.vmallocate", TUTORIAL) == [True, 0]
    assert one.call("one.vmdeploy", 0, 0) == [True]
    wait_for(lambda: one.vm_state(0) == (3, 3))
    result: dict[str, float] = {}
    info = _body("one.vmget_info", 0)
    for clients in (1, 8):
        stats = run_load(one.url, info, clients, seconds)
        result[f"info_{clients}"] = stats["rps"]
        result[f"info_{clients}_p99"] = stats["p99_ms"]
    begun = time.perf_counter()
    latencies = _sequential(one.url, [_body("one.vmallocate", TUTORIAL)] * allocations)
    result["alloc_seq"] = allocations / (time.perf_counter() - begun)
    result["alloc_seq_p99"] = _ms(latencies, 0.99)
    stats = run_load(one.url, _body("one.vmallocate", "NAME = load\n"), 8, seconds)
    result["alloc_8"] = stats["rps"]
    result["alloc_8_errors"] = stats["errors"]
    return result


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _site(root: Path, name: str, db_conf: str, port: int | None = None) -> Path:
    site = root / name
    site.mkdir()
    conf = write_conf(site, extra=f"DEBUG_LEVEL = 1\n{db_conf}")
    if port is not None:
        conf.write_text(conf.read_text().replace("PORT = 0\n", f"PORT = {port}\n"))
    (site / "one_auth").write_text("oneadmin:test-admin-password\n")
    return site


def _answers(url: str) -> bool:
    try:
        with xmlrpc.client.ServerProxy(url) as proxy:
            return proxy.one.vmget_info("sessionID", 0)[0] is True
    except (OSError, xmlrpc.client.Error, http.client.HTTPException):
        return False


def _failover(server: PostgresServer, root: Path) -> tuple[float, int, int]:
    """(seconds from SIGKILL to the standby's first answer, acknowledged, missing)."""
    db_name = server.create_database()
    port = _free_port()
    sites = [_site(root, f"fo-{db_name}-{n}", server.oned_conf(db_name), port) for n in (0, 1)]
    active = OneDaemon(sites[0]).start()
    env = dict(os.environ, ONE_LOCATION=str(sites[1]), ONE_AUTH=str(sites[1] / "one_auth"))
    standby = subprocess.Popen(
        [sys.executable, "-m", "nebula_xr", "--conf", str(sites[1] / "etc" / "oned.conf")],
        env=env,
        stderr=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
    )
    acknowledged: list[int] = []
    stop = threading.Event()

    def allocate() -> None:
        while not stop.is_set():
            try:
                with xmlrpc.client.ServerProxy(active.url) as proxy:
                    ok, vid = proxy.one.vmallocate("sessionID", "NAME = loop\n")
            except Exception:  # killed mid-call, or nobody listens yet
                time.sleep(0.005)
                continue
            if ok:
                acknowledged.append(vid)

    client = threading.Thread(target=allocate)
    try:
        time.sleep(1.5)  # the standby is connected and waiting for the lock
        client.start()
        wait_for(lambda: len(acknowledged) >= 50)
        assert active.process is not None
        killed_at = time.monotonic()
        active.process.send_signal(signal.SIGKILL)
        active.process.wait()
        # Whatever answers from now on is the standby.
        wait_for(lambda: _answers(active.url), timeout=60)
        served = time.monotonic() - killed_at
        time.sleep(0.5)  # the client allocates on the new daemon too
    finally:
        stop.set()
        if client.is_alive():
            client.join(30)
        active.stop()
        standby.send_signal(signal.SIGTERM)
        standby.wait(30)
    with server.settings(db_name).connect("bench") as connection:
        stored = {row[0] for row in connection.execute("SELECT oid FROM vm_pool")}
    return served, len(acknowledged), len(set(acknowledged) - stored)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--allocations", type=int, default=1000)
    parser.add_argument("--failovers", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    bindir = binaries()
    if bindir is None:
        sys.exit("PostgreSQL is not installed (apt-get install postgresql)")
    server = start_server(bindir)
    try:
        with tempfile.TemporaryDirectory(prefix="nebula-bench-") as tmp:
            root = Path(tmp)
            # Rounds alternate the backends, so that the load of a shared machine falls on
            # both alike; each figure is the median over the rounds.
            runs: dict[str, list[dict[str, float]]] = {"sqlite": [], "postgresql": []}
            for round_number in range(args.rounds):
                for backend in runs:
                    db_conf = ""
                    if backend == "postgresql":
                        db_conf = server.oned_conf(server.create_database())
                    site = _site(root, f"{backend}-{round_number}", db_conf)
                    one = OneDaemon(site).start()
                    try:
                        runs[backend].append(_rates(one, args.seconds, args.allocations))
                    finally:
                        one.stop()
            results = {
                backend: {key: statistics.median(run[key] for run in done) for key in done[0]}
                for backend, done in runs.items()
            }
            print(f"median of {args.rounds} alternating rounds, {args.seconds:g} s loads:")
            sqlite, pg = results["sqlite"], results["postgresql"]
            print(f"{'':34} {'SQLite':>10} {'PostgreSQL':>11} {'PG/SQLite':>10}")
            rows = (
                ("one.vmget_info, 1 client (req/s)", "info_1"),
                ("one.vmget_info, 8 clients (req/s)", "info_8"),
                (f"{args.allocations} sequential allocations (/s)", "alloc_seq"),
                ("allocations, 8 clients (/s)", "alloc_8"),
            )
            for label, key in rows:
                print(
                    f"{label:34} {sqlite[key]:10.0f} {pg[key]:11.0f} {pg[key] / sqlite[key]:10.2f}"
                )
            print(
                f"{'sequential allocation p99 (ms)':34} {sqlite['alloc_seq_p99']:10.2f} "
                f"{pg['alloc_seq_p99']:11.2f}"
            )
            target = "met" if pg["alloc_seq"] >= sqlite["alloc_seq"] / 2 else "MISSED"
            print(f"target: PostgreSQL allocations >= half SQLite's: {target}")
            times = []
            for _ in range(args.failovers):
                served, acknowledged, missing = _failover(server, root)
                times.append(served)
                print(
                    f"fail-over: standby answered {served:.2f} s after SIGKILL of the active; "
                    f"{acknowledged} allocations acknowledged, {missing} missing"
                )
            if times:
                verdict = "met" if max(times) < 10 else "MISSED"
                print(f"fail-over worst {max(times):.2f} s (target < 10 s: {verdict})")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
