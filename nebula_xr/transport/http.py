"""A small, strict HTTP/1.1 server protocol carrying one POST endpoint.

twisted.web costs more per request than the XML-RPC call it would carry, so this
protocol speaks only what XML-RPC clients (xmlrpc-c, Ruby Net::HTTP, Python's
xmlrpc.client, curl) need: POST of a body to one path, persistent connections,
pipelining (answers strictly in request order, whatever order the handler's
Deferreds fire in), ``Content-Length`` and chunked request bodies and
``Expect: 100-continue``. Anything else gets a proper error status, after which the
connection is closed: we half-close and keep discarding input for a moment, so the
peer reads the error instead of a reset caused by the bytes it was still sending.

Memory per connection is bounded: the header block, chunk-size lines and the body
are limited (:class:`Limits`), and reading stops while too many answers are
outstanding or while the peer does not read what we write.

Against floods and slow clients (:class:`Limits` again): connections are capped
overall and per peer address; at a cap the connection that has waited longest for a
request head is dropped to make room, and with none to drop the new one is answered
503. A request head must arrive within ``head_timeout`` of its first byte (or of the
connection), a body within ``body_timeout`` of its head, and a keep-alive connection
may stay silent for ``idle_timeout``. Each connection may buffer ``body_allowance``
bytes of an unfinished body; beyond that, bodies draw on one budget shared by all
connections (``buffer_bytes``), and a connection that finds it spent stops reading
until answers give bytes back.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any, NamedTuple

from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IHalfCloseableProtocol,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.posixbase import PosixReactorBase
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from nebula_xr import __version__

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CallContext:
    """Who sent a request: what authorisation decisions are made from besides the session."""

    peer: str  # the client's IP address ("" for calls made inside the process)
    secure: bool = False  # the connection is TLS

    @functools.cached_property
    def loopback(self) -> bool:
        """The request came from this machine (a loopback address), or from inside."""
        return _is_loopback(self.peer)


@functools.lru_cache(maxsize=256)
def _is_loopback(peer: str) -> bool:
    # Asked on every call of a 1.2 method; parsing the address costs more than the call.
    if not peer:
        return True
    try:
        return ipaddress.ip_address(peer).is_loopback
    except ValueError:
        return False


#: The context of calls made inside the process (tests, plugins): trusted as loopback.
LOCAL = CallContext(peer="")

#: Takes a complete request body and who sent it; returns the response body, now or later.
Handler = Callable[[bytes, CallContext], "bytes | Deferred[bytes]"]


@dataclass(frozen=True)
class Limits:
    header_bytes: int = 16 * 1024  # request line plus header fields (also chunked trailers)
    header_count: int = 100
    body_bytes: int = 32 * 1024 * 1024
    chunk_line: int = 1024  # a chunk-size line with its extensions
    pipeline: int = 16  # requests being answered before we stop reading
    connections: int = 1024  # open connections, all peers together
    connections_per_address: int = 128
    head_timeout: float = 10.0  # seconds to receive a request head
    body_timeout: float = 60.0  # seconds to receive a body once its head is in
    idle_timeout: float = 60.0  # seconds a keep-alive connection may wait for a request
    body_allowance: int = 64 * 1024  # body bytes a connection buffers without the budget
    buffer_bytes: int = 128 * 1024 * 1024  # budget shared by unfinished bodies past that
    linger: float = 2.0  # how long a closing connection keeps draining the peer's input


_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    411: b"Length Required",
    413: b"Content Too Large",
    417: b"Expectation Failed",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    501: b"Not Implemented",
    503: b"Service Unavailable",
    505: b"HTTP Version Not Supported",
}

_REFUSAL_LOG_INTERVAL = 10.0  # seconds
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_KEEP_ALIVE_11 = b""
_KEEP_ALIVE_10 = b"Connection: keep-alive\r\n"
_CLOSE = b"Connection: close\r\n"

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_TARGET = re.compile(rb"[!-~]+")
_ABSOLUTE = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*([^?#]*)")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,15}")
# Every byte allowed in a header block except the line breaks: deleting these from a
# head leaves its control characters, which must be exactly its line breaks.
_FIELD_BYTES = bytes(c for c in range(256) if c == 0x09 or 0x20 <= c != 0x7F)

# Parser states.
_HEAD, _BODY, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_END, _TRAILER, _CLOSING = range(7)


class HTTPError(Exception):
    """A request we refuse with ``status``; the connection closes after the answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _KnownHead(NamedTuple):
    """What a valid POST head with a Content-Length decided: enough to act on it again."""

    conn: bytes  # the Connection field of the answer
    line: str  # the request line, for the access log
    size: int  # the body's length


