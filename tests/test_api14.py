"""The 1.4 API beside the 1.2 one (api-1.4.md): every method against a real daemon, its
XML documents against §4, its messages, and the 1.2 methods answering as before. The
1.4 life cycle additions (UNKNOWN, restart, finalize of an ACTIVE VM) run in-process
with a VMM driver the tests steer."""

from __future__ import annotations

import hashlib
import sqlite3
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, maybeDeferred

from nebula_xr import hookimpl
from nebula_xr.config import Layout, load_config
from nebula_xr.daemon import Daemon
from nebula_xr.drivers.base import ConsoleTarget, VMAction
from nebula_xr.plugin_manager import PluginManager
from nebula_xr_plugins.dummy.vmm_dummy import DummyVirtualMachineDriver
from tests.oned import OneDaemon, wait_for, write_conf
from tests.test_tutorial import TUTORIAL, add_hosts

VM = "ID UID NAME LAST_POLL STATE LCM_STATE STIME ETIME DEPLOY_ID MEMORY CPU NET_TX NET_RX".split()
HISTORY = "SEQ HOSTNAME HID STIME ETIME PSTIME PETIME RSTIME RETIME ESTIME EETIME REASON".split()
HOST = "ID NAME STATE IM_MAD VM_MAD TM_MAD LAST_MON_TIME HOST_SHARE".split()
HOST_SHARE = (
    "HID DISK_USAGE MEM_USAGE CPU_USAGE MAX_DISK MAX_MEM MAX_CPU FREE_DISK FREE_MEM FREE_CPU "
    "USED_DISK USED_MEM USED_CPU RUNNING_VMS"
).split()
VNET = "ID UID NAME TYPE BRIDGE TEMPLATE LEASES".split()
VNET_POOL = "ID UID USERNAME NAME TYPE BRIDGE TOTAL_LEASES".split()
USER = "ID NAME PASSWORD ENABLED".split()
TEXT = {
    "NAME",
    "USERNAME",
    "DEPLOY_ID",
    "IM_MAD",
    "VM_MAD",
    "TM_MAD",
    "HOSTNAME",
    "BRIDGE",
    "IP",
    "MAC",
}

METHODS_14 = {
    "one.vm.allocate": "A:ss",
    "one.vm.deploy": "A:sii",
    "one.vm.action": "A:ssi",
    "one.vm.migrate": "A:siib",
    "one.vm.info": "A:si",
    "one.vmpool.info": "A:si",
    "one.host.allocate": "A:sssss",
    "one.host.info": "A:si",
    "one.host.delete": "A:si",
    "one.host.enable": "A:sib",
    "one.hostpool.info": "A:s",
    "one.vn.allocate": "A:ss",
    "one.vn.info": "A:si",
    "one.vn.delete": "A:si",
    "one.vnpool.info": "A:si",
    "one.user.allocate": "A:sss",
    "one.user.info": "A:si",
    "one.user.delete": "A:si",
    "one.userpool.info": "A:s",
}
METHODS_12 = (
    "one.vmallocate one.vmdeploy one.vmaction one.vmmigrate one.vmget_info one.hostallocate "
    "one.hostinfo one.hostdelete one.hostenable one.vnallocate one.vninfo one.vndelete"
).split()

RANGED = (
    'NAME = "Private LAN"\nTYPE = RANGED\nBRIDGE = eth0\n'
    "NETWORK_SIZE = 250\nNETWORK_ADDRESS = 10.0.0.0"  # no final newline: 1.4 takes it
)
FIXED = (
    "NAME = Public\nTYPE = FIXED\nBRIDGE = eth1\n"
    "LEASES = [IP=130.10.0.1,MAC=50:20:20:20:20:20]\nLEASES = [IP=130.10.0.4]"
)
PENDING, HOLD, ACTIVE, SUSPENDED, DONE, FAILED = 1, 2, 3, 5, 6, 7
BOOT, RUNNING, UNKNOWN = 2, 3, 16
ADMIN_SESSION = f"oneadmin:{hashlib.sha1(b'secret').hexdigest()}"


def parse(document: str) -> ElementTree.Element:
    """As Haizea reads it: one line, no declaration, well formed."""
    assert "\n" not in document and not document.startswith("<?xml")
    return ElementTree.fromstring(document)


def tags(element: ElementTree.Element) -> list[str]:
    return [child.tag for child in element]


