"""Running a periodic driver action for many objects at a steady pace (host monitoring, VM
polling).

Each key (a host or VM id) is due once per ``interval``: its next run is due one interval
after its last one started, so runs stay spread the way they were first spread. Keys added
together (at start-up) are spread evenly over the next interval when they are more than
can run at once; a key added with :meth:`Cadence.run_soon` (a new host) goes first, and
its next run comes within the interval at a phase proper to the key (so hosts added in
bulk are spread from their second monitoring on). At
most ``concurrency`` runs are under way at any time. When runs start later than their due
time by more than a tenth of the interval, the bounds cannot keep up: the log says so once
per interval with the measured rate, rather than silently stretching.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable, Iterable
from typing import Any

from twisted.internet.defer import Deferred

#: The fractional part of the golden ratio: consecutive ids get well-spread phases.
_GOLDEN = 0.6180339887498949
#: How late (as a fraction of the interval) a run may start before it counts as falling behind.
LATENESS_TOLERANCE = 0.1


class Cadence:
    def __init__(
        self,
        clock: Any,
        interval: float,
        concurrency: int,
        start: Callable[[Any], Deferred[Any] | None],
        what: str,
        report: Callable[[str], None],
    ) -> None:
        """``start(key)`` begins one run and returns a Deferred firing when it is over, or
        None when the key no longer needs runs (it is dropped until added again)."""
        self.clock = clock
        self.interval = max(float(interval), 0.001)
        self.concurrency = max(int(concurrency), 1)
        self._start = start
        self._what = what
        self._report = report
        #: key -> due time; the heap may hold outdated entries for a key (skipped).
        self._due: dict[Hashable, float] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._order = itertools.count()
        self._running: set[Hashable] = set()
        self._wakeup: Any = None
        self._window_start = float(clock.seconds())
        self._window_runs = 0
        self._window_lateness = 0.0
        #: The most runs under way at once so far (for benchmarks and tests).
        self.peak = 0

    def __contains__(self, key: Hashable) -> bool:
        return key in self._due or key in self._running

    def __len__(self) -> int:
        return len(self._due) + len(self._running)

    @property
    def running(self) -> int:
        return len(self._running)

    def add(self, due: Iterable[tuple[Hashable, float]]) -> None:
        """Schedule keys not yet scheduled, each at its due time; more keys than can run at
        once (at start-up) are spread evenly over the next interval, in due order."""
        now = self.clock.seconds()
        fresh = sorted((when, n, key) for n, (key, when) in enumerate(due) if key not in self)
        if len(fresh) <= self.concurrency:
            for when, _n, key in fresh:
                self._schedule(key, max(when, now))
        else:
            step = self.interval / len(fresh)
            for position, (_when, _n, key) in enumerate(fresh):
                self._schedule(key, now + position * step)
        self._pump()

    def run_soon(self, key: Hashable) -> None:
        """Run ``key`` as soon as the concurrency bound allows, before the others."""
        if key in self._running:
            return
        self._schedule(key, float("-inf"))
        self._pump()

    def discard(self, key: Hashable) -> None:
        self._due.pop(key, None)

    def stop(self) -> None:
        if self._wakeup is not None and self._wakeup.active():
            self._wakeup.cancel()
        self._wakeup = None

    def _schedule(self, key: Hashable, when: float) -> None:
        self._due[key] = when
        heapq.heappush(self._heap, (when, next(self._order), key))

    def _pump(self) -> None:
        now = self.clock.seconds()
        heap = self._heap
        while heap and len(self._running) < self.concurrency:
            when, _n, key = heap[0]
            if self._due.get(key) != when:
                heapq.heappop(heap)  # rescheduled or discarded since
                continue
            if when > now:
                break
            heapq.heappop(heap)
            del self._due[key]
            self._begin(key, when, now)
        self._check_pace(now)
        self._arm(now)

    def _begin(self, key: Hashable, due: float, now: float) -> None:
        done = self._start(key)
        if done is None:
            return
        self._running.add(key)
        self.peak = max(self.peak, len(self._running))
        if due != float("-inf"):
            self._window_lateness = max(self._window_lateness, now - due)

        # After a run out of turn (a new host), the next comes at the key's own phase of
        # the interval, so that hosts added together do not stay due together.
        step = self.interval * _phase(key) if due == float("-inf") else self.interval

        def finished(_result: Any) -> None:
            self._running.discard(key)
            self._window_runs += 1
            if key not in self._due:
                self._schedule(key, now + step)
            self._pump()

        done.addBoth(finished)

    def _arm(self, now: float) -> None:
        """Wake up at the next due time (when a run can start then)."""
        if self._wakeup is not None and self._wakeup.active():
            self._wakeup.cancel()
        self._wakeup = None
        if len(self._running) >= self.concurrency:
            return  # a run finishing pumps again
        while self._heap and self._due.get(self._heap[0][2]) != self._heap[0][0]:
            heapq.heappop(self._heap)
        if self._heap:
            self._wakeup = self.clock.callLater(max(0.0, self._heap[0][0] - now), self._pump)

    def _check_pace(self, now: float) -> None:
        elapsed = now - self._window_start
        if elapsed < self.interval:
            return
        waiting = [when for when in self._due.values() if when != float("-inf")]
        lateness = max(self._window_lateness, now - min(waiting) if waiting else 0.0)
        if lateness > LATENESS_TOLERANCE * self.interval:
            keys = len(self)
            self._report(
                f"{self._what} can not keep up: {keys} every {self.interval:g} s need "
                f"{keys / self.interval:.1f}/s, measured {self._window_runs / elapsed:.1f}/s "
                f"with at most {self.concurrency} at once; runs start up to {lateness:.0f} s late"
            )
        self._window_start = now
        self._window_runs = 0
        self._window_lateness = 0.0


def _phase(key: Hashable) -> float:
    """A fraction of the interval in (0, 1) proper to ``key``."""
    return ((hash(key) + 1) * _GOLDEN) % 1.0 or 0.5
