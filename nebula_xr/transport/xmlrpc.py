"""XML-RPC over :mod:`nebula_xr.transport.http`, behaving like the xmlrpc-c server of oned.

Faults use xmlrpc-c's codes and wording (``src/cpp/param_list.cpp``,
``src/registry.c``, ``src/system_method.c``, ``src/xmlrpc_parse.c``):

* -501 ``Not enough parameters`` / ``Parameter that is supposed to be integer is not``
  (and the string, boolean, floating point number, array, structure, nil variants);
* -503 ``Call XML not a proper XML-RPC call.  <detail>``: the body is not well-formed
  XML, is not a ``methodCall``, or holds an invalid value (e.g. an int outside 32 bits);
* -506 ``Method '<name>' not defined`` (and ``Method '<name>' does not exist`` from the
  introspection methods);
* -507 ``Recursive system.multicall forbidden``;
* -509 (xmlrpc-c's "limit exceeded") for a system.multicall of more calls than
  :attr:`CallLimits.multicall_calls`, or an answer longer than
  :attr:`CallLimits.reply_bytes`: limits xmlrpc-c does not have;
* -500 for a handler that raised (or returned something XML-RPC cannot carry): a
  generic message, the traceback goes to the ``nebula_xr.transport.xmlrpc`` logger.
  Nothing a request can contain ends in anything but a fault (never an HTTP 500).

A system.multicall runs its calls and writes their answers a slice at a time
(:mod:`nebula_xr.transport.slices`), each answer serialised as soon as it is
known, and stops at the reply cap: a multicall costs the reactor no long stretch and
holds no more than the cap in memory.

Requests are parsed by a regular-expression fast path for the flat calls every client
sends (scalar parameters, no entities, CDATA or comments); anything it does not fully
recognise goes to a complete expat-based parser, which refuses DTDs (so no entity
expansion and no external entities). Both paths share the conversions, and the fast
path only ever accepts what the full parser would accept identically.

Strings in answers are escaped (``&``, ``<``, ``>``, and CR as ``&#13;`` so it
survives XML line-end normalisation). Characters XML 1.0 cannot carry at all (most
C0 controls, lone surrogates, U+FFFE/U+FFFF) are replaced by U+FFFD, so an answer is
always a well-formed document.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from xml.parsers import expat
from xmlrpc.client import DateTime

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from nebula_xr.transport.http import LOCAL, CallContext, HTTPServerFactory, Limits
from nebula_xr.transport.slices import coiterate

_log = logging.getLogger(__name__)

INTERNAL_ERROR = -500
TYPE_ERROR = -501
PARSE_ERROR = -503
NO_SUCH_METHOD_ERROR = -506
REQUEST_REFUSED_ERROR = -507
LIMIT_EXCEEDED_ERROR = -509

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_MAX_DEPTH = 128  # open elements; xmlrpc-c allows 64 nested values, each is two elements
# Parsing costs up to ~0.3 s per MiB: bodies larger than this are parsed in slices of
# _PARSE_SLICE bytes, each taking at most a few milliseconds of the reactor's time.
_INLINE_PARSE = 64 * 1024
_PARSE_SLICE = 32 * 1024
_WS = " \t\r\n"


@dataclass(frozen=True)
class CallLimits:
    """What one request may cost."""

    multicall_calls: int = 1000  # calls in one system.multicall
    # The serialised answer: room for a pool listing or a VM with a template near the body cap.
    reply_bytes: int = 64 * 1024 * 1024


#: The default number of calls in one system.multicall.
MULTICALL_LIMIT = CallLimits().multicall_calls


class Fault(Exception):
    """An XML-RPC fault; a handler may raise it to answer with that fault."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


def _parse_fault(detail: str) -> Fault:
    return Fault(PARSE_ERROR, "Call XML not a proper XML-RPC call.  " + detail)


# -- value conversions (shared by both parsers) -------------------------------------------

_INT_TEXT = re.compile(r"[ \t\r\n]*([+-]?)0*([0-9]+)[ \t\r\n]*\Z")
_DOUBLE_TEXT = re.compile(
    r"[ \t\r\n]*([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)[ \t\r\n]*\Z"
)
_DATETIME_TEXT = re.compile(r"[ \t\r\n]*([0-9]{4}-?[0-9]{2}-?[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})")


