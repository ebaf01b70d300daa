"""tm_dummy: every transfer succeeds without moving anything (1.2's tm_dummy)."""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import Deferred

from nebula_xr import hookimpl
from nebula_xr.drivers.base import DriverConfig, DriverContext, TransferCommand, TransferDriver
from nebula_xr_plugins.dummy import DummyDriver


class DummyTransferDriver(DummyDriver, TransferDriver):
    def transfer(self, vid: int, script: Path, commands: list[TransferCommand]) -> Deferred:
        hosts = [arg.split(":", 1)[0] for command in commands for arg in command.args if ":" in arg]
        return self.answer(hosts, "TRANSFER")


@hookimpl
def nebula_xr_tm_driver(config: DriverConfig, context: DriverContext) -> TransferDriver | None:
    if config.plugin == "tm_dummy":
        return DummyTransferDriver(config, context)
    return None
