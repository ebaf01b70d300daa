"""The web console's HTTP side: sign-in, JSON reads, actions, server-sent events.

Signing in checks ``user:sha1(password)`` exactly as a 1.4 XML-RPC session is checked
(:class:`~nebula_xr.access.Access`, with its failure throttle), and the session string
stays on the server, behind a random cookie (HttpOnly, SameSite=Strict). Every action
goes through the daemon's :class:`~nebula_xr.transport.xmlrpc.MethodRegistry` with that
session, so it meets the same ownership checks and gets the same replies and refusal
texts as ``onevm``; the page shows them as they are. Reads apply the same ownership
rules as the 1.4 pool calls. Every POST needs the session's CSRF token in a header and
a JSON body (which a cross-site form cannot send).
"""

from __future__ import annotations

import json
import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, ensureDeferred, maybeDeferred
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from twisted.web.static import File

from nebula_xr.access import Caller
from nebula_xr.auth import session_for
from nebula_xr.model import Host, HostState, VirtualMachine, VMState
from nebula_xr.transport.http import CallContext
from nebula_xr.transport.xmlrpc import Fault
from nebula_xr.web import rows

STATIC = Path(__file__).parent / "static"
COOKIE = "nebula_web"
#: A session unused for this long is signed out.
IDLE_TIMEOUT = 8 * 3600.0
#: Recent events kept for the dashboard.
RECENT_EVENTS = 100
#: The longest tail of vm.log the VM page shows.
LOG_TAIL_BYTES = 64 * 1024

#: Methods the page may call, as a 1.4 client would (the session is added here).
ACTIONS = frozenset(
    {
        "one.vm.allocate",
        "one.vm.deploy",
        "one.vm.action",
        "one.vm.migrate",
        "one.host.allocate",
        "one.host.delete",
        "one.host.enable",
        "one.vn.allocate",
        "one.vn.delete",
    }
)

_log = Logger()


class History(Protocol):
    """Monitoring history (``nebula_xr.monitoring_history.MonitoringHistory``)."""

    def samples(
        self, kind: str, oid: int, since: float | None = None
    ) -> list[dict[str, float]]: ...


@dataclass
class WebSession:
    session: str  # the 1.4 session string, user:sha1(password)
    name: str
    uid: int
    csrf: str
    last_used: float
    streams: list[Request] = field(default_factory=list)


class HttpError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _peer(request: Request) -> str:
    address = request.getClientAddress()
    return getattr(address, "host", "") or ""


