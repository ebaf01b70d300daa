"""The daemon: assembles the pipeline and runs it as a Twisted MultiService.

request manager → dispatch manager → life-cycle manager → VMM/TM managers → drivers,
with driver outcomes flowing back the same way as events. Around it: one.db, the
information manager's and the VM poll's timers, the scheduler plugin, and the XML-RPC
listener. Services start in that order and stop in reverse, so the listener is the
last thing to open and the first to close.
"""

from __future__ import annotations

import fcntl
import gc
import os
import resource
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn, TextIO

import click
from twisted.application.internet import TimerService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred, DeferredList

from nebula_xr import __version__, xmldoc
from nebula_xr.access import Access
from nebula_xr.api14 import RequestManager14
from nebula_xr.config import Config, ConfigError, DriverEntry, Layout, is_loopback, load_config
from nebula_xr.database import Database, DatabaseError, PluginStore
from nebula_xr.dispatch_manager import DispatchManager, VMStates
from nebula_xr.drivers.base import (
    INFORMATION,
    TRANSFER,
    VIRTUAL_MACHINE,
    Driver,
    DriverConfig,
    DriverContext,
    DriverError,
)
from nebula_xr.drivers.remote import RemoteRunner
from nebula_xr.file_writer import FileWriter
from nebula_xr.hook_manager import HookManager, hooks_directory
from nebula_xr.host_failure import Fencing
from nebula_xr.information_manager import InformationManager
from nebula_xr.lifecycle_manager import LifeCycleManager
from nebula_xr.listing import keep_big_buffers_out_of_the_heap
from nebula_xr.log import VM_LOGS_OPEN, Log
from nebula_xr.migrate import db_command
from nebula_xr.model import Host
from nebula_xr.monitoring_history import MonitoringHistory
from nebula_xr.plugin_manager import PluginError, PluginManager
from nebula_xr.pools import HostPool, VirtualMachinePool, VirtualNetworkPool
from nebula_xr.reconciliation import Reconciler
from nebula_xr.request_manager import RequestManager
from nebula_xr.scheduler_service import SchedulerService
from nebula_xr.scheduling import Scheduler
from nebula_xr.sessions import Authenticator, FailureThrottle
from nebula_xr.standby import ActiveLock, Standby
from nebula_xr.template import Template, TemplateSyntaxError
from nebula_xr.transfer_manager import TransferManager
from nebula_xr.transport.http import listen_tcp
from nebula_xr.transport.tls import TLSSetupError, server_options
from nebula_xr.transport.xmlrpc import MethodRegistry, make_factory
from nebula_xr.users import BootstrapError, UserPool
from nebula_xr.views import DaemonSchedulerContext
from nebula_xr.virtual_machine_manager import VirtualMachineManager


class StartupError(Exception):
    """The daemon cannot start; the message is for the user."""


_BACKLOG = 1024


class _ListenerService(Service):
    """The XML-RPC listener; ``port`` is the bound port once started (PORT = 0 works).

    With ``tls`` (a context factory) it serves https through Twisted's TLS.
    """

    def __init__(
        self, reactor: Any, port: int, interface: str, factory: Any, tls: Any = None
    ) -> None:
        self.reactor = reactor
        self.requested_port = port
        self.interface = interface
        self.factory = factory
        self.tls = tls
        self.listening: Any = None

    @property
    def port(self) -> int:
        return self.listening.getHost().port

    @property
    def scheme(self) -> str:
        return "http" if self.tls is None else "https"

    def startService(self) -> None:
        super().startService()
        # A deep accept queue: with Twisted's default of 50, a burst of connections
        # (a flood the limits would sort out) makes clients wait for SYN retries.
        if self.tls is None:
            self.listening = listen_tcp(
                self.reactor, self.requested_port, self.factory, _BACKLOG, self.interface
            )
        else:
            self.listening = self.reactor.listenSSL(
                self.requested_port, self.factory, self.tls, _BACKLOG, self.interface
            )

    def stopService(self) -> Deferred | None:
        super().stopService()
        return self.listening.stopListening() if self.listening is not None else None


