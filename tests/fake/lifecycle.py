"""The managers of the daemon on a ``task.Clock``, with drivers the test answers by hand.

:class:`World` builds the real pools (over a real SQLite file), VMM, TM, DM, LCM and
reconciler exactly as the daemon wires them, with :class:`FakeHypervisor` and
:class:`FakeTransfers` as drivers: no process, no sleep. Every driver request waits in
``pending`` until the test answers it (``answer``), except polls, which report
``domains[host]`` at once (a missing host: the domain is gone; a host in
``unreachable``: the poll fails). :meth:`World.restart` closes the database as a crash
would leave it (everything acknowledged is committed) and builds a new world on it.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from nebula_xr.database import Database
from nebula_xr.dispatch_manager import DispatchManager, VMStates
from nebula_xr.drivers.base import (
    VIRTUAL_MACHINE,
    DriverConfig,
    DriverError,
    TransferCommand,
    TransferDriver,
    VirtualMachineDriver,
    VMAction,
)
from nebula_xr.file_writer import SynchronousFileWriter
from nebula_xr.lifecycle_manager import LifeCycleManager
from nebula_xr.log import Log
from nebula_xr.model import LCMState, VirtualMachine, VMState
from nebula_xr.pools import HostPool, VirtualMachinePool, VirtualNetworkPool
from nebula_xr.reconciliation import Reconciler
from nebula_xr.template import Template
from nebula_xr.transfer_manager import TransferManager
from nebula_xr.virtual_machine_manager import VirtualMachineManager

TIMEOUT = 60.0
POLLING_INTERVAL = 10


@dataclass
class Request:
    kind: str  # DEPLOY, SAVE, RESTORE, MIGRATE, SHUTDOWN, CANCEL, TRANSFER
    host: str
    vid: int
    deferred: Deferred = field(default_factory=Deferred)


class _Requests:
    def __init__(self) -> None:
        self.pending: list[Request] = []
        #: Every request ever made, as "KIND host" (polls included).
        self.asked: list[str] = []
        #: Answer every non-poll request at once with success.
        self.auto = False

    def _request(self, kind: str, host: str, vid: int, value: Any = None) -> Deferred:
        self.asked.append(f"{kind} {host}")
        if self.auto:
            return succeed(value)
        request = Request(kind, host, vid)
        self.pending.append(request)
        return request.deferred


class FakeHypervisor(_Requests, VirtualMachineDriver):
    def __init__(self) -> None:
        _Requests.__init__(self)
        # No type: the driver writes its own deployment file (deployment_file below).
        self.config = DriverConfig(name="vmm", kind=VIRTUAL_MACHINE, plugin="fake")
        #: host -> STATE letter its poll reports for every domain.
        self.domains: dict[str, str] = {}
        self.unreachable: set[str] = set()
        #: Keep polls pending until the test answers them (a late answer).
        self.hold_polls = False

    def deployment_file(self, vm: VMAction) -> str:
        return vm.template.to_text()

    def deploy(self, vm: VMAction, local_file: Path, remote_file: str) -> Deferred:
        return self._request("DEPLOY", vm.host, vm.vid, f"one-{vm.vid}")

    def shutdown(self, vm: VMAction) -> Deferred:
        return self._request("SHUTDOWN", vm.host, vm.vid)

    def cancel(self, vm: VMAction) -> Deferred:
        return self._request("CANCEL", vm.host, vm.vid)

    def save(self, vm: VMAction, checkpoint: str) -> Deferred:
        return self._request("SAVE", vm.host, vm.vid)

    def restore(self, vm: VMAction, checkpoint: str) -> Deferred:
        return self._request("RESTORE", vm.host, vm.vid)

    def migrate(self, vm: VMAction, destination: str) -> Deferred:
        return self._request("MIGRATE", vm.host, vm.vid)

    def poll(self, vm: VMAction) -> Deferred:
        if self.hold_polls:
            return self._request("POLL", vm.host, vm.vid)
        self.asked.append(f"POLL {vm.host}")
        if vm.host in self.unreachable:
            return fail(DriverError(f"{vm.host} unreachable"))
        return succeed({"USEDMEMORY": "1024", "STATE": self.domains.get(vm.host, "d")})


class FakeTransfers(_Requests, TransferDriver):
    def __init__(self) -> None:
        _Requests.__init__(self)
        self.scripts: list[list[str]] = []

    def transfer(self, vid: int, script: Path, commands: list[TransferCommand]) -> Deferred:
        self.scripts.append([str(command) for command in commands])
        host = commands[-1].args[-1].split(":", 1)[0]
        return self._request("TRANSFER", host, vid)


class ThreadedClock(Clock):
    """A Clock that also takes calls from the database's writer thread, run at a turn."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: queue.SimpleQueue[tuple[Callable[..., Any], tuple]] = queue.SimpleQueue()

    def callFromThread(self, function: Callable[..., Any], *args: Any) -> None:  # noqa: N802
        self.from_threads.put((function, args))

    def turn(self) -> None:
        while not self.from_threads.empty():
            function, args = self.from_threads.get()
            function(*args)
        self.advance(0)


