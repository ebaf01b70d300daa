"""Dummy drivers: every action succeeds at once, with no hypervisor and no remote host.

They make complete life cycles run on one machine (the first-run default and the base
of most tests). Each reads an optional configuration file named by ``arguments``
(template syntax, relative to the etc dir); keys may also be written in the oned.conf
vector itself:

* ``FAIL_HOSTS``: a shell-glob of host names on which every action fails;
* ``DELAY``: seconds each action takes (default 0);
* ``DELAY_JITTER``: up to this many seconds more, drawn at random for each action;
* ``FAIL_RATE``: the fraction (0 to 1) of actions that fail at random;
* ``HANG_RATE``: the fraction of actions that never answer (the driver timeout ends them);
* ``SEED``: seed of those random draws (reproducible runs);
* im_dummy: any other key is a host attribute reported by monitoring;
* vmm_dummy: ``POLL = [ USEDMEMORY=..., USEDCPU=..., NETTX=..., NETRX=... ]``;
* vmm_dummy: ``CONSOLE = xm`` (or another console method): a running VM's console is
  offered as a Xen domain's is (``ssh -t <host> -- xm console <domain>``).
"""

from __future__ import annotations

import random
from fnmatch import fnmatchcase
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred

from nebula_xr.drivers.base import Driver, DriverConfig, DriverContext, DriverError

#: Keys that configure a dummy driver rather than describe a host.
CONTROL_KEYS = {
    "FAIL_HOSTS",
    "DELAY",
    "DELAY_JITTER",
    "FAIL_RATE",
    "HANG_RATE",
    "SEED",
    "POLL",
    "CONSOLE",
}


class DummyDriver(Driver):
    def __init__(self, config: DriverConfig, context: DriverContext) -> None:
        super().__init__(config, context)
        self.settings = config.settings(context.etc_dir)
        self.fail_hosts = self.settings.get_string("FAIL_HOSTS") or ""
        self.delay = self._number("DELAY")
        self.jitter = self._number("DELAY_JITTER")
        self.fail_rate = self._number("FAIL_RATE")
        self.hang_rate = self._number("HANG_RATE")
        seed = self.settings.get_string("SEED")
        self.random = random.Random(seed)

    def _number(self, key: str) -> float:
        try:
            return float(self.settings.get_string(key) or 0)
        except ValueError as error:
            raise DriverError(f"{key} of {self.config.name} must be a number") from error

    def fails(self, host: str) -> bool:
        return bool(self.fail_hosts) and fnmatchcase(host, self.fail_hosts)

    def answer(self, hosts: list[str], action: str, value: Any = None) -> Deferred:
        """Succeed with ``value`` after DELAY, or fail if a host matches FAIL_HOSTS (or at
        random: FAIL_RATE), or never (HANG_RATE)."""
        if self.hang_rate and self.random.random() < self.hang_rate:
            return Deferred()  # cancelled by the daemon's driver timeout
        delay = self.delay + (self.random.uniform(0, self.jitter) if self.jitter else 0)
        host = next((host for host in hosts if self.fails(host)), None)
        reason = "dummy FAIL_HOSTS"
        if host is None and self.fail_rate and self.random.random() < self.fail_rate:
            host, reason = (hosts[0] if hosts else "?"), "dummy FAIL_RATE"
        if host is not None:

            def failure() -> Any:
                raise DriverError(f"{action} failed on {host} ({reason})")

            return task.deferLater(self.context.reactor, delay, failure)
        return task.deferLater(self.context.reactor, delay, lambda: value)