def _to_int(text: str) -> int:
    match = _INT_TEXT.match(text)
    if match is None:
        raise _parse_fault(f"<int> value '{_clip(text)}' is not an integer")
    sign, digits = match.groups()
    if len(digits) > 20:  # far out of range; converting it could cost quadratic time
        side = "below" if sign == "-" else "above"
        raise _parse_fault(
            f"<int> value of {len(digits)} digits is {side} the range allowed by XML-RPC"
        )
    value = int(sign + digits)
    if value < _INT_MIN:
        raise _parse_fault(
            f"<int> value {value} is below the range allowed by XML-RPC (minimum is {_INT_MIN})"
        )
    if value > _INT_MAX:
        raise _parse_fault(
            f"<int> value {value} is above the range allowed by XML-RPC (maximum is {_INT_MAX})"
        )
    return value


def _clip(text: str, size: int = 40) -> str:
    """``text`` cut short enough to quote in a fault."""
    return text if len(text) <= size else text[:size] + "..."


def _to_bool(text: str) -> bool:
    stripped = text.strip(_WS)
    if stripped not in ("0", "1"):
        raise _parse_fault(
            "<boolean> XML element content must be either '0' or '1' according to XML-RPC.  "
            f"This one has '{_clip(text)}'"
        )
    return stripped == "1"


def _to_double(text: str) -> float:
    match = _DOUBLE_TEXT.match(text)
    if match is None:
        raise _parse_fault(
            f"<double> element value '{_clip(text)}' is not a valid floating point number"
        )
    return float(match.group(1))


