"""Authentication: session verification and its cache, the failure throttle on a
task.Clock, the oneadmin bootstrap and its ONE_AUTH file, AUTH in oned.conf, and a
Haizea-1.0-style client (1.4 session from ONE_AUTH over Python's xmlrpc.client) against
a real daemon."""

from __future__ import annotations

import hashlib
import sqlite3
import stat
import subprocess
import sys
import xmlrpc.client
from pathlib import Path

import pytest
from twisted.internet import task
from twisted.internet.defer import Deferred, succeed

from nebula_xr.auth import password_hash, read_one_auth, session_for
from nebula_xr.config import ConfigError, Layout, parse_config
from nebula_xr.database import Database
from nebula_xr.log import Log
from nebula_xr.sessions import Authenticator, FailureThrottle, SecretHasher
from nebula_xr.users import UserPool
from tests.oned import OneDaemon, wait_for, write_conf

FAST = SecretHasher(cost=4)


class CountingHasher(SecretHasher):
    def __init__(self) -> None:
        super().__init__(cost=4)
        self.verifications = 0

    def verify(self, secret: str, stored: str) -> bool:
        self.verifications += 1
        return super().verify(secret, stored)


def in_this_thread(function, *args):  # noqa: ANN001, ANN201
    return succeed(function(*args))


@pytest.fixture
def pool(tmp_path: Path):
    db = Database(tmp_path / "one.db", reactor=None)
    db.open()
    users = UserPool(db)
    users.load()
    (tmp_path / "one_auth").write_text("oneadmin:secret\n")
    users.bootstrap(FAST.hash, {"ONE_AUTH": str(tmp_path / "one_auth")})
    alice = users.allocate("alice", FAST.hash(password_hash("alice-pw")))
    yield users, alice
    db.close()


def make_authenticator(users: UserPool, tmp_path: Path, clock: task.Clock):
    hasher = CountingHasher()
    log = Log(tmp_path / "oned.log", 3)
    throttle = FailureThrottle(clock, first_delay=1.0, max_delay=8.0, memory=600.0)
    auth = Authenticator(
        users, clock, log, hasher=hasher, throttle=throttle, run_in_thread=in_this_thread
    )
    return auth, hasher, log


def result_of(value):  # noqa: ANN001, ANN201
    """The value of a fired Deferred (or a plain value); fails if it has not fired."""
    if not isinstance(value, Deferred):
        return value
    seen = []
    value.addBoth(seen.append)
    assert seen, "not answered yet"
    return seen[0]


def test_a_session_is_verified_once_then_answered_from_the_cache(pool, tmp_path) -> None:
    users, alice = pool
    clock = task.Clock()
    auth, hasher, _log = make_authenticator(users, tmp_path, clock)
    session = session_for("alice", "alice-pw")
    first = auth.authenticate(session, "10.0.0.5")
    assert isinstance(first, Deferred) and result_of(first) == alice.oid
    assert hasher.verifications == 1
    for _ in range(100):
        assert auth.authenticate(session, "10.0.0.5") == alice.oid  # at once, no Deferred
    assert hasher.verifications == 1
    # the cache never accepts another secret for a cached user
    refused = auth.authenticate("alice:" + "0" * 40, "10.0.0.5")
    clock.advance(60)
    assert result_of(refused) is None
    assert hasher.verifications == 2
    # a deleted user's session is dead, with or without forget()
    users.delete(alice)
    assert auth.cached(session) is None
    auth.forget(alice)
    refused = auth.authenticate(session, "10.0.0.5")
    clock.advance(60)
    assert result_of(refused) is None


def test_refusals_from_an_address_slow_down_and_log_the_peer(pool, tmp_path) -> None:
    users, alice = pool
    clock = task.Clock()
    auth, _hasher, log = make_authenticator(users, tmp_path, clock)
    wrong = session_for("alice", "guess")
    for delay in (1.0, 2.0, 4.0, 8.0, 8.0):  # doubling, capped at max_delay
        refusal = auth.authenticate(wrong, "192.0.2.7")
        clock.advance(delay - 0.001)
        assert not refusal.called, f"refused before {delay} s"
        clock.advance(0.001)
        assert result_of(refusal) is None
    # another address is not held back by the first one's failures
    elsewhere = auth.authenticate(wrong, "192.0.2.8")
    clock.advance(1.0)
    assert result_of(elsewhere) is None
    # the right password from the throttled address is answered without a delay
    assert result_of(auth.authenticate(session_for("alice", "alice-pw"), "192.0.2.7")) == 1
    # attempts from one address wait their turn: the second is not verified before the
    # first's refusal went out
    first, second = (auth.authenticate(wrong, "192.0.2.9") for _ in range(2))
    clock.advance(1.0)
    assert first.called and not second.called
    clock.advance(2.0)
    assert second.called
    # failures are forgotten after a quiet period
    clock.advance(601)
    assert auth.throttle.failures("192.0.2.7") == 0
    log.close()
    text = (tmp_path / "oned.log").read_text()
    assert "Authentication failed for user 'alice' from 192.0.2.7" in text
    assert text.count("from 192.0.2.7") == 5


