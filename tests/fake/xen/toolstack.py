"""Stand-in for the Xen toolstack on the fake cluster hosts: ``xm``, ``xl`` and ``xentop``.

The three executables beside this file call :func:`main`, which dispatches on the program name.
Stdlib only: it runs with Debian's /usr/bin/python3 inside the hosts.

State lives in ``$FAKEXEN_STATE`` (default /run/fakexen, which is private to each host):

* ``config.json``: settings merged over :data:`DEFAULTS` (written by the test cluster);
  ``$FAKEXEN_MODE`` overrides its ``mode``;
* ``domains/<name>.json``: one record per domain; ``domains/<name>/``: its QEMU files;
* ``console/<name>.log``: everything the domain's serial console printed on this host;
* ``commands.log``: one JSON line per invocation (argv, exit code, duration, details).

Two backends share the command-line layer: ``fast`` keeps domains as records only (instant),
``qemu`` runs each domain as a QEMU TCG guest (see qemu.py).
"""

from __future__ import annotations

import ast
import fcntl
import getopt
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

STATE_DIR = os.environ.get("FAKEXEN_STATE", "/run/fakexen")

DEFAULTS: dict[str, Any] = {
    "mode": "fast",
    # The host's hardware, as `xm info` reports it; memory in MiB.
    "nr_cpus": 2,
    "cpu_mhz": 2992,
    "total_memory": 4096,
    "dom0_memory": 512,
    # fast mode: seconds until a domain disappears after `xm shutdown`; null: it never does
    # (a guest that ignores the request).
    "shutdown_delay": 0.5,
    # Refuse to create a domain whose disk images are missing, as Xen does.
    "check_disks": True,
    # `xm create` executes the deployment file as Python, as the real xm does (so that an
    # injection would run); otherwise it only accepts literal assignments. xl never does.
    "exec_config": False,
    # fast mode: constant CPU load of each guest and of Domain-0, in percent of one CPU, and
    # network traffic per vif, in KiB/s.
    "domain_cpu_pct": 2.5,
    "dom0_cpu_pct": 1.0,
    "net_kib_per_s": 1.0,
    # Seconds between xentop samples when -d is not given (the real default is 3).
    "xentop_delay": {"fast": 0.0, "qemu": 1.0},
    # qemu mode: the guest every domain boots, whatever kernel its deployment file names.
    "kernel": "",
    "initrd": "",
    "qemu": "qemu-system-x86_64",
    # Injected faults: {command: {"action": "fail"|"hang"|"delay", "message", "times",
    # "seconds"}}; see Cluster.inject_fault.
    "faults": {},
}

CHECKPOINT_MAGIC = "FAKEXEN-CHECKPOINT"
DOM0 = "Domain-0"


class XenError(Exception):
    """An error the tool reports on stderr (as ``Error: <message>`` for xm) before exiting 1."""


