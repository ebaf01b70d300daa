"""qemu mode of the fake Xen toolstack: every domain is a QEMU TCG guest driven through QMP.

Files of domain ``<name>`` on its host: ``domains/<name>/{qmp.sock,console.sock,qemu.pid}``
(private to the host, so no other host can reach the guest by mistake) and
``console/<name>.log``, the serial console (appended to across restores).

Mapping: create → ``qemu -daemonize``; shutdown → ``system_powerdown`` (ACPI power button,
which the guest turns into a poweroff); destroy → ``quit``; save → ``stop`` + ``migrate`` to
``exec:cat >> <file>`` (after the checkpoint's header line) + ``quit``; restore →
``-incoming exec:tail -c +<offset> <file>`` + ``cont``; live migration → the destination
starts ``-incoming tcp:<its address>:<port>``, the source ``migrate``\\ s and polls
``query-migrate``, then quits.
"""

from __future__ import annotations

import json
import os
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from tests.fake.xen.toolstack import Host, XenError

CLK_TCK = os.sysconf("SC_CLK_TCK")
# The cloud kernel needs this much to boot; the domain still reports its configured memory.
MIN_GUEST_MIB = 128


class QMP:
    """A QMP connection: JSON lines over the domain's unix socket."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        # A QMP socket serves one client at a time; others wait for the greeting.
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(path)
            self.file = self.sock.makefile("rw")
            self._read()
            self.execute("qmp_capabilities")
        except (OSError, ValueError) as e:
            self.sock.close()
            raise XenError(f"cannot reach the domain's QEMU monitor: {e}") from None
        self.sock.settimeout(None)

    def _read(self) -> dict[str, Any]:
        line = self.file.readline()
        if not line:
            raise OSError("QEMU closed the monitor")
        return json.loads(line)

    def execute(self, command: str, **arguments: Any) -> Any:
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        self.file.write(json.dumps(message) + "\n")
        self.file.flush()
        while True:
            reply = self._read()
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise XenError(f"QEMU: {reply['error']['desc']}")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> QMP:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_migration(qmp: QMP, timeout: float = 300.0) -> dict[str, Any]:
    """Poll ``query-migrate`` until the outgoing migration ends; its statistics if it worked."""
    deadline = time.monotonic() + timeout
    while True:
        info = qmp.execute("query-migrate")
        status = info.get("status")
        if status == "completed":
            return {
                "total_time_ms": info.get("total-time"),
                "downtime_ms": info.get("downtime"),
                "setup_time_ms": info.get("setup-time"),
                "transferred": info.get("ram", {}).get("transferred"),
            }
        if status in ("failed", "cancelled"):
            raise XenError(f"Migration failed: {info.get('error-desc', status)}")
        if time.monotonic() > deadline:
            qmp.execute("migrate_cancel")
            raise XenError("Migration timed out")
        time.sleep(0.02)


def process_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class QemuBackend:
    """Domains as QEMU guests; see the module docstring."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def _dir(self, rec: dict[str, Any]) -> str:
        return self.host.domain_dir(rec["name"])

    def _qmp(self, rec: dict[str, Any], timeout: float = 5.0) -> QMP:
        return QMP(os.path.join(self._dir(rec), "qmp.sock"), timeout)

    def alive(self, rec: dict[str, Any]) -> bool:
        return "pid" in rec and process_running(rec["pid"])

    def forget(self, rec: dict[str, Any]) -> None:
        shutil.rmtree(self._dir(rec), ignore_errors=True)

    def start(self, rec: dict[str, Any], incoming: str | None = None) -> None:
        config = self.host.config
        if not (os.path.isfile(config["kernel"]) and os.path.isfile(config["initrd"])):
            raise XenError("qemu mode needs the guest built by tests/cluster/install.sh")
        d = self._dir(rec)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        argv = [
            config["qemu"],
            "-name",
            rec["name"],
            "-accel",
            "tcg",
            "-m",
            str(max(rec["memory"], MIN_GUEST_MIB)),
            "-smp",
            str(rec["vcpus"]),
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-kernel",
            config["kernel"],
            "-initrd",
            config["initrd"],
            "-append",
            "console=ttyS0 quiet panic=-1",
            # The socket is for `xm console`; the log records everything even when no
            # console is attached.
            "-chardev",
            f"socket,id=ser0,path={d}/console.sock,server=on,wait=off,"
            f"logfile={self.host.console_log(rec['name'])},logappend=on",
            "-serial",
            "chardev:ser0",
            "-qmp",
            f"unix:{d}/qmp.sock,server=on,wait=off",
            "-pidfile",
            f"{d}/qemu.pid",
            "-daemonize",
        ]
        for disk in rec["disks"]:
            if os.path.exists(disk["path"]):
                readonly = ",readonly=on" if disk["mode"] == "r" else ""
                argv += ["-drive", f"file={disk['path']},format=raw,if=virtio{readonly}"]
        if incoming:
            argv += ["-incoming", incoming]
        elif rec["paused"]:
            argv.append("-S")
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            shutil.rmtree(d, ignore_errors=True)
            reason = " ".join(proc.stderr.split()) or f"exit status {proc.returncode}"
            raise XenError(f"Domain creation failed: {reason}")
        with open(f"{d}/qemu.pid") as f:
            rec["pid"] = int(f.read())

    def shutdown(self, rec: dict[str, Any]) -> None:
        with self._qmp(rec) as qmp:
            qmp.execute("system_powerdown")

    def _quit(self, rec: dict[str, Any], qmp: QMP | None = None) -> None:
        """Stop the QEMU of ``rec`` and wait until it is gone."""
        try:
            if qmp is None:
                with self._qmp(rec, timeout=2.0) as own:
                    own.execute("quit")
            else:
                qmp.execute("quit")
        except (XenError, OSError):
            pass  # the monitor is busy or gone: kill instead
        deadline = time.monotonic() + 5
        while process_running(rec["pid"]):
            if time.monotonic() > deadline:
                os.kill(rec["pid"], signal.SIGKILL)
            time.sleep(0.02)

    def destroy(self, rec: dict[str, Any]) -> None:
        if "pid" in rec:
            self._quit(rec)

    def set_paused(self, rec: dict[str, Any], paused: bool) -> None:
        with self._qmp(rec) as qmp:
            qmp.execute("stop" if paused else "cont")

    def save(self, rec: dict[str, Any], path: str, checkpoint: bool) -> dict[str, Any]:
        started = time.monotonic()
        with self._qmp(rec) as qmp:
            qmp.execute("stop")
            qmp.execute("migrate", uri=f"exec:cat >> {shlex.quote(path)}")
            stats = wait_migration(qmp)
            if checkpoint:
                qmp.execute("cont")
            else:
                self._quit(rec, qmp)
        stats["seconds"] = round(time.monotonic() - started, 3)
        return stats

    def _wait_incoming(self, rec: dict[str, Any], timeout: float = 300.0) -> str:
        """Wait until the incoming state has been loaded; the run state it left."""
        deadline = time.monotonic() + timeout
        with self._qmp(rec) as qmp:
            while True:
                status = qmp.execute("query-status")["status"]
                if status != "inmigrate":
                    break
                if time.monotonic() > deadline or not self.alive(rec):
                    raise XenError("Restore failed: the guest state was not received")
                time.sleep(0.02)
            if status == "paused" and not rec["paused"]:
                qmp.execute("cont")
                status = "running"
        if status not in ("running", "paused"):
            raise XenError(f"Restore failed: guest is {status}")
        return status

    def restore(self, rec: dict[str, Any], path: str, offset: int) -> dict[str, Any]:
        started = time.monotonic()
        # tail -c +N starts at byte N (1-based): the migration stream after the header line.
        self.start(rec, incoming=f"exec:tail -c +{offset + 1} {shlex.quote(path)}")
        try:
            self._wait_incoming(rec)
        except XenError:
            self._quit(rec)
            self.forget(rec)
            raise
        return {"seconds": round(time.monotonic() - started, 3)}

    def receive(self, rec: dict[str, Any]) -> dict[str, Any]:
        address = socket.gethostbyname(self.host.name)
        with socket.socket() as s:
            s.bind((address, 0))
            port = s.getsockname()[1]
        uri = f"tcp:{address}:{port}"
        self.start(rec, incoming=uri)
        return {"uri": uri}

    def migrate(self, rec: dict[str, Any], answer: dict[str, Any], live: bool) -> dict[str, Any]:
        started = time.monotonic()
        with self._qmp(rec) as qmp:
            if not live:
                qmp.execute("stop")
            try:
                qmp.execute("migrate", uri=answer["uri"])
                stats = wait_migration(qmp)
            except XenError:
                if not live:
                    qmp.execute("cont")
                raise
            self._quit(rec, qmp)
        stats["seconds"] = round(time.monotonic() - started, 3)
        return stats

    def finish_incoming(self, rec: dict[str, Any]) -> None:
        self._wait_incoming(rec)

    def stats(self, rec: dict[str, Any]) -> tuple[float, int, str]:
        """(CPU seconds, resident memory in KiB, xentop state letters) of the QEMU process."""
        rss = 0
        try:
            with open(f"/proc/{rec['pid']}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
        except FileNotFoundError:
            pass
        # Not asked over QMP: the monitor is busy for the whole of a migration or save.
        paused = rec["paused"] or rec.get("incoming")
        return cpu_seconds(rec["pid"]), rss, "p" if paused else "b"

    def dom0_cpu(self) -> float:
        """CPU time of this host's processes other than the guests."""
        guests = {str(rec.get("pid")) for rec in self.host.records()}
        total = 0.0
        for entry in os.listdir("/proc"):
            if entry.isdigit() and entry not in guests:
                total += cpu_seconds(int(entry))
        return total

    def net_kib(self, rec: dict[str, Any]) -> tuple[int, int]:
        return 0, 0  # the guests have no network devices

    def console(self, rec: dict[str, Any]) -> None:
        """Relay the serial console until it closes; Ctrl-] on stdin detaches, as in xm."""
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(os.path.join(self._dir(rec), "console.sock"))
        out = sys.stdout.buffer
        # select(), not epoll: stdin may be a regular file such as /dev/null.
        sel = selectors.SelectSelector()
        sel.register(sock, selectors.EVENT_READ)
        sel.register(sys.stdin.buffer, selectors.EVENT_READ)
        while True:
            for key, _ in sel.select():
                if key.fileobj is sock:
                    data = sock.recv(65536)
                    if not data:
                        return
                    out.write(data)
                    out.flush()
                else:
                    data = os.read(sys.stdin.fileno(), 4096)
                    if not data:
                        sel.unregister(sys.stdin.buffer)
                    elif b"\x1d" in data:
                        return
                    else:
                        sock.sendall(data)
