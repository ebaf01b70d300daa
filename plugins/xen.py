"""What im_xen and vmm_xen share: their settings and how to reach a host's toolstack.

Settings come from the file named by the driver's ``arguments`` (template syntax,
relative to the directory of oned.conf; ``im_xen/im_xen.conf`` when a driver names none,
as 1.2's VM_MAD did not), then from keys of the oned.conf vector itself:

=================== ====================== ==============================================
key                 default                meaning
=================== ====================== ==============================================
TOOLSTACK           xm                     ``xm`` (Xen 3) or ``xl`` (Xen 4.5 and later)
SUDO                yes                    ``yes``, ``no``, or the command to prefix
XM_PATH             /usr/sbin/xm           the tools, as run on the hosts
XL_PATH             /usr/sbin/xl
XENTOP_PATH         /usr/sbin/xentop
SSH                 ssh                    the ssh client and options (``ssh -F cfg``)
SSH_CONTROL_DIR     $VAR/ssh               where multiplexed connections live (private: 0700)
COMMAND_TIMEOUT     120                    seconds after which a remote command is killed
SHUTDOWN_TIMEOUT    60                     seconds a guest gets to halt before destroy
PER_HOST            4                      commands at once on one host
CONCURRENCY         32                     commands at once overall
=================== ====================== ==============================================
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, replace

from nebula_xr.drivers.base import DriverConfig, DriverContext, DriverError
from nebula_xr.drivers.remote import RemoteRunner

#: Where 1.2 kept the Xen settings: im_xen's ``arguments``. A 1.2 VM_MAD names no file,
#: so vmm_xen reads this one when it has none, and both use the same TOOLSTACK.
SHARED_SETTINGS = "im_xen/im_xen.conf"


def load_settings(config: DriverConfig, context: DriverContext) -> dict[str, str]:
    """The driver's single-valued settings (see :meth:`DriverConfig.settings`); without
    ``arguments``, those of :data:`SHARED_SETTINGS` when that file exists."""
    if not config.arguments and (context.etc_dir / SHARED_SETTINGS).is_file():
        config = replace(config, arguments=SHARED_SETTINGS)
    settings = {k: v for k, v in config.settings(context.etc_dir) if isinstance(v, str)}
    origin = config.resolve(config.arguments, context.etc_dir) if config.arguments else None
    context.log(
        f"{config.name}: Xen toolstack {settings.get('TOOLSTACK', 'xm')} "
        f"({f'from {origin}' if origin else 'default'})"
    )
    return settings


def _number(settings: dict[str, str], key: str, default: float) -> float:
    try:
        value = float(settings.get(key, default))
    except ValueError as error:
        raise DriverError(f"{key} must be a number, not {settings[key]!r}") from error
    if value <= 0:
        raise DriverError(f"{key} must be positive")
    return value


@dataclass(frozen=True)
class Toolstack:
    """How to run the Xen tools on a host: ``xm`` or ``xl``, through sudo or not."""

    name: str
    sudo: tuple[str, ...]
    tool_path: str
    xentop_path: str
    shutdown_timeout: float

    @property
    def xl(self) -> bool:
        return self.name == "xl"

    def tool(self, *args: str) -> list[str]:
        return [*self.sudo, self.tool_path, *args]

    def xentop(self, *args: str) -> list[str]:
        return [*self.sudo, self.xentop_path, *args]


def toolstack(settings: dict[str, str]) -> Toolstack:
    name = settings.get("TOOLSTACK", "xm").lower()
    if name not in ("xm", "xl"):
        raise DriverError(f"TOOLSTACK must be xm or xl, not {name!r}")
    sudo_setting = settings.get("SUDO", "yes")
    if sudo_setting.lower() in ("yes", "true", "1"):
        sudo: tuple[str, ...] = ("sudo",)
    elif sudo_setting.lower() in ("no", "false", "0", ""):
        sudo = ()
    else:
        sudo = tuple(shlex.split(sudo_setting))
    path_key = "XL_PATH" if name == "xl" else "XM_PATH"
    return Toolstack(
        name=name,
        sudo=sudo,
        tool_path=settings.get(path_key, f"/usr/sbin/{name}"),
        xentop_path=settings.get("XENTOP_PATH", "/usr/sbin/xentop"),
        shutdown_timeout=_number(settings, "SHUTDOWN_TIMEOUT", 60),
    )


def runner(settings: dict[str, str], context: DriverContext) -> RemoteRunner:
    """The ssh runner; its control directory is the daemon's own ``$VAR/ssh`` unless
    SSH_CONTROL_DIR says otherwise (checked private either way; '' turns multiplexing off)."""
    control_dir = settings.get("SSH_CONTROL_DIR", os.path.join(context.var_dir, "ssh"))
    return RemoteRunner(
        context.reactor,
        ssh=shlex.split(settings.get("SSH", "ssh")),
        control_dir=control_dir or None,
        timeout=_number(settings, "COMMAND_TIMEOUT", 120),
        per_host=int(_number(settings, "PER_HOST", 4)),
        overall=int(_number(settings, "CONCURRENCY", 32)),
    )
