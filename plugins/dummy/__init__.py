"""Dummy drivers: every action succeeds at once, with no hypervisor and no remote host.

They make complete life cycles run on one machine (the first-run default and the base
of most tests). Each reads an optional configuration file named by ``arguments``
(template syntax, relative to the etc dir); keys may also be written in the oned.conf
vector itself:

* ``FAIL_HOSTS``: a shell-glob of host names on which every action fails;
* ``DELAY``: seconds each action takes (default 0);
* im_dummy: any other key is a host attribute reported by monitoring;
* vmm_dummy: ``POLL = [ USEDMEMORY=..., USEDCPU=..., NETTX=..., NETRX=... ]``.
"""

from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred

from nebula_xr.drivers.base import Driver, DriverConfig, DriverContext, DriverError

#: Keys that configure a dummy driver rather than describe a host.
CONTROL_KEYS = {"FAIL_HOSTS", "DELAY", "POLL"}


class DummyDriver(Driver):
    def __init__(self, config: DriverConfig, context: DriverContext) -> None:
        super().__init__(config, context)
        self.settings = config.settings(context.etc_dir)
        self.fail_hosts = self.settings.get_string("FAIL_HOSTS") or ""
        try:
            self.delay = float(self.settings.get_string("DELAY") or 0)
        except ValueError as error:
            raise DriverError(f"DELAY of {config.name} must be a number") from error

    def fails(self, host: str) -> bool:
        return bool(self.fail_hosts) and fnmatchcase(host, self.fail_hosts)

    def answer(self, hosts: list[str], action: str, value: Any = None) -> Deferred:
        """Succeed with ``value`` after DELAY, or fail if a host matches FAIL_HOSTS."""
        host = next((host for host in hosts if self.fails(host)), None)
        if host is not None:

            def failure() -> Any:
                raise DriverError(f"{action} failed on {host} (dummy FAIL_HOSTS)")

            return task.deferLater(self.context.reactor, self.delay, failure)
        return task.deferLater(self.context.reactor, self.delay, lambda: value)
