"""Soak test of the whole daemon: clients, 1.2-style readers, driver faults and crashes.

For N minutes it runs a real nebula-xr process on an ephemeral port with dummy drivers
that fail at random (FAIL_RATE), hang until the driver timeout (HANG_RATE) and take a
random time (DELAY_JITTER), and meanwhile:

* 8 XML-RPC clients (threads) drive mixed VM life cycles through the 1.2 methods:
  allocate, deploy (or leave it to the scheduler), migrate, livemigrate, suspend/resume,
  stop/resume, shutdown, finalize (onevm delete);
* reader processes query one.db as the 1.2 clients do: mm_sched (autocommit, 10 retries
  100 ms apart on SQLITE_BUSY), the Ruby CLI (5 s busy timeout), and a script reading a
  consistent snapshot in one transaction (1 s busy timeout, like tests/test_one_db.py);
* every ``--kill-every`` seconds the daemon is SIGKILLed and restarted.

At the end the clients stop, the daemon is killed and restarted once more, and after two
VM polling intervals every VM's state is read. The report gives operations, refusals,
connection errors, changes acknowledged and then lost (an acknowledged allocation missing
or renamed after a restart, an acknowledged finalize undone), VMs not in a stable state,
reader failures, ``one.vmget_info`` latency and the daemon's RSS over time.

The clients send a real 1.4 session (``oneadmin:sha1(password)``) from an ONE_AUTH file
the soak writes for the daemon it starts.

    python bench/soak.py --minutes 3 [--journal delete] [--kill-every 60] [--keep DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import multiprocessing
import os
import random
import re
import secrets
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import xmlrpc.client
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

POLLING_INTERVAL = 2  # VM_POLLING_INTERVAL and HOST_MONITORING_INTERVAL, seconds
DRIVER_TIMEOUT = 4
HOSTS = ("node01", "node02", "node03", "node04")
VM_STATES = ("INIT", "PENDING", "HOLD", "ACTIVE", "STOPPED", "SUSPENDED", "DONE", "FAILED")
LCM_STATES = (
    "LCM_INIT PROLOG BOOT RUNNING MIGRATE SAVE_STOP SAVE_SUSPEND SAVE_MIGRATE PROLOG_MIGRATE "
    "PROLOG_RESUME EPILOG_STOP EPILOG SHUTDOWN CANCEL FAILURE DELETE UNKNOWN"
).split()
RUNNING, UNKNOWN = 3, 16


def stable(state: int, lcm: int) -> bool:
    """Nothing in flight: a non-ACTIVE state, or ACTIVE and RUNNING (or UNKNOWN)."""
    return state != 3 or lcm in (RUNNING, UNKNOWN)


def state_name(state: int, lcm: int) -> str:
    return f"{VM_STATES[state]}/{LCM_STATES[lcm]}" if state == 3 else VM_STATES[state]


CONF = """HOST_MONITORING_INTERVAL = {interval}
VM_POLLING_INTERVAL = {interval}
MANAGER_TIMER = 0.5
PORT = 0
LISTEN_ADDRESS = "127.0.0.1"
DEBUG_LEVEL = 2
DB_JOURNAL = {journal}
VM_DIR = {location}/remote
SCHEDULER = [ plugin = "sched_rank", interval = 1 ]
IM_MAD = [ name = "im_xen", executable = "im_dummy" ]
VM_MAD = [ name = "vmm_xen", executable = "vmm_dummy", type = "xen", timeout = {timeout},
DELAY = 0.1, DELAY_JITTER = 1.0, FAIL_RATE = {fail_rate}, HANG_RATE = {hang_rate} ]
TM_MAD = [ name = "tm_nfs", executable = "tm_dummy", timeout = {timeout},
DELAY = 0.1, DELAY_JITTER = 0.5, FAIL_RATE = {fail_rate}, HANG_RATE = {hang_rate} ]
"""


# --- the daemon ----------------------------------------------------------------------


class Daemon:
    """nebula-xr as a child process; its stderr is drained so it never blocks."""

    def __init__(self, location: Path, env: dict[str, str]) -> None:
        self.location = location
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.starts = 0

    def start(self, timeout: float = 60.0) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "nebula_xr", "--conf", str(self.location / "etc/oned.conf")],
            env=self.env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        assert self.process.stderr is not None
        deadline = time.monotonic() + timeout
        lines = []
        while time.monotonic() < deadline:
            line = self.process.stderr.readline().decode(errors="replace")
            if not line:
                break
            lines.append(line)
            match = re.search(r"XML-RPC on (http://\S+/RPC2)", line)
            if match:
                self.url = match.group(1)
                self.starts += 1
                threading.Thread(target=self.process.stderr.read, daemon=True).start()
                return
        raise RuntimeError("nebula-xr did not start:\n" + "".join(lines))

    def kill(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.url = ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def rss_kb(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        return int(match.group(1)) if match else None


# --- the clients ---------------------------------------------------------------------


class Down(Exception):
    """The daemon did not answer (killed, restarting)."""


class _TimeoutTransport(xmlrpc.client.Transport):
    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        connection = super().make_connection(host)
        connection.timeout = 60
        return connection


@dataclass
class Stats:
    lock: threading.Lock = field(default_factory=threading.Lock)
    calls: Counter = field(default_factory=Counter)  # method → calls answered
    refused: Counter = field(default_factory=Counter)  # message → count
    down: int = 0  # calls that got no answer (daemon down or killed mid-call)
    info_latency: list[float] = field(default_factory=list)
    acknowledged: dict[int, str] = field(default_factory=dict)  # vid → NAME
    finalized: set[int] = field(default_factory=set)
    life_cycles: int = 0
    #: Life cycles whose VM reached RUNNING (the rest failed at deploy: a driver fault).
    ran: int = 0

    def count(self, method: str, reply: Any) -> None:
        with self.lock:
            self.calls[method] += 1
            if isinstance(reply, list) and reply and reply[0] is False:
                message = str(reply[1]) if len(reply) > 1 else ""
                self.refused[f"{method}: {re.sub(r'[0-9]+', 'N', message)}"] += 1


class Client(threading.Thread):
    def __init__(
        self, index: int, daemon: Daemon, session: str, stats: Stats, stop: threading.Event
    ):
        super().__init__(name=f"client-{index}", daemon=True)
        self.index = index
        self.one = daemon
        self.session = session
        self.stats = stats
        self.stop_event = stop
        self.random = random.Random(index)

    def call(self, method: str, *args: Any) -> Any:
        url = self.one.url
        if not url:
            with self.stats.lock:
                self.stats.down += 1
            time.sleep(0.2)
            raise Down
        started = time.monotonic()
        try:
            with xmlrpc.client.ServerProxy(url, transport=_TimeoutTransport()) as proxy:
                reply = getattr(proxy, method)(self.session, *args)
        except (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError) as error:
            with self.stats.lock:
                self.stats.down += 1
            time.sleep(0.2)
            raise Down from error
        if method == "one.vmget_info":
            with self.stats.lock:
                self.stats.info_latency.append(time.monotonic() - started)
        self.stats.count(method, reply)
        return reply

    def state(self, vid: int) -> tuple[int, int] | None:
        reply = self.call("one.vmget_info", vid)
        if not reply[0]:
            return None
        fields = dict(line.split(":", 1) for line in reply[1].splitlines()[:12] if ":" in line)
        return int(fields["STATE             "]), int(fields["LCM STATE         "])

    def settle(self, vid: int, timeout: float = 20.0) -> tuple[int, int] | None:
        """Poll until the VM is in a stable state (daemon restarts are waited out)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stop_event.is_set():
            try:
                current = self.state(vid)
            except Down:
                continue
            if current is None or stable(*current) and current != (1, 0):
                return current
            time.sleep(0.3)
        return None

    def run(self) -> None:
        number = 0
        while not self.stop_event.is_set():
            number += 1
            try:
                self.life_cycle(f"soak-{self.index}-{number}")
            except Down:
                continue

    def life_cycle(self, name: str) -> None:
        template = (
            f"NAME = {name}\nCPU = 0.1\nMEMORY = 64\nOS = [ kernel = /boot/vmlinuz ]\n"
            f"DISK = [ source = /srv/{name}.img, target = sda1 ]"
        )
        reply = self.call("one.vmallocate", template)
        if not reply[0]:
            return
        vid = reply[1]
        with self.stats.lock:
            self.stats.acknowledged[vid] = name
        if self.random.random() < 0.5:
            self.call("one.vmdeploy", vid, self.random.randrange(len(HOSTS)))
        # else the scheduler places it
        if self.settle(vid) == (3, RUNNING):
            with self.stats.lock:
                self.stats.ran += 1
        for _ in range(self.random.randint(1, 3)):
            if self.settle(vid) != (3, RUNNING):
                break
            self.step(vid)
        # The end: shutdown, or delete (finalize) from a state that allows it.
        current = self.settle(vid)
        if current == (3, RUNNING) and self.random.random() < 0.5:
            self.call("one.vmaction", "shutdown", vid)
            current = self.settle(vid)
        elif current == (3, RUNNING) and self.call("one.vmaction", "stop", vid) == [True]:
            current = self.settle(vid)
        if current is not None and current[0] in (1, 2, 4, 5, 7):
            if self.call("one.vmaction", "finalize", vid) == [True]:
                with self.stats.lock:
                    self.stats.finalized.add(vid)
        with self.stats.lock:
            self.stats.life_cycles += 1

    def step(self, vid: int) -> None:
        kind = self.random.choice(("migrate", "livemigrate", "suspend", "stop"))
        if kind in ("migrate", "livemigrate"):
            self.call(
                "one.vmmigrate", vid, self.random.randrange(len(HOSTS)), kind == "livemigrate"
            )
            return
        if self.call("one.vmaction", kind, vid) == [True]:
            if self.settle(vid) in ((5, 0), (4, 0)):
                self.call("one.vmaction", "resume", vid)


