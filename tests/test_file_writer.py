"""The deploy path's file I/O stays off the reactor (issue #10), keeping its order.

A named pipe stands where the daemon writes a deployment file: opening it for writing
blocks until someone reads it, as a slow disk would, for as long as the test likes.
"""

from __future__ import annotations

import http.client
import os
import threading
import urllib.parse
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from nebula_xr.file_writer import REPORTS_PER_TURN, FileWriter
from tests.fake.lifecycle import ThreadedClock
from tests.oned import OneDaemon, wait_for, write_conf
from tests.test_tutorial import TUTORIAL, add_hosts

ACTIVE, DONE, FAILED = 3, 6, 7
PROLOG, BOOT, RUNNING = 1, 2, 3


class PipeReader(threading.Thread):
    """Reads a named pipe to its end once a writer opens it (which unblocks the writer)."""

    def __init__(self, pipe: Path) -> None:
        super().__init__(daemon=True)
        self.pipe = pipe
        self.text: str | None = None

    def run(self) -> None:
        with self.pipe.open(encoding="utf-8") as stream:
            self.text = stream.read()

    def text_read(self) -> str:
        self.join(10)
        assert self.text is not None, "nobody wrote the pipe"
        return self.text


def _release(pipe: Path) -> None:
    """Unblock whoever waits on ``pipe`` (the daemon, or a reader), after a failure."""
    for flags in (os.O_RDONLY | os.O_NONBLOCK, os.O_WRONLY | os.O_NONBLOCK):
        try:
            os.close(os.open(pipe, flags))
        except OSError:
            pass


def call_within(one: OneDaemon, method: str, *args: object, seconds: float = 5.0) -> list:
    """A 1.2 call that must be answered within ``seconds`` (a stalled reactor fails it)."""
    parts = urllib.parse.urlsplit(one.url)
    body = xmlrpc.client.dumps(("sessionID", *args), method).encode()
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=seconds)
    try:
        connection.request("POST", parts.path, body, {"Content-Type": "text/xml"})
        return xmlrpc.client.loads(connection.getresponse().read())[0][0]
    finally:
        connection.close()


def state_within(one: OneDaemon, vid: int) -> tuple[int, int]:
    """(state, lcm_state) by one.vmget_info, answered within 5 s."""
    ok, text = call_within(one, "one.vmget_info", vid)[:2]
    assert ok, text
    fields = dict(line.split(":", 1) for line in text.splitlines()[:12] if ":" in line)
    return int(fields["STATE             "]), int(fields["LCM STATE         "])


@pytest.fixture
def one(tmp_path: Path) -> Iterator[OneDaemon]:
    write_conf(tmp_path)
    daemon = OneDaemon(tmp_path).start()
    yield daemon
    daemon.stop()


def _deploy_on_a_pipe(one: OneDaemon) -> Path:
    """VM 0, to be deployed on node01 with its deployment file a pipe nobody reads yet."""
    add_hosts(one, "node01")
    assert one.call("one.vmallocate", TUTORIAL) == [True, 0]
    pipe = one.location / "var" / "0" / "deployment.0"
    os.mkfifo(pipe)
    return pipe


def _booting(one: OneDaemon) -> None:
    """Deploy VM 0: it reaches BOOT, its deployment file being written."""
    assert call_within(one, "one.vmdeploy", 0, 0) == [True]
    wait_for(lambda: state_within(one, 0) == (ACTIVE, BOOT), what="BOOT")


def test_a_slow_deployment_file_stalls_no_call_and_deploy_waits_for_it(one: OneDaemon) -> None:
    pipe = _deploy_on_a_pipe(one)
    try:
        _booting(one)
        # Written on the reactor, the file would have stopped every answer at BOOT. The
        # dummy VMM answers DEPLOY at once: staying in BOOT means it was not sent.
        for _ in range(20):
            assert state_within(one, 0) == (ACTIVE, BOOT)
        reader = PipeReader(pipe)
        reader.start()
        text = reader.text_read()
    finally:
        _release(pipe)
    assert text.startswith("name = 'one-0'\n")
    assert "kernel = '/boot/vmlinuz-2.6.22.9-rock'\n" in text
    assert text.endswith("\n")
    wait_for(lambda: state_within(one, 0) == (ACTIVE, RUNNING), what="RUNNING")