#: Heads remembered per server, of at most KNOWN_HEAD_BYTES each: a polling client's
#: head is read and checked once.
KNOWN_HEADS = 256
KNOWN_HEAD_BYTES = 1024


class _Pending:
    """A response slot in request order; ``data`` is None until the handler answers.

    ``charged``: bytes of the shared body budget the request holds until answered.
    """

    __slots__ = ("charged", "conn", "data", "line")

    def __init__(self, conn: bytes, line: str, data: bytes | None = None) -> None:
        self.conn = conn
        self.line = line
        self.data = data
        self.charged = 0


@implementer(IPushProducer, IHalfCloseableProtocol)
class HTTPChannel(Protocol):
    """One client connection. Registered as the transport's producer for back-pressure.

    Half-closeable: a client that shuts down its sending side after its requests (as
    ``nc`` does) still gets the answers to the complete ones.
    """

    factory: HTTPServerFactory

    def __init__(self) -> None:
        self._state = _HEAD
        self._buf = b""
        self._body: list[bytes] = []
        self._body_len = 0
        self._remaining = 0
        self._trailer_len = 0
        self._queue: deque[_Pending] = deque()
        # The request being read: its keep-alive decision as a response header, and
        # whether it is a HEAD request (error answers must then carry no body).
        self._conn = _KEEP_ALIVE_11
        self._head_only = False
        self._line = ""
        self._parsing = False
        self._write_blocked = False
        self._reading_paused = False
        self._closed = False
        self._gone = False
        self._peer_done = False  # the client sends nothing more
        self._peer = "-"
        self._context = LOCAL
        self._last = 0.0
        self._timer: Any = None
        # When the head or body being received began (None: waiting for a request),
        # and how many heads were read, to tell a new head from more of the same.
        self._phase_started: float | None = None
        self._heads = 0
        # Body bytes buffered for the request being read; the bytes of the factory's
        # shared budget granted to it, and those it waits for (reading paused).
        self._held = 0
        self._charged = 0
        self._asking = 0
        self._budget_wait = False
        self._registered = False

    # -- connection ---------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        # Nagle would hold a pipelined answer until the client ACKs the previous one.
        if hasattr(transport, "setTcpNoDelay"):
            transport.setTcpNoDelay(True)
        transport.registerProducer(self, True)
        self._peer = _peer_host(transport.getPeer())
        self._context = CallContext(self._peer, secure=ISSLTransport.providedBy(transport))
        clock = self.factory.clock
        self._last = self._phase_started = clock.seconds()
        self._timer = clock.callLater(self.factory.limits.head_timeout, self._deadline_check)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._gone = True
        factory = self.factory
        factory.forget(self)
        charged = self._charged + sum(pending.charged for pending in self._queue)
        for pending in self._queue:
            pending.charged = 0
        self._charged = self._held = self._asking = 0
        factory.release(charged)
        self._queue.clear()
        self._buf = b""
        self._body = []
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def readConnectionLost(self) -> None:
        self._peer_done = True
        if self._closed:
            self.transport.loseConnection()
        else:
            self._resume()

    def writeConnectionLost(self) -> None:
        """Our half-close went through; the peer's EOF or lingering ends the connection."""

    def waiting_since(self) -> float | None:
        """Since when we wait for this peer to send a request head; None if we don't.

        Such a connection (idle, sending a head, or closing) costs the peer nothing
        to hold, so it is the one dropped when a new connection needs room.
        """
        if self._queue:
            return None
        if self._closed or self._state == _CLOSING:
            return float("-inf")
        if self._state != _HEAD:
            return None
        return self._last if self._phase_started is None else self._phase_started

    def drop(self) -> None:
        """Close at once to make room for a new connection."""
        self.factory.forget(self)
        transport: Any = self.transport
        transport.abortConnection()

    def _deadline(self) -> float | None:
        """When the current wait for the peer runs out; None while we owe answers."""
        limits = self.factory.limits
        if self._queue or self._state == _CLOSING:
            return None
        if self._state != _HEAD:
            return self._phase_started + limits.body_timeout  # type: ignore[operator]
        if self._phase_started is not None:
            return self._phase_started + limits.head_timeout
        return self._last + limits.idle_timeout

    def _deadline_check(self) -> None:
        """Enforce the head, body and idle deadlines.

        A request half received is answered 408; a silent connection is closed. The
        timer is re-armed instead of being reset on every read, which keeps reads cheap.
        """
        clock = self.factory.clock
        now = clock.seconds()
        deadline = self._deadline()
        if deadline is None or now < deadline:
            delay = self.factory.limits.idle_timeout if deadline is None else deadline - now
            self._timer = clock.callLater(max(delay, 0.001), self._deadline_check)
            return
        self._timer = None
        if self._state != _HEAD or self._buf.strip(b"\r\n"):
            self._fail(408, "Timed out waiting for the request")
            self._maybe_close()
        else:
            self.transport.loseConnection()

    # -- back-pressure (IPushProducer, called by the transport) --------------------------

    def pauseProducing(self) -> None:
        self._write_blocked = True
        self._update_reading()

    def resumeProducing(self) -> None:
        self._write_blocked = False
        self._resume()

    def stopProducing(self) -> None:
        """The transport is going away; connectionLost does the cleanup."""

    def _blocked(self) -> bool:
        return (
            self._write_blocked
            or self._budget_wait
            or len(self._queue) >= self.factory.limits.pipeline
        )

    def budget_wanted(self) -> int:
        """Bytes of the shared budget this connection waits for (0: no longer)."""
        return 0 if self._gone else self._asking

    def budget_granted(self) -> None:
        """The factory granted what we asked for: read on."""
        self._charged += self._asking
        self._asking = 0
        self._budget_wait = False
        self._resume()

    def _hold(self, size: int) -> None:
        """Account for ``size`` more buffered body bytes."""
        self._held += size
        self._reserve(self._held - self.factory.limits.body_allowance)

    def _reserve(self, total: int) -> None:
        """Have ``total`` bytes of the shared budget; stop reading until they are granted.

        A body of known length reserves all it needs beyond the allowance before any
        of it is read, so that bodies admitted can always complete: none waits for
        bytes that another waiting body holds.
        """
        need = total - self._charged - self._asking
        if need <= 0:
            return
        if self.factory.charge(self, need):
            self._charged += need
        else:
            self._asking += need
            self._budget_wait = True

    def _drop_budget(self) -> int:
        """Forget the request's claim on the budget; the granted bytes to give back."""
        charged = self._charged
        self._charged = self._held = self._asking = 0
        self._budget_wait = False
        return charged

    def _update_reading(self) -> None:
        pause = self._blocked() and self._state != _CLOSING
        if pause != self._reading_paused and not self._gone and not self._peer_done:
            self._reading_paused = pause
            if pause:
                self.transport.pauseProducing()  # type: ignore[attr-defined]
            else:
                self.transport.resumeProducing()  # type: ignore[attr-defined]

    def _resume(self) -> None:
        if self._parsing or self._gone:
            return
        if self._buf and self._state != _CLOSING and not self._blocked():
            data, self._buf = self._buf, b""
            self._parse(data)
        if self._peer_done and not self._blocked():
            self._state = _CLOSING  # what is left can never be completed
        self._update_reading()
        self._maybe_close()

    # -- input ------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        now = self._last = self.factory.clock.seconds()
        if self._state == _CLOSING:
            return  # draining a connection we are closing
        if self._phase_started is None:
            self._phase_started = now  # the first byte of a head (even a stray CRLF)
        if self._buf:
            data = self._buf + data
            self._buf = b""
        self._parse(data)
        if self._queue or self._budget_wait:
            self._update_reading()
        self._maybe_close()

    def _parse(self, data: bytes) -> None:
        self._parsing = True
        heads = self._heads
        try:
            self._parse_loop(data)
        except HTTPError as error:
            self._fail(error.status, error.message)
        finally:
            self._parsing = False
        if heads != self._heads and self._state == _HEAD:
            # A request was read: what is left is the start of the next head, or nothing.
            self._phase_started = self.factory.clock.seconds() if self._buf else None

    def _parse_loop(self, data: bytes) -> None:
        limits = self.factory.limits
        pos = 0
        end = len(data)
        while pos < end and not self._blocked():
            state = self._state
            if state == _HEAD:
                pos = self._parse_head(data, pos)
                if pos < 0:
                    return
            elif state == _BODY:
                take = min(self._remaining, end - pos)
                self._remaining -= take
                if not self._remaining and not self._body:
                    body = data[pos : pos + take]  # the usual case: the whole body at once
                else:
                    self._body.append(data[pos : pos + take])
                    self._hold(take)
                    body = b"".join(self._body) if not self._remaining else b""
                pos += take
                if not self._remaining:
                    self._body = []
                    self._complete(body)
            elif state == _CHUNK_SIZE:
                i = data.find(b"\n", pos, pos + limits.chunk_line)
                if i < 0:
                    if end - pos >= limits.chunk_line:
                        raise HTTPError(400, "Chunk size line too long")
                    break
                size_text = data[pos:i].rstrip(b"\r").split(b";", 1)[0].strip(b" \t")
                if not _HEX.fullmatch(size_text):
                    raise HTTPError(400, "Invalid chunk size")
                pos = i + 1
                size = int(size_text, 16)
                if size == 0:
                    self._trailer_len = 0
                    self._state = _TRAILER
                elif self._body_len + size > limits.body_bytes:
                    raise HTTPError(413, "Request body too large")
                else:
                    self._remaining = size
                    self._state = _CHUNK_DATA
            elif state == _CHUNK_DATA:
                take = min(self._remaining, end - pos)
                self._body.append(data[pos : pos + take])
                self._hold(take)
                self._body_len += take
                self._remaining -= take
                pos += take
                if not self._remaining:
                    self._state = _CHUNK_END
            elif state == _CHUNK_END:
                if data.startswith(b"\r\n", pos):
                    pos += 2
                elif data.startswith(b"\n", pos):
                    pos += 1
                elif end - pos == 1 and data[pos] == 0x0D:
                    break  # the LF has not arrived yet
                else:
                    raise HTTPError(400, "Chunk data not followed by CRLF")
                self._state = _CHUNK_SIZE
            elif state == _TRAILER:
                # Trailer fields are allowed and ignored; bounded like the header block.
                i = data.find(b"\n", pos, pos + limits.header_bytes + 1)
                if i < 0:
                    if self._trailer_len + end - pos > limits.header_bytes:
                        raise HTTPError(431, "Chunked trailer too large")
                    break
                line = data[pos:i].rstrip(b"\r")
                self._trailer_len += i + 1 - pos
                pos = i + 1
                if self._trailer_len > limits.header_bytes:
                    raise HTTPError(431, "Chunked trailer too large")
                if not line:
                    body = b"".join(self._body)
                    self._body = []
                    self._complete(body)
            else:  # _CLOSING: nothing after a closing request is read
                return
        if pos < end and self._state != _CLOSING:
            self._buf = data[pos:]

    def _parse_head(self, data: bytes, pos: int) -> int:
        """Parse one request head at ``pos``; the position after it, or -1 for more data."""
        limits = self.factory.limits
        end = len(data)
        # RFC 9112 §2.2: empty lines before a request line are ignored (some clients
        # send a CRLF after a POST body).
        while pos < end and data[pos] in (0x0D, 0x0A):
            pos += 1
        if pos == end:
            return end
        stop = pos + limits.header_bytes
        crlf = data.find(b"\r\n\r\n", pos, stop + 4)
        if crlf >= 0:
            # A client polling the same call sends the same head each time.
            known = self.factory.known_heads.get(data[pos : crlf + 4])
            if known is not None:
                self._start_body(known, data, crlf + 4)
                return crlf + 4
        lf = data.find(b"\n\n", pos, crlf if crlf >= 0 else stop + 2)
        if lf >= 0:
            head = data[pos:lf]
            lines = head.split(b"\n")
            breaks = head.translate(None, _FIELD_BYTES).replace(b"\r\n", b"\n")
            if breaks != b"\n" * (len(lines) - 1):
                raise HTTPError(400, "Invalid character in request head")
            lines = [line.rstrip(b"\r") for line in lines]
            after = lf + 2
        elif crlf >= 0:
            head = data[pos:crlf]
            lines = head.split(b"\r\n")
            if head.translate(None, _FIELD_BYTES) != b"\r\n" * (len(lines) - 1):
                raise HTTPError(400, "Invalid character in request head")
            after = crlf + 4
        else:
            if end - pos > limits.header_bytes:
                raise HTTPError(431, "Request head too large")
            self._buf = data[pos:]
            return -1
        known = self._request_head(lines, data, after)
        if known is not None and lf < 0 and after - pos <= KNOWN_HEAD_BYTES:
            self.factory.remember_head(data[pos:after], known)
        return after

    def _request_head(self, lines: list[bytes], data: bytes, after: int) -> _KnownHead | None:
        """Act on a request head; what a byte-identical head would do, if it can be reused."""
        factory = self.factory
        limits = factory.limits
        self._heads += 1
        self._phase_started = factory.clock.seconds()  # now the body's deadline runs
        parts = lines[0].split(b" ")
        if len(parts) != 3:
            raise HTTPError(400, "Malformed request line")
        method, target, version = parts
        self._head_only = method == b"HEAD"
        if factory.access_log is not None:
            self._line = lines[0].decode("latin-1")
        if version == b"HTTP/1.1":
            http10 = False
        elif version == b"HTTP/1.0":
            http10 = True
        else:
            match = _VERSION.fullmatch(version)
            if match is None:
                raise HTTPError(400, "Malformed HTTP version")
            if match.group(1) != b"1":
                raise HTTPError(505, "Only HTTP/1.x is supported")
            http10 = False  # a later 1.x minor version is answered as 1.1
        if not _TOKEN.fullmatch(method) or not _TARGET.fullmatch(target):
            raise HTTPError(400, "Malformed request line")
        if len(lines) - 1 > limits.header_count:
            raise HTTPError(431, "Too many header fields")

        length: bytes | None = None
        coding: bytes | None = None
        connection = b""
        expect: bytes | None = None
        hosts = 0
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.fullmatch(name):
                raise HTTPError(400, "Malformed header field")
            value = value.strip(b" \t")
            name = name.lower()
            if name == b"content-length":
                if length is not None and value != length:
                    raise HTTPError(400, "Conflicting Content-Length fields")
                length = value
            elif name == b"transfer-encoding":
                coding = value if coding is None else coding + b"," + value
            elif name == b"connection":
                connection += b"," + value.lower()
            elif name == b"host":
                hosts += 1
            elif name == b"expect":
                expect = value.lower()

        if hosts > 1 or (hosts == 0 and not http10):
            raise HTTPError(400, "An HTTP/1.1 request needs exactly one Host field")
        tokens = connection.replace(b" ", b"").replace(b"\t", b"").split(b",")
        if http10:
            self._conn = _KEEP_ALIVE_10 if b"keep-alive" in tokens else _CLOSE
        else:
            self._conn = _CLOSE if b"close" in tokens else _KEEP_ALIVE_11

        chunked = False
        size = 0
        if coding is not None:
            # RFC 9112 §6.1/§6.3: framing we cannot trust is refused, never guessed.
            if http10:
                raise HTTPError(400, "Transfer-Encoding in an HTTP/1.0 request")
            if length is not None:
                raise HTTPError(400, "Both Transfer-Encoding and Content-Length")
            codings = [c.strip(b" \t").lower() for c in coding.split(b",")]
            if codings[-1] != b"chunked":
                raise HTTPError(400, "Request body not chunked")
            if len(codings) > 1:
                raise HTTPError(501, "Only the chunked transfer coding is supported")
            chunked = True
        elif length is not None:
            if not length.isdigit():
                raise HTTPError(400, "Invalid Content-Length")
            if len(length) > 15 or int(length) > limits.body_bytes:
                raise HTTPError(413, "Request body too large")
            size = int(length)

        match = _ABSOLUTE.match(target)
        path = (match.group(1) or b"/") if match else target.split(b"?", 1)[0]
        if path != factory.path:
            raise HTTPError(404, "Not found")
        if method != b"POST":
            raise HTTPError(405, "Only POST is allowed")
        if not chunked and length is None:
            raise HTTPError(411, "Content-Length required")

        if expect is not None and not http10:
            if expect != b"100-continue":
                raise HTTPError(417, "Unsupported expectation")
            # RFC 9110 §10.1.1: no need to ask for a body that is already arriving.
            if (chunked or size) and after == len(data):
                self._emit(_CONTINUE)

        if chunked:
            self._body_len = 0
            self._state = _CHUNK_SIZE
            return None
        known = _KnownHead(self._conn, self._line, size)
        self._start_body(known, data, after, counted=True)
        return None if expect is not None else known

    def _start_body(self, head: _KnownHead, data: bytes, after: int, counted: bool = False) -> None:
        """Begin reading the Content-Length body of a request whose head was read."""
        if not counted:
            self._heads += 1
            self._phase_started = self.factory.clock.seconds()
            self._head_only = False
            self._conn = head.conn
            self._line = head.line
        if head.size:
            self._remaining = head.size
            self._state = _BODY
            self._reserve(head.size - self.factory.limits.body_allowance)
        else:
            self._complete(b"")

    # -- answers ------------------------------------------------------------------------

    def _emit(self, data: bytes) -> None:
        """Send ``data`` after everything answered before it."""
        if self._queue:
            self._queue.append(_Pending(b"", "", data))
        else:
            self._write(data)

    def _write(self, data: bytes) -> None:
        # The transport buffers until the reactor's next turn and pauses us (the
        # producer) synchronously when its buffer is full.
        self.transport.write(data)
        self._last = self.factory.clock.seconds()

    def _complete(self, body: bytes) -> None:
        conn = self._conn
        self._state = _CLOSING if conn is _CLOSE else _HEAD
        charged = self._drop_budget()
        try:
            result = self.factory.handler(body, self._context)
        except Exception:
            _log.exception("HTTP request handler failed")
            result = None
        if type(result) is bytes:
            self.factory.release(charged)
            self._emit(self._ok(result, conn, self._line))
            return
        pending = _Pending(conn, self._line)
        pending.charged = charged  # the body is still being worked on
        self._queue.append(pending)
        if isinstance(result, Deferred):
            result.addCallbacks(self._answer, self._crashed, (pending,), None, (pending,))
        else:
            self._crashed(Failure(TypeError(f"handler returned {type(result).__name__}")), pending)

    def _answer(self, result: object, pending: _Pending) -> None:
        if type(result) is not bytes:
            self._crashed(Failure(TypeError(f"handler returned {type(result).__name__}")), pending)
            return
        pending.data = self._ok(result, pending.conn, pending.line)
        self._release(pending)
        self._drain()

    def _release(self, pending: _Pending) -> None:
        charged, pending.charged = pending.charged, 0
        self.factory.release(charged)

    def _crashed(self, failure: Failure, pending: _Pending) -> None:
        _log.error("HTTP request handler failed: %s", failure.getTraceback())
        if self.factory.access_log is not None:
            self.factory.access_log(f'{self._peer} "{pending.line}" 500 -')
        pending.data = self._error(500, "Internal error", pending.conn)
        self._release(pending)
        self._drain()

    def _drain(self) -> None:
        queue = self._queue
        while queue and queue[0].data is not None:
            self._write(queue.popleft().data)  # type: ignore[arg-type]
        if not self._parsing:
            self._resume()

    def _maybe_close(self) -> None:
        if self._state == _CLOSING and not self._queue and not self._closed and not self._gone:
            self._close()

    def _close(self) -> None:
        """Half-close, then drain the peer's input until it closes or lingering ends."""
        self._closed = True
        self._buf = b""
        self._body = []
        transport: Any = self.transport
        transport.unregisterProducer()
        if self._peer_done:
            transport.loseConnection()
            return
        transport.loseWriteConnection()
        if self._reading_paused:
            self._reading_paused = False
            transport.resumeProducing()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.factory.clock.callLater(
            self.factory.limits.linger, transport.loseConnection
        )

    def _fail(self, status: int, message: str) -> None:
        if self.factory.access_log is not None:
            self.factory.access_log(f'{self._peer} "{self._line}" {status} -')
        self._state = _CLOSING
        self._buf = b""
        self._body = []
        self.factory.release(self._drop_budget())
        self._emit(self._error(status, message, _CLOSE))

    def _ok(self, body: bytes, conn: bytes, line: str) -> bytes:
        factory = self.factory
        if factory.access_log is not None:
            factory.access_log(f'{self._peer} "{line}" 200 {len(body)}')
        return b"%sContent-Length: %d\r\n%s\r\n%s" % (factory.ok_head(), len(body), conn, body)

    def _error(self, status: int, message: str, conn: bytes) -> bytes:
        body = message.encode() + b"\n"
        allow = b"Allow: POST\r\n" if status == 405 else b""
        return b"HTTP/1.1 %d %s\r\n%sContent-Type: text/plain; charset=utf-8\r\n%s" % (
            status,
            _REASONS[status],
            self.factory.common_head(),
            b"Content-Length: %d\r\n%s%s\r\n%s"
            % (len(body), allow, conn, b"" if self._head_only else body),
        )


