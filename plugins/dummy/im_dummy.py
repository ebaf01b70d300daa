"""im_dummy: reports a plausible 2-CPU, 2 GB Xen host without looking at any host."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from nebula_xr import hookimpl
from nebula_xr.drivers.base import DriverConfig, DriverContext, InformationDriver
from nebula_xr_plugins.dummy import CONTROL_KEYS, DummyDriver

#: What a small Xen 3 host of the time reported: CPU in percent, memory in KB.
DEFAULT_ATTRIBUTES = {
    "ARCH": "x86_64",
    "MODELNAME": "Intel(R) Xeon(R) CPU E5420 @ 2.50GHz",
    "CPUSPEED": "2500",
    "TOTALCPU": "200",
    "FREECPU": "190",
    "USEDCPU": "10",
    "TOTALMEMORY": "2097152",
    "FREEMEMORY": "1835008",
    "USEDMEMORY": "262144",
    "NETTX": "0",
    "NETRX": "0",
    "HYPERVISOR": "xen",
}


class DummyInformationDriver(DummyDriver, InformationDriver):
    def monitor(self, hid: int, host: str) -> Deferred:
        attributes = {"HOSTNAME": host, **DEFAULT_ATTRIBUTES}
        for name, value in self.settings:
            if name not in CONTROL_KEYS and isinstance(value, str):
                attributes[name] = value
        return self.answer([host], "MONITOR", attributes)


@hookimpl
def nebula_xr_im_driver(config: DriverConfig, context: DriverContext) -> InformationDriver | None:
    if config.plugin == "im_dummy":
        return DummyInformationDriver(config, context)
    return None