def check_fields(element: ElementTree.Element, names: list[str]) -> dict[str, Any]:
    """The leading children are ``names`` in order; integers are plain decimals."""
    values = {}
    for child, name in zip(element, names, strict=False):
        assert child.tag == name
        if len(child) == 0 and name not in TEXT:
            values[name] = int(child.text)  # Haizea int()s them
        else:
            values[name] = child.text or ""
    return values


def check_vm(element: ElementTree.Element, *, pool: bool) -> dict[str, Any]:
    names = VM[:2] + ["USERNAME"] + VM[2:] if pool else VM
    values = check_fields(element, names)
    rest = tags(element)[len(names) :]
    assert rest in ([], ["HISTORY"]) if pool else rest in (["TEMPLATE"], ["TEMPLATE", "HISTORY"])
    if "HISTORY" in rest:
        assert tags(element.find("HISTORY")) == HISTORY
        values["HISTORY"] = check_fields(element.find("HISTORY"), HISTORY)
    return values


def check_host(element: ElementTree.Element, *, pool: bool) -> dict[str, Any]:
    assert tags(element) == (HOST if pool else [*HOST, "TEMPLATE"])
    values = check_fields(element, HOST)
    assert tags(element.find("HOST_SHARE")) == HOST_SHARE
    values["HOST_SHARE"] = check_fields(element.find("HOST_SHARE"), HOST_SHARE)
    return values


def template(element: ElementTree.Element) -> list[tuple[str, Any]]:
    """TEMPLATE children as (name, text or {key: text}), checking the sort orders."""
    node = element.find("TEMPLATE")
    attributes = [
        (child.tag, {k.tag: k.text or "" for k in child} if len(child) else child.text or "")
        for child in node
    ]
    assert [name for name, _ in attributes] == sorted(name for name, _ in attributes)
    for child in node:
        assert tags(child) == sorted(tags(child))
    return attributes


@pytest.fixture(scope="module")
def one(tmp_path_factory):
    location = tmp_path_factory.mktemp("one14")
    (location / "one_auth").write_text("oneadmin:secret\n")
    write_conf(location)
    daemon = OneDaemon(location).start()
    assert daemon.session == ADMIN_SESSION
    add_hosts(daemon, "node01")
    assert daemon.call14("one.host.allocate", "node02", "im_xen", "vmm_xen", "tm_nfs") == [
        True,
        1,
    ]
    assert daemon.call("one.hostallocate", "unmanaged", "im_xen", "vmm_xen", "tm_nfs", False) == [
        True,
        2,
    ]
    yield daemon
    assert daemon.stop() == 0


def call(one: OneDaemon, method: str, *args: Any, session: str = ADMIN_SESSION) -> Any:
    with one.proxy() as proxy:
        return getattr(proxy, method)(session, *args)


def info(one: OneDaemon, method: str, *args: Any, session: str = ADMIN_SESSION) -> Any:
    ok, document = call(one, method, *args, session=session)
    assert ok is True, document
    return parse(document)


def lcm(one: OneDaemon, vid: int) -> tuple[int, int]:
    values = check_vm(info(one, "one.vm.info", vid), pool=False)
    return values["STATE"], values["LCM_STATE"]


# -- introspection and sessions -----------------------------------------------------------


def test_both_apis_are_listed_with_their_signatures(one: OneDaemon) -> None:
    with one.proxy() as proxy:
        names = proxy.system.listMethods()
        assert set(METHODS_14) | set(METHODS_12) <= set(names)
        for name in ("one.hostpool.info", "one.host.info", "one.vmpool.info", "one.vm.info"):
            assert name in names  # Haizea 1.0 refuses to start otherwise
        for name, signature in METHODS_14.items():
            returns, params = signature.split(":")
            expected = ["array"] + [{"s": "string", "i": "int", "b": "boolean"}[p] for p in params]
            assert proxy.system.methodSignature(name) == [expected], name


@pytest.mark.parametrize("session", ["sessionID", "oneadmin:wrong", "nobody:x", ""])
def test_invalid_sessions_are_refused(one: OneDaemon, session: str) -> None:
    """Authentication is on by default: a wrong password is refused as 1.4 refused it
    (before AUTH existed this test asserted the opposite)."""
    assert call(one, "one.hostpool.info", session=session) == [
        False,
        "User not authenticated, RequestManagerHostPoolInfo aborted.",
    ]
    assert call(one, "one.vmpool.info", -2, session=session) == [
        False,
        "User not authenticated, aborting RequestManagerPoolInfo call.",
    ]


