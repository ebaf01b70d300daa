"""A VM's serial console in the page: a WebSocket carrying the terminal of the command
``onevm console`` runs (``ssh -t <host> -- [sudo] xm console <domain>``).

The daemon asks ``nebula_xr.vm.console`` as the signed-in user (so the same ownership
and state checks apply), builds the command with the CLI's own fixed form
(:func:`~nebula_xr.cli.onevm.console_argv`, ``$ONE_SSH`` as ssh) and runs it on a
pseudo-terminal. Binary frames are the terminal's bytes both ways; a text frame from the
server is a JSON notice (``{"banner": ...}`` or ``{"error": ...}``).
"""

from __future__ import annotations

import json
import os
import re
from http.cookies import CookieError, SimpleCookie
from typing import Any

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.types import ConnectionDeny
from twisted.internet.defer import ensureDeferred
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from nebula_xr.cli.common import CliError
from nebula_xr.cli.onevm import console_argv
from nebula_xr.web.server import COOKIE, WebConsole, WebSession

_log = Logger()
_PATH = re.compile(r"/console/(\d{1,9})\Z")
#: Input bytes one frame may carry (keystrokes and pastes, not uploads).
_MAX_FRAME = 64 * 1024


class _Terminal(ProcessProtocol):
    def __init__(self, socket: ConsoleProtocol) -> None:
        self.socket = socket

    def outReceived(self, data: bytes) -> None:
        self.socket.sendMessage(data, isBinary=True)

    def errReceived(self, data: bytes) -> None:
        self.socket.sendMessage(data, isBinary=True)

    def processEnded(self, reason: Any) -> None:
        self.socket.terminal = None
        self.socket.sendClose(1000, "console closed")


class ConsoleProtocol(WebSocketServerProtocol):
    console: WebConsole
    spawn: Any

    def onConnect(self, request: Any) -> None:
        # A page of another site may open WebSockets here with our cookie: only our own
        # origin is served.
        origin = request.headers.get("origin", "")
        host = request.headers.get("host", "")
        if origin != f"http://{host}":
            raise ConnectionDeny(403, "Wrong origin")
        match = _PATH.match(request.path)
        if match is None:
            raise ConnectionDeny(404, "No such console")
        cookies: SimpleCookie = SimpleCookie()
        try:
            cookies.load(request.headers.get("cookie", ""))
        except CookieError:
            raise ConnectionDeny(401, "Not signed in") from None
        token = cookies[COOKIE].value if COOKIE in cookies else ""
        web = self.console.session_for(token)
        if web is None:
            raise ConnectionDeny(401, "Not signed in")
        self.web: WebSession = web
        self.vid = int(match.group(1))
        self.peer_address = request.peer.split(":")[1] if ":" in request.peer else ""
        self.terminal: Any = None

    def onOpen(self) -> None:
        ensureDeferred(self._attach()).addErrback(self._failed)

    async def _attach(self) -> None:
        reply = await ensureDeferred(
            self.console.call_console(self.web, self.peer_address, self.vid)
        )
        if not reply[0]:
            self._notice({"error": reply[1]})
            self.sendClose(1000)
            return
        try:
            argv = console_argv(reply[1], os.environ.get("ONE_SSH") or "ssh")
        except CliError as error:
            self._notice({"error": str(error)})
            self.sendClose(1000)
            return
        if reply[2]:
            self._notice({"banner": reply[2]})
        environment = dict(os.environ, TERM="xterm")
        self.terminal = self.spawn(_Terminal(self), argv[0], argv, environment, usePTY=True)

    def _failed(self, failure: Any) -> None:
        _log.failure("Web console of VM {vid} failed", failure, vid=self.vid)
        self._notice({"error": f"Can not open the console of VM {self.vid}"})
        self.sendClose(1000)

    def _notice(self, notice: dict[str, str]) -> None:
        self.sendMessage(json.dumps(notice).encode(), isBinary=False)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.terminal is not None:
            self.terminal.write(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        terminal = getattr(self, "terminal", None)
        self.terminal = None
        if terminal is not None:
            try:
                terminal.signalProcess("HUP")
            except Exception:  # already gone
                pass


def console_resource(console: WebConsole, reactor: Any) -> WebSocketResource:
    factory = WebSocketServerFactory()
    factory.setProtocolOptions(maxMessagePayloadSize=_MAX_FRAME, maxFramePayloadSize=_MAX_FRAME)

    class Protocol(ConsoleProtocol):
        pass

    Protocol.console = console
    Protocol.spawn = staticmethod(reactor.spawnProcess)
    factory.protocol = Protocol
    return WebSocketResource(factory)
