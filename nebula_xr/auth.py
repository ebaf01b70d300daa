"""The ONE_AUTH file and 1.4 session strings (api-1.4.md §2), shared by daemon and CLI.

The file holds ``user:password`` in clear text on its first line; a session sent over
XML-RPC is ``user:<lowercase hex SHA-1 of the password>``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping
from pathlib import Path


def one_auth_path(environ: Mapping[str, str]) -> Path:
    """``$ONE_AUTH``, else ``$HOME/.one/one_auth``."""
    if environ.get("ONE_AUTH"):
        return Path(environ["ONE_AUTH"])
    return Path(environ.get("HOME", "~")).expanduser() / ".one" / "one_auth"


def read_one_auth(path: Path) -> tuple[str, str]:
    """(user name, clear-text password) from the first line, ``name:password``.

    Raises OSError when unreadable and ValueError when malformed.
    """
    with path.open(encoding="utf-8") as stream:
        line = stream.readline().rstrip("\r\n")
    name, colon, password = line.partition(":")
    if not colon or not name:
        raise ValueError(f"{path}: the first line must be <user>:<password>")
    return name, password


def create_one_auth(path: Path, name: str) -> str:
    """Write a new ONE_AUTH file for ``name`` with a random password and return it.

    The directory is created private (0700) when missing; the file is created 0600 and
    never replaces an existing one (FileExistsError).
    """
    password = secrets.token_urlsafe(18)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as stream:
        stream.write(f"{name}:{password}\n")
    return password


def password_hash(password: str) -> str:
    """What clients send in a session: the lowercase hex SHA-1 of the password."""
    return hashlib.sha1(password.encode("utf-8")).hexdigest()


def session_for(name: str, password: str) -> str:
    """The session string a 1.4 client sends for this clear-text password."""
    return f"{name}:{password_hash(password)}"
