"""The daemon's file I/O off the reactor: the files drivers read.

Creating a file costs a millisecond or more on a busy disk, and a placement of 1,000 VMs
creates 2,000 of them (deployment files, transfer scripts) in bursts: done on the reactor
thread, that stalled every concurrent request (issue #10). :class:`FileWriter` does it
on one thread of its own, in the order asked, and reports each outcome to the reactor in
that order: REPORTS_PER_TURN at most in a reactor turn, since each sets a VM's next step
going (a burst of a thousand written files must not come back as one long turn).

The managers send a driver command only once the file it reads is written, and, through
:meth:`FileWriter.after_writes`, any other command for the same VM only after the files
asked for before it: a VM's commands reach the drivers in the order the managers asked,
as when the files were written at once.

:class:`SynchronousFileWriter` writes at once on the calling thread, for tests on a
``task.Clock``; the daemon uses :class:`FileWriter`.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed

#: Outcomes handed to their Deferreds in one reactor turn; the others wait for the next.
REPORTS_PER_TURN = 16


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


@dataclass
class _Job:
    vid: int
    work: Callable[[], None] | None  # None: only waits for the jobs queued before it
    done: Deferred[None]


class FileWriter:
    """Writes VM files on its own thread; each Deferred fires on the reactor thread, in
    the order the writes were asked, or fails with the write's error (an OSError)."""

    def __init__(self, reactor: Any, *, on_write: Callable[[Path], None] | None = None) -> None:
        self.reactor = reactor
        #: Called on the writer thread before each write (tests observe the thread).
        self.on_write = on_write
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._pending: dict[int, int] = {}  # vid -> jobs queued and not yet reported
        self._outcomes: deque[tuple[_Job, Exception | None]] = deque()  # back, not reported
        self._thread = threading.Thread(target=self._loop, name="VM file writer", daemon=True)
        self._thread.start()

    def write(self, vid: int, path: Path, text: str) -> Deferred[None]:
        """Write ``text`` (UTF-8) to ``path`` for VM ``vid``, after its earlier files."""

        def work() -> None:
            if self.on_write is not None:
                self.on_write(path)
            _write(path, text)

        return self._queue(vid, work)

    def after_writes(self, vid: int) -> Deferred[None]:
        """Fires once every file asked for ``vid`` so far is written (at once if none)."""
        if not self._pending.get(vid):
            return succeed(None)
        return self._queue(vid, None)

    def close(self) -> None:
        """Write what is queued and stop the thread (blocking: at exit)."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    def _queue(self, vid: int, work: Callable[[], None] | None) -> Deferred[None]:
        done: Deferred[None] = Deferred()
        self._pending[vid] = self._pending.get(vid, 0) + 1
        self._jobs.put(_Job(vid, work, done))
        return done

    def _loop(self) -> None:
        stopping = False
        while not stopping:
            job = self._jobs.get()
            if job is None:
                return
            batch = [job]
            while len(batch) < REPORTS_PER_TURN:  # what was queued meanwhile: one call back
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
            outcomes: list[tuple[_Job, Exception | None]] = []
            for job in batch:
                error = None
                try:
                    if job.work is not None:
                        job.work()
                except Exception as exception:  # reported on the reactor; the thread goes on
                    error = exception
                outcomes.append((job, error))
            self.reactor.callFromThread(self._outcomes_back, outcomes)

    def _outcomes_back(self, outcomes: list[tuple[_Job, Exception | None]]) -> None:
        if not self._outcomes:  # else a report is already on its way
            self.reactor.callLater(0, self._report)
        self._outcomes.extend(outcomes)

    def _report(self) -> None:
        for _ in range(min(REPORTS_PER_TURN, len(self._outcomes))):
            job, error = self._outcomes.popleft()
            left = self._pending[job.vid] - 1
            if left:
                self._pending[job.vid] = left
            else:
                del self._pending[job.vid]
            if error is None:
                job.done.callback(None)
            else:
                job.done.errback(error)
        if self._outcomes:
            self.reactor.callLater(0, self._report)


class SynchronousFileWriter:
    """Writes at once on the calling thread (tests on a ``task.Clock``; never the daemon,
    whose reactor it would stall)."""

    def write(self, vid: int, path: Path, text: str) -> Deferred[None]:
        try:
            _write(path, text)
        except OSError as error:
            return fail(error)
        return succeed(None)

    def after_writes(self, vid: int) -> Deferred[None]:
        return succeed(None)