class Host:
    """This host's toolstack state."""

    def __init__(self, state_dir: str = STATE_DIR) -> None:
        self.dir = state_dir
        self.name = socket.gethostname()
        # Only the fake hosts have this directory; elsewhere behave like a host without xend.
        if not os.path.isdir(state_dir):
            raise XenError("Unable to connect to xend: No such file or directory. Is xend running?")
        for sub in ("domains", "console"):
            os.makedirs(os.path.join(state_dir, sub), exist_ok=True)
        self.config = dict(DEFAULTS)
        path = os.path.join(state_dir, "config.json")
        if os.path.exists(path):
            with open(path) as f:
                self.config.update(json.load(f))
        self.mode = os.environ.get("FAKEXEN_MODE", self.config["mode"])
        if self.mode not in ("fast", "qemu"):
            raise XenError(f"unknown fake Xen mode {self.mode!r}")

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Serialize read-modify-write of the records (the Xen driver runs 50 actions at once)."""
        with open(os.path.join(self.dir, "lock"), "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def record_path(self, name: str) -> str:
        return os.path.join(self.dir, "domains", f"{name}.json")

    def domain_dir(self, name: str) -> str:
        return os.path.join(self.dir, "domains", name)

    def console_log(self, name: str) -> str:
        return os.path.join(self.dir, "console", f"{name}.log")

    def records(self) -> list[dict[str, Any]]:
        result = []
        for entry in os.listdir(os.path.join(self.dir, "domains")):
            if entry.endswith(".json"):
                try:
                    with open(os.path.join(self.dir, "domains", entry)) as f:
                        result.append(json.load(f))
                except (FileNotFoundError, json.JSONDecodeError):
                    continue  # removed or being written by a concurrent command
        return sorted(result, key=lambda r: r["domid"])

    def find(self, ident: str) -> dict[str, Any] | None:
        for rec in self.records():
            if ident in (rec["name"], str(rec["domid"])):
                return rec
        return None

    def put(self, rec: dict[str, Any]) -> None:
        tmp = self.record_path(rec["name"]) + ".tmp"
        with open(tmp, "w") as f:
            json.dump(rec, f)
        os.rename(tmp, self.record_path(rec["name"]))

    def drop(self, name: str) -> None:
        try:
            os.unlink(self.record_path(name))
        except FileNotFoundError:
            pass

    def next_domid(self) -> int:
        path = os.path.join(self.dir, "next_domid")
        domid = int(open(path).read()) if os.path.exists(path) else 1
        with open(path, "w") as f:
            f.write(str(domid + 1))
        return domid

    def free_memory(self) -> int:
        used = sum(r["memory"] for r in self.records())
        return self.config["total_memory"] - self.config["dom0_memory"] - used

    def apply_fault(self, command: str) -> None:
        """Act out an injected fault for ``command``, if one is configured."""
        with self.lock():
            path = os.path.join(self.dir, "config.json")
            if not os.path.exists(path):
                return
            with open(path) as f:
                config = json.load(f)
            fault = config.get("faults", {}).get(command)
            if not fault:
                return
            if fault.get("times") is not None:
                fault["times"] -= 1
                if fault["times"] <= 0:
                    del config["faults"][command]
                with open(path + ".tmp", "w") as f:
                    json.dump(config, f, indent=1)
                os.rename(path + ".tmp", path)
        action = fault.get("action", "fail")
        if action == "hang":
            while True:
                time.sleep(3600)
        if action == "delay":
            time.sleep(fault.get("seconds") or 1.0)
            return
        raise XenError(fault.get("message") or f"injected failure of {command} on {self.name}")

    def log(self, entry: dict[str, Any]) -> None:
        with open(os.path.join(self.dir, "commands.log"), "a") as f:
            f.write(json.dumps(entry) + "\n")


def parse_deployment(path: str, execute: bool = False) -> dict[str, Any]:
    """Read a Xen domain configuration file (Python assignments, as xm executes it)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        raise XenError(f"Unable to open config file: {path}") from None
    if execute:  # xm's execfile(), with the same privileges
        namespace: dict[str, Any] = {}
        try:
            exec(compile(text, path, "exec"), namespace)
        except Exception as e:
            raise XenError(f"Parsing config file failed: {e}") from None
        return {k: v for k, v in namespace.items() if not k.startswith("__")}
    try:
        tree = ast.parse(text, filename=os.path.basename(path))
        values = {}
        for node in tree.body:
            if not (
                isinstance(node, ast.Assign)
                and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name)
            ):
                raise SyntaxError(
                    "only simple assignments are supported", (path, node.lineno, 0, "")
                )
            values[node.targets[0].id] = ast.literal_eval(node.value)
    except (SyntaxError, ValueError) as e:
        raise XenError(f"Parsing config file failed: {e}") from None
    return values


