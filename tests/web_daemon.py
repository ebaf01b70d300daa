"""``python -m tests.web_daemon --conf ...``: the daemon, with a stand-in monitoring history.

The monitoring history is another piece of work (``nebula_xr.monitoring_history``); until
it is merged, the web console's plots are tested against this stand-in, which samples the
real values the daemon's monitoring and polling put on hosts and VMs, every half second.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import LoopingCall

import nebula_xr.daemon
from nebula_xr.model import VMState


class SampledHistory:
    """``samples(kind, oid, since)`` as the monitoring history answers it."""

    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self.kept: dict[tuple[str, int], list[dict[str, float]]] = {}
        self._sampling = LoopingCall(self.sample)
        daemon.reactor.callWhenRunning(self._sampling.start, 0.5)

    def sample(self) -> None:
        now = self.daemon.clock.seconds()
        for host in self.daemon.hosts:
            if not host.last_mon_time:
                continue
            attributes = host.attributes
            self.kept.setdefault(("host", host.oid), []).append(
                {
                    "time": now,
                    "used_cpu": float(attributes.get("USEDCPU", 0)),
                    "max_cpu": float(attributes.get("TOTALCPU", 0)),
                    "used_memory": float(attributes.get("USEDMEMORY", 0)),
                    "max_memory": float(attributes.get("TOTALMEMORY", 0)),
                }
            )
        for vm in self.daemon.vms:
            if vm.state is VMState.ACTIVE and vm.last_poll:
                self.kept.setdefault(("vm", vm.oid), []).append(
                    {
                        "time": now,
                        "cpu": float(vm.cpu),
                        "memory": float(vm.memory),
                        "net_tx": float(vm.net_tx),
                        "net_rx": float(vm.net_rx),
                    }
                )

    def samples(self, kind: str, oid: int, since: float | None = None) -> list[dict[str, float]]:
        return [s for s in self.kept.get((kind, oid), []) if since is None or s["time"] >= since]


_build = nebula_xr.daemon.Daemon._build


def _build_with_history(self: Any) -> None:
    self.monitoring = SampledHistory(self)
    _build(self)


nebula_xr.daemon.Daemon._build = _build_with_history

if __name__ == "__main__":
    nebula_xr.daemon.main()
