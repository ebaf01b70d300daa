"""The deployment file of a VM, chosen by its VM_MAD's ``type`` as 1.2 chose it.

In 1.2 the daemon, not the driver, wrote the deployment file, in the format the VM_MAD's
``type`` named (drivers.md §3): a ``type = "xen"`` driver gets a Xen domain file, and a VM
that file cannot describe (no kernel or bootloader, no MEMORY) fails at deploy, whichever
plugin implements the driver. A driver whose type has no format here writes its own
(:meth:`~nebula_xr.drivers.base.VirtualMachineDriver.deployment_file`).
"""

from __future__ import annotations

from collections.abc import Callable

from nebula_xr.drivers.base import VirtualMachineDriver, VMAction
from nebula_xr.template import Template


def _xen(vm: VMAction, defaults: Template) -> str:
    # The format lives with the shipped Xen plugin, which also uses it untyped.
    from nebula_xr_plugins.vmm_xen import deployment_file

    return deployment_file(vm, defaults)


#: Deployment-file writers by VM_MAD ``type``: ``(vm, the driver's DEFAULT file) -> text``.
FORMATS: dict[str, Callable[[VMAction, Template], str]] = {"xen": _xen}


def deployment_file(driver: VirtualMachineDriver, vm: VMAction) -> str:
    """The file to deploy ``vm`` with; DriverError when the VM cannot be described."""
    write = FORMATS.get(driver.config.type)
    if write is None:
        return driver.deployment_file(vm)
    return write(vm, driver.config.defaults)
