"""The scheduler oned.conf configured, inside the daemon: started and stopped with it, and
told of the VM and host changes it handles.

Events go to this one scheduler object, never through a process-wide broadcast: two
daemons in one process (tests, embedding) each tell only their own scheduler. A snapshot
(:func:`~nebula_xr.views.vm_view`, :func:`~nebula_xr.views.host_view`) is taken at the
change, and only for the events the scheduler overrides
(:func:`~nebula_xr.scheduling.handles`); it is delivered on the next reactor turn, so a
scheduler acting on it (deploying a new VM) never re-enters the manager that caused it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime

from nebula_xr.model import Host, VirtualMachine
from nebula_xr.pools import HostPool, VirtualMachinePool
from nebula_xr.scheduling import Scheduler, handles
from nebula_xr.views import host_view, vm_view


class SchedulerService(Service):
    def __init__(self, scheduler: Scheduler, clock: IReactorTime) -> None:
        self.scheduler = scheduler
        self.clock = clock
        self._wants_monitorings = handles(scheduler, "host_monitored")

    def watch(self, vms: VirtualMachinePool, hosts: HostPool) -> None:
        """Listen to the pools' changes the scheduler handles (none: no listener at all)."""
        if handles(self.scheduler, "vm_changed"):

            def vm_changed(vm: VirtualMachine, state: int, lcm: int) -> None:
                self._deliver(self.scheduler.vm_changed, vm_view(vm), state, lcm)

            vms.listeners.append(vm_changed)
        if handles(self.scheduler, "host_changed"):

            def host_changed(host: Host, previous: int) -> None:
                deleted = hosts.get(host.oid) is None
                view = host_view(host, -1 if deleted else None)
                self._deliver(self.scheduler.host_changed, view, previous)

            hosts.listeners.append(host_changed)

    def host_monitored(self, host: Host) -> None:
        """The information manager monitored ``host``."""
        if self._wants_monitorings:
            self._deliver(self.scheduler.host_monitored, host_view(host))

    def startService(self) -> None:
        super().startService()
        self.scheduler.start()

    def stopService(self) -> None:
        super().stopService()
        self.scheduler.stop()

    def _deliver(self, event: Callable[..., None], *arguments: Any) -> None:
        self.clock.callLater(0, self._tell, event, arguments)

    def _tell(self, event: Callable[..., None], arguments: tuple[Any, ...]) -> None:
        # A stopped scheduler hears nothing more, even of changes from before its stop.
        if self.running:
            event(*arguments)