def test_unknown_users_and_malformed_sessions_fail_like_wrong_passwords(pool, tmp_path) -> None:
    users, _alice = pool
    clock = task.Clock()
    auth, hasher, _log = make_authenticator(users, tmp_path, clock)
    for session in ("nobody:" + "1" * 40, "sessionID", "", ":", "alice:"):
        refusal = auth.authenticate(session, "198.51.100.1")
        clock.advance(10)
        assert result_of(refusal) is None
    assert hasher.verifications == 5  # each one ran bcrypt (against a decoy when unknown)


def test_stored_passwords_are_salted_hashes_of_the_session_secret(pool) -> None:
    users, alice = pool
    sha1 = password_hash("alice-pw")
    assert alice.password.startswith("$2b$04$") and sha1 not in alice.password
    assert FAST.verify(sha1, alice.password) and not FAST.verify(sha1 + "x", alice.password)
    assert FAST.hash(sha1) != alice.password  # salted
    assert not FAST.verify(sha1, sha1)  # a legacy SHA-1 value never verifies as a hash
    # any length and any character survive the 72-byte/NUL limits of bcrypt
    long_secret = "x" * 100
    assert not FAST.verify(long_secret + "y", FAST.hash(long_secret))


def test_legacy_sha1_rows_are_rehashed(tmp_path: Path) -> None:
    db = Database(tmp_path / "one.db", reactor=None)
    db.open()
    db.close()
    with sqlite3.connect(tmp_path / "one.db") as connection:
        connection.execute(
            "INSERT INTO user_pool VALUES (0, 'oneadmin', ?, 1)", (password_hash("pw"),)
        )
    db = Database(tmp_path / "one.db", reactor=None)
    db.open()
    users = UserPool(db)
    users.load()
    assert users.rehash_legacy(FAST.is_hash, FAST.hash) == 1
    db.close()
    with sqlite3.connect(tmp_path / "one.db") as connection:
        (stored,) = connection.execute("SELECT password FROM user_pool").fetchone()
    assert FAST.verify(password_hash("pw"), stored)


# -- configuration --------------------------------------------------------------------------

LAYOUT = Layout(Path("/v"), Path("/e"), Path("/v"), Path("/l"))


def test_auth_configuration() -> None:
    default = parse_config("PORT = 2633\n", LAYOUT).auth
    assert (default.enabled, default.legacy, default.insecure_network) == (True, "loopback", False)
    conf = parse_config("AUTH = [ legacy = session, failure_delay = 0.5 ]\n", LAYOUT).auth
    assert (conf.legacy, conf.failure_delay, conf.failure_delay_max) == ("session", 0.5, 30.0)
    for bad in ("AUTH = [ legacy = anyone ]", "AUTH = [ enabled = maybe ]", "AUTH = yes"):
        with pytest.raises(ConfigError):
            parse_config(bad + "\n", LAYOUT)
    with pytest.raises(ConfigError, match="without authentication"):
        parse_config('LISTEN_ADDRESS = "0.0.0.0"\nAUTH = [ enabled = no ]\n', LAYOUT)
    open_conf = parse_config(
        'LISTEN_ADDRESS = "0.0.0.0"\nAUTH = [ enabled = no, insecure_network = yes ]\n', LAYOUT
    )
    assert open_conf.auth.enabled is False
    # without authentication on loopback, nothing needs saying
    local = parse_config('LISTEN_ADDRESS = "127.0.0.1"\nAUTH = [ enabled = no ]\n', LAYOUT)
    assert local.auth.enabled is False


def conf_listening_on(location: Path, address: str, auth: str) -> Path:
    conf = write_conf(location, auth=auth)
    text = conf.read_text().replace('LISTEN_ADDRESS = "127.0.0.1"', f'LISTEN_ADDRESS = "{address}"')
    conf.write_text(text)
    return conf


