"""The VM manager (VMM): hands VM actions to the host's VMM driver.

For each LCM request it finds the driver named by the history record's ``vm_mad``,
describes the work as a :class:`~nebula_xr.drivers.base.VMAction` and returns the
Deferred of the driver's outcome (lifecycle.md §4.1): the LCM attaches its callbacks.
A failure (driver error, timeout, internal error of §4.4) is logged to the VM's log
and reaches the caller as :class:`~nebula_xr.interfaces.DriverFailure`. It also writes
the deployment files (``$VAR/<vid>/deployment.<seq>``), off the reactor through the
:class:`~nebula_xr.interfaces.VMFileWriter`: DEPLOY is sent once its file is written, and
any other command for the VM after the files asked before it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from nebula_xr.deployment import deployment_file
from nebula_xr.drivers.base import DriverError, VirtualMachineDriver, VMAction
from nebula_xr.drivers.invoke import invoke
from nebula_xr.interfaces import DriverFailure, VMFileWriter
from nebula_xr.log import Log
from nebula_xr.model import History, VirtualMachine, leading_int
from nebula_xr.pools import VirtualMachinePool

#: POLL keys that update vm_pool columns; any other key goes into the VM template.
_POLL_COLUMNS = {"USEDMEMORY": "memory", "USEDCPU": "cpu", "NETTX": "net_tx", "NETRX": "net_rx"}


class VirtualMachineManager:
    def __init__(
        self,
        drivers: dict[str, VirtualMachineDriver],
        timeouts: dict[str, float],
        vms: VirtualMachinePool,
        clock: IReactorTime,
        log: Log,
        files: VMFileWriter,
    ) -> None:
        self.drivers = drivers
        self.timeouts = timeouts
        self.vms = vms
        self.clock = clock
        self.log = log
        self.files = files

    def _action(self, vm: VirtualMachine, record: History) -> VMAction:
        return VMAction(
            vid=vm.oid,
            host=record.host_name,
            deploy_id=vm.deploy_id,
            template=vm.template.copy(),
            vm_dir=record.vm_dir,
            remote_dir=record.remote_dir,
            local_dir=self.vms.vm_dir(vm.oid),
            seq=record.seq,
        )

    def _run(
        self,
        vm: VirtualMachine,
        record: History | None,
        name: str,
        call: Callable[[VirtualMachineDriver, VMAction], Any],
    ) -> Deferred[Any]:
        driver = self.drivers.get(record.vm_mad) if record is not None else None
        if record is None or driver is None:
            return self._missing(vm, record, name)
        ready = self.files.after_writes(vm.oid)
        return ready.addCallback(lambda _: self._send(vm, record, driver, name, call))

    def _send(
        self,
        vm: VirtualMachine,
        record: History,
        driver: VirtualMachineDriver,
        name: str,
        call: Callable[[VirtualMachineDriver, VMAction], Any],
    ) -> Deferred[Any]:
        self.log.vm(vm.oid, "VMM", 2, f"Sending {name} to {record.host_name}")
        outcome: Deferred[Any] = Deferred()

        def failed(message: str, _failure: Failure) -> None:
            self.log.vm(vm.oid, "VMM", 0, f"Error executing {name}: {message}")
            outcome.errback(DriverFailure(message))

        invoke(
            self.clock,
            self.timeouts.get(record.vm_mad, 300.0),
            call,
            driver,
            self._action(vm, record),
            on_success=outcome.callback,
            on_failure=failed,
        )
        return outcome

    def _missing(self, vm: VirtualMachine, record: History | None, name: str) -> Deferred[Any]:
        reason = "no history" if record is None else f"VMM driver {record.vm_mad} not loaded"
        return self._failed(vm.oid, name, reason)

    def _failed(self, vid: int, name: str, message: str) -> Deferred[Any]:
        """An internal error (§4.4), reported on the next turn like a driver reply."""
        self.log.vm(vid, "VMM", 0, f"Error executing {name}: {message}")
        outcome: Deferred[Any] = Deferred()
        self.clock.callLater(0, outcome.errback, DriverFailure(message))
        return outcome

    # -- actions --------------------------------------------------------------------------

    def deploy(self, vm: VirtualMachine) -> Deferred[str]:
        """Write the deployment file and boot it; fires with the driver's deploy id."""
        record = vm.current
        driver = self.drivers.get(record.vm_mad) if record is not None else None
        if record is None or driver is None:
            return self._missing(vm, record, "DEPLOY")
        local = self.vms.vm_dir(vm.oid) / f"deployment.{record.seq}"
        remote = f"{record.remote_dir}/deployment.{record.seq}"
        try:
            text = deployment_file(driver, self._action(vm, record))
        except DriverError as error:
            return self._failed(vm.oid, "DEPLOY", f"Can not create deployment file: {error}")

        def send(_: None) -> Deferred[str]:
            return self._send(vm, record, driver, "DEPLOY", lambda d, a: d.deploy(a, local, remote))

        def unwritten(failure: Failure) -> Deferred[str]:
            failure.trap(OSError)
            message = f"Can not create deployment file: {failure.value}"
            return self._failed(vm.oid, "DEPLOY", message)

        return self.files.write(vm.oid, local, text).addCallbacks(send, unwritten)

    def save(self, vm: VirtualMachine, record: History | None) -> Deferred[Any]:
        """Save to ``record``'s checkpoint (a cold migration saves on the source host)."""
        checkpoint = f"{record.remote_dir}/checkpoint" if record is not None else ""
        return self._run(vm, record, "SAVE", lambda d, a: d.save(a, checkpoint))

    def restore(self, vm: VirtualMachine) -> Deferred[Any]:
        record = vm.current
        checkpoint = f"{record.remote_dir}/checkpoint" if record is not None else ""
        return self._run(vm, record, "RESTORE", lambda d, a: d.restore(a, checkpoint))

    def migrate(self, vm: VirtualMachine) -> Deferred[Any]:
        source, target = vm.previous, vm.current
        if target is None:
            return self._missing(vm, None, "MIGRATE")
        return self._run(vm, source, "MIGRATE", lambda d, a: d.migrate(a, target.host_name))

    def shutdown(self, vm: VirtualMachine) -> Deferred[Any]:
        return self._run(vm, vm.current, "SHUTDOWN", lambda d, a: d.shutdown(a))

    def cancel(self, vm: VirtualMachine, record: History | None) -> Deferred[Any]:
        return self._run(vm, record, "CANCEL", lambda d, a: d.cancel(a))

    def poll(self, vm: VirtualMachine, record: History | None) -> Deferred[dict[str, str]]:
        def answer(info: object) -> dict[str, str]:
            if not isinstance(info, dict):
                raise DriverFailure(f"unreadable POLL answer {info!r}")
            return {str(key).upper(): str(value) for key, value in info.items()}

        return self._run(vm, record, "POLL", lambda d, a: d.poll(a)).addCallback(answer)

    def console(self, vm: VirtualMachine) -> Any:
        record = vm.current
        driver = self.drivers.get(record.vm_mad) if record is not None else None
        if record is None or driver is None:
            return None
        return driver.console(self._action(vm, record))


def record_usage(vms: VirtualMachinePool, vm: VirtualMachine, info: dict[str, str]) -> str:
    """Store a POLL answer's usage figures (unknown keys into the template, as 1.2 did);
    return its ``STATE`` letter ("" when absent)."""
    for key, value in info.items():
        if key in _POLL_COLUMNS:
            setattr(vm, _POLL_COLUMNS[key], leading_int(value))
        elif key != "STATE":
            vms.set_attribute(vm, key, value)
    vms.update(vm)
    return info.get("STATE", "")[:1]
