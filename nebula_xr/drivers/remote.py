"""Running commands on the front-end and on hosts, without blocking the reactor.

Every command is a list of arguments, never a shell string: locally it is executed
directly, and for a host each argument is quoted with :func:`shlex.quote` before it is
joined into the one string ssh hands to the remote shell. Host names are checked so
that none can become an ssh option. A command gets a timeout after which it is killed,
and cancelling its Deferred kills it too. Concurrency is bounded per host and overall,
so a slow or dead host only delays its own commands.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, error, protocol
from twisted.python.failure import Failure

from nebula_xr.drivers.base import DriverError

#: Output kept per stream; a runaway command must not eat the daemon's memory.
OUTPUT_LIMIT = 1 << 20
#: Seconds between SIGTERM and SIGKILL for a command being stopped.
KILL_GRACE = 2.0

_HOST_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    exit_code: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def error_text(self, default: str = "") -> str:
        """The first ``Error: ...`` line of stderr (as 1.2 reported), else the last line."""
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        for line in lines:
            if line.lower().startswith("error:"):
                return line
        if lines:
            return lines[-1]
        return default or f"{self.argv[0]} exited with status {self.exit_code}"


class _Collector(protocol.ProcessProtocol):
    def __init__(self, argv: tuple[str, ...], stdin: bytes | None) -> None:
        self.argv = argv
        self.stdin = stdin
        self.out = bytearray()
        self.err = bytearray()
        self.finished: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        if self.stdin:
            self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        if len(self.out) < OUTPUT_LIMIT:
            self.out += data[: OUTPUT_LIMIT - len(self.out)]

    def errReceived(self, data: bytes) -> None:
        if len(self.err) < OUTPUT_LIMIT:
            self.err += data[: OUTPUT_LIMIT - len(self.err)]

    def processEnded(self, reason: Failure) -> None:
        value = reason.value
        if isinstance(value, error.ProcessTerminated) and value.exitCode is None:
            code = 128 + (value.signal or 0)
        else:
            code = getattr(value, "exitCode", 0) or 0
        result = CommandResult(
            self.argv,
            code,
            self.out.decode("utf-8", "replace"),
            self.err.decode("utf-8", "replace"),
        )
        if not self.finished.called:
            self.finished.callback(result)


def run_local(
    reactor: Any,
    argv: Sequence[str],
    *,
    stdin: bytes | None = None,
    timeout: float = 300.0,
    env: dict[str, str] | None = None,
) -> defer.Deferred:
    """Run ``argv`` on this machine; fire with a :class:`CommandResult` (any exit code).

    Fails with DriverError when the program does not exist or the timeout expires.
    """
    argv = tuple(argv)
    executable = shutil.which(argv[0]) if "/" not in argv[0] else argv[0]
    if executable is None:
        return defer.fail(DriverError(f"{argv[0]}: command not found"))
    collector = _Collector(argv, stdin)
    transport = reactor.spawnProcess(
        collector, executable, argv, env=dict(os.environ) if env is None else env
    )
    killer: list[Any] = []

    def stop() -> None:
        if collector.finished.called:
            return
        try:
            transport.signalProcess(signal.SIGTERM)
        except error.ProcessExitedAlready:
            return
        killer.append(reactor.callLater(KILL_GRACE, _kill, transport))

    def cancel(_: defer.Deferred) -> None:
        stop()

    result: defer.Deferred = defer.Deferred(cancel)

    def expired() -> None:
        stop()
        if not result.called:
            result.errback(DriverError(f"Timeout: {argv[0]} did not finish in {timeout:g} s"))

    timer = reactor.callLater(timeout, expired)

    def ended(outcome: CommandResult) -> None:
        for call in (timer, *killer):
            if call.active():
                call.cancel()
        if not result.called:
            result.callback(outcome)

    collector.finished.addCallback(ended)
    return result


def _kill(transport: Any) -> None:
    try:
        transport.signalProcess(signal.SIGKILL)
    except error.ProcessExitedAlready:
        pass


#: Private stand-ins made for control directories too long for a socket path.
_SHORT_DIRS: dict[str, str] = {}


def _short_dir(directory: str) -> str:
    """``directory``, or a short stand-in for it: ssh's socket paths (the directory, a
    40-character %C and a 17-character temporary suffix) must fit in 108 bytes. The
    stand-in is a fresh ``mkdtemp`` (unpredictable, 0700), one per directory and process."""
    if len(directory) <= 48:
        return directory
    if directory not in _SHORT_DIRS:
        _SHORT_DIRS[directory] = tempfile.mkdtemp(prefix="nebula-xr-ssh-")
    return _SHORT_DIRS[directory]


def private_directory(path: str) -> str:
    """Create ``path`` (mode 0700) or accept it only if it is a directory of ours that
    nobody else can enter: another user who made it first could take over the ssh
    connections whose sockets live there. DriverError otherwise."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as failure:
        raise DriverError(
            f"Can not create the ssh control directory {path}: {failure.strerror}"
        ) from failure
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o077:
        raise DriverError(
            f"The ssh control directory {path} is not private (owner uid {info.st_uid}, "
            f"mode {stat.S_IMODE(info.st_mode):04o}; it must be a directory of uid "
            f"{os.geteuid()} with mode 0700): refusing to use it"
        )
    return path