class WebConsole:
    """Everything the console needs from the daemon, and the signed-in sessions."""

    def __init__(self, daemon: Any, history: History, clock: Any) -> None:
        self.daemon = daemon
        self.history = history
        self.clock = clock
        self.sessions: dict[str, WebSession] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=RECENT_EVENTS)
        self._event_id = 0
        self._host_shown: dict[int, str] = {}

    # -- sessions -------------------------------------------------------------------------

    async def sign_in(self, name: str, password: str, peer: str) -> tuple[WebSession, str] | None:
        session = session_for(name, password)
        caller = self.daemon.access.caller(CallContext(peer=peer), session, legacy=False)
        if isinstance(caller, Deferred):
            caller = await caller
        if not caller.authenticated:
            return None
        self._forget_idle()
        token = secrets.token_urlsafe(32)
        web = WebSession(session, name, caller.uid, secrets.token_urlsafe(24), self.clock.seconds())
        self.sessions[token] = web
        return web, token

    def session_of(self, request: Request) -> WebSession | None:
        token = request.getCookie(COOKIE.encode())
        return self.session_for(token.decode("ascii", "replace")) if token else None

    def session_for(self, token: str) -> WebSession | None:
        """The signed-in session of a cookie's token, None when unknown or idle too long."""
        web = self.sessions.get(token)
        if web is None:
            return None
        now = self.clock.seconds()
        if now - web.last_used > IDLE_TIMEOUT:
            self.sign_out(token)
            return None
        web.last_used = now
        return web

    def _forget_idle(self) -> None:
        now = self.clock.seconds()
        for token, web in list(self.sessions.items()):
            if now - web.last_used > IDLE_TIMEOUT and not web.streams:
                del self.sessions[token]

    def sign_out(self, token: str) -> None:
        web = self.sessions.pop(token, None)
        if web is not None:
            for stream in list(web.streams):
                stream.finish()

    async def caller(self, web: WebSession, peer: str) -> Caller:
        """The caller the session stands for now (a deleted user is nobody)."""
        caller = self.daemon.access.caller(CallContext(peer=peer), web.session, legacy=False)
        if isinstance(caller, Deferred):
            caller = await caller
        return caller

    # -- reads ----------------------------------------------------------------------------

    def _vm_name(self, vid: int) -> str:
        vm = self.daemon.vms.get(vid)
        return vm.name if vm is not None else ""

    def state(self, caller: Caller) -> dict[str, Any]:
        daemon = self.daemon
        name_of = daemon.users.name_of
        vms = [
            rows.vm_row(vm, name_of)
            for vm in sorted(daemon.vms, key=lambda vm: vm.oid)
            if vm.state is not VMState.DONE and caller.owns(vm.uid)
        ]
        hosts = [rows.host_row(host) for host in sorted(daemon.hosts, key=lambda h: h.oid)]
        networks = [
            rows.network_row(network, name_of)
            for network in sorted(daemon.networks, key=lambda n: n.oid)
            if caller.may_use_network(network.uid)
        ]
        drivers: dict[str, list[str]] = {kind: [] for kind in ("im", "vmm", "tm")}
        for entry in daemon.config.drivers:
            drivers[entry.kind].append(entry.name)
        events = [event for event in self.events if _visible(event, caller)]
        return {
            "now": self.clock.seconds(),
            "vms": vms,
            "hosts": hosts,
            "networks": networks,
            "drivers": drivers,
            "events": events[-30:],
        }

    def vm_detail(self, caller: Caller, vid: int) -> dict[str, Any]:
        vm = self.daemon.vms.get(vid)
        if vm is None or not caller.owns(vm.uid):
            raise HttpError(404, f"VM {vid} does not exist or is not yours")
        history = [
            {
                "seq": record.seq,
                "host": record.host_name,
                "hid": record.hid,
                "vm_mad": record.vm_mad,
                "tm_mad": record.tm_mad,
                "stime": record.stime,
                "etime": record.etime,
                "pstime": record.pstime,
                "petime": record.petime,
                "rstime": record.rstime,
                "retime": record.retime,
                "estime": record.estime,
                "eetime": record.eetime,
                "reason": int(record.reason),
            }
            for record in vm.history
        ]
        return {
            "vm": rows.vm_row(vm, self.daemon.users.name_of),
            "template": vm.template.to_text(),
            "history": history,
            "log": self._vm_log(vid),
            "placement": rows.placement(vm, self.daemon.hosts),
            "samples": self.samples("vm", vid),
        }

    def _vm_log(self, vid: int) -> str:
        self.daemon.log.flush()
        path = self.daemon.vm_dir(vid) / "vm.log"
        try:
            with path.open("rb") as stream:
                stream.seek(0, 2)
                size = stream.tell()
                stream.seek(max(0, size - LOG_TAIL_BYTES))
                return stream.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def host_detail(self, caller: Caller, hid: int) -> dict[str, Any]:
        host = self.daemon.hosts.get(hid)
        if host is None or not caller.authenticated:
            raise HttpError(404, f"Host {hid} does not exist")
        vms = [
            rows.vm_row(vm, self.daemon.users.name_of)
            for vm in self.daemon.vms
            if vm.state is VMState.ACTIVE
            and vm.current is not None
            and vm.current.hid == hid
            and caller.owns(vm.uid)
        ]
        return {
            "host": rows.host_row(host),
            "attributes": dict(sorted(host.attributes.items())),
            "vms": vms,
            "samples": self.samples("host", hid),
        }

    def network_detail(self, caller: Caller, nid: int) -> dict[str, Any]:
        network = self.daemon.networks.get(nid)
        if network is None or not caller.may_use_network(network.uid):
            raise HttpError(404, f"Network {nid} does not exist or is not yours")
        return {
            "network": rows.network_row(network, self.daemon.users.name_of),
            "template": network.template.to_text(),
            "leases": rows.leases(network, self._vm_name),
        }

    def samples(self, kind: str, oid: int) -> list[dict[str, float]]:
        try:
            return self.history.samples(kind, oid)
        except Exception:  # a plot is not worth a broken page
            _log.failure(
                "Reading the monitoring history of {kind} {oid} failed", kind=kind, oid=oid
            )
            return []

    # -- actions --------------------------------------------------------------------------

    async def call(self, web: WebSession, peer: str, method: str, params: list[Any]) -> Any:
        """Call ``method`` as the page's user through the daemon's method registry."""
        if method not in ACTIONS:
            raise HttpError(400, f"The console does not call {method[:100]!r}")
        return await self._call(web, peer, method, params)

    async def call_console(self, web: WebSession, peer: str, vid: int) -> Any:
        """Where VM ``vid``'s console is, asked as the session's user."""
        return await self._call(web, peer, "nebula_xr.vm.console", [vid])

    async def _call(self, web: WebSession, peer: str, method: str, params: list[Any]) -> Any:
        context = CallContext(peer=peer)
        try:
            reply = await maybeDeferred(
                self.daemon.registry.call, method, [web.session, *params], context
            )
        except Fault as fault:
            return [False, fault.message]
        return reply

    # -- events ---------------------------------------------------------------------------

    def vm_changed(self, vm: VirtualMachine, state: int, lcm: int) -> None:
        text = f"VM {vm.oid} ({vm.name}) is {rows.state_words(vm)}"
        level = "info"
        if vm.state is VMState.FAILED:
            level = "error"
            reason = _last_error(self._vm_log(vm.oid))
            text = f"VM {vm.oid} ({vm.name}) FAILED" + (f": {reason}" if reason else "")
        self._record({"kind": "vm", "uid": vm.uid, "text": text, "level": level})
        if self._listening():  # the API's pace is not the pages' business when none is open
            self._publish("vm", rows.vm_row(vm, self.daemon.users.name_of), owner=vm.uid)

    def host_changed(self, host: Host, previous: int) -> None:
        deleted = self.daemon.hosts.get(host.oid) is None
        row = rows.host_row(host, "DELETED" if deleted else None)
        self._publish("host", row, owner=None)
        # Each monitoring goes MONITORING → MONITORED: the dashboard tells what changed.
        if row["state"] == "MONITORING" or self._host_shown.get(host.oid) == row["state"]:
            return
        self._host_shown[host.oid] = row["state"]
        level = "error" if host.state is HostState.ERROR and not deleted else "info"
        text = f"Host {host.oid} ({host.name}) is {row['state']}"
        error = host.attributes.get("ERROR") if level == "error" else None
        if error:
            text += f": {error}"
        self._record({"kind": "host", "uid": None, "text": text, "level": level})

    def host_monitored(self, host: Host) -> None:
        if self._listening():
            self._publish("host", rows.host_row(host), owner=None)

    def _listening(self) -> bool:
        return any(web.streams for web in self.sessions.values())

    def _record(self, event: dict[str, Any]) -> None:
        event["time"] = self.clock.seconds()
        self.events.append(event)
        self._publish("event", event, owner=event["uid"])

    def _publish(self, kind: str, data: dict[str, Any], owner: int | None) -> None:
        if not self._listening():
            return
        self._event_id += 1
        payload = json.dumps(data, separators=(",", ":"))
        message = f"id: {self._event_id}\nevent: {kind}\ndata: {payload}\n\n".encode()
        for web in list(self.sessions.values()):
            if owner is not None and web.uid not in (owner, 0):
                continue
            for stream in list(web.streams):
                stream.write(message)

    def heartbeat(self) -> None:
        for web in list(self.sessions.values()):
            for stream in list(web.streams):
                stream.write(b": keep-alive\n\n")


