"""vmm_dummy: runs no VM, answers every action as a healthy hypervisor would."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import Deferred

from nebula_xr import hookimpl
from nebula_xr.drivers.base import (
    ConsoleTarget,
    DriverConfig,
    DriverContext,
    VirtualMachineDriver,
    VMAction,
)
from nebula_xr.model import leading_int
from nebula_xr_plugins.dummy import DummyDriver


class DummyVirtualMachineDriver(DummyDriver, VirtualMachineDriver):
    def deployment_file(self, vm: VMAction) -> str:
        return f"# dummy deployment of one-{vm.vid}\n{vm.template.to_text()}"

    def deploy(self, vm: VMAction, local_file: Path, remote_file: str) -> Deferred:
        return self.answer([vm.host], "DEPLOY", f"one-{vm.vid}")

    def shutdown(self, vm: VMAction) -> Deferred:
        return self.answer([vm.host], "SHUTDOWN")

    def cancel(self, vm: VMAction) -> Deferred:
        return self.answer([vm.host], "CANCEL")

    def save(self, vm: VMAction, checkpoint: str) -> Deferred:
        return self.answer([vm.host], "SAVE")

    def restore(self, vm: VMAction, checkpoint: str) -> Deferred:
        return self.answer([vm.host], "RESTORE")

    def migrate(self, vm: VMAction, destination: str) -> Deferred:
        return self.answer([vm.host, destination], "MIGRATE")

    def poll(self, vm: VMAction) -> Deferred:
        # By default the guest uses all of its memory and a tenth of its CPUs.
        info = {
            "USEDMEMORY": str(leading_int(vm.template.get_string("MEMORY")) * 1024),
            "USEDCPU": "10",
            "NETTX": "0",
            "NETRX": "0",
        }
        info.update(self.settings.get_vector("POLL") or {})
        info["STATE"] = "a"
        return self.answer([vm.host], "POLL", info)

    def console(self, vm: VMAction) -> ConsoleTarget | None:
        method = self.settings.get_string("CONSOLE")
        if not method:
            return None
        return ConsoleTarget(vm.host, vm.deploy_id, method, banner="Escape character is '^]'")


@hookimpl
def nebula_xr_vmm_driver(
    config: DriverConfig, context: DriverContext
) -> VirtualMachineDriver | None:
    if config.plugin == "vmm_dummy":
        return DummyVirtualMachineDriver(config, context)
    return None
