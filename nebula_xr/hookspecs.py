"""Every hook a nebula-xr plugin can implement, in one place.

A plugin is a module (or object) registered under the ``nebula_xr`` entry-point group;
its entry-point name is what oned.conf names in ``executable`` (drivers) or in
``SCHEDULER = [ plugin = ... ]``. Implementations are marked with
``from nebula_xr import hookimpl``. The drivers shipped with nebula-xr are plugins
like any other (``nebula-xr --list-plugins`` shows what is installed).

Most hooks are *builders*: the daemon calls the implementation of the one plugin
oned.conf names (by its entry-point name) to build that driver or scheduler; no other
plugin is asked, so no plugin can take over another's driver. The plugin returns the
object, or None when it cannot build it (a clear start-up error). Only
``nebula_xr_xmlrpc_methods`` is asked of every plugin, once at start-up.

There are no event hooks: VM and host changes go to the one scheduler oned.conf
configured, through the event methods of :class:`~nebula_xr.scheduling.Scheduler`
(``vm_changed``, ``host_changed``, ``host_monitored``), so a plugin keeps its state in
the objects it built, never in its module.

This module is the reference: ``docs/plugins.md`` repeats each signature, and a test
fails when the two disagree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

from nebula_xr import PROJECT_NAME

if TYPE_CHECKING:
    from nebula_xr.database import PluginTable
    from nebula_xr.drivers.base import (
        DriverConfig,
        DriverContext,
        InformationDriver,
        TransferDriver,
        VirtualMachineDriver,
    )
    from nebula_xr.plugin_manager import XmlRpcMethod
    from nebula_xr.scheduling import Scheduler, SchedulerConfig, SchedulerContext

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


# --- drivers -------------------------------------------------------------------------


@hookspec
def nebula_xr_im_driver(config: DriverConfig, context: DriverContext) -> InformationDriver | None:
    """Build the information (host monitoring) driver of one ``IM_MAD`` entry.

    Called once per ``IM_MAD`` that names this plugin (``config.plugin``, its
    entry-point name), at start-up; return a
    :class:`~nebula_xr.drivers.base.InformationDriver`.
    """


@hookspec
def nebula_xr_vmm_driver(
    config: DriverConfig, context: DriverContext
) -> VirtualMachineDriver | None:
    """Build the virtual machine driver of one ``VM_MAD`` entry.

    Called once per ``VM_MAD`` that names this plugin, at start-up. ``config.type``
    carries the 1.2 ``type`` (xen, kvm...). Return a
    :class:`~nebula_xr.drivers.base.VirtualMachineDriver`.
    """


@hookspec
def nebula_xr_tm_driver(config: DriverConfig, context: DriverContext) -> TransferDriver | None:
    """Build the transfer driver of one ``TM_MAD`` entry.

    Called once per ``TM_MAD`` that names this plugin, at start-up. Return a
    :class:`~nebula_xr.drivers.base.TransferDriver`.
    """


# --- scheduling ----------------------------------------------------------------------


@hookspec
def nebula_xr_scheduler(config: SchedulerConfig, context: SchedulerContext) -> Scheduler | None:
    """Build the scheduler oned.conf selects with ``SCHEDULER = [ plugin = ... ]``.

    Called once at start-up unless the scheduler is switched off (``plugin = "none"``,
    for an external mm_sched or Haizea). ``context`` gives the clock, read-only views of
    the pools and the user actions (deploy, migrate, suspend, resume, shutdown...), so a
    scheduler can place VMs and also enact leases. Called only on the plugin
    ``config.plugin`` names; return a :class:`~nebula_xr.scheduling.Scheduler`.
    """


@hookspec
def nebula_xr_tables(config: SchedulerConfig) -> list[type[PluginTable]]:
    """The tables the scheduler plugin keeps in one.db, for what it cannot rebuild from
    the VMs and hosts after a restart.

    Called only on the plugin ``SCHEDULER = [ plugin = ... ]`` names (``config`` is that
    vector, as ``nebula_xr_scheduler`` gets it), at start-up, before one.db is opened.
    Each table is a :class:`~nebula_xr.database.PluginTable` (a peewee model) named after
    the plugin (``<plugin>_<name>``); the daemon creates those missing and leaves the 1.2
    tables untouched. The scheduler reads and writes them through its context's ``store``
    (:class:`~nebula_xr.database.PluginStore`), which refuses any other table; writes join
    the daemon's group commits. Return an empty list (or do not
    implement the hook) for no table.
    """


# --- the API -------------------------------------------------------------------------


@hookspec
def nebula_xr_xmlrpc_methods(scheduler: Scheduler | None) -> list[XmlRpcMethod]:
    """XML-RPC methods this plugin adds to the daemon's API.

    Called once at start-up, after the drivers and the scheduler are built; ``scheduler``
    is the one oned.conf selected (None when scheduling is off), so a scheduler plugin
    can serve its own state. Each :class:`~nebula_xr.plugin_manager.XmlRpcMethod` is
    registered as ``name`` with the session string as first parameter, checked by the
    same rules as the core's methods; its handler gets the caller's uid instead of the
    session, then the parameters of ``signature``. Names must be new (prefix them with
    the plugin's name); every plugin's list is registered.
    """
