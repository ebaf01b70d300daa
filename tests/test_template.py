"""The 1.2 template language: nebula_xr.template (templates.md §1, database.md §3,
xmlrpc-api.md §3). Expected error messages were produced by the parser of OpenNebula 1.2
(its generated flex/bison sources compiled as they are)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nebula_xr.template import (
    Template,
    TemplateSyntaxError,
    decode_vector,
    encode_vector,
)


def parse(text: str, **kwargs: bool) -> list[tuple[str, object]]:
    return Template.parse(text, **kwargs).attributes


# --------------------------------------------------------------------------------------
# templates.md §1.3 table, every row


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name = vm-example  # c\n", [("NAME", "vm-example")]),
        ("Cpu=0.5\n", [("CPU", "0.5")]),
        ("EMPTY =\n", [("EMPTY", "")]),
        ('X = "a=b,c#d"\n', [("X", "a=b,c#d")]),
        (
            'DISK = [ source="/a b/img", target=sda1,\n  readonly = no ]\n',
            [("DISK", {"READONLY": "no", "SOURCE": "/a b/img", "TARGET": "sda1"})],
        ),
        (
            "RAW=[type=xen, data='on_crash=\"destroy\"']\n",
            [("RAW", {"TYPE": "xen", "DATA": 'on_crash="destroy"'})],
        ),
    ],
)
def test_spec_table_valid_rows(text: str, expected: list[tuple[str, object]]) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    "text", ["A = hello world\n", 'RAW=[type=xen, data="on_crash=\\"destroy\\""]\n']
)
def test_spec_table_error_rows(text: str) -> None:
    with pytest.raises(TemplateSyntaxError):
        Template.parse(text)


def test_spec_table_disk_row_display_and_storage() -> None:
    t = Template.parse('DISK = [ source="/a b/img", target=sda1,\n  readonly = no ]\n')
    assert t.info_text() == "\n\tDISK=READONLY=no,SOURCE=/a b/img,TARGET=sda1"
    assert t.to_rows() == [("DISK", 1, "READONLY=no@^_^@SOURCE=/a b/img@^_^@TARGET=sda1")]


# --------------------------------------------------------------------------------------
# Lexical rules


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # comments and blanks
        ("# only a comment\n", []),
        ("\n\n  \n\t\n", []),
        ("A = abc#def\n", [("A", "abc")]),
        ("A = # nothing\n", [("A", "")]),
        ("\tA\t=\t1\t\n", [("A", "1")]),
        ("A = '#not a comment'\n", [("A", "#not a comment")]),
        # newlines absorbed before '=', around ',' and '[', before ']'
        ("A\n\n  = 1\n", [("A", "1")]),
        ("A # c\n = 1\n", [("A", "1")]),
        ("A =\n[\n\na = 1\n\n,\n\nb = 2\n\n]\n", [("A", {"A": "1", "B": "2"})]),
        ("A = # c\n [ x = 1 ]\n", [("A", {"X": "1"})]),
        ("A = [ a = 1 ] # c\n", [("A", {"A": "1"})]),
        # words
        ('A = "two words"\n', [("A", "two words")]),
        ("A = 'it\"s'\n", [("A", 'it"s')]),
        ('A = "multi\nline"\n', [("A", "multi\nline")]),
        ('A = ""\n', [("A", "")]),
        ('"" = ""\n', [("", "")]),
        ('"lower name" = x\n', [("LOWER NAME", "x")]),
        ('A = "a"b\n', [("A", '"a"b')]),  # the bare reading is longer: quotes kept
        ('A = "abc\n', [("A", '"abc')]),  # unterminated quote: an ordinary character
        ("A = x'y\"z\n", [("A", "x'y\"z")]),
        ("A = /a/b:c;d!e@f\n", [("A", "/a/b:c;d!e@f")]),
        # CR, form feed and NUL are ordinary characters
        ("A = 1\r\n", [("A", "1\r")]),
        ("A =\f1\n", [("A", "\f1")]),
        ("A = a\x00b\n", [("A", "a\x00b")]),
        # names and keys upper-cased in ASCII only; values keep their case
        ("éa = Mixed\n", [("éA", "Mixed")]),
        ("V = [ straße = ß ]\n", [("V", {"STRAßE": "ß"})]),
        # repeated vector key: first value wins; repeated names are kept in order
        ("V = [ k = 1, K = 2 ]\n", [("V", {"K": "1"})]),
        ("A = 1\nB = 2\nA = 3\n", [("A", "1"), ("B", "2"), ("A", "3")]),
    ],
)
def test_lexical_rules(text: str, expected: list[tuple[str, object]]) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("A = hello world\n", "unexpected STRING, expecting NL at line 1, columns 10:15"),
        ("A = 1", "unexpected $end, expecting NL at line 1, columns 4:5"),
        ("", "unexpected $end, expecting NL or STRING at line 1, columns 0:0"),
        ("  # only a comment", "unexpected $end, expecting NL or STRING at line 1, columns 0:18"),
        ("A = 1 # comment", "unexpected $end, expecting NL at line 1, columns 5:15"),
        ("A = ", "unexpected $end, expecting OBRACKET or NL or STRING at line 1, columns 1:4"),
        ("A = [a=1]", "unexpected $end, expecting NL at line 1, columns 8:9"),
        # lines come from yylineno after the token; columns never reset at newlines
        ("A = 1\nB\n", "unexpected NL, expecting EQUAL at line 3, columns 7:8"),
        ("A =\n1\n", "unexpected NL, expecting EQUAL at line 3, columns 5:6"),
        ("A = [a=1]\n b\n", "unexpected NL, expecting EQUAL at line 3, columns 12:13"),
        (
            "DISK = [ a = 1,\n b = 2 ]\n\nNAME = x y\n",
            "unexpected STRING, expecting NL at line 4, columns 35:36",
        ),
        ('A = "x\ny" z\n', "unexpected STRING, expecting NL at line 2, columns 10:11"),
        ("A = 1\n]\n", "unexpected CBRACKET, expecting NL at line 2, columns 5:7"),
        ("X = []\n", "unexpected CBRACKET, expecting STRING at line 1, columns 5:6"),
        ("X=[a=]\n", "unexpected CBRACKET, expecting STRING at line 1, columns 5:6"),
        ("A = [ a = 1, ]\n", "unexpected CBRACKET, expecting STRING at line 1, columns 13:14"),
        ("A = [b = [c = 1]]\n", "unexpected OBRACKET, expecting STRING at line 1, columns 9:10"),
        (
            "A = [a=1 b=2]\n",
            "unexpected STRING, expecting COMMA or CBRACKET at line 1, columns 9:10",
        ),
        ("=\n", "unexpected EQUAL, expecting NL or STRING at line 1, columns 0:1"),
        ("A = 1\n=\n", "unexpected EQUAL, expecting NL at line 2, columns 5:7"),
        ("A = 1\n,\n", "unexpected COMMA, expecting NL at line 3, columns 5:8"),
        ("A = 1 = 2\n", "unexpected EQUAL, expecting NL at line 1, columns 5:8"),
        ('A = "a b"c\n', "unexpected STRING, expecting NL at line 1, columns 9:10"),
        ("A = 1 \r\n", "unexpected STRING, expecting NL at line 1, columns 6:7"),
        ("é = ü ö\n", "unexpected STRING, expecting NL at line 1, columns 8:10"),  # bytes
        ("A = 1\n]", "unexpected CBRACKET, expecting NL at line 2, columns 5:7"),
        ("A = 1\nB = 2\n[\n", "unexpected OBRACKET, expecting NL at line 4, columns 11:14"),
    ],
)
def test_syntax_errors_match_1_2_messages(text: str, message: str) -> None:
    with pytest.raises(TemplateSyntaxError) as error:
        Template.parse(text)
    assert str(error.value) == f"syntax error, {message}"


def test_syntax_error_is_a_value_error() -> None:
    assert issubclass(TemplateSyntaxError, ValueError)


def test_parse_does_not_append_the_final_newline() -> None:
    with pytest.raises(TemplateSyntaxError):
        Template.parse("NAME = x")
    assert Template.parse("NAME = x" + "\n").get("name") == "x"
    assert len(Template.parse("\n")) == 0


def test_replace_mode_keeps_the_last_occurrence() -> None:
    text = "A = 1\nB = 2\nA = [ x = 3 ]\n"
    assert parse(text, replace=True) == [("B", "2"), ("A", {"X": "3"})]
    assert parse(text) == [("A", "1"), ("B", "2"), ("A", {"X": "3"})]


# --------------------------------------------------------------------------------------
# Container API


def test_lookups() -> None:
    t = Template.parse("NAME = a\nDISK = [ s = 1 ]\nDISK = [ s = 2 ]\nname = b\nOS = x\n")
    assert t.get("name") == "a"
    assert t.get("Disk") == {"S": "1"}
    assert t.get("missing") is None
    assert t.get_string("NAME") == "a"
    assert t.get_string("DISK") is None  # first occurrence is a vector
    assert t.get_vector("disk") == {"S": "1"}
    assert t.get_vector("NAME") is None
    assert t.get_all("name") == ["a", "b"]
    assert t.vectors("DISK") == [{"S": "1"}, {"S": "2"}]
    assert t.vectors("OS") == []
    assert len(t) == 5
    assert list(t)[:2] == [("NAME", "a"), ("DISK", {"S": "1"})]


def test_constructor_normalizes() -> None:
    t = Template([("cpu", "1"), ("disk", {"source": "a", "SOURCE": "b"})])
    assert t.attributes == [("CPU", "1"), ("DISK", {"SOURCE": "a"})]
    assert Template([("a", "1"), ("A", "2")], replace=True).attributes == [("A", "2")]
    with pytest.raises(TypeError):
        Template([("A", 1)])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        Template([("A", {"K": 1})])  # type: ignore[dict-item]


def test_add_set_remove() -> None:
    t = Template()
    t.add("a", "1")
    t.add("b", {"k": "v"})
    t.add("a", "2")
    assert t.attributes == [("A", "1"), ("B", {"K": "v"}), ("A", "2")]
    t.set("a", "3")
    assert t.attributes == [("B", {"K": "v"}), ("A", "3")]
    assert t.remove("b") == [{"K": "v"}]
    assert t.remove("b") == []
    assert t.attributes == [("A", "3")]

    r = Template(replace=True)
    r.add("x", "1")
    r.add("y", "2")
    r.add("X", "3")
    assert r.attributes == [("Y", "2"), ("X", "3")]


def test_copy_is_deep_and_equality_ignores_mode() -> None:
    t = Template.parse("D = [ a = 1 ]\n")
    c = t.copy()
    assert c == t and c is not t
    c.get_vector("D")["A"] = "2"  # type: ignore[index]
    assert t.get_vector("D") == {"A": "1"}
    assert Template([("A", "1")], replace=True) == Template([("A", "1")])
    assert Template([("A", "1"), ("B", "2")]) != Template([("B", "2"), ("A", "1")])
    assert Template() != [("A", "1")]


def test_repr_round_trips() -> None:
    t = Template([("A", "1"), ("D", {"K": "v"})], replace=True)
    assert repr(t) == "Template([('A', '1'), ('D', {'K': 'v'})], replace=True)"
    assert eval(repr(t), {"Template": Template}) == t  # noqa: S307


def test_sorted_attributes_byte_order_and_stable() -> None:
    t = Template([("a_b", "1"), ("ab", "2"), ("Z", "3"), ("é", "4"), ("AB", "5")])
    assert t.sorted_attributes() == [
        ("AB", "2"),
        ("AB", "5"),
        ("A_B", "1"),
        ("Z", "3"),
        ("é", "4"),
    ]


# --------------------------------------------------------------------------------------
# Storage form (database.md §3) and display form (xmlrpc-api.md §3)


def test_to_rows_database_example() -> None:
    t = Template.parse('NAME = x\nDISK=[source="/img/a.img", target=sda1, readonly=no]\nCPU = 1\n')
    assert t.to_rows() == [
        ("CPU", 0, "1"),
        ("DISK", 1, "READONLY=no@^_^@SOURCE=/img/a.img@^_^@TARGET=sda1"),
        ("NAME", 0, "x"),
    ]


def test_to_rows_skips_empty_vectors() -> None:
    # 1.2 writes no row for an attribute that marshalls to nothing.
    assert Template([("E", {}), ("A", "")]).to_rows() == [("A", 0, "")]


def test_from_rows() -> None:
    rows = [
        ("name", 0, "x=y"),
        ("DISK", 1, "READONLY=no@^_^@SOURCE=/a=b@^_^@junk@^_^@@^_^@source=again"),
        ("DISK", "1", "TARGET=sda"),
    ]
    t = Template.from_rows(rows)
    assert t.attributes == [
        ("NAME", "x=y"),
        ("DISK", {"READONLY": "no", "SOURCE": "/a=b"}),
        ("DISK", {"TARGET": "sda"}),
    ]
    assert Template.from_rows(rows, replace=True).get_all("DISK") == [{"TARGET": "sda"}]
    with pytest.raises(ValueError, match="unknown type"):
        Template.from_rows([("A", 2, "x")])


def test_vector_codec() -> None:
    assert encode_vector({"B": "2", "A": "1=1"}) == "A=1=1@^_^@B=2"
    assert encode_vector({"B": "2", "A": "1"}, ",") == "A=1,B=2"
    assert decode_vector("A=1=1@^_^@B=2@^_^@A=3@^_^@x") == {"A": "1=1", "B": "2"}
    assert decode_vector("") == {}


def test_info_text_vm_example() -> None:
    t = Template.parse(
        "NAME = vm-example\nCPU = 0.5\nMEMORY = 128\n"
        'OS = [ kernel = "/vmlinuz", initrd = "/initrd.img", root = "sda1" ]\n'
        'DISK = [ source = "/srv/images/etch.img", target = "sda1", readonly = "no" ]\n'
        'NIC = [ NETWORK = "Private LAN", MAC = 00:03:0a:00:00:01, IP = 10.0.0.1,'
        " BRIDGE = eth0, VNID = 0 ]\n"
    )
    assert t.info_text() == (
        "\n\tCPU=0.5"
        "\n\tDISK=READONLY=no,SOURCE=/srv/images/etch.img,TARGET=sda1"
        "\n\tMEMORY=128"
        "\n\tNAME=vm-example"
        "\n\tNIC=BRIDGE=eth0,IP=10.0.0.1,MAC=00:03:0a:00:00:01,NETWORK=Private LAN,VNID=0"
        "\n\tOS=INITRD=/initrd.img,KERNEL=/vmlinuz,ROOT=sda1"
    )


def test_info_text_repeats_and_empty() -> None:
    t = Template.parse("D = [ b = 2 ]\nA =\nD = [ a = 1 ]\n")
    assert t.info_text() == "\n\tA=\n\tD=B=2\n\tD=A=1"
    assert Template().info_text() == ""
    assert Template([("E", {})]).info_text() == "\n\tE="


# --------------------------------------------------------------------------------------
# Writing template syntax


def test_to_text_quotes_as_needed() -> None:
    t = Template(
        [
            ("NAME", "plain"),
            ("Q", 'say "hi" there'),
            ("S", "it's ok"),
            ("E", ""),
            ("N", "two\nlines"),
            ("B", "x\"y'z"),  # both quotes, but a valid bare word
            ("L", '"lead'),
            ("D", {"SOURCE": "/a b", "TARGET": "sda"}),
            ("W", "a=b,c#d[e]"),
        ]
    )
    text = t.to_text()
    assert text.startswith("NAME = plain\n")
    assert Template.parse(text) == t


@pytest.mark.parametrize(
    "template",
    [
        Template([("A", "both \" and ' quoted")]),
        Template([("A", "\"a'")]),
        Template([("A", {})]),
    ],
)
def test_to_text_refuses_what_1_2_cannot_express(template: Template) -> None:
    with pytest.raises(ValueError):
        template.to_text()


def test_to_text_empty_template_parses() -> None:
    assert Template().to_text() == "\n"
    assert Template.parse(Template().to_text()) == Template()


# --------------------------------------------------------------------------------------
# Robustness and performance


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("\n" * 200_000 + "A = 1\n", id="blank-lines"),
        pytest.param("A" + " \n" * 200_000 + "= 1\n", id="absorbed-newlines"),
        pytest.param("A = [" + "a=1," * 20_000 + "b=2]\n", id="long-vector"),
        pytest.param("A = 1\n" * 20_000, id="many-attributes"),
    ],
)
def test_large_valid_inputs(text: str) -> None:
    assert Template.parse(text, replace=True).get("A") is not None


@pytest.mark.parametrize(
    "text",
    [
        pytest.param('"' * 100_000, id="quotes"),
        pytest.param("'a b" * 20_000, id="unterminated-quotes"),
        pytest.param("[" * 20_000, id="brackets"),
        pytest.param("# " * 100_000, id="comment"),
        pytest.param("=" * 20_000, id="equals"),
    ],
)
def test_large_invalid_inputs(text: str) -> None:
    with pytest.raises(TemplateSyntaxError):
        Template.parse(text)


_SPECIAL = st.sampled_from(list("=#,[]\"' \t\n\r\x00aZé\u2028\udc80"))


@settings(max_examples=150)
@given(st.one_of(st.text(st.characters(blacklist_categories=())), st.text(_SPECIAL)))
def test_parser_raises_only_syntax_errors(text: str) -> None:
    try:
        t = Template.parse(text)
    except TemplateSyntaxError as error:
        assert str(error).startswith("syntax error, unexpected ")
    else:
        assert text.endswith("\n") or text.rstrip(" \t").endswith("\n") or "#" in text
        for name, value in t:
            assert name == name.upper() or not name.isascii()
            assert isinstance(value, str) or value


# Words mixing the characters that need quoting, the quote characters and ordinary ones.
_words = st.text(st.sampled_from(list("ab=#,[] \t\n\r\"'é/:.") + ["\x00"]), max_size=8)
_names = _words.map(lambda s: s.upper() if s.isascii() else s)
_vectors = st.dictionaries(_names, _words, min_size=1, max_size=3)
_templates = st.lists(st.tuples(_names, st.one_of(_words, _vectors)), max_size=6).map(Template)


def _bare(word: str) -> bool:
    """templates.md §1.1: a bare word has none of = # blank newline , [ ]; one starting
    with a quote would be read as a quoted word."""
    return re.fullmatch(r"[^=#\t\n ,\[\]\"'][^=#\t\n ,\[\]]*", word) is not None


@given(_templates)
def test_to_text_round_trip(t: Template) -> None:
    words = [name for name, _ in t]
    for _, value in t:
        words += [*value.keys(), *value.values()] if isinstance(value, dict) else [value]
    if any('"' in w and "'" in w and not _bare(w) for w in words):
        with pytest.raises(ValueError):
            t.to_text()
    else:
        assert Template.parse(t.to_text()) == t


@given(_templates)
def test_rows_round_trip(t: Template) -> None:
    # 1.2's storage cannot hold '=' in a vector key (nor the separator in a value).
    t = Template(
        (n, {k: x for k, x in v.items() if "=" not in k} if isinstance(v, dict) else v)
        for n, v in t
    )
    expected = [(n, v) for n, v in t.sorted_attributes() if v != {}]
    assert Template.from_rows(t.to_rows()).attributes == expected


_blank = st.sampled_from(["", " ", "\t", "  \t"])
# Before '=' ',' '[' ']' newlines are absorbed, and a comment may end the line first;
# after ',' and '[' only blanks and newlines are.
_before_op = st.sampled_from(["", " ", "\n", "\n\n", " \n\t", " # c\n", "\t# c\n \n"])
_after_op = st.sampled_from(["", " ", "\n", "\n\t\n ", "\t"])


@st.composite
def _formatted(draw: st.DrawFn) -> tuple[str, list[tuple[str, object]]]:
    """A template written with random blanks, comments, quoting and absorbed newlines,
    and the attributes it holds."""
    simple = st.text("abcXYZ019_./:-", min_size=1, max_size=6)

    def word(w: str) -> str:
        quote = draw(st.sampled_from(["", '"', "'"]))
        return f"{quote}{w}{quote}"

    parts, expected = [], []
    for _ in range(draw(st.integers(0, 5))):
        name = draw(simple)
        parts.append(draw(st.sampled_from(["", "\n", "# comment\n", " \t\n"])))
        parts += [draw(_blank), word(name), draw(_before_op), "=", draw(_blank)]
        if draw(st.booleans()):
            value = draw(simple)
            parts.append(word(value))
            expected.append((name.upper(), value))
        else:
            pairs = draw(st.lists(st.tuples(simple, simple), min_size=1, max_size=3))
            parts += [draw(_before_op), "[", draw(_after_op)]
            for i, (key, value) in enumerate(pairs):
                if i:
                    parts += [draw(_before_op), ",", draw(_after_op)]
                parts += [word(key), draw(_before_op), "=", draw(_blank), word(value)]
            parts += [draw(_before_op), "]"]
            vector: dict[str, str] = {}
            for key, value in pairs:
                vector.setdefault(key.upper(), value)
            expected.append((name.upper(), vector))
        parts += [draw(_blank), draw(st.sampled_from(["", "# trailing"])), "\n"]
    return "".join(parts) or "\n", expected


@given(_formatted())
def test_layout_does_not_change_meaning(case: tuple[str, list[tuple[str, object]]]) -> None:
    text, expected = case
    assert parse(text) == expected