def _to_base64(text: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise _parse_fault("<base64> element content is not valid base64") from None


def _to_datetime(text: str) -> DateTime:
    if _DATETIME_TEXT.match(text) is None:
        raise _parse_fault(f"<dateTime.iso8601> value '{_clip(text)}' is not a valid datetime")
    return DateTime(text.strip(_WS))


_SCALARS: dict[str, Callable[[str], Any]] = {
    "i4": _to_int,
    "int": _to_int,
    "boolean": _to_bool,
    "string": str,
    "double": _to_double,
    "base64": _to_base64,
    "dateTime.iso8601": _to_datetime,
}


# -- fast path --------------------------------------------------------------------------

_XWS = rb"[ \t\r\n]*"
# Character data without markup, entity or character references, CR (which XML would
# normalise) or characters XML forbids.
_TEXT = rb"[^<&\r\x00-\x08\x0b\x0c\x0e-\x1f]*"
_FAST_HEAD = re.compile(
    rb"(?:<\?xml[ \t\r\n]+version=(?:\"1\.0\"|'1\.0')"
    rb"(?:[ \t\r\n]+encoding=(?:\"(?i:utf-8)\"|'(?i:utf-8)'))?[ \t\r\n]*\?>)?"
    + _XWS
    + rb"<methodCall>"
    + _XWS
    + rb"<methodName>([A-Za-z0-9_.:/\-]+)</methodName>"
    + _XWS
    + rb"<params>"
)
_FAST_PARAM = re.compile(
    _XWS
    + rb"<param>"
    + _XWS
    + rb"<value>(?:<(i4|int|boolean|string)>("
    + _TEXT
    + rb")</\1>|("
    + _TEXT
    + rb"))</value>"
    + _XWS
    + rb"</param>"
)
_FAST_TAIL = re.compile(_XWS + rb"</params>" + _XWS + rb"</methodCall>" + _XWS + rb"\Z")
_FAST_INT = re.compile(rb"[+-]?[0-9]{1,10}")
_NONCHARACTERS = (b"\xef\xbf\xbe", b"\xef\xbf\xbf")  # U+FFFE, U+FFFF in UTF-8


def _fast_text(raw: bytes) -> str | None:
    if raw.isascii():
        return raw.decode("ascii")
    if _NONCHARACTERS[0] in raw or _NONCHARACTERS[1] in raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _parse_fast(data: bytes) -> tuple[str, list[Any]] | None:
    """The call, if ``data`` is a flat call the full parser would read identically."""
    match = _FAST_HEAD.match(data)
    if match is None or b"]]>" in data:
        return None
    params: list[Any] = []
    pos = match.end()
    param_match = _FAST_PARAM.match
    while (param := param_match(data, pos)) is not None:
        pos = param.end()
        tag, typed, bare = param.groups()
        if tag is None or tag == b"string":
            text = _fast_text(typed if bare is None else bare)
            if text is None:
                return None
            params.append(text)
        elif tag == b"boolean":
            if typed == b"1":
                params.append(True)
            elif typed == b"0":
                params.append(False)
            else:
                return None
        else:
            if not _FAST_INT.fullmatch(typed):
                return None
            value = int(typed)
            if not _INT_MIN <= value <= _INT_MAX:
                return None
            params.append(value)
    if _FAST_TAIL.match(data, pos) is None:
        return None
    return match.group(1).decode("ascii"), params


# -- full parser --------------------------------------------------------------------------

_MISSING: Any = object()
_CHILDREN: dict[str, frozenset[str]] = {
    "": frozenset({"methodCall"}),
    "methodCall": frozenset({"methodName", "params"}),
    "params": frozenset({"param"}),
    "param": frozenset({"value"}),
    "value": frozenset(_SCALARS) | {"array", "struct", "nil"},
    "array": frozenset({"data"}),
    "data": frozenset({"value"}),
    "struct": frozenset({"member"}),
    "member": frozenset({"name", "value"}),
}
# Elements whose character data is their content; anywhere else it must be white space.
_TEXTUAL = frozenset(_SCALARS) | {"methodName", "name", "value"}


class _CallBuilder:
    """expat callbacks building the call in one pass, validating as they go.

    Each open element is a frame ``[tag, text parts, slot]``; a slot collects what the
    element's children deliver (the typed value of a <value>, the list of a <data>, ...).
    """

    def __init__(self) -> None:
        self.stack: list[list[Any]] = []
        self.call: tuple[str, list[Any]] | None = None

    def start(self, tag: str, _attributes: dict[str, str]) -> None:
        stack = self.stack
        parent = stack[-1][0] if stack else ""
        if tag not in _CHILDREN.get(parent, ()):
            if not parent:
                raise _parse_fault(
                    "XML-RPC call should be a <methodCall> element.  "
                    f"Instead, we have a <{tag}> element."
                )
            if parent == "value":
                raise _parse_fault(f"Unknown value type -- XML element is named <{tag}>")
            raise _parse_fault(f"<{parent}> element has a <{tag}> child, which makes no sense")
        if len(stack) >= _MAX_DEPTH:
            raise _parse_fault("Nesting too deep")
        if tag in ("methodCall", "member"):
            slot: Any = [_MISSING, _MISSING]
        elif tag in ("params", "data"):
            slot = []
        elif tag == "struct":
            slot = {}
        else:
            slot = _MISSING
        stack.append([tag, [], slot])

    def text(self, data: str) -> None:
        if self.stack:
            self.stack[-1][1].append(data)

    def end(self, _tag: str) -> None:
        tag, parts, slot = self.stack.pop()
        text = "".join(parts)
        if tag not in _TEXTUAL and text.strip(_WS):
            raise _parse_fault(f"<{tag}> element has text content, which makes no sense")
        if tag == "value":
            if slot is _MISSING:
                value: Any = text
            elif text.strip(_WS):
                raise _parse_fault("<value> element has both text and a child element")
            else:
                value = slot
        elif tag in _SCALARS:
            value = _SCALARS[tag](text)
        elif tag == "nil":
            value = None
        elif tag == "array":
            if slot is _MISSING:
                raise _parse_fault("<array> element has no <data> child")
            value = slot
        elif tag == "member":
            if slot[0] is _MISSING or slot[1] is _MISSING:
                raise _parse_fault("<member> element needs one <name> and one <value>")
            value = slot
        elif tag == "param":
            if slot is _MISSING:
                raise _parse_fault("<param> element has no <value> child")
            value = slot
        elif tag == "methodCall":
            if slot[0] is _MISSING:
                raise _parse_fault("Expected <methodCall> to have child <methodName>")
            self.call = (slot[0], [] if slot[1] is _MISSING else slot[1])
            return
        else:  # methodName, name, params, data, struct
            value = text if tag in _TEXTUAL else slot
        self._deliver(tag, value)

    def _deliver(self, tag: str, value: Any) -> None:
        parent = self.stack[-1]
        kind = parent[0]
        if kind in ("params", "data"):
            parent[2].append(value)
        elif kind == "struct":
            parent[2][value[0]] = value[1]
        elif kind in ("methodCall", "member"):
            index = 0 if tag in ("methodName", "name") else 1
            if parent[2][index] is not _MISSING:
                raise _parse_fault(f"<{kind}> element has more than one <{tag}> child")
            parent[2][index] = value
        elif parent[2] is not _MISSING:  # value, param, array: a single child
            raise _parse_fault(f"<{kind}> element has more than one child")
        else:
            parent[2] = value


def _refuse_dtd(*_args: Any) -> None:
    raise _parse_fault("Call is not valid XML.  A document type declaration is not allowed")


def _new_parser() -> tuple[_CallBuilder, Any]:
    builder = _CallBuilder()
    parser = expat.ParserCreate()
    parser.buffer_text = True
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.text
    parser.StartDoctypeDeclHandler = _refuse_dtd
    parser.EntityDeclHandler = _refuse_dtd
    return builder, parser


def _feed(parser: Any, data: bytes, final: bool) -> None:
    try:
        parser.Parse(data, final)
    except Fault:
        raise
    except expat.ExpatError as error:
        raise _parse_fault(f"Call is not valid XML.  {error}") from None
    except LookupError as error:  # an encoding declaration Python does not know
        raise _parse_fault(f"Call is not valid XML.  {_clip(str(error), 80)}") from None
    except Exception as error:  # whatever else a document can provoke is its fault
        _log.info("XML-RPC call refused by the parser: %r", error)
        raise _parse_fault(f"Call is not valid XML.  {type(error).__name__}") from None


def _parse_full(data: bytes) -> tuple[str, list[Any]]:
    builder, parser = _new_parser()
    _feed(parser, data, True)
    assert builder.call is not None  # expat guarantees a closed root element
    return builder.call


def _parse_incremental(data: bytes) -> Deferred[tuple[str, list[Any]]]:
    """Parse a large body slice by slice, letting the reactor run in between."""
    builder, parser = _new_parser()

    def slices() -> Iterator[None]:
        for start in range(0, len(data), _PARSE_SLICE):
            _feed(parser, data[start : start + _PARSE_SLICE], False)
            yield None
        _feed(parser, b"", True)

    return coiterate(slices()).addCallback(lambda _: builder.call)


#: Small flat calls already parsed, by their exact bytes: a client polling one call sends
#: the same document each time. Their params are immutable scalars, shared safely.
_KNOWN_CALLS: dict[bytes, tuple[str, tuple[Any, ...]]] = {}
KNOWN_CALLS = 1024
KNOWN_CALL_BYTES = 512


def parse_call(data: bytes) -> tuple[str, list[Any]]:
    """``(method name, params)`` of a methodCall document; raises :class:`Fault` (-503)."""
    known = _KNOWN_CALLS.get(data)
    if known is not None:
        return known[0], list(known[1])
    call = _parse_fast(data)
    if call is None:
        return _parse_full(data)
    if len(data) <= KNOWN_CALL_BYTES:
        if len(_KNOWN_CALLS) >= KNOWN_CALLS:
            _KNOWN_CALLS.clear()  # many different calls: start over
        _KNOWN_CALLS[data] = (call[0], tuple(call[1]))
    return call


# -- serialisation ----------------------------------------------------------------------

_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_XML_BYTES = bytes(c for c in range(256) if c in (0x09, 0x0A, 0x0D) or c >= 0x20)
_RESPONSE_HEAD = '<?xml version="1.0" encoding="UTF-8"?>\r\n<methodResponse>\r\n<params>\r\n<param>'
_TRUE = "<value><boolean>1</boolean></value>"
_FALSE = "<value><boolean>0</boolean></value>"
_RESPONSE_TAIL = "</param>\r\n</params>\r\n</methodResponse>\r\n"
# Around an EncodedString answer: what dump_response writes around [bool, str].
_ENCODED_HEAD_TRUE = f"{_RESPONSE_HEAD}<value><array><data>{_TRUE}<value><string>".encode()
_ENCODED_HEAD_FALSE = f"{_RESPONSE_HEAD}<value><array><data>{_FALSE}<value><string>".encode()
_ENCODED_TAIL = f"</string></value></data></array></value>{_RESPONSE_TAIL}".encode()


def escape_string(text: str) -> str:
    """``text`` escaped as the content of an XML-RPC ``<string>``."""
    return _escape(text)


def _escape(text: str) -> str:
    if "&" in text:
        text = text.replace("&", "&amp;")
    if "<" in text:
        text = text.replace("<", "&lt;")
    if ">" in text:
        text = text.replace(">", "&gt;")
    if "\r" in text:
        text = text.replace("\r", "&#13;")
    return text


def _encode(document: str) -> bytes:
    """UTF-8 of a document, with the characters XML 1.0 cannot carry replaced.

    Markup never holds such characters, so checking the whole encoded document at
    once (cheaper than a regular expression per string) finds those of the strings.
    """
    try:
        data = document.encode()
    except UnicodeEncodeError:  # lone surrogates
        return _XML_ILLEGAL.sub("\ufffd", document).encode()
    if data.translate(None, _XML_BYTES) or (
        not data.isascii() and (_NONCHARACTERS[0] in data or _NONCHARACTERS[1] in data)
    ):
        return _XML_ILLEGAL.sub("\ufffd", document).encode()
    return data


class _Serialized:
    """A value already written as XML-RPC (a system.multicall's array of answers)."""

    __slots__ = ("xml",)

    def __init__(self, xml: str) -> None:
        self.xml = xml


class EncodedString:
    """A string value written as XML-RPC piece by piece: each piece is escaped and encoded
    as it is added, so that a document of megabytes (a pool listing built in slices
    between reactor turns) never passes through the serializer in one reactor turn.
    A method answers ``[True, encoded_string]``; it reads like any string there."""

    __slots__ = ("_pieces", "size")

    def __init__(self) -> None:
        self._pieces: list[bytes] = []
        self.size = 0  # bytes so far

    def add(self, text: str, *, escaped: bool = False) -> None:
        """Append ``text``; ``escaped``: it already is (:func:`escape_string`)."""
        piece = _encode(text if escaped else _escape(text))
        self._pieces.append(piece)
        self.size += len(piece)

    def encoded(self, before: bytes = b"", after: bytes = b"") -> bytes:
        """The encoded string, between ``before`` and ``after`` (one copy of megabytes)."""
        return b"".join([before, *self._pieces, after])

    def __str__(self) -> str:
        return self.encoded().decode()


def _dump(value: Any, out: list[str]) -> None:
    kind = type(value)
    if kind is str:
        out.append("<value><string>")
        out.append(_escape(value))
        out.append("</string></value>")
    elif kind is bool:
        out.append(_TRUE if value else _FALSE)
    elif kind is int:
        if not _INT_MIN <= value <= _INT_MAX:
            raise OverflowError(f"{value} does not fit an XML-RPC int")
        out.append(f"<value><i4>{value}</i4></value>")
    elif kind is list or kind is tuple:
        out.append("<value><array><data>")
        for item in value:
            _dump(item, out)
        out.append("</data></array></value>")
    elif kind is dict:
        out.append("<value><struct>")
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"struct member name {key!r} is not a string")
            out.append("<member><name>")
            out.append(_escape(key))
            out.append("</name>")
            _dump(item, out)
            out.append("</member>")
        out.append("</struct></value>")
    elif kind is float:
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{value} is not an XML-RPC double")
        out.append(f"<value><double>{value!r}</double></value>")
    elif value is None:
        out.append("<value><nil/></value>")
    elif kind is bytes:
        out.append(f"<value><base64>{base64.b64encode(value).decode('ascii')}</base64></value>")
    elif isinstance(value, DateTime):
        out.append(f"<value><dateTime.iso8601>{_escape(value.value)}</dateTime.iso8601></value>")
    elif isinstance(value, datetime.datetime):
        out.append(f"<value><dateTime.iso8601>{value:%Y%m%dT%H:%M:%S}</dateTime.iso8601></value>")
    elif kind is _Serialized:
        out.append(value.xml)
    elif kind is EncodedString:  # inside a system.multicall: already escaped
        out.append(f"<value><string>{value}</string></value>")
    # Subclasses (enums, named tuples, ...) are written as their base type.
    elif isinstance(value, int):
        _dump(int(value), out)
    elif isinstance(value, str):
        _dump(str(value), out)
    elif isinstance(value, float):
        _dump(float(value), out)
    elif isinstance(value, (list, tuple)):
        _dump(list(value), out)
    elif isinstance(value, dict):
        _dump(dict(value), out)
    else:
        raise TypeError(f"cannot send a {kind.__name__} over XML-RPC")


