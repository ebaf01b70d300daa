"""What onevm, onehost and onevnet share: the XML-RPC client, id-or-name arguments,
the common options, 1.2-style tables and the ``-o json|xml`` renderings."""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
import xmlrpc.client
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.parsers.expat import ExpatError

import click
from lxml import etree

from nebula_xr.auth import one_auth_path, password_hash, read_one_auth

DEFAULT_ENDPOINT = "http://localhost:2633/RPC2"
#: The 1.2 commands exit with -1 on any error.
FAILURE = 255
#: Seconds a call may take before the command gives up on the server
#: (``$ONE_XMLRPC_TIMEOUT`` changes it).
TIMEOUT = 60.0
FORMATS = ("table", "json", "xml")


class CliError(click.ClickException):
    """Printed as ``Error: <message>`` on stderr; the command exits with FAILURE."""

    exit_code = FAILURE


# -- options --------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    endpoint: str
    output: str
    columns: tuple[str, ...] | None
    verbose: bool
    delay: float


_META = "nebula_xr.cli"


def _remember(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    # The same options exist before and after the verb, as with 1.2's parser: the
    # verb's own value wins.
    if value is not None and value is not False:
        ctx.meta.setdefault(_META, {})[param.name] = value


def _options() -> list[click.Option]:
    common = {"expose_value": False, "callback": _remember}
    return [
        click.Option(
            ["--endpoint"],
            metavar="URL",
            help=f"oned's XML-RPC URL (default: $ONE_XMLRPC or {DEFAULT_ENDPOINT}).",
            **common,
        ),
        click.Option(
            ["-o", "--output"],
            type=click.Choice(FORMATS),
            help="table (the 1.2 output, default), json or xml (for scripts).",
            **common,
        ),
        click.Option(
            ["-l", "--list", "columns"],
            metavar="x,y,z",
            help="Columns to show in tables (list, top, history).",
            **common,
        ),
        click.Option(
            ["-d", "--delay"],
            type=click.FloatRange(min=0.1),
            metavar="SECONDS",
            help="Refresh period of top (default 1).",
            **common,
        ),
        click.Option(
            ["-v", "--verbose"],
            is_flag=True,
            default=False,
            help="Say what was done when a command succeeds.",
            **common,
        ),
    ]


def add_common_options(group: click.Group) -> click.Group:
    """Give the group and each of its verbs the common options."""
    group.params.extend(_options())
    # An alias (submit, create) is the same command object under a second name.
    for command in {id(command): command for command in group.commands.values()}.values():
        command.params.extend(_options())
    return group


def settings() -> Settings:
    values = click.get_current_context().meta.get(_META, {})
    columns = values.get("columns")
    return Settings(
        endpoint=values.get("endpoint") or os.environ.get("ONE_XMLRPC") or DEFAULT_ENDPOINT,
        output=values.get("output", "table"),
        columns=tuple(c.strip().lower() for c in columns.split(",")) if columns else None,
        verbose=values.get("verbose", False),
        delay=values.get("delay", 1.0),
    )


def say(message: str) -> None:
    """What 1.2 printed with -v after a success."""
    if settings().verbose:
        click.echo(message)


# -- talking to oned ------------------------------------------------------------------


def session_string() -> str:
    """``user:sha1(password)`` from the ONE_AUTH file, else 1.2's placeholder."""
    try:
        name, password = read_one_auth(one_auth_path(os.environ))
    except (OSError, ValueError):
        return "sessionID"
    return f"{name}:{password_hash(password)}"


def request_timeout() -> float:
    text = os.environ.get("ONE_XMLRPC_TIMEOUT")
    if text is None:
        return TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not seconds > 0 or math.isinf(seconds):
        raise CliError(f"ONE_XMLRPC_TIMEOUT must be a positive number of seconds, not {text!r}")
    return seconds


class Client:
    def __init__(self, endpoint: str, session: str) -> None:
        self.endpoint = endpoint
        self.session = session

    def request(self, method: str, *args: Any) -> list[Any]:
        """The values of a successful answer (after its ``true``); failures raise CliError."""
        try:
            proxy = xmlrpc.client.ServerProxy(self.endpoint, allow_none=False)
        except (OSError, ValueError) as error:
            raise CliError(f"Invalid endpoint {self.endpoint}: {error}") from error
        timeout = request_timeout()
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout)
        try:
            with proxy:
                reply = getattr(proxy, method)(self.session, *args)
        except TimeoutError as error:
            raise CliError(
                f"oned at {self.endpoint} did not answer {method} within {timeout:g} seconds "
                "(ONE_XMLRPC_TIMEOUT sets the limit)"
            ) from error
        except xmlrpc.client.Fault as fault:
            raise CliError(fault.faultString) from fault
        except xmlrpc.client.ProtocolError as error:
            raise CliError(f"{self.endpoint}: HTTP {error.errcode} {error.errmsg}") from error
        except (xmlrpc.client.ResponseError, ExpatError) as error:
            raise CliError(f"{self.endpoint} did not answer in XML-RPC") from error
        except OSError as error:
            reason = error.strerror or str(error) or type(error).__name__
            raise CliError(f"Can not reach oned at {self.endpoint}: {reason}") from error
        finally:
            socket.setdefaulttimeout(previous)
        if not isinstance(reply, list) or not reply:
            raise CliError(f"Unexpected answer from {self.endpoint}: {reply!r}")
        if reply[0] is not True:
            raise CliError(str(reply[1]) if len(reply) > 1 else "The request failed")
        return reply[1:]

    def call(self, method: str, *args: Any) -> Any:
        """The value of a successful answer, None for a bare ``[true]``."""
        values = self.request(method, *args)
        return values[0] if values else None

    def document(self, method: str, *args: Any) -> str:
        """An XML document answer (1.4 info and pool methods), checked to be one."""
        text = self.call(method, *args)
        if not isinstance(text, str):
            raise CliError(f"{method} answered {text!r} instead of a document")
        return text

    def data(self, method: str, *args: Any) -> Any:
        """An XML document answer as data (see :func:`to_data`)."""
        return to_data(parse(self.document(method, *args)))