def test_daemon_refuses_an_open_network_address(tmp_path: Path) -> None:
    conf = conf_listening_on(tmp_path, "0.0.0.0", "AUTH = [ enabled = no ]")
    done = subprocess.run(
        [sys.executable, "-m", "nebula_xr", "--conf", str(conf)],
        env={"ONE_LOCATION": str(tmp_path), "ONE_AUTH": str(tmp_path / "a"), "PATH": "/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "Refusing to serve 0.0.0.0" in done.stderr
    assert not (tmp_path / "var" / "one.db").exists()


def test_daemon_warns_at_every_start_when_told_to_serve_without_auth(tmp_path: Path) -> None:
    conf_listening_on(tmp_path, "0.0.0.0", "AUTH = [ enabled = no, insecure_network = yes ]")
    for _ in range(2):
        one = OneDaemon(tmp_path).start()
        assert one.stop() == 0
    log = (tmp_path / "var" / "oned.log").read_text()
    assert log.count("Authentication is disabled") == 2
    assert "0.0.0.0 is reachable from the network" in log


# -- bootstrap ------------------------------------------------------------------------------


def test_first_start_without_one_auth_writes_a_private_random_password(tmp_path: Path) -> None:
    write_conf(tmp_path)
    path = tmp_path / "home" / ".one" / "one_auth"
    path.parent.parent.mkdir()
    one = OneDaemon(tmp_path, one_auth=path).start()
    try:
        name, password = read_one_auth(path)
        assert name == "oneadmin" and len(password) >= 20
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert any(f"random password, written to {path}" in line for line in one.startup)
        log = tmp_path / "var" / "oned.log"
        told = f"created with a random password, written to {path}"
        wait_for(lambda: told in log.read_text(), what="the password's line in oned.log")
        with one.proxy() as proxy:
            assert proxy.one.userpool.info(session_for(name, password))[0] is True
            assert proxy.one.userpool.info(session_for(name, password + "x"))[0] is False
    finally:
        one.stop()
    with sqlite3.connect(one.db_path) as db:
        (stored,) = db.execute("SELECT password FROM user_pool WHERE oid = 0").fetchone()
    assert stored.startswith("$2b$") and password_hash(password) not in stored
    # the next start neither reads nor rewrites the file
    path.write_text("oneadmin:edited\n")
    one = OneDaemon(tmp_path, one_auth=path).start()
    try:
        assert one.call14("one.userpool.info", session=session_for(name, password))[0] is True
    finally:
        one.stop()


def test_a_malformed_one_auth_file_stops_the_first_start(tmp_path: Path) -> None:
    write_conf(tmp_path)
    (tmp_path / "one_auth").write_text("no colon here\n")
    with pytest.raises(RuntimeError, match="first line must be"):
        OneDaemon(tmp_path).start()


# -- a Haizea 1.0 style client --------------------------------------------------------------


def haizea_session(one_auth: Path) -> str:
    """As Haizea 1.0 builds it: first line of ONE_AUTH, split on ':', SHA-1 of the rest."""
    user, password = one_auth.read_text().splitlines()[0].strip().split(":")
    return f"{user}:{hashlib.sha1(password.encode()).hexdigest()}"


def test_haizea_style_client_works_with_the_right_password_only(tmp_path: Path) -> None:
    write_conf(tmp_path)
    (tmp_path / "one_auth").write_text("oneadmin:haizea-pw\n")
    one = OneDaemon(tmp_path).start()
    try:
        assert one.call("one.hostallocate", "node01", "im_xen", "vmm_xen", "tm_nfs", True)[0]
        assert one.call("one.vmallocate", "NAME = lease\nCPU = 1\nMEMORY = 64\n") == [True, 0]
        host, port = one.url.split("//")[1].split("/")[0].split(":")
        proxy = xmlrpc.client.ServerProxy(f"http://{host}:{port}")  # Haizea's URL: no path
        session = haizea_session(tmp_path / "one_auth")
        methods = proxy.system.listMethods()
        assert {"one.hostpool.info", "one.host.info", "one.vmpool.info", "one.vm.info"} <= set(
            methods
        )
        ok, hosts = proxy.one.hostpool.info(session)
        assert ok and "<NAME>node01</NAME>" in hosts
        ok, vms = proxy.one.vmpool.info(session, -2)
        assert ok and "<NAME>lease</NAME>" in vms
        ok, vm = proxy.one.vm.info(session, 0)
        assert ok and "<STATE>1</STATE>" in vm
        assert proxy.one.vm.deploy(session, 0, 0) == [True]
        assert proxy.one.vm.action(session, "shutdown", 99) == [
            False,
            "The virtual machine 99 does not exists",
        ]

        wrong = "oneadmin:" + hashlib.sha1(b"not-the-password").hexdigest()
        assert proxy.one.hostpool.info(wrong) == [
            False,
            "User not authenticated, RequestManagerHostPoolInfo aborted.",
        ]
        assert proxy.one.vmpool.info(wrong, -2) == [
            False,
            "User not authenticated, aborting RequestManagerPoolInfo call.",
        ]
        assert proxy.one.vm.info(wrong, 0) == [
            False,
            "User not authorized to perform operation upon VirtualMachine [0]",
        ]
        assert proxy.one.vm.action(wrong, "shutdown", 0) == [
            False,
            "User not authorized to perform operation upon VirtualMachine [0]",
        ]
        # the right password still works after the failures
        assert proxy.one.hostpool.info(session)[0] is True
    finally:
        one.stop()
    log = (tmp_path / "var" / "oned.log").read_text()
    assert "Authentication failed for user 'oneadmin' from 127.0.0.1" in log