# --- the readers ---------------------------------------------------------------------


def _mm_sched_cycle(db: sqlite3.Connection) -> None:
    db.execute("SELECT oid FROM host_pool WHERE state != 4").fetchall()
    for (hid,) in db.execute("SELECT oid FROM host_pool").fetchall():
        db.execute("SELECT * FROM host_shares WHERE hid = ?", (hid,)).fetchall()
        db.execute("SELECT * FROM host_attributes WHERE id = ?", (hid,)).fetchall()
    for row in db.execute("SELECT * FROM vm_pool WHERE state = 1").fetchall():
        db.execute("SELECT * FROM vm_attributes WHERE id = ?", (row[3],)).fetchall()


def _cli_cycle(db: sqlite3.Connection) -> None:
    # onevm list, onehost list
    db.execute(
        "SELECT * FROM vm_pool LEFT OUTER JOIN (SELECT vid, MAX(seq) AS seq FROM history "
        "GROUP BY vid) AS h ON vm_pool.oid = h.vid WHERE state != 6"
    ).fetchall()
    db.execute("SELECT * FROM host_pool, host_shares WHERE oid = hid").fetchall()


def reader(kind: str, path: str, stop: Any, results: Any) -> None:
    """A 1.2 client reading one.db in a loop; counts cycles and cycles that failed."""
    done = failed = 0
    worst = 0.0
    if kind == "mm_sched":
        # SqliteDB.h: autocommit, retries SQLITE_BUSY 10 times 100 ms apart.
        db = sqlite3.connect(path, timeout=0, isolation_level=None)
    elif kind == "cli":
        db = sqlite3.connect(path, timeout=5, isolation_level=None)  # the Ruby CLI
    else:  # a script reading a consistent snapshot: one transaction, 1 s busy timeout
        db = sqlite3.connect(path, timeout=1, isolation_level=None)
    while not stop.is_set():
        started = time.monotonic()
        for attempt in range(10 if kind == "mm_sched" else 1):
            try:
                if kind == "txn":
                    db.execute("BEGIN")
                    _mm_sched_cycle(db)
                    _cli_cycle(db)
                    db.execute("COMMIT")
                else:
                    (_mm_sched_cycle if kind == "mm_sched" else _cli_cycle)(db)
                done += 1
                break
            except sqlite3.OperationalError:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if kind == "mm_sched" and attempt < 9:
                    time.sleep(0.1)
                    continue
                failed += 1
        worst = max(worst, time.monotonic() - started)
        time.sleep(0.05)
    db.close()
    results.put((kind, done, failed, worst))


