"""The transfer manager (TM): writes 1.2 transfer scripts and hands them to TM drivers.

For each phase (prolog, prolog of a migration or a resume, epilog, epilog of a stop)
it builds the command lines of drivers.md §6.1, writes them to
``$VAR/<vid>/transfer.<seq>`` exactly as 1.2 did, and asks the driver named by the
history record's ``tm_mad`` to run them. The outcome becomes PROLOG_* or EPILOG_*
according to the VM's LCM state when the answer arrives.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure

from nebula_xr.drivers.base import TransferCommand, TransferDriver
from nebula_xr.drivers.invoke import invoke
from nebula_xr.log import Log
from nebula_xr.model import History, LCMState, VirtualMachine
from nebula_xr.pools import VirtualMachinePool

if TYPE_CHECKING:
    from nebula_xr.lifecycle_manager import LifeCycleManager

_PROLOG_STATES = (LCMState.PROLOG, LCMState.PROLOG_MIGRATE, LCMState.PROLOG_RESUME)
_EPILOG_STATES = (LCMState.EPILOG, LCMState.EPILOG_STOP)


class TransferError(Exception):
    """The transfer script cannot be built (e.g. a DISK without SOURCE)."""


class TransferManager:
    def __init__(
        self,
        drivers: dict[str, TransferDriver],
        timeouts: dict[str, float],
        vms: VirtualMachinePool,
        clock: Any,
        log: Log,
        frontend: str,
    ) -> None:
        self.drivers = drivers
        self.timeouts = timeouts
        self.vms = vms
        self.clock = clock
        self.log = log
        self.frontend = frontend
        self.lcm: LifeCycleManager

    # -- phases ---------------------------------------------------------------------------

    def prolog(self, vm: VirtualMachine) -> None:
        self._transfer(vm, self._prolog_commands)

    def prolog_migrate(self, vm: VirtualMachine) -> None:
        def commands(vm: VirtualMachine, cur: History) -> list[TransferCommand]:
            prev = vm.previous
            if prev is None:
                raise TransferError("no previous history record")
            source = f"{prev.host_name}:{prev.remote_dir}"
            return [TransferCommand("MV", (source, f"{cur.host_name}:{cur.remote_dir}"))]

        self._transfer(vm, commands)

    def prolog_resume(self, vm: VirtualMachine) -> None:
        def commands(vm: VirtualMachine, cur: History) -> list[TransferCommand]:
            source = f"{self.frontend}:{self.vms.vm_dir(vm.oid)}/images"
            return [TransferCommand("MV", (source, f"{cur.host_name}:{cur.remote_dir}"))]

        self._transfer(vm, commands)

    def epilog(self, vm: VirtualMachine) -> None:
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

        self._transfer(vm, commands)

    def epilog_stop(self, vm: VirtualMachine) -> None:
        def commands(vm: VirtualMachine, cur: History) -> list[TransferCommand]:
            target = f"{self.frontend}:{self.vms.vm_dir(vm.oid)}"
            return [TransferCommand("MV", (f"{cur.host_name}:{cur.remote_dir}", target))]

        self._transfer(vm, commands)

    def delete(self, vm: VirtualMachine, record: History) -> None:
        """Delete the VM directory on ``record``'s host (1.4 finalize of an ACTIVE or
        SUSPENDED VM); nothing waits for the outcome, which is only logged."""
        driver = self.drivers.get(record.tm_mad)
        commands = [TransferCommand("DELETE", (f"{record.host_name}:{record.remote_dir}",))]
        script = self.vms.vm_dir(vm.oid) / f"transfer.{record.seq}.delete"
        try:
            if driver is None:
                raise TransferError(f"TM driver {record.tm_mad} not loaded")
            script.write_text("".join(f"{line}\n" for line in commands), encoding="utf-8")
        except (TransferError, OSError) as error:
            self.log.vm(vm.oid, "TM", 0, f"Error preparing transfer: {error}")
            return
        log = self.log.vm
        invoke(
            self.clock,
            self.timeouts.get(record.tm_mad, 300.0),
            driver.transfer,
            vm.oid,
            script,
            commands,
            on_success=lambda _: log(vm.oid, "TM", 2, f"Executed {commands[0]}"),
            on_failure=lambda message, _: log(vm.oid, "TM", 0, f"Error deleting: {message}"),
        )

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

    def _transfer(self, vm: VirtualMachine, build: Any) -> None:
        cur = vm.current
        driver = self.drivers.get(cur.tm_mad) if cur is not None else None
        try:
            if cur is None:
                raise TransferError("no history")
            if driver is None:
                raise TransferError(f"TM driver {cur.tm_mad} not loaded")
            commands = build(vm, cur)
            script = self.vms.vm_dir(vm.oid) / f"transfer.{cur.seq}"
            script.write_text("".join(f"{line}\n" for line in commands), encoding="utf-8")
        except (TransferError, OSError) as error:
            self.log.vm(vm.oid, "TM", 0, f"Error preparing transfer: {error}")
            self.clock.callLater(0, self._answered, vm.oid, False)
            return
        self.log.vm(vm.oid, "TM", 2, f"Sending transfer script {script} to {cur.tm_mad}")

        def failed(message: str, _failure: Failure) -> None:
            self.log.vm(vm.oid, "TM", 0, f"Error executing transfer script: {message}")
            self._answered(vm.oid, False)

        invoke(
            self.clock,
            self.timeouts.get(cur.tm_mad, 300.0),
            driver.transfer,
            vm.oid,
            script,
            commands,
            on_success=lambda _: self._answered(vm.oid, True),
            on_failure=failed,
        )

    def _answered(self, vid: int, ok: bool) -> None:
        vm = self.vms.get(vid)
        if vm is None:
            return
        if vm.lcm_state in _PROLOG_STATES:
            (self.lcm.prolog_success if ok else self.lcm.prolog_failure)(vid)
        elif vm.lcm_state in _EPILOG_STATES:
            (self.lcm.epilog_success if ok else self.lcm.epilog_failure)(vid)
        else:
            self.log.vm(vid, "TM", 0, "Wrong state in TM answer")


def _disks(vm: VirtualMachine) -> list[dict[str, str]]:
    """Every DISK vector in template order: disk.<i> counts all of them, swap included."""
    return vm.template.vectors("DISK")
