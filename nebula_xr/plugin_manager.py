"""A typed facade over pluggy: the only place the daemon calls hooks.

Plugins come from the ``nebula_xr`` entry-point group (the shipped drivers included).
:meth:`PluginManager.load` also runs pluggy's ``check_pending`` so that a misspelt
hook implementation fails at start-up instead of being silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pluggy

from nebula_xr import PROJECT_NAME, hookspecs
from nebula_xr.database import PluginTable
from nebula_xr.drivers.base import (
    INFORMATION,
    TRANSFER,
    VIRTUAL_MACHINE,
    Driver,
    DriverConfig,
    DriverContext,
)
from nebula_xr.scheduling import Scheduler, SchedulerConfig, SchedulerContext

_KIND_NAMES = {
    INFORMATION: "information (IM)",
    VIRTUAL_MACHINE: "VM (VMM)",
    TRANSFER: "transfer (TM)",
}


class PluginError(Exception):
    """A plugin named in oned.conf is not installed or does not do what it is asked."""


@dataclass(frozen=True)
class BrokenPlugin:
    """An installed plugin that could not be loaded: only an error if oned.conf names it."""

    name: str
    distribution: str
    version: str
    error: str

    @property
    def package(self) -> str:
        return f"{self.distribution} {self.version}".strip() or "unknown package"


@dataclass(frozen=True)
class PluginInfo:
    name: str
    distribution: str
    version: str
    hooks: tuple[str, ...]


@dataclass(frozen=True)
class XmlRpcMethod:
    """A method a plugin adds to the API (see ``nebula_xr_xmlrpc_methods``)."""

    name: str
    #: ``handler(uid, *params)``: returns the reply (1.4 style ``[ok, ...]``) or a Deferred.
    handler: Callable[..., Any]
    #: xmlrpc-c signature of the reply and the parameters after the session: ``"A:i"``.
    signature: str
    help: str = ""


class PluginManager:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        #: Installed plugins that failed to import or to register, by entry-point name.
        self.broken: dict[str, BrokenPlugin] = {}

    def load(self) -> None:
        """Register every installed plugin and check their hook implementations.

        A plugin that fails (import error, misspelt hook) is set aside in ``broken``:
        it stops the daemon only if oned.conf names it.
        """
        for entry_point in metadata.entry_points(group=PROJECT_NAME):
            try:
                self.pm.load_setuptools_entrypoints(PROJECT_NAME, name=entry_point.name)
            except Exception as error:  # whatever a third-party import raises
                self._set_aside(entry_point.name, entry_point.dist, error)
        while True:
            try:
                self.pm.check_pending()
                return
            except pluggy.PluginValidationError as error:
                name = self.pm.get_name(error.plugin) or repr(error.plugin)
                distributions = dict(self.pm.list_plugin_distinfo())
                self.pm.unregister(error.plugin)
                dist = distributions.get(error.plugin)
                self._set_aside(name, dist, error)

    def _set_aside(self, name: str, dist: Any, error: Exception) -> None:
        self.broken[name] = BrokenPlugin(
            name=name,
            distribution=getattr(dist, "project_name", None) or getattr(dist, "name", "") or "",
            version=getattr(dist, "version", "") or "",
            error=" ".join(f"{type(error).__name__}: {error}".split()),  # one line
        )

    def register(self, plugin: object, name: str) -> None:
        """Register a plugin object directly (embedding, tests)."""
        self.pm.register(plugin, name)
        self.pm.check_pending()

    def installed(self) -> list[PluginInfo]:
        distributions = {plugin_name: dist for plugin_name, dist in self.pm.list_plugin_distinfo()}
        result = []
        for name, plugin in sorted(self.pm.list_name_plugin(), key=lambda item: item[0]):
            if plugin is None:
                continue
            dist = distributions.get(plugin)
            hooks = tuple(sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or ()))
            result.append(
                PluginInfo(
                    name=name,
                    distribution=dist.project_name if dist is not None else "",
                    version=dist.version if dist is not None else "",
                    hooks=hooks,
                )
            )
        return result

    def _names(self) -> str:
        return ", ".join(info.name for info in self.installed()) or "none"

    def require(self, plugin: str, what: str) -> None:
        """Raise PluginError unless ``plugin`` is installed and loaded; ``what`` says
        what oned.conf wants it for."""
        broken = self.broken.get(plugin)
        if broken is not None:
            raise PluginError(
                f"Plugin {plugin!r} (package {broken.package}) for the {what} is broken: "
                f"{broken.error}"
            )
        if self.pm.get_plugin(plugin) is None:
            raise PluginError(
                f"No plugin named {plugin!r} for the {what}; installed plugins: {self._names()}"
            )

    # -- drivers --------------------------------------------------------------------------

    def require_driver(self, kind: str, name: str, plugin: str) -> None:
        """Check, before anything starts, that the plugin of a driver entry can be used."""
        self.require(plugin, f"{_KIND_NAMES[kind]} driver {name!r}")

    def make_driver(self, config: DriverConfig, context: DriverContext) -> Driver:
        what = f"{_KIND_NAMES[config.kind]} driver {config.name!r}"
        self.require(config.plugin, what)
        hook = {
            INFORMATION: "nebula_xr_im_driver",
            VIRTUAL_MACHINE: "nebula_xr_vmm_driver",
            TRANSFER: "nebula_xr_tm_driver",
        }[config.kind]
        driver = self._call_named(hook, config.plugin, config=config, context=context)
        if driver is None:
            raise PluginError(f"Plugin {config.plugin!r} does not provide the {what}")
        return driver

    def make_scheduler(self, config: SchedulerConfig, context: SchedulerContext) -> Scheduler:
        self.require(config.plugin, "scheduler")
        scheduler = self._call_named(
            "nebula_xr_scheduler", config.plugin, config=config, context=context
        )
        if scheduler is None:
            raise PluginError(f"Plugin {config.plugin!r} does not provide a scheduler")
        return scheduler

    def plugin_tables(self, config: SchedulerConfig) -> list[type[PluginTable]]:
        """The tables the scheduler plugin declares (see ``nebula_xr_tables``)."""
        plugin = config.plugin
        self.require(plugin, "scheduler")
        tables = list(self._call_named("nebula_xr_tables", plugin, config=config) or ())
        for table in tables:
            name = getattr(getattr(table, "_meta", None), "table_name", "")
            if not (
                isinstance(table, type)
                and issubclass(table, PluginTable)
                and re.fullmatch(r"[a-z][a-z0-9_]*", name)
                and name.startswith(f"{plugin}_")
            ):
                raise PluginError(
                    f"Plugin {plugin!r} declares table {name or table!r}: a plugin's tables are "
                    f"PluginTable models named {plugin}_<name>"
                )
        return tables

    # -- the API --------------------------------------------------------------------------

    def add_xmlrpc_methods(
        self,
        registry: Any,
        scheduler: Scheduler | None,
        guard: Callable[[Callable[..., Any]], Callable[..., Any]],
    ) -> list[str]:
        """Register the plugins' methods on ``registry`` (a ``MethodRegistry``).

        ``guard`` turns a plugin handler ``(uid, *params)`` into a registry method
        ``(context, session, *params)`` that authenticates the session exactly as the
        core's 1.4 methods do and refuses unauthenticated callers before the plugin runs.
        """
        names = []
        for methods in self.pm.hook.nebula_xr_xmlrpc_methods(scheduler=scheduler):
            for method in methods or ():
                returns, _colon, params = method.signature.partition(":")
                try:
                    registry.register(
                        method.name,
                        guard(method.handler),
                        f"{returns}:s{params}",
                        method.help,
                        takes_context=True,
                    )
                except ValueError as error:
                    raise PluginError(f"Can not add XML-RPC method: {error}") from error
                names.append(method.name)
        return names

    def _call_named(self, hook_name: str, plugin_name: str, **arguments: Any) -> Any:
        """Call the implementation of ``hook_name`` of the plugin oned.conf names, only.

        Not a broadcast: another installed plugin (buggy, or hostile) answering every call
        first must not be able to build someone else's driver or scheduler.
        """
        plugin = self.pm.get_plugin(plugin_name)
        caller: Any = getattr(self.pm.hook, hook_name)
        for implementation in caller.get_hookimpls():
            if implementation.plugin is plugin and not (
                implementation.hookwrapper or implementation.wrapper
            ):
                accepted = {name: arguments[name] for name in implementation.argnames}
                return implementation.function(**accepted)
        return None