def domain_record(config_file: str, values: dict[str, Any]) -> dict[str, Any]:
    """A new domain's record from its deployment file."""
    if "name" not in values:
        raise XenError("Missing name in config file.")
    disks = []
    for spec in values.get("disk", []):
        fields = spec.split(",")
        path = fields[0]
        for prefix in ("tap:aio:", "tap:qcow:", "tap:", "file:", "phy:"):
            if path.startswith(prefix):
                path = path[len(prefix) :]
                break
        disks.append(
            {
                "path": path,
                "target": fields[1] if len(fields) > 1 else "",
                "mode": fields[2] if len(fields) > 2 else "w",
            }
        )
    memory = int(values.get("memory", 128))
    return {
        "name": str(values["name"]),
        "domid": 0,
        "uuid": str(uuid.uuid4()),
        "memory": memory,
        "maxmem": int(values.get("maxmem", memory)),
        "vcpus": int(values.get("vcpus", 1)),
        "config_file": config_file,
        "disks": disks,
        "vifs": list(values.get("vif", [])),
        "weight": 256,
        "cap": 0,
        "paused": False,
        "migrating": False,
        "shutdown_at": None,
        "cpu_seconds": 0.0,
        "since": time.time(),
        "created": time.time(),
    }


class Toolstack:
    """The commands common to xm and xl, on top of a backend."""

    def __init__(self, host: Host, prog: str) -> None:
        self.host = host
        self.prog = prog
        if host.mode == "qemu":
            from tests.fake.xen.qemu import QemuBackend

            self.backend: Any = QemuBackend(host)
        else:
            self.backend = FastBackend(host)
        self.details: dict[str, Any] = {}

    def no_such_domain(self, ident: str) -> XenError:
        if self.prog == "xl":
            return XenError(f"{ident} is an invalid domain identifier (rc=-6)")
        return XenError(f"Domain '{ident}' does not exist.")

    def live_records(self) -> list[dict[str, Any]]:
        """The records of domains that still exist; forgets the others."""
        alive = []
        with self.host.lock():
            for rec in self.host.records():
                if self.backend.alive(rec):
                    alive.append(rec)
                else:
                    self.host.drop(rec["name"])
                    self.backend.forget(rec)
        return alive

    def get(self, ident: str) -> dict[str, Any]:
        for rec in self.live_records():
            if ident in (rec["name"], str(rec["domid"])):
                return rec
        raise self.no_such_domain(ident)

    def admit(self, rec: dict[str, Any]) -> None:
        """Checks Xen makes before a domain (new, restored or incoming) may exist here."""
        live = self.live_records()
        for other in live:
            if other["name"] == rec["name"]:
                raise XenError(f"VM name '{rec['name']}' already in use by domain {other['domid']}")
        free = self.host.free_memory()
        if rec["memory"] > free:
            raise XenError(
                "Not enough free memory and enable-dom0-ballooning is False, so I "
                f"cannot release any more.  I need {rec['memory'] * 1024} KiB but "
                f"only have {free * 1024}."
            )
        for disk in rec["disks"]:
            if self.host.config["check_disks"] and not os.path.exists(disk["path"]):
                raise XenError(f"Disk image does not exist: {disk['path']}")
            if disk["mode"] == "w":
                for other in live:
                    if any(d["path"] == disk["path"] for d in other["disks"]):
                        raise XenError(
                            f"Device {disk['path']} is already in use by domain {other['domid']}"
                        )

    def register(self, rec: dict[str, Any]) -> dict[str, Any]:
        with self.host.lock():
            rec["domid"] = self.host.next_domid()
            self.host.put(rec)
        return rec

    # -- commands --------------------------------------------------------------------------

    def create(self, config_file: str, paused: bool = False) -> dict[str, Any]:
        config_file = os.path.abspath(config_file)
        execute = self.prog == "xm" and self.host.config.get("exec_config", False)
        rec = domain_record(config_file, parse_deployment(config_file, execute))
        self.admit(rec)
        rec["paused"] = paused
        self.backend.start(rec)
        return self.register(rec)

    def shutdown(self, ident: str, wait: bool) -> None:
        rec = self.get(ident)
        self.backend.shutdown(rec)
        with self.host.lock():
            if os.path.exists(self.host.record_path(rec["name"])):
                self.host.put(rec)
        while wait and any(r["name"] == rec["name"] for r in self.live_records()):
            time.sleep(0.1)

    def destroy(self, ident: str) -> None:
        rec = self.get(ident)
        self.backend.destroy(rec)
        with self.host.lock():
            self.host.drop(rec["name"])
        self.backend.forget(rec)

    def set_paused(self, ident: str, paused: bool) -> None:
        rec = self.get(ident)
        self.backend.set_paused(rec, paused)
        account_cpu(rec, self.host)
        rec["paused"] = paused
        with self.host.lock():
            self.host.put(rec)

    def save(self, ident: str, path: str, checkpoint: bool) -> None:
        rec = self.get(ident)
        path = os.path.abspath(path)
        if not os.access(os.path.dirname(path), os.W_OK):
            raise XenError(f"{self.prog} save: Unable to create file {path}")
        account_cpu(rec, self.host)
        with open(path, "w") as f:
            f.write(f"{CHECKPOINT_MAGIC} {json.dumps(rec)}\n")
        self.details["save"] = self.backend.save(rec, path, checkpoint)
        if not checkpoint:
            with self.host.lock():
                self.host.drop(rec["name"])
            self.backend.forget(rec)

    def restore(self, path: str, paused: bool) -> dict[str, Any]:
        path = os.path.abspath(path)
        try:
            with open(path, "rb") as f:
                header = f.readline()
        except OSError:
            raise XenError(f"{self.prog} restore: Unable to read file {path}") from None
        magic, _, state = header.decode(errors="replace").partition(" ")
        if magic != CHECKPOINT_MAGIC:
            raise XenError(
                "Restore failed: not a valid guest state file: a LinuxGuestRecord was expected"
            )
        rec = json.loads(state)
        self.admit(rec)
        rec.update(paused=paused, migrating=False, shutdown_at=None, since=time.time())
        self.details["restore"] = self.backend.restore(rec, path, len(header))
        return self.register(rec)

    def migrate(self, ident: str, destination: str, live: bool) -> None:
        rec = self.get(ident)
        with self.host.lock():
            rec["migrating"] = True
            self.host.put(rec)
        try:
            # A hold point of its own: the domain shows as migrating-<name>, nothing sent yet.
            self.host.apply_fault("migrate-send")
            account_cpu(rec, self.host)
            answer = json.loads(self.remote(destination, ["migrate-receive"], json.dumps(rec)))
            try:
                self.details["migration"] = self.backend.migrate(rec, answer, live)
            except BaseException:
                self.remote(destination, ["migrate-abort", rec["name"]], check=False)
                raise
        except BaseException:
            with self.host.lock():
                rec["migrating"] = False
                if os.path.exists(self.host.record_path(rec["name"])):
                    self.host.put(rec)
            raise
        with self.host.lock():
            self.host.drop(rec["name"])
        self.backend.forget(rec)
        self.remote(destination, ["migrate-finish", rec["name"]])

    def remote(self, destination: str, args: list[str], stdin: str = "", check: bool = True) -> str:
        """Run this tool on the migration destination, as xl does (``ssh <host> xl ...``)."""
        proc = subprocess.run(
            ["ssh", destination, self.prog, *args], input=stdin, capture_output=True, text=True
        )
        if check and proc.returncode == 255:
            reason = (proc.stderr.strip().splitlines() or ["ssh failed"])[-1]
            raise XenError(f"can't connect: {reason}")
        if check and proc.returncode != 0:
            lines = proc.stderr.strip().splitlines() or ["unknown error"]
            message = lines[0].removeprefix("Error: ")
            raise XenError(f"{destination}: {message}")
        return proc.stdout

    def migrate_receive(self, state: str) -> str:
        """Destination side of a migration: get ready for the domain, say where to send it."""
        rec = json.loads(state)
        self.admit(rec)
        rec.update(migrating=False, incoming=True, since=time.time())
        answer = self.backend.receive(rec)
        self.register(rec)
        return json.dumps(answer)

    def migrate_finish(self, name: str) -> None:
        rec = self.host.find(name)
        if rec is None:
            raise self.no_such_domain(name)
        self.backend.finish_incoming(rec)
        rec["incoming"] = False
        rec["since"] = time.time()
        with self.host.lock():
            self.host.put(rec)

    def migrate_abort(self, name: str) -> None:
        rec = self.host.find(name)
        if rec is not None:
            self.backend.destroy(rec)
            with self.host.lock():
                self.host.drop(name)
            self.backend.forget(rec)

    def sched_credit(self, ident: str | None, weight: int | None, cap: int | None) -> str:
        if weight is None and cap is None:
            rows = [
                (r["name"], r["domid"], r["weight"], r["cap"])
                for r in ([self.get(ident)] if ident else self.live_records())
            ]
            if not ident:
                rows.insert(0, (DOM0, 0, 256, 0))
            lines = ["{:<33} {:>4} {:>6} {:>4}".format("Name", "ID", "Weight", "Cap")]
            lines += ["{:<32} {:>5} {:6d} {:4d}".format(*row) for row in rows]
            return "\n".join(lines) + "\n"
        if ident is None:
            raise XenError("No domain given.")
        rec = self.get(ident)
        with self.host.lock():
            if weight is not None:
                rec["weight"] = weight
            if cap is not None:
                rec["cap"] = cap
            self.host.put(rec)
        return ""

    def console(self, ident: str) -> None:
        self.backend.console(self.get(ident))