def _visible(event: dict[str, Any], caller: Caller) -> bool:
    return event["uid"] is None or caller.owns(event["uid"])


def _last_error(log: str) -> str:
    for line in reversed(log.splitlines()):
        if "[E]" in line:
            return line.split("[E]:", 1)[-1].strip()
    return ""


# -- HTTP -------------------------------------------------------------------------------

_SECURITY_HEADERS = {
    b"Content-Security-Policy": b"default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    b"X-Content-Type-Options": b"nosniff",
    b"X-Frame-Options": b"DENY",
    b"Referrer-Policy": b"same-origin",
}


def _secure(request: Request) -> None:
    for name, value in _SECURITY_HEADERS.items():
        request.setHeader(name, value)


class _Static(File):
    def render_GET(self, request: Request) -> Any:
        _secure(request)
        request.setHeader(b"Cache-Control", b"no-cache")
        return super().render_GET(request)


class _Page(Resource):
    """An HTML page of the console: needs a session, else goes to the sign-in page."""

    isLeaf = True

    def __init__(self, console: WebConsole, name: str, needs_session: bool = True) -> None:
        super().__init__()
        self.console = console
        self.path = STATIC / name
        self.needs_session = needs_session

    def render_GET(self, request: Request) -> bytes:
        _secure(request)
        if self.needs_session and self.console.session_of(request) is None:
            request.redirect(b"/signin")
            return b""
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        request.setHeader(b"Cache-Control", b"no-store")
        return self.path.read_bytes()


