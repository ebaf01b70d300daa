"""VM and host events reach the scheduler oned.conf configured, through its own methods.

In-process daemons (the real pools, managers, dummy drivers and one.db) whose timers run
on a ``task.Clock`` each: two of them in one process each tell only their own scheduler,
and a daemon builds event snapshots only for the events its scheduler handles.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import maybeDeferred

from nebula_xr import hookimpl, scheduler_service
from nebula_xr.config import Layout, load_config
from nebula_xr.daemon import Daemon
from nebula_xr.model import HostState, VMState
from nebula_xr.plugin_manager import PluginManager
from nebula_xr.scheduling import HostView, Scheduler, VMView
from tests.oned import write_conf

ADMIN_SESSION = f"oneadmin:{hashlib.sha1(b'secret').hexdigest()}"
INIT = 0


class RecordingScheduler(Scheduler):
    """Handles every event and records it."""

    def start(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    def vm_changed(self, vm: VMView, previous_state: int, previous_lcm_state: int) -> None:
        self.events.append(("vm", vm.vid, vm.state, previous_state))

    def host_changed(self, host: HostView, previous_state: int) -> None:
        self.events.append(("host", host.hid, host.state, previous_state))

    def host_monitored(self, host: HostView) -> None:
        self.events.append(("monitored", host.hid, host.attributes.get("TOTALCPU")))


class VMOnlyScheduler(Scheduler):
    """Handles VM changes only: host events are none of its business."""

    def vm_changed(self, vm: VMView, previous_state: int, previous_lcm_state: int) -> None:
        pass


class SchedulerPlugin:
    """A plugin building one scheduler class, registered under the name oned.conf gives."""

    def __init__(self, scheduler: type[Scheduler]) -> None:
        self.scheduler = scheduler

    @hookimpl
    def nebula_xr_scheduler(self, config, context):  # noqa: ANN001, ANN201
        return self.scheduler(config, context)


class Embedded:
    """A daemon built in this process with ``scheduler`` (a SCHEDULER vector), its timers
    on a ``task.Clock`` of its own."""

    def __init__(self, location: Path, scheduler: str) -> None:
        plugins = PluginManager()
        plugins.load()
        plugins.register(SchedulerPlugin(RecordingScheduler), "sched_record")
        plugins.register(SchedulerPlugin(VMOnlyScheduler), "sched_vms_only")
        conf = write_conf(location, scheduler=scheduler)
        layout = Layout(location / "var", location / "etc", location / "var", location / "lock")
        (location / "one_auth").write_text("oneadmin:secret\n")
        self.clock = task.Clock()
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("ONE_AUTH", str(location / "one_auth"))
            self.daemon = Daemon(
                load_config(conf, layout), plugins, reactor=reactor, clock=self.clock
            )

    @property
    def scheduler(self) -> Any:
        return self.daemon.scheduling.scheduler

    async def call(self, method: str, *args: Any) -> Any:
        reply = await maybeDeferred(self.daemon.registry.call, method, [ADMIN_SESSION, *args])
        assert reply[0] is True, reply
        return reply[1] if len(reply) > 1 else None

    async def until(self, predicate: Any, what: str, timeout: float = 10.0) -> None:
        """Run this daemon's clock a second at a time (the real reactor turning between
        steps, for the drivers' answers) until ``predicate()`` holds."""
        for _ in range(int(timeout / 0.02)):
            if predicate():
                return
            self.clock.advance(1)
            await task.deferLater(reactor, 0.02, lambda: None)
        raise AssertionError(f"timed out waiting for {what}")

    def monitored(self, hid: int) -> bool:
        host = self.daemon.hosts.get(hid)
        return host is not None and host.last_mon_time > 0


@pytest_twisted.async_yield_fixture
async def two_daemons(tmp_path):
    daemons = [
        Embedded(tmp_path / name, 'SCHEDULER = [ plugin = "sched_record" ]')
        for name in ("first", "second")
    ]
    for one in daemons:
        one.daemon.startService()
    yield daemons
    for one in daemons:
        await one.daemon.stopService()


@pytest_twisted.ensureDeferred
async def test_each_daemon_tells_only_its_own_scheduler(two_daemons: list[Embedded]) -> None:
    first, second = two_daemons
    assert first.scheduler is not second.scheduler
    vid = await first.call("one.vmallocate", "NAME = mine\nCPU = 1\nMEMORY = 32\n")
    assert first.scheduler.events == []  # delivered on the next turn of its own clock
    first.clock.advance(0)
    second.clock.advance(0)
    assert first.scheduler.events == [("vm", vid, VMState.PENDING, INIT)]
    assert second.scheduler.events == []

    hid = await second.call("one.hostallocate", "node01", "im_xen", "vmm_xen", "tm_nfs", True)
    await second.until(
        lambda: ("monitored", hid, "200") in second.scheduler.events, "the monitoring event"
    )
    assert ("host", hid, HostState.INIT, -1) in second.scheduler.events  # added
    first.clock.advance(5)
    assert first.scheduler.events == [("vm", vid, VMState.PENDING, INIT)]


@pytest_twisted.ensureDeferred
async def test_a_stopped_scheduler_hears_nothing_more(two_daemons: list[Embedded]) -> None:
    first, _second = two_daemons
    await first.call("one.vmallocate", "NAME = early\nCPU = 1\nMEMORY = 32\n")
    first.clock.advance(0)
    seen = list(first.scheduler.events)
    assert len(seen) == 1
    await first.call("one.vmallocate", "NAME = late\nCPU = 1\nMEMORY = 32\n")
    first.daemon.scheduling.stopService()  # the change above is not delivered yet
    first.clock.advance(0)
    assert first.scheduler.events == seen


@pytest.fixture
def snapshots(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """How many VM and host snapshots the daemons take for their schedulers' events."""
    counts: Counter[str] = Counter()
    for name in ("vm_view", "host_view"):
        real = getattr(scheduler_service, name)

        def counting(*args: Any, _real: Any = real, _name: str = name) -> Any:
            counts[_name] += 1
            return _real(*args)

        monkeypatch.setattr(scheduler_service, name, counting)
    return counts


@pytest.mark.parametrize(
    ("scheduler", "vm_snapshots", "host_snapshots"),
    [
        ('SCHEDULER = [ plugin = "sched_rank" ]', True, True),
        ('SCHEDULER = [ plugin = "none" ]', False, False),
        ('SCHEDULER = [ plugin = "sched_vms_only" ]', True, False),
    ],
    ids=["sched_rank", "none", "vm-events-only"],
)
@pytest_twisted.ensureDeferred
async def test_snapshots_only_for_the_events_the_scheduler_handles(
    tmp_path: Path,
    snapshots: Counter[str],
    scheduler: str,
    vm_snapshots: bool,
    host_snapshots: bool,
) -> None:
    one = Embedded(tmp_path, scheduler)
    one.daemon.startService()
    try:
        hid = await one.call("one.hostallocate", "node01", "im_xen", "vmm_xen", "tm_nfs", True)
        await one.until(lambda: one.monitored(hid), "the host monitored")
        await one.call("one.vmallocate", "NAME = a\nCPU = 1\nMEMORY = 32\n")
        await one.call("one.vmallocate", "NAME = b\nCPU = 1\nMEMORY = 32\n")
        one.clock.advance(0)
        assert (snapshots["vm_view"] > 0) is vm_snapshots, snapshots
        assert (snapshots["host_view"] > 0) is host_snapshots, snapshots
    finally:
        await one.daemon.stopService()