def account_cpu(rec: dict[str, Any], host: Host) -> None:
    """Fold the CPU time used since ``rec["since"]`` into ``rec["cpu_seconds"]`` (fast mode)."""
    now = time.time()
    if not rec["paused"]:
        rec["cpu_seconds"] += (now - rec["since"]) * host.config["domain_cpu_pct"] / 100
    rec["since"] = now


class FastBackend:
    """Domains that are only records; shutting down takes ``shutdown_delay`` seconds."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def alive(self, rec: dict[str, Any]) -> bool:
        return rec["shutdown_at"] is None or time.time() < rec["shutdown_at"]

    def forget(self, rec: dict[str, Any]) -> None:
        pass

    def start(self, rec: dict[str, Any]) -> None:
        with open(self.host.console_log(rec["name"]), "a") as f:
            f.write(f"GUEST-BOOTED boot_id={uuid.uuid4()} (fake)\n")

    def shutdown(self, rec: dict[str, Any]) -> None:
        delay = self.host.config["shutdown_delay"]
        if delay is not None and rec["shutdown_at"] is None:
            rec["shutdown_at"] = time.time() + delay

    def destroy(self, rec: dict[str, Any]) -> None:
        pass

    def set_paused(self, rec: dict[str, Any], paused: bool) -> None:
        pass

    def save(self, rec: dict[str, Any], path: str, checkpoint: bool) -> dict[str, Any]:
        return {}

    def restore(self, rec: dict[str, Any], path: str, offset: int) -> dict[str, Any]:
        return {}

    def receive(self, rec: dict[str, Any]) -> dict[str, Any]:
        return {}

    def migrate(self, rec: dict[str, Any], answer: dict[str, Any], live: bool) -> dict[str, Any]:
        return {}

    def finish_incoming(self, rec: dict[str, Any]) -> None:
        pass

    def stats(self, rec: dict[str, Any]) -> tuple[float, int, str]:
        """(CPU seconds, memory in KiB, xentop state letters) of a domain."""
        cpu = rec["cpu_seconds"]
        if not rec["paused"]:
            cpu += (time.time() - rec["since"]) * self.host.config["domain_cpu_pct"] / 100
        paused = rec["paused"] or rec.get("incoming")
        return cpu, rec["memory"] * 1024, "p" if paused else "b"

    def dom0_cpu(self) -> float:
        return time.monotonic() * self.host.config["dom0_cpu_pct"] / 100

    def net_kib(self, rec: dict[str, Any]) -> tuple[int, int]:
        """(transmitted, received) KiB over all vifs since the domain was created."""
        age = time.time() - rec["created"]
        kib = int(age * self.host.config["net_kib_per_s"] * len(rec["vifs"]))
        return kib, 2 * kib

    def console(self, rec: dict[str, Any]) -> None:
        with open(self.host.console_log(rec["name"])) as f:
            sys.stdout.write(f.read())


# -- output formats ----------------------------------------------------------------------------

XM_STATE_ORDER = "rbpscd"  # xm list / xl list
XENTOP_STATE_ORDER = "dsbcpr"  # xentop


def state_string(letters: str, order: str) -> str:
    return "".join(c if c in letters else "-" for c in order)


def display_name(rec: dict[str, Any]) -> str:
    # Xen renames the source domain for the time of a migration; OpenNebula's poll expects it.
    return ("migrating-" if rec.get("migrating") else "") + rec["name"]


def format_list(ts: Toolstack, recs: list[dict[str, Any]], with_dom0: bool) -> str:
    if ts.prog == "xl":
        lines = ["Name                                        ID   Mem VCPUs\tState\tTime(s)"]
        row = "{:<40} {:5d} {:5d} {:5d}     {}  {:8.1f}"
    else:
        lines = [
            "{:<40} {:>5} {:>5} {:>5} {:>10} {:>9}".format(
                "Name", "ID", "Mem", "VCPUs", "State", "Time(s)"
            )
        ]
        row = "{:<40} {:5d} {:5d} {:5d} {:>10} {:8.1f}"
    config = ts.host.config
    if with_dom0:
        lines.append(
            row.format(
                DOM0,
                0,
                config["dom0_memory"],
                config["nr_cpus"],
                state_string("r", XM_STATE_ORDER),
                ts.backend.dom0_cpu(),
            )
        )
    for rec in recs:
        cpu, _, letters = ts.backend.stats(rec)
        lines.append(
            row.format(
                display_name(rec),
                rec["domid"],
                rec["memory"],
                rec["vcpus"],
                state_string(letters, XM_STATE_ORDER),
                cpu,
            )
        )
    return "\n".join(lines) + "\n"


def format_info(ts: Toolstack) -> str:
    config = ts.host.config
    release = os.uname().release
    items: list[tuple[str, Any]] = [
        ("host", ts.host.name),
        ("release", release),
        ("version", os.uname().version),
        ("machine", os.uname().machine),
        ("nr_cpus", config["nr_cpus"]),
        ("nr_nodes", 1),
        ("cores_per_socket", config["nr_cpus"]),
        ("threads_per_core", 1),
        ("cpu_mhz", config["cpu_mhz"] if ts.prog == "xm" else f"{config['cpu_mhz']}.000"),
        ("hw_caps", "bfebfbff:20100800:00000000:00000940:0004e3bd:00000000:00000001:00000000"),
        ("virt_caps", "hvm"),
        ("total_memory", config["total_memory"]),
        ("free_memory", ts.host.free_memory()),
        ("xen_major", 3 if ts.prog == "xm" else 4),
        ("xen_minor", 2 if ts.prog == "xm" else 17),
        ("xen_extra", ".1" if ts.prog == "xm" else ".0"),
        ("xen_caps", "xen-3.0-x86_64 xen-3.0-x86_32p hvm-3.0-x86_32 hvm-3.0-x86_64"),
        ("xen_scheduler", "credit"),
        ("xen_pagesize", 4096),
        ("platform_params", "virt_start=0xffff800000000000"),
        ("xen_changeset", "unavailable"),
        ("cc_compiler", "gcc version 12.2.0 (Debian 12.2.0-14)"),
        ("cc_compile_by", "fakexen"),
        ("cc_compile_domain", "nebula-xr.test"),
        ("cc_compile_date", "Thu Jan  1 00:00:00 UTC 2009"),
    ]
    if ts.prog == "xm":
        items.append(("xend_config_format", 4))
    return "".join(f"{k:<23}: {v}\n" for k, v in items)


def xentop_sample(
    ts: Toolstack, previous: dict[int, float] | None, elapsed: float
) -> tuple[str, dict[int, float]]:
    """One xentop batch iteration: header, then one line per domain ordered by id."""
    header = (
        "      NAME  STATE   CPU(sec) CPU(%)     MEM(k) MEM(%)  MAXMEM(k) MAXMEM(%) VCPUS"
        " NETS NETTX(k) NETRX(k) VBDS   VBD_OO   VBD_RD   VBD_WR  VBD_RSECT  VBD_WSECT"
        " SSID"
    )
    config = ts.host.config
    total_k = config["total_memory"] * 1024
    cpu_now: dict[int, float] = {}

    def pct(domid: int, cpu: float) -> float:
        cpu_now[domid] = cpu
        if previous is None or domid not in previous or elapsed <= 0:
            return 0.0
        return (cpu - previous[domid]) * 100 / elapsed

    # Column widths of xentop's fields table, in its order.
    row = (
        "{:>10} {:>6} {:10d} {:6.1f} {:10d} {:6.1f} {:>10} {:>9} {:5d} {:4d} {:8d} {:8d}"
        " {:4d} {:8d} {:8d} {:8d} {:10d} {:10d} {:4d}"
    )
    dom0_mem = config["dom0_memory"] * 1024
    dom0_cpu = ts.backend.dom0_cpu()
    lines = [
        header,
        row.format(
            DOM0,
            state_string("r", XENTOP_STATE_ORDER),
            int(dom0_cpu),
            pct(0, dom0_cpu),
            dom0_mem,
            dom0_mem * 100 / total_k,
            "no limit",
            "n/a",
            config["nr_cpus"],
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
        ),
    ]
    for rec in ts.live_records():
        cpu, mem_k, letters = ts.backend.stats(rec)
        tx, rx = ts.backend.net_kib(rec)
        maxmem_k = rec["maxmem"] * 1024
        lines.append(
            row.format(
                display_name(rec),
                state_string(letters, XENTOP_STATE_ORDER),
                int(cpu),
                pct(rec["domid"], cpu),
                mem_k,
                mem_k * 100 / total_k,
                maxmem_k,
                f"{maxmem_k * 100 / total_k:.1f}",
                rec["vcpus"],
                len(rec["vifs"]),
                tx,
                rx,
                len(rec["disks"]),
                0,
                0,
                0,
                0,
                0,
                0,
            )
        )
    return "\n".join(lines) + "\n", cpu_now


# -- command lines -----------------------------------------------------------------------------

XM_COMMANDS = (
    "create",
    "list",
    "shutdown",
    "destroy",
    "pause",
    "unpause",
    "save",
    "restore",
    "migrate",
    "sched-credit",
    "info",
    "console",
    "migrate-receive",
    "migrate-finish",
    "migrate-abort",
)


def lookup_command(name: str) -> str | None:
    """xm accepts any unambiguous prefix of a command (OpenNebula runs ``xm sched-cred``)."""
    if name in XM_COMMANDS:
        return name
    matches = [c for c in XM_COMMANDS if c.startswith(name)] if len(name) > 1 else []
    return matches[0] if len(matches) == 1 else None


def run_xm(ts: Toolstack, command: str, args: list[str]) -> str:
    """Run one xm/xl subcommand; returns its stdout."""
    xl = ts.prog == "xl"

    def opts(short: str, long: list[str], count: tuple[int, int]) -> tuple[dict, list[str]]:
        try:
            found, params = getopt.gnu_getopt(args, short, long)
        except getopt.GetoptError as e:
            raise XenError(str(e)) from None
        if not count[0] <= len(params) <= count[1]:
            raise XenError(
                f"'{ts.prog} {command}' requires between {count[0]} and {count[1]} arguments."
            )
        return {k.lstrip("-")[:1]: v for k, v in found}, params

    if command == "create":
        o, params = opts("cpqf:", ["console", "paused", "quiet"], (0, 99))
        files = [o["f"]] if "f" in o else [p for p in params if "=" not in p][:1]
        if not files:
            raise XenError("No config file given.")
        if xl:
            print(f"Parsing config from {files[0]}", file=sys.stderr)
        rec = ts.create(files[0], paused="p" in o)
        ts.details["domid"] = rec["domid"]
        if xl:
            return ""
        return f'Using config file "{os.path.abspath(files[0])}".\nStarted domain {rec["name"]}\n'
    if command == "list":
        _, params = opts("l", ["long"], (0, 99))
        recs = [ts.get(p) for p in params] if params else ts.live_records()
        return format_list(ts, recs, with_dom0=not params)
    if command == "shutdown":
        o, params = opts("wa", ["wait", "all"], (1, 1))
        ts.shutdown(params[0], wait="w" in o)
        return ""
    if command == "destroy":
        _, params = opts("", [], (1, 1))
        ts.destroy(params[0])
        return ""
    if command in ("pause", "unpause"):
        _, params = opts("", [], (1, 1))
        ts.set_paused(params[0], command == "pause")
        return ""
    if command == "save":
        o, params = opts("cf", ["checkpoint", "force"], (2, 3 if xl else 2))
        if xl:
            print(f"Saving to {params[1]} new xl format (info 0x3/0x0/1024)", file=sys.stderr)
        ts.save(params[0], params[1], checkpoint="c" in o)
        return ""
    if command == "restore":
        o, params = opts("pe", ["paused"], (1, 2 if xl else 1))
        if xl:
            print(
                f"Loading new save file {params[-1]} (new xl fmt info 0x3/0x0/1024)",
                file=sys.stderr,
            )
        rec = ts.restore(params[-1], paused="p" in o)
        ts.details["domid"] = rec["domid"]
        return ""
    if command == "migrate":
        if xl:
            _, params = opts("s:eC:", [], (2, 2))
            live = True
        else:
            o, params = opts(
                "lp:n:sc", ["live", "port=", "node=", "ssl", "change_home_server"], (2, 2)
            )
            live = "l" in o
        ts.migrate(params[0], params[1], live)
        if xl:
            print(
                "migration sender: Target reports successful startup.\nMigration successful.",
                file=sys.stderr,
            )
        return ""
    if command == "migrate-receive":
        return ts.migrate_receive(sys.stdin.read()) + "\n"
    if command == "migrate-finish":
        ts.migrate_finish(args[0])
        return ""
    if command == "migrate-abort":
        ts.migrate_abort(args[0])
        return ""
    if command == "sched-credit":
        o, _ = opts("d:w:c:", ["domain=", "weight=", "cap="], (0, 0))
        try:
            weight = int(o["w"]) if "w" in o else None
            cap = int(o["c"]) if "c" in o else None
        except ValueError:
            raise XenError("Invalid argument.") from None
        return ts.sched_credit(o.get("d"), weight, cap)
    if command == "info":
        return format_info(ts)
    if command == "console":
        _, params = opts("t:n:", [], (1, 1))
        ts.console(params[0])
        return ""
    raise AssertionError(command)


def run_xentop(ts: Toolstack, args: list[str]) -> None:
    try:
        found, _ = getopt.gnu_getopt(
            args, "bi:d:hVnrvfx", ["batch", "iterations=", "delay=", "help", "version"]
        )
    except getopt.GetoptError as e:
        raise XenError(str(e)) from None
    o = {k.lstrip("-")[:1]: v for k, v in found}
    if "b" not in o:
        raise XenError("only batch mode (-b) is emulated")
    iterations = int(o.get("i", "0")) or None
    delay = float(o["d"]) if "d" in o else ts.host.config["xentop_delay"][ts.host.mode]
    previous: dict[int, float] | None = None
    last = time.monotonic()
    n = 0
    while True:
        now = time.monotonic()
        out, previous = xentop_sample(ts, previous, now - last)
        last = now
        sys.stdout.write(out)
        sys.stdout.flush()
        n += 1
        if iterations is not None and n >= iterations:
            return
        time.sleep(delay)


def main(argv: list[str]) -> int:
    prog = os.path.basename(argv[0])
    started = time.time()
    entry: dict[str, Any] = {"time": started, "argv": [prog, *argv[1:]]}
    ts = None
    try:
        host = Host()
        ts = Toolstack(host, prog)
        if prog == "xentop":
            host.apply_fault("xentop")
            run_xentop(ts, argv[1:])
        else:
            if len(argv) < 2:
                raise XenError(f"usage: {prog} <subcommand> [args]")
            command = lookup_command(argv[1])
            if command is None:
                raise XenError(f"Subcommand {argv[1]} not found!")
            host.apply_fault(command)
            sys.stdout.write(run_xm(ts, command, argv[2:]))
        rc = 0
    except XenError as e:
        message = str(e)
        print(message if prog == "xl" else f"Error: {message}", file=sys.stderr)
        entry["error"] = message
        rc = 1
    entry.update(rc=rc, seconds=round(time.time() - started, 3))
    if ts is not None:
        entry.update(ts.details)
        ts.host.log(entry)
    return rc
