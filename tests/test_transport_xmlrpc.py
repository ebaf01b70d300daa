"""XML-RPC on the transport: types, faults (xmlrpc-c's codes and wording), introspection,
multicall, hostile documents, and the fast parser's agreement with the full one.

The server runs in the (pytest-twisted) reactor on a real TCP port; clients
(xmlrpc.client, http.client, raw sockets) run in threads.
"""

from __future__ import annotations

import http.client
import logging
import socket
import xmlrpc.client
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import reactor, task
from twisted.internet.defer import fail
from twisted.internet.threads import deferToThread

from nebula_xr.transport.xmlrpc import (
    MULTICALL_LIMIT,
    Fault,
    MethodRegistry,
    _parse_fast,
    _parse_full,
    make_factory,
    parse_call,
)

INTERNAL = (
    "Unexpected error executing code for particular method, detected by Xmlrpc-c method "
    "registry code.  Method did not fail; rather, it did not complete at all."
)


#: Strings a method returns, by name, and what a client receives.
ILLEGAL_TEXTS = {
    "controls": "a\x00b\x1fc\x0bd\r\ne\tf",
    "noncharacters": "a\ufffeb\uffffc é",
    "surrogate": "a\ud800b\x01c",
}
RECEIVED_TEXTS = {
    "controls": "a\ufffdb\ufffdc\ufffdd\r\ne\tf",
    "noncharacters": "a\ufffdb\ufffdc é",
    "surrogate": "a\ufffdb\ufffdc",
}


def _raise(error: Exception) -> Callable[..., Any]:
    def handler(*_args: Any) -> Any:
        raise error

    return handler


def build_registry() -> MethodRegistry:
    registry = MethodRegistry()
    registry.register(
        "one.vmget_info",
        lambda _session, vid: [True, f"VID : {vid}"],
        "A:si",
        "Returns virtual machine information",
    )
    for letter in "sibdASn":
        registry.register(f"echo.{letter}", lambda value: value, f"{letter}:{letter}")
    registry.register("echo.sii", lambda s, a, b: [s, a, b], "A:sii")
    registry.register(
        "later",
        lambda text: task.deferLater(reactor, 0.01, lambda: [True, text]),
        "A:s",
    )
    registry.register("text.illegal", lambda text: ILLEGAL_TEXTS[text], "s:s")
    registry.register("fail.raise", _raise(RuntimeError("secret detail")), "A:")
    registry.register("fail.fault", _raise(Fault(42, "custom & <fault>")), "A:")
    registry.register("fail.deferred", lambda: fail(RuntimeError("secret detail")), "A:")
    registry.register("fail.deferred_fault", lambda: fail(Fault(7, "later fault")), "A:")
    registry.register("fail.unsendable", lambda: [True, object()], "A:")
    registry.register("fail.bigint", lambda: [True, 2**40], "A:")
    return registry


@pytest.fixture(scope="module")
def address() -> Iterator[tuple[str, int]]:
    port = reactor.listenTCP(0, make_factory(build_registry()), interface="127.0.0.1")  # type: ignore[attr-defined]
    yield ("127.0.0.1", port.getHost().port)
    port.stopListening()


def proxy(address: tuple[str, int]) -> xmlrpc.client.ServerProxy:
    return xmlrpc.client.ServerProxy(
        f"http://{address[0]}:{address[1]}", allow_none=True, use_builtin_types=False
    )


async def call(address: tuple[str, int], method: str, *args: Any) -> Any:
    """Call ``method`` with Python's xmlrpc.client, in a thread."""

    def run() -> Any:
        with proxy(address) as server:
            return getattr(server, method)(*args)

    return await deferToThread(run)


async def fault_of(address: tuple[str, int], method: str, *args: Any) -> tuple[int, str]:
    try:
        result = await call(address, method, *args)
    except xmlrpc.client.Fault as fault:
        return fault.faultCode, fault.faultString
    raise AssertionError(f"{method} answered {result!r}, not a fault")


