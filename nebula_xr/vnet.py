"""Virtual networks and their leases (templates.md §4–§5).

A lease ties an IPv4 address and a MAC to a VM. The MAC of a generated lease is the
network's MAC prefix followed by the four bytes of the IP, so guests can recover their
address from their MAC. RANGED networks hand out addresses from a range and keep a
row per leased address; FIXED networks have a row per configured lease.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum

from nebula_xr.template import Template


class NetworkType(IntEnum):
    RANGED = 0
    FIXED = 1


class LeaseError(Exception):
    """No lease could be given (network full, address unknown or taken)."""


class NetworkTemplateError(Exception):
    """The network template cannot make a network (e.g. RANGED without NETWORK_ADDRESS)."""


def ip_to_number(text: str) -> int:
    """``"10.0.0.1"`` → 167772161; ValueError unless a dotted quad."""
    parts = text.strip().split(".")
    if len(parts) != 4 or not all(p.isdigit() and p.isascii() and int(p) < 256 for p in parts):
        raise ValueError(f"not an IPv4 address: {text!r}")
    a, b, c, d = (int(p) for p in parts)
    return (a << 24) | (b << 16) | (c << 8) | d


def number_to_ip(number: int) -> str:
    return ".".join(str((number >> shift) & 0xFF) for shift in (24, 16, 8, 0))


def mac_to_string(prefix: int, suffix: int) -> str:
    value = (prefix << 32) | suffix
    return ":".join(f"{(value >> shift) & 0xFF:02x}" for shift in range(40, -8, -8))


def parse_mac(text: str) -> tuple[int, int]:
    """``"50:20:20:20:20:20"`` → (prefix 16 bits, suffix 32 bits); ValueError if malformed."""
    parts = text.strip().split(":")
    if len(parts) != 6 or not all(
        len(p) in (1, 2) and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts
    ):
        raise ValueError(f"not a MAC address: {text!r}")
    value = int("".join(f"{int(p, 16):02x}" for p in parts), 16)
    return value >> 32, value & 0xFFFFFFFF


def parse_mac_prefix(text: str | None) -> int:
    """oned.conf MAC_PREFIX ``"XX:YY"``; anything without exactly one ``:`` means 00:01."""
    if text is None or text.count(":") != 1:
        return 1
    high, low = text.split(":")
    try:
        return ((int(high, 16) & 0xFF) << 8) | (int(low, 16) & 0xFF)
    except ValueError:
        return 1


def ranged_size(value: str | None, default_size: int) -> int:
    """NETWORK_SIZE: ``B`` → 65534, ``C`` → 254, a number, or absent/0 → the default."""
    if value in ("B", "b"):
        return 65534
    if value in ("C", "c"):
        return 254
    try:
        size = int(value) if value is not None else 0
    except ValueError:
        size = 0
    return size if size > 0 else default_size


@dataclass
class Lease:
    ip: int
    mac_prefix: int
    mac_suffix: int
    vid: int = -1
    used: bool = False

    @property
    def mac(self) -> str:
        return mac_to_string(self.mac_prefix, self.mac_suffix)

    def row(self, oid: int) -> tuple:
        return (oid, self.ip, self.mac_prefix, self.mac_suffix, self.vid, int(self.used))

    def info_line(self) -> str:
        ip = f"IP = {number_to_ip(self.ip)}"
        mac = f"MAC = {self.mac}"
        return f"{ip:<20}{mac:<24} USED = {int(self.used)} VID = {self.vid}"


@dataclass
class VirtualNetwork:
    oid: int
    name: str
    type: NetworkType
    bridge: str
    template: Template
    mac_prefix: int
    uid: int = 0
    #: RANGED: first address of the range and the number of usable addresses.
    network_address: int = 0
    size: int = 0
    #: ip → lease. RANGED: only leased addresses; FIXED: every configured lease.
    leases: dict[int, Lease] = field(default_factory=dict)
    #: In-memory scan position, 0 at every start as in 1.2.
    cursor: int = 0

    @classmethod
    def from_template(
        cls, oid: int, template: Template, mac_prefix: int, default_size: int
    ) -> VirtualNetwork:
        kind = NetworkType.RANGED if template.get_string("TYPE") == "RANGED" else NetworkType.FIXED
        network = cls(
            oid=oid,
            name=template.get_string("NAME") or "",
            type=kind,
            bridge=template.get_string("BRIDGE") or "",
            template=template,
            mac_prefix=mac_prefix,
        )
        if kind is NetworkType.RANGED:
            address = template.get_string("NETWORK_ADDRESS")
            if address is None:
                raise NetworkTemplateError("RANGED network without NETWORK_ADDRESS")
            try:
                number = ip_to_number(address)
            except ValueError as error:
                raise NetworkTemplateError(str(error)) from error
            network.size = ranged_size(template.get_string("NETWORK_SIZE"), default_size)
            bits = math.ceil(math.log2(network.size + 2))
            mask = (0xFFFFFFFF << bits) & 0xFFFFFFFF
            network.network_address = number & mask
        else:
            for vector in template.vectors("LEASES"):
                lease = network._fixed_lease(vector)
                if lease is not None:
                    network.leases[lease.ip] = lease
        return network

    def _fixed_lease(self, vector: dict[str, str]) -> Lease | None:
        # 1.2 logs and skips invalid entries instead of refusing the network.
        try:
            ip = ip_to_number(vector.get("IP", ""))
            if "MAC" in vector:
                prefix, suffix = parse_mac(vector["MAC"])
            else:
                prefix, suffix = self.mac_prefix, ip
        except ValueError:
            return None
        return Lease(ip, prefix, suffix)

    @property
    def mask(self) -> int:
        bits = math.ceil(math.log2(self.size + 2))
        return (0xFFFFFFFF << bits) & 0xFFFFFFFF

    def lease(self, vid: int, requested_ip: str | None = None) -> Lease:
        """Give ``vid`` a lease: the requested address, or the next free one."""
        if requested_ip is not None:
            return self._lease_requested(vid, requested_ip)
        if self.type is NetworkType.RANGED:
            for _ in range(self.size):
                ip = self.network_address + (self.cursor % self.size) + 1
                if ip not in self.leases:
                    lease = Lease(ip, self.mac_prefix, ip, vid, True)
                    self.leases[ip] = lease
                    return lease
                self.cursor += 1
            raise LeaseError(f"no free lease in network {self.name}")
        ordered = sorted(self.leases)
        for step in range(len(ordered)):
            lease = self.leases[ordered[(self.cursor + step) % len(ordered)]]
            if not lease.used:
                self.cursor = (self.cursor + step + 1) % len(ordered)
                lease.used, lease.vid = True, vid
                return lease
        raise LeaseError(f"no free lease in network {self.name}")

    def _lease_requested(self, vid: int, requested_ip: str) -> Lease:
        try:
            ip = ip_to_number(requested_ip)
        except ValueError as error:
            raise LeaseError(str(error)) from error
        if self.type is NetworkType.RANGED:
            if ip & self.mask != self.network_address or ip in self.leases:
                raise LeaseError(f"IP {requested_ip} not available in network {self.name}")
            lease = Lease(ip, self.mac_prefix, ip, vid, True)
            self.leases[ip] = lease
            return lease
        lease = self.leases.get(ip)
        if lease is None or lease.used:
            raise LeaseError(f"IP {requested_ip} not available in network {self.name}")
        lease.used, lease.vid = True, vid
        return lease

    def release(self, ip: int) -> Lease | None:
        """Free a lease; returns it (RANGED: removed) or None if it was not leased."""
        lease = self.leases.get(ip)
        if lease is None or not lease.used:
            return None
        if self.type is NetworkType.RANGED:
            del self.leases[ip]
        lease.used, lease.vid = False, -1
        return lease

    def pool_row(self) -> tuple:
        return (self.oid, self.uid, self.name, int(self.type), self.bridge)

    def template_rows(self) -> list[tuple]:
        return [(self.oid, name, kind, value) for name, kind, value in self.template.to_rows()]

    def info_text(self) -> str:
        """The plain-text document of ``one.vninfo`` (xmlrpc-api.md §3.3)."""
        kind = "Ranged" if self.type is NetworkType.RANGED else "Fixed"
        header = (
            ("NID", self.oid),
            ("UID", self.uid),
            ("Network Name", self.name),
            ("Type", kind),
            ("Bridge", self.bridge),
        )
        lines = "".join(f"{label:<18}: {value}\n" for label, value in header)
        shown = [
            self.leases[ip]
            for ip in sorted(self.leases)
            if self.type is NetworkType.FIXED or self.leases[ip].used
        ]
        leases = "".join(lease.info_line() + "\n" for lease in shown)
        return (
            f"{lines}\n....: Template :....{self.template.info_text()}\n\n"
            f"....: Leases :....\n{leases}\n"
        )
