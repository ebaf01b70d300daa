"""What a client may hold and cost: connection caps, head/body deadlines, the shared
budget of unfinished bodies, TLS connections, and the cost caps of one XML-RPC call.

Servers run in the (pytest-twisted) reactor on real TCP ports; clients are blocking
sockets in threads. Deadlines run on ``task.Clock``.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.threads import deferToThread

from nebula_xr.config import ConfigError, Layout, TLSFiles, parse_config
from nebula_xr.transport.http import CallContext, HTTPChannel, HTTPServerFactory, Limits
from nebula_xr.transport.tls import TLSSetupError, server_options
from nebula_xr.transport.xmlrpc import CallLimits, MethodRegistry, make_factory
from tests.test_transport_http import Client, Server, echo, exchange, in_thread, request, spin
from tests.test_transport_http import wait_until as wait_until_
from tests.tls_certs import make_certificate


async def wait_until(condition: Any, timeout: float = 10.0) -> None:
    await wait_until_(condition, timeout)


def parked(server: Server) -> list[Deferred[bytes]]:
    """Make ``server``'s handler keep every request unanswered; the list of their answers."""
    pending: list[Deferred[bytes]] = []

    def handler(_body: bytes, _context: CallContext) -> Deferred[bytes]:
        answer: Deferred[bytes] = Deferred()
        pending.append(answer)
        return answer

    server.factory.handler = handler
    return pending


async def connect(server: Server, source: str | None = None) -> Client:
    return await in_thread(Client, server.address, source)


# -- connection caps ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_over_the_connection_cap_a_new_connection_is_answered_503() -> None:
    server = Server(echo, limits=Limits(connections=2))
    pending = parked(server)
    try:
        busy = [await connect(server) for _ in range(2)]
        for client in busy:
            await in_thread(client.send, request(b"work"))
        await wait_until(lambda: len(pending) == 2)
        refused = await connect(server)
        await in_thread(refused.send, request(b"more"))
        answer = await in_thread(refused.response)
        assert answer.status == 503 and answer.headers["connection"] == "close"
        assert await in_thread(refused.closed)
        refused.close()
        for answer_later in pending:
            answer_later.callback(b"done")
        assert [(await in_thread(c.response)).body for c in busy] == [b"done", b"done"]
        for client in busy:
            client.close()
        # Once they are gone, there is room again.
        await wait_until(lambda: not server.factory.channels)
        server.factory.handler = lambda body, _context: echo(body)
        answer, _ = await exchange(server, request(b"again"))
        assert answer.status == 200
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_at_the_cap_the_connection_waiting_longest_makes_room() -> None:
    server = Server(echo, limits=Limits(connections=2))
    try:
        oldest = await connect(server)
        await wait_until(lambda: len(server.factory.channels) == 1)
        younger = await connect(server)
        await wait_until(lambda: len(server.factory.channels) == 2)
        answer, _ = await exchange(server, request(b"served"))
        assert answer.status == 200 and answer.body == b"echo:served"
        assert await in_thread(oldest.closed)
        assert not await in_thread(younger.closed, 0.2)
        oldest.close()
        younger.close()
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_connections_are_capped_per_peer_address() -> None:
    server = Server(echo, limits=Limits(connections_per_address=1))
    pending = parked(server)
    try:
        busy = await connect(server, "127.0.0.2")
        await in_thread(busy.send, request(b"work"))
        await wait_until(lambda: len(pending) == 1)
        same_peer = await connect(server, "127.0.0.2")
        await in_thread(same_peer.send, request(b"x"))
        assert (await in_thread(same_peer.response)).status == 503
        other_peer = await connect(server, "127.0.0.3")
        await in_thread(other_peer.send, request(b"y"))
        await wait_until(lambda: len(pending) == 2)
        pending[1].callback(b"served")
        assert (await in_thread(other_peer.response)).body == b"served"
        pending[0].callback(b"done")
        assert (await in_thread(busy.response)).body == b"done"
        for client in (busy, same_peer, other_peer):
            client.close()
    finally:
        await server.stop()


