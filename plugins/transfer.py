"""What tm_nfs and tm_ssh share: running a 1.2 transfer script line by line.

Each line is ``COMMAND arg...`` with ``host:path`` locations (drivers.md §6). Lines run
in order and the first failure stops the script, its message becoming the TRANSFER
FAILURE text. Every command is an argument list (no shell on the front-end; quoted
arguments on the hosts), run through :mod:`nebula_xr.drivers.remote`.

A DISK ``SOURCE`` of a VM not owned by oneadmin must be a file on the front-end under
one of the ``IMAGE_DIRS`` (resolved there, so ``..`` and symlinks can not lead out), or
an ``http(s)://`` URL when ``ALLOW_URL_SOURCES = yes``. Nobody's source may look like an
option (``-...``). Image files are made 0660 and their directories 0770: the account
running nebula-xr and its group (the hosts' oneadmin group), nobody else.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twisted.internet import defer

from nebula_xr.drivers.base import (
    DriverConfig,
    DriverContext,
    DriverError,
    TransferCommand,
    TransferDriver,
)
from nebula_xr.drivers.remote import CommandResult, check_host, run_local
from nebula_xr.users import ADMIN
from nebula_xr_plugins import xen

COMMANDS = ("CLONE", "LN", "MKSWAP", "MKIMAGE", "MV", "DELETE")
#: Modes of what the transfer commands create (group access for the hosts).
IMAGE_MODE = "0660"
DIR_MODE = "0770"
_URL = re.compile(r"https?://[!-~]+\Z")


def split_location(location: str) -> tuple[str, str]:
    """``host:path`` → (host, path); the path keeps any further ``:``."""
    host, sep, path = location.partition(":")
    if not sep:
        raise DriverError(f"Not a host:path location: {location!r}")
    return host, path


class ScriptTransferDriver(TransferDriver):
    """Runs transfer scripts; subclasses say what each command does."""

    def __init__(self, config: DriverConfig, context: DriverContext) -> None:
        super().__init__(config, context)
        settings = xen.load_settings(config, context)
        self.remote = xen.runner(settings, context)
        self.timeout = self.remote.timeout
        self.scp = ["scp", *shlex.split(settings.get("SSH", "ssh"))[1:], *self.remote.ssh[1:]]
        self.image_dirs = tuple(
            os.path.realpath(path) for path in shlex.split(settings.get("IMAGE_DIRS", ""))
        )
        self.allow_urls = settings.get("ALLOW_URL_SOURCES", "no").lower() in ("yes", "true", "1")

    def checked_source(self, vid: int, source: str) -> str:
        """The CLONE/LN source to read for VM ``vid``: a URL, or ``host:path`` with the
        path resolved for a VM not owned by oneadmin; DriverError when it is not allowed."""
        admin = self.context.vm_owner(vid) == ADMIN
        if is_url(source):
            if not _URL.match(source):
                raise DriverError(f"Invalid URL source {source!r}")
            if not (admin or self.allow_urls):
                raise DriverError(f"URL sources are not allowed: {source}")
            return source
        host, path = split_location(source)
        if host.startswith("-") or path.startswith("-"):
            raise DriverError(f"Invalid image source {source!r}")
        if admin:
            return source
        if not self.is_frontend(host):
            raise DriverError(f"Image source {source!r} is not on the front-end")
        real = os.path.realpath(path)
        if not any(real == d or real.startswith(d.rstrip("/") + "/") for d in self.image_dirs):
            raise DriverError(f"Image source {path!r} is not under IMAGE_DIRS")
        return f"{host}:{real}"

    @defer.inlineCallbacks
    def transfer(self, vid: int, script: Path, commands: list[TransferCommand]) -> Any:
        for command in commands:
            action = command.action.upper()
            if action not in COMMANDS:
                raise DriverError(f"COMMAND not found for: {command}.")
            self.context.vm_log(vid, f"{self.config.name}: {command}")
            yield getattr(self, action.lower())(vid, *command.args)
        return None

    # -- running ------------------------------------------------------------------------

    def is_frontend(self, host: str) -> bool:
        return host in (self.context.frontend, "localhost")

    def local(self, vid: int, argv: Sequence[str], what: str) -> defer.Deferred:
        return run_local(self.context.reactor, argv, timeout=self.timeout).addCallback(
            self._checked, vid, what
        )

    def on(self, host: str, vid: int, argv: Sequence[str], what: str) -> defer.Deferred:
        """Run ``argv`` on ``host`` (locally when it is the front-end)."""
        if self.is_frontend(host):
            return self.local(vid, argv, what)
        try:
            check_host(host)
        except DriverError:
            return defer.fail()
        return self.remote.run(host, argv).addCallback(self._checked, vid, what)

    def _checked(self, result: CommandResult, vid: int, what: str) -> CommandResult:
        for line in result.stdout.splitlines():
            self.context.vm_log(vid, line)
        if not result.ok:
            raise DriverError(f"{what}: {result.error_text()}")
        return result

    def mkimage(self, vid: int, *args: str) -> defer.Deferred:
        return defer.succeed(None)  # never generated by 1.2; kept as its placeholder


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def swap_size(size: str) -> str:
    """A DISK SIZE (MB) as dd may be given it: digits only."""
    if not (size.isascii() and size.isdigit()):
        raise DriverError(f"Invalid swap size {size!r}")
    return size


def mkswap_script() -> list[str]:
    """A sparse swap file of $1 MB at $2, its directory created (1.2 forgot that)."""
    body = (
        f'mkdir -p -m {DIR_MODE} "$(dirname "$2")" && '
        'dd if=/dev/zero of="$2" bs=1 count=1 seek="$1"M 2>/dev/null && '
        f'mkswap "$2" >/dev/null && chmod {IMAGE_MODE} "$2"'
    )
    return ["sh", "-c", body, "mkswap"]


def prepare_dir_script() -> list[str]:
    """Create the directory that will hold $1 (1.2 made it world-writable; group only)."""
    body = f'mkdir -p "$(dirname "$1")" && chmod {DIR_MODE} "$(dirname "$1")"'
    return ["sh", "-c", body, "prep"]


def parent(path: str) -> str:
    return os.path.dirname(path.rstrip("/")) or "/"
