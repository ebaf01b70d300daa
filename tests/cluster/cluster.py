"""Fake cluster hosts for the tests: network namespaces on this machine, each with its own sshd.

Host ``nodeNN`` is a network + mount + UTS + PID namespace reached at 10.77.0.(10+N) through the
bridge ``onebr0`` (10.77.0.1/24) of the root namespace. Inside it, per-host bind mounts give it
its own /root (no pyenv .bashrc: ~130 ms less per ssh command), /run (sshd privsep dir and the
fake Xen toolstack's state), a private VM directory at :attr:`Cluster.vm_dir` (the same path on
every host, like OpenNebula's VM_DIR) and generated /etc/hosts and /etc/ssh/ssh_config, so that
``ssh node02`` works from node01. ``/usr/sbin`` is overlaid with the fake ``xm``/``xl``/``xentop``
of tests/fake/xen so that the stock driver paths (``sudo /usr/sbin/xm``) work; ``sudo`` is a
pass-through. :attr:`Cluster.shared_dir` is one directory seen identically everywhere (the NFS
stand-in: this kernel has no NFS).

Needs root; only one cluster can exist on a machine at a time (fixed names and addresses), which
a lock file enforces. Every run uses a new scratch directory; leftovers of a crashed run are
removed by the next :meth:`Cluster.up`.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
FAKE_XEN = REPO / "tests" / "fake" / "xen"
GUEST_BUILD = Path(__file__).resolve().parent / "build"

BRIDGE = "onebr0"
SUBNET = "10.77.0"
FRONTEND_ADDRESS = f"{SUBNET}.1"
SCRATCH_PREFIX = "nebula-xr-cluster-"
LOCK_FILE = "/run/lock/nebula-xr-cluster.lock"
HOST_RE = re.compile(r"^node\d\d$")
HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ClusterError(RuntimeError):
    """The cluster could not be brought up or a host command failed to run."""


def _run(argv: list[str], check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        raise ClusterError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def host_name(index: int) -> str:
    return f"node{index:02d}"


def host_address(name: str) -> str:
    """Address of host ``nodeNN`` on the bridge: 10.77.0.(10+N)."""
    return f"{SUBNET}.{10 + int(name[4:])}"


def netns_pids(name: str) -> list[int]:
    proc = _run(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in proc.stdout.split()]


def kill_netns(name: str) -> None:
    """SIGKILL every process of a network namespace, until none is left."""
    deadline = time.monotonic() + 5
    while pids := netns_pids(name):
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            raise ClusterError(f"processes of {name} survive SIGKILL: {pids}")
        time.sleep(0.02)


def _remove_stale_link(name: str, timeout: float = 5.0) -> None:
    """Delete a link left by an earlier cluster; the kernel frees a deleted namespace's
    veth pairs asynchronously, so a new one of the same name can find the old one there."""
    deadline = time.monotonic() + timeout
    while Path(f"/sys/class/net/{name}").exists():
        _run(["ip", "link", "del", name], check=False)
        if time.monotonic() > deadline:
            raise ClusterError(f"link {name} of an earlier cluster does not go away")
        time.sleep(0.05)


def remove_leftovers() -> None:
    """Remove the namespaces, bridge and scratch dirs of a cluster that was not torn down.

    Only call this while holding the cluster lock: then nothing of that kind is in use.
    """
    listing = _run(["ip", "netns", "list"], check=False).stdout
    for name in (line.split()[0] for line in listing.splitlines() if line.strip()):
        if HOST_RE.match(name):
            kill_netns(name)
            _run(["ip", "netns", "del", name], check=False)
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        _run(["ip", "link", "del", BRIDGE])
    for path in glob.glob(os.path.join(tempfile.gettempdir(), SCRATCH_PREFIX + "*")):
        shutil.rmtree(path, ignore_errors=True)


class Cluster:
    """N fake hosts; see the module docstring. Use :meth:`up` and :meth:`down`."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        self.scratch: Path | None = None
        self._lock_fd: int | None = None
        self._dead: set[str] = set()
        self._inits: dict[str, subprocess.Popen] = {}

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- paths ---------------------------------------------------------------------------------

    def _path(self, *parts: str) -> Path:
        if self.scratch is None:
            raise ClusterError("cluster is not up")
        return self.scratch.joinpath(*parts)

    @property
    def ssh_config(self) -> Path:
        """ssh client configuration for every host (also /etc/ssh/ssh_config inside hosts)."""
        return self._path("ssh_config")

    @property
    def hosts_file(self) -> Path:
        """The /etc/hosts of the fake hosts (names of all hosts and of the front-end)."""
        return self._path("hosts")

    @property
    def shared_dir(self) -> Path:
        """A directory at the same path, with the same content, on every host and here."""
        return self._path("shared")

    @property
    def vm_dir(self) -> Path:
        """Path, on every host, of that host's private VM directory (empty here)."""
        return self._path("vm")

    def host_dir(self, host: str) -> Path:
        """Root-namespace directory holding everything private to ``host``."""
        self._check_host(host)
        return self._path("nodes", host)

    def private_dir(self, host: str) -> Path:
        """Root-namespace path of the directory that ``host`` sees at :attr:`vm_dir`."""
        return self.host_dir(host) / "vm"

    def xen_dir(self, host: str) -> Path:
        """Root-namespace path of the fake Xen toolstack's state on ``host`` (its /run/fakexen)."""
        return self.host_dir(host) / "run" / "fakexen"

    def address(self, host: str) -> str:
        self._check_host(host)
        return host_address(host)

    def _check_host(self, host: str) -> None:
        if host not in self.hosts:
            raise ClusterError(f"no host {host!r} in this cluster ({', '.join(self.hosts)})")

    # -- life cycle ----------------------------------------------------------------------------

    def up(self, n: int = 3, lock_timeout: float = 600.0) -> Cluster:
        """Create hosts node01..nodeNN and wait until each sshd answers."""
        if self.hosts:
            raise ClusterError("cluster is already up")
        if not 1 <= n <= 99:
            raise ClusterError("between 1 and 99 hosts")
        self._lock(lock_timeout)
        try:
            remove_leftovers()
            self.scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
            self.scratch.chmod(0o755)
            self.hosts = [host_name(i) for i in range(1, n + 1)]
            self._write_common_files()
            _run(["ip", "link", "add", BRIDGE, "type", "bridge"])
            _run(["ip", "addr", "add", f"{FRONTEND_ADDRESS}/24", "dev", BRIDGE])
            _run(["ip", "link", "set", BRIDGE, "up"])
            for host in self.hosts:
                self._create_host(host)
            for host in self.hosts:
                self.start_host(host)
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Kill every process of every host and remove namespaces, bridge and scratch dir."""
        try:
            if self.scratch is not None:
                # The root namespace's control masters are not in any host: stop them first.
                for sock in self._path("cm").glob(f"{socket.gethostname()}-*"):
                    _run(
                        ["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "x"],
                        check=False,
                        timeout=5,
                    )
                for host in self.hosts:
                    self._kill(host)
                    _run(["ip", "netns", "del", host], check=False)
                if Path(f"/sys/class/net/{BRIDGE}").exists():
                    _run(["ip", "link", "del", BRIDGE], check=False)
                shutil.rmtree(self.scratch, ignore_errors=True)
        finally:
            self.hosts = []
            self.scratch = None
            self._dead.clear()
            self._unlock()

    def _lock(self, timeout: float) -> None:
        os.makedirs(os.path.dirname(LOCK_FILE), exist_ok=True)
        fd = os.open(LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise ClusterError(f"another test cluster holds {LOCK_FILE}") from None
                time.sleep(0.2)
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _write_common_files(self) -> None:
        for d in ("cm", "shared", "vm", "bin", "sbin", "nodes"):
            self._path(d).mkdir()
        self._path("shared").chmod(0o777)
        key = self._path("id_ed25519")
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "cluster", "-f", str(key)])
        for tool in ("xm", "xl", "xentop", "sudo"):
            self._path("bin", tool).symlink_to(FAKE_XEN / tool)
        for tool in ("xm", "xl", "xentop"):
            self._path("sbin", tool).symlink_to(FAKE_XEN / tool)
        lines = ["127.0.0.1\tlocalhost", f"{FRONTEND_ADDRESS}\tfrontend"]
        lines += [f"{host_address(h)}\t{h}" for h in self.hosts]
        self.hosts_file.write_text("\n".join(lines) + "\n")
        # curve25519: the default sntrup761 KEX doubles the cost of a new connection. %L in
        # ControlPath: /tmp is shared by all hosts, so without it node01's "ssh node03" would
        # reuse the root namespace's master and not go out of node01's namespace.
        config = [
            "Host node* frontend",
            "    User root",
            f"    IdentityFile {key}",
            "    IdentitiesOnly yes",
            f"    UserKnownHostsFile {self._path('known_hosts')}",
            "    StrictHostKeyChecking yes",
            "    BatchMode yes",
            "    KexAlgorithms curve25519-sha256",
            "    ConnectTimeout 5",
            "    ControlMaster auto",
            f"    ControlPath {self._path('cm')}/%L-%r@%h:%p",
            "    ControlPersist 60",
            "    LogLevel ERROR",
        ]
        for h in self.hosts:
            config += [f"Host {h}", f"    HostName {host_address(h)}"]
        self.ssh_config.write_text("\n".join(config) + "\n")

    def _create_host(self, host: str) -> None:
        hdir = self._path("nodes", host)
        for d in ("etc", "root", "run/sshd", "run/fakexen", "vm"):
            (hdir / d).mkdir(parents=True)
        (hdir / "run/sshd").chmod(0o755)
        (hdir / "vm").chmod(0o777)
        hostkey = hdir / "etc" / "ssh_host_ed25519_key"
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host, "-f", str(hostkey)])
        shutil.copy(self._path("id_ed25519.pub"), hdir / "etc" / "authorized_keys")
        pubkey = hostkey.with_suffix(".pub").read_text().split()
        with open(self._path("known_hosts"), "a") as known:
            known.write(f"{host},{host_address(host)} {pubkey[0]} {pubkey[1]}\n")
        (hdir / "etc" / "sshd_config").write_text(
            "\n".join(
                [
                    "Port 22",
                    f"ListenAddress {host_address(host)}",
                    f"HostKey {hostkey}",
                    f"AuthorizedKeysFile {hdir}/etc/authorized_keys",
                    "PidFile /run/sshd.pid",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "UseDNS no",
                    "MaxStartups 100:30:200",
                    "MaxSessions 100",
                    "LogLevel ERROR",
                    "Subsystem sftp internal-sftp",
                    f"SetEnv PATH={self._path('bin')}:{HOST_PATH}",
                ]
            )
            + "\n"
        )
        # The host's PID 1: mounts its view of the filesystem, runs sshd, and reaps the
        # daemonized QEMUs that get reparented to it.
        (hdir / "init.sh").write_text(
            "\n".join(
                [
                    "set -e",
                    f"echo {host} > /proc/sys/kernel/hostname",
                    f"mount --bind {hdir}/run /run",
                    f"mount --bind {hdir}/root /root",
                    f"mount --bind {hdir}/vm {self.vm_dir}",
                    f"mount --bind {self.hosts_file} /etc/hosts",
                    f"mount --bind {self.ssh_config} /etc/ssh/ssh_config",
                    f"mount -t overlay fakexen -o lowerdir={self._path('sbin')}:/usr/sbin /usr/sbin",
                    f"/usr/sbin/sshd -D -f {hdir}/etc/sshd_config -E {hdir}/sshd.log &",
                    "wait",
                ]
            )
            + "\n"
        )
        _run(["ip", "netns", "add", host])
        _remove_stale_link(f"veth-{host}")
        _run(
            [
                "ip",
                "link",
                "add",
                f"veth-{host}",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                host,
            ]
        )
        _run(["ip", "link", "set", f"veth-{host}", "master", BRIDGE, "up"])
        _run(["ip", "-n", host, "addr", "add", f"{host_address(host)}/24", "dev", "eth0"])
        _run(["ip", "-n", host, "link", "set", "eth0", "up"])
        _run(["ip", "-n", host, "link", "set", "lo", "up"])

    def start_host(self, host: str, timeout: float = 10.0) -> None:
        """(Re)start the processes of ``host`` (after :meth:`kill_host`), wait for its sshd.

        Like a reboot, this loses the domains the host ran (/run is a tmpfs on real hosts);
        the toolstack's config, command log and console logs stay.
        """
        self._check_host(host)
        if netns_pids(host):
            raise ClusterError(f"{host} is running")
        hdir = self.host_dir(host)
        shutil.rmtree(self.xen_dir(host) / "domains", ignore_errors=True)
        with open(hdir / "init.log", "ab") as log:
            self._inits[host] = subprocess.Popen(
                [
                    "ip",
                    "netns",
                    "exec",
                    host,
                    "unshare",
                    "--mount",
                    "--uts",
                    "--pid",
                    "--fork",
                    "--kill-child",
                    "--mount-proc",
                    "--propagation",
                    "private",
                    "--",
                    "/bin/bash",
                    str(hdir / "init.sh"),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection((host_address(host), 22), timeout=1) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                log = (hdir / "init.log").read_text(errors="replace")
                raise ClusterError(f"sshd of {host} did not start: {log}")
            time.sleep(0.02)
        self._dead.discard(host)

    def kill_host(self, host: str) -> None:
        """Kill every process of ``host`` (its VMs too), like a power failure.

        The host's address stays configured, so connections to it are refused at once.
        """
        self._check_host(host)
        # Drop this namespace's control master so that the next ssh does not try it first.
        _run([*self.ssh_command(host), "-O", "exit"], check=False, timeout=5)
        self._kill(host)
        self._dead.add(host)

    def _kill(self, host: str) -> None:
        kill_netns(host)
        init = self._inits.pop(host, None)
        if init is not None:
            init.wait()

    # -- commands ------------------------------------------------------------------------------

    def ssh_command(self, host: str) -> list[str]:
        """argv prefix that runs a command on ``host``: ``[*ssh_command(h), "xm", "list"]``."""
        self._check_host(host)
        return ["ssh", "-F", str(self.ssh_config), host]

    def run(
        self,
        host: str,
        command: str,
        check: bool = False,
        timeout: float | None = 60,
        input: str | None = None,
    ) -> subprocess.CompletedProcess:
        """Run a shell command on ``host`` over ssh; stdout and stderr are captured as text."""
        proc = subprocess.run(
            [*self.ssh_command(host), command],
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise ClusterError(
                f"{host}: {command!r} failed ({proc.returncode}): {proc.stderr.strip()}"
            )
        return proc

    # -- the fake Xen toolstack ----------------------------------------------------------------

    def configure_xen(self, host: str, **settings: Any) -> None:
        """Merge ``settings`` into the fake toolstack's config of ``host`` (see toolstack.py)."""
        path = self.xen_dir(host) / "config.json"
        config = json.loads(path.read_text()) if path.exists() else {}
        config.update(settings)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=1))
        tmp.rename(path)

    def inject_fault(
        self,
        host: str,
        command: str,
        action: str = "fail",
        message: str | None = None,
        times: int | None = None,
        seconds: float | None = None,
    ) -> None:
        """Make ``command`` (``create``, ``migrate``, ``xentop``...) fail, hang or be slow.

        ``action`` is ``fail`` (prints ``message`` or a default ``Error: ...``, exits 1),
        ``hang`` (never returns) or ``delay`` (sleeps ``seconds`` first); ``times`` limits
        how many invocations are affected. ``migrate-send`` acts inside ``migrate`` once
        the source shows the domain as ``migrating-<name>``, before anything is sent.
        """
        faults = self._xen_config(host).get("faults", {})
        faults[command] = {"action": action, "message": message, "times": times, "seconds": seconds}
        self.configure_xen(host, faults=faults)

    def clear_faults(self, host: str) -> None:
        self.configure_xen(host, faults={})

    def _xen_config(self, host: str) -> dict[str, Any]:
        path = self.xen_dir(host) / "config.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def xen_commands(self, host: str) -> list[dict[str, Any]]:
        """Every fake toolstack invocation on ``host`` so far: argv, exit code, duration..."""
        path = self.xen_dir(host) / "commands.log"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line]

    def console_log(self, host: str, domain: str) -> str:
        """What ``domain``'s serial console printed while on ``host`` (all its runs there)."""
        path = self.xen_dir(host) / "console" / f"{domain}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def reset_xen(self, mode: str = "fast") -> None:
        """Destroy every domain (killing its QEMU), reset config and logs and empty the VM
        directories on all hosts: a test starts on hosts no earlier test left files on."""
        qemu_build = {
            "kernel": str(GUEST_BUILD / "vmlinuz"),
            "initrd": str(GUEST_BUILD / "initrd.gz"),
        }
        for host in self.hosts:
            if host in self._dead:
                self.start_host(host)
            # Hung fake commands and QEMUs would otherwise survive into the next test.
            for pid in netns_pids(host):
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                    names = [os.path.basename(a) for a in argv[:3]]
                    if names[0].startswith(b"qemu-system") or {b"xm", b"xl", b"xentop"} & set(
                        names[1:]
                    ):
                        os.kill(pid, signal.SIGKILL)
                except (FileNotFoundError, ProcessLookupError):
                    pass
            shutil.rmtree(self.xen_dir(host), ignore_errors=True)
            self.xen_dir(host).mkdir()
            self.configure_xen(host, mode=mode, **qemu_build)
            _empty(self.private_dir(host))  # bind-mounted on the host: keep the directory


def _empty(directory: Path) -> None:
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def guest_built() -> bool:
    return (GUEST_BUILD / "vmlinuz").is_file() and (GUEST_BUILD / "initrd.gz").is_file()


def main(argv: list[str]) -> int:
    """``python3 -m tests.cluster.cluster cleanup``: remove a crashed run's leftovers."""
    if argv[1:] != ["cleanup"]:
        print("usage: python3 -m tests.cluster.cluster cleanup", file=sys.stderr)
        return 2
    cluster = Cluster()
    cluster._lock(timeout=0)
    try:
        remove_leftovers()
    finally:
        cluster._unlock()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
