"""The network part of the attack suite, against the real daemon process.

Hostile bodies (XXE, billion laughs, 10,000 generated malformed requests, XML-RPC
values from a grammar), a flood of idle and slow connections while a normal client
keeps working, a costly multicall, TLS with Python's and Ruby's XML-RPC clients, and
the loopback-only default. Each test talks to nebula-xr over real sockets on an
ephemeral loopback port.
"""

from __future__ import annotations

import http.client
import random
import resource
import socket
import ssl
import statistics
import subprocess
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ElementTree
import xmlrpc.client
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.oned import OneDaemon, wait_for, write_conf
from tests.tls_certs import make_certificate

SESSION = "sessionID"


def start_daemon(location: Path, extra: str = "") -> OneDaemon:
    write_conf(location, extra=extra)
    daemon = OneDaemon(location).start()
    drain_stderr(daemon)
    return daemon


def drain_stderr(daemon: OneDaemon) -> None:
    """Keep reading the daemon's stderr, so that its log lines never fill the pipe."""
    assert daemon.process is not None and daemon.process.stderr is not None
    stream = daemon.process.stderr
    threading.Thread(target=lambda: [None for _ in iter(stream.readline, b"")], daemon=True).start()


def address_of(daemon: OneDaemon) -> tuple[str, int]:
    parts = urllib.parse.urlsplit(daemon.url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def rss_kib(daemon: OneDaemon, field: str = "VmRSS") -> int:
    """The daemon's resident memory now (or its peak so far: ``VmHWM``), in KiB."""
    assert daemon.process is not None
    status = Path(f"/proc/{daemon.process.pid}/status").read_text()
    return int(
        next(line for line in status.splitlines() if line.startswith(field + ":")).split()[1]
    )


def reset_peak(daemon: OneDaemon) -> int:
    """Restart the count of the daemon's peak RSS (``VmHWM``) from now; its RSS now."""
    assert daemon.process is not None
    Path(f"/proc/{daemon.process.pid}/clear_refs").write_text("5")
    return rss_kib(daemon)


def open_descriptors(daemon: OneDaemon) -> int:
    assert daemon.process is not None
    return len(list(Path(f"/proc/{daemon.process.pid}/fd").iterdir()))


def alive(daemon: OneDaemon) -> bool:
    return daemon.process is not None and daemon.process.poll() is None


class Poster:
    """POSTs bodies over one kept-alive connection, reconnecting when the server closes."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.connection: http.client.HTTPConnection | None = None

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        if self.connection is None:
            self.connection = http.client.HTTPConnection(*self.address, timeout=30)
        self.connection.request(
            "POST", "/RPC2", body, {"Content-Type": "text/xml", **(headers or {})}
        )
        response = self.connection.getresponse()
        data = response.read()
        if response.will_close:
            self.close()
        return response.status, data

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


def method_response(data: bytes) -> tuple[int, str] | Any:
    """The fault ``(code, string)`` or the value of a methodResponse; fails if malformed."""
    root = ElementTree.fromstring(data)
    assert root.tag == "methodResponse", data[:200]
    (child,) = list(root)
    if child.tag == "fault":
        xmlrpc.client.loads(data)  # raises the Fault it carries
    assert child.tag == "params", data[:200]
    return xmlrpc.client.loads(data)[0][0]


def fault_of(data: bytes) -> tuple[int, str]:
    try:
        value = method_response(data)
    except xmlrpc.client.Fault as fault:
        return fault.faultCode, fault.faultString
    raise AssertionError(f"not a fault: {value!r}")


def call_document(method: str, *params: Any) -> bytes:
    return xmlrpc.client.dumps(params, method).encode()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OneDaemon]:
    one = start_daemon(tmp_path_factory.mktemp("one"))
    assert one.call("one.vmallocate", "NAME = probe\nMEMORY = 64\nCPU = 1\n") == [True, 0]
    yield one
    one.stop()


# -- defaults -----------------------------------------------------------------------------


def listening_addresses(port: int) -> set[str]:
    """The local addresses bound to ``port`` in LISTEN state, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            host, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(host)
    return found


def test_a_fresh_install_listens_on_loopback_only(tmp_path: Path) -> None:
    conf = write_conf(tmp_path)
    conf.write_text(conf.read_text().replace('LISTEN_ADDRESS = "127.0.0.1"\n', ""))
    assert "LISTEN_ADDRESS" not in conf.read_text()
    one = OneDaemon(tmp_path).start()
    try:
        host, port = address_of(one)
        assert host == "127.0.0.1"
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, and nothing else
        assert one.call("one.vmget_info", 0)[0] is False  # it answers there
    finally:
        one.stop()


def test_the_daemon_raises_its_open_file_limit_to_the_hard_limit(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard > 512
    write_conf(tmp_path)
    resource.setrlimit(resource.RLIMIT_NOFILE, (512, hard))  # inherited by the daemon
    try:
        one = OneDaemon(tmp_path).start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        assert one.process is not None
        limits = Path(f"/proc/{one.process.pid}/limits").read_text()
        line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert line.split()[3:5] == [str(hard), str(hard)]
    finally:
        one.stop()


# -- TLS ----------------------------------------------------------------------------------

RUBY_CLIENT = """
require "xmlrpc/client"
require "openssl"
client = XMLRPC::Client.new2(ARGV[0])
client.http.ca_file = ARGV[1]
client.http.verify_mode = OpenSSL::SSL::VERIFY_PEER
ok, text = client.call("one.vmget_info", "sessionID", ARGV[2].to_i)
puts ok
puts text
"""


@pytest.fixture(scope="module")
def tls_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OneDaemon, Path]]:
    location = tmp_path_factory.mktemp("one-tls")
    (location / "etc").mkdir()
    cert, _key = make_certificate(location / "etc")
    one = start_daemon(location, 'TLS = [ cert = "server.crt", key = "server.key" ]')
    yield one, cert
    one.stop()


