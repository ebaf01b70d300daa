"""REQUIREMENTS and RANK expressions, as mm_sched evaluates them per host (templates.md §2).

Both grammars share 1.2's lexer. REQUIREMENTS is boolean: ``&``, ``|`` and prefix ``!`` have
one precedence and associate to the left, so ``A | B & C`` is ``(A | B) & C`` and ``! A & B``
is ``(! A) & B``. RANK is 32-bit integer arithmetic. Expressions compile once to closures
(cached, since the scheduler evaluates the same text on every host every cycle); evaluation
takes the host's monitored attributes, a mapping with upper-case names.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from functools import lru_cache

__all__ = [
    "ExpressionError",
    "compile_glob",
    "compile_rank",
    "compile_requirements",
    "rank",
    "requirements_match",
]

Attributes = Mapping[str, str]
Requirements = Callable[[Attributes], bool]
Rank = Callable[[Attributes], int]


class ExpressionError(ValueError):
    """A REQUIREMENTS or RANK expression does not parse."""


# --------------------------------------------------------------------------------------
# Integers: C int semantics.

_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1
_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


def _wrap32(value: int) -> int:
    return ((value - _INT_MIN) & 0xFFFFFFFF) + _INT_MIN


def _saturate(literal: str, low: int, high: int) -> int:
    """``[+-]digits`` clamped to [low, high], without building huge ints."""
    digits = literal.lstrip("+-").lstrip("0")
    if len(digits) > 20:
        return low if literal[0] == "-" else high
    return min(max(int(literal), low), high)


def _atoi(literal: str) -> int:
    # INTEGER tokens go through atoi(): strtol saturates at 64 bits, the cast to int wraps.
    return _wrap32(_saturate(literal, _LONG_MIN, _LONG_MAX))


# istringstream >> int: skip C-locale white space, optional sign, decimal digits; anything
# else reads as 0 (undefined in 1.2), overflow clamps (C++11 behaviour, undefined in 1.2).
_LEADING_INT = re.compile(r"[ \t\n\v\f\r]*([+-]?[0-9]+)")


def _attribute_int(value: str | None) -> int:
    """A host attribute as 1.2 reads it for numeric comparisons and RANK."""
    if not value:
        return 0
    m = _LEADING_INT.match(value)
    return _saturate(m.group(1), _INT_MIN, _INT_MAX) if m else 0


_ASCII_UPPER = str.maketrans("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _upper(name: str) -> str:
    # Template::get upper-cases the name with toupper() in the C locale: ASCII only.
    return name.upper() if name.isascii() else name.translate(_ASCII_UPPER)


# --------------------------------------------------------------------------------------
# Glob matching: fnmatch(pattern, value, 0) as glibc does it in the C locale mm_sched runs
# in, i.e. on bytes. Python's fnmatch differs ('[^...]' is not a negation, '\' does not
# escape, no '[:class:]'), hence this implementation.

_CLASSES: dict[bytes, frozenset[int]] = {
    b"alpha": frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"),
    b"digit": frozenset(b"0123456789"),
    b"upper": frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    b"lower": frozenset(b"abcdefghijklmnopqrstuvwxyz"),
    b"space": frozenset(b" \t\n\v\f\r"),
    b"blank": frozenset(b" \t"),
    b"cntrl": frozenset([*range(32), 127]),
    b"print": frozenset(range(32, 127)),
    b"graph": frozenset(range(33, 127)),
    b"xdigit": frozenset(b"0123456789ABCDEFabcdef"),
}
_CLASSES[b"alnum"] = _CLASSES[b"alpha"] | _CLASSES[b"digit"]
_CLASSES[b"punct"] = _CLASSES[b"graph"] - _CLASSES[b"alnum"]

_ANY_BYTE = frozenset(range(256))
_NO_BYTE: frozenset[int] = frozenset()
_STAR = None  # pattern element matching any sequence; the others are sets of bytes
_GlobElement = frozenset[int] | None

_STAR_B, _QUESTION_B, _BACKSLASH_B, _OPEN_B, _CLOSE_B = b"*?\\[]"
_DASH_B, _COLON_B, _EQUALS_B, _DOT_B = b"-:=."


def _to_bytes(s: str) -> bytes:
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # lone surrogates that surrogateescape cannot restore
        return s.encode("utf-8", "surrogatepass")


def _class_end(p: bytes, i: int) -> int:
    """Index of the ':]' closing a class name that starts at *i*, or -1 if glibc would not
    read a class there: it gives up at a byte outside 'a'..'y' (sic), and then takes the
    '[' literally."""
    for j in range(i, len(p)):
        if p[j] == _COLON_B and p[j + 1 : j + 2] == b"]":
            return j
        if not 97 <= p[j] < 122:
            return -1
    return -1


def _bracket(p: bytes, i: int) -> tuple[frozenset[int], int]:
    """The bracket expression whose ``[`` precedes ``p[i]``: the set of bytes it accepts
    and the index after its ``]`` (-1 if there is none).

    glibc walks the items in order for the byte at hand and stops at the first that
    matches; an ill-formed item reached before that (unknown class, range without an end,
    bad collating symbol) fails the whole match. So the bytes accepted are those matched by
    the items before the first ill-formed one.
    """
    n = len(p)
    negate = i < n and p[i] in b"!^"
    if negate:
        i += 1
    accepted: set[int] = set()
    cut: frozenset[int] | None = None  # what was accepted before the first ill-formed item
    first = True
    while True:
        if i >= n:
            # Unterminated: the '[' is an ordinary character and the pattern resumes after
            # it, unless walking the items for '[' runs into an ill-formed one.
            literal = cut is None or _OPEN_B in cut
            return (frozenset((_OPEN_B,)) if literal else _NO_BYTE), -1
        c = p[i]
        if c == _CLOSE_B and not first:
            break
        first = False
        nxt = p[i + 1] if i + 1 < n else -1
        if c == _BACKSLASH_B:
            if nxt < 0:
                return _NO_BYTE, -1
            low, i = nxt, i + 2
        elif c == _OPEN_B and nxt == _COLON_B and (end := _class_end(p, i + 2)) >= 0:
            members = _CLASSES.get(p[i + 2 : end])
            if members is None:
                cut = frozenset(accepted) if cut is None else cut
            else:
                accepted.update(members)
            i = end + 2
            continue
        elif c == _OPEN_B and nxt == _EQUALS_B and p[i + 3 : i + 5] == b"=]":
            accepted.add(p[i + 2])  # '[=c=]': in the C locale, just c
            i += 5
            continue
        elif c == _OPEN_B and nxt == _DOT_B:
            # '[.c.]' is c (and may start a range); the C locale has no longer collating
            # symbols, and without '.]' nothing can match.
            end = p.find(b".]", i + 2)
            if end < 0:
                return _NO_BYTE, -1
            if end != i + 3:
                cut = frozenset(accepted) if cut is None else cut
                i = end + 2
                continue
            low, i = p[i + 2], i + 5
        else:
            low, i = c, i + 1
        # 'low-high' is a range unless the '-' is last before ']'.
        if i < n and p[i] == _DASH_B and (i + 1 >= n or p[i + 1] != _CLOSE_B):
            high, i = (p[i + 1] if i + 1 < n else -1), i + 2
            if high == _BACKSLASH_B:
                high, i = (p[i] if i < n else -1), i + 1
            elif high == _OPEN_B and i < n and p[i] == _DOT_B:  # 'a-[.c.]'
                end = p.find(b".]", i + 1)
                if end < 0:
                    return _NO_BYTE, -1
                if end != i + 2:
                    cut = frozenset(accepted) if cut is None else cut
                    i = end + 2
                    continue
                high, i = p[i + 1], end + 2
            if high < 0:  # the pattern ends inside the range: nothing can match
                return _NO_BYTE, -1
            accepted.update(range(low, high + 1))
        else:
            accepted.add(low)
    if cut is not None:
        # Bytes that reach the ill-formed item fail; with negation matched ones fail too.
        return (_NO_BYTE if negate else cut), i + 1
    return (_ANY_BYTE - accepted if negate else frozenset(accepted)), i + 1


def _glob_elements(pattern: bytes) -> list[_GlobElement]:
    elements: list[_GlobElement] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == _STAR_B:
            if not elements or elements[-1] is not _STAR:
                elements.append(_STAR)
        elif c == _QUESTION_B:
            elements.append(_ANY_BYTE)
        elif c == _BACKSLASH_B:
            # A trailing backslash can never be matched.
            elements.append(frozenset(pattern[i : i + 1]))
            i += 1
        elif c == _OPEN_B:
            accepted, after = _bracket(pattern, i)
            elements.append(accepted)
            if after >= 0:
                i = after
        else:
            elements.append(frozenset((c,)))
    return elements


def _glob_run(elements: list[_GlobElement], s: bytes) -> bool:
    # Every element but '*' consumes exactly one byte, so backtracking to the latest '*'
    # is enough (linear-time per '*', unlike glibc's recursion).
    p = n = 0
    star_p, star_n = -1, 0
    size, count = len(s), len(elements)
    while n < size:
        if p < count:
            element = elements[p]
            if element is _STAR:
                p += 1
                star_p, star_n = p, n
                continue
            if s[n] in element:
                p += 1
                n += 1
                continue
        if star_p < 0:
            return False
        star_n += 1
        p, n = star_p, star_n
    while p < count and elements[p] is _STAR:
        p += 1
    return p == count


def compile_glob(pattern: str) -> Callable[[str], bool]:
    """A predicate for ``fnmatch(pattern, value, 0) == 0`` in the C locale, checked
    against glibc. Known difference: inside a bracket, glibc takes a '[' ending a range
    ('a-[') as a plain character but then, if an earlier item matched, skips a following
    ':...:]' or '=...=]' as if it were a class; here the bracket always ends at the same
    place."""
    if not any(c in pattern for c in "*?[\\"):
        return pattern.__eq__
    elements = _glob_elements(_to_bytes(pattern))
    return lambda value: _glob_run(elements, _to_bytes(value))


# --------------------------------------------------------------------------------------
# Lexer (host_parser.l). A NAME and a quoted string are the same token (STRING), so a
# quoted left operand names an attribute too. Characters 1.2 silently drops are errors,
# except line breaks: 1.2 dropped them, so a REQUIREMENTS written over several lines
# worked, and treating them as blanks keeps such templates working.

_INTEGER, _STRING, _END = "INTEGER", "STRING", "$end"
_BLANKS = re.compile(r"[ \t\r\n]*")
_TOKEN = re.compile(
    r'(?P<int>-?[0-9]+)|(?P<name>[A-Za-z][0-9A-Za-z_]*)|"(?P<str>[^"]*)"|(?P<op>[!&|=><()*+/^-])'
)
_Token = tuple[str, int | str, int, int]  # kind, value, start, end
_MAX_NESTING = 100  # keeps the recursive parser and the closures within Python's stack


def _location(text: str, start: int, end: int) -> str:
    first = len(_to_bytes(text[:start]))
    return f"at line 1, columns {first}:{first + len(_to_bytes(text[start:end]))}"


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    size = len(text)
    pos = _BLANKS.match(text).end()
    last = (0, pos)  # flex leaves $end at the last lexeme, blanks included
    while pos < size:
        m = _TOKEN.match(text, pos)
        if m is None:
            raise ExpressionError(
                f"syntax error, unexpected character {text[pos]!r} {_location(text, pos, pos + 1)}"
            )
        kind, end = m.lastgroup, m.end()
        if kind == "op":
            tokens.append((m[kind], "", pos, end))
        elif kind == "int":
            tokens.append((_INTEGER, _atoi(m[kind]), pos, end))
        else:
            tokens.append((_STRING, m[kind], pos, end))
        last = (pos, end)
        pos = _BLANKS.match(text, end).end()
        if pos > end:
            last = (end, pos)
    tokens.append((_END, "", *last))
    return tokens


class _Parser:
    """Recursive descent over the token list; produces evaluation closures."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0
        self.depth = 0

    @property
    def kind(self) -> str:
        return self.tokens[self.index][0]

    def take(self) -> _Token:
        token = self.tokens[self.index]
        self.index += 1
        return token

    def error(self, expecting: str) -> ExpressionError:
        kind, _, start, end = self.tokens[self.index]
        shown = kind if kind in (_INTEGER, _STRING, _END) else f"'{kind}'"
        return ExpressionError(
            f"syntax error, unexpected {shown}, expecting {expecting} "
            f"{_location(self.text, start, end)}"
        )

    def expect(self, kind: str, expecting: str) -> _Token:
        if self.kind != kind:
            raise self.error(expecting)
        return self.take()

    def nest(self) -> None:
        self.depth += 1
        if self.depth > _MAX_NESTING:
            _, _, start, end = self.tokens[self.index]
            raise ExpressionError(
                f"expression nested too deeply {_location(self.text, start, end)}"
            )

    def finish(self, expecting: str) -> None:
        if self.kind != _END:
            raise self.error(expecting)

    # -- REQUIREMENTS ------------------------------------------------------------------

    def condition(self) -> Requirements:
        """``operand (('&' | '|') operand)*`` folded strictly left to right."""
        first = self.operand()
        rest: list[tuple[bool, Requirements]] = []
        while self.kind in ("&", "|"):
            is_and = self.take()[0] == "&"
            rest.append((is_and, self.operand()))
        if not rest:
            return first

        def evaluate(attributes: Attributes) -> bool:
            result = first(attributes)
            for is_and, operand in rest:
                # 'x & y' only needs y when x holds, 'x | y' only when it does not.
                if result == is_and:
                    result = operand(attributes)
            return result

        return evaluate

    def operand(self) -> Requirements:
        """``'!'* (comparison | '(' condition ')')``: a '!' applies to what follows it
        only (bison reduces '! x' before shifting an operator of equal precedence)."""
        negations = 0
        while self.kind == "!":
            self.take()
            negations += 1
        if self.kind == "(":
            self.take()
            self.nest()
            inner = self.condition()
            self.depth -= 1
            self.expect(")", "'&' or '|' or ')'")
        elif self.kind == _STRING:
            inner = self.comparison()
        else:
            raise self.error("'!' or '(' or STRING")
        if negations % 2:
            return lambda attributes: not inner(attributes)
        return inner

    def comparison(self) -> Requirements:
        name = _upper(str(self.take()[1]))
        if self.kind == "!":
            self.take()
            self.expect("=", "'='")
            op = "!="
        elif self.kind in ("=", ">", "<"):
            op = self.take()[0]
        else:
            raise self.error("'!' or '=' or '>' or '<'")
        if self.kind == _INTEGER:
            return _numeric_test(name, op, int(self.take()[1]))
        if self.kind == _STRING and op in ("=", "!="):
            return _glob_test(name, str(self.take()[1]), op == "!=")
        raise self.error("INTEGER or STRING" if op in ("=", "!=") else "INTEGER")

    # -- RANK --------------------------------------------------------------------------

    def sum(self) -> Rank:
        """``product (('+' | '-') product)*``, left-associative."""
        first = self.product()
        rest: list[tuple[bool, Rank]] = []
        while self.kind in ("+", "-"):
            subtract = self.take()[0] == "-"
            rest.append((subtract, self.product()))
        if not rest:
            return first

        def evaluate(attributes: Attributes) -> int:
            value = first(attributes)
            for subtract, term in rest:
                value = _wrap32(value - term(attributes) if subtract else value + term(attributes))
            return value

        return evaluate

    def product(self) -> Rank:
        """``factor (('*' | '/') factor)*``, left-associative."""
        first = self.factor()
        rest: list[tuple[bool, Rank]] = []
        while self.kind in ("*", "/"):
            divide = self.take()[0] == "/"
            rest.append((divide, self.factor()))
        if not rest:
            return first

        def evaluate(attributes: Attributes) -> int:
            value = first(attributes)
            for divide, factor in rest:
                operand = factor(attributes)
                value = _divide(value, operand) if divide else _wrap32(value * operand)
            return value

        return evaluate

    def factor(self) -> Rank:
        """Unary minus has the precedence of binary '-' in 1.2, so it negates the whole
        product that follows: ``- A * B`` is ``-(A * B)``."""
        kind = self.kind
        if kind == "-":
            negations = 0
            while self.kind == "-":
                self.take()
                negations += 1
            self.nest()
            operand = self.product()
            self.depth -= 1
            if negations % 2:
                return lambda attributes: _wrap32(-operand(attributes))
            return operand
        if kind == _STRING:
            name = _upper(str(self.take()[1]))
            return lambda attributes: _attribute_int(attributes.get(name))
        if kind == _INTEGER:
            value = int(self.take()[1])
            return lambda attributes: value
        if kind == "(":
            self.take()
            self.nest()
            inner = self.sum()
            self.depth -= 1
            self.expect(")", "'+' or '-' or '*' or '/' or ')'")
            return inner
        raise self.error("'-' or '(' or INTEGER or STRING")


