"""Templates refused at allocation, through the real daemon (issue 7).

Values one.db or the 1.2 text replies can not carry (``@^_^@``, line breaks) are refused
by the 1.2 and the 1.4 methods, for VMs and networks; ``RAW`` and ``OS/BOOTLOADER`` are
oneadmin's only.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from tests.oned import OneDaemon, write_conf

ADMIN = "oneadmin:" + hashlib.sha1(b"secret").hexdigest()
ALICE = "alice:" + hashlib.sha1(b"alice-pw").hexdigest()
PLAIN = "NAME = plain\nMEMORY = 64\nCPU = 1\nDISK = [ source = /img/a.img, target = sda1 ]\n"


@pytest.fixture(scope="module")
def one(tmp_path_factory: pytest.TempPathFactory) -> Any:
    location: Path = tmp_path_factory.mktemp("policy")
    auth = location / "one_auth"
    auth.write_text("oneadmin:secret\n")
    write_conf(location)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ONE_AUTH", str(auth))
        daemon = OneDaemon(location).start()
    ok, _ = call(daemon, "one.user.allocate", "alice", hashlib.sha1(b"alice-pw").hexdigest())
    assert ok
    yield daemon
    assert daemon.stop() == 0


def call(one: OneDaemon, method: str, *args: Any, session: str = ADMIN) -> Any:
    with one.proxy() as proxy:
        return getattr(proxy, method)(session, *args)


def vm_ids(one: OneDaemon) -> list[int]:
    with one.db() as db:
        return [row[0] for row in db.execute("SELECT oid FROM vm_pool")]


SEPARATOR_DISK = 'DISK = [ source = "/img/a.img@^_^@TARGET=hdz", target = sda1 ]\n'


@pytest.mark.parametrize("method", ["one.vmallocate", "one.vm.allocate"])
@pytest.mark.parametrize(
    ("template", "message"),
    [
        (
            "NAME = sep\nMEMORY = 64\n" + SEPARATOR_DISK,
            "Error in VM template: DISK/SOURCE contains '@^_^@', which one.db can not store",
        ),
        (
            'NAME = "evil\nVID               : 99"\nMEMORY = 64\n',
            "Error in VM template: NAME contains a line break, "
            "which the 1.2 info replies can not show",
        ),
        (
            'NAME = cr\nMEMORY = 64\nOS = [ kernel_cmd = "ro\rx" ]\n',
            "Error in VM template: OS/KERNEL_CMD contains a line break, "
            "which the 1.2 info replies can not show",
        ),
    ],
)
def test_values_one_db_or_text_replies_can_not_carry(
    one: OneDaemon, method: str, template: str, message: str
) -> None:
    before = vm_ids(one)
    assert call(one, method, template) == [False, message]
    assert vm_ids(one) == before


@pytest.mark.parametrize("method", ["one.vnallocate", "one.vn.allocate"])
def test_network_values_too(one: OneDaemon, method: str) -> None:
    template = (
        'NAME = "lan@^_^@BRIDGE=br9"\nTYPE = RANGED\nBRIDGE = br0\n'
        "NETWORK_ADDRESS = 10.1.0.0\nNETWORK_SIZE = C\n"
    )
    assert call(one, method, template) == [
        False,
        "Error in VN template: NAME contains '@^_^@', which one.db can not store",
    ]
    newline = template.replace("@^_^@BRIDGE=br9", "\nBRIDGE : x")
    assert call(one, method, newline)[0] is False


def test_an_ordinary_template_is_kept_and_survives(one: OneDaemon) -> None:
    ok, vid = call(one, "one.vm.allocate", PLAIN, session=ALICE)
    assert ok, vid
    ok, text = call(one, "one.vmget_info", vid)
    assert ok and "\tDISK=SOURCE=/img/a.img,TARGET=sda1" in text


@pytest.mark.parametrize(
    ("extra", "attribute"),
    [
        ("RAW = [ type = xen, data = \"on_crash = 'destroy'\" ]\n", "RAW"),
        ("OS = [ bootloader = /usr/bin/pygrub ]\n", "OS/BOOTLOADER"),
    ],
)
def test_raw_and_bootloader_are_oneadmins(one: OneDaemon, extra: str, attribute: str) -> None:
    template = PLAIN + extra
    before = vm_ids(one)
    assert call(one, "one.vm.allocate", template, session=ALICE) == [
        False,
        f"{attribute} can only be set by oneadmin",
    ]
    assert vm_ids(one) == before
    ok, vid = call(one, "one.vm.allocate", template)
    assert ok, vid
    ok, vid = call(one, "one.vmallocate", template)
    assert ok, vid


def test_a_kernel_is_anyones(one: OneDaemon) -> None:
    ok, vid = call(one, "one.vm.allocate", PLAIN + "OS = [ kernel = /vmlinuz ]\n", session=ALICE)
    assert ok, vid
