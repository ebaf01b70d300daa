"""Running the real daemon for tests: an ONE_LOCATION tree, an oned.conf, a process."""

from __future__ import annotations

import http.client
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.parse
import xmlrpc.client
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nebula_xr.auth import read_one_auth, session_for

#: The administrator password of test daemons whose ONE_AUTH file the test did not write.
ADMIN_PASSWORD = "test-admin-password"
#: Dummy plugins under the 1.2 driver names, as the tutorial's `onehost add` uses them.
#: The VMM has type xen, so VMs get Xen deployment files, with a default kernel.
DUMMY_AS_XEN = """
IM_MAD = [ name = "im_xen",  executable = "im_dummy" {im_extra} ]
VM_MAD = [ name = "vmm_xen", executable = "vmm_dummy", type = "xen" {vmm_extra},
           default = "vmm_xen_defaults.conf" ]
TM_MAD = [ name = "tm_nfs",  executable = "tm_dummy" {tm_extra} ]
"""
XEN_DEFAULTS = "OS = [ kernel = /boot/vmlinuz, root = sda1 ]\n"

#: Authentication as shipped, with refusals delayed by milliseconds instead of seconds, so
#: that tests of refusals do not wait; the delays themselves are tested on a task.Clock.
FAST_AUTH = "AUTH = [ enabled = yes, failure_delay = 0.01, failure_delay_max = 0.05 ]"


def write_conf(
    location: Path,
    *,
    drivers: str | None = None,
    scheduler: str = 'SCHEDULER = [ plugin = "none" ]',
    auth: str = FAST_AUTH,
    extra: str = "",
    im_extra: str = "",
    vmm_extra: str = "",
    tm_extra: str = "",
) -> Path:
    """Write ``<location>/etc/oned.conf`` with fast timers and an ephemeral port."""
    etc = location / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    if drivers is None:
        drivers = DUMMY_AS_XEN.format(im_extra=im_extra, vmm_extra=vmm_extra, tm_extra=tm_extra)
        (etc / "vmm_xen_defaults.conf").write_text(XEN_DEFAULTS)
    conf = etc / "oned.conf"
    conf.write_text(
        "HOST_MONITORING_INTERVAL = 1\n"
        "VM_POLLING_INTERVAL = 1\n"
        "MANAGER_TIMER = 0.2\n"
        "PORT = 0\n"
        'LISTEN_ADDRESS = "127.0.0.1"\n'
        "DEBUG_LEVEL = 3\n"
        'MAC_PREFIX = "00:03"\n'
        f"VM_DIR = {location}/remote\n"
        f"{scheduler}\n{auth}\n{drivers}\n{extra}\n"
    )
    return conf


class OneDaemon:
    """A nebula-xr process on an ephemeral port, with helpers to talk to it.

    Its ONE_AUTH file is ``one_auth`` if given (the daemon creates it if missing), else
    ``<location>/one_auth``, written with :data:`ADMIN_PASSWORD` unless the test wrote it;
    :attr:`session` is oneadmin's 1.4 session. :attr:`startup` keeps the daemon's
    stderr lines up to the one announcing the listener.
    """

    def __init__(
        self,
        location: Path,
        conf: Path | None = None,
        one_auth: Path | None = None,
        module: str = "nebula_xr",
    ) -> None:
        self.location = location
        self.conf = conf or location / "etc" / "oned.conf"
        self.one_auth = one_auth or location / "one_auth"
        self._write_one_auth = one_auth is None
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.startup: list[str] = []
        self.module = module  # what ``python -m`` runs: the daemon, or a test's wrapper of it

    @property
    def session(self) -> str:
        return session_for(*read_one_auth(self.one_auth))

    @property
    def db_path(self) -> Path:
        return self.location / "var" / "one.db"

    def start(self, timeout: float = 20.0) -> OneDaemon:
        if self._write_one_auth and not self.one_auth.exists():
            self.one_auth.write_text(f"oneadmin:{ADMIN_PASSWORD}\n")
        env = dict(os.environ, ONE_LOCATION=str(self.location), ONE_AUTH=str(self.one_auth))
        self.process = subprocess.Popen(
            [sys.executable, "-m", self.module, "--conf", str(self.conf)],
            env=env,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        assert self.process.stderr is not None
        deadline = time.monotonic() + timeout
        lines = self.startup = []
        while time.monotonic() < deadline:
            line = self.process.stderr.readline().decode(errors="replace")
            if not line:
                break
            lines.append(line)
            match = re.search(r"XML-RPC on (https?://\S+/RPC2)", line)
            if match:
                self.url = match.group(1)
                return self
        self.stop()
        raise RuntimeError("nebula-xr did not start:\n" + "".join(lines))

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        if self.process.stderr is not None:
            self.process.stderr.close()
        self.process = None
        return code

    def proxy(self) -> xmlrpc.client.ServerProxy:
        return xmlrpc.client.ServerProxy(self.url, allow_none=False)

    def call(self, method: str, *args: Any) -> Any:
        """A call as the 1.2 clients make it, with their placeholder session."""
        with self.proxy() as proxy:
            return getattr(proxy, method)("sessionID", *args)

    def call14(self, method: str, *args: Any, session: str | None = None) -> Any:
        """A call with a 1.4 session, oneadmin's unless ``session`` is given."""
        with self.proxy() as proxy:
            return getattr(proxy, method)(session or self.session, *args)

    def raw_call(self, body: bytes) -> bytes:
        """POST a hand-written XML-RPC body (for what xmlrpc.client refuses to send)."""
        parts = urllib.parse.urlsplit(self.url)
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        try:
            connection.request("POST", parts.path, body, {"Content-Type": "text/xml"})
            response = connection.getresponse()
            assert response.status == 200, response.status
            return response.read()
        finally:
            connection.close()

    def db(self) -> sqlite3.Connection:
        """A reader connection, as the 1.2 clients open the file."""
        connection = sqlite3.connect(self.db_path, timeout=5)
        return connection

    def vm_row(self, vid: int) -> tuple:
        with self.db() as connection:
            return connection.execute("SELECT * FROM vm_pool WHERE oid = ?", (vid,)).fetchone()

    def vm_state(self, vid: int) -> tuple[int, int]:
        """(state, lcm_state) as one.vmget_info reports them."""
        ok, text = self.call("one.vmget_info", vid)
        assert ok, text
        fields = dict(line.split(":", 1) for line in text.splitlines()[:12] if ":" in line)
        return int(fields["STATE             "]), int(fields["LCM STATE         "])


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something true; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)