# --- the run -------------------------------------------------------------------------


def _session(location: Path) -> tuple[str, dict[str, str]]:
    password = secrets.token_hex(8)
    auth = location / "one_auth"
    auth.write_text(f"oneadmin:{password}\n")
    auth.chmod(0o600)
    env = dict(os.environ, ONE_LOCATION=str(location), ONE_AUTH=str(auth))
    return f"oneadmin:{hashlib.sha1(password.encode()).hexdigest()}", env


def _check_acknowledged(one: Daemon, session: str, stats: Stats) -> tuple[list, list]:
    """Acknowledged allocations missing or renamed, acknowledged finalizes undone."""
    with stats.lock:
        acknowledged = dict(stats.acknowledged)
        finalized = set(stats.finalized)
    lost, undone = [], []
    with xmlrpc.client.ServerProxy(one.url, transport=_TimeoutTransport()) as proxy:
        for vid, name in sorted(acknowledged.items()):
            ok, text = proxy.one.vmget_info(session, vid)
            if not ok or f"NAME={name}\n" not in text:
                lost.append(vid)
            elif vid in finalized and "STATE             : 6\n" not in text:
                undone.append(vid)
    return lost, undone


def _vm_states(one: Daemon, session: str) -> dict[int, tuple[int, int]]:
    with sqlite3.connect(one.location / "var" / "one.db", timeout=10) as db:
        vids = [vid for (vid,) in db.execute("SELECT oid FROM vm_pool")]
    states = {}
    with xmlrpc.client.ServerProxy(one.url, transport=_TimeoutTransport()) as proxy:
        for vid in vids:
            ok, text = proxy.one.vmget_info(session, vid)
            if ok:
                fields = dict(line.split(":", 1) for line in text.splitlines()[:12] if ":" in line)
                states[vid] = int(fields["STATE             "]), int(fields["LCM STATE         "])
    return states