def post_blocking(address: tuple[str, int], body: bytes) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.request("POST", "/RPC2", body, {"Content-Type": "text/xml"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


async def post(address: tuple[str, int], body: bytes) -> Any:
    """POST a raw document; the decoded answer (a Fault instance for a fault)."""
    status, data = await deferToThread(post_blocking, address, body)
    assert status == 200
    try:
        return xmlrpc.client.loads(data, use_builtin_types=True)[0][0]
    except xmlrpc.client.Fault as fault:
        return fault


def document(method: str, *values: str, prolog: str = "<?xml version='1.0'?>") -> bytes:
    params = "".join(f"<param>{value}</param>" for value in values)
    return (
        f"{prolog}<methodCall><methodName>{method}</methodName>"
        f"<params>{params}</params></methodCall>"
    ).encode()


# -- types ------------------------------------------------------------------------------

VALUES: list[tuple[str, Any]] = [
    ("echo.s", ""),
    ("echo.s", "plain"),
    ("echo.s", "héllo ☃ 𝄞 漢字"),
    ("echo.s", "& < > ]]> \" ' \t\n"),
    ("echo.i", 0),
    ("echo.i", 2**31 - 1),
    ("echo.i", -(2**31)),
    ("echo.b", True),
    ("echo.b", False),
    ("echo.d", 1.5),
    ("echo.d", -0.0),
    ("echo.d", 1e300),
    ("echo.A", []),
    ("echo.A", [1, "a", [True, 2.5, [[]]], {"k": None}]),
    ("echo.S", {}),
    ("echo.S", {"a": 1, "nested": {"b": [1, 2]}, "": "empty name", "&<>": "x"}),
    ("echo.n", None),
]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(("method", "value"), VALUES)
async def test_round_trip_with_python_client(
    address: tuple[str, int], method: str, value: Any
) -> None:
    result = await call(address, method, value)
    assert result == value and type(result) is type(value)


@pytest_twisted.ensureDeferred
async def test_base64_and_datetime_round_trip(address: tuple[str, int]) -> None:
    binary = xmlrpc.client.Binary(bytes(range(256)))
    when = xmlrpc.client.DateTime("20090101T12:34:56")
    result = await call(address, "echo.A", [binary, when, {"in": [binary]}])
    assert result[0].data == binary.data and result[2]["in"][0].data == binary.data
    assert isinstance(result[1], xmlrpc.client.DateTime) and result[1].value == when.value


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("text", ILLEGAL_TEXTS)
async def test_answers_are_always_well_formed(address: tuple[str, int], text: str) -> None:
    # CR survives as a character reference; what XML cannot carry becomes U+FFFD.
    assert await call(address, "text.illegal", text) == RECEIVED_TEXTS[text]


@pytest_twisted.ensureDeferred
async def test_extra_parameters_are_ignored(address: tuple[str, int]) -> None:
    assert await call(address, "echo.sii", "s", 1, 2, "extra", [3]) == ["s", 1, 2]


@pytest_twisted.ensureDeferred
async def test_deferred_results(address: tuple[str, int]) -> None:
    assert await call(address, "later", "wait") == [True, "wait"]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("<i4>5</i4>", 5),
        ("<int>-7</int>", -7),
        ("<int> +8\n</int>", 8),
        ("<i4>007</i4>", 7),
        ("bare text", "bare text"),
        ("", ""),
        ("  spaced  ", "  spaced  "),
        (" <string>typed</string>\n ", "typed"),
        ("<string/>", ""),
        ("<string><![CDATA[<raw> & stuff]]></string>", "<raw> & stuff"),
        ("<string>a<!-- comment -->b</string>", "ab"),
        ("<string>&amp;&lt;&gt;&quot;&apos;&#233;&#x1F600;&#13;</string>", "&<>\"'é😀\r"),
        ("<string>line\r\nend\rx</string>", "line\nend\nx"),  # XML end-of-line handling
        ("<boolean>1</boolean>", True),
        ("<boolean>0</boolean>", False),
        ("<double>-1.5e3</double>", -1500.0),
        ("<base64>aGVs\nbG8=</base64>", b"hello"),
        ("<nil/>", None),
        ("<array><data/></array>", []),
        ("<struct/>", {}),
        (
            "<struct><member><value><i4>1</i4></value><name>a</name></member>"
            "<member><name>a</name><value>2</value></member></struct>",
            {"a": "2"},
        ),
    ],
)
async def test_value_encodings(address: tuple[str, int], value: str, expected: Any) -> None:
    echoed = await post(
        address,
        document("echo.A", f"<value><array><data><value>{value}</value></data></array></value>"),
    )
    assert echoed == [expected]