def _divide(dividend: int, divisor: int) -> int:
    # C division truncates toward zero; 1.2 crashes on zero, we define it as 0.
    if divisor == 0:
        return 0
    quotient = abs(dividend) // abs(divisor)
    return _wrap32(-quotient if (dividend < 0) != (divisor < 0) else quotient)


def _numeric_test(name: str, op: str, number: int) -> Requirements:
    if op == "=":
        return lambda attributes: _attribute_int(attributes.get(name)) == number
    if op == "!=":
        return lambda attributes: _attribute_int(attributes.get(name)) != number
    if op == ">":
        return lambda attributes: _attribute_int(attributes.get(name)) > number
    return lambda attributes: _attribute_int(attributes.get(name)) < number


def _glob_test(name: str, pattern: str, negate: bool) -> Requirements:
    matches = compile_glob(pattern)

    # A missing or empty attribute fails both '=' and '!=' (1.2 tests for "" first).
    def test(attributes: Attributes) -> bool:
        value = attributes.get(name)
        return bool(value) and matches(value) != negate

    return test


def _always_true(attributes: Attributes) -> bool:
    return True


def _zero(attributes: Attributes) -> int:
    return 0


@lru_cache(maxsize=1024)
def compile_requirements(text: str) -> Requirements:
    """Compile a REQUIREMENTS expression; the empty expression accepts every host.
    Raises :class:`ExpressionError` on a syntax error."""
    parser = _Parser(text)
    if parser.kind == _END:
        return _always_true
    condition = parser.condition()
    parser.finish("'&' or '|' or $end")
    return condition


@lru_cache(maxsize=1024)
def compile_rank(text: str) -> Rank:
    """Compile a RANK expression; the empty expression ranks 0. Raises
    :class:`ExpressionError` on a syntax error."""
    parser = _Parser(text)
    if parser.kind == _END:
        return _zero
    value = parser.sum()
    parser.finish("'+' or '-' or '*' or '/' or $end")
    return value


def requirements_match(text: str, attributes: Attributes) -> bool:
    """Whether a host with *attributes* satisfies REQUIREMENTS *text*. A syntax error
    raises :class:`ExpressionError` (the scheduler then treats the host as unsuitable)."""
    return compile_requirements(text)(attributes)


def rank(text: str, attributes: Attributes) -> int:
    """RANK *text* for a host with *attributes*; 0 if the expression does not parse."""
    try:
        return compile_rank(text)(attributes)
    except ExpressionError:
        return 0
