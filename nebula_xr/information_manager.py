"""The information manager (IM): monitors hosts through their IM drivers.

Each host that is not DISABLED is monitored once per HOST_MONITORING_INTERVAL, whatever
the number of hosts: a :class:`~nebula_xr.cadence.Cadence` starts each monitoring one
interval after the host's previous one, at most MONITORING_CONCURRENCY at once (the
drivers' remote runner bounds the commands per host), spread over the interval, and logs
when the bounds cannot keep up. A new host is monitored at once (1.2 waited a whole
interval). The timer tick (``monitor_due``) only picks up hosts not yet on the cadence.
A reply updates ``host_attributes`` and the capacity maxima; a failure, or no answer
within the driver's timeout, counts against the host: after HOST_ERROR_THRESHOLD failures
in a row (1 by default, as 1.2) it is in ERROR, before that it keeps its state. The last
failure's message is the host's ``ERROR`` attribute (shown by ``onehost show``) until a
monitoring succeeds.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from nebula_xr.cadence import Cadence
from nebula_xr.drivers.base import InformationDriver
from nebula_xr.drivers.invoke import invoke
from nebula_xr.log import Log
from nebula_xr.model import Host, HostState, leading_int
from nebula_xr.pools import HostPool
from nebula_xr.template import interned

#: A host stuck in MONITORING this long is given another chance (1.2's value).
MONITORING_EXPIRY = 600
#: Monitorings under way at once unless MONITORING_CONCURRENCY says otherwise.
DEFAULT_CONCURRENCY = 32
#: The host attribute holding the last monitoring failure (as later OpenNebulas do).
ERROR_ATTRIBUTE = "ERROR"


class InformationManager:
    def __init__(
        self,
        drivers: dict[str, InformationDriver],
        timeouts: dict[str, float],
        hosts: HostPool,
        clock: Any,
        log: Log,
        interval: int,
        on_monitored: Callable[[Host], None] | None = None,
        error_threshold: int = 1,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self.drivers = drivers
        self.timeouts = timeouts
        self.hosts = hosts
        self.clock = clock
        self.log = log
        self.interval = interval
        self.on_monitored = on_monitored
        self.cadence = Cadence(
            clock,
            interval,
            concurrency,
            self._start,
            "Host monitoring",
            lambda message: log.warning("InM", message),
        )
        #: Fired when the monitoring under way of a host is answered.
        self._answers: dict[int, Deferred[None]] = {}
        self.error_threshold = error_threshold
        #: Monitoring failures in a row, and the state each host had before its
        #: current monitoring (where a failure below the threshold leaves it).
        self._failures: dict[int, int] = {}
        self._before: dict[int, HostState] = {}

    def host_added(self, host: Host) -> None:
        """Monitor a new host at once (on the next turn: the request adding it answers
        first)."""
        self.clock.callLater(0, self.cadence.run_soon, host.oid)

    def monitor_due(self) -> None:
        """Timer tick: put the hosts not on the cadence yet (at start-up, re-enabled or
        recovered from a missing driver) on it, due one interval after their last
        monitoring."""
        self.cadence.add(
            (host.oid, host.last_mon_time + self.interval)
            for host in self.hosts
            if host.state is not HostState.DISABLED and host.oid not in self.cadence
        )

    def stop(self) -> None:
        self.cadence.stop()

    def _start(self, hid: int) -> Deferred[None] | None:
        """Start the cadence's monitoring of ``hid``; None when it is not to be monitored."""
        host = self.hosts.get(hid)
        if host is None or host.state is HostState.DISABLED:
            return None
        if host.state is HostState.MONITORING and hid not in self._answers:
            # Left in MONITORING by a daemon that stopped: given another chance late.
            if self.clock.seconds() - host.last_mon_time < MONITORING_EXPIRY:
                return None
            self.hosts.set_state(host, HostState.INIT)
        return self._monitor(host)

    def _monitor(self, host: Host) -> Deferred[None] | None:
        driver = self.drivers.get(host.im_mad)
        if driver is None:
            self.log.error("InM", f"Could not find information driver {host.im_mad}")
            self.hosts.set_state(host, HostState.ERROR)
            return None
        self.log.debug("InM", f"Monitoring host {host.name} ({host.oid})")
        self._before[host.oid] = host.state
        self.hosts.set_state(host, HostState.MONITORING)
        hid = host.oid

        def failed(message: str, _failure: Failure) -> None:
            self._answered(hid, None, message)

        invoke(
            self.clock,
            self.timeouts.get(host.im_mad, 300.0),
            driver.monitor,
            hid,
            host.name,
            on_success=lambda attributes: self._answered(hid, attributes, ""),
            on_failure=failed,
        )
        answered = self._answers[hid] = Deferred()
        return answered

    def _answered(self, hid: int, attributes: dict[str, str] | None, message: str) -> None:
        try:
            self._apply(hid, attributes, message)
        finally:
            answered = self._answers.pop(hid, None)
            if answered is not None:
                answered.callback(None)

    def _apply(self, hid: int, attributes: dict[str, str] | None, message: str) -> None:
        host = self.hosts.get(hid)
        if host is None:
            return
        now = self.clock.seconds()
        host.last_mon_time = int(now)
        if attributes is None or not isinstance(attributes, dict):
            state = self._failed(host, message, now)
        else:
            self._failures.pop(hid, None)
            self.hosts.remove_attribute(host, ERROR_ATTRIBUTE)
            for name, value in attributes.items():
                # Interned: a thousand hosts report the same names and many equal values.
                host.attributes[interned(str(name).upper())] = interned(str(value))
            host.shares.max_cpu = leading_int(host.attributes.get("TOTALCPU"))
            host.shares.max_mem = leading_int(host.attributes.get("TOTALMEMORY"))
            state = HostState.MONITORED
        if host.state is HostState.DISABLED:
            self.hosts.save(host)
        else:
            self.hosts.set_state(host, state)
        if state is HostState.MONITORED and self.on_monitored is not None:
            self.on_monitored(host)

    def in_error(self, host: Host) -> bool:
        """Whether ``host`` has failed HOST_ERROR_THRESHOLD monitorings in a row (also
        while a new monitoring of it is under way)."""
        if host.state is HostState.MONITORING:
            return self._before.get(host.oid) is HostState.ERROR
        return host.state is HostState.ERROR

    def _failed(self, host: Host, message: str, now: float) -> HostState:
        """Count a failure; the state the host goes to."""
        failures = self._failures[host.oid] = self._failures.get(host.oid, 0) + 1
        message = message.replace("\n", " ").strip() or "unknown error"
        host.attributes[ERROR_ATTRIBUTE] = f"{time.ctime(now)}: {message}"
        if failures >= self.error_threshold:
            self.log.error("InM", f"Error monitoring host {host.oid} : {message}")
            return HostState.ERROR
        self.log.warning(
            "InM",
            f"Error monitoring host {host.oid} ({failures} of {self.error_threshold} "
            f"failures before ERROR): {message}",
        )
        before = self._before.get(host.oid, HostState.INIT)
        return HostState.INIT if before is HostState.MONITORING else before