def dump_response(value: Any) -> bytes:
    """The methodResponse document carrying ``value``."""
    if type(value) is list and len(value) == 2 and type(value[1]) is EncodedString:
        return value[1].encoded(
            _ENCODED_HEAD_TRUE if value[0] is True else _ENCODED_HEAD_FALSE, _ENCODED_TAIL
        )
    out = [_RESPONSE_HEAD]
    _dump(value, out)
    out.append(_RESPONSE_TAIL)
    return _encode("".join(out))


def dump_fault(fault: Fault) -> bytes:
    """The methodResponse document carrying ``fault``."""
    return _encode(
        '<?xml version="1.0" encoding="UTF-8"?>\r\n<methodResponse>\r\n<fault>\r\n'
        "<value><struct>"
        f"<member><name>faultCode</name><value><i4>{fault.code}</i4></value></member>"
        "<member><name>faultString</name>"
        f"<value><string>{_escape(fault.message)}</string></value></member>"
        "</struct></value>\r\n</fault>\r\n</methodResponse>\r\n"
    )


# -- registry ---------------------------------------------------------------------------

_TYPES: dict[str, tuple[type, str, str]] = {
    # signature letter: (Python type, introspection name, xmlrpc-c's wrong-type fault)
    "s": (str, "string", "Parameter that is supposed to be a string is not"),
    "i": (int, "int", "Parameter that is supposed to be integer is not"),
    "b": (bool, "boolean", "Parameter that is supposed to be boolean is not"),
    "d": (float, "double", "Parameter that is supposed to be floating point number is not"),
    "A": (list, "array", "Parameter that is supposed to be an array is not"),
    "S": (dict, "struct", "Parameter that is supposed to be a structure is not"),
    "n": (type(None), "nil", "Parameter that is supposed to be nil is not"),
}
# xmlrpc-c's xmlrpc_type numbers, quoted in its system.multicall faults.
_TYPE_NUMBERS = {int: 0, bool: 1, float: 2, DateTime: 3, str: 4, bytes: 5, list: 6, dict: 7}
_NOT_ENOUGH = "Not enough parameters"
_INTERNAL = (
    "Unexpected error executing code for particular method, detected by Xmlrpc-c method "
    "registry code.  Method did not fail; rather, it did not complete at all."
)
_NO_HELP = "No help is available for this method"