@pytest_twisted.ensureDeferred
async def test_ruby_and_other_encodings(address: tuple[str, int]) -> None:
    ruby = (
        b'<?xml version="1.0" ?><methodCall><methodName>one.vmget_info</methodName>'
        b"<params><param><value><string>sessionID</string></value></param>"
        b"<param><value><i4>5</i4></value></param></params></methodCall>\n"
    )
    assert await post(address, ruby) == [True, "VID : 5"]
    latin1 = document(
        "echo.s", "<value>caf\xe9</value>", prolog='<?xml version="1.0" encoding="ISO-8859-1"?>'
    )
    assert await post(address, latin1.decode().encode("latin-1")) == "café"
    utf16 = document("echo.s", "<value>ü</value>", prolog='<?xml version="1.0" encoding="UTF-16"?>')
    assert await post(address, utf16.decode().encode("utf-16")) == "ü"
    no_params = b"<methodCall><methodName>system.listMethods</methodName></methodCall>"
    assert "echo.s" in await post(address, no_params)


# -- faults -----------------------------------------------------------------------------

TYPE_FAULTS = [
    ("echo.s", 1, "Parameter that is supposed to be a string is not"),
    ("echo.i", "1", "Parameter that is supposed to be integer is not"),
    ("echo.i", True, "Parameter that is supposed to be integer is not"),
    ("echo.b", 1, "Parameter that is supposed to be boolean is not"),
    ("echo.d", 1, "Parameter that is supposed to be floating point number is not"),
    ("echo.A", {}, "Parameter that is supposed to be an array is not"),
    ("echo.S", [], "Parameter that is supposed to be a structure is not"),
    ("echo.n", 0, "Parameter that is supposed to be nil is not"),
]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(("method", "value", "message"), TYPE_FAULTS)
async def test_wrong_parameter_type(
    address: tuple[str, int], method: str, value: Any, message: str
) -> None:
    assert await fault_of(address, method, value) == (-501, message)


@pytest_twisted.ensureDeferred
async def test_parameter_count_and_method_faults(address: tuple[str, int]) -> None:
    assert await fault_of(address, "echo.sii", "s", 1) == (-501, "Not enough parameters")
    assert await fault_of(address, "one.vmget_info") == (-501, "Not enough parameters")
    # Checked in order, as xmlrpc-c's getters were: a wrong type before a missing one.
    assert await fault_of(address, "echo.sii", "s", "1") == (
        -501,
        "Parameter that is supposed to be integer is not",
    )
    assert await fault_of(address, "one.nosuchmethod", "s") == (
        -506,
        "Method 'one.nosuchmethod' not defined",
    )


@pytest_twisted.ensureDeferred
async def test_handler_failures(address: tuple[str, int], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="nebula_xr.transport.xmlrpc"):
        for method in ("fail.raise", "fail.deferred", "fail.unsendable", "fail.bigint"):
            assert await fault_of(address, method) == (-500, INTERNAL)
    assert "secret detail" in caplog.text  # logged with the traceback, never sent
    assert await fault_of(address, "fail.fault") == (42, "custom & <fault>")
    assert await fault_of(address, "fail.deferred_fault") == (7, "later fault")
    assert await call(address, "echo.s", "still up") == "still up"


