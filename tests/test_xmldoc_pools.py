"""The pool documents written as text directly are exactly what lxml writes.

The reference is the lxml element builders the pool documents were made with before
(one element at a time); the direct writer must give the same string for any content,
hostile text included (markup characters, ``]]>``, control characters and lone
surrogates that XML cannot carry, non-BMP characters, one.db's vector separator), and the
XML-RPC answer built as the daemon does it (pieces written escaped for XML-RPC already,
added to an EncodedString) the same bytes as dump_response of the whole string.
"""

from __future__ import annotations

import xmlrpc.client
from unittest.mock import patch

import pytest_twisted
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nebula_xr import xmldoc
from nebula_xr.model import History, Host, HostState, LCMState, VirtualMachine, VMState
from nebula_xr.template import VECTOR_SEPARATOR, Template
from nebula_xr.transport.xmlrpc import EncodedString, MethodRegistry, dump_response
from nebula_xr.vnet import Lease, NetworkType, VirtualNetwork

# -- the lxml reference -------------------------------------------------------------------
# The pool documents used to be built with the element builders the single-object
# documents still use (one lxml element at a time); those are the reference.


def reference_vm_pool(vms: list[VirtualMachine], username) -> str:
    root = xmldoc._root("VM_POOL")
    for vm in vms:
        element = xmldoc._add(root, "VM")
        xmldoc._vm(element, vm, username(vm.uid))
        if vm.current is not None:
            xmldoc._history(element, vm.current)
    return xmldoc._serialize(root)


def reference_host_pool(hosts: list[Host]) -> str:
    root = xmldoc._root("HOST_POOL")
    for host in hosts:
        xmldoc._host(xmldoc._add(root, "HOST"), host)
    return xmldoc._serialize(root)


def reference_vnet_pool(networks: list[VirtualNetwork], username) -> str:
    root = xmldoc._root("VNET_POOL")
    for network in networks:
        xmldoc._fields(
            xmldoc._add(root, "VNET"),
            [
                ("ID", network.oid),
                ("UID", network.uid),
                ("USERNAME", username(network.uid)),
                ("NAME", network.name),
                ("TYPE", int(network.type)),
                ("BRIDGE", network.bridge),
                ("TOTAL_LEASES", sum(lease.used for lease in network.leases.values())),
            ],
        )
    return xmldoc._serialize(root)


# -- hostile content ----------------------------------------------------------------------

HOSTILE = ["&", "<", ">", "]]>", "\r", "\r\n", "\x00", "\x1f", "\ud800", "\udfff", "\ufffe"]
HOSTILE += ["\uffff", "\U0001f600", "\U0010ffff", VECTOR_SEPARATOR, '"', "'", "&amp;", "\t"]

texts = st.lists(
    st.one_of(
        st.sampled_from(HOSTILE),
        st.text(st.characters(blacklist_categories=()), max_size=8),  # surrogates too
        st.text(max_size=8),
    ),
    max_size=6,
).map("".join)
# Mostly plain names, so that slices both with and without text to escape are written.
names = st.one_of(st.from_regex(r"[a-z0-9-]{0,12}", fullmatch=True), texts)
numbers = st.integers(min_value=-(2**31), max_value=2**40)


@st.composite
def vms(draw: st.DrawFn, oid: int) -> VirtualMachine:
    vm = VirtualMachine(
        oid=oid,
        template=Template([("NAME", draw(names))]) if draw(st.booleans()) else Template(),
        stime=draw(numbers),
        uid=draw(st.integers(0, 3)),
        last_poll=draw(numbers),
        state=draw(st.sampled_from(VMState)),
        lcm_state=draw(st.sampled_from(LCMState)),
        etime=draw(numbers),
        deploy_id=draw(names),
        memory=draw(numbers),
        cpu=draw(numbers),
        net_tx=draw(numbers),
        net_rx=draw(numbers),
    )
    for seq in range(draw(st.integers(0, 2))):
        vm.history.append(
            History(
                oid,
                seq,
                draw(names),
                "/vm",
                draw(numbers),
                "vmm",
                "tm",
                *draw(st.tuples(*[numbers] * 8)),
                reason=draw(st.integers(0, 3)),
            )
        )
    return vm


@st.composite
def hosts(draw: st.DrawFn, oid: int) -> Host:
    host = Host(
        oid,
        draw(names),
        draw(names),
        draw(names),
        draw(names),
        True,
        draw(numbers),
        state=draw(st.sampled_from(HostState)),
    )
    host.attributes = draw(
        st.dictionaries(
            st.sampled_from(["FREEMEMORY", "FREECPU", "USEDMEMORY", "USEDCPU", "X"]), texts
        )
    )
    shares = host.shares
    shares.disk_usage, shares.mem_usage, shares.cpu_usage = draw(
        st.tuples(numbers, numbers, numbers)
    )
    shares.max_disk, shares.max_mem, shares.max_cpu = draw(st.tuples(numbers, numbers, numbers))
    shares.running_vms = draw(numbers)
    return host


