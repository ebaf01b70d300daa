"""oned.log and the per-VM logs, in 1.2's line format, through ``twisted.logger``.

``<ctime> [<module>][<E|W|I|D>]: <message>``; the daemon log is filtered by
DEBUG_LEVEL (0 ERROR, 1 WARNING, 2 INFO, 3 DEBUG), VM logs keep everything.

:class:`Log` is the facade the managers call (``log.info("VMM", ...)``,
``log.vm(vid, ...)``). Each call becomes one ``twisted.logger`` event, handed to one of
two observers that turn events into lines: one appends to oned.log, the other to
``$VAR/<vid>/vm.log``. Twisted's own events (an unhandled error in a Deferred...) reach
oned.log too once :meth:`Log.observe_twisted` is called. Files stay open and buffered;
oned.log is flushed within :data:`FLUSH_DELAY` of a write, VM logs at the end of the
reactor turn that wrote them, both at once on an error; and
``SIGHUP`` reopens every file, so logrotate can rename them away.
"""

from __future__ import annotations

import functools
import signal
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from twisted.logger import (
    ILogObserver,
    LogEvent,
    LogLevel,
    formatEvent,
    globalLogPublisher,
)
from zope.interface import implementer

ERROR, WARNING, INFO, DEBUG = 0, 1, 2, 3
_LETTERS = "EWID"
_TWISTED_LEVELS = {ERROR: LogLevel.error, WARNING: LogLevel.warn, INFO: LogLevel.info}
#: Per-VM log files kept open at once (least recently written closed first): a placement
#: of a thousand VMs writes to each several times, and reopening them was a quarter of the
#: reactor's time.
VM_LOGS_OPEN = 1024
#: Seconds a line of oned.log below ERROR may wait in the buffer. At DEBUG_LEVEL 3 every
#: call writes an access line: a flush per reactor turn was a write(2) per call.
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
    """``$VAR/<vid>/vm.log``: every event of a VM, files kept open (a bounded number)."""

    def __init__(self, vm_log_path: Callable[[int], Path], report: Callable[[str], None]):
        self.vm_log_path = vm_log_path
        self.report = report
        self.streams: OrderedDict[int, TextIO] = OrderedDict()
        self.written: set[int] = set()  # streams with lines not flushed yet

    def __call__(self, event: LogEvent) -> None:
        vid = event.get("one_vid")
        if vid is None:
            return
        try:
            self._stream(vid).write(_event_line(event))
            self.written.add(vid)
        except OSError as error:
            self.report(f"Can not write {self.vm_log_path(vid)}: {error.strerror}")

    def _stream(self, vid: int) -> TextIO:
        stream = self.streams.get(vid)
        if stream is not None and not stream.closed:
            self.streams.move_to_end(vid)
            return stream
        stream = _open(self.vm_log_path(vid))
        self.streams[vid] = stream
        while len(self.streams) > VM_LOGS_OPEN:
            _, oldest = self.streams.popitem(last=False)
            _close_quietly(oldest)
        return stream

    def flush(self) -> None:
        written, self.written = self.written, set()
        for vid in written:
            stream = self.streams.get(vid)
            if stream is None:
                continue  # closed (and so flushed) to make room
            try:
                stream.flush()
            except OSError as error:  # its directory was removed (VM deleted)
                del self.streams[vid]
                _close_quietly(stream)
                self.report(f"Can not write {self.vm_log_path(vid)}: {error.strerror}")

    def close(self) -> None:
        self.flush()
        for stream in self.streams.values():
            _close_quietly(stream)
        self.streams.clear()


def _close_quietly(stream: TextIO) -> None:
    try:
        stream.close()
    except OSError:
        pass


class Log:
    """The daemon log plus the per-VM logs under ``$VAR/<vid>/vm.log``."""

    def __init__(
        self,
        path: Path | None,
        level: int,
        vm_log_path: Callable[[int], Path] | None = None,
        *,
        reactor: Any = None,
    ) -> None:
        self.level = level
        self._reactor = reactor
        self._daemon = _DaemonLogObserver(path, level)
        self._vms = (
            _VMLogObserver(vm_log_path, lambda message: self.error("VMM", message))
            if vm_log_path is not None
            else None
        )
        # Pending flushes: oned.log's waits FLUSH_DELAY, as at DEBUG_LEVEL 3 every call
        # writes a line there; a VM's lines (a few per state change) go at the turn's end.
        self._daemon_flush: Any = None
        self._vms_flush: Any = None

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
        self._daemon.flush()
        self._flush_vms()

    def _flush_daemon(self) -> None:
        self._daemon_flush = None
        self._daemon.flush()

    def _flush_vms(self) -> None:
        self._vms_flush = None
        if self._vms is not None:
            self._vms.flush()

    def reopen(self) -> None:
        """Close and reopen every file (after logrotate renamed them)."""
        self.flush()
        self._daemon.reopen()
        if self._vms is not None:
            self._vms.close()  # reopened on their next line

    def close(self) -> None:
        for pending in (self._daemon_flush, self._vms_flush):
            if pending is not None and pending.active():
                pending.cancel()
        self._daemon_flush = self._vms_flush = None
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
        # The event Logger.emit would make, without its per-call check of the level,
        # handed straight to the one observer that takes it (a line per call at DEBUG).
        observer = self._daemon if vid is None else self._vms
        observer(  # type: ignore[misc]
            {
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
        elif vid is None:
            if self._daemon_flush is None:
                self._daemon_flush = self._call_later(FLUSH_DELAY, self._flush_daemon)
        elif self._vms_flush is None:
            self._vms_flush = self._call_later(0, self._flush_vms)

    def _call_later(self, delay: float, function: Callable[[], None]) -> Any:
        reactor = self._reactor
        if reactor is None:
            from twisted.internet import reactor
        return reactor.callLater(delay, function)

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