def run(args: argparse.Namespace) -> int:
    location = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="soak-"))
    (location / "etc").mkdir(parents=True, exist_ok=True)
    (location / "etc" / "oned.conf").write_text(
        CONF.format(
            interval=POLLING_INTERVAL,
            journal=args.journal,
            location=location,
            timeout=DRIVER_TIMEOUT,
            fail_rate=args.fail_rate,
            hang_rate=args.hang_rate,
        )
    )
    session, env = _session(location)
    one = Daemon(location, env)
    one.start()
    with xmlrpc.client.ServerProxy(one.url) as proxy:
        for name in HOSTS:
            assert proxy.one.hostallocate(session, name, "im_xen", "vmm_xen", "tm_nfs", True)[0]

    stats = Stats()
    stop = threading.Event()
    reader_stop = multiprocessing.Event()
    results: Any = multiprocessing.Queue()
    db_path = str(location / "var" / "one.db")
    readers = [
        multiprocessing.Process(target=reader, args=(kind, db_path, reader_stop, results))
        for kind in ("mm_sched", "cli", "txn")
    ]
    for process in readers:
        process.start()
    clients = [Client(i, one, session, stats, stop) for i in range(args.clients)]
    for client in clients:
        client.start()

    started = time.monotonic()
    end = started + args.minutes * 60
    next_kill = started + args.kill_every
    rss: list[tuple[int, int]] = []
    kills = 0
    lost_at_restarts: list[int] = []
    undone_at_restarts: list[int] = []
    next_rss = started
    print(
        f"soak: {args.minutes} min, {args.clients} clients, journal {args.journal}, "
        f"kill every {args.kill_every} s, in {location}",
        flush=True,
    )
    while time.monotonic() < end:
        now = time.monotonic()
        if now >= next_rss:
            value = one.rss_kb()
            if value is not None:
                rss.append((int(now - started), value))
            next_rss = now + 10
        if now >= next_kill:
            one.kill()
            kills += 1
            one.start()
            lost, undone = _check_acknowledged(one, session, stats)
            lost_at_restarts.extend(v for v in lost if v not in lost_at_restarts)
            undone_at_restarts.extend(v for v in undone if v not in undone_at_restarts)
            print(
                f"  {int(now - started)} s: SIGKILL #{kills} and restart; "
                f"{len(stats.acknowledged)} acknowledged VMs, lost {len(lost)}",
                flush=True,
            )
            next_kill = time.monotonic() + args.kill_every
        time.sleep(0.5)

    stop.set()
    for client in clients:
        client.join(90)
    reader_stop.set()
    reader_results = [results.get(timeout=60) for _ in readers]
    for process in readers:
        process.join(30)

    # The final crash: every VM must be stable two polling intervals after the restart.
    one.kill()
    kills += 1
    one.start()
    time.sleep(2 * POLLING_INTERVAL + 1)
    lost, undone = _check_acknowledged(one, session, stats)
    states = _vm_states(one, session)
    final_rss = one.rss_kb()
    one.stop()

    report(
        args,
        stats,
        kills,
        (lost_at_restarts, undone_at_restarts, lost, undone),
        states,
        reader_results,
        rss,
        final_rss,
    )
    return 0


