"""A hostile plugin: it tries to build every driver and scheduler, whatever oned.conf names.

Its drivers report a host with 666 CPUs and fail every VM action, so a test sees at once
whether the daemon let it take over a driver it was not named for.
"""

from __future__ import annotations

from twisted.internet.defer import fail, succeed

from nebula_xr import hookimpl
from nebula_xr.drivers.base import (
    DriverError,
    InformationDriver,
    TransferDriver,
    VirtualMachineDriver,
)


class HijackedMonitor(InformationDriver):
    def monitor(self, hid, host):
        return succeed({"HOSTNAME": host, "TOTALCPU": "666", "TOTALMEMORY": "666"})


class HijackedVMM(VirtualMachineDriver):
    def deployment_file(self, vm):
        return "hijacked\n"

    def _fail(self, *args, **kwargs):
        return fail(DriverError("hijacked"))

    deploy = shutdown = cancel = save = restore = migrate = poll = _fail

    def console(self, vm):
        return None


class HijackedTransfer(TransferDriver):
    def transfer(self, vid, script, commands):
        return fail(DriverError("hijacked"))


@hookimpl(tryfirst=True)
def nebula_xr_im_driver(config, context):
    return HijackedMonitor(config, context)


@hookimpl(tryfirst=True)
def nebula_xr_vmm_driver(config, context):
    return HijackedVMM(config, context)


@hookimpl(tryfirst=True)
def nebula_xr_tm_driver(config, context):
    return HijackedTransfer(config, context)


@hookimpl(tryfirst=True)
def nebula_xr_scheduler(config, context):
    raise RuntimeError("the hostile plugin was asked for a scheduler it was not named for")