# -- documents ----------------------------------------------------------------------------


def test_vm_documents(one: OneDaemon) -> None:
    text = (
        "NAME = xml\nCPU = 0.5\nMEMORY = 64\n"
        'REQUIREMENTS = "FREECPU > 50 & HOSTNAME != <x>"\nDISK = [ target = sda, source = /i ]'
    )
    ok, vid = call(one, "one.vm.allocate", text)
    assert ok
    pending = info(one, "one.vm.info", vid)
    values = check_vm(pending, pool=False)
    assert (values["ID"], values["NAME"], values["STATE"], values["DEPLOY_ID"]) == (
        vid,
        "xml",
        PENDING,
        "",
    )
    assert "HISTORY" not in values
    assert template(pending) == [
        ("CPU", "0.5"),
        ("DISK", {"SOURCE": "/i", "TARGET": "sda"}),
        ("MEMORY", "64"),
        ("NAME", "xml"),
        ("REQUIREMENTS", "FREECPU > 50 & HOSTNAME != <x>"),  # escaped on the wire
        ("VMID", str(vid)),
    ]

    # 1.4 hosts have no managed flag: deploying on a host added unmanaged through 1.2 works
    assert call(one, "one.vm.deploy", vid, 2) == [True]
    wait_for(lambda: lcm(one, vid) == (ACTIVE, RUNNING))
    running = check_vm(info(one, "one.vm.info", vid), pool=False)
    assert running["DEPLOY_ID"] == f"one-{vid}"
    record = running["HISTORY"]
    assert (record["SEQ"], record["HOSTNAME"], record["HID"], record["REASON"]) == (
        0,
        "unmanaged",
        2,
        0,
    )
    assert record["STIME"] == record["PSTIME"] > 0 and record["RSTIME"] > 0

    pool = info(one, "one.vmpool.info", -2)
    assert pool.tag == "VM_POOL"
    listed = [check_vm(element, pool=True) for element in pool]
    assert [vm["ID"] for vm in listed] == sorted(vm["ID"] for vm in listed)
    mine = next(vm for vm in listed if vm["ID"] == vid)
    assert mine["USERNAME"] == "oneadmin" and mine["HISTORY"] == record

    # finalize (1.4: any state) ends it; DONE VMs leave the pool but keep their document
    assert call(one, "one.vm.action", "finalize", vid) == [True]
    assert lcm(one, vid) == (DONE, 0)
    assert vid not in [int(vm.find("ID").text) for vm in info(one, "one.vmpool.info", -2)]
    done = check_vm(info(one, "one.vm.info", vid), pool=False)
    assert done["HISTORY"]["REASON"] == 3 and done["HISTORY"]["ETIME"] > 0  # USER


def test_host_documents(one: OneDaemon) -> None:
    node01 = info(one, "one.host.info", 0)
    values = check_host(node01, pool=False)
    assert (values["NAME"], values["STATE"], values["IM_MAD"]) == ("node01", 2, "im_xen")
    share = values["HOST_SHARE"]
    assert (share["HID"], share["MAX_CPU"], share["MAX_MEM"]) == (0, 200, 2097152)
    assert (share["FREE_MEM"], share["USED_CPU"], share["FREE_DISK"]) == (1835008, 10, 0)
    assert dict(template(node01))["TOTALCPU"] == "200"

    # never monitored: STATE 0, zero capacity, empty template
    # an IM driver oned.conf lacks: 1.4 refuses it, 1.2 accepts it and says so in oned.log
    assert call(one, "one.host.allocate", "fresh", "im_none", "vmm_xen", "tm_nfs") == [
        False,
        "Can not allocate host fresh: no IM driver named im_none in oned.conf (configured: im_xen)",
    ]
    ok, hid = one.call("one.hostallocate", "fresh", "im_none", "vmm_xen", "tm_nfs", True)
    log = (one.location / "var" / "oned.log").read_text()
    assert "[ReM][W]: Host fresh added with unknown drivers: no IM driver named im_none" in log
    ok, document = call(one, "one.host.info", hid)
    assert ok and document.endswith("<TEMPLATE></TEMPLATE></HOST>")
    fresh = check_host(parse(document), pool=False)
    assert fresh["STATE"] in (0, 1, 3) and fresh["HOST_SHARE"]["MAX_CPU"] == 0  # im_none: ERROR

    pool = info(one, "one.hostpool.info")
    assert pool.tag == "HOST_POOL"
    names = [check_host(element, pool=True)["NAME"] for element in pool]
    assert names == ["node01", "node02", "unmanaged", "fresh"]

    assert call(one, "one.host.enable", hid, False) == [True]
    assert check_host(info(one, "one.host.info", hid), pool=False)["STATE"] == 4
    assert call(one, "one.host.enable", hid, True) == [True]
    # INIT, and monitored again at once (and failing: im_none is no driver)
    assert check_host(info(one, "one.host.info", hid), pool=False)["STATE"] in (0, 1, 3)
    assert call(one, "one.host.delete", hid) == [True]
    assert call(one, "one.host.info", hid) == [False, f"Error getting host with HID = {hid}"]


