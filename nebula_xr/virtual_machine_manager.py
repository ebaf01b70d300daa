"""The VM manager (VMM): hands VM actions to the host's VMM driver, and polls VMs.

For each LCM request it finds the driver named by the history record's ``vm_mad``,
describes the work as a :class:`~nebula_xr.drivers.base.VMAction` and reports the
outcome as an LCM event (lifecycle.md §4.1). It also owns the periodic poll of RUNNING
VMs and writes the deployment files (``$VAR/<vid>/deployment.<seq>``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure

from nebula_xr.deployment import deployment_file
from nebula_xr.drivers.base import DriverError, VirtualMachineDriver, VMAction
from nebula_xr.drivers.invoke import invoke
from nebula_xr.log import Log
from nebula_xr.model import History, LCMState, VirtualMachine, VMState, leading_int
from nebula_xr.pools import VirtualMachinePool

if TYPE_CHECKING:
    from nebula_xr.lifecycle_manager import LifeCycleManager

#: POLL keys that update vm_pool columns; any other key goes into the VM template.
_POLL_COLUMNS = {"USEDMEMORY": "memory", "USEDCPU": "cpu", "NETTX": "net_tx", "NETRX": "net_rx"}
#: Polled LCM states: a VM gone from its host (UNKNOWN) is watched until it reappears.
_POLLED = (LCMState.RUNNING, LCMState.UNKNOWN)


class VirtualMachineManager:
    def __init__(
        self,
        drivers: dict[str, VirtualMachineDriver],
        timeouts: dict[str, float],
        vms: VirtualMachinePool,
        clock: Any,
        log: Log,
        polling_interval: int,
    ) -> None:
        self.drivers = drivers
        self.timeouts = timeouts
        self.vms = vms
        self.clock = clock
        self.log = log
        self.polling_interval = polling_interval
        self.lcm: LifeCycleManager

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
        on_success: Callable[[Any], None],
        on_failure: Callable[[int], None],
    ) -> None:
        driver = self._driver(vm, record, name, on_failure)
        if driver is None:
            return
        action = self._action(vm, record)
        self.log.vm(vm.oid, "VMM", 2, f"Sending {name} to {record.host_name}")

        def failed(message: str, _failure: Failure) -> None:
            self._failed(vm.oid, name, message, on_failure)

        invoke(
            self.clock,
            self.timeouts.get(record.vm_mad, 300.0),
            call,
            driver,
            action,
            on_success=on_success,
            on_failure=failed,
        )

    def _driver(
        self,
        vm: VirtualMachine,
        record: History | None,
        name: str,
        on_failure: Callable[[int], None],
    ) -> VirtualMachineDriver | None:
        """The record's driver, or None after reporting the internal error (§4.4)."""
        driver = self.drivers.get(record.vm_mad) if record is not None else None
        if driver is None:
            reason = "no history" if record is None else f"VMM driver {record.vm_mad} not loaded"
            self._failed(vm.oid, name, reason, on_failure)
        return driver

    def _failed(self, vid: int, name: str, message: str, on_failure: Callable[[int], None]) -> None:
        self.log.vm(vid, "VMM", 0, f"Error executing {name}: {message}")
        # An internal error is reported on the next turn, like a driver reply.
        self.clock.callLater(0, on_failure, vid)

    # -- actions --------------------------------------------------------------------------

    def deploy(self, vm: VirtualMachine) -> None:
        record = vm.current
        driver = self._driver(vm, record, "DEPLOY", self.lcm.deploy_failure)
        if record is None or driver is None:
            return
        local = self.vms.vm_dir(vm.oid) / f"deployment.{record.seq}"
        remote = f"{record.remote_dir}/deployment.{record.seq}"
        try:
            text = deployment_file(driver, self._action(vm, record))
            local.write_text(text, encoding="utf-8")
        except (DriverError, OSError) as error:
            message = f"Can not create deployment file: {error}"
            self._failed(vm.oid, "DEPLOY", message, self.lcm.deploy_failure)
            return

        def deployed(deploy_id: object) -> None:
            current = self.vms.get(vm.oid)
            if current is not None:
                # 1.2 keeps the first token of the driver's answer as the deploy id.
                token = str(deploy_id or "").split()
                current.deploy_id = token[0] if token else f"one-{vm.oid}"
                self.vms.update(current)
            self.lcm.deploy_success(vm.oid)

        self._run(
            vm,
            record,
            "DEPLOY",
            lambda d, a: d.deploy(a, local, remote),
            deployed,
            self.lcm.deploy_failure,
        )

    def save(self, vm: VirtualMachine) -> None:
        """Save to the checkpoint; a cold migration saves on the previous (source) host."""
        record = vm.previous if vm.lcm_state is LCMState.SAVE_MIGRATE else vm.current
        checkpoint = f"{record.remote_dir}/checkpoint" if record is not None else ""
        self._run(
            vm,
            record,
            "SAVE",
            lambda d, a: d.save(a, checkpoint),
            lambda _: self.lcm.save_success(vm.oid),
            self.lcm.save_failure,
        )

    def restore(self, vm: VirtualMachine) -> None:
        record = vm.current
        checkpoint = f"{record.remote_dir}/checkpoint" if record is not None else ""
        self._run(
            vm,
            record,
            "RESTORE",
            lambda d, a: d.restore(a, checkpoint),
            lambda _: self.lcm.deploy_success(vm.oid),
            self.lcm.deploy_failure,
        )

    def migrate(self, vm: VirtualMachine) -> None:
        source, target = vm.previous, vm.current
        if target is None:
            source = None
        self._run(
            vm,
            source,
            "MIGRATE",
            lambda d, a: d.migrate(a, target.host_name),
            lambda _: self.lcm.deploy_success(vm.oid),
            self.lcm.deploy_failure,
        )

    def shutdown(self, vm: VirtualMachine) -> None:
        self._run(
            vm,
            vm.current,
            "SHUTDOWN",
            lambda d, a: d.shutdown(a),
            lambda _: self.lcm.shutdown_success(vm.oid),
            self.lcm.shutdown_failure,
        )

    def cancel(self, vm: VirtualMachine) -> None:
        self._run(
            vm,
            vm.current,
            "CANCEL",
            lambda d, a: d.cancel(a),
            lambda _: self.lcm.cancel_success(vm.oid),
            self.lcm.cancel_failure,
        )

    def cancel_domain(self, vm: VirtualMachine, record: History) -> None:
        """Destroy the domain on ``record``'s host for a VM being deleted (1.4
        finalize); nothing waits for the outcome, which is only logged."""
        self._run(vm, record, "CANCEL", lambda d, a: d.cancel(a), _ignore, _ignore)

    def poll(self, vm: VirtualMachine) -> None:
        # A failed poll is only logged (1.2 raised CANCEL_FAILURE here, a bug).
        self._run(
            vm,
            vm.current,
            "POLL",
            lambda d, a: d.poll(a),
            lambda info: self._polled(vm.oid, info),
            _ignore,
        )

    # -- polling --------------------------------------------------------------------------

    def poll_due(self) -> None:
        """Timer tick: poll every RUNNING or UNKNOWN VM not polled for VM_POLLING_INTERVAL."""
        now = int(self.clock.seconds())
        for vm in list(self.vms):
            if vm.state is not VMState.ACTIVE or vm.lcm_state not in _POLLED:
                continue
            if now - vm.last_poll >= self.polling_interval:
                vm.last_poll = now
                self.vms.update(vm)
                self.poll(vm)

    def _polled(self, vid: int, info: object) -> None:
        vm = self.vms.get(vid)
        if vm is None or not isinstance(info, dict):
            return
        state = None
        for key, value in info.items():
            key, value = str(key).upper(), str(value)
            if key in _POLL_COLUMNS:
                setattr(vm, _POLL_COLUMNS[key], leading_int(value))
            elif key == "STATE":
                state = value[:1]
            else:
                self.vms.set_attribute(vm, key, value)
        self.vms.update(vm)
        # The state letter only matters while the VM is meant to be running.
        if vm.state is VMState.ACTIVE and vm.lcm_state in _POLLED:
            event = {
                "a": self.lcm.monitor_running,
                "p": self.lcm.monitor_suspend,
                "e": self.lcm.monitor_failure,
                "d": self.lcm.monitor_unknown,
            }.get(state or "")
            if event is not None:
                event(vid)

    def console(self, vm: VirtualMachine) -> Any:
        record = vm.current
        driver = self.drivers.get(record.vm_mad) if record is not None else None
        if record is None or driver is None:
            return None
        return driver.console(self._action(vm, record))


def _ignore(_outcome: object) -> None:
    """Outcome of a driver action nobody waits for (the log already has it)."""