def _peer_host(address: object) -> str:
    return getattr(address, "host", None) or str(address) or "unknown"


@implementer(IHalfCloseableProtocol)
class _Refusal(Protocol):
    """A connection over the limits: answered 503, then closed after draining a moment."""

    def __init__(self, answer: bytes, linger: float, clock: IReactorTime) -> None:
        self._answer = answer
        self._linger = linger
        self._clock = clock
        self._timer: Any = None

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.write(self._answer)
        if ISSLTransport.providedBy(transport):
            transport.loseConnection()  # after the handshake and the answer
            return
        transport.loseWriteConnection()
        self._timer = self._clock.callLater(self._linger, transport.loseConnection)

    def dataReceived(self, data: bytes) -> None:
        """Discarded: the peer reads our answer instead of a reset."""

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """Our half-close went through."""

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()


class _EagerServer(tcp.Server):
    """A TCP server transport that sends at once when it has nothing queued.

    Twisted's transport queues every write until the reactor's next turn: a turn and
    two ``epoll_ctl`` calls per reply, which was a third of the server's time per info
    call. An answer to a request that just arrived almost always fits in the socket's
    buffer; what does not is queued as before, behind which later writes wait.
    """

    def write(self, data: bytes) -> None:
        if (
            self._tempDataLen
            or self.offset != len(self.dataBuffer)
            or not self.connected
            or self.disconnecting
            or self._writeDisconnecting
            or self._writeDisconnected
            or type(data) is not bytes
        ):
            super().write(data)
            return
        try:
            sent = self.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            super().write(data)  # the queued write meets the error and reports the loss
            return
        if sent < len(data):
            super().write(data[sent:])