def test_network_documents(one: OneDaemon) -> None:
    ok, ranged = call(one, "one.vn.allocate", RANGED)
    assert ok
    ok, fixed = call(one, "one.vn.allocate", FIXED)
    assert ok
    ok, vid = call(one, "one.vm.allocate", 'NIC = [ NETWORK = "Private LAN" ]')
    assert ok

    document = info(one, "one.vn.info", ranged)
    assert tags(document) == VNET
    values = check_fields(document, VNET[:5])
    assert values == {"ID": ranged, "UID": 0, "NAME": "Private LAN", "TYPE": 0, "BRIDGE": "eth0"}
    assert dict(template(document))["NETWORK_ADDRESS"] == "10.0.0.0"
    leases = [
        check_fields(lease, ["IP", "MAC", "USED", "VID"]) for lease in document.find("LEASES")
    ]
    assert leases == [{"IP": "10.0.0.1", "MAC": "00:03:0a:00:00:01", "USED": 1, "VID": vid}]

    document = info(one, "one.vn.info", fixed)
    assert [name for name, _ in template(document)] == [
        "BRIDGE",
        "LEASES",
        "LEASES",
        "NAME",
        "TYPE",
    ]
    leases = [
        check_fields(lease, ["IP", "MAC", "USED", "VID"]) for lease in document.find("LEASES")
    ]
    assert leases == [
        {"IP": "130.10.0.1", "MAC": "50:20:20:20:20:20", "USED": 0, "VID": -1},
        {"IP": "130.10.0.4", "MAC": "00:03:82:0a:00:04", "USED": 0, "VID": -1},
    ]

    pool = info(one, "one.vnpool.info", -2)
    assert pool.tag == "VNET_POOL"
    listed = {}
    for element in pool:
        assert tags(element) == VNET_POOL
        row = check_fields(element, VNET_POOL)
        listed[row["NAME"]] = row
    assert listed["Private LAN"]["TOTAL_LEASES"] == 1 and listed["Public"]["TOTAL_LEASES"] == 0
    assert listed["Public"]["USERNAME"] == "oneadmin" and listed["Public"]["TYPE"] == 1

    assert call(one, "one.vm.action", "finalize", vid) == [True]
    assert call(one, "one.vn.delete", fixed) == [True]
    assert call(one, "one.vn.info", fixed) == [
        False,
        f"Error getting Virtual Network with NID = {fixed}",
    ]