PARSE_FAULTS = [
    (b"", "Call is not valid XML"),
    (b"garbage", "Call is not valid XML"),
    (b"<methodCall><methodName>x</methodName>", "Call is not valid XML"),
    (b"<methodResponse/>", "should be a <methodCall> element"),
    (document("echo.i", "<value><i4>2147483648</i4></value>"), "above the range"),
    (document("echo.i", "<value><int>-2147483649</int></value>"), "below the range"),
    (document("echo.i", "<value><int>1.5</int></value>"), "not an integer"),
    (document("echo.i", "<value><int></int></value>"), "not an integer"),
    (document("echo.b", "<value><boolean>true</boolean></value>"), "either '0' or '1'"),
    (document("echo.d", "<value><double>nan</double></value>"), "floating point"),
    (document("echo.A", "<value><base64>!!!</base64></value>"), "base64"),
    (document("echo.A", "<value><dateTime.iso8601>x</dateTime.iso8601></value>"), "datetime"),
    (document("echo.s", "<value><foo/></value>"), "Unknown value type"),
    (document("echo.s", "<value><i8>1</i8></value>"), "Unknown value type"),
    (document("echo.s", "<value><string>a</string><string>b</string></value>"), "more than one"),
    (document("echo.s", "<value>text<string>b</string></value>"), "both text"),
    (document("echo.s", "<value><nil>x</nil></value>"), "text content"),
    (document("echo.A", "<value><array/></value>"), "no <data>"),
    (
        document("echo.S", "<value><struct><member><name>a</name></member></struct></value>"),
        "<member>",
    ),
    (document("echo.s", "<value>a</value><value>b</value>"), "more than one"),
    (document("echo.s", "junk<value>a</value>"), "text content"),
    (document("echo.s", ""), "no <value>"),
    (b"<methodCall><params/></methodCall>", "child <methodName>"),
    (
        b"<methodCall><methodName>a</methodName><methodName>b</methodName></methodCall>",
        "more than one",
    ),
    (b"<methodCall><methodName>a<b/></methodName></methodCall>", "makes no sense"),
    (b"<methodCall><methodName>x</methodName><bogus/></methodCall>", "makes no sense"),
    (document("echo.A", "<value><array><data>" * 70 + "</data></array></value>" * 70), "Nesting"),
    (document("echo.s", "<value>&undefined;</value>"), "Call is not valid XML"),
    (
        b"<?xml version='1.0'?>\n<!DOCTYPE x>" + document("echo.s", "<value>a</value>", prolog=""),
        "document type",
    ),
]


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize(("body", "detail"), PARSE_FAULTS)
async def test_malformed_calls(address: tuple[str, int], body: bytes, detail: str) -> None:
    fault = await post(address, body)
    assert isinstance(fault, xmlrpc.client.Fault), fault
    assert fault.faultCode == -503
    assert fault.faultString.startswith("Call XML not a proper XML-RPC call.  ")
    assert detail in fault.faultString


@pytest_twisted.ensureDeferred
async def test_entity_attacks_are_refused(address: tuple[str, int]) -> None:
    laughs = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    billion = f'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY l0 "lol">{laughs}]>'
    xxe = '<?xml version="1.0"?><!DOCTYPE m [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
    for prolog, reference in ((billion, "&l9;"), (xxe, "&e;")):
        body = document("echo.s", f"<value>{reference}</value>", prolog=prolog)
        fault = await post(address, body)
        assert isinstance(fault, xmlrpc.client.Fault) and fault.faultCode == -503
        assert "document type declaration is not allowed" in fault.faultString


@pytest_twisted.ensureDeferred
async def test_large_calls_are_parsed_in_slices(address: tuple[str, int]) -> None:
    values = list(range(30000))
    assert await call(address, "echo.A", values) == values
    broken = xmlrpc.client.dumps((values,), "echo.A").encode()[:-20]
    fault = await post(address, broken)
    assert isinstance(fault, xmlrpc.client.Fault) and fault.faultCode == -503