class _DriverService(Service):
    """Stops the drivers (their connections and processes) when the daemon stops."""

    def __init__(self, drivers: list[Driver]) -> None:
        self.drivers = drivers

    def stopService(self) -> Deferred:
        super().stopService()
        stopping = [d for d in (driver.stop() for driver in self.drivers) if d is not None]
        return DeferredList(stopping, consumeErrors=True)


class Daemon(MultiService):
    def __init__(
        self,
        config: Config,
        plugins: PluginManager,
        *,
        reactor: Any = None,
        clock: Any = None,
        log: Log | None = None,
        frontend: str | None = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.plugins = plugins
        self.reactor = reactor
        self.clock = clock or reactor
        layout = config.layout
        for directory in (layout.var_dir, layout.log_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.vm_dir = lambda vid: layout.var_dir / str(vid)
        self.files = FileWriter(reactor)
        self.log = log or Log(
            layout.log_dir / "oned.log",
            config.debug_level,
            lambda vid: self.vm_dir(vid) / "vm.log",
            reactor=reactor,
        )
        self.frontend = frontend or socket.gethostname()
        self.db = Database(
            layout.database,
            wal=config.db_wal,
            reactor=reactor,
            on_error=self._db_error,
            busy_retry=config.db_busy_timeout,
            postgresql=config.postgresql,
        )
        self._build()

    def _db_error(self, message: str) -> None:
        self.log.error("ONE", message)

    # -- assembly -------------------------------------------------------------------------

    def _build(self) -> None:
        config, log, clock = self.config, self.log, self.clock
        plugin_tables = []
        if config.scheduler is not None:
            try:
                plugin_tables = self.plugins.plugin_tables(config.scheduler)
            except PluginError as error:
                raise StartupError(str(error)) from error
        self.plugin_store = PluginStore(self.db, plugin_tables)
        try:
            self.db.open(plugin_tables)
        except DatabaseError as error:
            raise StartupError(str(error)) from error
        self.vms = VirtualMachinePool(self.db, config.layout.var_dir)
        self.hosts = HostPool(self.db)
        self.networks = VirtualNetworkPool(self.db, config.mac_prefix, config.network_size)
        self.vms.networks = self.networks  # an undone allocation gives its leases back
        self.users = UserPool(self.db)
        for pool in (self.vms, self.hosts, self.networks, self.users):
            pool.load()
        self.monitoring = MonitoringHistory(self.db, clock, config.monitoring_retention)
        self.access = self._authentication()

        drivers = self._make_drivers()
        timeouts = {kind: {} for kind in (INFORMATION, VIRTUAL_MACHINE, TRANSFER)}
        by_kind: dict[str, dict[str, Any]] = {kind: {} for kind in timeouts}
        for driver in drivers:
            by_kind[driver.config.kind][driver.config.name] = driver
            timeouts[driver.config.kind][driver.config.name] = driver.config.timeout

        self.vmm = VirtualMachineManager(
            by_kind[VIRTUAL_MACHINE], timeouts[VIRTUAL_MACHINE], self.vms, clock, log, self.files
        )
        self.tm = TransferManager(
            by_kind[TRANSFER], timeouts[TRANSFER], self.vms, clock, log, self.frontend, self.files
        )
        self.states = VMStates(self.vms, self.networks, clock, log)
        self.lcm = LifeCycleManager(
            self.vms,
            self.hosts,
            self.vmm,
            self.tm,
            self.states,
            clock,
            log,
            config.vm_polling_interval,
            config.monitoring_concurrency,
            on_polled=self.monitoring.vm_polled,
        )
        self.dm = DispatchManager(
            self.vms,
            self.hosts,
            self.networks,
            self.states,
            self.lcm,
            self.tm,
            clock,
            log,
            config.vm_dir,
        )
        self.reconciler = Reconciler(
            self.vms,
            self.hosts,
            self.lcm,
            self.vmm,
            self.states,
            log,
            clock,
            timeouts[VIRTUAL_MACHINE],
        )
        self.im = InformationManager(
            by_kind[INFORMATION],
            timeouts[INFORMATION],
            self.hosts,
            clock,
            log,
            config.host_monitoring_interval,
            on_monitored=self._host_monitored,
            error_threshold=config.host_error_threshold,
            concurrency=config.monitoring_concurrency,
        )
        self.fencing = Fencing(
            self.vms,
            self.hosts,
            self.dm,
            by_kind[VIRTUAL_MACHINE],
            timeouts[VIRTUAL_MACHINE],
            clock,
            log,
            self.vm_dir,
            self.im.in_error,
        )
        self.rm = RequestManager(
            self.dm,
            self.vms,
            self.hosts,
            self.networks,
            self.db,
            clock,
            log,
            on_host_added=self.im.host_added,
            access=self.access,
            driver_names=by_kind,
        )
        self.scheduling = self._scheduling()
        self.hosts.listeners.append(self._forget_deleted_host)
        self.hm = self._make_hook_manager()

        self.rm14 = RequestManager14(
            self.dm,
            self.vms,
            self.hosts,
            self.networks,
            self.users,
            self.vmm,
            self.db,
            clock,
            log,
            on_host_added=self.im.host_added,
            access=self.access,
            fencing=self.fencing,
            driver_names=by_kind,
            monitoring=self.monitoring,
        )

        self.registry = MethodRegistry(config.call_limits)
        self.rm.register(self.registry)
        self.rm14.register(self.registry)

        # The history flushes last when the daemon stops, once nothing records any more.
        services: list[Service] = [self.monitoring, _DriverService(drivers)]
        for tick in (self.im.monitor_due, self.lcm.poll_due):
            timer = TimerService(config.manager_timer, tick)
            timer.clock = clock
            services.append(timer)
        scheduler: Scheduler | None = None
        if self.scheduling is not None:
            scheduler = self.scheduling.scheduler
            services.append(self.scheduling)
        try:
            self.plugins.add_xmlrpc_methods(self.registry, scheduler, self.access.guard_uid)
        except PluginError as error:
            raise StartupError(str(error)) from error
        access_log = lambda line: log.debug("ReM", line)  # noqa: E731
        factory = make_factory(
            self.registry, reactor=self.reactor, access_log=access_log, limits=config.limits
        )
        tls = None
        if config.tls is not None:
            try:
                tls = server_options(config.tls.cert, config.tls.key)
            except TLSSetupError as error:
                raise StartupError(str(error)) from error
        self.listener = _ListenerService(
            self.reactor, config.port, config.listen_address, factory, tls
        )
        services.append(self.listener)
        self.web = self._web_console()
        if self.web is not None:
            services.append(self.web)
        for service in services:
            service.setServiceParent(self)

    def _web_console(self) -> Any:
        """The web console (``WEB``), told of VM and host changes; None when off."""
        if self.config.web is None:
            return None
        from nebula_xr.web import WebService

        web = WebService(
            self, self.monitoring, self.config.web.port, self.config.web.listen_address
        )
        self.vms.listeners.append(web.console.vm_changed)
        self.hosts.listeners.append(web.console.host_changed)
        return web

    def _authentication(self) -> Access:
        """The authenticator, with oneadmin created at the first start (slow hashes run
        here, before the reactor serves anything)."""
        auth, log = self.config.auth, self.log
        throttle = FailureThrottle(self.clock, auth.failure_delay, auth.failure_delay_max)
        authenticator = Authenticator(self.users, self.clock, log, throttle=throttle)
        hasher = authenticator.hasher
        try:
            message, generated = self.users.bootstrap(hasher.hash)
        except BootstrapError as error:
            raise StartupError(str(error)) from error
        if generated:
            log.warning("ONE", message)
            click.echo(message, err=True)
        else:
            log.info("ONE", message)
        upgraded = self.users.rehash_legacy(hasher.is_hash, hasher.hash)
        if upgraded:
            log.warning("ONE", f"Replaced {upgraded} stored SHA-1 passwords by salted hashes")
        exposed = not is_loopback(self.config.listen_address)
        if not auth.enabled:
            warning = "Authentication is disabled (AUTH enabled = no): every caller is trusted"
            if exposed:
                warning += f", and {self.config.listen_address} is reachable from the network"
            log.warning("ONE", warning)
            click.echo(f"Warning: {warning}", err=True)
        elif auth.legacy == "open" and exposed:
            warning = (
                "AUTH legacy = open: the 1.2 methods run as oneadmin for anyone who can "
                f"reach {self.config.listen_address}"
            )
            log.warning("ONE", warning)
            click.echo(f"Warning: {warning}", err=True)
        return Access(auth, self.users, authenticator)

    def _vm_owner(self, vid: int) -> int:
        vm = self.vms.get(vid)
        return vm.uid if vm is not None else -1

    def _make_drivers(self) -> list[Driver]:
        layout = self.config.layout
        context = DriverContext(
            reactor=self.reactor,
            var_dir=layout.var_dir,
            etc_dir=layout.etc_dir,
            frontend=self.frontend,
            vm_log=lambda vid, message: self.log.vm(vid, "MAD", 2, message),
            log=lambda message: self.log.info("MAD", message),
            vm_owner=self._vm_owner,
        )
        drivers = []
        for entry in self.config.drivers:
            try:
                driver = self.plugins.make_driver(self._driver_config(entry), context)
            except (PluginError, ConfigError) as error:
                raise StartupError(str(error)) from error
            except DriverError as error:  # e.g. a control directory that is not private
                raise StartupError(f"Driver {entry.name}: {error}") from error
            self.log.info("ONE", f"Loaded driver {entry.name} from plugin {entry.plugin}")
            drivers.append(driver)
        return drivers

    def _driver_config(self, entry: DriverEntry) -> DriverConfig:
        defaults = Template(replace=True)
        etc_dir = self.config.layout.etc_dir
        config = DriverConfig(
            name=entry.name,
            kind=entry.kind,
            plugin=entry.plugin,
            arguments=entry.arguments,
            type=entry.type,
            options=entry.options,
            timeout=self.config.driver_timeout,
        )
        if entry.default:
            path = config.resolve(entry.default, etc_dir)
            try:
                text = path.read_text(encoding="utf-8")
                defaults = Template.parse(
                    text if text.endswith("\n") else text + "\n", replace=True
                )
            except (OSError, TemplateSyntaxError) as error:
                raise ConfigError(
                    f"Can not load defaults {path} of driver {entry.name}: {error}"
                ) from error
        timeout = entry.options.get("TIMEOUT")
        try:
            seconds = float(timeout) if timeout is not None else self.config.driver_timeout
        except ValueError as error:
            raise ConfigError(f"timeout of driver {entry.name} must be a number") from error
        return replace(config, defaults=defaults, timeout=seconds)

    def _scheduling(self) -> SchedulerService | None:
        """The scheduler oned.conf selects, told of the pools' changes; None when off."""
        if self.config.scheduler is None:
            return None
        context = DaemonSchedulerContext(
            self.dm, self.vms, self.hosts, self.clock, self.log, store=self.plugin_store
        )
        try:
            scheduler = self.plugins.make_scheduler(self.config.scheduler, context)
        except PluginError as error:
            raise StartupError(str(error)) from error
        scheduling = SchedulerService(scheduler, self.clock)
        scheduling.watch(self.vms, self.hosts)
        return scheduling

    def _forget_deleted_host(self, host: Host, previous: int) -> None:
        if self.hosts.get(host.oid) is None:
            self.monitoring.host_deleted(host.oid)

    def _host_monitored(self, host: Host) -> None:
        self.monitoring.host_monitored(host)
        self.fencing.host_monitored(host)
        if self.web is not None:
            self.web.console.host_monitored(host)
        if self.scheduling is not None:
            self.scheduling.host_monitored(host)

    def _make_hook_manager(self) -> HookManager:
        config = self.config

        def environment() -> dict[str, str]:
            # A hook talking back to the daemon (host_error) finds it in ONE_XMLRPC and
            # authenticates as oneadmin with the daemon's inherited ONE_AUTH file.
            address = config.listen_address
            address = "127.0.0.1" if address in ("0.0.0.0", "") else address
            listening = self.listener.listening is not None
            url = f"http://{address}:{self.port}/RPC2" if listening else None
            return dict(os.environ, **({"ONE_XMLRPC": url} if url else {}))

        hm = HookManager(
            config.hooks,
            self.reactor,
            self.clock,
            self.log,
            directory=hooks_directory(),
            timeout=config.hook_timeout,
            remote=RemoteRunner(self.reactor, ssh=config.hook_ssh, timeout=config.hook_timeout),
            environment=environment,
            vm_document=xmldoc.vm_document,
            host_document=xmldoc.host_document,
        )
        hm.watch(self.vms, self.hosts)
        return hm

    # -- running --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self.listener.port

    def startService(self) -> None:
        # Before the listener opens: every VM left mid-operation by the last run is
        # settled (asynchronously) and the host shares are right.
        self.reconciler.start()
        super().startService()

    def stopService(self) -> Deferred:
        stopped = super().stopService()

        def close(result: object) -> object:
            self.files.close()
            self.db.close()
            self.log.close()
            return result

        return stopped.addBoth(close)


class _Lock:
    """1.2's lock file, held with flock so that a crashed daemon does not block a restart."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: TextIO | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = self.path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.close()
            raise StartupError(
                f"Error: Could not lock {self.path}: another nebula-xr/oned is running"
            ) from error
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle

    def release(self) -> None:
        if self._file is not None:
            self.path.unlink(missing_ok=True)
            self._file.close()
            self._file = None


def _default_conf(layout: Layout) -> Path:
    return layout.etc_dir / "oned.conf"


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--conf",
    "conf_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="oned.conf to use (default: $ONE_LOCATION/etc/oned.conf or /etc/one/oned.conf).",
)
@click.option("--list-plugins", is_flag=True, help="List installed plugins and exit.")
@click.version_option(__version__, prog_name="nebula-xr")
@click.pass_context
def main(context: click.Context, conf_path: Path | None, list_plugins: bool) -> None:
    """Run the nebula-xr daemon: OpenNebula 1.2's oned, XML-RPC on PORT/RPC2."""
    if context.invoked_subcommand is not None:
        return
    plugins = PluginManager()
    plugins.load()
    if list_plugins:
        for info in plugins.installed():
            origin = f"{info.distribution} {info.version}".strip()
            click.echo(f"{info.name:<14} {origin:<24} {', '.join(info.hooks)}")
        for broken in plugins.broken.values():
            click.echo(f"{broken.name:<14} {broken.package:<24} BROKEN: {broken.error}")
        return
    # Nothing is created on disk (var dir, log, one.db, lock) until all of this holds.
    layout: Layout | None = None
    try:
        layout = Layout.from_environment()
        conf_path = conf_path or _default_conf(layout)
        # Driver configuration files are relative to oned.conf's directory, the etc dir.
        layout = replace(layout, etc_dir=conf_path.resolve().parent)
        config = load_config(conf_path, layout)
        for warning in config.warnings:
            click.echo(f"Warning: {warning}", err=True)
        _check_plugins(config, plugins)
        if config.postgresql is None:  # else a standby may share the active one's port
            _check_port(config)
        lock = _Lock(layout.lock_file)
        lock.acquire()
    except (ConfigError, StartupError, PluginError) as error:
        _refuse_to_start(str(error), layout)
    try:
        _run(config, plugins)
    finally:
        lock.release()


#: Descriptors the daemon needs besides its clients' connections (one.db, logs, drivers).
_FILE_RESERVE = 256 + VM_LOGS_OPEN  # the daemon's own files, VM logs kept open among them


def _raise_file_limit(connections: int) -> str | None:
    """Raise the soft RLIMIT_NOFILE to the hard one, so that the connection limits, not
    running out of descriptors, decide who is served; a warning if it is still too low."""
    wanted = connections + _FILE_RESERVE
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < wanted:
        return (
            f"Open file limit {soft} is below LIMITS connections ({connections}) plus "
            f"{_FILE_RESERVE} for the daemon itself: connections may fail before the limit"
        )
    return None


def _refuse_to_start(message: str, layout: Layout | None) -> NoReturn:
    """One line on stderr, the same in oned.log when its directory exists (it is never
    created for this), and exit status 1."""
    if layout is not None and layout.log_dir.is_dir():
        try:
            with (layout.log_dir / "oned.log").open("a", encoding="utf-8") as log:
                log.write(f"{time.ctime()} [ONE][E]: {' '.join(message.split())}\n")
        except OSError:
            pass  # stderr still says it
    raise click.ClickException(" ".join(message.split()))


def _check_plugins(config: Config, plugins: PluginManager) -> None:
    for entry in config.drivers:
        plugins.require_driver(entry.kind, entry.name, entry.plugin)
    if config.scheduler is not None:
        plugins.require(config.scheduler.plugin, "scheduler")


def _check_port(config: Config) -> None:
    """Fail now, before anything is created, if PORT (or the WEB port) is taken (the
    listeners open last)."""
    wanted = [(config.listen_address, config.port)]
    if config.web is not None:
        wanted.append((config.web.listen_address, config.web.port))
    for address, port in wanted:
        if port == 0:
            continue
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError as error:
                raise StartupError(
                    f"Can not listen on {address}:{port}: {error.strerror or error}"
                ) from error


def _startup_line(daemon: Daemon) -> str:
    config = daemon.config
    drivers = ", ".join(f"{entry.name} ({entry.plugin})" for entry in config.drivers) or "none"
    scheduler = config.scheduler.plugin if config.scheduler is not None else "none (external)"
    address = f"{config.listen_address}:{daemon.port}"
    web = ""
    if daemon.web is not None:
        web = f", web console on http://{config.web.listen_address}:{daemon.web.port}/"
    return (
        f"nebula-xr {__version__}: XML-RPC on {daemon.listener.scheme}://{address}/RPC2, "
        f"database {daemon.db.location}, log {config.layout.log_dir / 'oned.log'}, "
        f"drivers {drivers}, scheduler {scheduler}{web}"
    )


def _run(config: Config, plugins: PluginManager) -> None:
    from twisted.internet import reactor

    file_warning = _raise_file_limit(config.limits.connections)
    keep_big_buffers_out_of_the_heap()
    failed: list[str] = []
    refused: list[str] = []

    def build() -> Daemon:
        daemon = Daemon(config, plugins, reactor=reactor)
        for warning in config.warnings:
            daemon.log.warning("ONE", warning)
        if file_warning:
            click.echo(f"Warning: {file_warning}", err=True)
            daemon.log.error("ONE", file_warning)
        daemon.log.observe_twisted()
        daemon.log.reopen_on_sighup(reactor)  # logrotate's postrotate: kill -HUP
        reactor.addSystemEventTrigger("before", "shutdown", daemon.stopService)
        return daemon

    def started(daemon: Daemon) -> None:
        try:
            daemon.startService()
        except Exception as error:  # e.g. the port was taken since it was checked
            failed.append(f"Can not start: {error}")
            daemon.log.error("ONE", failed[0])
            reactor.stop()
            return
        line = _startup_line(daemon)
        click.echo(line, err=True)
        daemon.log.info("ONE", line)
        # What start-up loaded (pools, templates, plugins) lives as long as the daemon: out
        # of the collector's sight, a full collection no longer stalls the reactor on it.
        gc.freeze()

    if config.postgresql is None:
        try:
            daemon = build()
        except (StartupError, ConfigError, PluginError) as error:
            _refuse_to_start(str(error), config.layout)
        except OSError as error:  # e.g. the var dir cannot be created
            _refuse_to_start(f"Can not start: {error}", config.layout)
        reactor.callWhenRunning(started, daemon)
    else:
        reactor.callWhenRunning(_stand_by, reactor, config, build, started, refused)
    # Twisted's own handlers: SIGTERM/SIGINT stop the reactor cleanly, and SIGCHLD
    # reaps the driver processes.
    reactor.run()
    sys.stderr.flush()
    if refused:
        _refuse_to_start(refused[0], config.layout)
    if failed:
        raise click.ClickException(" ".join(failed[0].split()))


def _stand_by(
    reactor: Any,
    config: Config,
    build: Callable[[], Daemon],
    started: Callable[[Daemon], None],
    refused: list[str],
) -> None:
    """PostgreSQL: wait for the database lock (hot standby), then build and serve."""
    assert config.postgresql is not None
    daemons: list[Daemon] = []

    def activate() -> None:
        try:
            daemons.append(build())
        except (StartupError, ConfigError, PluginError) as error:
            refused.append(str(error))
        except OSError as error:
            refused.append(f"Can not start: {error}")
        if refused:
            reactor.stop()
            return
        started(daemons[0])

    def lost(message: str) -> None:
        click.echo(message, err=True)
        daemons[0].log.error("ONE", message)
        os._exit(1)  # at once: another daemon may be active, this one must not write

    report = lambda line: click.echo(line, err=True)  # noqa: E731
    Standby(reactor, ActiveLock(config.postgresql), activate, lost, report).start()


main.add_command(db_command)