def test_users_and_ownership(one: OneDaemon) -> None:
    admin_hash = hashlib.sha1(b"secret").hexdigest()
    pool = info(one, "one.userpool.info")
    assert pool.tag == "USER_POOL"
    admin = pool[0]
    assert tags(admin) == USER
    assert [child.text for child in admin] == ["0", "oneadmin", None, "True"]  # no credential

    alice_hash = hashlib.sha1(b"alice-pw").hexdigest()
    ok, alice = call(one, "one.user.allocate", "alice", alice_hash)
    assert ok and alice >= 1
    assert call(one, "one.user.allocate", "alice", "x") == [
        False,
        "Existing user, cannot duplicate",
    ]
    assert call(one, "one.user.allocate", "oneadmin", "x") == [
        False,
        "Existing user, cannot duplicate",
    ]
    assert call(one, "one.user.allocate", "a:b", "x") == [False, "Error allocating user"]
    document = info(one, "one.user.info", alice)
    assert [child.text for child in document] == [str(alice), "alice", None, "1"]

    # a known user in the session owns what it creates; -1 lists the caller's objects
    session = f"alice:{alice_hash}"
    ok, net = call(
        one,
        "one.vn.allocate",
        "NAME = alice-net\nTYPE = FIXED\nLEASES = [ IP = 10.9.0.1 ]",
        session=session,
    )
    assert ok
    ok, vid = call(
        one, "one.vm.allocate", "NAME = hers\nNIC = [ NETWORK = alice-net ]", session=session
    )
    assert ok
    theirs = [check_vm(vm, pool=True) for vm in info(one, "one.vmpool.info", -1, session=session)]
    assert [(vm["ID"], vm["UID"], vm["USERNAME"]) for vm in theirs] == [(vid, alice, "alice")]
    assert [vm.find("ID").text for vm in info(one, "one.vmpool.info", alice)] == [str(vid)]
    assert str(vid) not in [vm.find("ID").text for vm in info(one, "one.vmpool.info", 0)]
    networks = info(one, "one.vnpool.info", -1, session=session)
    assert [(n.find("NAME").text, n.find("UID").text) for n in networks] == [
        ("alice-net", str(alice))
    ]
    # others' networks are not usable by alice (oneadmin's are), nor alice's by bob
    ok, bob = call(one, "one.user.allocate", "bob", "b")  # a client may register any string
    assert call(one, "one.vm.allocate", "NIC = [ NETWORK = alice-net ]", session="bob:b") == [
        False,
        "Error inserting VM in the database: network alice-net is not usable by user 2",
    ]
    assert call(one, "one.vn.allocate", "NAME = shared\nTYPE = FIXED\nLEASES = [ IP = 10.8.0.1 ]")[
        0
    ]
    assert call(one, "one.vm.allocate", "NIC = [ NETWORK = shared ]", session="bob:b")[0] is True

    # a deleted owner leaves an empty USERNAME, not a broken document
    assert call(one, "one.user.delete", alice) == [True]
    assert call(one, "one.user.delete", alice) == [False, f"Error retrieving user {alice}"]
    mine = [vm for vm in info(one, "one.vmpool.info", -2) if vm.find("ID").text == str(vid)]
    assert mine[0].find("USERNAME").text is None
    assert call(one, "one.user.info", alice) == [False, "Error getting user"]
    assert call(one, "one.user.delete", 0) == [False, "User oneadmin cannot be deleted"]
    with sqlite3.connect(one.db_path) as db:
        rows = db.execute("SELECT oid, user_name, enabled FROM user_pool ORDER BY oid").fetchall()
        stored = [row[0] for row in db.execute("SELECT password FROM user_pool")]
    assert rows == [(0, "oneadmin", 1), (bob, "bob", 1)]
    # only salted slow hashes are stored, never what a client signs in with
    assert all(password.startswith("$2b$12$") for password in stored)
    assert not {admin_hash, "b"} & set(stored)
    assert len(set(stored)) == 2


@pytest.mark.parametrize(
    ("method", "args", "reply"),
    [
        (
            "one.vm.allocate",
            ("A = hello world",),
            [
                False,
                "Error parsing VM template: line 1, column 11: "
                "syntax error, unexpected STRING, expecting NL",
            ],
        ),
        (
            "one.vm.allocate",
            ("NAME = x\nMEMORY = lots",),
            [
                False,
                "Error parsing VM template: line 2, column 10: "
                "MEMORY must be a number of megabytes, not 'lots'",
            ],
        ),
        (
            "one.vm.allocate",
            ('NAME = "x\nMEMORY = 1',),
            [
                False,
                "Error parsing VM template: line 1, column 8: "
                'unterminated string, " is never closed',
            ],
        ),
        (
            "one.vm.allocate",
            ("NIC = [ NETWORK = nowhere ]",),
            [False, "Error inserting VM in the database: no network named nowhere"],
        ),
        ("one.vm.deploy", (0, 99), [False, "The host 99 does not exists"]),
        ("one.vm.deploy", (99, 0), [False, "The virtual machine 99 does not exists"]),
        ("one.vm.action", ("reboot", 99), [False, "The virtual machine 99 does not exists"]),
        ("one.vm.migrate", (0, 99, True), [False, "The host 99 does not exists"]),
        ("one.vm.migrate", (99, 0, True), [False, "The virtual machine 99 does not exists"]),
        ("one.vm.info", (99,), [False, "Error getting vm with VID = 99"]),
        ("one.host.info", (99,), [False, "Error getting host with HID = 99"]),
        ("one.host.delete", (99,), [False, "Error getting host with HID = 99"]),
        ("one.host.enable", (99, True), [False, "Error getting host with HID = 99"]),
        ("one.vn.info", (99,), [False, "Error getting Virtual Network with NID = 99"]),
        ("one.vn.delete", (99,), [False, "Error getting Virtual Network with NID = 99"]),
        (
            "one.vn.allocate",
            ("NAME = r\nTYPE = RANGED",),
            [
                False,
                "Error allocating VN with template: \nNAME = r\nTYPE = RANGED\n"
                "RANGED network without NETWORK_ADDRESS",
            ],
        ),
        ("one.user.info", (99,), [False, "Error getting user"]),
        ("one.user.delete", (99,), [False, "Error retrieving user 99"]),
        ("nebula_xr.vm.history", (99,), [False, "Error getting vm with VID = 99"]),
        ("nebula_xr.vm.console", (99,), [False, "Error getting vm with VID = 99"]),
    ],
)
def test_error_replies(one: OneDaemon, method: str, args: tuple, reply: list) -> None:
    assert call(one, method, *args) == reply