Route = Callable[..., Any]


class _Api(Resource):
    """``/api/...``: JSON in, JSON out; errors as ``{"error": message}``, never a trace."""

    isLeaf = True

    def __init__(self, console: WebConsole) -> None:
        super().__init__()
        self.console = console

    def render(self, request: Request) -> Any:
        _secure(request)
        request.setHeader(b"Cache-Control", b"no-store")
        path = [part.decode("utf-8", "replace") for part in request.postpath]
        method = request.method.decode("ascii", "replace")
        if method == "GET" and path == ["events"]:
            return self._events(request)
        request.setHeader(b"Content-Type", b"application/json")
        done = ensureDeferred(self._route(request, method, path))
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def reply(result: tuple[int, Any]) -> None:
            code, body = result
            if gone:  # the client left before the answer
                return
            request.setResponseCode(code)
            request.write(json.dumps(body).encode())
            request.finish()

        def failed(failure: Any) -> tuple[int, Any]:
            if failure.check(HttpError):
                return failure.value.code, {"error": failure.value.message}
            _log.failure("Web console request {path} failed", failure, path="/".join(path))
            return 500, {"error": "Internal error, see oned.log"}

        done.addErrback(failed).addCallback(reply)
        return NOT_DONE_YET

    async def _route(self, request: Request, method: str, path: list[str]) -> tuple[int, Any]:
        console = self.console
        peer = _peer(request)
        if method == "POST" and path == ["signin"]:
            return await self._sign_in(request, peer)
        web = console.session_of(request)
        if web is None:
            raise HttpError(401, "Not signed in")
        if method == "POST":
            if not secrets.compare_digest(
                request.getHeader("X-CSRF-Token") or "", web.csrf
            ) or not (request.getHeader("Content-Type") or "").startswith("application/json"):
                raise HttpError(403, "Missing or wrong CSRF token")
            body = _json_body(request)
            if path == ["signout"]:
                console.sign_out(request.getCookie(COOKIE.encode()).decode())
                request.addCookie(
                    COOKIE, "", path="/", max_age="0", httpOnly=True, sameSite="strict"
                )
                return 200, {"ok": True}
            if path == ["call"]:
                method_name = body.get("method")
                params = body.get("params")
                if not isinstance(method_name, str) or not isinstance(params, list):
                    raise HttpError(400, "A call needs a method name and a list of params")
                return 200, {"reply": await console.call(web, peer, method_name, params)}
            if path == ["vm", "form"]:
                try:
                    text = rows.form_template(body)
                except rows.FormError as error:
                    return 200, {"reply": [False, str(error)]}
                return 200, {
                    "reply": await console.call(web, peer, "one.vm.allocate", [text]),
                    "template": text,
                }
            raise HttpError(404, "No such action")
        if method != "GET":
            raise HttpError(405, "Method not allowed")
        caller = await console.caller(web, peer)
        if not caller.authenticated:
            raise HttpError(401, "Not signed in")
        if path == ["me"]:
            return 200, {"name": web.name, "uid": web.uid, "csrf": web.csrf}
        if path == ["state"]:
            return 200, console.state(caller)
        if len(path) == 2 and path[1].isdigit() and path[1].isascii():
            oid = int(path[1])
            if path[0] == "vm":
                return 200, console.vm_detail(caller, oid)
            if path[0] == "host":
                return 200, console.host_detail(caller, oid)
            if path[0] == "network":
                return 200, console.network_detail(caller, oid)
        raise HttpError(404, "No such page")

    async def _sign_in(self, request: Request, peer: str) -> tuple[int, Any]:
        if not (request.getHeader("Content-Type") or "").startswith("application/json"):
            raise HttpError(400, "Sign in with a JSON body")
        body = _json_body(request)
        name, password = body.get("user"), body.get("password")
        if not isinstance(name, str) or not isinstance(password, str) or not name:
            raise HttpError(400, "User name and password are needed")
        signed = await self.console.sign_in(name, password, peer)
        if signed is None:
            raise HttpError(401, "Wrong user name or password")
        web, token = signed
        request.addCookie(COOKIE, token, path="/", httpOnly=True, sameSite="strict")
        return 200, {"name": web.name, "uid": web.uid, "csrf": web.csrf}

    def _events(self, request: Request) -> Any:
        web = self.console.session_of(request)
        if web is None:
            request.setResponseCode(401)
            return b""
        request.setHeader(b"Content-Type", b"text/event-stream")
        request.write(b"retry: 2000\n\n")
        web.streams.append(request)
        request.notifyFinish().addBoth(lambda _: web.streams.remove(request))
        return NOT_DONE_YET


