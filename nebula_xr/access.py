"""Who is calling: the caller of an XML-RPC method, from its session and where it came from.

Every 1.2 and 1.4 method is registered through :meth:`Access.guard`, which turns the
session argument into a :class:`Caller` before the handler runs; the handlers then apply
1.4's ownership rules (api-1.4.md §2.3, README "Security") with 1.4's messages:

* oneadmin (uid 0) may do everything;
* a user sees and acts on its own VMs and networks, and uses oneadmin's networks (1.4's
  public networks); hosts are read by every user, managed by oneadmin only, and so are
  users.

With ``AUTH = [ enabled = yes ]`` (the default) a 1.4 session must be valid. The twelve
1.2 methods, whose clients send a placeholder session (``"sessionID"``) and read one.db
on the front-end, follow ``legacy``:

* ``loopback``: a call from this machine runs as oneadmin, unless its session names a
  known user (``name:...``), which must then be valid and is the caller; a call from
  elsewhere needs a valid session;
* ``session``: every call needs a valid session;
* ``open``: 1.2's behaviour, every call runs as oneadmin.

Without authentication, the 1.2 methods run as oneadmin and a 1.4 session naming a known
user makes it the caller, its password unchecked (the behaviour before AUTH existed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from nebula_xr.config import AuthConfig
from nebula_xr.sessions import Authenticator
from nebula_xr.transport.http import CallContext
from nebula_xr.users import ADMIN, User, UserPool


class Caller:
    """The user a call runs as; ``uid`` is None when the session was not valid."""

    __slots__ = ("uid",)

    def __init__(self, uid: int | None) -> None:
        self.uid = uid

    @property
    def authenticated(self) -> bool:
        return self.uid is not None

    @property
    def admin(self) -> bool:
        return self.uid == ADMIN

    def owns(self, owner: int) -> bool:
        """May act on an object of user ``owner``: its owner, or oneadmin."""
        return self.uid is not None and self.uid in (owner, ADMIN)

    def may_use_network(self, owner: int) -> bool:
        """May see and lease from a network of ``owner``: oneadmin's are public."""
        return self.uid is not None and (self.uid == ADMIN or owner in (self.uid, ADMIN))

    def __repr__(self) -> str:
        return f"Caller({self.uid})"


#: The refusal of a plugin method to an invalid session (1.4's wording for its own calls).
NOT_AUTHENTICATED = (False, "User not authenticated, aborting call.")

ADMIN_CALLER = Caller(ADMIN)
NOBODY = Caller(None)


class Access:
    def __init__(
        self,
        config: AuthConfig,
        users: UserPool | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        if config.enabled and (users is None or authenticator is None):
            raise ValueError("authentication needs the user pool and an authenticator")
        self.config = config
        self.users = users
        self.authenticator = authenticator
        self._callers: dict[int, Caller] = {ADMIN: ADMIN_CALLER}

    def _caller(self, uid: int | None) -> Caller:
        if uid is None:
            return NOBODY
        caller = self._callers.get(uid)
        if caller is None:
            caller = self._callers[uid] = Caller(uid)
        return caller

    def _names_user(self, session: str) -> bool:
        name, colon, _secret = session.partition(":")
        return bool(colon) and self.users is not None and self.users.by_name(name) is not None

    def caller(self, context: CallContext, session: str, *, legacy: bool) -> Caller | Deferred:
        """The caller of a method, at once or (first sign-in of a session) as a Deferred."""
        if not self.config.enabled:
            if legacy or self.users is None:
                return ADMIN_CALLER
            name, colon, _secret = session.partition(":")
            user = self.users.by_name(name) if colon else None
            return self._caller(user.oid if user is not None else ADMIN)
        if legacy:
            mode = self.config.legacy
            if mode == "open":
                return ADMIN_CALLER
            if mode == "loopback" and context.loopback:
                if ":" not in session:
                    return ADMIN_CALLER  # a 1.2 client's placeholder
                uid = self.authenticator.cached(session)
                if uid is not None:
                    return self._caller(uid)
                if not self._names_user(session):
                    return ADMIN_CALLER
        verified = self.authenticator.authenticate(session, context.peer)
        if isinstance(verified, Deferred):
            return verified.addCallback(self._caller)
        return self._caller(verified)

    def hash_secret(self, secret: str) -> Deferred[str]:
        """What to store for a new user's session secret (slow, so in a thread)."""
        if self.authenticator is None:
            raise RuntimeError("no authenticator to hash with")
        return self.authenticator.hash_secret(secret)

    def forget(self, user: User) -> None:
        """``user`` was deleted: its verified sessions are no longer valid."""
        if self.authenticator is not None:
            self.authenticator.forget(user)

    def guard(self, handler: Callable[..., Any], *, legacy: bool) -> Callable[..., Any]:
        """``handler(caller, *params)`` as a method taking ``(context, session, *params)``."""

        def method(context: CallContext, session: str, *params: Any) -> Any:
            caller = self.caller(context, session, legacy=legacy)
            if isinstance(caller, Deferred):
                return caller.addCallback(lambda resolved: handler(resolved, *params))
            return handler(caller, *params)

        method.__name__ = getattr(handler, "__name__", "method")
        return method

    def guard_uid(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        """A plugin's ``handler(uid, *params)`` as a 1.4-style method: an invalid
        session is refused before the plugin sees the call."""

        def with_uid(caller: Caller, *params: Any) -> Any:
            if not caller.authenticated:
                return list(NOT_AUTHENTICATED)
            return handler(caller.uid, *params)

        with_uid.__name__ = getattr(handler, "__name__", "method")
        return self.guard(with_uid, legacy=False)
