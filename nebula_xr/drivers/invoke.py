"""Calling a driver the way the managers need it: later, bounded in time, never raising.

Driver work starts on the next reactor turn (like a request line written to a 1.2
driver pipe), so the request that caused it is answered first and no driver reply can
re-enter the manager that is still making the request. Every call gets the driver's
timeout; when it expires the Deferred is cancelled, which stops the driver's process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from nebula_xr.drivers.base import DriverError


def failure_message(failure: Failure, timeout: float) -> str:
    """The text a failed driver action leaves in the logs (1.2's FAILURE text)."""
    if failure.check(defer.TimeoutError, defer.CancelledError):
        return f"Timeout: no answer from the driver in {timeout:g} seconds"
    if failure.check(DriverError):
        return str(failure.value) or "Unknown error"
    return f"Internal driver error: {failure.getErrorMessage()}"


def invoke(
    clock: Any,
    timeout: float,
    action: Callable[..., Any],
    *args: Any,
    on_success: Callable[[Any], None],
    on_failure: Callable[[str, Failure], None],
) -> None:
    """Run ``action(*args)`` on the next turn; report its result or a failure message."""

    def start() -> None:
        call = defer.maybeDeferred(action, *args)
        call.addTimeout(timeout, clock)
        call.addCallbacks(
            on_success, lambda failure: on_failure(failure_message(failure, timeout), failure)
        )
        call.addErrback(_report_bug)

    clock.callLater(0, start)


def _report_bug(failure: Failure) -> None:
    # A bug in a success/failure handler must not vanish silently.
    from twisted.python import log

    log.err(failure, "Error while handling a driver result")