class _EagerPort(tcp.Port):
    transport = _EagerServer


def listen_tcp(
    reactor: Any, port: int, factory: ServerFactory, backlog: int, interface: str
) -> Any:
    """``reactor.listenTCP`` whose connections send answers without waiting a turn.

    A reactor that is not a real one (a test's) listens its own way.
    """
    if not isinstance(reactor, PosixReactorBase):
        return reactor.listenTCP(port, factory, backlog=backlog, interface=interface)
    listening = _EagerPort(port, factory, backlog, interface, reactor)
    listening.startListening()
    return listening


class HTTPServerFactory(ServerFactory):
    """Serves ``handler`` on POST ``path``; answers carry ``content_type``."""

    protocol = HTTPChannel

    def __init__(
        self,
        handler: Handler,
        path: bytes = b"/RPC2",
        reactor: IReactorTime | None = None,
        *,
        content_type: bytes = b"text/xml",
        access_log: Callable[[str], None] | None = None,
        limits: Limits = Limits(),  # noqa: B008 - frozen, shared safely
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor  # type: ignore[assignment]
        self.handler = handler
        self.path = path
        self.clock: IReactorTime = reactor  # type: ignore[assignment]
        self.content_type = content_type
        self.access_log = access_log
        self.limits = limits
        self._server = b"Server: nebula-xr/" + __version__.encode() + b"\r\n"
        self._date_second = -1
        self._common = b""
        self._ok = b""
        #: Open connections, all and by peer address.
        self.channels: set[HTTPChannel] = set()
        self.by_address: dict[str, set[HTTPChannel]] = {}
        #: Bytes of the shared body budget in use, and who waits for some.
        self.buffered = 0
        self._budget_waiters: deque[HTTPChannel] = deque()
        self._refused = 0
        self._refusal_logged = float("-inf")
        #: Raw request heads already read and found valid, and what they decided.
        self.known_heads: dict[bytes, _KnownHead] = {}

    # -- connection limits --------------------------------------------------------------

    def buildProtocol(self, addr: Any) -> Protocol | None:  # noqa: N802 - Twisted's name
        peer = _peer_host(addr)
        limits = self.limits
        same_peer = self.by_address.get(peer, set())
        if len(same_peer) >= limits.connections_per_address and not self._make_room(same_peer):
            return self._refusal(f"too many from {peer}")
        if len(self.channels) >= limits.connections and not self._make_room(self.channels):
            return self._refusal("too many connections")
        channel = super().buildProtocol(addr)
        assert isinstance(channel, HTTPChannel)
        self.channels.add(channel)
        self.by_address.setdefault(peer, set()).add(channel)
        channel._peer = peer
        channel._registered = True
        return channel

    def _make_room(self, among: set[HTTPChannel]) -> bool:
        """Drop the connection of ``among`` that waited longest for a request head."""
        victim: HTTPChannel | None = None
        oldest = float("inf")
        for channel in among:
            since = channel.waiting_since()
            if since is not None and since < oldest:
                victim, oldest = channel, since
        if victim is None:
            return False
        _log.debug("Dropped a waiting connection from %s to make room", victim._peer)
        victim.drop()
        return True

    def _refusal(self, why: str) -> Protocol:
        # One line per interval, so that a flood does not become a flood of log lines.
        self._refused += 1
        now = self.clock.seconds()
        if now - self._refusal_logged >= _REFUSAL_LOG_INTERVAL:
            _log.warning("Refused %d connection(s), the last: %s", self._refused, why)
            self._refused, self._refusal_logged = 0, now
        body = b"Too many connections, try again later\n"
        answer = b"HTTP/1.1 503 %s\r\n%sRetry-After: 1\r\n%s%s" % (
            _REASONS[503],
            self.common_head(),
            b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n" % len(body),
            _CLOSE + b"\r\n" + body,
        )
        return _Refusal(answer, self.limits.linger, self.clock)

    def forget(self, channel: HTTPChannel) -> None:
        """``channel`` no longer counts against the connection limits."""
        if not channel._registered:
            return
        channel._registered = False
        self.channels.discard(channel)
        same_peer = self.by_address.get(channel._peer)
        if same_peer is not None:
            same_peer.discard(channel)
            if not same_peer:
                del self.by_address[channel._peer]

    def remember_head(self, raw: bytes, head: _KnownHead) -> None:
        """Reuse what ``raw`` decided the next time a connection sends it."""
        if len(self.known_heads) >= KNOWN_HEADS:
            self.known_heads.clear()  # many different clients: start over
        self.known_heads[raw] = head

    # -- the shared budget of unfinished bodies -------------------------------------------

    def _fits(self, size: int) -> bool:
        # With nothing held, even a body larger than the whole budget may proceed.
        return not self.buffered or self.buffered + size <= self.limits.buffer_bytes

    def charge(self, channel: HTTPChannel, size: int) -> bool:
        """Grant ``size`` bytes of the budget now, or queue ``channel`` and say False.

        Grants are first come, first served: none is made while others wait.
        """
        if not self._budget_waiters and self._fits(size):
            self.buffered += size
            return True
        self._budget_waiters.append(channel)
        return False

    def release(self, size: int) -> None:
        """Give ``size`` bytes back, and grant waiting connections what now fits."""
        self.buffered -= size
        waiters = self._budget_waiters
        while waiters:
            wanted = waiters[0].budget_wanted()
            if wanted and not self._fits(wanted):
                break
            channel = waiters.popleft()
            if wanted:
                self.buffered += wanted
                channel.budget_granted()

    def common_head(self) -> bytes:
        """``Server`` and ``Date`` fields; the date is formatted once per second."""
        now = int(self.clock.seconds())
        if now != self._date_second:
            self._date_second = now
            date = formatdate(now, usegmt=True).encode()
            self._common = b"%sDate: %s\r\n" % (self._server, date)
            self._ok = b"HTTP/1.1 200 OK\r\n%sContent-Type: %s\r\n" % (
                self._common,
                self.content_type,
            )
        return self._common

    def ok_head(self) -> bytes:
        self.common_head()
        return self._ok
