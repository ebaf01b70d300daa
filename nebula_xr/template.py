"""The OpenNebula 1.2 template language (templates.md §1).

One syntax serves VM and network templates, ``oned.conf``, driver ``DEFAULT`` files and
IM monitoring replies. The lexer reproduces 1.2's flex scanner (longest match, earliest rule
on ties) and the parser its LALR grammar, including the ``syntax error, unexpected X,
expecting Y at line L, columns a:b`` messages. A :class:`Template` is an ordered multimap of
upper-cased names to single (``str``) or vector (``dict``) values, with the storage
(database.md §3) and display (xmlrpc-api.md §3) encodings 1.2 uses.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable, Iterator, Mapping
from operator import itemgetter

__all__ = [
    "VECTOR_SEPARATOR",
    "VM_NUMERIC_ATTRIBUTES",
    "Template",
    "TemplateSyntaxError",
    "Value",
    "Vector",
    "decode_vector",
    "encode_vector",
    "interned",
    "text_position",
]

Vector = dict[str, str]
Value = str | Vector

#: Joins a vector's ``KEY=value`` pairs in the database (``VectorAttribute::magic_sep``).
VECTOR_SEPARATOR = "@^_^@"


#: VM template attributes that must be numbers (what each counts, for the message).
VM_NUMERIC_ATTRIBUTES = {
    "MEMORY": "a number of megabytes",
    "CPU": "a number of CPUs",
    "VCPU": "a number of virtual CPUs",
}


class TemplateSyntaxError(ValueError):
    """The text is not a valid template; the message reads like 1.2's bison error.

    ``line`` and ``column`` (1-based, characters within that line) locate the offending
    token for people; the message keeps 1.2's offsets counted from the start of the text.
    """

    def __init__(self, message: str, line: int = 0, column: int = 0, reason: str = "") -> None:
        super().__init__(message)
        self.line = line
        self.column = column
        #: The message without its location (``unexpected X, expecting Y``).
        self.reason = reason or message

    def located(self) -> str:
        """``line L, column C: <reason>``, how the 1.4 API and the CLI say it."""
        return f"line {self.line}, column {self.column}: {self.reason}"


def text_position(text: str, offset: int) -> tuple[int, int]:
    """The 1-based line and column (in characters) of ``offset`` in ``text``."""
    line_start = text.rfind("\n", 0, offset) + 1
    return 1 + text.count("\n", 0, offset), offset - line_start + 1


_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _upper(s: str) -> str:
    # 1.2 upper-cases with toupper() in the C locale: ASCII letters only.
    return s.upper() if s.isascii() else s.translate(_ASCII_UPPER)


def interned(s: str) -> str:
    """One object for equal names and values: thousands of VM templates repeat the same
    ones (``MEMORY``, ``64``, an image path). An interned string still goes when its last
    user does. Anything but a str (a subclass, a number from a database row) is kept as
    given."""
    return sys.intern(s) if type(s) is str else s


def encode_vector(vector: Mapping[str, str], separator: str = VECTOR_SEPARATOR) -> str:
    """``KEY=value`` pairs sorted by key (byte order), joined with *separator*."""
    return separator.join(f"{key}={vector[key]}" for key in sorted(vector))


def decode_vector(text: str) -> Vector:
    """Inverse of :func:`encode_vector` as 1.2 does it: split on the separator, then each
    piece at its first ``=``; pieces without ``=`` are skipped, a repeated key keeps its
    first value, keys are kept verbatim."""
    vector: Vector = {}
    for piece in text.split(VECTOR_SEPARATOR):
        key, eq, value = piece.partition("=")
        if eq:
            vector.setdefault(key, value)
    return vector


# --------------------------------------------------------------------------------------
# Lexer. Token kinds are the bison token names, so error messages can use them directly.
#
# flex takes the longest match. The one regex below gets the same tokens in one match per
# lexeme: either a bare word, or a "separator" — a run of blanks and newlines followed by
# an operator (which then absorbs the whole run: newlines before '=' ',' '[' ']' vanish,
# and ',' '[' also absorb the newlines after them) or by an optional comment. A separator
# without an operator stands for NL tokens; only its first newline is reported, since the
# grammar either rejects that NL or is back between lines where NLs are blank lines.

_EQUAL, _COMMA, _OBRACKET, _CBRACKET = "EQUAL", "COMMA", "OBRACKET", "CBRACKET"
_NL, _STRING, _END = "NL", "STRING", "$end"

_OPERATORS = {"=": _EQUAL, ",": _COMMA, "[": _OBRACKET, "]": _CBRACKET}
_LEXEME = re.compile(
    r"""
    (?P<bare> [^=#\t\n\ ,\[\]"'] [^=#\t\n\ ,\[\]]*+ )
    | [\ \t\n]*+
      (?: (?P<op> =[\ \t]*+ | ,[\ \t\n]*+ | \[[\ \t\n]*+ | \][\ \t]*+ ) | \#[^\n]*+ )?
    """,
    re.VERBOSE,
)
_BARE = re.compile(r"[^=#\t\n ,\[\]]+")

_Token = tuple[str, str, int, int]  # kind, word (STRING only), start, end


def _lex(text: str) -> list[_Token]:
    """The tokens of *text*, ending with ``$end`` located at the last lexeme (flex leaves
    the location of its final match there, even if that was a comment or blanks)."""
    tokens: list[_Token] = []
    append = tokens.append
    match = _LEXEME.match
    pos, size = 0, len(text)
    last = (0, 0)
    while True:
        m = match(text, pos)
        end = m.end()
        word = m.group("bare")
        if word is not None:
            last = (pos, end)
            append((_STRING, word, pos, end))
        elif m.start("op") >= 0:
            last = (pos, end)
            append((_OPERATORS[text[m.start("op")]], "", pos, end))
        elif end > pos:
            newline = text.find("\n", pos, end)
            if newline < 0:
                last = (pos, end)
            else:
                last = (newline, newline + 1)
                append((_NL, "", newline, newline + 1))
        elif pos == size:
            append((_END, "", *last))
            return tokens
        else:
            # A quote: the quoted word wins unless the bare-word reading is longer, so
            # '"a"b' is the bare word '"a"b' and an unterminated quote is a plain character.
            end = _BARE.match(text, pos).end()
            word = text[pos:end]
            close = text.find(text[pos], pos + 1)
            if close >= 0 and close >= end - 1:
                word = text[pos + 1 : close]
                end = close + 1
            last = (pos, end)
            append((_STRING, word, pos, end))
        pos = end


def _syntax_error(text: str, token: _Token, expecting: str) -> TemplateSyntaxError:
    kind, _, start, end = token
    # Like 1.2: yylineno after the token, and byte columns counted from the start of the
    # text (the scanner never resets them at newlines).
    line = 1 + text.count("\n", 0, end)
    first = len(text[:start].encode("utf-8", "surrogatepass"))
    last = first + len(text[start:end].encode("utf-8", "surrogatepass"))
    reason = f"syntax error, unexpected {kind}, expecting {expecting}"
    # An operator token carries the blanks and newlines before it: point at the operator.
    lexeme = text[start:end]
    shown = start if kind == _NL else start + len(lexeme) - len(lexeme.lstrip(" \t\n"))
    return TemplateSyntaxError(
        f"{reason} at line {line}, columns {first}:{last}",
        *text_position(text, min(shown, end)),
        reason,
    )


def _parse(text: str) -> list[tuple[str, Value]]:
    """The LALR parser of 1.2 as straight-line code; each ``expecting`` list is the one
    bison reports in the corresponding parser state."""
    next_token = iter(_lex(text)).__next__
    attributes: list[tuple[str, Value]] = []
    seen_line = False  # 'template := line+': an empty text is a syntax error

    def expect(kind: str) -> str:
        token = next_token()
        if token[0] != kind:
            raise _syntax_error(text, token, kind)
        return token[1]

    while True:
        token = next_token()
        kind = token[0]
        if kind == _STRING:
            name = interned(_upper(token[1]))
            expect(_EQUAL)
            token = next_token()
            kind = token[0]
            if kind == _STRING:
                expect(_NL)
                attributes.append((name, interned(token[1])))
            elif kind == _NL:
                attributes.append((name, ""))
            elif kind == _OBRACKET:
                vector: Vector = {}
                while True:
                    key = interned(_upper(expect(_STRING)))
                    expect(_EQUAL)
                    vector.setdefault(key, interned(expect(_STRING)))
                    token = next_token()
                    if token[0] == _CBRACKET:
                        break
                    if token[0] != _COMMA:
                        raise _syntax_error(text, token, "COMMA or CBRACKET")
                expect(_NL)
                attributes.append((name, vector))
            else:
                raise _syntax_error(text, token, "OBRACKET or NL or STRING")
        elif kind == _END and seen_line:
            return attributes
        elif kind != _NL:
            raise _syntax_error(
                text, token, "$end or NL or STRING" if seen_line else "NL or STRING"
            )
        seen_line = True


# --------------------------------------------------------------------------------------
# Writing template syntax back.

_BARE_WORD = re.compile(r"[^=#\t\n ,\[\]\"'][^=#\t\n ,\[\]]*")


def _word(s: str) -> str:
    """*s* as a template word that reads back as exactly *s*."""
    if _BARE_WORD.fullmatch(s):
        return s
    for quote in "\"'":
        if quote not in s:
            return f"{quote}{s}{quote}"
    raise ValueError(
        f"{s!r} cannot be written in template syntax (needs quoting but holds both quotes)"
    )


# --------------------------------------------------------------------------------------


def _normalize(name: str, value: Value) -> tuple[str, Value]:
    if not isinstance(name, str):
        raise TypeError(f"template attribute name must be str, not {type(name).__name__}")
    if isinstance(value, str):
        return interned(_upper(name)), interned(value)
    if isinstance(value, Mapping):
        vector: Vector = {}
        for key, sub in value.items():
            if not isinstance(key, str) or not isinstance(sub, str):
                raise TypeError(f"vector attribute {name!r} must map str to str")
            vector.setdefault(interned(_upper(key)), interned(sub))
        return interned(_upper(name)), vector
    raise TypeError(
        f"template attribute value must be str or a mapping, not {type(value).__name__}"
    )


def _keep_last(attributes: list[tuple[str, Value]]) -> list[tuple[str, Value]]:
    """Replace-mode deduplication: each name keeps only its last occurrence."""
    last = {name: i for i, (name, _) in enumerate(attributes)}
    if len(last) == len(attributes):
        return attributes
    return [attr for i, attr in enumerate(attributes) if last[attr[0]] == i]


class Template:
    """An ordered multimap of attribute names to single or vector values.

    ``attributes`` holds ``(NAME, value)`` in template order; names and vector keys are
    upper-case (ASCII). In replace mode (host templates, driver ``DEFAULT`` files) a later
    occurrence of a name replaces the earlier one. Equality compares the attributes only,
    not the mode.
    """

    __slots__ = ("attributes", "replace_mode", "_info")
    __hash__ = None  # type: ignore[assignment]  # mutable

    def __init__(
        self, attributes: Iterable[tuple[str, Value]] = (), *, replace: bool = False
    ) -> None:
        normalized = [_normalize(name, value) for name, value in attributes]
        self.attributes: list[tuple[str, Value]] = _keep_last(normalized) if replace else normalized
        self.replace_mode = replace
        #: The last info_text and a copy of the attributes it was written from.
        self._info: tuple[list[tuple[str, Value]], str] | None = None

    @classmethod
    def _build(cls, attributes: list[tuple[str, Value]], replace: bool) -> Template:
        # For already-normalized attributes (parser, from_rows): skips re-validation.
        template = cls.__new__(cls)
        template.attributes = _keep_last(attributes) if replace else attributes
        template.replace_mode = replace
        template._info = None
        return template

    @classmethod
    def parse(cls, text: str, *, replace: bool = False) -> Template:
        """Parse template syntax. 1.2 requires every attribute (the last one too) to end
        with a newline; callers that append one, as oned does for VM templates, do so."""
        return cls._build(_parse(text), replace)

    @classmethod
    def parse_strict(cls, text: str, numeric: Mapping[str, str] = {}) -> Template:  # noqa: B006
        """Parse like :meth:`parse`, then also refuse what 1.2 let through only to fail
        later: a quote never closed (1.2 kept it as part of the word) and a single
        attribute named in ``numeric`` (name: what it counts) that is not a number.
        Every TemplateSyntaxError says the line and column."""
        attributes = _parse(text)
        tokens = _lex(text)
        for kind, word, start, end in tokens:
            if kind == _STRING and text[start] in "\"'" and word == text[start:end]:
                raise TemplateSyntaxError(
                    f"unterminated string {word}",
                    *text_position(text, start),
                    f"unterminated string, {text[start]} is never closed",
                )
        for index in range(len(tokens) - 2):
            name, equal, value = tokens[index : index + 3]
            at_line_start = index == 0 or tokens[index - 1][0] == _NL  # not a vector key
            wanted = numeric.get(_upper(name[1])) if name[0] == _STRING and at_line_start else None
            if wanted is None or equal[0] != _EQUAL or value[0] not in (_STRING, _NL):
                continue
            try:
                number = float(value[1])
            except ValueError:
                number = math.nan
            if not math.isfinite(number) or number < 0:
                shown = value[2] if value[0] == _STRING else equal[3]
                raise TemplateSyntaxError(
                    f"{_upper(name[1])} must be {wanted}, not {value[1]!r}",
                    *text_position(text, shown),
                    f"{_upper(name[1])} must be {wanted}, not {value[1]!r}",
                )
        return cls._build(attributes, False)

    # -- lookups (names are case-insensitive) ---------------------------------------

    def get(self, name: str) -> Value | None:
        """The first occurrence of *name*."""
        name = _upper(name)
        for attr_name, value in self.attributes:
            if attr_name == name:
                return value
        return None

    def get_string(self, name: str) -> str | None:
        """The first occurrence of *name* if it is a single value (like 1.2's lookups)."""
        value = self.get(name)
        return value if isinstance(value, str) else None

    def get_vector(self, name: str) -> Vector | None:
        """The first occurrence of *name* if it is a vector."""
        value = self.get(name)
        return value if isinstance(value, dict) else None

    def get_all(self, name: str) -> list[Value]:
        name = _upper(name)
        return [value for attr_name, value in self.attributes if attr_name == name]

    def vectors(self, name: str) -> list[Vector]:
        """Every vector occurrence of *name* (e.g. all ``DISK``s, in template order)."""
        return [value for value in self.get_all(name) if isinstance(value, dict)]

    # -- changes ----------------------------------------------------------------------

    def add(self, name: str, value: Value) -> None:
        """Append an occurrence; in replace mode it replaces any earlier ones."""
        attr = _normalize(name, value)
        if self.replace_mode:
            self.remove(attr[0])
        self.attributes.append(attr)

    def set(self, name: str, value: Value) -> None:
        """Drop every occurrence of *name* and append this one."""
        attr = _normalize(name, value)
        self.remove(attr[0])
        self.attributes.append(attr)

    def remove(self, name: str) -> list[Value]:
        """Drop every occurrence of *name*; returns their values."""
        name = _upper(name)
        removed = [value for attr_name, value in self.attributes if attr_name == name]
        if removed:
            self.attributes = [attr for attr in self.attributes if attr[0] != name]
        return removed

    def copy(self) -> Template:
        """An independent copy (vectors are copied too)."""
        return self._build(
            [(name, dict(v) if isinstance(v, dict) else v) for name, v in self.attributes],
            self.replace_mode,
        )

    # -- container protocol -----------------------------------------------------------

    def __iter__(self) -> Iterator[tuple[str, Value]]:
        return iter(self.attributes)

    def __len__(self) -> int:
        return len(self.attributes)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Template):
            return NotImplemented
        return self.attributes == other.attributes

    def __repr__(self) -> str:
        mode = ", replace=True" if self.replace_mode else ""
        return f"{type(self).__name__}({self.attributes!r}{mode})"

    # -- encodings --------------------------------------------------------------------

    def sorted_attributes(self) -> list[tuple[str, Value]]:
        """By name in byte order (1.2 keeps templates in a std::multimap); a repeated name
        keeps template order. Code point order of str equals UTF-8 byte order."""
        return sorted(self.attributes, key=itemgetter(0))

    def to_rows(self) -> list[tuple[str, int, str]]:
        """``(NAME, type, value)`` rows for vm_attributes/host_attributes/vn_template:
        type 0 single, 1 vector (``KEY=value`` sorted by key, joined with ``@^_^@``).
        Empty vectors produce no row, as 1.2 skips attributes that marshall to nothing."""
        rows: list[tuple[str, int, str]] = []
        for name, value in self.sorted_attributes():
            if isinstance(value, str):
                rows.append((name, 0, value))
            elif value:
                rows.append((name, 1, encode_vector(value)))
        return rows

    @classmethod
    def from_rows(cls, rows: Iterable[tuple[str, int, str]], *, replace: bool = False) -> Template:
        """Inverse of :meth:`to_rows`, keeping the rows' order; names and vector keys are
        upper-cased, a vector value is read with :func:`decode_vector`."""
        attributes: list[tuple[str, Value]] = []
        for name, kind, value in rows:
            kind = int(kind)
            if kind == 0:
                attributes.append((interned(_upper(name)), interned(value)))
            elif kind == 1:
                attributes.append(_normalize(name, decode_vector(value)))
            else:
                raise ValueError(f"attribute {name!r} has unknown type {kind!r}")
        return cls._build(attributes, replace)

    def info_text(self) -> str:
        """The template part of the 1.2 info documents: ``"\\n\\t" NAME "=" value`` per
        attribute in sorted order, vectors as ``KEY=value`` sorted by key joined with
        ``,``; no trailing newline. (1.2 crashes on an empty vector; here it shows empty.)

        Info calls ask for it again and again: the text is kept with a copy of the
        attributes it comes from, and written again when they differ (however they were
        changed: the attribute list is public).
        """
        cached = self._info
        if cached is not None and cached[0] == self.attributes:
            return cached[1]
        text = "".join(
            f"\n\t{name}={value if isinstance(value, str) else encode_vector(value, ',')}"
            for name, value in self.sorted_attributes()
        )
        # Single attributes are immutable tuples, shared; only vectors need a copy.
        snapshot = [a if isinstance(a[1], str) else (a[0], dict(a[1])) for a in self.attributes]
        self._info = (snapshot, text)
        return text

    def forget_info(self) -> None:
        """Drop the kept info_text (memory: see model.INFO_KEPT)."""
        self._info = None

    def to_text(self) -> str:
        """Template syntax that :meth:`parse` reads back to an equal template, one
        attribute per line in template order. An empty template gives ``"\\n"`` (the empty
        string is a syntax error). Raises ValueError for what the syntax cannot express:
        empty vectors, and words needing quotes that contain both ``"`` and ``'``."""
        lines = []
        for name, value in self.attributes:
            if isinstance(value, str):
                lines.append(f"{_word(name)} = {_word(value)}\n")
            elif value:
                pairs = ", ".join(f"{_word(k)} = {_word(v)}" for k, v in value.items())
                lines.append(f"{_word(name)} = [ {pairs} ]\n")
            else:
                raise ValueError(f"empty vector {name!r} cannot be written in template syntax")
        return "".join(lines) or "\n"
