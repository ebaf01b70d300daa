"""Host monitoring and VM polling at scale, on a ``task.Clock``: the real pools over a real
one.db, an IM driver that answers after a delay, 1,250 hosts."""

from __future__ import annotations

import itertools
import re
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.defer import Deferred

from nebula_xr.information_manager import InformationManager
from nebula_xr.model import HostState
from tests.fake.lifecycle import World

HOSTS = 1250
INTERVAL = 60
STEP = 0.05


class SlowMonitor:
    """An IM driver answering ``seconds`` after each request; it records each monitoring's
    start per host and the most monitorings under way at once."""

    def __init__(self, world: World, seconds: float) -> None:
        self.clock = world.clock
        self.seconds = seconds
        self.starts: dict[str, list[float]] = defaultdict(list)
        self.under_way = 0
        self.peak = 0

    def monitor(self, _hid: int, host: str) -> Deferred:
        self.starts[host].append(self.clock.seconds())
        self.under_way += 1
        self.peak = max(self.peak, self.under_way)
        answer: Deferred = Deferred()

        def answered() -> None:
            self.under_way -= 1
            answer.callback({"TOTALCPU": "200", "TOTALMEMORY": "2097152", "FREEMEMORY": "1"})

        self.clock.callLater(self.seconds, answered)
        return answer


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    world = World(tmp_path)
    yield world
    world.close()


def cluster(
    world: World, seconds: float, concurrency: int
) -> tuple[InformationManager, SlowMonitor]:
    for n in range(HOSTS):
        world.hosts.allocate(f"node{n}", "im", "vmm", "tm", True, int(world.clock.seconds()))
    driver = SlowMonitor(world, seconds)
    im = InformationManager(
        {"im": driver}, {"im": 30.0}, world.hosts, world.clock, world.log, INTERVAL,
        concurrency=concurrency,
    )  # fmt: skip
    return im, driver


def oned_log(world: World) -> str:
    world.log.flush()
    return (world.location / "oned.log").read_text()


def run(world: World, im: InformationManager, seconds: float) -> None:
    """Let the daemon run: the manager's timer ticks every second (MANAGER_TIMER)."""
    end = world.clock.seconds() + seconds
    while world.clock.seconds() < end:
        if world.clock.seconds() % 1 < STEP / 2:
            im.monitor_due()
        world.clock.advance(STEP)


def test_1250_hosts_are_each_monitored_every_interval_within_the_bound(world: World) -> None:
    im, driver = cluster(world, seconds=1.0, concurrency=32)
    began = world.clock.seconds()
    run(world, im, 3 * INTERVAL)
    assert len(driver.starts) == HOSTS
    assert driver.peak <= 32
    for host, starts in driver.starts.items():
        # The first within an interval of start-up, then one per interval, none skipped.
        assert starts[0] - began <= INTERVAL + STEP, host
        gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
        assert len(starts) >= 3 and all(gap <= INTERVAL + STEP for gap in gaps), (host, gaps)
    # Spread over the interval: about HOSTS / INTERVAL (21) a second, never a burst.
    per_second = Counter(int(at) for starts in driver.starts.values() for at in starts)
    assert max(per_second.values()) <= 2 * HOSTS / INTERVAL
    assert {host.state for host in world.hosts} == {HostState.MONITORED, HostState.MONITORING}
    assert "can not keep up" not in oned_log(world)


def test_a_new_host_is_monitored_at_once_among_1250(world: World) -> None:
    im, driver = cluster(world, seconds=1.0, concurrency=32)
    run(world, im, INTERVAL / 2)
    host = world.hosts.allocate("late", "im", "vmm", "tm", True, int(world.clock.seconds()))
    added = world.clock.seconds()
    im.host_added(host)
    world.clock.advance(0)
    assert driver.starts["late"] == [added]
    run(world, im, 2 * INTERVAL)
    first, second, third = driver.starts["late"][:3]
    assert first == added and second - first <= INTERVAL  # within its interval
    assert third - second == pytest.approx(INTERVAL)


def test_the_log_says_when_the_bounds_cannot_keep_up(world: World) -> None:
    # 10 at once, 1 s each: 10 hosts/s where 1,250 hosts every 60 s need 20.8/s.
    im, driver = cluster(world, seconds=1.0, concurrency=10)
    run(world, im, INTERVAL + 1)
    assert driver.peak == 10
    lines = [line for line in oned_log(world).splitlines() if "can not keep up" in line]
    assert len(lines) == 1
    found = re.search(
        r"\[InM\]\[W\]: Host monitoring can not keep up: 1250 every 60 s need 20\.8/s, "
        r"measured ([\d.]+)/s with at most 10 at once; runs start up to (\d+) s late$",
        lines[0],
    )
    assert found, lines[0]
    assert 9.0 <= float(found[1]) <= 10.0 and int(found[2]) >= INTERVAL / 10


def test_hosts_added_in_bulk_are_spread_from_their_second_monitoring(world: World) -> None:
    driver = SlowMonitor(world, 0.1)
    im = InformationManager(
        {"im": driver}, {"im": 30.0}, world.hosts, world.clock, world.log, INTERVAL,
        concurrency=32,
    )  # fmt: skip
    now = int(world.clock.seconds())
    for n in range(HOSTS):
        im.host_added(world.hosts.allocate(f"node{n}", "im", "vmm", "tm", True, now))
    began = world.clock.seconds()
    run(world, im, 3 * INTERVAL)
    assert all(starts[0] - began < 5 for starts in driver.starts.values())  # at once
    later = [at for starts in driver.starts.values() for at in starts[1:] if at > began + INTERVAL]
    per_second = Counter(int(at) for at in later)
    assert max(per_second.values()) <= 2 * HOSTS / INTERVAL
    for starts in driver.starts.values():
        assert all(b - a <= INTERVAL + STEP for a, b in itertools.pairwise(starts))
