"""The edges between the managers, as protocols injected at construction.

The pipeline has no cycle: the dispatch manager (DM) drives the life-cycle manager
(LCM), which drives the VM and transfer managers (VMM, TM); those return the Deferred of
the driver's outcome and the LCM attaches its own callbacks, so they need no reference
back. The LCM reports a VM leaving ACTIVE to the DM's :class:`DispatchEvents`. Time is
Twisted's ``IReactorTime`` (a reactor, or ``task.Clock`` in tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from nebula_xr.model import History, VirtualMachine


class DriverFailure(Exception):
    """A driver action failed or timed out; the message is already in the VM's log."""


def ignore_driver_failure(failure: Failure) -> None:
    """Errback of a request nobody waits for: its failure is already logged."""
    failure.trap(DriverFailure)


class VirtualMachineOperations(Protocol):
    """What the LCM asks of the VM manager. Every Deferred fires with the driver's answer
    or fails with :class:`DriverFailure`; none fires in the turn it was asked."""

    def deploy(self, vm: VirtualMachine) -> Deferred[str]:
        """Boot the current record's domain; fires with the deploy id."""

    def save(self, vm: VirtualMachine, record: History) -> Deferred[Any]:
        """Save the domain on ``record``'s host to its checkpoint."""

    def restore(self, vm: VirtualMachine) -> Deferred[Any]:
        """Restore the current record's checkpoint on its host."""

    def migrate(self, vm: VirtualMachine) -> Deferred[Any]:
        """Live-migrate from the previous record's host to the current one's."""

    def shutdown(self, vm: VirtualMachine) -> Deferred[Any]: ...

    def cancel(self, vm: VirtualMachine, record: History) -> Deferred[Any]:
        """Destroy the domain on ``record``'s host."""

    def poll(self, vm: VirtualMachine, record: History) -> Deferred[dict[str, str]]:
        """The monitoring answer for the domain on ``record``'s host."""


class TransferOperations(Protocol):
    """What the LCM and DM ask of the transfer manager: each Deferred fires when the
    transfer script ran, or fails with :class:`DriverFailure`."""

    def prolog(self, vm: VirtualMachine) -> Deferred[None]: ...

    def prolog_migrate(self, vm: VirtualMachine) -> Deferred[None]: ...

    def prolog_resume(self, vm: VirtualMachine) -> Deferred[None]: ...

    def epilog(self, vm: VirtualMachine) -> Deferred[None]: ...

    def epilog_stop(self, vm: VirtualMachine) -> Deferred[None]: ...

    def delete(self, vm: VirtualMachine, record: History) -> Deferred[None]:
        """Delete the VM directory on ``record``'s host."""


class VMFileWriter(Protocol):
    """Where the VMM and TM write the files their drivers read (:mod:`nebula_xr.file_writer`).
    A VM's Deferreds fire in the order asked; a failed write fails with its OSError."""

    def write(self, vid: int, path: Path, text: str) -> Deferred[None]:
        """Write ``text`` (UTF-8) to ``path`` once the files asked before for ``vid`` are."""

    def after_writes(self, vid: int) -> Deferred[None]:
        """Fires once every file asked so far for ``vid`` is written (at once if none)."""


class DispatchEvents(Protocol):
    """The VM leaves ACTIVE (lifecycle.md §4.3)."""

    def suspend_success(self, vid: int) -> None: ...

    def stop_success(self, vid: int) -> None: ...

    def done(self, vid: int) -> None: ...

    def failed(self, vid: int) -> None: ...


class LifeCycleActions(Protocol):
    """What the DM hands to the LCM once it accepted a request (lifecycle.md §3)."""

    def deploy(self, vid: int) -> None: ...

    def migrate(self, vid: int) -> None: ...

    def live_migrate(self, vid: int) -> None: ...

    def shutdown(self, vid: int) -> None: ...

    def stop(self, vid: int) -> None: ...

    def suspend(self, vid: int) -> None: ...

    def cancel(self, vid: int) -> None: ...

    def restore(self, vid: int) -> None: ...

    def resume_migrate(self, vid: int) -> None: ...

    def restart(self, vid: int) -> None: ...

    def delete(self, vid: int) -> None: ...

    def recover(self, vid: int, success: bool) -> None: ...
