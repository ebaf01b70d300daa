"""nebula-xr-haizea: Haizea's leases as a nebula-xr scheduler plugin.

``pip install ./plugins/sched_haizea``, then ``SCHEDULER = [ plugin = "haizea" ]`` in
oned.conf. VMs ask for leases with Haizea 1.0's ``HAIZEA`` template vector (see
:mod:`nebula_xr_haizea.request`); the planner is :mod:`nebula_xr_haizea.planner` and
the daemon side :mod:`nebula_xr_haizea.scheduler`.
"""

from __future__ import annotations

from nebula_xr import hookimpl
from nebula_xr.database import PluginTable
from nebula_xr.plugin_manager import XmlRpcMethod
from nebula_xr.scheduling import Scheduler, SchedulerConfig, SchedulerContext
from nebula_xr_haizea import api, store
from nebula_xr_haizea.scheduler import HaizeaScheduler

PLUGIN_NAME = "haizea"


@hookimpl
def nebula_xr_scheduler(config: SchedulerConfig, context: SchedulerContext) -> Scheduler | None:
    if config.plugin == PLUGIN_NAME:
        return HaizeaScheduler(config, context)
    return None


@hookimpl
def nebula_xr_tables(config: SchedulerConfig) -> list[type[PluginTable]]:
    return list(store.TABLES) if config.plugin == PLUGIN_NAME else []


@hookimpl
def nebula_xr_xmlrpc_methods(scheduler: Scheduler | None) -> list[XmlRpcMethod]:
    if isinstance(scheduler, HaizeaScheduler):
        return api.methods(scheduler)
    return []
