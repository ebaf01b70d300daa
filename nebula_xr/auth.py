"""The ONE_AUTH file and 1.4 session strings (api-1.4.md §2), shared by daemon and CLI.

The file holds ``user:password`` in clear text on its first line; a session sent over
XML-RPC is ``user:<lowercase hex SHA-1 of the password>``.
"""

from __future__ import annotations

import hashlib
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


def password_hash(password: str) -> str:
    """What clients send in a session: the lowercase hex SHA-1 of the password."""
    return hashlib.sha1(password.encode("utf-8")).hexdigest()
