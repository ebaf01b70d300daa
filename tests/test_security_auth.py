"""Attack suite, part 1: who may call what.

Every XML-RPC method of the daemon (the twelve 1.2 methods, the nineteen 1.4 ``one.*``
methods, 3.x's ``one.*.monitoring``, the ``nebula_xr.*`` methods, plus
``system.listMethods`` and a ``system.multicall`` smuggling a 1.2 call) is called with five
kinds of session, from loopback and from another address, against a real daemon. The other
address is a network namespace of this test, joined to the host by a veth pair
(10.77.9.1/30 on the host side, 10.77.9.2/30 inside): the client runs there with
``ip netns exec``, the daemon listens on 0.0.0.0 with the shipped authentication. Nothing
is sent anywhere but loopback and that namespace.

Each call is allowed exactly when :data:`ALLOWED` says so. The table is written out by
hand from the rules in README "Security" (1.4's ownership rules, and 1.2 clients on the
front-end served as oneadmin); it is not derived from the code under test. The targets
are owned by alice; "other" is bob, a second ordinary user. A refused call must also
leave no trace (the object it aimed at is unchanged).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
import xmlrpc.client
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import pytest

from tests.oned import OneDaemon, wait_for, write_conf

LOOPBACK, REMOTE = "loopback", "remote"
NONE, WRONG, OTHER, OWNER, ADMIN = "no session", "wrong password", "other user", "owner", "admin"
KINDS = (NONE, WRONG, OTHER, OWNER, ADMIN)
EVERYONE = frozenset(KINDS)
USERS = frozenset({OTHER, OWNER, ADMIN})  # any valid session
OWNERS = frozenset({OWNER, ADMIN})
ADMIN_ONLY = frozenset({ADMIN})


def same_everywhere(kinds: frozenset[str]) -> dict[str, frozenset[str]]:
    return {LOOPBACK: kinds, REMOTE: kinds}


def legacy(kinds: frozenset[str]) -> dict[str, frozenset[str]]:
    """A 1.2 method: from loopback the placeholder session is oneadmin's (AUTH legacy =
    loopback); a session naming a user must be valid and is then that user."""
    return {LOOPBACK: kinds | {NONE}, REMOTE: kinds}


#: Who may call each method on alice's objects, from where. Written by hand.
ALLOWED: dict[str, dict[str, frozenset[str]]] = {
    # 1.2 methods
    "one.vmallocate": legacy(USERS),
    "one.vmdeploy": legacy(OWNERS),
    "one.vmaction": legacy(OWNERS),
    "one.vmmigrate": legacy(OWNERS),
    "one.vmget_info": legacy(OWNERS),
    "one.hostallocate": legacy(ADMIN_ONLY),
    "one.hostinfo": legacy(USERS),
    "one.hostdelete": legacy(ADMIN_ONLY),
    "one.hostenable": legacy(ADMIN_ONLY),
    "one.vnallocate": legacy(USERS),
    "one.vninfo": legacy(OWNERS),  # alice's own network; oneadmin's would be public
    "one.vndelete": legacy(OWNERS),
    # 1.4 methods
    "one.vm.allocate": same_everywhere(USERS),
    "one.vm.deploy": same_everywhere(OWNERS),
    "one.vm.action": same_everywhere(OWNERS),
    "one.vm.migrate": same_everywhere(OWNERS),
    "one.vm.info": same_everywhere(OWNERS),
    "one.vm.recover": same_everywhere(ADMIN_ONLY),  # 4.2: administrator rights on the VM
    "one.vmpool.info": same_everywhere(USERS),
    "one.vm.monitoring": same_everywhere(OWNERS),  # 3.x; the VM's own polls
    "one.host.allocate": same_everywhere(ADMIN_ONLY),
    "one.host.info": same_everywhere(USERS),
    "one.host.delete": same_everywhere(ADMIN_ONLY),
    "one.host.enable": same_everywhere(ADMIN_ONLY),
    "one.hostpool.info": same_everywhere(USERS),
    "one.host.monitoring": same_everywhere(USERS),  # 3.x; readable as one.host.info
    "one.vn.allocate": same_everywhere(USERS),
    "one.vn.info": same_everywhere(OWNERS),
    "one.vn.delete": same_everywhere(OWNERS),
    "one.vnpool.info": same_everywhere(USERS),
    "one.user.allocate": same_everywhere(ADMIN_ONLY),
    "one.user.info": same_everywhere(ADMIN_ONLY),
    "one.user.delete": same_everywhere(ADMIN_ONLY),
    "one.userpool.info": same_everywhere(ADMIN_ONLY),
    # nebula-xr methods
    "nebula_xr.vm.history": same_everywhere(OWNERS),
    "nebula_xr.vm.console": same_everywhere(OWNERS),
    "nebula_xr.vm.resubmit": same_everywhere(ADMIN_ONLY),  # host failure handling
    # introspection is open; a multicall grants nothing its calls would not get
    "system.listMethods": same_everywhere(EVERYONE),
    "system.methodExist": same_everywhere(EVERYONE),
    "system.methodHelp": same_everywhere(EVERYONE),
    "system.methodSignature": same_everywhere(EVERYONE),
    "system.capabilities": same_everywhere(EVERYONE),
    "system.getCapabilities": same_everywhere(EVERYONE),
    "system.multicall": legacy(ADMIN_ONLY),  # of one.hostdelete
}

#: The 1.4-style refusals the daemon answers (anything else passed authorisation).
REFUSALS = (
    "User not authorized",
    "User not authenticated",
    "User not recognized",
    "User cannot delete VN",
    "Only oneadmin can enable hosts",
)

NS = f"nxrauth{os.getpid()}"
HOST_IF, PEER_IF = f"nxa{os.getpid()}h", f"nxa{os.getpid()}p"
HOST_ADDRESS, PEER_ADDRESS = "10.77.9.1", "10.77.9.2"
#: Names this suite gives its namespace and host-side link; the number is the test's pid.
STALE_NAMES = re.compile(r"(?:nxrauth|nxa)(\d+)h?$")

CLIENT = """
import json, sys, xmlrpc.client
proxy = xmlrpc.client.ServerProxy(sys.argv[1])
for line in sys.stdin:
    method, params = json.loads(line)
    try:
        out = {"reply": getattr(proxy, method)(*params)}
    except xmlrpc.client.Fault as fault:
        out = {"fault": [fault.faultCode, fault.faultString]}
    print(json.dumps(out), flush=True)