_PARSER = etree.XMLParser(resolve_entities=False, no_network=True)


def parse(document: str) -> etree._Element:
    try:
        return etree.fromstring(document.encode("utf-8"), parser=_PARSER)
    except etree.XMLSyntaxError as error:
        raise CliError(f"Malformed document from oned: {error}") from error


def client() -> Client:
    return Client(settings().endpoint, session_string())


def read_file(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except OSError as error:
        raise CliError(f"Can not read template file {path}: {error.strerror}") from error


# -- documents as data ----------------------------------------------------------------

#: Leaf elements that hold text; every other leaf is an integer (api-1.4.md §4).
_TEXT = {"NAME", "USERNAME", "DEPLOY_ID", "IM_MAD", "VM_MAD", "TM_MAD", "HOSTNAME", "BRIDGE"}
_TEXT |= {"PASSWORD", "IP", "MAC"}
_LISTS = {"VM_POOL", "HOST_POOL", "VNET_POOL", "USER_POOL", "LEASES", "HISTORY_RECORDS"}


def to_data(element: etree._Element) -> Any:
    """A document as JSON-ready data: element names as keys, integers as numbers, pools
    and leases as lists; in a TEMPLATE a repeated name (DISK, NIC) becomes a list."""
    if element.tag == "TEMPLATE":
        return _template_data(element)
    if element.tag in _LISTS:
        return [to_data(child) for child in element]
    if len(element):
        return {child.tag: to_data(child) for child in element}
    text = element.text or ""
    if element.tag == "ENABLED":
        return text in ("1", "True")  # the pool writes True/Fase (sic), the info 1/0
    if element.tag in _TEXT:
        return text
    try:
        return int(text)
    except ValueError:
        return text


def _template_data(element: etree._Element) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for child in element:
        value: Any = {k.tag: k.text or "" for k in child} if len(child) else child.text or ""
        if child.tag not in data:
            data[child.tag] = value
        elif isinstance(data[child.tag], list):
            data[child.tag].append(value)
        else:
            data[child.tag] = [data[child.tag], value]
    return data


def json_text(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


def render(document: str, table: Callable[[Any], str]) -> str:
    """A document in the chosen output format: as oned sent it (xml), as data (json) or
    as ``table`` renders its data (the default)."""
    output = settings().output
    if output == "xml":
        return document
    data = to_data(parse(document))
    return json_text(data) if output == "json" else table(data)


# -- id or name -----------------------------------------------------------------------


def resolve(
    text: str,
    kind: str,
    candidates: Callable[[], Iterable[dict[str, Any]]],
    matches: Callable[[dict[str, Any], str], bool],
    describe: Callable[[dict[str, Any]], str],
) -> int:
    """An id given as digits, or the one object ``matches`` finds by name."""
    text = text.strip()
    if text.isdigit() and text.isascii():
        return int(text)
    found = [item for item in candidates() if matches(item, text)]
    if not found:
        raise CliError(f"{kind} named {text} not found")
    if len(found) > 1:
        listed = ", ".join(describe(item) for item in found)
        raise CliError(f"several {kind}s are named {text}, use an ID: {listed}")
    return found[0]["ID"]


# -- tables ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    header: str
    width: int
    value: Callable[[dict[str, Any]], object]
    description: str
    left: bool = False


def pick_columns(table: dict[str, Column], default: Sequence[str]) -> list[Column]:
    keys = settings().columns or tuple(default)
    unknown = [key for key in keys if key not in table]
    if unknown:
        raise CliError(f"Unknown column {', '.join(unknown)}; columns: {', '.join(table)}")
    return [table[key] for key in keys]


def render_table(columns: Sequence[Column], rows: Iterable[dict[str, Any]]) -> str:
    """1.2's tables: columns at least their 1.2 width (wider rather than cut), right
    aligned unless marked left, header bold and underlined on a terminal."""
    cells = [[str(column.value(row)) for column in columns] for row in rows]
    widths = [
        max([column.width, len(column.header), *(len(line[i]) for line in cells)])
        for i, column in enumerate(columns)
    ]

    def line(values: Sequence[str]) -> str:
        return " ".join(
            value.ljust(width) if column.left else value.rjust(width)
            for value, width, column in zip(values, widths, columns, strict=True)
        )

    header = line([column.header for column in columns])
    if sys.stdout.isatty():
        header = f"\33[1m\33[4m{header}\33[0m"
    return "\n".join([header, *(line(values) for values in cells)])


def column_help(table: dict[str, Column]) -> str:
    return "\n".join(f"{key:>10} ({c.width:2d}) => {c.description}" for key, c in table.items())


# -- formats --------------------------------------------------------------------------


def short_time(epoch: int) -> str:
    """1.2's ``%m/%d %H:%M:%S`` in local time; ``--`` for unset."""
    return time.strftime("%m/%d %H:%M:%S", time.localtime(epoch)) if epoch else "--"


def running_time(stime: int, etime: int) -> str:
    """``dd hh:mm:ss`` from ``stime`` to ``etime`` (or now while it is 0)."""
    seconds = max((etime or int(time.time())) - stime, 0)
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    days, hour = divmod(hours, 24)
    return f"{days:02d} {hour:02d}:{minute:02d}:{second:02d}"


def top(screen: Callable[[], str]) -> None:
    """Redraw ``screen()`` in place every ``--delay`` seconds until interrupted."""
    delay = settings().delay
    try:
        while True:
            click.echo("\33[H\33[2J" + screen(), color=True)  # keep the codes in a pipe
            time.sleep(delay)
    except KeyboardInterrupt:
        click.echo()