def test_vm_actions_14_beside_12(one: OneDaemon) -> None:
    ok, vid = call(one, "one.vm.allocate", "NAME = acts\nCPU = 1\nMEMORY = 32")
    # 1.2 checks the action name first, 1.4 the VM first
    assert one.call("one.vmaction", "reboot", 999) == [False, "Unknown action"]
    assert call(one, "one.vm.action", "reboot", vid) == [False, "Unknown action"]
    assert call(one, "one.vm.action", "SHUTDOWN", vid) == [False, "Unknown action"]
    assert call(one, "one.vm.action", "shutdown", vid) == [
        False,
        f"Wrong state to perform action: VM {vid} is PENDING",
    ]
    assert one.call("one.vmaction", "shutdown", vid) == [False, "Wrong state to perform action"]
    assert one.call("one.vmaction", "restart", vid) == [False, "Unknown action"]
    assert call(one, "one.vm.action", "restart", vid) == [
        False,
        f"Wrong state to perform action: VM {vid} is PENDING",
    ]
    assert call(one, "one.vm.action", "hold", vid) == [True]
    assert lcm(one, vid) == (HOLD, 0)
    assert call(one, "one.vm.action", "release", vid) == [True]

    # 1.2 refuses unmanaged hosts, 1.4 does not know the flag
    assert one.call("one.vmdeploy", vid, 2) == [False, "Not managed hosts (id:2) not supported"]
    assert call(one, "one.vm.deploy", vid, 1) == [True]
    assert call(one, "one.vm.deploy", vid, 1)[1].startswith(
        f"Can not deploy VM {vid}, wrong state: VM {vid} is ACTIVE ("
    )
    wait_for(lambda: lcm(one, vid) == (ACTIVE, RUNNING))
    assert call(one, "one.vm.migrate", vid, 1, True) == [
        False,
        f"Can not migrate VM {vid}, wrong state: VM {vid} already runs on host 1",
    ]
    assert one.call("one.vmmigrate", vid, 1, True) == [
        False,
        f"Can not deploy VM {vid}, wrong state",
    ]
    assert call(one, "one.vm.migrate", vid, 0, True) == [True]
    wait_for(lambda: lcm(one, vid) == (ACTIVE, RUNNING))
    assert check_vm(info(one, "one.vm.info", vid), pool=False)["HISTORY"]["HOSTNAME"] == "node01"
    history = info(one, "nebula_xr.vm.history", vid)
    assert history.tag == "HISTORY_RECORDS"
    assert [check_fields(r, HISTORY)["HOSTNAME"] for r in history] == ["node02", "node01"]

    # 1.2 finalize refuses an ACTIVE VM; 1.4 ends it, releasing its capacity
    assert one.call("one.vmaction", "finalize", vid) == [False, "Wrong state to perform action"]
    share = check_host(info(one, "one.host.info", 0), pool=False)["HOST_SHARE"]
    assert share["CPU_USAGE"] == 100 and share["RUNNING_VMS"] == 1
    assert call(one, "one.vm.action", "finalize", vid) == [True]
    assert lcm(one, vid) == (DONE, 0)
    share = check_host(info(one, "one.host.info", 0), pool=False)["HOST_SHARE"]
    assert share["CPU_USAGE"] == 0 and share["RUNNING_VMS"] == 0
    assert call(one, "one.vm.action", "finalize", vid) == [True]  # DONE: a no-op
    assert one.call("one.vmaction", "finalize", vid) == [False, "Wrong state to perform action"]


