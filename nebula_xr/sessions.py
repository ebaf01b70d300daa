"""Verifying 1.4 sessions without keeping replayable credentials or blocking the reactor.

A session is ``user:<sha1 hex of the password>`` (api-1.4.md §2.1). That SHA-1 is all a
client needs to sign in, so the user pool never stores it: it keeps a salted bcrypt hash
of it (:class:`SecretHasher`). bcrypt takes a few hundred milliseconds on purpose, so a
session is verified once, in a thread, and then remembered: later calls with the same
session cost one HMAC and a constant-time comparison on the reactor thread, which is what
lets the API keep answering thousands of calls per second.

Failed sign-ins are logged with the peer address, and each address's attempts that need
bcrypt are taken one at a time, every refusal answered after a delay that doubles with
the failures that address made recently (:class:`FailureThrottle`, driven by the
reactor's clock).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import Any

import bcrypt
from twisted.internet import task, threads
from twisted.internet.defer import Deferred, DeferredSemaphore, ensureDeferred
from twisted.internet.interfaces import IReactorTime

from nebula_xr.log import Log
from nebula_xr.users import User, UserPool

#: bcrypt's work factor: about 0.3 s per hash on a 2020s core.
DEFAULT_COST = 12
#: Slow verifications running at once; the rest wait their turn.
_CONCURRENT_HASHES = 2


class SecretHasher:
    """bcrypt over a session secret (normally the SHA-1 hex of a password)."""

    def __init__(self, cost: int = DEFAULT_COST) -> None:
        self.cost = cost

    @staticmethod
    def _prepared(secret: str) -> bytes:
        # bcrypt reads at most 72 bytes and stops at a NUL; 1.4 stored any string given
        # to one.user.allocate, so hash every secret down to 44 safe bytes first.
        digest = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()
        return base64.b64encode(digest)

    def hash(self, secret: str) -> str:
        return bcrypt.hashpw(self._prepared(secret), bcrypt.gensalt(self.cost)).decode("ascii")

    def verify(self, secret: str, stored: str) -> bool:
        try:
            return bcrypt.checkpw(self._prepared(secret), stored.encode("ascii"))
        except (ValueError, UnicodeEncodeError):
            return False  # not a bcrypt hash

    @staticmethod
    def is_hash(stored: str) -> bool:
        return stored.startswith(("$2a$", "$2b$", "$2y$"))


class FailureThrottle:
    """How long to hold back the refusal of a failed sign-in from an address.

    The n-th failure from an address within ``memory`` seconds of its previous one waits
    ``first_delay * 2**(n-1)`` seconds, at most ``max_delay``.
    """

    #: Above this many remembered addresses, the quiet ones are forgotten.
    _PRUNE_ABOVE = 4096

    def __init__(
        self,
        clock: IReactorTime,
        first_delay: float = 1.0,
        max_delay: float = 30.0,
        memory: float = 900.0,
    ) -> None:
        self.clock = clock
        self.first_delay = first_delay
        self.max_delay = max_delay
        self.memory = memory
        self._failures: dict[str, tuple[int, float]] = {}

    def failures(self, peer: str) -> int:
        count, last = self._failures.get(peer, (0, 0.0))
        return count if self.clock.seconds() - last <= self.memory else 0

    def failed(self, peer: str) -> float:
        """Record a failure from ``peer``; the delay before its refusal is sent."""
        now = self.clock.seconds()
        count = self.failures(peer) + 1
        self._failures[peer] = (count, now)
        if len(self._failures) > self._PRUNE_ABOVE:
            self._failures = {
                address: entry
                for address, entry in self._failures.items()
                if now - entry[1] <= self.memory
            }
        if self.first_delay <= 0:
            return 0.0
        return min(self.first_delay * 2 ** min(count - 1, 62), self.max_delay)


def _in_reactor_threads(function: Callable[..., Any], *args: Any) -> Deferred:
    from twisted.internet import reactor

    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), function, *args)


class Authenticator:
    """Who a session stands for: a uid, or None when it is not valid."""

    def __init__(
        self,
        users: UserPool,
        clock: IReactorTime,
        log: Log,
        *,
        hasher: SecretHasher | None = None,
        throttle: FailureThrottle | None = None,
        run_in_thread: Callable[..., Deferred] = _in_reactor_threads,
    ) -> None:
        self.users = users
        self.clock = clock
        self.log = log
        self.hasher = hasher or SecretHasher()
        self.throttle = throttle or FailureThrottle(clock)
        self._run_in_thread = run_in_thread
        self._slots = DeferredSemaphore(_CONCURRENT_HASHES)
        # Verified sessions by user name: (the user, HMAC of its secret under a key that
        # lives only in this process). One entry per user, so the cache stays bounded.
        self._key = secrets.token_bytes(32)
        self._verified: dict[str, tuple[User, bytes]] = {}
        # The last pending slow attempt of each address, which the next one waits for.
        self._turns: dict[str, Deferred[None]] = {}
        # Unknown names are checked against this, so they take as long as wrong passwords.
        self._decoy = self.hasher.hash(secrets.token_hex(20))

    def _mac(self, secret: str) -> bytes:
        return hmac.new(self._key, secret.encode("utf-8", "surrogatepass"), "sha256").digest()

    def cached(self, session: str) -> int | None:
        """The uid of an already verified session, else None (never slow)."""
        name, _colon, secret = session.partition(":")
        entry = self._verified.get(name)
        if entry is None:
            return None
        user, mac = entry
        if self.users.get(user.oid) is not user or not user.enabled:
            return None
        return user.oid if hmac.compare_digest(mac, self._mac(secret)) else None

    def authenticate(self, session: str, peer: str) -> int | None | Deferred[int | None]:
        """The session's uid, at once when it was verified before, else as a Deferred."""
        uid = self.cached(session)
        if uid is not None:
            return uid
        return ensureDeferred(self._verify_in_turn(session, peer))

    async def _verify_in_turn(self, session: str, peer: str) -> int | None:
        previous = self._turns.get(peer)
        turn: Deferred[None] = Deferred()
        self._turns[peer] = turn
        try:
            if previous is not None:
                await previous
            uid = self.cached(session)  # an earlier attempt may have verified it
            if uid is None:
                uid = await self._verify(session)
            if uid is None:
                await self._refuse_later(session, peer)
            return uid
        finally:
            if self._turns.get(peer) is turn:
                del self._turns[peer]
            # The next attempt starts on a later turn, once this one's answer went out:
            # firing it here would finish the attempts waiting behind it first (in reverse
            # order, the calls of a multicall too) and nest one frame per attempt.
            self.clock.callLater(0, turn.callback, None)

    async def _verify(self, session: str) -> int | None:
        name, colon, secret = session.partition(":")
        user = self.users.by_name(name) if colon else None
        usable = user is not None and user.enabled and self.hasher.is_hash(user.password)
        stored = user.password if usable else self._decoy
        valid = await self._slots.run(self._run_in_thread, self.hasher.verify, secret, stored)
        if not (valid and usable) or self.users.get(user.oid) is not user:
            return None
        self._verified[name] = (user, self._mac(secret))
        return user.oid

    async def _refuse_later(self, session: str, peer: str) -> None:
        delay = self.throttle.failed(peer)
        name = session.partition(":")[0][:64]
        self.log.warning(
            "ReM",
            f"Authentication failed for user {name!r} from {peer or 'this process'}"
            f" ({self.throttle.failures(peer)} recent failures, answered after {delay:g} s)",
        )
        if delay > 0:
            await task.deferLater(self.clock, delay, lambda: None)

    def hash_secret(self, secret: str) -> Deferred[str]:
        """The hash to store for a new user's secret, computed in a thread."""
        return self._slots.run(self._run_in_thread, self.hasher.hash, secret)

    def forget(self, user: User) -> None:
        """Drop what is remembered of ``user`` (it was deleted)."""
        entry = self._verified.get(user.name)
        if entry is not None and entry[0] is user:
            del self._verified[user.name]
