"""The XML documents of the 1.4 API (api-1.4.md §4), built with lxml.

Element names and order are exactly 1.4's; every document is one line without an XML
declaration. Unlike 1.4, text is escaped (lxml does it), so a ``REQUIREMENTS`` with
``&``, ``<`` or ``>`` no longer produces XML that breaks Haizea and the Ruby clients.
Info documents and pool elements differ on purpose (pools carry no TEMPLATE but the
owner's USERNAME), as in 1.4.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from lxml import etree

from nebula_xr.model import History, Host, VirtualMachine, leading_int
from nebula_xr.template import Template
from nebula_xr.transport.xmlrpc import escape_string
from nebula_xr.users import User
from nebula_xr.vnet import NetworkType, VirtualNetwork, number_to_ip

#: Owner uid → user name ('' when the user is gone).
UserNames = Callable[[int], str]

# Characters XML 1.0 cannot carry even escaped; templates may hold any of them.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_NOT_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def _text(value: object) -> str:
    text = str(value)
    return _NOT_XML.sub("\ufffd", text) if _NOT_XML.search(text) else text


# What lxml escapes in text, and what it could not write at all (replaced as by _text).
_NOT_PLAIN = re.compile("[&<>\r\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")

#: Objects per piece of a pool listing: small enough for a piece to take about a
#: millisecond, big enough that the per-piece work does not count.
POOL_SLICE = 200


def _escaped(text: str) -> str:
    """``text`` as lxml writes it inside an element: escaped, illegal characters
    replaced."""
    text = _text(text)
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\r", "&#13;")
    )


def _escaped_twice(text: str) -> str:
    """``text`` as it reads in a pool document sent as an XML-RPC string."""
    return escape_string(_escaped(text))


def _as_is(text: str) -> str:
    return text


@dataclass(frozen=True)
class _Form:
    """How a pool document is written: as XML, or directly as the XML-RPC string that
    carries it (markup escaped once, text twice), which saves escaping megabytes of
    markup afterwards."""

    markup: Callable[[str], str]
    escape: Callable[[str], str]

    def escaper(self, texts: Iterable[str]) -> Callable[[str], str]:
        """:attr:`escape`, or nothing to do if none of ``texts`` needs it (one check for
        the strings of a whole slice: most names need no escaping)."""
        return self.escape if _NOT_PLAIN.search("".join(texts)) else _as_is


_XML = _Form(_as_is, _escaped)
_XMLRPC = _Form(escape_string, _escaped_twice)


def _pieces(
    root: str, items: Sequence[Any], write: Callable[[Sequence[Any]], str], form: _Form
) -> Iterator[str]:
    """``<root>``, then ``write`` of each slice of :data:`POOL_SLICE` items, ``</root>``:
    a pool document in pieces that can be built between reactor turns."""
    yield form.markup(f"<{root}>")
    for start in range(0, len(items), POOL_SLICE):
        yield write(items[start : start + POOL_SLICE])
    yield form.markup(f"</{root}>")


def _add(parent: etree._Element, tag: str, value: object = None) -> etree._Element:
    try:
        element = etree.SubElement(parent, tag)
    except ValueError:
        # A template attribute name that is no XML name (NET:1, 2ND): keep it readable.
        safe = _NOT_NAME.sub("_", tag)
        element = etree.SubElement(parent, safe if safe[:1].isalpha() else f"_{safe}")
    # An empty text keeps empty elements as <X></X>, the way 1.4 writes them.
    element.text = "" if value is None else _text(value)
    return element


def _root(tag: str) -> etree._Element:
    element = etree.Element(tag)
    element.text = ""
    return element


def _fields(parent: etree._Element, fields: Iterable[tuple[str, object]]) -> None:
    for tag, value in fields:
        _add(parent, tag, value)


def _serialize(root: etree._Element) -> str:
    return etree.tostring(root, encoding="unicode")


def _template(
    parent: etree._Element, template: Template, extra: tuple[str, str] | None = None
) -> None:
    """``<TEMPLATE>``: attributes by name (repeated names in template order), vectors
    as sub-elements by key; ``extra`` is inserted in its sorted place if absent."""
    element = _add(parent, "TEMPLATE")
    attributes = template.sorted_attributes()
    if extra is not None and template.get(extra[0]) is None:
        attributes = sorted([*attributes, extra], key=lambda attribute: attribute[0])
    for name, value in attributes:
        if isinstance(value, str):
            _add(element, name, value)
        else:
            vector = _add(element, name)
            for key in sorted(value):
                _add(vector, key, value[key])


# -- virtual machines --------------------------------------------------------------------


def _history(parent: etree._Element, record: History) -> None:
    _fields(
        _add(parent, "HISTORY"),
        (
            ("SEQ", record.seq),
            ("HOSTNAME", record.host_name),
            ("HID", record.hid),
            ("STIME", record.stime),
            ("ETIME", record.etime),
            ("PSTIME", record.pstime),
            ("PETIME", record.petime),
            ("RSTIME", record.rstime),
            ("RETIME", record.retime),
            ("ESTIME", record.estime),
            ("EETIME", record.eetime),
            ("REASON", int(record.reason)),
        ),
    )


def _vm(element: etree._Element, vm: VirtualMachine, username: str | None) -> None:
    _fields(element, (("ID", vm.oid), ("UID", vm.uid)))
    if username is not None:
        _add(element, "USERNAME", username)
    _fields(
        element,
        (
            ("NAME", vm.name),
            ("LAST_POLL", vm.last_poll),
            ("STATE", int(vm.state)),
            ("LCM_STATE", int(vm.lcm_state)),
            ("STIME", vm.stime),
            ("ETIME", vm.etime),
            ("DEPLOY_ID", vm.deploy_id),
            ("MEMORY", vm.memory),
            ("CPU", vm.cpu),
            ("NET_TX", vm.net_tx),
            ("NET_RX", vm.net_rx),
        ),
    )


def vm_document(vm: VirtualMachine) -> str:
    """``<VM>`` of one.vm.info: template (with 1.4's VMID) and the current record."""
    element = _root("VM")
    _vm(element, vm, None)
    _template(element, vm.template, ("VMID", str(vm.oid)))
    if vm.current is not None:
        _history(element, vm.current)
    return _serialize(element)


def _name(template: Template) -> str:
    """``vm.name`` without its case-folding of "NAME" (a third of a listing's time)."""
    for name, value in template.attributes:
        if name == "NAME":
            return value if isinstance(value, str) else ""
    return ""


_VM_ENTRY = (
    "<VM><ID>%s</ID><UID>%s</UID><USERNAME>%s</USERNAME><NAME>%s</NAME>"
    "<LAST_POLL>%s</LAST_POLL><STATE>%s</STATE><LCM_STATE>%s</LCM_STATE><STIME>%s</STIME>"
    "<ETIME>%s</ETIME><DEPLOY_ID>%s</DEPLOY_ID><MEMORY>%s</MEMORY><CPU>%s</CPU>"
    "<NET_TX>%s</NET_TX><NET_RX>%s</NET_RX>%s</VM>"
)
_HISTORY_ENTRY = (
    "<HISTORY><SEQ>%s</SEQ><HOSTNAME>%s</HOSTNAME><HID>%s</HID><STIME>%s</STIME>"
    "<ETIME>%s</ETIME><PSTIME>%s</PSTIME><PETIME>%s</PETIME><RSTIME>%s</RSTIME>"
    "<RETIME>%s</RETIME><ESTIME>%s</ESTIME><EETIME>%s</EETIME><REASON>%s</REASON></HISTORY>"
)


def _vm_pool_slice(vms: Sequence[VirtualMachine], username: UserNames, form: _Form) -> str:
    """The ``<VM>`` elements of one.vmpool.info for ``vms``, written as text directly."""
    rows = [(vm, _name(vm.template), username(vm.uid), vm.current) for vm in vms]
    escape = form.escaper(
        text
        for vm, name, owner, current in rows
        for text in (name, owner, vm.deploy_id, current.host_name if current else "")
    )
    vm_entry, history_entry = form.markup(_VM_ENTRY), form.markup(_HISTORY_ENTRY)
    return "".join(
        vm_entry
        % (
            vm.oid,
            vm.uid,
            escape(owner),
            escape(name),
            vm.last_poll,
            int(vm.state),
            int(vm.lcm_state),
            vm.stime,
            vm.etime,
            escape(vm.deploy_id),
            vm.memory,
            vm.cpu,
            vm.net_tx,
            vm.net_rx,
            ""
            if h is None
            else history_entry
            % (
                h.seq,
                escape(h.host_name),
                h.hid,
                h.stime,
                h.etime,
                h.pstime,
                h.petime,
                h.rstime,
                h.retime,
                h.estime,
                h.eetime,
                int(h.reason),
            ),
        )
        for vm, name, owner, h in rows
    )


def vm_pool_pieces(
    vms: Sequence[VirtualMachine], username: UserNames, *, xmlrpc: bool = False
) -> Iterator[str]:
    """``<VM_POOL>`` of one.vmpool.info in pieces: no templates, owner names, current
    records; with ``xmlrpc``, already escaped as the XML-RPC string that carries it.
    Each VM is written when its piece is, so build the pieces without yielding to the
    reactor in between if the document must be one instant's state."""
    form = _XMLRPC if xmlrpc else _XML
    return _pieces("VM_POOL", vms, lambda part: _vm_pool_slice(part, username, form), form)


def vm_pool_document(vms: Iterable[VirtualMachine], username: UserNames) -> str:
    """``<VM_POOL>`` of one.vmpool.info (:func:`vm_pool_pieces` at once)."""
    return "".join(vm_pool_pieces(list(vms), username))


def history_document(vm: VirtualMachine) -> str:
    """``<HISTORY_RECORDS>``: every record of the VM by seq (a nebula-xr addition; 1.4
    only shows the current one)."""
    root = _root("HISTORY_RECORDS")
    for record in vm.history:
        _history(root, record)
    return _serialize(root)


# -- hosts -------------------------------------------------------------------------------


def _host(element: etree._Element, host: Host) -> None:
    _fields(
        element,
        (
            ("ID", host.oid),
            ("NAME", host.name),
            ("STATE", int(host.state)),
            ("IM_MAD", host.im_mad),
            ("VM_MAD", host.vm_mad),
            ("TM_MAD", host.tm_mad),
            ("LAST_MON_TIME", host.last_mon_time),
        ),
    )
    shares, monitored = host.shares, host.attributes.get
    _fields(
        _add(element, "HOST_SHARE"),
        (
            ("HID", host.oid),
            ("DISK_USAGE", shares.disk_usage),
            ("MEM_USAGE", shares.mem_usage),
            ("CPU_USAGE", shares.cpu_usage),
            ("MAX_DISK", shares.max_disk),
            ("MAX_MEM", shares.max_mem),
            ("MAX_CPU", shares.max_cpu),
            ("FREE_DISK", 0),
            ("FREE_MEM", leading_int(monitored("FREEMEMORY"))),
            ("FREE_CPU", leading_int(monitored("FREECPU"))),
            ("USED_DISK", 0),
            ("USED_MEM", leading_int(monitored("USEDMEMORY"))),
            ("USED_CPU", leading_int(monitored("USEDCPU"))),
            ("RUNNING_VMS", shares.running_vms),
        ),
    )


def host_document(host: Host) -> str:
    """``<HOST>`` of one.host.info, with the monitored attributes as TEMPLATE."""
    element = _root("HOST")
    _host(element, host)
    _template(element, Template(host.attributes.items()))
    return _serialize(element)


_HOST_ENTRY = (
    "<HOST><ID>%s</ID><NAME>%s</NAME><STATE>%s</STATE><IM_MAD>%s</IM_MAD><VM_MAD>%s</VM_MAD>"
    "<TM_MAD>%s</TM_MAD><LAST_MON_TIME>%s</LAST_MON_TIME><HOST_SHARE><HID>%s</HID>"
    "<DISK_USAGE>%s</DISK_USAGE><MEM_USAGE>%s</MEM_USAGE><CPU_USAGE>%s</CPU_USAGE>"
    "<MAX_DISK>%s</MAX_DISK><MAX_MEM>%s</MAX_MEM><MAX_CPU>%s</MAX_CPU><FREE_DISK>0</FREE_DISK>"
    "<FREE_MEM>%s</FREE_MEM><FREE_CPU>%s</FREE_CPU><USED_DISK>0</USED_DISK>"
    "<USED_MEM>%s</USED_MEM><USED_CPU>%s</USED_CPU><RUNNING_VMS>%s</RUNNING_VMS>"
    "</HOST_SHARE></HOST>"
)


def _host_pool_slice(hosts: Sequence[Host], form: _Form) -> str:
    escape = form.escaper(
        text for host in hosts for text in (host.name, host.im_mad, host.vm_mad, host.tm_mad)
    )
    entry = form.markup(_HOST_ENTRY)
    parts = []
    for host in hosts:
        shares, monitored = host.shares, host.attributes.get
        parts.append(
            entry
            % (
                host.oid,
                escape(host.name),
                int(host.state),
                escape(host.im_mad),
                escape(host.vm_mad),
                escape(host.tm_mad),
                host.last_mon_time,
                host.oid,
                shares.disk_usage,
                shares.mem_usage,
                shares.cpu_usage,
                shares.max_disk,
                shares.max_mem,
                shares.max_cpu,
                leading_int(monitored("FREEMEMORY")),
                leading_int(monitored("FREECPU")),
                leading_int(monitored("USEDMEMORY")),
                leading_int(monitored("USEDCPU")),
                shares.running_vms,
            )
        )
    return "".join(parts)


def host_pool_pieces(hosts: Sequence[Host], *, xmlrpc: bool = False) -> Iterator[str]:
    """``<HOST_POOL>`` of one.hostpool.info in pieces (see :func:`vm_pool_pieces`)."""
    form = _XMLRPC if xmlrpc else _XML
    return _pieces("HOST_POOL", hosts, lambda part: _host_pool_slice(part, form), form)


def host_pool_document(hosts: Iterable[Host]) -> str:
    return "".join(host_pool_pieces(list(hosts)))


# -- virtual networks --------------------------------------------------------------------


def vnet_document(network: VirtualNetwork) -> str:
    """``<VNET>`` of one.vn.info: the template as written and the leases by IP (RANGED
    networks only list leased addresses)."""
    element = _root("VNET")
    _fields(
        element,
        (
            ("ID", network.oid),
            ("UID", network.uid),
            ("NAME", network.name),
            ("TYPE", int(network.type)),
            ("BRIDGE", network.bridge),
        ),
    )
    _template(element, network.template)
    leases = _add(element, "LEASES")
    for ip in sorted(network.leases):
        lease = network.leases[ip]
        if network.type is NetworkType.RANGED and not lease.used:
            continue
        _fields(
            _add(leases, "LEASE"),
            (
                ("IP", number_to_ip(lease.ip)),
                ("MAC", lease.mac),
                ("USED", int(lease.used)),
                ("VID", lease.vid),
            ),
        )
    return _serialize(element)


_VNET_ENTRY = (
    "<VNET><ID>%s</ID><UID>%s</UID><USERNAME>%s</USERNAME><NAME>%s</NAME><TYPE>%s</TYPE>"
    "<BRIDGE>%s</BRIDGE><TOTAL_LEASES>%s</TOTAL_LEASES></VNET>"
)


def _vnet_pool_slice(networks: Sequence[VirtualNetwork], username: UserNames, form: _Form) -> str:
    rows = [(network, username(network.uid)) for network in networks]
    escape = form.escaper(
        text for network, owner in rows for text in (owner, network.name, network.bridge)
    )
    entry = form.markup(_VNET_ENTRY)
    return "".join(
        entry
        % (
            network.oid,
            network.uid,
            escape(owner),
            escape(network.name),
            int(network.type),
            escape(network.bridge),
            sum(lease.used for lease in network.leases.values()),
        )
        for network, owner in rows
    )


def vnet_pool_pieces(
    networks: Sequence[VirtualNetwork], username: UserNames, *, xmlrpc: bool = False
) -> Iterator[str]:
    """``<VNET_POOL>`` of one.vnpool.info in pieces (see :func:`vm_pool_pieces`)."""
    form = _XMLRPC if xmlrpc else _XML
    return _pieces("VNET_POOL", networks, lambda part: _vnet_pool_slice(part, username, form), form)


def vnet_pool_document(networks: Iterable[VirtualNetwork], username: UserNames) -> str:
    return "".join(vnet_pool_pieces(list(networks), username))


# -- users -------------------------------------------------------------------------------


def _user(element: etree._Element, user: User, enabled: str) -> etree._Element:
    _fields(
        element,
        # PASSWORD stays for 1.4 clients, empty: the stored hash is nobody's business.
        (("ID", user.oid), ("NAME", user.name), ("PASSWORD", ""), ("ENABLED", enabled)),
    )
    return element


def user_document(user: User) -> str:
    return _serialize(_user(_root("USER"), user, "1" if user.enabled else "0"))


def user_pool_document(users: Iterable[User]) -> str:
    """``<USER_POOL>``: ENABLED reads True or (sic, as 1.4) Fase here."""
    root = _root("USER_POOL")
    for user in users:
        _user(_add(root, "USER"), user, "True" if user.enabled else "Fase")
    return _serialize(root)


# -- monitoring history ------------------------------------------------------------------
# A day of samples is thousands of elements: these documents are joined as text, ten times
# faster than lxml. Every value is a number of the history (nothing a client wrote), so
# there is nothing to escape.


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def host_monitoring_document(hid: int, samples: Iterable[dict[str, float]]) -> str:
    """``<MONITORING_DATA>`` of one.host.monitoring (as OpenNebula 3.x answers it): a
    ``<HOST>`` per sample, oldest first, with its time and the monitored share."""
    n = _number
    return "".join(
        (
            "<MONITORING_DATA>",
            *(
                f"<HOST><ID>{int(hid)}</ID><LAST_MON_TIME>{int(s['time'])}</LAST_MON_TIME>"
                f"<HOST_SHARE><MAX_MEM>{n(s['max_memory'])}</MAX_MEM>"
                f"<MAX_CPU>{n(s['max_cpu'])}</MAX_CPU><USED_MEM>{n(s['used_memory'])}</USED_MEM>"
                f"<USED_CPU>{n(s['used_cpu'])}</USED_CPU></HOST_SHARE></HOST>"
                for s in samples
            ),
            "</MONITORING_DATA>",
        )
    )


def vm_monitoring_document(vid: int, samples: Iterable[dict[str, float]]) -> str:
    """``<MONITORING_DATA>`` of one.vm.monitoring: a ``<VM>`` per poll, oldest first,
    with the vm_pool usage columns as the poll left them."""
    n = _number
    return "".join(
        (
            "<MONITORING_DATA>",
            *(
                f"<VM><ID>{int(vid)}</ID><LAST_POLL>{int(s['time'])}</LAST_POLL>"
                f"<CPU>{n(s['cpu'])}</CPU><MEMORY>{n(s['memory'])}</MEMORY>"
                f"<NET_TX>{n(s['net_tx'])}</NET_TX><NET_RX>{n(s['net_rx'])}</NET_RX></VM>"
                for s in samples
            ),
            "</MONITORING_DATA>",
        )
    )
