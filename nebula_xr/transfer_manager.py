"""The transfer manager (TM): writes 1.2 transfer scripts and hands them to TM drivers.

For each phase (prolog, prolog of a migration or a resume, epilog, epilog of a stop)
it builds the command lines of drivers.md §6.1, writes them to
``$VAR/<vid>/transfer.<seq>`` exactly as 1.2 did, and asks the driver named by the
history record's ``tm_mad`` to run them, once the script is written (off the reactor,
through the :class:`~nebula_xr.interfaces.VMFileWriter`). Each phase returns the Deferred
of the outcome: it fires when the script ran, or fails with
:class:`~nebula_xr.interfaces.DriverFailure` (already logged to the VM's log).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from nebula_xr.drivers.base import TransferCommand, TransferDriver
from nebula_xr.drivers.invoke import invoke
from nebula_xr.interfaces import DriverFailure, VMFileWriter
from nebula_xr.log import Log
from nebula_xr.model import History, VirtualMachine
from nebula_xr.pools import VirtualMachinePool

Commands = Callable[[VirtualMachine, History], list[TransferCommand]]


class TransferError(Exception):
    """The transfer script cannot be built (e.g. a DISK without SOURCE)."""


class TransferManager:
    def __init__(
        self,
        drivers: dict[str, TransferDriver],
        timeouts: dict[str, float],
        vms: VirtualMachinePool,
        clock: IReactorTime,
        log: Log,
        frontend: str,
        files: VMFileWriter,
    ) -> None:
        self.drivers = drivers
        self.timeouts = timeouts
        self.vms = vms
        self.clock = clock
        self.log = log
        self.frontend = frontend
        self.files = files

    # -- phases ---------------------------------------------------------------------------

    def prolog(self, vm: VirtualMachine) -> Deferred[None]:
        return self._transfer(vm, self._prolog_commands)

    def prolog_migrate(self, vm: VirtualMachine) -> Deferred[None]:
        def commands(vm: VirtualMachine, cur: History) -> list[TransferCommand]:
            prev = vm.previous
            if prev is None:
                raise TransferError("no previous history record")
            source = f"{prev.host_name}:{prev.remote_dir}"
            return [TransferCommand("MV", (source, f"{cur.host_name}:{cur.remote_dir}"))]

        return self._transfer(vm, commands)

    def prolog_resume(self, vm: VirtualMachine) -> Deferred[None]:
        def commands(vm: VirtualMachine, cur: History) -> list[TransferCommand]:
            source = f"{self.frontend}:{self.vms.vm_dir(vm.oid)}/images"
            return [TransferCommand("MV", (source, f"{cur.host_name}:{cur.remote_dir}"))]

        return self._transfer(vm, commands)

    def epilog(self, vm: VirtualMachine) -> Deferred[None]:
        def commands(vm: VirtualMachine, cur: History) -> list[TransferCommand]:
            local = self.vms.vm_dir(vm.oid)
            lines = [
                TransferCommand(
                    "MV",
                    (
                        f"{cur.host_name}:{cur.remote_dir}/disk.{index}",
                        f"{self.frontend}:{local}/disk.{index}",
                    ),
                )
                for index, disk in enumerate(_disks(vm))
                if disk.get("SAVE", "").lower() == "yes"
            ]
            lines.append(TransferCommand("DELETE", (f"{cur.host_name}:{cur.remote_dir}",)))
            return lines

        return self._transfer(vm, commands)

    def epilog_stop(self, vm: VirtualMachine) -> Deferred[None]:
        def commands(vm: VirtualMachine, cur: History) -> list[TransferCommand]:
            target = f"{self.frontend}:{self.vms.vm_dir(vm.oid)}"
            return [TransferCommand("MV", (f"{cur.host_name}:{cur.remote_dir}", target))]

        return self._transfer(vm, commands)

    def delete(self, vm: VirtualMachine, record: History) -> Deferred[None]:
        """Delete the VM directory on ``record``'s host (1.4 finalize of an ACTIVE or
        SUSPENDED VM)."""

        def commands(vm: VirtualMachine, record: History) -> list[TransferCommand]:
            return [TransferCommand("DELETE", (f"{record.host_name}:{record.remote_dir}",))]

        return self._run(vm, record, commands, f"transfer.{record.seq}.delete")

    def _prolog_commands(self, vm: VirtualMachine, cur: History) -> list[TransferCommand]:
        lines = []
        for index, disk in enumerate(_disks(vm)):
            target = f"{cur.host_name}:{cur.remote_dir}/disk.{index}"
            if disk.get("TYPE", "").lower() == "swap":
                lines.append(TransferCommand("MKSWAP", (disk.get("SIZE") or "1", target)))
                continue
            source = disk.get("SOURCE")
            if not source:
                raise TransferError(f"DISK {index} has no SOURCE")
            if ":" not in source:
                source = f"{self.frontend}:{source}"
            clone = disk.get("CLONE", "yes").lower() == "yes"
            lines.append(TransferCommand("CLONE" if clone else "LN", (source, target)))
        return lines

    # -- running --------------------------------------------------------------------------

    def _transfer(self, vm: VirtualMachine, build: Commands) -> Deferred[None]:
        cur = vm.current
        return self._run(vm, cur, build, f"transfer.{cur.seq if cur else 0}")

    def _run(
        self, vm: VirtualMachine, record: History | None, build: Commands, name: str
    ) -> Deferred[None]:
        driver = self.drivers.get(record.tm_mad) if record is not None else None
        try:
            if record is None:
                raise TransferError("no history")
            if driver is None:
                raise TransferError(f"TM driver {record.tm_mad} not loaded")
            commands = build(vm, record)
        except TransferError as error:
            return self._unprepared(vm, error)
        script = self.vms.vm_dir(vm.oid) / name
        text = "".join(f"{line}\n" for line in commands)

        def unwritten(failure: Failure) -> Deferred[None]:
            failure.trap(OSError)
            return self._unprepared(vm, failure.value)

        written = self.files.write(vm.oid, script, text)
        return written.addCallbacks(
            lambda _: self._send(vm, record, driver, script, commands), unwritten
        )

    def _unprepared(self, vm: VirtualMachine, error: Exception) -> Deferred[None]:
        self.log.vm(vm.oid, "TM", 0, f"Error preparing transfer: {error}")
        outcome: Deferred[None] = Deferred()
        # Reported on the next turn, like a driver reply.
        self.clock.callLater(0, outcome.errback, DriverFailure(str(error)))
        return outcome

    def _send(
        self,
        vm: VirtualMachine,
        record: History,
        driver: TransferDriver,
        script: Path,
        commands: list[TransferCommand],
    ) -> Deferred[None]:
        outcome: Deferred[None] = Deferred()
        self.log.vm(vm.oid, "TM", 2, f"Sending transfer script {script} to {record.tm_mad}")

        def failed(message: str, _failure: Failure) -> None:
            self.log.vm(vm.oid, "TM", 0, f"Error executing transfer script: {message}")
            outcome.errback(DriverFailure(message))

        invoke(
            self.clock,
            self.timeouts.get(record.tm_mad, 300.0),
            driver.transfer,
            vm.oid,
            script,
            commands,
            on_success=lambda _: outcome.callback(None),
            on_failure=failed,
        )
        return outcome


def _disks(vm: VirtualMachine) -> list[dict[str, str]]:
    """Every DISK vector in template order: disk.<i> counts all of them, swap included."""
    return vm.template.vectors("DISK")
