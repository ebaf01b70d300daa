"""1.2-style readers of one.db against a busy daemon, per journal mode.

Starts nebula-xr (dummy drivers, fast polling) with ``DB_JOURNAL`` = wal or delete, runs
reader processes that each read a consistent snapshot as the tests and scripts do
(``BEGIN``, the mm_sched and CLI queries, ``COMMIT``; busy timeout ``--reader-timeout``)
while one client allocates and deploys VMs as fast as it can, and reports the readers'
failure rate ("database is locked"), ``one.vmget_info`` latency and write throughput.

    python bench/db_readers.py [--seconds 20] [--readers 3] [--journal wal delete]
"""

from __future__ import annotations

import argparse
import multiprocessing
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.soak import _cli_cycle, _mm_sched_cycle  # noqa: E402
from tests.oned import OneDaemon, write_conf  # noqa: E402


def _reader(path: str, timeout: float, stop: Any, reads: Any, failed: Any) -> None:
    """One reader process (threads of one process share SQLite's file lock, so a pool of
    reader threads can hold SHARED forever and is no model of separate 1.2 clients)."""
    db = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    while not stop.is_set():
        try:
            db.execute("BEGIN")
            _mm_sched_cycle(db)
            _cli_cycle(db)
            db.execute("COMMIT")
            counter = reads
        except sqlite3.OperationalError:
            if db.in_transaction:
                db.execute("ROLLBACK")
            counter = failed
        with counter.get_lock():
            counter.value += 1
    db.close()


def measure(
    journal: str, seconds: float, readers: int, reader_timeout: float, in_threads: bool
) -> dict:
    location = Path(tempfile.mkdtemp(prefix=f"db-readers-{journal}-"))
    write_conf(location, extra=f"DB_JOURNAL = {journal}")
    one = OneDaemon(location).start()
    stop = multiprocessing.Event()
    reads, failed = multiprocessing.Value("l", 0), multiprocessing.Value("l", 0)
    arguments = (str(one.db_path), reader_timeout, stop, reads, failed)
    kind = threading.Thread if in_threads else multiprocessing.Process
    threads = [kind(target=_reader, args=arguments) for _ in range(readers)]

    for name in ("node01", "node02"):
        assert one.call("one.hostallocate", name, "im_xen", "vmm_xen", "tm_nfs", True)[0]
    for thread in threads:
        thread.start()
    latencies: list[float] = []
    writes = refused = 0
    end = time.monotonic() + seconds
    with xmlrpc.client.ServerProxy(one.url) as proxy:
        while time.monotonic() < end:
            ok, vid = proxy.one.vmallocate("s", "NAME = w\nCPU = 0.01\nMEMORY = 1\n")
            writes += 1
            if not ok:
                refused += 1
                continue
            if vid % 4 == 0:
                refused += not proxy.one.vmdeploy("s", vid, vid % 2)[0]
                writes += 1
            started = time.monotonic()
            proxy.one.vmget_info("s", vid)
            latencies.append(time.monotonic() - started)
    stop.set()
    for thread in threads:
        thread.join()
    one.stop()
    total = reads.value + failed.value
    return {
        "journal": journal,
        "readers": f"{readers} {'threads' if in_threads else 'processes'}",
        "reader cycles": total,
        "reader failures %": round(100.0 * failed.value / max(1, total), 1),
        "writes/s": round(writes / seconds, 1),
        "writes refused": refused,
        "vmget_info median ms": round(statistics.median(latencies) * 1000, 1),
        "vmget_info max ms": round(max(latencies) * 1000),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument("--reader-timeout", type=float, default=1.0)
    parser.add_argument("--journal", nargs="+", default=["wal", "delete"])
    parser.add_argument(
        "--threads", action="store_true", help="readers as threads of one process (one lock)"
    )
    args = parser.parse_args()
    for journal in args.journal:
        print(
            measure(journal, args.seconds, args.readers, args.reader_timeout, args.threads),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