"""


def sha1(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def ip(*args: str, check: bool = True) -> str:
    done = subprocess.run(["ip", *args], check=check, capture_output=True, timeout=30, text=True)
    return done.stdout


def remove_stale_network() -> None:
    """Remove the namespace and link of a run of this suite that was killed.

    Its host-side link would still hold 10.77.9.1/30 and route the replies to our client
    into a dead namespace: every connection from the namespace would time out.
    """
    names = [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]
    names += [line.split()[1].split("@")[0] for line in ip("-o", "link").splitlines()]
    for name in names:
        match = STALE_NAMES.match(name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            kind = ("netns", "del") if name.startswith("nxrauth") else ("link", "del")
            ip(*kind, name, check=False)
    routes = ip("-4", "route", "show", "to", "match", HOST_ADDRESS)
    if HOST_ADDRESS.rsplit(".", 1)[0] + ".0/30" in routes:
        pytest.fail(f"{HOST_ADDRESS}/30 is already routed on this machine: {routes.strip()}")


@pytest.fixture(scope="module")
def namespace() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("the attack suite needs root and iproute2 for its network namespace")
    remove_stale_network()
    try:
        ip("netns", "add", NS)
    except subprocess.CalledProcessError as error:
        pytest.skip(f"can not create a network namespace: {error.stderr.decode().strip()}")
    try:
        ip("link", "add", HOST_IF, "type", "veth", "peer", "name", PEER_IF)
        ip("link", "set", PEER_IF, "netns", NS)
        ip("addr", "add", f"{HOST_ADDRESS}/30", "dev", HOST_IF)
        ip("link", "set", HOST_IF, "up")
        ip("-n", NS, "addr", "add", f"{PEER_ADDRESS}/30", "dev", PEER_IF)
        ip("-n", NS, "link", "set", PEER_IF, "up")
        ip("-n", NS, "link", "set", "lo", "up")
        yield NS
    finally:
        ip("netns", "del", NS, check=False)
        ip("link", "del", HOST_IF, check=False)


class Client:
    """An XML-RPC client process, here or inside the namespace, fed calls as JSON lines."""

    def __init__(self, url: str, netns: str | None = None) -> None:
        prefix = ["ip", "netns", "exec", netns] if netns else []
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-c", CLIENT, url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def call(self, method: str, params: list[Any]) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps([method, params]) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the client died"
        answer = json.loads(line)
        return answer.get("reply", answer.get("fault"))

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=10)


@dataclass
class World:
    """The daemon with oneadmin, alice (who owns the targets) and bob."""

    one: OneDaemon
    sessions: dict[str, str] = field(default_factory=dict)
    alice: int = -1
    names: Iterator[int] = field(default_factory=count)

    def admin(self, method: str, *args: Any) -> Any:
        return self.one.call14(method, *args)

    def as_alice(self, method: str, *args: Any) -> Any:
        return self.one.call14(method, *args, session=self.sessions[OWNER])

    def fresh(self, prefix: str) -> str:
        return f"{prefix}{next(self.names)}"

    # targets -----------------------------------------------------------------------------

    def pending_vm(self) -> int:
        ok, vid = self.as_alice("one.vm.allocate", "CPU = 0.1\nMEMORY = 16")
        assert ok, vid
        return vid

    def running_vm(self) -> int:
        vid = self.pending_vm()
        assert self.admin("one.vm.deploy", vid, 0) == [True]
        wait_for(lambda: self.vm_state(vid) == (3, 3), what=f"VM {vid} running")
        return vid

    def vm_state(self, vid: int) -> tuple[int, int]:
        ok, document = self.admin("one.vm.info", vid)
        vm = ElementTree.fromstring(document)
        return int(vm.find("STATE").text), int(vm.find("LCM_STATE").text)

    def spare_host(self) -> int:
        ok, hid = self.admin(
            "one.host.allocate", self.fresh("spare"), "im_xen", "vmm_xen", "tm_nfs"
        )
        assert ok
        return hid

    def host_state(self, hid: int) -> int | None:
        ok, document = self.admin("one.host.info", hid)
        return int(ElementTree.fromstring(document).find("STATE").text) if ok else None

    def network(self) -> int:
        text = f"NAME = {self.fresh('net')}\nTYPE = FIXED\nLEASES = [ IP = 10.99.0.1 ]"
        ok, nid = self.as_alice("one.vn.allocate", text)
        assert ok, nid
        return nid

    def network_exists(self, nid: int) -> bool:
        return self.admin("one.vn.info", nid)[0] is True

    def user(self) -> int:
        ok, uid = self.admin("one.user.allocate", self.fresh("victim"), sha1("pw"))
        assert ok
        return uid

    def user_exists(self, uid: int) -> bool:
        return self.admin("one.user.info", uid)[0] is True

    def host_names(self) -> set[str]:
        ok, document = self.admin("one.hostpool.info")
        return {host.find("NAME").text for host in ElementTree.fromstring(document)}

    def network_names(self) -> set[str]:
        ok, document = self.admin("one.vnpool.info", -2)
        return {net.find("NAME").text for net in ElementTree.fromstring(document)}

    def user_names(self) -> set[str]:
        ok, document = self.admin("one.userpool.info")
        return {user.find("NAME").text for user in ElementTree.fromstring(document)}


@dataclass
class Case:
    """How to call a method on a fresh target, and whether it took effect."""

    prepare: Callable[[World], tuple]
    took_effect: Callable[[World, tuple], bool] | None = None


def _vm_template(w: World) -> tuple:
    return (f"NAME = {w.fresh('vm')}\nCPU = 0.1\nMEMORY = 16",)


def _vm_named(w: World, args: tuple) -> bool:
    name = args[0].split("\n")[0].split(" = ")[1]
    ok, document = w.admin("one.vmpool.info", -2)
    return name in {vm.find("NAME").text for vm in ElementTree.fromstring(document)}


def _vn_template(w: World) -> tuple:
    return (f"NAME = {w.fresh('newnet')}\nTYPE = FIXED\nLEASES = [ IP = 10.98.0.1 ]",)


def _vn_named(w: World, args: tuple) -> bool:
    return args[0].split("\n")[0].split(" = ")[1] in w.network_names()


def _hold(w: World) -> tuple:
    return ("hold", w.pending_vm())


CASES: dict[str, Case] = {
    "one.vmallocate": Case(_vm_template, _vm_named),
    "one.vmdeploy": Case(lambda w: (w.pending_vm(), 0), lambda w, a: w.vm_state(a[0])[0] != 1),
    "one.vmaction": Case(_hold, lambda w, a: w.vm_state(a[1])[0] == 2),
    "one.vmmigrate": Case(
        lambda w: (w.running_vm(), 1, False), lambda w, a: w.vm_state(a[0])[1] != 3
    ),
    "one.vmget_info": Case(lambda w: (w.pending_vm(),)),
    "one.hostallocate": Case(
        lambda w: (w.fresh("newhost"), "im_xen", "vmm_xen", "tm_nfs", True),
        lambda w, a: a[0] in w.host_names(),
    ),
    "one.hostinfo": Case(lambda w: (0,)),
    "one.hostdelete": Case(lambda w: (w.spare_host(),), lambda w, a: w.host_state(a[0]) is None),
    "one.hostenable": Case(lambda w: (w.spare_host(), False), lambda w, a: w.host_state(a[0]) == 4),
    "one.vnallocate": Case(_vn_template, _vn_named),
    "one.vninfo": Case(lambda w: (w.network(),)),
    "one.vndelete": Case(lambda w: (w.network(),), lambda w, a: not w.network_exists(a[0])),
    "one.vm.allocate": Case(_vm_template, _vm_named),
    "one.vm.deploy": Case(lambda w: (w.pending_vm(), 0), lambda w, a: w.vm_state(a[0])[0] != 1),
    "one.vm.action": Case(_hold, lambda w, a: w.vm_state(a[1])[0] == 2),
    "one.vm.migrate": Case(
        lambda w: (w.running_vm(), 1, False), lambda w, a: w.vm_state(a[0])[1] != 3
    ),
    "one.vm.info": Case(lambda w: (w.pending_vm(),)),
    "one.vm.recover": Case(lambda w: (w.running_vm(), True)),
    "one.vmpool.info": Case(lambda w: (-2,)),
    "one.vm.monitoring": Case(lambda w: (w.pending_vm(),)),
    "one.host.allocate": Case(
        lambda w: (w.fresh("newhost"), "im_xen", "vmm_xen", "tm_nfs"),
        lambda w, a: a[0] in w.host_names(),
    ),
    "one.host.info": Case(lambda w: (0,)),
    "one.host.delete": Case(lambda w: (w.spare_host(),), lambda w, a: w.host_state(a[0]) is None),
    "one.host.enable": Case(
        lambda w: (w.spare_host(), False), lambda w, a: w.host_state(a[0]) == 4
    ),
    "one.hostpool.info": Case(lambda w: ()),
    "one.host.monitoring": Case(lambda w: (0,)),
    "one.vn.allocate": Case(_vn_template, _vn_named),
    "one.vn.info": Case(lambda w: (w.network(),)),
    "one.vn.delete": Case(lambda w: (w.network(),), lambda w, a: not w.network_exists(a[0])),
    "one.vnpool.info": Case(lambda w: (-2,)),
    "one.user.allocate": Case(
        lambda w: (w.fresh("newuser"), sha1("pw")), lambda w, a: a[0] in w.user_names()
    ),
    "one.user.info": Case(lambda w: (w.alice,)),
    "one.user.delete": Case(lambda w: (w.user(),), lambda w, a: not w.user_exists(a[0])),
    "one.userpool.info": Case(lambda w: ()),
    "nebula_xr.vm.history": Case(lambda w: (w.pending_vm(),)),
    "nebula_xr.vm.console": Case(lambda w: (w.running_vm(),)),
    "nebula_xr.vm.resubmit": Case(
        lambda w: (w.running_vm(),), lambda w, a: w.vm_state(a[0]) != (3, 3)
    ),
}

#: The introspection methods take no session: their arguments, and their answer.
INTROSPECTION: dict[str, tuple[tuple, Any]] = {
    "system.listMethods": ((), None),  # checked by test_the_table_covers_every_method
    "system.methodExist": (("one.vm.info",), True),
    "system.methodHelp": (("one.vm.info",), "Returns virtual machine information"),
    "system.methodSignature": (("one.vm.info",), [["array", "string", "int"]]),
    "system.capabilities": ((), None),
    "system.getCapabilities": ((), None),
}
#: Not in the table: it stops nothing and is refused to everyone with a fault.
UNLISTED = {"system.shutdown"}


def call_case(client: Client, world: World, method: str, session: str) -> tuple[Any, tuple]:
    if method in INTROSPECTION:
        args = INTROSPECTION[method][0]
        return client.call(method, list(args)), args
    if method == "system.multicall":
        args = (world.spare_host(),)
        calls = [{"methodName": "one.hostdelete", "params": [session, *args]}]
        results = client.call(method, [calls])
        return results[0][0] if isinstance(results[0], list) else results[0], args
    args = CASES[method].prepare(world)
    return client.call(method, [session, *args]), args


def is_refusal(reply: Any) -> bool:
    return (
        isinstance(reply, list)
        and len(reply) == 2
        and reply[0] is False
        and isinstance(reply[1], str)
        and reply[1].startswith(REFUSALS)
    )


def is_success(method: str, reply: Any) -> bool:
    if method == "system.listMethods":
        return isinstance(reply, list) and "one.vm.info" in reply
    if method in ("system.capabilities", "system.getCapabilities"):
        return isinstance(reply, dict) and bool(reply)
    if method in INTROSPECTION:
        return reply == INTROSPECTION[method][1]
    if method == "one.vm.recover":  # past the checks; a RUNNING VM has nothing to recover
        return isinstance(reply, list) and reply[0] is False and "Wrong state" in reply[1]
    if method == "nebula_xr.vm.console":  # past the checks; the dummy driver has no console
        return isinstance(reply, list) and "offers no console" in str(reply[-1])
    return isinstance(reply, list) and reply[0] is True


@pytest.fixture(scope="module")
def world(namespace: str, tmp_path_factory) -> Iterator[World]:
    location = tmp_path_factory.mktemp("attack")
    conf = write_conf(location)
    conf.write_text(
        conf.read_text().replace('LISTEN_ADDRESS = "127.0.0.1"', 'LISTEN_ADDRESS = "0.0.0.0"')
    )
    one = OneDaemon(location).start()
    w = World(one)
    try:
        for name in ("node01", "node02"):
            assert w.admin("one.host.allocate", name, "im_xen", "vmm_xen", "tm_nfs")[0]
        ok, w.alice = w.admin("one.user.allocate", "alice", sha1("alice-pw"))
        assert ok
        assert w.admin("one.user.allocate", "bob", sha1("bob-pw"))[0]
        w.sessions = {
            NONE: "sessionID",
            WRONG: f"oneadmin:{sha1('not-the-password')}",
            OTHER: f"bob:{sha1('bob-pw')}",
            OWNER: f"alice:{sha1('alice-pw')}",
            ADMIN: one.session,
        }
        wait_for(lambda: w.host_state(0) == 2 and w.host_state(1) == 2, what="hosts monitored")
        yield w
    finally:
        one.stop()


def test_the_table_covers_every_method(world: World) -> None:
    """A method added to the daemon must be added to the table, with its rule."""
    with world.one.proxy() as proxy:
        listed = set(proxy.system.listMethods())
        assert listed == set(ALLOWED) | UNLISTED
        assert "one.vm.recover" in listed and "nebula_xr.vm.resubmit" in listed
        with pytest.raises(xmlrpc.client.Fault, match="not capable of shutting down"):
            proxy.system.shutdown("")
    assert world.admin("one.vm.info", world.pending_vm())[0] is True  # still serving


def test_every_method_is_allowed_exactly_as_the_table_says(world: World, namespace: str) -> None:
    port = world.one.url.rsplit(":", 1)[1].split("/")[0]
    clients = {
        LOOPBACK: Client(f"http://127.0.0.1:{port}/RPC2"),
        REMOTE: Client(f"http://{HOST_ADDRESS}:{port}/RPC2", netns=namespace),
    }
    assert set(ALLOWED) == set(CASES) | set(INTROSPECTION) | {"system.multicall"}
    tried = allowed = refused = refused_as_expected = 0
    wrong: list[str] = []
    try:
        for method, rule in ALLOWED.items():
            for where, client in clients.items():
                for kind in KINDS:
                    reply, args = call_case(client, world, method, world.sessions[kind])
                    tried += 1
                    expected = kind in rule[where]
                    if is_refusal(reply):
                        refused += 1
                        refused_as_expected += not expected
                        case = CASES.get(method)
                        if case is not None and case.took_effect is not None:
                            if case.took_effect(world, args):
                                wrong.append(f"{method} {where} {kind}: refused but done")
                        if expected:
                            wrong.append(f"{method} {where} {kind}: refused: {reply}")
                    else:
                        allowed += 1
                        if not expected:
                            wrong.append(f"{method} {where} {kind}: allowed: {reply!r:.100}")
                        elif not is_success(method, reply):
                            wrong.append(f"{method} {where} {kind}: failed: {reply!r:.100}")
    finally:
        for client in clients.values():
            client.close()
    print(
        f"\nattack suite (authorisation): {tried} calls tried, {allowed} allowed, "
        f"{refused} refused, {refused_as_expected} refused as expected"
    )
    assert not wrong, "\n".join(wrong)
    assert refused == refused_as_expected
    assert tried == len(ALLOWED) * 2 * len(KINDS)
    # the daemon saw the namespace's address, and logged its failed sign-ins with it
    log = (world.one.location / "var" / "oned.log").read_text()
    assert f"Authentication failed for user 'oneadmin' from {PEER_ADDRESS}" in log
    assert "Authentication failed for user 'oneadmin' from 127.0.0.1" in log


def test_users_only_see_their_own_objects(world: World) -> None:
    bob = world.sessions[OTHER]
    hers = world.pending_vm()
    ok, his = world.one.call14("one.vm.allocate", "NAME = his", session=bob)
    assert ok
    ok, document = world.one.call14("one.vmpool.info", -2, session=bob)
    listed = ElementTree.fromstring(document)
    assert {vm.find("USERNAME").text for vm in listed} == {"bob"}
    assert his in {int(vm.find("ID").text) for vm in listed}
    assert hers not in {int(vm.find("ID").text) for vm in listed}
    ok, document = world.one.call14("one.vmpool.info", world.alice, session=bob)
    assert ElementTree.fromstring(document).findall("VM") == []
    # oneadmin's networks are public: seen and usable by all; alice's are not bob's
    ok, public = world.admin(
        "one.vn.allocate",
        "NAME = public\nTYPE = FIXED\nLEASES = [ IP = 10.97.0.1 ]\nLEASES = [ IP = 10.97.0.2 ]",
    )
    ok, private = world.as_alice(
        "one.vn.allocate", "NAME = hers\nTYPE = FIXED\nLEASES = [ IP = 10.96.0.1 ]"
    )
    ok, document = world.one.call14("one.vnpool.info", -2, session=bob)
    seen = {int(net.find("ID").text) for net in ElementTree.fromstring(document)}
    assert public in seen and private not in seen
    assert world.one.call14("one.vn.info", public, session=bob)[0] is True
    assert world.one.call14("one.vm.allocate", "NIC = [ NETWORK = public ]", session=bob)[0]
    assert world.one.call14("one.vmallocate", "NIC = [ NETWORK = public ]", session=bob)[0]
    assert world.one.call14("one.vmallocate", "NIC = [ NETWORK = hers ]", session=bob) == [
        False,
        "Error inserting VM in the database, check oned.log",
    ]
    # alice's VM is hers through the 1.2 API too
    assert world.one.call14("one.vmget_info", hers, session=bob) == [
        False,
        f"User not authorized to perform operation upon VirtualMachine [{hers}]",
    ]
    assert world.one.call14("one.vmget_info", hers, session=world.sessions[OWNER])[0] is True