def test_1_2_replies_unchanged(one: OneDaemon) -> None:
    """The 1.2 info texts and allocations are those of 1.2, whichever API made the object."""
    ok, vid = call(one, "one.vm.allocate", TUTORIAL)
    ok, text = one.call("one.vmget_info", vid)
    assert text.startswith(
        f"VID               : {vid}\nUID               : 0\nSTATE             : 1\n"
    )
    assert text.endswith(
        "Template\n\n\tCPU=1\n"
        "\tDISK=CLONE=no,READONLY=no,SOURCE=/home/domains/xen01/disk.img,TARGET=sda2\n"
        "\tDISK=READONLY=no,SIZE=512,TARGET=sda1,TYPE=swap\n"
        "\tMEMORY=156\n\tNAME=xen01\n\tNIC=MAC=\n"
        "\tOS=INITRD=/boot/initrd.img-2.6.22.9-rock,KERNEL=/boot/vmlinuz-2.6.22.9-rock,"
        "KERNEL_CMD=ro xencons=tty console=tty1,ROOT=sda2\n"
    )
    ok, text = one.call("one.hostinfo", 1)
    assert text.startswith("HID      = 1\nHOSTNAME = node02\n") and "MANAGED  = 1\n" in text
    assert one.call("one.vmallocate", "NIC = [ NETWORK = nowhere ]\n")[0] is True  # kept as is
    with sqlite3.connect(one.db_path) as db:
        assert db.execute("SELECT uid FROM vm_pool WHERE oid = ?", (vid,)).fetchone() == (0,)


# -- life cycle additions, in-process with a steerable VMM driver ------------------------


class SteeredDriver(DummyVirtualMachineDriver):
    """The dummy VMM whose polls report ``state`` and which has a console."""

    state = "a"

    def poll(self, vm: VMAction) -> Deferred:
        return super().poll(vm).addCallback(lambda info: {**info, "STATE": self.state})

    def console(self, vm: VMAction) -> ConsoleTarget:
        return ConsoleTarget(vm.host, vm.deploy_id, "sudo-xm", "Ctrl-]")


class SteeredPlugin:
    @hookimpl
    def nebula_xr_vmm_driver(self, config, context):  # noqa: ANN001, ANN201
        return SteeredDriver(config, context) if config.plugin == "vmm_steered" else None


STEERED = """
IM_MAD = [ name = "im_xen", executable = "im_dummy" ]
VM_MAD = [ name = "vmm_xen", executable = "vmm_steered" ]
TM_MAD = [ name = "tm_nfs", executable = "tm_dummy" ]
"""


class InProcess:
    def __init__(self, location: Path) -> None:
        plugins = PluginManager()
        plugins.load()
        plugins.register(SteeredPlugin(), "vmm_steered")
        conf = write_conf(location, drivers=STEERED)
        layout = Layout(location / "var", location / "etc", location / "var", location / "lock")
        (location / "one_auth").write_text("oneadmin:secret\n")
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("ONE_AUTH", str(location / "one_auth"))
            self.daemon = Daemon(load_config(conf, layout), plugins, reactor=reactor)
        self.driver: SteeredDriver = self.daemon.vmm.drivers["vmm_xen"]

    async def call(self, method: str, *args: Any) -> Any:
        return await maybeDeferred(self.daemon.registry.call, method, [ADMIN_SESSION, *args])

    async def until(self, predicate: Any, timeout: float = 10.0) -> None:
        for _ in range(int(timeout / 0.05)):
            if predicate():
                return
            await task.deferLater(reactor, 0.05, lambda: None)
        raise AssertionError("timed out")

    def lcm(self, vid: int) -> tuple[int, int]:
        vm = self.daemon.vms.get(vid)
        return int(vm.state), int(vm.lcm_state)

    async def running_vm(self) -> int:
        ok, hid = await self.call("one.host.allocate", "node01", "im_xen", "vmm_xen", "tm_nfs")
        await self.until(lambda: self.daemon.hosts.get(hid).shares.max_cpu)
        ok, vid = await self.call(
            "one.vm.allocate", "CPU = 1\nMEMORY = 64\nDISK = [ source = /i, target = sda ]"
        )
        assert await self.call("one.vm.deploy", vid, hid) == [True]
        await self.until(lambda: self.lcm(vid) == (ACTIVE, RUNNING))
        return vid


