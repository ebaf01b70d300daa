"""Hot standby on PostgreSQL: of the daemons sharing one database, exactly one is active.

The active daemon holds a session-level advisory lock on a connection of its own. A daemon
that starts while another holds it waits, trying again every second, without loading the
pools or listening; when the holder dies its session ends, PostgreSQL releases the lock,
and the first waiter to take it loads the database, reconciles the VMs left in transient
states and opens the XML-RPC port. The active daemon checks its lock connection every
second and stops at once if it is lost, since another daemon may then take over.

Every database call runs in a thread (``deferToThread``): the reactor never waits for it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from nebula_xr.postgresql import PostgresSettings

#: The advisory lock's key: "nebula-xr" as 8 bytes, so no other application's key meets it.
LOCK_KEY = int.from_bytes(b"nebulaxr", "big", signed=True)
#: Seconds between two attempts to become active, and between two checks of the lock.
RETRY_SECONDS = 1.0
#: TCP keepalive of the lock connection, on both ends: a front-end that vanishes without
#: closing it (power cut, network partition) loses the lock after about 5 + 2 × 2 s.
_KEEPALIVE = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2}
_KEEPALIVE_COUNT = 2


class ActiveLock:
    """The advisory lock and its dedicated connection (methods block: run them in a thread)."""

    def __init__(self, settings: PostgresSettings) -> None:
        self.settings = settings
        self._connection: Any = None

    def try_acquire(self) -> bool:
        """True once this daemon holds the lock (connecting first if needed)."""
        if self._connection is None or self._connection.closed:
            self._connection = self.settings.connect(
                "lock",
                keepalives_count=_KEEPALIVE_COUNT,
                options=(
                    "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 "
                    f"-c tcp_keepalives_count={_KEEPALIVE_COUNT}"
                ),
                **_KEEPALIVE,
            )
        row = self._connection.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()
        return bool(row[0])

    def held(self) -> bool:
        """True while the lock's session is alive (the lock is then still ours)."""
        if self._connection is None or self._connection.closed:
            return False
        try:
            self._connection.execute("SELECT 1")
        except Exception:  # any failure means the session, and so the lock, may be gone
            self._connection.close()
            return False
        return True

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


class Standby:
    """Waits to become active, then calls ``on_active``; then watches the lock and calls
    ``on_lost`` if it goes. ``report`` gets one line per change of situation."""

    def __init__(
        self,
        reactor: Any,
        lock: ActiveLock,
        on_active: Callable[[], None],
        on_lost: Callable[[str], None],
        report: Callable[[str], None],
    ) -> None:
        self.reactor = reactor
        self.lock = lock
        self.on_active = on_active
        self.on_lost = on_lost
        self.report = report
        self.active = False
        self._last_problem = ""
        self._waiting_reported = False

    def start(self) -> None:
        self._attempt()

    def _attempt(self) -> Deferred:
        attempt = deferToThread(self.lock.try_acquire)
        attempt.addCallbacks(self._attempted, self._failed)
        return attempt

    def _attempted(self, acquired: bool) -> None:
        if acquired:
            self.active = True
            self.report(f"Active: holding the database lock on {self.lock.settings.describe()}")
            self.on_active()
            self.reactor.callLater(RETRY_SECONDS, self._check)
            return
        if not self._waiting_reported:
            self._waiting_reported = True
            self.report(
                f"Standby: another daemon is active on {self.lock.settings.describe()}; "
                f"trying every {RETRY_SECONDS:g} s to take over"
            )
        self.reactor.callLater(RETRY_SECONDS, self._attempt)

    def _failed(self, failure: Any) -> None:
        problem = f"Standby: can not reach {self.lock.settings.describe()}: {failure.value}"
        if problem != self._last_problem:
            self._last_problem = problem
            self.report(problem)
        self.reactor.callLater(RETRY_SECONDS, self._attempt)

    def _check(self) -> None:
        check = deferToThread(self.lock.held)

        def checked(held: bool) -> None:
            if held:
                self.reactor.callLater(RETRY_SECONDS, self._check)
            else:
                self.on_lost(
                    f"Lost the database lock on {self.lock.settings.describe()}: "
                    "stopping, another daemon may take over"
                )

        check.addCallback(checked)