# -- deadlines ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_a_head_trickling_in_is_cut_at_the_head_deadline() -> None:
    clock = task.Clock()
    server = Server(echo, reactor=clock, limits=Limits(head_timeout=10, idle_timeout=60))
    try:
        client = await connect(server)
        await in_thread(client.send, b"POST /RPC2 HTTP/1.1\r\n")
        channel = await only_channel(server)
        await wait_until(lambda: channel._buf)
        for second in range(3, 10, 3):  # activity does not extend a head's deadline
            clock.advance(3)
            await in_thread(client.send, b"X")
            await wait_until(lambda n=second // 3: channel._buf.count(b"X") == n)
        assert not await in_thread(client.closed, 0.1)
        clock.advance(2)
        answer = await in_thread(client.response)
        assert answer.status == 408 and await in_thread(client.closed)
        client.close()
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_silent_new_connection_and_stray_line_breaks_get_the_head_deadline() -> None:
    clock = task.Clock()
    server = Server(echo, reactor=clock, limits=Limits(head_timeout=10, idle_timeout=60))
    try:
        silent = await connect(server)
        crlf = await connect(server)
        await wait_until(lambda: len(server.factory.channels) == 2)
        for _ in range(4):
            clock.advance(2.4)
            await in_thread(crlf.send, b"\r\n")
        await spin(0.05)
        assert not await in_thread(silent.closed, 0.1)
        clock.advance(1)
        assert await in_thread(silent.closed)
        assert await in_thread(crlf.closed)
        silent.close()
        crlf.close()
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_a_body_trickling_in_is_cut_at_the_body_deadline() -> None:
    clock = task.Clock()
    server = Server(echo, reactor=clock, limits=Limits(body_timeout=30, idle_timeout=60))
    try:
        client = await connect(server)
        await in_thread(
            client.send, b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
        )
        channel = await only_channel(server)
        clock.advance(9)  # the head took 9 s: within its deadline; the body's starts now
        for sent in range(1, 6):
            await in_thread(client.send, b"y" * 10)
            await wait_until(lambda n=sent: channel._remaining == 100 - 10 * n)
            clock.advance(5)
        assert not await in_thread(client.closed, 0.1)
        clock.advance(6)
        answer = await in_thread(client.response)
        assert answer.status == 408 and await in_thread(client.closed)
        client.close()
    finally:
        await server.stop()


async def only_channel(server: Server) -> HTTPChannel:
    await wait_until(lambda: len(server.factory.channels) == 1)
    return next(iter(server.factory.channels))


# -- unfinished bodies share one budget ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_unfinished_bodies_stop_being_read_when_the_shared_budget_is_spent() -> None:
    limits = Limits(body_allowance=1000, buffer_bytes=20_000)
    server = Server(echo, limits=limits)
    factory = server.factory
    size, first_part, clients = 300_000, 150_000, 4
    try:
        senders = [await connect(server) for _ in range(clients)]
        head = b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size
        for client in senders:
            await in_thread(client.send, head + b"z" * first_part)

        def held(channel: HTTPChannel) -> int:
            return sum(map(len, channel._body)) + len(channel._buf)

        def settled() -> bool:
            channels = list(factory.channels)
            return len(channels) == clients and all(
                c._budget_wait or held(c) == first_part for c in channels
            )

        await wait_until(settled)
        # A body of known length reserves its bytes before it is read: the first is
        # admitted (alone, it may exceed the budget), the others wait without reading
        # more than what came with their head.
        waiting = [c for c in factory.channels if c._budget_wait]
        assert len(waiting) == clients - 1
        assert all(held(c) <= 65536 for c in waiting)
        assert factory.buffered == size - limits.body_allowance

        # A small request is not held up by the spent budget.
        answer, _ = await exchange(server, request(b"small"))
        assert answer.body == b"echo:small"

        # As bodies complete and are answered, their bytes let the others read on.
        def finish(client: Client) -> int:
            client.send(b"z" * (size - first_part))
            return len(client.response().body)

        lengths = await gatherResults([deferToThread(finish, client) for client in senders])
        assert lengths == [size + 5] * clients
        assert factory.buffered == 0
        for client in senders:
            client.close()
    finally:
        await server.stop()


# -- TLS ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_calls_over_tls_are_marked_secure(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    contexts: list[CallContext] = []
    factory = HTTPServerFactory(lambda body, context: contexts.append(context) or b"ok:" + body)
    port = reactor.listenSSL(0, factory, server_options(cert, key), interface="127.0.0.1")  # type: ignore[attr-defined]
    address = ("127.0.0.1", port.getHost().port)

    def conversation() -> tuple[bytes, bytes]:
        tls = ssl.create_default_context(cafile=str(cert))
        with socket.create_connection(address, timeout=5) as raw:
            with tls.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
                sock.sendall(request(b"1") + request(b"2"))
                data = b""
                while data.count(b"ok:") < 2 or not data.endswith(b"ok:2"):
                    data += sock.recv(65536)
                return data[:12], data

    try:
        _, data = await in_thread(conversation)
        assert b"200 OK" in data and data.endswith(b"ok:2")
        assert contexts == [CallContext("127.0.0.1", secure=True)] * 2
    finally:
        await port.stopListening()


def test_unusable_tls_files_are_named(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    other_cert, other_key = make_certificate(tmp_path, "other")
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    cases = [
        (tmp_path / "missing.crt", key, "Can not read the TLS certificate"),
        (cert, tmp_path / "missing.key", "Can not read the TLS key"),
        (tmp_path / "junk.pem", key, "holds no PEM certificate"),
        (cert, tmp_path / "junk.pem", "is not a PEM private key"),
        (cert, other_key, "does not match the certificate"),
    ]
    for cert_path, key_path, message in cases:
        try:
            server_options(cert_path, key_path)
        except TLSSetupError as error:
            assert message in str(error), error
        else:
            raise AssertionError(f"{cert_path} with {key_path} was accepted")
    assert server_options(other_cert, other_key) is not None


# -- what one call may cost ---------------------------------------------------------------


def big_registry(limits: CallLimits) -> MethodRegistry:
    registry = MethodRegistry(limits)
    registry.register("big", lambda: "x" * 1_000_000, "s:")
    registry.register("small", lambda n: [True, n], "A:i")
    return registry


async def serve(registry: MethodRegistry) -> Any:
    return reactor.listenTCP(0, make_factory(registry), interface="127.0.0.1")  # type: ignore[attr-defined]


def xmlrpc_call(port: Any, method: str, *params: Any) -> Any:
    url = f"http://127.0.0.1:{port.getHost().port}/RPC2"
    with xmlrpc.client.ServerProxy(url) as proxy:
        try:
            return getattr(proxy, method)(*params)
        except xmlrpc.client.Fault as fault:
            return fault.faultCode, fault.faultString


@pytest_twisted.ensureDeferred
async def test_answers_past_the_reply_cap_are_a_fault() -> None:
    port = await serve(big_registry(CallLimits(reply_bytes=3_500_000)))
    try:
        assert len(await deferToThread(xmlrpc_call, port, "big")) == 1_000_000
        three = [{"methodName": "big", "params": []}] * 3
        answers = await deferToThread(xmlrpc_call, port, "system.multicall", three)
        assert [len(a[0]) for a in answers] == [1_000_000] * 3
        code, message = await deferToThread(xmlrpc_call, port, "system.multicall", three + three)
        assert code == -509 and "exceed 3500000 bytes" in message
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_costly_multicall_never_holds_the_reactor_for_long() -> None:
    """1,000 answers of 1 MB: refused at the 64 MiB cap, the reactor turning all along."""
    port = await serve(big_registry(CallLimits()))
    ticks: list[float] = []
    ticker = task.LoopingCall(lambda: ticks.append(time.monotonic()))
    ticker.start(0.005)
    try:
        calls = [{"methodName": "big", "params": []}] * 1000
        code, message = await deferToThread(xmlrpc_call, port, "system.multicall", calls)
        assert code == -509 and "exceed" in message
        smalls = [{"methodName": "small", "params": [n]} for n in range(1000)]
        answers = await deferToThread(xmlrpc_call, port, "system.multicall", smalls)
        assert answers == [[[True, n]] for n in range(1000)]
    finally:
        ticker.stop()
        await port.stopListening()
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    assert len(ticks) > 10 and max(gaps) < 0.5, max(gaps)


@pytest_twisted.ensureDeferred
async def test_multicall_calls_are_capped() -> None:
    port = await serve(big_registry(CallLimits(multicall_calls=3)))
    try:
        calls = [{"methodName": "small", "params": [n]} for n in range(4)]
        code, message = await deferToThread(xmlrpc_call, port, "system.multicall", calls)
        assert (code, message) == (-509, "system.multicall is limited to 3 calls")
        answers = await deferToThread(xmlrpc_call, port, "system.multicall", calls[:3])
        assert answers == [[[True, 0]], [[True, 1]], [[True, 2]]]
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_tls_connection_over_the_cap_reads_its_503(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    pending: list[Deferred[bytes]] = []

    def handler(_body: bytes, _context: CallContext) -> Deferred[bytes]:
        pending.append(Deferred())
        return pending[-1]

    factory = HTTPServerFactory(handler, limits=Limits(connections=1))
    port = reactor.listenSSL(0, factory, server_options(cert, key), interface="127.0.0.1")  # type: ignore[attr-defined]
    address = ("127.0.0.1", port.getHost().port)
    tls = ssl.create_default_context(cafile=str(cert))

    def open_tls() -> ssl.SSLSocket:
        raw = socket.create_connection(address, timeout=5)
        return tls.wrap_socket(raw, server_hostname="127.0.0.1")

    def read_all(sock: ssl.SSLSocket) -> bytes:
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ssl.SSLError:
            pass  # some peers end without close_notify; what came before counts
        return data

    try:
        busy = await in_thread(open_tls)
        await in_thread(busy.sendall, request(b"work"))
        await wait_until(lambda: len(pending) == 1)
        refused = await in_thread(open_tls)
        answer = await in_thread(read_all, refused)
        assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
        assert answer.endswith(b"Too many connections, try again later\n")
        refused.close()
        pending[0].callback(b"done")
        assert (await in_thread(busy.recv, 65536)).endswith(b"done")
        busy.close()
    finally:
        await port.stopListening()


# -- configuration ------------------------------------------------------------------------


def test_oned_conf_sets_the_limits_tls_and_a_loopback_default(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "var", tmp_path / "etc", tmp_path / "var", tmp_path / "lock")
    config = parse_config("PORT = 0\n", layout)
    assert config.listen_address == "127.0.0.1"
    assert config.tls is None
    assert (config.limits, config.call_limits) == (Limits(), CallLimits())
    config = parse_config(
        'TLS = [ cert = "a.crt", key = "/keys/a.key" ]\n'
        "LIMITS = [ connections = 10, connections_per_address = 2, head_timeout = 1.5,\n"
        "  body_timeout = 3, idle_timeout = 4, body_buffer = 5000, multicall_calls = 7,\n"
        "  reply_bytes = 9000 ]\n",
        layout,
    )
    assert config.tls == TLSFiles(tmp_path / "etc" / "a.crt", Path("/keys/a.key"))
    assert config.limits == Limits(
        connections=10,
        connections_per_address=2,
        head_timeout=1.5,
        body_timeout=3,
        idle_timeout=4,
        buffer_bytes=5000,
    )
    assert config.call_limits == CallLimits(multicall_calls=7, reply_bytes=9000)
    refused = {
        'TLS = "a.crt"\n': "TLS must be a vector",
        'TLS = [ cert = "a.crt" ]\n': "TLS needs both cert and key",
        "LIMITS = [ connection = 5 ]\n": "LIMITS has unknown keys ['CONNECTION']",
        "LIMITS = [ connections = -5 ]\n": "LIMITS connections must be a positive integer",
        "LIMITS = [ reply_bytes = 1e6 ]\n": "LIMITS reply_bytes must be a positive integer",
        "LIMITS = [ head_timeout = 0 ]\n": "LIMITS head_timeout must be positive",
    }
    for text, message in refused.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_config(text, layout)