def test_a_command_asked_while_a_file_is_written_is_sent_after_the_one_reading_it(
    one: OneDaemon,
) -> None:
    pipe = _deploy_on_a_pipe(one)
    try:
        _booting(one)
        # 1.4 finalize of a booting VM cancels its domain: after DEPLOY, never before.
        assert one.call14("one.vm.action", "finalize", 0) == [True]
        reader = PipeReader(pipe)
        reader.start()
        reader.text_read()
    finally:
        _release(pipe)
    log = one.location / "var" / "0" / "vm.log"
    sent = ("Sending DEPLOY to node01", "Sending CANCEL to node01")
    wait_for(lambda: all(line in log.read_text() for line in sent), what="DEPLOY and CANCEL")
    text = log.read_text()
    assert text.index("Sending DEPLOY to node01") < text.index("Sending CANCEL to node01")
    assert state_within(one, 0)[0] == DONE


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("deployment.0", "[VMM][E]: Error executing DEPLOY: Can not create deployment file"),
        ("transfer.0", "[TM][E]: Error preparing transfer"),
    ],
)
def test_a_file_that_can_not_be_written_fails_the_vm(
    one: OneDaemon, name: str, message: str
) -> None:
    add_hosts(one, "node01")
    assert one.call("one.vmallocate", TUTORIAL) == [True, 0]
    path = one.location / "var" / "0" / name
    path.mkdir()  # where the file should go
    assert one.call("one.vmdeploy", 0, 0) == [True]
    wait_for(lambda: state_within(one, 0) == (FAILED, 0), what="FAILED")
    log = one.location / "var" / "0" / "vm.log"
    expected = f"{message}: [Errno 21] Is a directory: '{path}'\n"
    wait_for(lambda: expected in log.read_text(), what=expected)
    assert "Sending DEPLOY" not in log.read_text()


# -- the writer itself, on the real reactor --------------------------------------------


@pytest_twisted.ensureDeferred
async def test_files_are_written_on_another_thread_and_reported_in_order(tmp_path: Path) -> None:
    writing: list[int] = []
    writer = FileWriter(reactor, on_write=lambda path: writing.append(threading.get_ident()))
    reported: list[tuple[int, int]] = []
    try:
        asked = [
            writer.write(n % 3, tmp_path / f"file{n}", f"{n} é\n").addCallback(
                lambda _, n=n: reported.append((n, threading.get_ident()))
            )
            for n in range(30)
        ]
        for done in asked:
            await done
    finally:
        writer.close()
    here = threading.get_ident()
    assert len(writing) == 30 and here not in writing
    assert reported == [(n, here) for n in range(30)]
    assert [(tmp_path / f"file{n}").read_bytes() for n in range(30)] == [
        f"{n} é\n".encode() for n in range(30)
    ]


@pytest_twisted.ensureDeferred
async def test_after_writes_waits_for_the_files_of_that_vm_only(tmp_path: Path) -> None:
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    writer = FileWriter(reactor)
    order: list[str] = []
    try:
        written = writer.write(1, pipe, "deploy me\n").addCallback(lambda _: order.append("file"))
        after = writer.after_writes(1).addCallback(lambda _: order.append("after"))
        other = writer.after_writes(2)
        assert other.called  # nothing asked for VM 2: no wait at all
        assert not after.called and order == []
        reader = PipeReader(pipe)
        reader.start()
        await written
        await after
        assert reader.text_read() == "deploy me\n"
    finally:
        _release(pipe)
        writer.close()
    assert order == ["file", "after"]
    assert writer.after_writes(1).called  # all reported: no wait any more


@pytest_twisted.ensureDeferred
async def test_a_failed_write_fails_with_its_error_and_the_writer_goes_on(
    tmp_path: Path,
) -> None:
    writer = FileWriter(reactor)
    try:
        with pytest.raises(FileNotFoundError):
            await writer.write(1, tmp_path / "missing" / "deployment.0", "x")
        await writer.write(1, tmp_path / "deployment.0", "y")
    finally:
        writer.close()
    assert (tmp_path / "deployment.0").read_text() == "y"


def test_close_writes_what_is_queued(tmp_path: Path) -> None:
    writer = FileWriter(ThreadedClock())
    for n in range(20):
        writer.write(n, tmp_path / f"file{n}", str(n))
    writer.close()
    assert [(tmp_path / f"file{n}").read_text() for n in range(20)] == [str(n) for n in range(20)]


class HeldClock(ThreadedClock):
    """Turns as the reactor's: the calls from threads, then the calls due when it began
    (calls made meanwhile wait for the next turn)."""

    def one_turn(self) -> None:
        while not self.from_threads.empty():
            function, args = self.from_threads.get()
            function(*args)
        for call in [call for call in self.calls if call.getTime() <= self.seconds()]:
            self.calls.remove(call)
            call.called = 1
            call.func(*call.args, **call.kw)


def test_a_burst_of_written_files_is_reported_a_few_per_turn(tmp_path: Path) -> None:
    clock = HeldClock()
    writer = FileWriter(clock)
    reported: list[int] = []
    for n in range(REPORTS_PER_TURN * 3):
        writer.write(n, tmp_path / f"file{n}", "x").addCallback(lambda _, n=n: reported.append(n))
    writer.close()  # everything written, its outcomes waiting for the reactor
    for turn in range(1, 4):
        clock.one_turn()
        assert reported == list(range(REPORTS_PER_TURN * turn))