def test_python_xmlrpc_client_over_https(tls_daemon: tuple[OneDaemon, Path]) -> None:
    one, cert = tls_daemon
    assert one.url.startswith("https://127.0.0.1:")
    context = ssl.create_default_context(cafile=str(cert))
    with xmlrpc.client.ServerProxy(one.url, context=context) as proxy:
        assert proxy.one.vmallocate(SESSION, "NAME = over_tls\nMEMORY = 64\n") == [True, 0]
        ok, text = proxy.one.vmget_info(SESSION, 0)
    assert ok and "NAME=over_tls" in text.replace(" ", "")
    # Plain http to the TLS port gets no XML-RPC answer.
    host, port = address_of(one)
    plain = http.client.HTTPConnection(host, port, timeout=5)
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        plain.request("POST", "/RPC2", call_document("one.vmget_info", SESSION, 0))
        plain.getresponse().read()
    plain.close()


def test_ruby_xmlrpc_client_over_https(tls_daemon: tuple[OneDaemon, Path], tmp_path: Path) -> None:
    """The Ruby client of the 1.2 CLI (ruby-xmlrpc; tests/cluster/install.sh installs it)."""
    one, cert = tls_daemon
    ok, vid = one_call_tls(one, cert, "one.vmallocate", SESSION, "NAME = from_ruby\nMEMORY = 64\n")
    assert ok
    script = tmp_path / "client.rb"
    script.write_text(RUBY_CLIENT)
    result = subprocess.run(
        ["ruby", str(script), one.url, str(cert), str(vid)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    first, *rest = result.stdout.splitlines()
    assert first == "true" and any(line.strip() == "NAME=from_ruby" for line in rest)
    # The same client refuses a server whose certificate it cannot verify.
    other_cert, _key = make_certificate(tmp_path, "other")
    refused = subprocess.run(
        ["ruby", str(script), one.url, str(other_cert), str(vid)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0 and "certificate verify failed" in refused.stderr


def one_call_tls(one: OneDaemon, cert: Path, method: str, *params: Any) -> Any:
    context = ssl.create_default_context(cafile=str(cert))
    with xmlrpc.client.ServerProxy(one.url, context=context) as proxy:
        return getattr(proxy, method)(*params)


def test_unusable_tls_files_stop_the_start(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    make_certificate(etc)
    write_conf(tmp_path, extra='TLS = [ cert = "missing.crt", key = "server.key" ]')
    with pytest.raises(RuntimeError, match=r"Can not read the TLS certificate \S*/etc/missing.crt"):
        OneDaemon(tmp_path).start()
    make_certificate(etc, "other")
    write_conf(tmp_path, extra='TLS = [ cert = "server.crt", key = "other.key" ]')
    with pytest.raises(RuntimeError, match=r"TLS key \S*/etc/other.key does not match"):
        OneDaemon(tmp_path).start()


# -- hostile XML --------------------------------------------------------------------------


def test_external_entities_and_entity_expansion_are_refused(
    daemon: OneDaemon, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-MARKER-4711\n")
    before = reset_peak(daemon)
    laughs = "".join(f'<!ENTITY l{n} "{f"&l{n - 1};" * 10 if n else "lol"}">' for n in range(10))
    bodies = {
        "external entity": f'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY x SYSTEM "file://{secret}">]>'
        "<methodCall><methodName>one.vmallocate</methodName><params><param><value><string>sessionID"
        "</string></value></param><param><value><string>NAME=&x;</string></value></param>"
        "</params></methodCall>",
        "external DTD": f'<?xml version="1.0"?><!DOCTYPE methodCall SYSTEM "file://{secret}">'
        "<methodCall><methodName>one.vmget_info</methodName></methodCall>",
        "billion laughs": f'<?xml version="1.0"?><!DOCTYPE lolz [{laughs}]>'
        "<methodCall><methodName>one.vmallocate</methodName><params><param><value><string>"
        "sessionID</string></value></param><param><value><string>NAME=&l9;</string></value>"
        "</param></params></methodCall>",
        "parameter entity": f'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY % p SYSTEM "file://{secret}">%p;]>'
        "<methodCall><methodName>one.vmget_info</methodName></methodCall>",
    }
    poster = Poster(address_of(daemon))
    for name, body in bodies.items():
        status, data = poster.post(body.encode())
        assert status == 200, name
        code, message = fault_of(data)
        assert code == -503 and "document type declaration is not allowed" in message, (
            name,
            message,
        )
        assert b"SECRET-MARKER" not in data and b"lollol" not in data
    poster.close()
    # Nothing was allocated from them, and the daemon did not grow.
    assert daemon.call("one.vmget_info", 1)[0] is False
    assert rss_kib(daemon, "VmHWM") - before < 20_000


def test_huge_numbers_and_unknown_encodings_are_faults(daemon: OneDaemon) -> None:
    poster = Poster(address_of(daemon))
    cases = {
        b"<methodCall><methodName>one.vmget_info</methodName><params><param><value><string>s"
        b"</string></value></param><param><value><i4>" + b"9" * 5000 + b"</i4></value></param>"
        b"</params></methodCall>": "<int> value of 5000 digits is above the range",
        b'<?xml version="1.0" encoding="x-unknown"?><methodCall><methodName>one.vmget_info'
        b"</methodName></methodCall>": "Call is not valid XML.  unknown encoding: x-unknown",
        b"<methodCall><methodName>m</methodName><params><param><value><double>"
        + b"9" * 100_000
        + b"</double></value></param></params></methodCall>": "Method 'm' not defined",
    }
    for body, message in cases.items():
        status, data = poster.post(body)
        assert status == 200
        assert message in fault_of(data)[1]
    poster.close()


# -- 10,000 generated malformed requests -----------------------------------------------------

VALID_CALLS = [
    call_document("one.vmget_info", SESSION, 0),
    call_document("one.vmallocate", SESSION, "NAME = x\nMEMORY = 64\n"),
    call_document("system.multicall", [{"methodName": "one.vmget_info", "params": [SESSION, 0]}]),
    call_document("one.hostallocate", SESSION, "h", "im", "vmm", "tm", True),
]
BAD_VALUES = [
    b"<i4>" + b"1" * 30 + b"</i4>",
    b"<i4>-" + b"9" * 4400 + b"</i4>",
    b"<int>12a</int>",
    b"<boolean>2</boolean>",
    b"<double>1e</double>",
    b"<base64>!!!</base64>",
    b"<dateTime.iso8601>yesterday</dateTime.iso8601>",
    b"<blob>x</blob>",
    b"<array></array>",
    b"<struct><member><value><i4>1</i4></value></member></struct>",
    b"<string>a</string><string>b</string>",
]


def malformed_xml(rng: random.Random) -> bytes:
    """A body that is never a proper XML-RPC call (each kind proves it its own way)."""
    base = rng.choice(VALID_CALLS)
    kind = rng.randrange(9)
    if kind == 0:  # cut short: the root element is never closed
        return base[: rng.randrange(len(base) - len(b"</methodCall>") + 1)]
    if kind == 1:  # a character XML forbids, anywhere
        at = rng.randrange(len(base) + 1)
        return base[:at] + bytes([rng.choice([0, 1, 2, 8, 11, 12, 27, 31])]) + base[at:]
    if kind == 2:  # a value XML-RPC does not allow
        return call_document_raw("one.vmget_info", rng.choice(BAD_VALUES))
    if kind == 3:  # an encoding nobody knows, or bytes that are not UTF-8
        if rng.random() < 0.5:
            return f'<?xml version="1.0" encoding="x-{rng.randrange(10**6)}"?>'.encode() + base
        return base.replace(b"sessionID", b"session\xff\xfe\xc3")
    if kind == 4:  # nested deeper than allowed
        depth = rng.randrange(65, 400)
        value = b"<value><array><data>" * depth + b"</data></array></value>" * depth
        return call_document_raw("one.vmget_info", value[len(b"<value>") : -len(b"</value>")])
    if kind == 5:  # random bytes
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
    if kind == 6:  # another root element, or markup where text belongs
        return rng.choice(
            [b"<methodResponse/>", b"<a><b></a></b>", base.replace(b"<params>", b"<params>x", 1)]
        )
    if kind == 7:  # a document type declaration
        return (
            b'<?xml version="1.0"?><!DOCTYPE methodCall [<!ENTITY e "x">]>'
            + base.split(b"?>", 1)[1]
        )
    return base.replace(b"<params>", b"<params><param></param>", 1)  # a param without value


def call_document_raw(method: str, value: bytes) -> bytes:
    return (
        b"<?xml version='1.0'?><methodCall><methodName>" + method.encode() + b"</methodName>"
        b"<params><param><value>" + value + b"</value></param></params></methodCall>"
    )


#: Malformed HTTP requests and the status each must be answered with.
def malformed_http(rng: random.Random) -> tuple[bytes, int]:
    body = VALID_CALLS[0]
    length = b"Content-Length: %d\r\n" % len(body)
    choices = [
        (b"POST /RPC2 HTTP/1.1 extra\r\nHost: x\r\n" + length + b"\r\n" + body, 400),
        (b"GET /RPC2 HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"POST /%d HTTP/1.1\r\nHost: x\r\n" % rng.randrange(10**6) + length + b"\r\n" + body, 404),
        (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\n\r\n" + body, 411),
        (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n", 413),
        (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 20_000 + b"\r\n\r\n", 431),
        (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"POST /RPC2 HTTP/2.0\r\nHost: x\r\n" + length + b"\r\n" + body, 505),
        (b"POST /RPC2 HTTP/1.1\r\n" + length + b"\r\n" + body, 400),
        (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n" + length + b"\r\n" + body, 400),
        (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nX: \x00\r\n" + length + b"\r\n" + body, 400),
        (b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\n" + length + b"\r\n" + body, 417),
    ]
    return rng.choice(choices)


def raw_exchange(address: tuple[str, int], data: bytes) -> tuple[int, bool]:
    """Send ``data`` on a new connection; the answer's status and whether it then closed."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, f"closed without an answer: {data[:80]!r}"
            received += chunk
        head, _, rest = received.partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = int(
            next(
                line.split(b":")[1]
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
        )
        while len(rest) < length:
            chunk = sock.recv(65536)
            assert chunk
            rest += chunk
        closed = True
        try:
            sock.settimeout(5)
            while chunk := sock.recv(65536):
                rest += chunk
                closed = False
        except ConnectionResetError:
            pass
        return status, closed


def test_ten_thousand_malformed_requests(daemon: OneDaemon) -> None:
    rng = random.Random(20261202)
    address = address_of(daemon)
    poster = Poster(address)
    before = reset_peak(daemon)
    faults: Counter[int] = Counter()
    statuses: Counter[int] = Counter()
    for _ in range(10_000):
        if rng.random() < 0.8:
            status, data = poster.post(malformed_xml(rng))
            assert status == 200
            code, message = fault_of(data)
            assert code in (-501, -503, -506) and len(message) < 300, (code, message)
            faults[code] += 1
        else:
            data, expected = malformed_http(rng)
            status, closed = raw_exchange(address, data)
            assert (status, closed) == (expected, True), data[:100]
            statuses[status] += 1
    poster.close()
    grown = rss_kib(daemon, "VmHWM") - before
    print(
        f"\n10,000 malformed requests: faults {dict(faults)}, HTTP errors {dict(statuses)}, "
        f"peak RSS {grown} KiB above the RSS before"
    )
    assert sum(faults.values()) + sum(statuses.values()) == 10_000
    assert alive(daemon) and daemon.call("one.vmget_info", 0)[0] is True
    assert grown < 64 * 1024


# -- the XML-RPC value grammar ---------------------------------------------------------------

SCALAR_TAGS = [
    "i4",
    "int",
    "boolean",
    "string",
    "double",
    "base64",
    "dateTime.iso8601",
    "nil",
    "",
    "blob",
]
TEXTS = st.one_of(
    st.text(max_size=20),
    st.integers().map(str),
    st.integers(min_value=0, max_value=6000).map(lambda n: "9" * n),
    st.sampled_from(
        ["0", "1", "-0", "1e400", "nan", "20261202T21:00:00", "AAAA", "&amp;", "&#0;", "<", "]]>"]
    ),
)


def escape(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;")
        if text not in ("&amp;", "&#0;", "<", "]]>")
        else text
    )


@st.composite
def values(draw: st.DrawFn, depth: int = 0) -> str:
    kind = draw(st.integers(0, 9 if depth < 4 else 6))
    if kind <= 6:
        tag = draw(st.sampled_from(SCALAR_TAGS))
        text = escape(draw(TEXTS))
        if tag == "":
            return f"<value>{text}</value>"
        if tag == "nil":
            return "<value><nil/></value>"
        return f"<value><{tag}>{text}</{tag}></value>"
    items = draw(st.lists(values(depth + 1), max_size=4))
    if kind <= 8:
        return "<value><array><data>" + "".join(items) + "</data></array></value>"
    names = draw(
        st.lists(st.text(max_size=8).map(escape), min_size=len(items), max_size=len(items))
    )
    members = "".join(
        f"<member><name>{n}</name>{v}</member>" for n, v in zip(names, items, strict=True)
    )
    return "<value><struct>" + members + "</struct></value>"


@st.composite
def documents(draw: st.DrawFn) -> bytes:
    method = draw(
        st.sampled_from(
            [
                "one.vmget_info",
                "one.hostinfo",
                "system.methodHelp",
                "system.multicall",
                "no.such",
                "",
            ]
        )
    )
    params = "".join(f"<param>{v}</param>" for v in draw(st.lists(values(), max_size=4)))
    document = (
        f"<methodCall><methodName>{method}</methodName><params>{params}</params></methodCall>"
    )
    encoding = draw(
        st.sampled_from(["utf-8", "UTF-16", "iso-8859-1", "ascii", "x-unknown", "utf-32", None])
    )
    if encoding is None:
        data = document.encode("utf-8", "surrogatepass")
    else:
        declaration = f'<?xml version="1.0" encoding="{encoding}"?>'
        codec = {"x-unknown": "utf-8", "utf-32": "utf-32"}.get(encoding, encoding)
        data = (
            (declaration + document).encode(codec, "replace")
            if codec != "utf-8"
            else (declaration + document).encode("utf-8", "surrogatepass")
        )
    mutation = draw(st.integers(0, 3))
    if mutation == 1 and data:
        cut = draw(st.integers(0, len(data) - 1))
        data = data[:cut]
    elif mutation == 2:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(max_size=4)) + data[at:]
    return data


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=documents())
def test_every_document_gets_a_methodresponse(daemon: OneDaemon, body: bytes) -> None:
    poster = Poster(address_of(daemon))
    try:
        status, data = poster.post(body)
    finally:
        poster.close()
    assert status == 200
    try:
        method_response(data)
    except xmlrpc.client.Fault as fault:
        assert isinstance(fault.faultCode, int) and len(fault.faultString) < 400


# -- what one call may cost -----------------------------------------------------------------


def latencies(address: tuple[str, int], count: int) -> list[float]:
    """Seconds per one.vmget_info call, each on a new connection (as the 1.2 CLI calls)."""
    body = call_document("one.vmget_info", SESSION, 0)
    times = []
    for _ in range(count):
        start = time.perf_counter()
        connection = http.client.HTTPConnection(*address, timeout=30)
        connection.request("POST", "/RPC2", body, {"Content-Type": "text/xml"})
        response = connection.getresponse()
        data = response.read()
        connection.close()
        times.append(time.perf_counter() - start)
        assert response.status == 200 and method_response(data)[0] is True
    return times


def percentiles(times: list[float]) -> tuple[float, float]:
    ordered = sorted(times)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def test_a_costly_multicall_is_refused_without_stalling_others(daemon: OneDaemon) -> None:
    template = 'NAME = heavy\nMEMORY = 64\nDESCRIPTION = "' + "d" * 1_000_000 + '"\n'
    ok, vid = daemon.call("one.vmallocate", template)
    assert ok
    calls = [{"methodName": "one.vmget_info", "params": [SESSION, vid]}] * 1000
    body = call_document("system.multicall", calls)
    before = reset_peak(daemon)
    outcome: dict[str, Any] = {}

    def multicall() -> None:
        start = time.perf_counter()
        status, data = Poster(address_of(daemon)).post(body)
        outcome["seconds"] = time.perf_counter() - start
        outcome["answer"] = (status, data)

    worker = threading.Thread(target=multicall)
    worker.start()
    during = []
    while worker.is_alive():
        during += latencies(address_of(daemon), 1)
    worker.join()
    status, data = outcome["answer"]
    assert status == 200
    code, message = fault_of(data)
    assert code == -509 and "exceed" in message
    grown = rss_kib(daemon, "VmHWM") - before
    p50, p99 = percentiles(during)
    print(
        f"\nmulticall of 1,000 one.vmget_info of a 1 MB template ({len(body)} bytes): "
        f"fault -509 after {outcome['seconds']:.2f} s, peak RSS {grown // 1024} MiB above "
        "the RSS before; "
        f"{len(during)} calls meanwhile: p50 {p50 * 1000:.1f} ms, max {max(during) * 1000:.1f} ms"
    )
    assert grown < 200 * 1024
    assert max(during) < 1.0


def unread_bytes(port: int) -> list[int]:
    """The receive queue of each of the daemon's accepted connections on ``port``."""
    queues = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local_port = int(fields[1].split(":")[1], 16)
        if local_port == port and fields[3] == "01":  # ESTABLISHED, our side of it
            queues.append(int(fields[4].split(":")[1], 16))
    return queues


def test_unfinished_bodies_do_not_all_sit_in_memory(daemon: OneDaemon) -> None:
    """40 clients each start a 31 MB body: the daemon reads what its budget allows."""
    address = address_of(daemon)
    before = reset_peak(daemon)
    head = b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 31000000\r\n\r\n"
    part = b"<" * (8 * 1024 * 1024)
    clients = [socket.create_connection(address, timeout=120) for _ in range(40)]

    def send(sock: socket.socket) -> None:
        try:
            sock.sendall(head + part)
        except OSError:
            pass  # closed by the test's end while the daemon was not reading

    senders = [threading.Thread(target=send, args=(c,), daemon=True) for c in clients]
    for sender in senders:
        sender.start()
    try:
        # The daemon stops reading most of them: their bytes wait in its receive queues.
        waiting = lambda: sum(queue > 60_000 for queue in unread_bytes(address[1])) >= 30  # noqa: E731
        wait_for(waiting, 60, "the daemon to stop reading the bodies past its budget")
        grown = rss_kib(daemon, "VmHWM") - before
        print(
            f"\n40 unfinished bodies of 31 MB, 8 MB of each sent: peak RSS {grown // 1024} MiB "
            "above the RSS before"
        )
        assert grown < 160 * 1024  # the 128 MiB budget and change, not 320 MiB
        assert daemon.call("one.vmget_info", 0)[0] is True  # small calls are not held up
    finally:
        for sock in clients:
            sock.close()
    wait_for(lambda: not unread_bytes(address[1]), 30, "the connections to go")
    assert daemon.call("one.vmget_info", 0)[0] is True


# -- a flood of idle and slow connections ---------------------------------------------------


class SlowClients:
    """Connections that trickle a request head or body, one byte per round, from a thread."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.sockets: dict[socket.socket, str] = {}  # the socket and its kind
        self.ended: dict[socket.socket, str] = {}  # how the server ended it
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._trickle, daemon=True)

    def open(self, kind: str, source: str, start: bytes) -> None:
        sock = socket.create_connection(self.address, timeout=10, source_address=(source, 0))
        if start:
            sock.sendall(start)
        sock.setblocking(False)
        with self.lock:
            self.sockets[sock] = kind

    def _trickle(self) -> None:
        while not self.stop.wait(0.1):
            with self.lock:
                for sock, kind in list(self.sockets.items()):
                    if sock in self.ended:
                        continue
                    try:
                        data = sock.recv(4096)
                        self.ended[sock] = (
                            "408" if b" 408 " in data[:20] else ("closed" if not data else "answer")
                        )
                        continue
                    except BlockingIOError:
                        pass
                    except OSError:
                        self.ended[sock] = "reset"
                        continue
                    if kind != "idle":
                        try:
                            sock.send(b"a")
                        except BlockingIOError:
                            pass
                        except OSError:
                            self.ended[sock] = "reset"

    def open_count(self) -> int:
        with self.lock:
            return len(self.sockets) - len(self.ended)

    def outcomes(self) -> Counter[tuple[str, str]]:
        with self.lock:
            return Counter(
                (kind, self.ended.get(sock, "open")) for sock, kind in self.sockets.items()
            )

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
        for sock in self.sockets:
            sock.close()


def test_a_flood_of_idle_and_slow_connections_does_not_lock_out_a_normal_client(
    tmp_path: Path,
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    # Default connection limits (1,024, 128 per address); deadlines long enough for the
    # flood to be in place while the normal client is measured, short enough to see them act.
    one = start_daemon(tmp_path, "LIMITS = [ head_timeout = 20, body_timeout = 25 ]")
    flood = SlowClients(address_of(one))
    try:
        assert one.call("one.vmallocate", "NAME = probe\nMEMORY = 64\n") == [True, 0]
        baseline = latencies(address_of(one), 300)
        descriptors = open_descriptors(one)
        for n in range(1000):  # idle: connected, silent, from 10 addresses
            flood.open("idle", f"127.0.0.{2 + n // 100}", b"")
        for n in range(100):  # slowloris: a head one byte at a time
            flood.open(
                "head", f"127.0.0.{12 + n // 50}", b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nX-Slow: "
            )
        for _ in range(20):  # a body one byte at a time
            flood.open(
                "body",
                "127.0.0.14",
                b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n",
            )
        flood.thread.start()
        wait_for(
            lambda: open_descriptors(one) >= descriptors + 1000, 30, "the flood to be accepted"
        )
        during = latencies(address_of(one), 300)
        still_open = open_descriptors(one) - descriptors
        base50, base99 = percentiles(baseline)
        flood50, flood99 = percentiles(during)
        print(
            f"\nnormal client, one.vmget_info on a new connection each: before the flood p50 "
            f"{base50 * 1000:.2f} ms p99 {base99 * 1000:.2f} ms; during 1,000 idle + 100 slow-head "
            f"+ 20 slow-body connections p50 {flood50 * 1000:.2f} ms p99 {flood99 * 1000:.2f} ms; "
            f"{still_open} flood connections still held by the daemon at the end"
        )
        assert still_open >= 500  # the measurement happened under the flood
        assert flood99 < 1.0

        # The deadlines then end every slow connection; the daemon keeps serving.
        wait_for(lambda: flood.open_count() == 0, 60, "the server to end the slow connections")
        outcomes = flood.outcomes()
        print(f"how the flood ended: {dict(outcomes)}")
        assert outcomes[("head", "408")] + outcomes[("body", "408")] > 0
        assert not [key for key in outcomes if key[1] == "answer"]
        assert alive(one) and latencies(address_of(one), 5)
    finally:
        flood.close()
        one.stop()
