"""No template value escapes its literal in a Xen deployment file (issue 7).

xm executes the deployment file as Python, as root: every file made from hostile values is
parsed with :mod:`ast` and must consist of ``name = <literal>`` statements only (constants
and lists of constants), the hostile value reading back exactly; or the file is refused
with a DriverError naming the field. The same literals must read back through xl's
string rules (libxlu: ``'...'``/``"..."``, backslash escapes, one line).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from nebula_xr.drivers.base import DriverError, VMAction
from nebula_xr.template import Template
from nebula_xr_plugins.vmm_xen import deployment_file, literal

REMOTE_DIR = "/srv/one/var/7/images"
DEFAULTS = Template.parse("CREDIT = 256\n", replace=True)

#: Payloads aimed at Python (xm), at the device specs and at the shell.
PAYLOADS = [
    "64'\nimport os; os.system('touch /tmp/pwned')\nx = '",
    "'; import os; os.system('id') #",
    "\\'; __import__('os').system('id') #",
    "a\\",
    '"""',
    "00:16:3e:00:00:01,script=/tmp/evil",
    "br0,script=/bin/sh",
    "x\x00y",
    "x\ry",
    "é",
    "$(touch /tmp/pwned)",
]

hostile = st.one_of(st.sampled_from(PAYLOADS), st.text(min_size=1, max_size=40))


def action(template: Template) -> VMAction:
    return VMAction(7, "node01", "", template, "/srv/one/var", REMOTE_DIR, Path("/tmp"), 0)


def base_template(**vectors: dict[str, str]) -> Template:
    template = Template()
    template.add("MEMORY", "64")
    template.add("OS", vectors.pop("OS", {"KERNEL": "/vmlinuz"}))
    template.add("DISK", vectors.pop("DISK", {"TARGET": "xvda"}))
    template.add("NIC", vectors.pop("NIC", {"MAC": "00:16:3e:00:00:01"}))
    template.add("GRAPHICS", vectors.pop("GRAPHICS", {"TYPE": "vnc"}))
    return template


def literal_statements(text: str) -> dict[str, object]:
    """Every statement is ``name = literal`` (str, number, or a list of str): else fail."""
    values: dict[str, object] = {}
    for node in ast.parse(text).body:
        assert isinstance(node, ast.Assign), ast.dump(node)
        assert len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
        value = node.value
        if isinstance(value, ast.List):
            assert all(
                isinstance(item, ast.Constant) and isinstance(item.value, str)
                for item in value.elts
            ), ast.dump(value)
        else:
            assert isinstance(value, ast.Constant), ast.dump(value)
        assert node.targets[0].id not in values
        values[node.targets[0].id] = ast.literal_eval(value)
    return values


_XL_STRING = re.compile(r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"\Z""")


def xl_dequote(token: str) -> str:
    """libxlu's reading of a quoted string (only the escapes we ever write)."""
    assert _XL_STRING.fullmatch(token), token
    return re.sub(r"\\(.)", r"\1", token[1:-1])


def file_for(field: str, value: str) -> str:
    """A deployment file with ``value`` in ``field`` ('OS/KERNEL', 'MEMORY'...)."""
    name, _, key = field.partition("/")
    if not key:
        template = base_template()
        template.set(name, value)
        return deployment_file(action(template), DEFAULTS)
    vector = {
        "OS": {"KERNEL": "/vmlinuz"},
        "DISK": {"TARGET": "xvda"},
        "NIC": {},
        "GRAPHICS": {"TYPE": "vnc"},
    }[name]
    vector = dict(vector, **{key: value})
    if field == "OS/BOOTLOADER":
        vector = {"BOOTLOADER": value}
        return deployment_file(action(base_template(OS=vector)), DEFAULTS, [value])
    return deployment_file(action(base_template(**{name: vector})), DEFAULTS)


