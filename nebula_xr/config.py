"""oned.conf: the 1.2 keys, their defaults, and the 1.2 file layout (templates.md §6).

With ``ONE_LOCATION`` set everything lives under it (``var/one.db``, ``var/oned.log``,
``etc/``); without it, the system-wide paths of a packaged 1.2 install are used.
"""

from __future__ import annotations

import ipaddress
import os
import shlex
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from nebula_xr.drivers.base import INFORMATION, TRANSFER, VIRTUAL_MACHINE
from nebula_xr.hook_manager import HOST, VM, Hook, HookConfigError, parse_hook
from nebula_xr.postgresql import DEFAULT_PORT, PostgresSettings
from nebula_xr.scheduling import SchedulerConfig
from nebula_xr.template import Template, TemplateSyntaxError
from nebula_xr.transport.http import Limits
from nebula_xr.transport.xmlrpc import CallLimits
from nebula_xr.vnet import parse_mac_prefix

#: 1.2 driver executables, accepted as names of the shipped plugins so that an
#: unmodified 1.2 oned.conf starts.
EXECUTABLE_ALIASES = {
    "one_im_ssh": "im_xen",
    "one_vmm_xen": "vmm_xen",
    "one_tm": "tm_nfs",
}

DRIVER_KEYS = {"IM_MAD": INFORMATION, "VM_MAD": VIRTUAL_MACHINE, "TM_MAD": TRANSFER}

#: Every key oned.conf may hold; any other is warned about at start-up (a typo).
#: A feature reading a new key adds it here.
KNOWN_KEYS = frozenset(
    {
        # OpenNebula 1.2
        "HOST_MONITORING_INTERVAL",
        "VM_POLLING_INTERVAL",
        "MANAGER_TIMER",
        "VM_DIR",
        "PORT",
        "DEBUG_LEVEL",
        "NETWORK_SIZE",
        "MAC_PREFIX",
        *DRIVER_KEYS,
        # OpenNebula 1.4 / 2.2
        "DB",
        "VM_HOOK",
        "HOST_HOOK",
        "HM_MAD",
        # nebula-xr
        "AUTH",
        "TLS",
        "LIMITS",
        "WEB",
        "HOST_ERROR_THRESHOLD",
        "MONITORING_CONCURRENCY",
        "SCHEDULER",
        "DB_JOURNAL",
        "DB_BUSY_TIMEOUT",
        "DRIVER_TIMEOUT",
        "LISTEN_ADDRESS",
        "MONITORING_HISTORY",
    }
)


class ConfigError(Exception):
    """oned.conf cannot be used; the message says why."""


@dataclass(frozen=True)
class Layout:
    """Where a 1.2 installation keeps its files."""

    var_dir: Path
    etc_dir: Path
    log_dir: Path
    lock_file: Path

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> Layout:
        environ = os.environ if environ is None else environ
        location = environ.get("ONE_LOCATION")
        if location:
            root = Path(location)
            if not root.is_dir():
                what = "is not a directory" if root.exists() else "does not exist"
                raise ConfigError(f"ONE_LOCATION={location} {what}")
            return cls(root / "var", root / "etc", root / "var", root / "var" / ".lock")
        return cls(
            Path("/var/lib/one"), Path("/etc/one"), Path("/var/log/one"), Path("/var/lock/one")
        )

    @property
    def database(self) -> Path:
        return self.var_dir / "one.db"


@dataclass(frozen=True)
class DriverEntry:
    """An IM_MAD / VM_MAD / TM_MAD vector, before its plugin is loaded."""

    kind: str
    name: str
    plugin: str
    arguments: str
    default: str
    type: str
    options: dict[str, str]


#: How the twelve 1.2 methods, whose clients send a placeholder session, are authorised.
LEGACY_MODES = ("loopback", "session", "open")


@dataclass(frozen=True)
class AuthConfig:
    """``AUTH = [ ... ]``: authentication of XML-RPC callers (README, Security)."""

    enabled: bool = True
    #: loopback: 1.2 calls from this machine run as oneadmin unless their session names a
    #: user; session: they need a valid 1.4 session; open: 1.2's behaviour, no checks.
    legacy: str = "loopback"
    #: Explicit consent to serve a non-loopback address without authentication.
    insecure_network: bool = False
    #: Seconds a refusal waits after an address's first recent failure (doubling after).
    failure_delay: float = 1.0
    failure_delay_max: float = 30.0


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