def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = json.loads(request.content.read() or b"{}")
    except (ValueError, UnicodeDecodeError) as error:
        raise HttpError(400, "The body is not JSON") from error
    if not isinstance(body, dict):
        raise HttpError(400, "The body must be a JSON object")
    return body


def _termjs() -> Path | None:
    try:
        from xstatic.pkg import termjs
    except ImportError:
        return None
    return Path(termjs.BASE_DIR)


def make_site(console: WebConsole, websocket: Resource | None) -> Site:
    root = _Page(console, "index.html")
    root.isLeaf = False
    root.putChild(b"", _Page(console, "index.html"))
    root.putChild(b"signin", _Page(console, "signin.html", needs_session=False))
    root.putChild(b"api", _Api(console))
    root.putChild(b"static", _Static(str(STATIC)))
    termjs = _termjs()
    if termjs is not None:
        root.putChild(b"termjs", _Static(str(termjs)))
    if websocket is not None:
        root.putChild(b"console", websocket)
    site = Site(root)
    site.displayTracebacks = False
    return site


class WebService(MultiService):
    """The web console's listener and heartbeat, a child service of the daemon."""

    def __init__(self, daemon: Any, history: History, port: int, interface: str) -> None:
        super().__init__()
        self.console = WebConsole(daemon, history, daemon.clock)
        from nebula_xr.web.console import console_resource

        self.site = make_site(self.console, console_resource(self.console, daemon.reactor))
        self.reactor = daemon.reactor
        self.requested_port = port
        self.interface = interface
        self.listening: Any = None
        self._heartbeat = LoopingCall(self.console.heartbeat)
        self._heartbeat.clock = daemon.clock

    @property
    def port(self) -> int:
        return self.listening.getHost().port

    def startService(self) -> None:
        super().startService()
        self.listening = self.reactor.listenTCP(
            self.requested_port, self.site, interface=self.interface
        )
        self._heartbeat.start(20, now=False)

    def stopService(self) -> Deferred | None:
        super().stopService()
        if self._heartbeat.running:
            self._heartbeat.stop()
        for token in list(self.console.sessions):
            for stream in list(self.console.sessions[token].streams):
                stream.finish()
        return self.listening.stopListening() if self.listening is not None else None