@pytest_twisted.async_yield_fixture
async def steered(tmp_path):
    one = InProcess(tmp_path)
    one.daemon.startService()
    yield one
    await one.daemon.stopService()


@pytest_twisted.ensureDeferred
async def test_vanished_vm_is_unknown_until_it_reappears(steered: InProcess) -> None:
    vid = await steered.running_vm()
    host = steered.daemon.hosts.get(0)
    steered.driver.state = "d"
    await steered.until(lambda: steered.lcm(vid) == (ACTIVE, UNKNOWN))
    assert host.shares.running_vms == 1 and host.shares.cpu_usage == 100  # kept
    assert (await steered.call("one.vm.action", "shutdown", vid))[1] == (
        f"Wrong state to perform action: VM {vid} is ACTIVE (UNKNOWN)"
    )
    assert (await steered.call("nebula_xr.vm.console", vid)) == [False, f"VM {vid} is not running"]
    steered.driver.state = "a"  # still polled: back to RUNNING
    await steered.until(lambda: steered.lcm(vid) == (ACTIVE, RUNNING))
    assert len(steered.daemon.vms.get(vid).history) == 1


@pytest_twisted.ensureDeferred
async def test_restart_boots_an_unknown_vm_on_the_same_record(steered: InProcess) -> None:
    vid = await steered.running_vm()
    steered.driver.state = "d"
    await steered.until(lambda: steered.lcm(vid) == (ACTIVE, UNKNOWN))
    steered.driver.state = "a"
    deployments = steered.daemon.vms.vm_dir(vid) / "deployment.0"
    deployments.unlink()
    seen: list[int] = []
    steered.daemon.vms.listeners.append(lambda vm, *_: seen.append(int(vm.lcm_state)))
    assert await steered.call("one.vm.action", "restart", vid) == [True]
    await steered.until(lambda: steered.lcm(vid) == (ACTIVE, RUNNING))
    assert seen == [BOOT, RUNNING]
    assert deployments.exists()  # a new DEPLOY, same history record, no prolog
    assert len(steered.daemon.vms.get(vid).history) == 1
    assert await steered.call("one.vm.action", "restart", vid) == [
        False,
        f"Wrong state to perform action: VM {vid} is ACTIVE (RUNNING)",
    ]


@pytest_twisted.ensureDeferred
async def test_finalize_of_an_unknown_vm_and_console(steered: InProcess) -> None:
    vid = await steered.running_vm()
    assert await steered.call("nebula_xr.vm.console", vid) == [
        True,
        {"host": "node01", "domain": f"one-{vid}", "method": "sudo-xm"},
        "Ctrl-]",
    ]
    steered.driver.state = "d"
    await steered.until(lambda: steered.lcm(vid) == (ACTIVE, UNKNOWN))
    assert await steered.call("one.vm.action", "finalize", vid) == [True]
    assert steered.lcm(vid) == (DONE, 0)
    vm = steered.daemon.vms.get(vid)
    assert vm.current.reason == 3 and vm.current.etime > 0 and vm.current.retime > 0
    assert steered.daemon.hosts.get(0).shares.running_vms == 0
    delete = steered.daemon.vms.vm_dir(vid) / "transfer.0.delete"
    await steered.until(delete.exists)
    assert delete.read_text().startswith("DELETE node01:")


@pytest_twisted.ensureDeferred
async def test_finalize_of_a_suspended_vm_deletes_its_images(steered: InProcess) -> None:
    vid = await steered.running_vm()
    assert await steered.call("one.vm.action", "suspend", vid) == [True]
    await steered.until(lambda: steered.lcm(vid) == (SUSPENDED, 0))
    assert await steered.call("one.vm.action", "finalize", vid) == [True]
    assert steered.lcm(vid) == (DONE, 0)
    delete = steered.daemon.vms.vm_dir(vid) / "transfer.0.delete"
    await steered.until(delete.exists)