class _Method:
    __slots__ = ("checks", "handler", "help", "signature", "takes_context")

    def __init__(
        self,
        handler: Callable[..., Any],
        signature: list[str],
        checks: tuple,
        help: str,
        takes_context: bool,
    ) -> None:
        self.handler = handler
        self.signature = signature
        self.checks = checks
        self.help = help
        self.takes_context = takes_context


class MethodRegistry:
    """Named methods with xmlrpc-c signatures, plus the standard ``system.*`` methods."""

    def __init__(self, limits: CallLimits = CallLimits()) -> None:  # noqa: B008 - frozen
        self.limits = limits
        self._methods: dict[str, _Method] = {}
        # In the order, and with the signatures and texts, of the xmlrpc-c of 1.2's time
        # (1.18, the first with system.getCapabilities): listed before the 1.2 methods.
        self.register(
            "system.listMethods",
            self.names,
            "A:",
            "Return an array of all available XML-RPC methods on this server.",
        )
        self.register(
            "system.methodExist",
            self._method_exists,
            "b:s",
            "Tell whether a method by a specified name exists on this server",
        )
        # xmlrpc-c announces methodExist's signature backwards; introspection says so too.
        self._methods["system.methodExist"].signature = ["string", "boolean"]
        self.register(
            "system.methodHelp",
            self._method_help,
            "s:s",
            "Given the name of a method, return a help string.",
        )
        self.register(
            "system.methodSignature",
            self._method_signature,
            "A:s",
            "Given the name of a method, return an array of legal signatures. Each signature "
            "is an array of strings.  The first item of each signature is the return type, "
            "and any others items are parameter types.",
        )
        self.register(
            "system.multicall",
            self._multicall,
            "A:A",
            "Process an array of calls, and return an array of results.  Calls should be "
            "structs of the form {'methodName': string, 'params': array}. Each result will "
            "either be a single-item array containg the result value, or a struct of the form "
            "{'faultCode': int, 'faultString': string}.  This is useful when you need to make "
            "lots of small calls without lots of round trips.",
            takes_context=True,
        )
        self.register(
            "system.shutdown",
            _refuse_shutdown,
            "i:s",
            "Shut down the server.  Return code is always zero.",
        )
        self.register(
            "system.capabilities",
            _capabilities,
            "S:",
            "Return the capabilities of XML-RPC server.  This includes the version number of "
            "the XML-RPC For C/C++ software",
        )
        self.register(
            "system.getCapabilities",
            _standard_capabilities,
            "S:",
            "Return the list of standard capabilities of XML-RPC server.  "
            "See http://tech.groups.yahoo.com/group/xml-rpc/message/2897",
        )

    def register(
        self,
        name: str,
        handler: Callable[..., Any],
        signature: str,
        help: str = "",
        *,
        takes_context: bool = False,
    ) -> None:
        """Add a method; ``signature`` is xmlrpc-c's ``"<return>:<params>"``, e.g. ``"A:sii"``.

        ``handler`` gets the type-checked parameters (extra trailing ones are dropped),
        preceded by the call's :class:`CallContext` when ``takes_context`` is set, and
        returns a value or a Deferred; it may raise :class:`Fault`.
        """
        if name in self._methods:
            raise ValueError(f"method {name!r} is already registered")
        returns, colon, params = signature.partition(":")
        if len(returns) != 1 or not colon or any(c not in _TYPES for c in returns + params):
            raise ValueError(f"invalid signature {signature!r} for {name!r}")
        checks = tuple((_TYPES[c][0], _TYPES[c][2]) for c in params)
        names = [_TYPES[c][1] for c in returns + params]
        self._methods[name] = _Method(handler, names, checks, help or _NO_HELP, takes_context)

    def names(self) -> list[str]:
        """Every registered method name, ``system.*`` included, in registration order."""
        return list(self._methods)

    def call(self, name: str, params: list[Any], context: CallContext = LOCAL) -> Any:
        """Check ``params`` against ``name``'s signature and run it: a value or a Deferred."""
        method = self._methods.get(name)
        if method is None:
            raise Fault(NO_SUCH_METHOD_ERROR, f"Method '{_shown(name)}' not defined")
        checks = method.checks
        count = len(params)
        # In order, as xmlrpc-c's paramList getters ran: a wrong type before a missing one.
        for index, (kind, message) in enumerate(checks):
            if index >= count:
                raise Fault(TYPE_ERROR, _NOT_ENOUGH)
            if type(params[index]) is not kind:
                raise Fault(TYPE_ERROR, message)
        if count > len(checks):
            params = params[: len(checks)]
        if method.takes_context:
            return method.handler(context, *params)
        return method.handler(*params)

    def handle(self, body: bytes, context: CallContext = LOCAL) -> bytes | Deferred[bytes]:
        """Answer one XML-RPC request document (the HTTP handler): always a methodResponse."""
        if len(body) > _INLINE_PARSE:
            parsed = _parse_incremental(body)
            return parsed.addCallback(lambda call: self._invoke(*call, context)).addErrback(
                _respond_failure
            )
        try:
            name, params = parse_call(body)
        except Fault as fault:
            return dump_fault(fault)
        except Exception:  # a parser bug must still not reach the client as HTTP 500
            _log.exception("XML-RPC request could not be parsed")
            return dump_fault(_parse_fault("Call could not be parsed"))
        return self._invoke(name, params, context)

    def _invoke(
        self, name: str, params: list[Any], context: CallContext
    ) -> bytes | Deferred[bytes]:
        try:
            result = self.call(name, params, context)
        except Fault as fault:
            return dump_fault(fault)
        except Exception:
            _log.exception("XML-RPC method %s failed", name)
            return dump_fault(Fault(INTERNAL_ERROR, _INTERNAL))
        if isinstance(result, Deferred):
            return result.addCallbacks(self._respond, _respond_failure)
        return self._respond(result)

    def _respond(self, value: Any) -> bytes:
        try:
            reply = dump_response(value)
        except Exception:
            _log.exception("XML-RPC method returned a value that cannot be sent")
            return dump_fault(Fault(INTERNAL_ERROR, _INTERNAL))
        if len(reply) > self.limits.reply_bytes:
            return dump_fault(self._too_large())
        return reply

    def _too_large(self) -> Fault:
        return Fault(
            LIMIT_EXCEEDED_ERROR,
            f"The answer would exceed {self.limits.reply_bytes} bytes; ask for less at once",
        )

    # -- system.* ---------------------------------------------------------------------

    def _lookup(self, name: str) -> _Method:
        method = self._methods.get(name)
        if method is None:
            raise Fault(NO_SUCH_METHOD_ERROR, f"Method '{_shown(name)}' does not exist")
        return method

    def _method_signature(self, name: str) -> list[list[str]]:
        return [self._lookup(name).signature]

    def _method_help(self, name: str) -> str:
        return self._lookup(name).help

    def _method_exists(self, name: str) -> bool:
        return name in self._methods

    def _multicall(self, context: CallContext, calls: list[Any]) -> Deferred[_Serialized]:
        limit = self.limits.multicall_calls
        if len(calls) > limit:
            raise Fault(LIMIT_EXCEEDED_ERROR, f"system.multicall is limited to {limit} calls")
        return _Multicall(self, context, calls).run()


