"""Remote execution: real processes, timeouts, cancellation, quoting, bounded hosts."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from nebula_xr.drivers.base import DriverError
from nebula_xr.drivers.remote import RemoteRunner, check_host, run_local

HOSTILE = [
    "; touch CANARY",
    "$(touch CANARY)",
    "`touch CANARY`",
    "a'b\"c",
    "two\nlines",
    "-rf",
    "é 漢",
    "*",
]


@pytest.fixture
def fake_ssh(tmp_path: Path) -> Path:
    """An 'ssh' that behaves like sshd: it hands the command string to a shell."""
    script = tmp_path / "ssh"
    script.write_text(
        "#!/bin/sh\n"
        'while [ "$1" != "--" ]; do shift; done\n'
        "shift; host=$1; shift\n"
        f'cd {tmp_path} && exec sh -c "$1"\n'
    )
    script.chmod(0o755)
    return script


@pytest_twisted.inlineCallbacks
def test_run_local_reports_exit_code_and_output() -> None:
    result = yield run_local(reactor, ["sh", "-c", "echo out; echo Error: bad >&2; exit 3"])
    assert (result.exit_code, result.stdout, result.error_text()) == (3, "out\n", "Error: bad")
    with pytest.raises(DriverError, match="command not found"):
        yield run_local(reactor, ["no-such-program-here"])


@pytest_twisted.inlineCallbacks
def test_timeout_and_cancel_kill_the_process(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    begun = time.monotonic()
    with pytest.raises(DriverError, match="Timeout"):
        yield run_local(reactor, ["sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"], timeout=0.5)
    assert time.monotonic() - begun < 3
    yield _gone(int(pidfile.read_text()))

    pidfile.unlink()
    running = run_local(reactor, ["sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"])
    yield _until(lambda: pidfile.exists() and pidfile.read_text().endswith("\n"))
    running.cancel()
    with pytest.raises(defer.CancelledError):
        yield running
    yield _gone(int(pidfile.read_text()))


@pytest_twisted.inlineCallbacks
def test_arguments_reach_the_remote_command_unchanged(fake_ssh: Path, tmp_path: Path) -> None:
    runner = RemoteRunner(reactor, ssh=[str(fake_ssh)])
    script = 'for a in "$@"; do printf "%s\\0" "$a"; done'
    result = yield runner.run("node01", ["sh", "-c", script, "sh", *HOSTILE])
    assert result.ok, result
    assert result.stdout.split("\0")[:-1] == HOSTILE
    assert not (tmp_path / "CANARY").exists()


def test_host_names_that_could_become_options_are_refused() -> None:
    for bad in ["-oProxyCommand=touch x", "a b", "a;b", "", "$(x)", "a/b"]:
        with pytest.raises(DriverError):
            check_host(bad)
    assert check_host("node01.example.org") == "node01.example.org"


@pytest_twisted.inlineCallbacks
def test_a_slow_host_does_not_delay_another(fake_ssh: Path) -> None:
    runner = RemoteRunner(reactor, ssh=[str(fake_ssh)], per_host=1, overall=8)
    begun = time.monotonic()
    slow = [runner.run("slow", ["sleep", "1"]) for _ in range(2)]
    fast = yield runner.run("fast", ["true"])
    assert fast.ok and time.monotonic() - begun < 0.8
    yield defer.gatherResults(slow)
    assert time.monotonic() - begun >= 2  # one at a time on the slow host


def _sleep(seconds: float) -> defer.Deferred:
    from twisted.internet import task

    return task.deferLater(reactor, seconds, lambda: None)


@defer.inlineCallbacks
def _until(condition, timeout: float = 10.0):
    """Wait (without blocking the reactor) until ``condition()`` holds; fail after timeout."""
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        yield _sleep(0.05)
    raise AssertionError(f"{condition} not met in {timeout}s")


@defer.inlineCallbacks
def _gone(pid: int):
    for _ in range(60):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        yield _sleep(0.1)
    raise AssertionError(f"process {pid} still runs")
