"""The 1.4 user pool (api-1.4.md §2): who owns VMs and networks.

Users live in 1.4's ``user_pool`` table, an extra table beside the 1.2 schema. uid 0 is
the administrator ("oneadmin"); everything created through the 1.2 API belongs to it.
A password is stored as given (by convention the SHA-1 hex of the clear text, which
clients compute) and never hashed again by the server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from nebula_xr.auth import one_auth_path, password_hash, read_one_auth
from nebula_xr.database import Database, Delete, Replace, UserPoolRow

#: uid of the administrator.
ADMIN = 0
#: Its conventional name, used while no user 0 is stored.
ADMIN_NAME = "oneadmin"


@dataclass
class User:
    oid: int
    name: str
    password: str
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

    def bootstrap(self, environ: Mapping[str, str] = os.environ) -> str:
        """Create user 0 from the ONE_AUTH file if there is none, as 1.4 oned does at
        its first start; returns what happened, for the log."""
        if ADMIN in self.users:
            return f"Administrator is {self.users[ADMIN].name}"
        path = one_auth_path(environ)
        try:
            name, password = read_one_auth(path)
        except (OSError, ValueError) as error:
            return f"No administrator account created: can not read {path}: {error}"
        admin = User(ADMIN, name, password_hash(password))
        self.users[ADMIN] = admin
        self.db.write(Replace(UserPoolRow, [admin.row()]))
        return f"Administrator account {name} created from {path}"

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

    def allocate(self, name: str, password: str) -> User:
        user = User(self._next_oid, name, password)
        self._next_oid += 1
        self.users[user.oid] = user
        self.db.write(Replace(UserPoolRow, [user.row()]))
        return user

    def delete(self, user: User) -> None:
        del self.users[user.oid]
        self.db.write(Delete(UserPoolRow, (("oid", user.oid),)))
