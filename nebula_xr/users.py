"""The 1.4 user pool (api-1.4.md §2): who owns VMs and networks.

Users live in 1.4's ``user_pool`` table, an extra table beside the 1.2 schema. uid 0 is
the administrator ("oneadmin"); everything created through the 1.2 API belongs to it.
Clients sign in with the SHA-1 hex of their password; the ``password`` column holds a
salted bcrypt hash of that SHA-1 (:mod:`nebula_xr.sessions`), never the SHA-1 itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from nebula_xr.auth import create_one_auth, one_auth_path, password_hash, read_one_auth
from nebula_xr.database import Database, Delete, Replace, UserPoolRow

#: uid of the administrator.
ADMIN = 0
#: Its conventional name, used while no user 0 is stored.
ADMIN_NAME = "oneadmin"


class BootstrapError(Exception):
    """The administrator account can not be created; the message says why."""


@dataclass(eq=False)
class User:
    oid: int
    name: str
    password: str  # the stored bcrypt hash
    enabled: bool = True

    def row(self) -> tuple:
        return (self.oid, self.name, self.password, int(self.enabled))


class UserPool:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.users: dict[int, User] = {}
        self._next_oid = ADMIN + 1

    def load(self) -> None:
        for oid, name, password, enabled in self.db.rows(UserPoolRow):
            self.users[oid] = User(oid, name or "", password or "", bool(enabled))
        # 1.4 takes MAX(oid)+1; uid 0 stays reserved for the administrator.
        self._next_oid = max(self.users, default=ADMIN) + 1

    def bootstrap(
        self, hash_secret: Callable[[str], str], environ: Mapping[str, str] = os.environ
    ) -> tuple[str, bool]:
        """Create user 0 from the ONE_AUTH file if there is none, as 1.4 oned does at its
        first start; without the file, write one with a random password for oneadmin.

        Returns what happened, for the log, and whether a password was generated.
        Raises BootstrapError when the file exists but can not be used.
        """
        if ADMIN in self.users:
            return f"Administrator is {self.users[ADMIN].name}", False
        path = one_auth_path(environ)
        generated = False
        try:
            name, password = read_one_auth(path)
        except FileNotFoundError:
            name = ADMIN_NAME
            try:
                password = create_one_auth(path, name)
            except OSError as error:
                raise BootstrapError(f"Can not write {path}: {error.strerror}") from error
            generated = True
        except (OSError, ValueError) as error:
            raise BootstrapError(f"Can not read the ONE_AUTH file {path}: {error}") from error
        admin = User(ADMIN, name, hash_secret(password_hash(password)))
        self.users[ADMIN] = admin
        self.db.write(Replace(UserPoolRow, [admin.row()]))
        if generated:
            return (
                f"Administrator account {name} created with a random password, "
                f"written to {path} (mode 0600)",
                True,
            )
        return f"Administrator account {name} created from {path}", False

    def rehash_legacy(
        self, is_hash: Callable[[str], bool], hash_secret: Callable[[str], str]
    ) -> int:
        """Replace stored passwords that are not hashes yet (a 1.4 database keeps the SHA-1,
        which is a replayable session credential) by their hash; returns how many."""
        legacy = [user for user in self.users.values() if not is_hash(user.password)]
        for user in legacy:
            user.password = hash_secret(user.password)
        if legacy:
            self.db.write(Replace(UserPoolRow, [user.row() for user in legacy]))
        return len(legacy)

    def get(self, oid: int) -> User | None:
        return self.users.get(oid)

    def by_name(self, name: str) -> User | None:
        return next((user for user in self.users.values() if user.name == name), None)

    def name_of(self, uid: int) -> str:
        """The owner name shown in pool documents; '' for a deleted user."""
        user = self.users.get(uid)
        if user is not None:
            return user.name
        return ADMIN_NAME if uid == ADMIN else ""

    def taken(self, name: str) -> bool:
        return self.by_name(name) is not None or name == self.name_of(ADMIN)

    def __iter__(self) -> Iterator[User]:
        return iter(sorted(self.users.values(), key=lambda user: user.oid))

    def allocate(self, name: str, stored_hash: str) -> User:
        user = User(self._next_oid, name, stored_hash)
        self._next_oid += 1
        self.users[user.oid] = user
        self.db.write(Replace(UserPoolRow, [user.row()]))
        return user

    def delete(self, user: User) -> None:
        del self.users[user.oid]
        self.db.write(Delete(UserPoolRow, (("oid", user.oid),)))