_SHOWN_NAME_CHARS = 100


def _shown(name: str) -> str:
    """A client's method name as quoted back in a fault: cut, so a fault stays small."""
    if len(name) <= _SHOWN_NAME_CHARS:
        return name
    return name[:_SHOWN_NAME_CHARS] + "..."


class _Multicall:
    """One system.multicall: its calls run in order, a slice of them per reactor turn.

    Each answer is serialised as soon as it is known, so only the XML is kept, and the
    run stops as soon as the answers exceed the registry's reply cap.
    """

    def __init__(self, registry: MethodRegistry, context: CallContext, calls: list[Any]) -> None:
        self.registry = registry
        self.context = context
        self.calls = calls
        self.parts: list[str] = [""] * len(calls)
        self.size = 0
        self.too_large = False
        self.waiting: list[Deferred[None]] = []

    def run(self) -> Deferred[_Serialized]:
        ran = coiterate(self._steps())
        ran.addCallback(lambda _: DeferredList(self.waiting))
        return ran.addCallback(self._finish)

    def _steps(self) -> Iterator[None]:
        for index, entry in enumerate(self.calls):
            if self.too_large:
                return
            try:
                result = self.registry.call(*_multicall_entry(entry), self.context)
            except Fault as fault:
                self._store(index, _fault_struct(fault))
            except Exception:
                _log.exception("XML-RPC request failed (in system.multicall)")
                self._store(index, _fault_struct(Fault(INTERNAL_ERROR, _INTERNAL)))
            else:
                if isinstance(result, Deferred):
                    result.addCallbacks(lambda value: [value], _failure_struct)
                    self.waiting.append(result.addCallback(self._store_later, index))
                else:
                    self._store(index, [result])
            yield None

    def _store_later(self, answer: Any, index: int) -> None:
        self._store(index, answer)

    def _store(self, index: int, answer: Any) -> None:
        if self.too_large:
            return
        out: list[str] = []
        try:
            _dump(answer, out)
        except Exception:
            _log.exception("XML-RPC method returned a value that cannot be sent")
            out = []
            _dump(_fault_struct(Fault(INTERNAL_ERROR, _INTERNAL)), out)
        text = "".join(out)
        self.size += len(text)  # characters: a lower bound of the bytes, checked again at the end
        if self.size > self.registry.limits.reply_bytes:
            self.too_large = True
            self.parts = []
        else:
            self.parts[index] = text

    def _finish(self, _: object) -> _Serialized:
        if self.too_large:
            raise self.registry._too_large()
        return _Serialized("<value><array><data>" + "".join(self.parts) + "</data></array></value>")