class World:
    """One daemon's managers; ``restart()`` gives the next one on the same files."""

    def __init__(self, location: Path, clock: ThreadedClock | None = None) -> None:
        self.location = location
        self.clock = clock or ThreadedClock()
        if clock is None:
            self.clock.advance(1_000_000)  # times are never 0
        var = location / "var"
        var.mkdir(parents=True, exist_ok=True)
        self.db = Database(location / "one.db", reactor=self.clock)
        self.db.open()
        self.vms = VirtualMachinePool(self.db, var)
        self.hosts = HostPool(self.db)
        self.networks = VirtualNetworkPool(self.db, 0x0003, 254)
        for pool in (self.vms, self.hosts, self.networks):
            pool.load()
        self.log = Log(location / "oned.log", 3, lambda vid: var / str(vid) / "vm.log")
        self.hypervisor = FakeHypervisor()
        self.transfers = FakeTransfers()
        files = SynchronousFileWriter()
        self.vmm = VirtualMachineManager(
            {"vmm": self.hypervisor}, {"vmm": TIMEOUT}, self.vms, self.clock, self.log, files
        )
        self.tm = TransferManager(
            {"tm": self.transfers}, {"tm": TIMEOUT}, self.vms, self.clock, self.log, "front", files
        )
        self.states = VMStates(self.vms, self.networks, self.clock, self.log)
        self.lcm = LifeCycleManager(
            self.vms,
            self.hosts,
            self.vmm,
            self.tm,
            self.states,
            self.clock,
            self.log,
            POLLING_INTERVAL,
        )
        self.dm = DispatchManager(
            self.vms,
            self.hosts,
            self.networks,
            self.states,
            self.lcm,
            self.tm,
            self.clock,
            self.log,
            "/vm",
        )
        self.reconciler = Reconciler(
            self.vms,
            self.hosts,
            self.lcm,
            self.vmm,
            self.states,
            self.log,
            self.clock,
            {"vmm": TIMEOUT},
        )

    # -- set-up -------------------------------------------------------------------------

    def add_hosts(self, *names: str) -> None:
        for name in names:
            self.hosts.allocate(name, "im", "vmm", "tm", True, int(self.clock.seconds()))

    def host(self, name: str) -> Any:
        return next(host for host in self.hosts if host.name == name)

    def new_vm(self) -> int:
        template = Template.parse("CPU = 1\nMEMORY = 64\nDISK = [ source = /i, target = sda ]\n")
        return self.dm.allocate(template).oid

    # -- driving ------------------------------------------------------------------------

    def turn(self) -> None:
        """Let everything scheduled for now run (driver calls start on the next turn)."""
        for _ in range(20):
            self.clock.turn()

    def answer(self, kind: str, outcome: str = "ok") -> Request:
        """Answer the oldest pending ``kind`` request: ok, fail or timeout."""
        self.turn()
        pool = self.transfers if kind == "TRANSFER" else self.hypervisor
        request = next(r for r in pool.pending if r.kind == kind)
        pool.pending.remove(request)
        if outcome == "ok":
            request.deferred.callback(f"one-{request.vid}" if kind == "DEPLOY" else None)
        elif outcome == "fail":
            request.deferred.errback(DriverError(f"{kind} failed on {request.host}"))
        else:
            assert outcome == "timeout"
            self.clock.advance(TIMEOUT + 1)
        self.turn()
        return request

    def pending(self) -> list[str]:
        self.turn()
        return [f"{r.kind} {r.host}" for r in (*self.hypervisor.pending, *self.transfers.pending)]

    def restart(self) -> World:
        """The daemon dies here (its requests with it) and starts again on its files."""
        self.turn()
        self.db.close()
        self.log.close()
        return World(self.location, self.clock)

    # -- looking ------------------------------------------------------------------------

    def vm(self, vid: int) -> VirtualMachine:
        vm = self.vms.get(vid)
        assert vm is not None
        return vm

    def where(self, vid: int) -> tuple[str, str, str]:
        """(state, LCM state, host of the current record) by name."""
        vm = self.vm(vid)
        lcm = vm.lcm_state.name if vm.state is VMState.ACTIVE else "-"
        return vm.state.name, lcm, vm.current.host_name if vm.current else "-"

    def running_vms(self) -> dict[str, int]:
        return {host.name: host.shares.running_vms for host in self.hosts}

    def vm_log(self, vid: int) -> str:
        self.log.flush()  # the daemon flushes at the end of a reactor turn; this is a Clock
        return (self.location / "var" / str(vid) / "vm.log").read_text()

    def close(self) -> None:
        self.db.close()
        self.log.close()


#: LCM states in which a VM is stable (nothing in flight) once ACTIVE.
STABLE_ACTIVE = (LCMState.RUNNING, LCMState.UNKNOWN)