@st.composite
def networks(draw: st.DrawFn, oid: int) -> VirtualNetwork:
    network = VirtualNetwork(
        oid,
        draw(names),
        draw(st.sampled_from(NetworkType)),
        draw(names),
        Template(),
        0,
        uid=draw(st.integers(0, 3)),
    )
    for ip in range(draw(st.integers(0, 4))):
        network.leases[ip] = Lease(ip, 0, ip, used=draw(st.booleans()))
    return network


def pool(objects, size: int = 12):
    """A pool of up to ``size`` objects: several slices of the tests' POOL_SLICE."""
    return st.integers(0, size).flatmap(
        lambda count: st.tuples(*[objects(oid) for oid in range(count)]).map(list)
    )


owner_names = st.lists(texts, min_size=4, max_size=4)
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def small_slices():
    """Slices of 4 objects, so that small pools are written in several pieces."""
    return patch.object(xmldoc, "POOL_SLICE", 4)


def _pieces_answer(pieces) -> bytes:
    """The answer as the daemon builds it from pieces escaped for XML-RPC already."""
    encoded = EncodedString()
    for piece in pieces:
        encoded.add(piece, escaped=True)
    return dump_response([True, encoded])


@SETTINGS
@given(pool(vms), owner_names)
def test_vm_pool_is_lxml_s(vm_list: list[VirtualMachine], owners: list[str]) -> None:
    with small_slices():
        username = owners.__getitem__
        expected = reference_vm_pool(vm_list, username)
        assert xmldoc.vm_pool_document(vm_list, username) == expected
        answer = _pieces_answer(xmldoc.vm_pool_pieces(vm_list, username, xmlrpc=True))
        assert answer == dump_response([True, expected])


@SETTINGS
@given(pool(hosts))
def test_host_pool_is_lxml_s(host_list: list[Host]) -> None:
    with small_slices():
        expected = reference_host_pool(host_list)
        assert xmldoc.host_pool_document(host_list) == expected
        assert _pieces_answer(xmldoc.host_pool_pieces(host_list, xmlrpc=True)) == dump_response(
            [True, expected]
        )


@SETTINGS
@given(pool(networks), owner_names)
def test_vnet_pool_is_lxml_s(network_list: list[VirtualNetwork], owners: list[str]) -> None:
    with small_slices():
        username = owners.__getitem__
        expected = reference_vnet_pool(network_list, username)
        assert xmldoc.vnet_pool_document(network_list, username) == expected
        answer = _pieces_answer(xmldoc.vnet_pool_pieces(network_list, username, xmlrpc=True))
        assert answer == dump_response([True, expected])


def test_empty_pools_are_empty_elements() -> None:
    assert xmldoc.vm_pool_document([], str) == "<VM_POOL></VM_POOL>" == reference_vm_pool([], str)
    assert xmldoc.host_pool_document([]) == "<HOST_POOL></HOST_POOL>"
    assert xmldoc.vnet_pool_document([], str) == "<VNET_POOL></VNET_POOL>"


@pytest_twisted.inlineCallbacks
def test_encoded_string_answers_as_the_string_would() -> None:
    """Alone and inside a system.multicall, an EncodedString answer is the same document
    as the string's."""
    text = "a&b<c>\r]]>\x00\ud800\U0001f600" + VECTOR_SEPARATOR

    def encoded(_session: str) -> list:
        document = EncodedString()
        for piece in (text[:4], text[4:9], text[9:]):
            document.add(piece)
        return [True, document]

    registry = MethodRegistry()
    registry.register("plain", lambda _session: [True, text], "A:s")
    registry.register("encoded", encoded, "A:s")
    body = xmlrpc.client.dumps(("s",), "encoded").encode()
    assert registry.handle(body) == registry.handle(body.replace(b"encoded", b"plain"))
    calls = [{"methodName": "encoded", "params": ["s"]}, {"methodName": "plain", "params": ["s"]}]
    answer = yield registry.handle(xmlrpc.client.dumps((calls,), "system.multicall").encode())
    results = xmlrpc.client.loads(answer)[0][0]
    assert (
        results[0]
        == results[1]
        == [[True, text.replace("\x00", "\ufffd").replace("\ud800", "\ufffd")]]
    )