def _refuse_shutdown(_comment: str) -> int:
    # oned never gave xmlrpc-c a shutdown function: a client cannot stop the daemon.
    raise Fault(0, "This server program is not capable of shutting down")


def _capabilities() -> dict[str, Any]:
    return {
        "facility": "xmlrpc-c",
        "version_major": 1,
        "version_minor": 18,
        "version_point": 0,
        "protocol_version": 2,
    }


def _standard_capabilities() -> dict[str, Any]:
    return {
        "introspect": {
            "specUrl": "http://xmlrpc-c.sourceforge.net/xmlrpc-c/introspection.html",
            "specVersion": 1,
        }
    }


def _multicall_entry(entry: Any) -> tuple[str, list[Any]]:
    if type(entry) is not dict:
        raise Fault(
            TYPE_ERROR,
            f"An element of the multicall array is type {_TYPE_NUMBERS.get(type(entry), 9)}, "
            "but should be a struct (with members 'methodName' and 'params')",
        )
    name = entry.get("methodName")
    params = entry.get("params")
    if type(name) is not str:
        raise Fault(TYPE_ERROR, "Struct member 'methodName' is missing or not a string")
    if type(params) is not list:
        raise Fault(TYPE_ERROR, "Struct member 'params' is missing or not an array")
    if name == "system.multicall":
        raise Fault(REQUEST_REFUSED_ERROR, "Recursive system.multicall forbidden")
    return name, params


def _fault_struct(fault: Fault) -> dict[str, Any]:
    return {"faultCode": fault.code, "faultString": fault.message}


def _failure_struct(failure: Failure) -> dict[str, Any]:
    if failure.check(Fault):
        return _fault_struct(failure.value)  # type: ignore[arg-type]
    _log.error("XML-RPC method failed (in system.multicall): %s", failure.getTraceback())
    return _fault_struct(Fault(INTERNAL_ERROR, _INTERNAL))


def _respond_failure(failure: Failure) -> bytes:
    if failure.check(Fault):
        return dump_fault(failure.value)  # type: ignore[arg-type]
    _log.error("XML-RPC method failed: %s", failure.getTraceback())
    return dump_fault(Fault(INTERNAL_ERROR, _INTERNAL))


def make_factory(
    registry: MethodRegistry,
    reactor: IReactorTime | None = None,
    path: bytes = b"/RPC2",
    access_log: Callable[[str], None] | None = None,
    limits: Limits = Limits(),  # noqa: B008 - frozen, shared safely
) -> HTTPServerFactory:
    """The server factory to ``listenTCP``: ``registry`` over HTTP POST on ``path``."""
    return HTTPServerFactory(registry.handle, path, reactor, access_log=access_log, limits=limits)
