"""oned.log and the per-VM logs, in 1.2's line format, through ``twisted.logger``.

``<ctime> [<module>][<E|W|I|D>]: <message>``; the daemon log is filtered by
DEBUG_LEVEL (0 ERROR, 1 WARNING, 2 INFO, 3 DEBUG), VM logs keep everything.

:class:`Log` is the facade the managers call (``log.info("VMM", ...)``,
``log.vm(vid, ...)``). Each call becomes one ``twisted.logger`` event on the Log's own
publisher; two observers turn events into lines: one appends to oned.log, the other to
``$VAR/<vid>/vm.log``. Twisted's own events (an unhandled error in a Deferred...) reach
oned.log too once :meth:`Log.observe_twisted` is called. Files stay open and buffered;
lines are written within FLUSH_DELAY (errors at once), VM logs on the daemon's file writer
thread (a placement opens a thousand of them), and ``SIGHUP`` reopens every file, so
logrotate can rename them away.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TextIO

from twisted.logger import (
    ILogObserver,
    LogEvent,
    Logger,
    LogLevel,
    LogPublisher,
    formatEvent,
    globalLogPublisher,
)
from zope.interface import implementer

ERROR, WARNING, INFO, DEBUG = 0, 1, 2, 3
_LETTERS = "EWID"
_TWISTED_LEVELS = {ERROR: LogLevel.error, WARNING: LogLevel.warn, INFO: LogLevel.info}
#: Per-VM log files kept open at once (least recently written closed first).
VM_LOGS_OPEN = 64
#: Seconds a line below ERROR may wait in the buffer. At DEBUG_LEVEL 3 every call writes
#: an access line: a flush per reactor turn was a write(2) per call.
FLUSH_DELAY = 0.2
_NAMESPACE = "nebula_xr"


@functools.lru_cache(maxsize=4)
def _ctime(second: int) -> str:
    return time.ctime(second)  # a line per call at DEBUG_LEVEL 3: once per second is enough


def _line(module: str, level: int, message: str, when: float | None = None) -> str:
    # One line per entry: a newline inside a message must not forge another entry.
    text = message.replace("\n", " ").replace("\r", " ")
    stamp = _ctime(int(when)) if when is not None else time.ctime()
    return f"{stamp} [{module}][{_LETTERS[level]}]: {text}\n"


def _event_line(event: LogEvent) -> str:
    return _line(event["one_module"], event["one_level"], event["one_message"], event["log_time"])


def _open(path: Path) -> TextIO:
    return path.open("a", encoding="utf-8", errors="replace")


@implementer(ILogObserver)
class _DaemonLogObserver:
    """oned.log (or stderr): every daemon event at or below DEBUG_LEVEL."""

    def __init__(self, path: Path | None, level: int) -> None:
        self.path = path
        self.level = level
        self.stream: TextIO = _open(path) if path else sys.stderr

    def __call__(self, event: LogEvent) -> None:
        if event.get("one_vid") is not None or event["one_level"] > self.level:
            return
        self.stream.write(_event_line(event))

    def flush(self) -> None:
        self.stream.flush()

    def reopen(self) -> None:
        if self.path is not None:
            self.stream.close()
            self.stream = _open(self.path)

    def close(self) -> None:
        if self.path is not None:
            self.stream.close()


@implementer(ILogObserver)
class _VMLogObserver:
    """``$VAR/<vid>/vm.log``: every event of a VM. Lines wait in memory until a flush
    appends them, on the file writer's thread (``background``) or, for ERROR lines and
    explicit flushes, on the caller's: the files (a bounded number kept open) are written
    under a lock, and each flush takes every line waiting, so lines stay in order."""

    def __init__(
        self,
        vm_log_path: Callable[[int], Path],
        report: Callable[[str], None],
        background: BackgroundIO | None,
        reactor: Any,
    ) -> None:
        self.vm_log_path = vm_log_path
        self.report = report
        self.background = background
        self.reactor = reactor
        self.streams: OrderedDict[int, TextIO] = OrderedDict()
        self._lines: dict[int, list[str]] = {}
        self._lines_lock = threading.Lock()  # held for a line or a swap only
        self._files_lock = threading.Lock()  # held while writing

    def __call__(self, event: LogEvent) -> None:
        vid = event.get("one_vid")
        if vid is not None:
            line = _event_line(event)
            with self._lines_lock:
                self._lines.setdefault(vid, []).append(line)

    def flush(self) -> None:
        """Append every waiting line now, on this thread."""
        self._append(self.report)

    def flush_soon(self) -> None:
        """Append every waiting line on the background thread (now without one)."""
        if not self._lines:
            return
        if self.background is None:
            self.flush()
        else:
            report = functools.partial(self.reactor.callFromThread, self.report)
            self.background.call(functools.partial(self._append, report))

    def close(self) -> None:
        """Append what waits and close the files (reopened on their next line)."""
        with self._files_lock:
            self._append_locked(self.report)
            for stream in self.streams.values():
                _close_quietly(stream)
            self.streams.clear()

    def _append(self, report: Callable[[str], None]) -> None:
        with self._files_lock:
            self._append_locked(report)

    def _append_locked(self, report: Callable[[str], None]) -> None:
        with self._lines_lock:
            lines, self._lines = self._lines, {}
        for vid, text in lines.items():
            try:
                stream = self._stream(vid)
                stream.write("".join(text))
                stream.flush()
            except OSError as error:  # no directory (VM deleted), disk full...
                _close_quietly(self.streams.pop(vid, None))
                report(f"Can not write {self.vm_log_path(vid)}: {error.strerror}")

    def _stream(self, vid: int) -> TextIO:
        stream = self.streams.get(vid)
        if stream is not None:
            self.streams.move_to_end(vid)
            return stream
        stream = _open(self.vm_log_path(vid))
        self.streams[vid] = stream
        while len(self.streams) > VM_LOGS_OPEN:
            _, oldest = self.streams.popitem(last=False)
            _close_quietly(oldest)
        return stream


def _close_quietly(stream: TextIO | None) -> None:
    try:
        if stream is not None:
            stream.close()
    except OSError:
        pass


class BackgroundIO(Protocol):
    """Runs file work on another thread, in the order given
    (:class:`~nebula_xr.file_writer.FileWriter`)."""

    def call(self, work: Callable[[], None]) -> None: ...


class Log:
    """The daemon log plus the per-VM logs under ``$VAR/<vid>/vm.log``."""

    def __init__(
        self,
        path: Path | None,
        level: int,
        vm_log_path: Callable[[int], Path] | None = None,
        *,
        reactor: Any = None,
        background: BackgroundIO | None = None,
    ) -> None:
        """``background``: where the vm.log files are written (the daemon's file writer
        thread); without it, on the calling thread at each flush."""
        self.level = level
        self._reactor = reactor
        self._daemon = _DaemonLogObserver(path, level)
        self._vms = (
            _VMLogObserver(
                vm_log_path,
                functools.partial(self.error, "VMM"),
                background,
                self._reactor_or_global() if background is not None else None,
            )
            if vm_log_path is not None
            else None
        )
        self.publisher = LogPublisher(self._daemon, *([self._vms] if self._vms else []))
        self._logger = Logger(namespace=_NAMESPACE, observer=self.publisher)
        self._flush_scheduled = False

    # -- the facade ---------------------------------------------------------------------

    def write(self, module: str, level: int, message: str) -> None:
        if level <= self.level:
            self._emit(module, level, message, None)

    def error(self, module: str, message: str) -> None:
        self.write(module, ERROR, message)

    def warning(self, module: str, message: str) -> None:
        self.write(module, WARNING, message)

    def info(self, module: str, message: str) -> None:
        self.write(module, INFO, message)

    def debug(self, module: str, message: str) -> None:
        self.write(module, DEBUG, message)

    def vm(self, vid: int, module: str, level: int, message: str) -> None:
        """Append to the VM's own log (created with its directory at allocation)."""
        if self._vms is not None:
            self._emit(module, level, message, vid)

    # -- files --------------------------------------------------------------------------

    def flush(self) -> None:
        """Write every waiting line now (errors; a reader about to read a log)."""
        self._daemon.flush()
        if self._vms is not None:
            self._vms.flush()

    def _flush_in_background(self) -> None:
        self._flush_scheduled = False
        self._daemon.flush()
        if self._vms is not None:
            self._vms.flush_soon()

    def reopen(self) -> None:
        """Close and reopen every file (after logrotate renamed them)."""
        self.flush()
        self._daemon.reopen()
        if self._vms is not None:
            self._vms.close()  # reopened on their next line

    def close(self) -> None:
        self.flush()
        self._daemon.close()
        if self._vms is not None:
            self._vms.close()

    def reopen_on_sighup(self, reactor: Any) -> None:
        """Reopen the files on SIGHUP (the handler only hands the work to the reactor)."""
        signal.signal(signal.SIGHUP, lambda _number, _frame: reactor.callFromThread(self.reopen))

    def observe_twisted(self) -> None:
        """Send Twisted's own warnings and errors (unhandled failures...) to oned.log."""
        globalLogPublisher.addObserver(self._from_twisted)

    # -- internals ----------------------------------------------------------------------

    def _emit(self, module: str, level: int, message: str, vid: int | None) -> None:
        # The event Logger.emit would make, without its per-call check of the level.
        self.publisher(
            {
                "log_logger": self._logger,
                "log_level": _TWISTED_LEVELS.get(level, LogLevel.debug),
                "log_namespace": _NAMESPACE,
                "log_source": None,
                "log_format": "{one_message}",
                "log_time": time.time(),
                "one_module": module,
                "one_level": level,
                "one_message": message,
                "one_vid": vid,
            }
        )
        if level == ERROR:
            self.flush()
        else:
            self._flush_soon()

    def _flush_soon(self) -> None:
        if self._flush_scheduled:
            return
        self._flush_scheduled = True
        self._reactor_or_global().callLater(FLUSH_DELAY, self._flush_in_background)

    def _reactor_or_global(self) -> Any:
        if self._reactor is not None:
            return self._reactor
        from twisted.internet import reactor

        return reactor

    def _from_twisted(self, event: LogEvent) -> None:
        if event.get("log_namespace") == _NAMESPACE:
            return
        level = event.get("log_level")
        if level not in (LogLevel.warn, LogLevel.error, LogLevel.critical):
            return
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text = f"{text}: {failure.getErrorMessage()} ({failure.type.__name__})"
        self.write("ONE", WARNING if level is LogLevel.warn else ERROR, text)