# -- introspection and multicall --------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_introspection(address: tuple[str, int]) -> None:
    names = await call(address, "system.listMethods")
    assert names[:8] == [
        "system.listMethods",
        "system.methodExist",
        "system.methodHelp",
        "system.methodSignature",
        "system.multicall",
        "system.shutdown",
        "system.capabilities",
        "system.getCapabilities",
    ]
    assert set(build_registry().names()) == set(names)
    assert await call(address, "system.methodSignature", "one.vmget_info") == [
        ["array", "string", "int"]
    ]
    assert await call(address, "system.methodSignature", "system.listMethods") == [["array"]]
    assert await call(address, "system.methodSignature", "echo.n") == [["nil", "nil"]]
    help_text = await call(address, "system.methodHelp", "one.vmget_info")
    assert help_text == "Returns virtual machine information"
    assert await call(address, "system.methodHelp", "echo.s") == (
        "No help is available for this method"
    )
    for method in ("system.methodSignature", "system.methodHelp"):
        assert await fault_of(address, method, "nope") == (-506, "Method 'nope' does not exist")
        long_name = "9" * 5000  # quoted back cut short, not echoed whole
        shown = "9" * 100 + "..."
        assert await fault_of(address, method, long_name) == (
            -506,
            f"Method '{shown}' does not exist",
        )
    assert await fault_of(address, "system.methodHelp") == (-501, "Not enough parameters")


@pytest_twisted.ensureDeferred
async def test_multicall(address: tuple[str, int]) -> None:
    calls = [
        {"methodName": "one.vmget_info", "params": ["s", 3]},
        {"methodName": "later", "params": ["async"]},
        {"methodName": "nope", "params": []},
        {"methodName": "echo.i", "params": ["x"]},
        {"methodName": "system.multicall", "params": [[]]},
        "not a struct",
        {"methodName": "echo.s"},
        {"methodName": "fail.raise", "params": []},
        {"methodName": "fail.deferred_fault", "params": []},
        {"methodName": "system.listMethods", "params": []},
    ]
    results = await call(address, "system.multicall", calls)
    assert results[0] == [[True, "VID : 3"]]
    assert results[1] == [[True, "async"]]
    assert results[2] == {"faultCode": -506, "faultString": "Method 'nope' not defined"}
    assert results[3] == {
        "faultCode": -501,
        "faultString": "Parameter that is supposed to be integer is not",
    }
    assert results[4] == {"faultCode": -507, "faultString": "Recursive system.multicall forbidden"}
    assert results[5]["faultCode"] == -501 and "type 4" in results[5]["faultString"]
    assert results[6]["faultCode"] == -501 and "params" in results[6]["faultString"]
    assert results[7] == {"faultCode": -500, "faultString": INTERNAL}
    assert results[8] == {"faultCode": 7, "faultString": "later fault"}
    assert "system.multicall" in results[9][0]
    assert len(results) == len(calls)
    assert await call(address, "system.multicall", []) == []
    too_many = [{"methodName": "echo.s", "params": ["x"]}] * (MULTICALL_LIMIT + 1)
    code, _ = await fault_of(address, "system.multicall", too_many)
    assert code == -509


def test_registration_is_checked() -> None:
    registry = MethodRegistry()
    registry.register("a", lambda: None, "n:")
    for name, signature in (("a", "n:"), ("b", "n"), ("c", "x:s"), ("d", "AA:s"), ("e", "A:sq")):
        with pytest.raises(ValueError):
            registry.register(name, lambda: None, signature)


# -- the fast parser agrees with the full one ---------------------------------------------


def test_common_clients_take_the_fast_path() -> None:
    python = xmlrpc.client.dumps(("sessionID", 5, True, "é"), "one.vmget_info").encode()
    ruby = (
        b'<?xml version="1.0" ?><methodCall><methodName>one.vmget_info</methodName><params>'
        b"<param><value><string>sessionID</string></value></param><param><value><i4>5</i4>"
        b"</value></param></params></methodCall>\n"
    )
    assert _parse_fast(python) == ("one.vmget_info", ["sessionID", 5, True, "é"])
    assert _parse_fast(ruby) == ("one.vmget_info", ["sessionID", 5])