@dataclass(frozen=True)
class TLSFiles:
    """``TLS = [ cert = ..., key = ... ]``: PEM files, relative ones to the etc directory."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class WebConfig:
    """``WEB = [ port = 9869, listen_address = "127.0.0.1" ]``: the web console."""

    port: int
    listen_address: str = "127.0.0.1"


@dataclass(frozen=True)
class Config:
    layout: Layout
    host_monitoring_interval: int = 300
    vm_polling_interval: int = 300
    manager_timer: float = 30.0
    vm_dir: str = ""
    port: int = 2633
    listen_address: str = "127.0.0.1"
    #: Serve XML-RPC over TLS (https) with these files; plain http without.
    tls: TLSFiles | None = None
    #: Connections, deadlines and buffered bytes of the XML-RPC server (``LIMITS``).
    limits: Limits = Limits()
    #: What one call may cost (``LIMITS`` too).
    call_limits: CallLimits = CallLimits()
    debug_level: int = 1
    network_size: int = 254
    mac_prefix: int = 1
    #: WAL lets the 1.2 clients read while the daemon writes; off for SQLite 3.6 readers.
    db_wal: bool = True
    #: Seconds a commit blocked by readers is retried before a new object is refused.
    db_busy_timeout: float = 20.0
    #: ``DB = [ backend = "postgresql", ... ]``: the database is there, not in one.db.
    postgresql: PostgresSettings | None = None
    #: Seconds after which any driver action fails (per-driver ``timeout`` overrides).
    driver_timeout: float = 300.0
    drivers: tuple[DriverEntry, ...] = ()
    scheduler: SchedulerConfig | None = field(
        default_factory=lambda: SchedulerConfig(plugin="sched_rank")
    )
    auth: AuthConfig = field(default_factory=AuthConfig)
    #: Monitoring failures in a row that put a host in ERROR (1: the first, as 1.2).
    host_error_threshold: int = 1
    #: Host monitorings (and, separately, VM polls) under way at once, at most.
    monitoring_concurrency: int = 32
    #: VM_HOOK and HOST_HOOK entries, in file order.
    hooks: tuple[Hook, ...] = ()
    #: Seconds after which a hook is killed (HM_MAD = [ timeout = N ]).
    hook_timeout: float = 300.0
    #: The ssh command of remote hooks (HM_MAD = [ ssh = "ssh -F file" ]).
    hook_ssh: tuple[str, ...] = ("ssh",)
    #: The web console's listener; None (no WEB, or port = 0) keeps it off.
    web: WebConfig | None = None
    #: Seconds of host monitoring and VM polling samples kept (0: no history).
    monitoring_retention: int = 86400
    #: Things worth telling the user that do not stop the daemon (unknown keys).
    warnings: tuple[str, ...] = ()


def _int(template: Template, key: str, default: int) -> int:
    value = template.get_string(key)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as error:
        raise ConfigError(f"{key} must be an integer, not {value!r}") from error


def _port(value: str | None, key: str, default: int) -> int:
    if value is None:
        return default
    try:
        port = int(value)
    except ValueError as error:
        raise ConfigError(f"{key} must be an integer, not {value!r}") from error
    if not 0 <= port <= 65535:
        raise ConfigError(f"{key} must be a TCP port, not {port}")
    return port


def _float(value: str | None, key: str, default: float) -> float:
    if value is None:
        return default
    try:
        result = float(value)
    except ValueError as error:
        raise ConfigError(f"{key} must be a number, not {value!r}") from error
    if not result > 0:
        raise ConfigError(f"{key} must be positive, not {value!r}")
    return result


def _driver(kind: str, key: str, vector: dict[str, str]) -> DriverEntry:
    name = vector.get("NAME")
    executable = vector.get("EXECUTABLE")
    if not name or not executable:
        raise ConfigError(f"{key} needs a name and an executable: {vector}")
    arguments = vector.get("ARGUMENTS", "")
    plugin = EXECUTABLE_ALIASES.get(Path(executable).name, executable)
    if plugin == "tm_nfs" and Path(arguments).stem == "tm_ssh":
        # 1.2 used one executable (one_tm) for every TM and told them apart by arguments.
        plugin = "tm_ssh"
    return DriverEntry(
        kind=kind,
        name=name,
        plugin=plugin,
        arguments=arguments,
        default=vector.get("DEFAULT", ""),
        type=vector.get("TYPE", "").lower(),
        options=dict(vector),
    )


def _scheduler(template: Template) -> SchedulerConfig | None:
    vector = template.get_vector("SCHEDULER")
    single = template.get_string("SCHEDULER")
    if vector is None:
        plugin, vector = (single or "sched_rank"), {}
    else:
        plugin = vector.get("PLUGIN") or vector.get("NAME") or "sched_rank"
    if plugin.lower() in ("none", "no", "off", "external"):
        return None
    interval = _float(vector.get("INTERVAL"), "SCHEDULER interval", 30.0)
    return SchedulerConfig(plugin=plugin, interval=interval, options=dict(vector))


def _tls(template: Template, layout: Layout) -> TLSFiles | None:
    if template.get_string("TLS") is not None:
        raise ConfigError('TLS must be a vector: TLS = [ cert = "...", key = "..." ]')
    vector = template.get_vector("TLS")
    if vector is None:
        return None
    cert, key = vector.get("CERT"), vector.get("KEY")
    if not cert or not key:
        raise ConfigError("TLS needs both cert and key (PEM files)")
    return TLSFiles(layout.etc_dir / cert, layout.etc_dir / key)


def _web(template: Template) -> WebConfig | None:
    if template.get_string("WEB") is not None:
        raise ConfigError('WEB must be a vector: WEB = [ port = 9869, listen_address = "..." ]')
    vector = template.get_vector("WEB")
    if vector is None:
        return None
    port = _port(vector.get("PORT"), "WEB port", 0)
    if port == 0:
        return None
    return WebConfig(port, vector.get("LISTEN_ADDRESS") or "127.0.0.1")


#: LIMITS keys: the field each sets, and whether it takes seconds (else a count or bytes).
_LIMIT_KEYS = {
    "CONNECTIONS": ("connections", False),
    "CONNECTIONS_PER_ADDRESS": ("connections_per_address", False),
    "HEAD_TIMEOUT": ("head_timeout", True),
    "BODY_TIMEOUT": ("body_timeout", True),
    "IDLE_TIMEOUT": ("idle_timeout", True),
    "BODY_BUFFER": ("buffer_bytes", False),
    "MULTICALL_CALLS": ("multicall_calls", False),
    "REPLY_BYTES": ("reply_bytes", False),
}


def _limits(template: Template) -> tuple[Limits, CallLimits]:
    vector = template.get_vector("LIMITS") or {}
    unknown = sorted(set(vector) - set(_LIMIT_KEYS))
    if unknown:
        raise ConfigError(f"LIMITS has unknown keys {unknown}; known: {sorted(_LIMIT_KEYS)}")
    http: dict[str, float] = {}
    calls: dict[str, float] = {}
    call_fields = {f.name for f in fields(CallLimits)}
    for key, text in vector.items():
        name, seconds = _LIMIT_KEYS[key]
        if seconds:
            value: float = _float(text, f"LIMITS {key.lower()}", 0.0)
        else:
            if not text.isdigit() or int(text) < 1:
                raise ConfigError(f"LIMITS {key.lower()} must be a positive integer, not {text!r}")
            value = int(text)
        (calls if name in call_fields else http)[name] = value
    return replace(Limits(), **http), replace(CallLimits(), **calls)


def _yes(vector: dict[str, str], key: str, default: bool) -> bool:
    value = vector.get(key)
    if value is None:
        return default
    if value.lower() in ("yes", "true", "on", "1"):
        return True
    if value.lower() in ("no", "false", "off", "0"):
        return False
    raise ConfigError(f"AUTH {key.lower()} must be yes or no, not {value!r}")


def _auth(template: Template, listen_address: str) -> AuthConfig:
    vector = template.get_vector("AUTH")
    if vector is None:
        if template.get_string("AUTH") is not None:
            raise ConfigError("AUTH must be a vector: AUTH = [ enabled = yes ]")
        vector = {}
    legacy = vector.get("LEGACY", "loopback").lower()
    if legacy not in LEGACY_MODES:
        raise ConfigError(f"AUTH legacy must be one of {', '.join(LEGACY_MODES)}, not {legacy!r}")
    delays = {}
    for key, default in (("FAILURE_DELAY", 1.0), ("FAILURE_DELAY_MAX", 30.0)):
        value = vector.get(key)
        try:
            delays[key] = default if value is None else float(value)
        except ValueError:
            delays[key] = -1.0
        if not 0 <= delays[key] < float("inf"):
            raise ConfigError(f"AUTH {key.lower()} must be a number of seconds, not {value!r}")
    auth = AuthConfig(
        enabled=_yes(vector, "ENABLED", True),
        legacy=legacy,
        insecure_network=_yes(vector, "INSECURE_NETWORK", False),
        failure_delay=delays["FAILURE_DELAY"],
        failure_delay_max=delays["FAILURE_DELAY_MAX"],
    )
    if not auth.enabled and not auth.insecure_network and not is_loopback(listen_address):
        raise ConfigError(
            f"Refusing to serve {listen_address} without authentication: anyone who can "
            "reach it would control every host. Enable AUTH, listen on 127.0.0.1, or say "
            "AUTH = [ enabled = no, insecure_network = yes ]"
        )
    return auth


def _monitoring_retention(template: Template) -> int:
    """``MONITORING_HISTORY = [ retention = seconds ]``; a day when absent."""
    if template.get_string("MONITORING_HISTORY") is not None:
        raise ConfigError(
            "MONITORING_HISTORY must be a vector: MONITORING_HISTORY = [ retention = 86400 ]"
        )
    vector = template.get_vector("MONITORING_HISTORY") or {}
    unknown = sorted(set(vector) - {"RETENTION"})
    if unknown:
        raise ConfigError(f"MONITORING_HISTORY has unknown keys {unknown}; known: ['RETENTION']")
    text = vector.get("RETENTION", "86400")
    if not (text.isascii() and text.isdigit()):
        raise ConfigError(f"MONITORING_HISTORY retention must be seconds (0: off), not {text!r}")
    return int(text)


def _command_words(text: str, key: str) -> tuple[str, ...]:
    try:
        words = tuple(shlex.split(text))
    except ValueError as error:
        raise ConfigError(f"{key}: {error}") from error
    if not words:
        raise ConfigError(f"{key} must name a command")
    return words


def _hooks(template: Template) -> tuple[Hook, ...]:
    hooks = []
    for key in (VM, HOST):
        for value in template.get_all(key):
            if not isinstance(value, dict):
                raise ConfigError(f"{key} must be a vector attribute")
            try:
                hooks.append(parse_hook(key, value))
            except HookConfigError as error:
                raise ConfigError(str(error)) from error
    return tuple(hooks)


def parse_config(text: str, layout: Layout, source: str = "oned.conf") -> Config:
    """Build the configuration from oned.conf text (1.2 template syntax); ``source``
    names the file in messages."""
    if not text.endswith("\n"):
        text += "\n"
    try:
        template = Template.parse(text)
    except TemplateSyntaxError as error:
        raise ConfigError(f"{source}:{error.line}:{error.column}: {error.reason}") from error
    warnings = tuple(
        f"{source}: unknown key {name} (ignored)"
        for name in dict.fromkeys(name for name, _ in template.attributes)
        if name not in KNOWN_KEYS
    )
    drivers: list[DriverEntry] = []
    for key, kind in DRIVER_KEYS.items():
        for value in template.get_all(key):
            if not isinstance(value, dict):
                raise ConfigError(f"{key} must be a vector attribute")
            drivers.append(_driver(kind, key, value))
    names = [(entry.kind, entry.name) for entry in drivers]
    duplicates = {name for kind, name in names if names.count((kind, name)) > 1}
    if duplicates:
        raise ConfigError(f"driver names must be unique: {sorted(duplicates)}")
    debug_level = _int(template, "DEBUG_LEVEL", 1)
    if not 0 <= debug_level <= 3:
        debug_level = 0  # 1.2: out of range means ERROR only
    port = _port(template.get_string("PORT"), "PORT", 2633)
    limits, call_limits = _limits(template)
    listen_address = template.get_string("LISTEN_ADDRESS") or "127.0.0.1"
    threshold = _int(template, "HOST_ERROR_THRESHOLD", 1)
    if threshold < 1:
        raise ConfigError(f"HOST_ERROR_THRESHOLD must be at least 1, not {threshold}")
    hook_manager = template.get_vector("HM_MAD") or {}
    journal = (template.get_string("DB_JOURNAL") or "wal").lower()
    if journal not in ("wal", "delete"):
        raise ConfigError(f"DB_JOURNAL must be wal or delete, not {journal!r}")
    return Config(
        layout=layout,
        host_monitoring_interval=_int(template, "HOST_MONITORING_INTERVAL", 300),
        vm_polling_interval=_int(template, "VM_POLLING_INTERVAL", 300),
        manager_timer=_float(template.get_string("MANAGER_TIMER"), "MANAGER_TIMER", 30.0),
        vm_dir=template.get_string("VM_DIR") or f"{layout.var_dir}/",
        port=port,
        listen_address=listen_address,
        tls=_tls(template, layout),
        limits=limits,
        call_limits=call_limits,
        debug_level=debug_level,
        network_size=_int(template, "NETWORK_SIZE", 254),
        mac_prefix=parse_mac_prefix(template.get_string("MAC_PREFIX")),
        db_wal=journal == "wal",
        db_busy_timeout=_float(template.get_string("DB_BUSY_TIMEOUT"), "DB_BUSY_TIMEOUT", 20.0),
        postgresql=_database(template),
        driver_timeout=_float(template.get_string("DRIVER_TIMEOUT"), "DRIVER_TIMEOUT", 300.0),
        drivers=tuple(drivers),
        scheduler=_scheduler(template),
        auth=_auth(template, listen_address),
        host_error_threshold=threshold,
        monitoring_concurrency=max(1, _int(template, "MONITORING_CONCURRENCY", 32)),
        hooks=_hooks(template),
        hook_timeout=_float(hook_manager.get("TIMEOUT"), "HM_MAD timeout", 300.0),
        hook_ssh=_command_words(hook_manager.get("SSH") or "ssh", "HM_MAD ssh"),
        web=_web(template),
        monitoring_retention=_monitoring_retention(template),
        warnings=warnings,
    )


def _database(template: Template) -> PostgresSettings | None:
    """``DB = [ backend = "sqlite" | "postgresql", server, port, user, passwd, db_name ]``
    (OpenNebula's keys); sqlite, the default, is one.db."""
    vector = template.get_vector("DB") or {}
    backend = (vector.get("BACKEND") or "sqlite").lower()
    if backend == "sqlite":
        return None
    if backend != "postgresql":
        raise ConfigError(f"DB backend must be sqlite or postgresql, not {backend!r}")
    defaults = PostgresSettings()
    port = _port(vector.get("PORT") or None, "DB port", 0)
    try:
        import psycopg  # noqa: F401
    except ImportError as error:
        raise ConfigError(
            "DB backend postgresql needs psycopg: pip install 'nebula-xr[postgresql]'"
        ) from error
    return PostgresSettings(
        server=vector.get("SERVER") or defaults.server,
        port=port or DEFAULT_PORT,
        user=vector.get("USER") or defaults.user,
        passwd=vector.get("PASSWD") or "",
        db_name=vector.get("DB_NAME") or defaults.db_name,
    )


def load_config(path: Path, layout: Layout | None = None) -> Config:
    layout = layout or Layout.from_environment()
    try:
        text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as error:
        raise ConfigError(f"Can not read configuration file {path}: {error.strerror}") from error
    config = parse_config(text, layout, str(path))
    check_driver_files(config)
    return config


def check_driver_files(config: Config) -> None:
    """Every ``arguments`` and ``default`` file a driver entry names must be readable
    (relative paths are under the etc dir, as 1.2 resolved them)."""
    for entry in config.drivers:
        for key, name in (("arguments", entry.arguments), ("default", entry.default)):
            if not name:
                continue
            path = Path(name) if Path(name).is_absolute() else config.layout.etc_dir / name
            if not path.is_file():
                what = "is not a file" if path.exists() else "does not exist"
                raise ConfigError(f"Driver {entry.name}: its {key} file {path} {what}")