FIELDS = [
    "MEMORY",
    "CPU",
    "NAME",
    "OS/KERNEL",
    "OS/INITRD",
    "OS/ROOT",
    "OS/KERNEL_CMD",
    "OS/BOOTLOADER",
    "DISK/TARGET",
    "DISK/READONLY",
    "DISK/SOURCE",
    "DISK/TYPE",
    "NIC/MAC",
    "NIC/BRIDGE",
    "NIC/IP",
    "GRAPHICS/LISTEN",
    "GRAPHICS/PORT",
    "GRAPHICS/PASSWD",
]
#: Where a field's value is expected in the parsed file.
EXPECTED = {
    "OS/KERNEL": lambda v, f: f["kernel"] == v,
    "OS/INITRD": lambda v, f: f["ramdisk"] == v,
    "OS/ROOT": lambda v, f: f["root"] == "/dev/" + v,
    "OS/KERNEL_CMD": lambda v, f: f["extra"] == v,
    "OS/BOOTLOADER": lambda v, f: f["bootloader"] == v,
    "DISK/TARGET": lambda v, f: f["disk"] == [f"tap:aio:{REMOTE_DIR}/disk.0,{v},w"],
    "NIC/MAC": lambda v, f: f["vif"] == [f"mac={v}"],
    "NIC/BRIDGE": lambda v, f: f["vif"] == [f" bridge={v}"],
    "GRAPHICS/LISTEN": lambda v, f: f["vfb"] == [f"type=vnc,vnclisten={v}"],
    "GRAPHICS/PORT": lambda v, f: f["vfb"] == [f"type=vnc,vncdisplay={v}"],
    "GRAPHICS/PASSWD": lambda v, f: f["vfb"] == [f"type=vnc,vncpasswd={v}"],
    "MEMORY": lambda v, f: f["memory"] == v,
}
SPEC_FIELDS = {
    "DISK/TARGET",
    "NIC/MAC",
    "NIC/BRIDGE",
    "GRAPHICS/LISTEN",
    "GRAPHICS/PORT",
    "GRAPHICS/PASSWD",
}


@settings(max_examples=2500, deadline=None)
@given(field=st.sampled_from(FIELDS), value=hostile)
@example(field="OS/KERNEL", value="'")
@example(field="OS/BOOTLOADER", value='"')
@example(field="OS/KERNEL_CMD", value="\\")
def test_no_value_escapes_its_literal(field: str, value: str) -> None:
    try:
        text = file_for(field, value)
    except DriverError as error:
        assert field.split("/")[-1].upper() in str(error).upper() or "CREDIT" in str(error)
        return
    values = literal_statements(text)
    names = {"name", "memory", "disk", "vif", "vfb"}
    names |= {"kernel", "ramdisk", "root", "extra", "bootloader"} & set(values)
    assert ("kernel" in values) != ("bootloader" in values)
    assert set(values) == names, text
    if field in EXPECTED:
        assert EXPECTED[field](value, values), text
    if field in SPEC_FIELDS:  # a device spec keeps its own fields
        assert "," not in value and "=" not in value
    for line in text.splitlines():
        if " = " in line and not line.startswith("#"):
            token = line.split(" = ", 1)[1].strip()
            if token[0] in "'\"":
                assert ast.literal_eval(token) == xl_dequote(token)


@given(value=st.text(max_size=60))
@example(value="it's")
@example(value='a"b\\')
def test_literal_reads_back_in_python_and_xl_or_is_refused(value: str) -> None:
    for quote in ("'", '"'):
        try:
            token = literal(value, "X", quote)
        except DriverError:
            assert any(not (" " <= c <= "~") for c in value)
            continue
        assert "\n" not in token
        assert ast.literal_eval(token) == value
        assert xl_dequote(token) == value


def test_ordinary_values_keep_the_1_2_bytes() -> None:
    text = file_for("OS/KERNEL_CMD", "ro xencons=tty console=tty1")
    assert "extra = 'ro xencons=tty console=tty1'\n" in text


def test_the_python_payload_of_the_issue_is_refused_not_run() -> None:
    with pytest.raises(DriverError, match="MEMORY must be a number"):
        file_for("MEMORY", "64'\nimport os; os.system('touch /tmp/x')\nx = '")
    with pytest.raises(DriverError, match="CPU must be a number"):
        file_for("CPU", "nan")
    with pytest.raises(DriverError, match="NIC/MAC can not contain"):
        file_for("NIC/MAC", "00:16:3e:00:00:01,script=/tmp/evil")
    quoted = file_for("OS/KERNEL_CMD", "x'; import os #")
    assert literal_statements(quoted)["extra"] == "x'; import os #"


@pytest.mark.parametrize(
    ("bootloader", "allowed"),
    [
        ("pygrub", True),
        ("/usr/bin/pygrub", True),
        ("/usr/lib/xen/bin/pygrub", True),
        ("/tmp/pygrub", False),
        ("/bin/sh", False),
        ("/usr/bin/../../tmp/pygrub", False),
    ],
)
def test_bootloader_allow_list(bootloader: str, allowed: bool) -> None:
    vm = action(base_template(OS={"BOOTLOADER": bootloader}))
    if allowed:
        assert f'bootloader = "{bootloader}"' in deployment_file(vm, DEFAULTS)
    else:
        with pytest.raises(DriverError, match="not in BOOTLOADERS"):
            deployment_file(vm, DEFAULTS)
