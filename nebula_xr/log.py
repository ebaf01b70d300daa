"""oned.log and the per-VM logs, in 1.2's line format.

``<ctime> [<module>][<E|W|I|D>]: <message>``; the daemon log is filtered by
DEBUG_LEVEL (0 ERROR, 1 WARNING, 2 INFO, 3 DEBUG), VM logs keep everything.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

ERROR, WARNING, INFO, DEBUG = 0, 1, 2, 3
_LETTERS = "EWID"


def _line(module: str, level: int, message: str) -> str:
    # One line per entry: a newline inside a message must not forge another entry.
    text = message.replace("\n", " ").replace("\r", " ")
    return f"{time.ctime()} [{module}][{_LETTERS[level]}]: {text}\n"


class Log:
    """The daemon log plus the per-VM logs under ``$VAR/<vid>/vm.log``."""

    def __init__(
        self, path: Path | None, level: int, vm_log_path: Callable[[int], Path] | None = None
    ) -> None:
        self.level = level
        self._vm_log_path = vm_log_path
        self._stream: TextIO = (
            path.open("a", encoding="utf-8", errors="replace") if path else sys.stderr
        )

    def write(self, module: str, level: int, message: str) -> None:
        if level <= self.level:
            self._stream.write(_line(module, level, message))
            self._stream.flush()

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
        if self._vm_log_path is None:
            return
        path = self._vm_log_path(vid)
        try:
            with path.open("a", encoding="utf-8", errors="replace") as stream:
                stream.write(_line(module, level, message))
        except OSError as error:
            self.error("VMM", f"Can not write {path}: {error.strerror}")

    def close(self) -> None:
        if self._stream is not sys.stderr:
            self._stream.close()
