"""Cost of authentication per call, in process (no network): what the reactor thread pays.

* a signed-in 1.4 session answered from the cache (HMAC + constant-time comparison);
* a 1.2 placeholder session from loopback (AUTH legacy = loopback);
* one bcrypt verification at the shipped cost (run in a thread by the daemon, once per
  session).

    python bench/auth_bench.py [--calls 200000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from twisted.internet import task  # noqa: E402
from twisted.internet.defer import succeed  # noqa: E402

from nebula_xr.access import Access  # noqa: E402
from nebula_xr.auth import password_hash, session_for  # noqa: E402
from nebula_xr.config import AuthConfig  # noqa: E402
from nebula_xr.database import Database  # noqa: E402
from nebula_xr.log import Log  # noqa: E402
from nebula_xr.sessions import Authenticator, SecretHasher  # noqa: E402
from nebula_xr.transport.http import CallContext  # noqa: E402
from nebula_xr.users import UserPool  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nebula-auth-bench-") as directory:
        db = Database(Path(directory) / "one.db", reactor=None)
        db.open()
        users = UserPool(db)
        users.load()
        hasher = SecretHasher()
        auth_file = Path(directory) / "one_auth"
        auth_file.write_text("oneadmin:secret\n")
        users.bootstrap(hasher.hash, {"ONE_AUTH": str(auth_file)})
        authenticator = Authenticator(
            users,
            task.Clock(),
            Log(None, 0),
            hasher=hasher,
            run_in_thread=lambda function, *a: succeed(function(*a)),
        )
        access = Access(AuthConfig(), users, authenticator)
        session = session_for("oneadmin", "secret")
        local = CallContext(peer="127.0.0.1")

        begun = time.perf_counter()
        assert hasher.verify(password_hash("secret"), users.get(0).password)
        print(f"bcrypt verification (cost {hasher.cost}): {time.perf_counter() - begun:.3f} s")
        access.caller(local, session, legacy=False)  # verified once, cached from now on

        for label, call_session, legacy in (
            ("1.4 session, cached", session, False),
            ("1.2 placeholder from loopback", "sessionID", True),
        ):
            begun = time.perf_counter()
            for _ in range(args.calls):
                access.caller(local, call_session, legacy=legacy)
            elapsed = time.perf_counter() - begun
            print(
                f"{label}: {elapsed / args.calls * 1e6:.2f} us per call "
                f"({args.calls / elapsed:,.0f} calls/s on one core)"
            )
        db.close()


if __name__ == "__main__":
    main()