def check_host(host: str) -> str:
    """A host name safe to hand to ssh: no option-like or shell-special names."""
    if not _HOST_NAME.match(host):
        raise DriverError(f"Invalid host name {host!r}")
    return host


def remote_command(argv: Sequence[str]) -> str:
    """The single string ssh passes to the remote shell, every argument quoted."""
    return " ".join(shlex.quote(str(argument)) for argument in argv)


class RemoteRunner:
    """Runs commands on hosts over OpenSSH (multiplexed, batch mode, bounded)."""

    def __init__(
        self,
        reactor: Any,
        *,
        ssh: Sequence[str] = ("ssh",),
        control_dir: str | None = None,
        connect_timeout: int = 10,
        timeout: float = 120.0,
        per_host: int = 4,
        overall: int = 32,
    ) -> None:
        self.reactor = reactor
        self.timeout = timeout
        options = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout}"]
        if control_dir:
            control_dir = private_directory(_short_dir(control_dir))
            # %C hashes local host, remote host, port and user: short enough for a unix
            # socket path, and hosts sharing /tmp never reuse each other's masters.
            options += [
                "-o",
                "ControlMaster=auto",
                "-o",
                "ControlPersist=60",
                "-o",
                f"ControlPath={control_dir}/%C",
            ]
        self.ssh = [*ssh, *options]
        self.per_host = per_host
        self._hosts: dict[str, defer.DeferredSemaphore] = {}
        self._overall = defer.DeferredSemaphore(overall)

    def ssh_argv(self, host: str, argv: Sequence[str], *, tty: bool = False) -> list[str]:
        return [*self.ssh, "-t" if tty else "-T", "--", check_host(host), remote_command(argv)]

    def run(
        self,
        host: str,
        argv: Sequence[str],
        *,
        stdin: bytes | None = None,
        timeout: float | None = None,
    ) -> defer.Deferred:
        """Run ``argv`` on ``host``; fire with its CommandResult (ssh failures give 255)."""
        try:
            command = self.ssh_argv(host, argv)
        except DriverError:
            return defer.fail()
        return self._bounded(host, command, stdin, timeout or self.timeout)

    def run_script(
        self, host: str, script: str, args: Sequence[str] = (), *, timeout: float | None = None
    ) -> defer.Deferred:
        """Run a shell script (sent on stdin) on ``host`` in one round trip."""
        return self.run(host, ["sh", "-s", "--", *args], stdin=script.encode(), timeout=timeout)

    def _bounded(
        self, host: str, command: list[str], stdin: bytes | None, timeout: float
    ) -> defer.Deferred:
        semaphore = self._hosts.setdefault(host, defer.DeferredSemaphore(self.per_host))

        def overall() -> defer.Deferred:
            return self._overall.run(run_local, self.reactor, command, stdin=stdin, timeout=timeout)

        # Host first, then the overall limit: commands queued behind a slow host never
        # hold a token other hosts need.
        return semaphore.run(overall)


def require_ok(result: CommandResult, what: str) -> CommandResult:
    """Fail with the command's error text unless it succeeded."""
    if not result.ok:
        raise DriverError(f"{what}: {result.error_text()}")
    return result