def report(
    args: argparse.Namespace,
    stats: Stats,
    kills: int,
    losses: tuple[list[int], list[int], list[int], list[int]],
    states: dict[int, tuple[int, int]],
    reader_results: list[tuple[str, int, int, float]],
    rss: list[tuple[int, int]],
    final_rss: int | None,
) -> None:
    lost_runs, undone_runs, lost, undone = losses
    stranded = {vid: s for vid, s in states.items() if not stable(*s)}
    print("\n== soak report ==")
    print(
        f"duration            {args.minutes} min, {args.clients} clients, "
        f"DB_JOURNAL={args.journal}, FAIL_RATE={args.fail_rate}, HANG_RATE={args.hang_rate}"
    )
    print(f"SIGKILL + restarts  {kills} (the last one before the final check)")
    print(
        f"operations answered {sum(stats.calls.values())}  "
        + ", ".join(f"{m.removeprefix('one.')}={n}" for m, n in sorted(stats.calls.items()))
    )
    print(
        f"life cycles         {stats.life_cycles} run ({stats.ran} reached RUNNING), "
        f"{len(stats.acknowledged)} VMs acknowledged, {len(stats.finalized)} finalized"
    )
    print(f"refused (false)     {sum(stats.refused.values())}")
    for message, n in stats.refused.most_common(12):
        print(f"    {n:6}  {message[:110]}")
    print(f"no answer (down)    {stats.down}")
    latencies = sorted(stats.info_latency)
    if latencies:
        p99 = latencies[int(len(latencies) * 0.99) - 1] if len(latencies) > 100 else latencies[-1]
        print(
            f"vmget_info latency  median {statistics.median(latencies) * 1000:.1f} ms, "
            f"p99 {p99 * 1000:.1f} ms, max {latencies[-1] * 1000:.0f} ms "
            f"({len(latencies)} calls)"
        )
    print(
        f"acknowledged, lost  at restarts: {len(lost_runs)} allocations, "
        f"{len(undone_runs)} finalizes undone; at the end: {len(lost)} allocations, "
        f"{len(undone)} finalizes undone"
    )
    counts = Counter(state_name(*s) for s in states.values())
    print(
        f"VMs at the end      {len(states)}: "
        + ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    )
    print(f"not stable at end   {len(stranded)} (2 polling intervals after the final restart)")
    for vid, s in sorted(stranded.items())[:20]:
        print(f"    VM {vid}: {state_name(*s)}")
    for kind in ("mm_sched", "cli", "txn"):
        rows = [r for r in reader_results if r[0] == kind]
        done = sum(r[1] for r in rows)
        failed = sum(r[2] for r in rows)
        worst = max((r[3] for r in rows), default=0.0)
        share = 100.0 * failed / max(1, done + failed)
        print(
            f"readers {kind:<9}  {done} cycles, {failed} failed ({share:.1f} %), "
            f"slowest cycle {worst:.2f} s"
        )
    series = " ".join(f"{t}s:{kb // 1024}M" for t, kb in rss)
    print(f"RSS over time       {series}" + (f" final:{final_rss // 1024}M" if final_rss else ""))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--kill-every", type=float, default=60.0, help="seconds between SIGKILLs")
    parser.add_argument("--journal", choices=("wal", "delete"), default="wal")
    parser.add_argument("--fail-rate", type=float, default=0.03)
    parser.add_argument("--hang-rate", type=float, default=0.01)
    parser.add_argument("--keep", help="run in this directory (kept) instead of a temporary one")
    return run(parser.parse_args())


if __name__ == "__main__":
    sys.exit(main())
