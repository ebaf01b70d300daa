"""The HTTP/1.1 layer of the XML-RPC endpoint, over real TCP connections.

The server runs in the (pytest-twisted) reactor; the clients are blocking sockets run
in threads, so the tests talk to the server exactly as a remote client would.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from nebula_xr.transport.http import (
    LOCAL,
    CallContext,
    HTTPServerFactory,
    Limits,
    listen_tcp,
)


async def in_thread(function: Callable[..., Any], *args: Any) -> Any:
    """Run blocking client code off the reactor thread and wait for its result."""
    return await deferToThread(function, *args)


async def spin(seconds: float = 0.01) -> None:
    """Let the reactor run for a while."""
    await task.deferLater(reactor, seconds, lambda: None)


async def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await spin()


class Response:
    def __init__(self, status: int, reason: str, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body


class Client:
    """A blocking HTTP client that sends raw bytes and parses answers strictly."""

    def __init__(self, address: tuple[str, int], source: str | None = None) -> None:
        source_address = None if source is None else (source, 0)
        self.sock = socket.create_connection(address, timeout=5, source_address=source_address)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def response(self, head_only: bool = False) -> Response:
        while b"\r\n\r\n" not in self.buf:
            if not self._fill():
                raise ConnectionError(f"closed before a response head: {self.buf!r}")
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, status, reason = status_line.split(" ", 2)
        assert version == "HTTP/1.1"
        headers: dict[str, str] = {}
        for line in lines:
            name, value = line.split(":", 1)
            assert name.lower() not in headers
            headers[name.lower()] = value.strip()
        length = 0 if head_only or int(status) < 200 else int(headers["content-length"])
        while len(self.buf) < length:
            if not self._fill():
                raise ConnectionError("closed in the middle of a response body")
        body, self.buf = self.buf[:length], self.buf[length:]
        return Response(int(status), reason, headers, body)

    def closed(self, wait: float = 5.0) -> bool:
        """Whether the server closes the connection, with nothing more to read, in ``wait`` s."""
        self.sock.settimeout(wait)
        try:
            return not self._fill() and not self.buf
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        finally:
            self.sock.settimeout(5)

    def close(self) -> None:
        self.sock.close()


def request(
    body: bytes = b"hello",
    *,
    method: str = "POST",
    path: str = "/RPC2",
    version: str = "HTTP/1.1",
    headers: str = "Host: localhost\r\n",
    length: bool = True,
) -> bytes:
    extra = f"Content-Length: {len(body)}\r\n" if length else ""
    return f"{method} {path} {version}\r\n{headers}{extra}\r\n".encode() + body


class Server:
    def __init__(self, handler: Callable[[bytes], Any], **options: Any) -> None:
        self.factory = HTTPServerFactory(lambda body, _context: handler(body), **options)
        # As the daemon listens: answers sent at once when the socket takes them.
        self.port = listen_tcp(reactor, 0, self.factory, 50, "127.0.0.1")
        self.address = ("127.0.0.1", self.port.getHost().port)

    async def talk(self, conversation: Callable[[Client], Any]) -> Any:
        """Run ``conversation`` with a fresh client in a thread; its result."""

        def run() -> Any:
            client = Client(self.address)
            try:
                return conversation(client)
            finally:
                client.close()

        return await in_thread(run)

    async def stop(self) -> None:
        await self.port.stopListening()


def echo(body: bytes) -> bytes:
    return b"echo:" + body


@pytest_twisted.async_yield_fixture
async def server() -> Any:
    running = Server(echo)
    yield running
    await running.stop()


async def exchange(server: Server, data: bytes, head_only: bool = False) -> tuple[Response, bool]:
    """Send ``data``; the answer and whether the server then closed the connection."""

    def conversation(client: Client) -> tuple[Response, bool]:
        client.send(data)
        return client.response(head_only), client.closed(0.3)

    return await server.talk(conversation)


# -- persistent connections -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_keep_alive_is_the_http11_default(server: Server) -> None:
    def conversation(client: Client) -> list[Response]:
        answers = []
        for i in range(5):
            client.send(request(b"call %d" % i))
            answers.append(client.response())
        return answers

    answers = await server.talk(conversation)
    assert [a.body for a in answers] == [b"echo:call %d" % i for i in range(5)]
    first = answers[0]
    assert first.status == 200 and first.reason == "OK"
    assert first.headers["content-type"] == "text/xml"
    assert first.headers["server"].startswith("nebula-xr/")
    assert first.headers["date"].endswith(" GMT")
    assert "connection" not in first.headers


@pytest_twisted.ensureDeferred
async def test_connection_close_is_honoured(server: Server) -> None:
    answer, closed = await exchange(server, request(headers="Host: x\r\nConnection: close\r\n"))
    assert answer.status == 200 and answer.body == b"echo:hello"
    assert answer.headers["connection"] == "close"
    assert closed


@pytest_twisted.ensureDeferred
async def test_http10_closes_unless_keep_alive_is_asked(server: Server) -> None:
    answer, closed = await exchange(server, request(version="HTTP/1.0", headers=""))
    assert answer.status == 200 and answer.headers["connection"] == "close" and closed

    def conversation(client: Client) -> list[Response]:
        answers = []
        for _ in range(2):
            client.send(request(version="HTTP/1.0", headers="Connection: Keep-Alive\r\n"))
            answers.append(client.response())
        return answers

    answers = await server.talk(conversation)
    assert [a.headers["connection"] for a in answers] == ["keep-alive", "keep-alive"]


@pytest_twisted.ensureDeferred
async def test_requests_after_a_closing_one_are_not_answered(server: Server) -> None:
    def conversation(client: Client) -> tuple[Response, bool]:
        client.send(request(headers="Host: x\r\nConnection: close\r\n") + request(b"more"))
        return client.response(), client.closed()

    answer, closed = await server.talk(conversation)
    assert answer.body == b"echo:hello" and closed


# -- pipelining -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_pipelined_requests_are_answered_in_order(server: Server) -> None:
    def conversation(client: Client) -> list[bytes]:
        client.send(b"".join(request(b"n%d" % i) for i in range(50)))
        return [client.response().body for _ in range(50)]

    assert await server.talk(conversation) == [b"echo:n%d" % i for i in range(50)]


@pytest_twisted.ensureDeferred
async def test_pipelining_keeps_order_when_deferreds_fire_out_of_order() -> None:
    pending: list[tuple[bytes, Deferred[bytes]]] = []

    def handler(body: bytes) -> bytes | Deferred[bytes]:
        if body.startswith(b"now"):
            return b"sync:" + body
        d: Deferred[bytes] = Deferred()
        pending.append((body, d))
        return d

    server = Server(handler)
    try:
        bodies = [b"a", b"now1", b"b", b"c", b"now2"]

        def conversation() -> list[bytes]:
            client = Client(server.address)
            try:
                client.send(b"".join(request(body) for body in bodies))
                return [client.response().body for _ in bodies]
            finally:
                client.close()

        answers = deferToThread(conversation)
        await wait_until(lambda: len(pending) == 3)
        for body, d in reversed(pending):
            d.callback(b"async:" + body)
        result = await answers
        assert result == [b"async:a", b"sync:now1", b"async:b", b"async:c", b"sync:now2"]
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_full_pipeline_stops_reading_until_answers_are_sent() -> None:
    pending: list[Deferred[bytes]] = []

    def handler(body: bytes) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        pending.append(d)
        d.addCallback(lambda _: body)
        return d

    server = Server(handler, limits=Limits(pipeline=4))
    try:

        def conversation() -> list[bytes]:
            client = Client(server.address)
            try:
                client.send(b"".join(request(b"r%d" % i) for i in range(20)))
                return [client.response().body for _ in range(20)]
            finally:
                client.close()

        answers = deferToThread(conversation)
        for fired in range(20):
            await wait_until(lambda fired=fired: len(pending) > fired)
            await spin(0.02)
            assert len(pending) - fired <= 4  # never more than the limit in flight
            pending[fired].callback(None)
        assert await answers == [b"r%d" % i for i in range(20)]
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_client_that_does_not_read_stops_the_server_reading() -> None:
    calls = []

    def handler(body: bytes) -> bytes:
        calls.append(body)
        return b"x" * 1_000_000

    server = Server(handler)
    try:
        client = await in_thread(Client, server.address)
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        await in_thread(client.send, b"".join(request(b"%d" % i) for i in range(60)))
        await spin(0.3)
        assert 0 < len(calls) < 60  # the unread answers pushed back on the reading side
        answers = await in_thread(lambda: [client.response() for _ in range(60)])
        assert [len(a.body) for a in answers] == [1_000_000] * 60
        assert len(calls) == 60
        client.close()
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_answers_that_fit_the_socket_are_sent_without_a_turn_waiting_to_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Twisted's own transport registers for writability and sends on the next turn,
    # for every answer; the daemon's sends at once when nothing is queued before it.
    registered: list[object] = []
    add_writer = reactor.addWriter  # type: ignore[attr-defined]

    def recording(writer: object) -> None:
        registered.append(writer)
        add_writer(writer)

    monkeypatch.setattr(reactor, "addWriter", recording)
    server = Server(echo)
    try:

        def conversation(client: Client) -> tuple[list[bytes], list[object]]:
            answers = []
            for i in range(50):
                client.send(request(b"%d" % i))
                answers.append(client.response().body)
            # Before the client closes (the server's half-close then waits to write).
            return answers, list(registered)

        answers, writers = await server.talk(conversation)
        assert answers == [b"echo:%d" % i for i in range(50)]
        assert writers == []
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_write_after_a_partial_send_waits_behind_what_was_queued() -> None:
    server = Server(echo)
    try:
        client = await in_thread(Client, server.address)
        await wait_until(lambda: bool(server.factory.channels))
        transport = next(iter(server.factory.channels)).transport
        first = bytes(range(256)) * 40_000  # 10 MB: more than the socket takes at once
        transport.write(first)
        # The client reads part of it now, in this reactor turn: the socket has room
        # again while the rest of ``first`` still waits in the transport's queue.
        client.sock.settimeout(5)
        received = bytearray()
        while len(received) < 1_000_000:
            received += client.sock.recv(1_000_000 - len(received))
        transport.write(b"second")

        def rest() -> bytes:
            data = bytes(received)
            while len(data) < len(first) + len(b"second"):
                data += client.sock.recv(1 << 20)
            return data

        assert await in_thread(rest) == first + b"second"
        client.close()
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_repeated_head_is_checked_once_and_acted_on_the_same_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nebula_xr.transport import http

    read: list[int] = []
    request_head = http.HTTPChannel._request_head

    def counting(self: http.HTTPChannel, *args: Any) -> Any:
        read.append(1)
        return request_head(self, *args)

    monkeypatch.setattr(http.HTTPChannel, "_request_head", counting)
    lines: list[str] = []
    server = Server(echo, access_log=lines.append)
    try:
        polling = request(b"same")
        closing = request(b"same", headers="Host: localhost\r\nConnection: close\r\n")
        http10 = request(b"same", version="HTTP/1.0", headers="Connection: keep-alive\r\n")
        expecting = request(b"same", headers="Host: localhost\r\nExpect: 100-continue\r\n")

        def conversation(client: Client) -> list[tuple[int, str | None, bytes]]:
            answers = []
            for data in [polling] * 3 + [http10] * 2:
                client.send(data)
                answer = client.response()
                answers.append((answer.status, answer.headers.get("connection"), answer.body))
            return answers

        assert (
            await server.talk(conversation)
            == [(200, None, b"echo:same")] * 3 + [(200, "keep-alive", b"echo:same")] * 2
        )
        assert len(read) == 2  # each different head once
        assert (
            lines
            == ['127.0.0.1 "POST /RPC2 HTTP/1.1" 200 9'] * 3
            + ['127.0.0.1 "POST /RPC2 HTTP/1.0" 200 9'] * 2
        )
        # Heads that differ only in Connection or Expect are not taken for the polling one.
        answer, closed = await exchange(server, closing)
        assert (answer.status, answer.headers["connection"], closed) == (200, "close", True)

        def expect_twice(client: Client) -> list[int]:
            statuses = []
            for _ in range(2):
                client.send(expecting[: -len(b"same")])
                statuses.append(client.response().status)  # asked for the body each time
                client.send(b"same")
                statuses.append(client.response().status)
            return statuses

        assert await server.talk(expect_twice) == [100, 200, 100, 200]
    finally:
        await server.stop()


# -- bodies -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_chunked_body_with_extensions_and_trailer(server: Server) -> None:
    data = (
        b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n1\r\n \r\nA\r\n0123456789\r\n0\r\nX-Trailer: y\r\n\r\n"
    )

    def conversation(client: Client) -> list[bytes]:
        client.send(data + data)
        return [client.response().body, client.response().body]

    assert await server.talk(conversation) == [b"echo:hello 0123456789"] * 2


@pytest_twisted.ensureDeferred
async def test_requests_sent_one_byte_at_a_time(server: Server) -> None:
    chunked = (
        b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    data = request(b"plain body") + chunked

    def conversation(client: Client) -> list[bytes]:
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(len(data)):
            client.send(data[i : i + 1])
        return [client.response().body, client.response().body]

    assert await server.talk(conversation) == [b"echo:plain body", b"echo:abcde"]


@pytest_twisted.ensureDeferred
async def test_empty_lines_between_requests_and_bare_lf_are_accepted(server: Server) -> None:
    data = request(b"one") + b"\r\n" + b"POST /RPC2 HTTP/1.1\nHost: x\nContent-Length: 3\n\ntwo"

    def conversation(client: Client) -> list[bytes]:
        client.send(data)
        return [client.response().body, client.response().body]

    assert await server.talk(conversation) == [b"echo:one", b"echo:two"]


@pytest_twisted.ensureDeferred
async def test_absolute_form_and_query_are_accepted(server: Server) -> None:
    for path in ("http://localhost:2633/RPC2", "/RPC2?x=1"):
        answer, closed = await exchange(server, request(path=path))
        assert answer.status == 200 and not closed


@pytest_twisted.ensureDeferred
async def test_empty_body_reaches_the_handler(server: Server) -> None:
    answer, _ = await exchange(server, request(b""))
    assert answer.status == 200 and answer.body == b"echo:"


@pytest_twisted.ensureDeferred
async def test_expect_100_continue() -> None:
    bodies = []
    server = Server(lambda body: bodies.append(body) or b"ok")
    try:

        def conversation(client: Client) -> tuple[Response, Response, Response]:
            client.send(
                b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                b"Content-Length: 4\r\n\r\n"
            )
            interim = client.response()
            client.send(b"body")
            final = client.response()
            # A body sent along with the head needs no 100 Continue.
            client.send(request(b"more", headers="Host: x\r\nExpect: 100-Continue\r\n"))
            return interim, final, client.response()

        interim, final, direct = await server.talk(conversation)
        assert (interim.status, interim.reason, interim.body) == (100, "Continue", b"")
        assert final.status == 200 and direct.status == 200
        assert bodies == [b"body", b"more"]
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_expect_100_continue_waits_for_earlier_answers() -> None:
    later: list[Deferred[bytes]] = []

    def handler(body: bytes) -> Deferred[bytes] | bytes:
        if body == b"slow":
            d: Deferred[bytes] = Deferred()
            later.append(d)
            return d
        return body

    server = Server(handler)
    try:

        def conversation() -> list[tuple[int, bytes]]:
            client = Client(server.address)
            try:
                client.send(
                    request(b"slow") + b"POST /RPC2 HTTP/1.1\r\nHost: x\r\n"
                    b"Expect: 100-continue\r\nContent-Length: 4\r\n\r\n"
                )
                first, interim = client.response(), client.response()
                client.send(b"fast")
                final = client.response()
                return [(r.status, r.body) for r in (first, interim, final)]
            finally:
                client.close()

        answers = deferToThread(conversation)
        await wait_until(lambda: bool(later))
        await spin(0.05)
        later[0].callback(b"slow answer")
        assert await answers == [(200, b"slow answer"), (100, b""), (200, b"fast")]
    finally:
        await server.stop()


# -- refused requests -------------------------------------------------------------------

BAD_REQUESTS = [
    (b"garbage\r\n\r\n", 400),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n", 400),  # a TLS hello
    (b"POST /RPC2\r\nHost: x\r\n\r\n", 400),
    (b"POST  /RPC2 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    (b"POST /RPC2 HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400),
    (b"POST /RPC2 HTTP/x.y\r\nHost: x\r\n\r\n", 400),
    (b"POST /RPC2 HTTP/2.0\r\nHost: x\r\nContent-Length: 1\r\n\r\nx", 505),
    (b"POST /RPC2 HTTP/0.9\r\nHost: x\r\nContent-Length: 1\r\n\r\nx", 505),
    (b"POST /RPC2 HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", 400),  # no Host
    (b"POST /RPC2 HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 1\r\n\r\nx", 400),
    (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\nx", 400),
    (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 0x10\r\n\r\n", 400),
    (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx", 400),
    (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", 413),
    (
        b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
    ),
    (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
    (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\nx", 400),
    (b"POST /RPC2 HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nab\r\n", 400),
    (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nBad Name: y\r\nContent-Length: 0\r\n\r\n", 400),
    (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nNoColon\r\nContent-Length: 0\r\n\r\n", 400),
    (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\n folded\r\nContent-Length: 0\r\n\r\n", 400),
    (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\nContent-Length: 0\r\n\r\n", 400),
    (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nX: a\rb\r\nContent-Length: 0\r\n\r\n", 400),
    (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\n\r\n", 411),
    (b"POST /other HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx", 404),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx", 404),
    (b"POST /RPC2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx", 404),
    (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    (b"GET /RPC2 HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    (b"PUT /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx", 405),
    (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nExpect: magic\r\nContent-Length: 1\r\n\r\n", 417),
]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(("data", "status"), BAD_REQUESTS)
async def test_bad_requests_are_refused_and_closed(
    server: Server, data: bytes, status: int
) -> None:
    answer, closed = await exchange(server, data)
    assert answer.status == status
    assert answer.headers["connection"] == "close"
    assert answer.headers["content-type"].startswith("text/plain")
    assert closed
    if status == 405:
        assert answer.headers["allow"] == "POST"


@pytest_twisted.ensureDeferred
async def test_an_error_comes_after_the_answers_to_earlier_requests(server: Server) -> None:
    def conversation(client: Client) -> tuple[list[int], bool]:
        client.send(request(b"1") + request(b"2") + b"BROKEN\r\n\r\n" + request(b"3"))
        statuses = [client.response().status for _ in range(3)]
        return statuses, client.closed()

    assert await server.talk(conversation) == ([200, 200, 400], True)


@pytest_twisted.ensureDeferred
async def test_head_errors_have_no_body(server: Server) -> None:
    answer, closed = await exchange(
        server, b"HEAD /RPC2 HTTP/1.1\r\nHost: x\r\n\r\n", head_only=True
    )
    assert answer.status == 405 and int(answer.headers["content-length"]) > 0 and closed


@pytest_twisted.ensureDeferred
async def test_header_limits() -> None:
    server = Server(echo, limits=Limits(header_bytes=1024, header_count=10))
    try:
        many = "".join(f"X-{i}: y\r\n" for i in range(11))
        answer, closed = await exchange(server, request(headers="Host: x\r\n" + many))
        assert answer.status == 431 and closed
        huge = "X: " + "y" * 2000 + "\r\n"
        answer, closed = await exchange(server, request(headers="Host: x\r\n" + huge))
        assert answer.status == 431 and closed
        # An unterminated head is refused as soon as it passes the limit.
        answer, closed = await exchange(server, b"POST /RPC2 HTTP/1.1\r\nX: " + b"y" * 5000)
        assert answer.status == 431 and closed
        answer, closed = await exchange(server, request(headers="Host: x\r\n" + "X: y\r\n" * 8))
        assert answer.status == 200 and not closed
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_body_limit() -> None:
    server = Server(echo, limits=Limits(body_bytes=1000))
    try:
        answer, _ = await exchange(server, request(b"x" * 1000))
        assert answer.status == 200
        # Refused from the head alone, although the client is still sending the body.
        answer, closed = await exchange(server, request(b"x" * 200_000))
        assert answer.status == 413 and closed
        chunks = b"".join(b"100\r\n" + b"x" * 256 + b"\r\n" for _ in range(5)) + b"0\r\n\r\n"
        answer, closed = await exchange(
            server, b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
        )
        assert answer.status == 413 and closed
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_client_that_half_closes_gets_its_answers() -> None:
    later: list[Deferred[bytes]] = []

    def handler(body: bytes) -> bytes | Deferred[bytes]:
        if body != b"slow":
            return body
        d: Deferred[bytes] = Deferred()
        later.append(d)
        return d

    server = Server(handler, limits=Limits(pipeline=2))
    try:

        def conversation() -> tuple[list[bytes], bool]:
            client = Client(server.address)
            try:
                bodies = [b"1", b"slow", b"2", b"3", b"4"]
                client.send(b"".join(request(body) for body in bodies) + request(b"cut")[:-1])
                client.sock.shutdown(socket.SHUT_WR)
                return [client.response().body for _ in bodies], client.closed()
            finally:
                client.close()

        answers = deferToThread(conversation)
        await wait_until(lambda: bool(later))
        await spin(0.05)
        later[0].callback(b"slow")
        assert await answers == ([b"1", b"slow", b"2", b"3", b"4"], True)
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_truncated_body_then_close_leaves_the_server_working(server: Server) -> None:
    def truncated(client: Client) -> bool:
        client.send(request(b"x" * 100)[:-50])
        client.sock.shutdown(socket.SHUT_WR)
        return client.closed()

    assert await server.talk(truncated)
    answer, _ = await exchange(server, request(b"still here"))
    assert answer.body == b"echo:still here"


@pytest_twisted.ensureDeferred
async def test_a_failing_handler_answers_500_and_keeps_the_connection() -> None:
    def handler(body: bytes) -> Any:
        if body == b"raise":
            raise RuntimeError("boom")
        if body == b"fail":
            d: Deferred[bytes] = Deferred()
            d.errback(RuntimeError("boom"))
            return d
        if body == b"wrong":
            return "not bytes"
        return body

    server = Server(handler)
    try:

        def conversation(client: Client) -> list[int]:
            statuses = []
            for body in (b"raise", b"fail", b"wrong", b"fine"):
                client.send(request(body))
                statuses.append(client.response().status)
            return statuses

        assert await server.talk(conversation) == [500, 500, 500, 200]
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_access_log() -> None:
    lines: list[str] = []
    server = Server(echo, access_log=lines.append)
    try:
        await exchange(server, request(b"abc"))
        await exchange(server, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        assert lines == [
            '127.0.0.1 "POST /RPC2 HTTP/1.1" 200 8',
            '127.0.0.1 "GET /x HTTP/1.1" 404 -',
        ]
    finally:
        await server.stop()


# -- idle timeout -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_idle_connections_are_closed_after_the_timeout() -> None:
    clock = task.Clock()
    server = Server(echo, reactor=clock, limits=Limits(idle_timeout=60))
    try:
        client = await in_thread(Client, server.address)
        await in_thread(client.send, request(b"1"))
        assert (await in_thread(client.response)).status == 200
        await spin(0.05)
        clock.advance(59)
        await in_thread(client.send, request(b"2"))  # activity restarts the idle period
        assert (await in_thread(client.response)).status == 200
        await spin(0.05)
        clock.advance(59)
        assert not await in_thread(client.closed, 0.2)
        clock.advance(2)
        assert await in_thread(client.closed)
        client.close()

        # A request left half-sent is answered 408.
        client = await in_thread(Client, server.address)
        await in_thread(client.send, b"POST /RPC2 HTTP/1.1\r\nHost: x\r\n")
        await spin(0.05)
        clock.advance(61)
        answer = await in_thread(client.response)
        assert answer.status == 408 and await in_thread(client.closed)
        client.close()
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_request_being_answered_is_not_idle() -> None:
    clock = task.Clock()
    pending: list[Deferred[bytes]] = []

    def handler(body: bytes) -> Deferred[bytes]:
        d: Deferred[bytes] = Deferred()
        pending.append(d)
        return d

    server = Server(handler, reactor=clock, limits=Limits(idle_timeout=10))
    try:
        client = await in_thread(Client, server.address)
        await in_thread(client.send, request(b"slow"))
        await wait_until(lambda: bool(pending))
        clock.advance(100)
        pending[0].callback(b"done")
        assert (await in_thread(client.response)).body == b"done"
        client.close()
    finally:
        await server.stop()


# -- who is calling ---------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_the_handler_learns_the_peer_address_of_each_request() -> None:
    contexts: list[CallContext] = []
    factory = HTTPServerFactory(lambda body, context: contexts.append(context) or b"ok")
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    try:
        server = Server.__new__(Server)
        server.factory, server.port = factory, port
        server.address = ("127.0.0.1", port.getHost().port)
        response, _closed = await exchange(server, request(b"x"))
    finally:
        await port.stopListening()
    assert response.status == 200
    assert contexts == [CallContext("127.0.0.1", secure=False)]
    assert contexts[0].loopback


def test_a_context_is_loopback_only_for_loopback_addresses() -> None:
    assert CallContext("127.0.0.2").loopback
    assert CallContext("::1").loopback
    assert LOCAL.loopback
    assert not CallContext("10.77.0.11").loopback
    assert not CallContext("unknown").loopback
