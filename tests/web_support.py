"""A daemon with the web console on, and an HTTP client that signs in to it."""

from __future__ import annotations

import http.cookiejar
import json
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.oned import ADMIN_PASSWORD, OneDaemon, write_conf


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_web_daemon(location: Path, extra: str = "", **drivers: str) -> tuple[OneDaemon, str]:
    """The daemon and its web console's base URL;
    ``drivers`` are write_conf's ``*_extra`` driver options."""
    port = free_port()
    web = f'WEB = [ port = {port}, listen_address = "127.0.0.1" ]'
    write_conf(location, extra=f"{web}\n{extra}", **drivers)
    daemon = OneDaemon(location).start()
    assert f"web console on http://127.0.0.1:{port}/" in daemon.startup[-1]
    return daemon, f"http://127.0.0.1:{port}"


class WebClient:
    """What a browser does with the cookie and the CSRF token, without a browser."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))
        self.csrf = ""

    def request(
        self,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        *,
        raw: bytes | None = None,
    ) -> tuple[int, Any, Any]:
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        wanted = {"Content-Type": "application/json"}
        if self.csrf:
            wanted["X-CSRF-Token"] = self.csrf
        wanted.update(headers or {})
        request = urllib.request.Request(self.base + path, data=data, headers=wanted)
        try:
            with self.opener.open(request, timeout=20) as response:
                status, text, info = response.status, response.read(), response.headers
        except urllib.error.HTTPError as error:
            status, text, info = error.code, error.read(), error.headers
        kind = info.get("Content-Type", "")
        return status, json.loads(text) if kind.startswith("application/json") else text, info

    def sign_in(self, user: str = "oneadmin", password: str = ADMIN_PASSWORD) -> int:
        status, body, _ = self.request("/api/signin", {"user": user, "password": password})
        if status == 200:
            self.csrf = body["csrf"]
        return status

    def call(self, method: str, *params: Any) -> list[Any]:
        status, body, _ = self.request("/api/call", {"method": method, "params": list(params)})
        assert status == 200, body
        return body["reply"]