def test_a_repeated_call_is_parsed_once_and_each_caller_gets_its_own_params(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from nebula_xr.transport import xmlrpc as module

    parsed: list[bytes] = []

    def counting(data: bytes) -> Any:
        parsed.append(data)
        return _parse_fast(data)

    monkeypatch.setattr(module, "_parse_fast", counting)
    monkeypatch.setattr(module, "_KNOWN_CALLS", {})
    poll = xmlrpc.client.dumps(("sessionID", 7), "one.hostinfo").encode()
    first = parse_call(poll)
    first[1].append("changed by its handler")
    assert parse_call(poll) == parse_call(poll) == ("one.hostinfo", ["sessionID", 7])
    assert parsed == [poll]
    # Another document, even one that differs only in white space, is parsed itself.
    assert parse_call(poll.replace(b"<params>", b"<params> ")) == ("one.hostinfo", ["sessionID", 7])
    assert len(parsed) == 2
    # Documents the fast parser leaves to the full one are not remembered, faults included.
    bad = b"<methodCall><methodName>x</methodName><params><param><value><i4>1"
    for _ in range(2):
        with pytest.raises(Fault):
            parse_call(bad)
    assert module._KNOWN_CALLS.keys() == {poll, poll.replace(b"<params>", b"<params> ")}


def typed(call: tuple[str, list[Any]]) -> tuple[str, list[tuple[type, Any]]]:
    return call[0], [(type(value), value) for value in call[1]]


# Byte fragments of character data, well-formed or not.
RAW_TEXT = st.lists(
    st.sampled_from(
        [b"a", b"Z", b"09", b" ", b"\t", b"\n", b"\r", b"&", b"&amp;", b"&#65;", b"<", b">"]
        + [
            b"]",
            b"]]>",
            b"\xc3\xa9",
            b"\xff",
            b"\xef\xbf\xbe",
            b"\x01",
            b"\x7f",
            b"\xf0\x9f\x98\x80",
        ]
    ),
    max_size=6,
).map(b"".join)
RAW_VALUE = st.one_of(
    RAW_TEXT,
    st.tuples(st.sampled_from([b"i4", b"int", b"string", b"boolean", b"double"]), RAW_TEXT).map(
        lambda pair: b"<%s>%s</%s>" % (pair[0], pair[1], pair[0])
    ),
    st.sampled_from([b"<i4>2147483647</i4>", b"<int>-2147483649</int>", b"<boolean>1</boolean>"]),
)
SPACE = st.sampled_from([b"", b"\n", b" \r\n\t"])


@settings(max_examples=300, deadline=None)
@given(
    prolog=st.sampled_from(
        [b"", b"<?xml version='1.0'?>", b'<?xml version="1.0" encoding="UTF-8" ?>\n', b" "]
    ),
    name=st.sampled_from([b"one.vmget_info", b"a-b", b"x y", b""]),
    values=st.lists(st.tuples(SPACE, RAW_VALUE), max_size=4),
    tail=SPACE,
)
def test_fast_parser_agrees_with_full_parser(
    prolog: bytes, name: bytes, values: list[tuple[bytes, bytes]], tail: bytes
) -> None:
    params = b"".join(b"%s<param><value>%s</value></param>" % pair for pair in values)
    body = prolog + b"<methodCall><methodName>%s</methodName><params>%s%s</params></methodCall>" % (
        name,
        params,
        tail,
    )
    fast = _parse_fast(body)
    try:
        full: Any = _parse_full(body)
    except Fault as fault:
        full = fault
    if fast is not None:
        assert not isinstance(full, Fault), (body, full.message)
        assert typed(fast) == typed(full)
    if isinstance(full, Fault):
        with pytest.raises(Fault) as raised:
            parse_call(body)
        assert raised.value.message == full.message


# -- hostile input over the network -------------------------------------------------------

XML_TAGS = [
    "methodCall", "methodName", "params", "param", "value", "i4", "int", "boolean", "string",
    "double", "base64", "dateTime.iso8601", "array", "data", "struct", "member", "name", "nil",
    "x",
]  # fmt: skip
XML_TEXT = st.text(max_size=10).map(
    lambda text: text.replace("&", "&amp;").replace("<", "&lt;")
) | st.sampled_from(["1", "0", "-5", "2147483648", "&#0;", "&bogus;", "]]>", "<![CDATA[x]]>"])
XML_ELEMENT = st.recursive(
    XML_TEXT,
    lambda children: st.builds(
        lambda tag, kids: f"<{tag}>{''.join(kids)}</{tag}>",
        st.sampled_from(XML_TAGS),
        st.lists(children, max_size=3),
    ),
    max_leaves=25,
)
XML_CALL = st.builds(
    lambda method, params: (
        f"<methodCall><methodName>{method}</methodName>"
        f"<params>{''.join(f'<param>{p}</param>' for p in params)}</params></methodCall>"
    ),
    st.sampled_from(["echo.A", "echo.s", "echo.sii", "system.multicall", "nope"]),
    st.lists(
        XML_ELEMENT.map(lambda element: f"<value>{element}</value>") | XML_ELEMENT, max_size=3
    ),
)
HOSTILE_BODIES = st.one_of(
    st.binary(max_size=300),
    XML_ELEMENT.map(str.encode),
    XML_CALL.map(str.encode),
    XML_CALL.map(lambda doc: doc.encode("utf-16")),
)


def check_hostile_bodies(address: tuple[str, int]) -> None:
    connection = http.client.HTTPConnection(*address, timeout=10)

    @settings(
        max_examples=200,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(body=HOSTILE_BODIES)
    def check(body: bytes) -> None:
        connection.request("POST", "/RPC2", body, {"Content-Type": "text/xml"})
        response = connection.getresponse()
        data = response.read()
        assert response.status == 200
        try:
            xmlrpc.client.loads(data)  # a well-formed answer, whatever was asked
        except xmlrpc.client.Fault:
            pass

    try:
        check()
    finally:
        connection.close()


def check_hostile_streams(address: tuple[str, int]) -> None:
    @settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        data=st.binary(max_size=400)
        | st.builds(
            lambda head, tail: head + tail,
            st.sampled_from([b"POST /RPC2 HTTP/1.1\r\n", b"GET / HTTP/1.0\r\n", b""]),
            st.binary(max_size=200),
        )
    )
    def check(data: bytes) -> None:
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        # Either an HTTP answer (then the server closed) or a silent close.
        assert answer == b"" or answer.startswith(b"HTTP/1.1 ")
        assert post_blocking(address, document("echo.s", "<value>up</value>"))[0] == 200

    check()


@pytest_twisted.ensureDeferred
async def test_hostile_bodies_always_get_a_well_formed_answer(address: tuple[str, int]) -> None:
    await deferToThread(check_hostile_bodies, address)


@pytest_twisted.ensureDeferred
async def test_hostile_byte_streams_never_break_the_server(address: tuple[str, int]) -> None:
    await deferToThread(check_hostile_streams, address)
    assert await call(address, "echo.s", "alive") == "alive"


@pytest_twisted.ensureDeferred
async def test_unicode_round_trips(address: tuple[str, int]) -> None:
    def check_all() -> None:
        with proxy(address) as server:

            @settings(max_examples=100, deadline=None)
            @given(
                text=st.text(
                    st.characters(
                        exclude_categories=("Cs",),
                        exclude_characters="\r\ufffe\uffff",
                        min_codepoint=0x09,
                    ).filter(lambda c: c in "\t\n" or ord(c) >= 0x20)
                )
            )
            def check(text: str) -> None:
                assert server.echo.s(text) == text

            check()

    await deferToThread(check_all)
