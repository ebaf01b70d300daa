"""The domain objects: virtual machines with their history records, hosts with their shares.

A daemon holds tens of thousands of these: the classes have slots (no per-object dict).

Enumerations keep the 1.2 integers (stored in one.db and read by mm_sched, Haizea and the
CLI). Each object knows how to turn itself into its one.db rows; the pools decide when.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum

from nebula_xr.template import Template


class VMState(IntEnum):
    INIT = 0
    PENDING = 1
    HOLD = 2
    ACTIVE = 3
    STOPPED = 4
    SUSPENDED = 5
    DONE = 6
    FAILED = 7


class LCMState(IntEnum):
    LCM_INIT = 0
    PROLOG = 1
    BOOT = 2
    RUNNING = 3
    MIGRATE = 4
    SAVE_STOP = 5
    SAVE_SUSPEND = 6
    SAVE_MIGRATE = 7
    PROLOG_MIGRATE = 8
    PROLOG_RESUME = 9
    EPILOG_STOP = 10
    EPILOG = 11
    SHUTDOWN = 12
    CANCEL = 13
    # 1.4 additions (api-1.4.md §5.1); 1.2 readers do not know them.
    FAILURE = 14
    DELETE = 15
    UNKNOWN = 16


class HostState(IntEnum):
    INIT = 0
    MONITORING = 1
    MONITORED = 2
    ERROR = 3
    DISABLED = 4


class Reason(IntEnum):
    """Why a VM left the host of a history record."""

    NONE = 0
    ERROR = 1
    STOP_RESUME = 2
    USER = 3
    CANCEL = 4


def _float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def cpu_reservation(cpu: str | None) -> int:
    """Percent of CPU a VM reserves: ⌊float32(CPU)·100⌋ computed in single precision.

    1.2 does this in float, and clients see the result (``CPU = 0.29`` reserves 29, not
    the 28 a double would give). The product of two float32 values is exact in a
    double, so rounding it once to float32 equals a float32 multiplication.
    """
    try:
        value = _float32(float(cpu)) if cpu is not None else 0.0
    except (ValueError, OverflowError):
        return 0
    if value != value or value in (float("inf"), float("-inf")):
        return 0
    return int(_float32(value * _float32(100.0)))


def leading_int(text: str | None) -> int:
    """The leading integer of a string, as C's atoi reads it (``"12.7"`` → 12, junk → 0)."""
    if not text:
        return 0
    text = text.lstrip(" \t\n")
    end = 1 if text[:1] in "+-" else 0
    while end < len(text) and text[end].isdigit() and text[end].isascii():
        end += 1
    try:
        return int(text[:end])
    except ValueError:
        return 0


@dataclass(slots=True)
class History:
    """One placement of a VM on a host (a row of ``history``)."""

    vid: int
    seq: int
    host_name: str
    vm_dir: str
    hid: int
    vm_mad: str
    tm_mad: str
    stime: int = 0
    etime: int = 0
    pstime: int = 0
    petime: int = 0
    rstime: int = 0
    retime: int = 0
    estime: int = 0
    eetime: int = 0
    reason: int = Reason.NONE

    def row(self) -> tuple:
        return (
            self.vid,
            self.seq,
            self.host_name,
            self.vm_dir,
            self.hid,
            self.vm_mad,
            self.tm_mad,
            self.stime,
            self.etime,
            self.pstime,
            self.petime,
            self.rstime,
            self.retime,
            self.estime,
            self.eetime,
            int(self.reason),
        )

    def copy_for(self, seq: int) -> History:
        """A new record on the same host (resume, failed migration): times and reason reset."""
        return History(
            self.vid, seq, self.host_name, self.vm_dir, self.hid, self.vm_mad, self.tm_mad
        )

    @property
    def remote_dir(self) -> str:
        """``<VM_DIR>/<vid>/images`` on the host (with 1.2's ``//`` when VM_DIR ends in /)."""
        return f"{self.vm_dir}/{self.vid}/images"


_VM_LABELS = (
    "VID",
    "UID",
    "STATE",
    "LCM STATE",
    "DEPLOY ID",
    "MEMORY",
    "CPU",
    "LAST POLL",
    "START TIME",
    "STOP TIME",
    "NET TX",
    "NET RX",
)


#: How many VMs keep their info_text between calls. A kept one costs about 1 KB (the
#: text, its values, a copy of its template's attributes): all 20,000 VMs of a big pool
#: would add 20 MB, while the VMs asked about again and again are few.
INFO_KEPT = 2048
#: The VMs that keep one, oldest first.
_info_keepers: deque[VirtualMachine] = deque()


def _keep_info(vm: VirtualMachine) -> None:
    """Count ``vm`` among the keepers of an info_text; the oldest beyond INFO_KEPT forget."""
    _info_keepers.append(vm)
    while len(_info_keepers) > INFO_KEPT:
        oldest = _info_keepers.popleft()
        oldest._info = None
        oldest.template.forget_info()


@dataclass(slots=True)
class VirtualMachine:
    oid: int
    template: Template
    stime: int
    uid: int = 0
    last_poll: int = 0
    state: VMState = VMState.PENDING
    lcm_state: LCMState = LCMState.LCM_INIT
    etime: int = 0
    deploy_id: str = ""
    memory: int = 0
    cpu: int = 0
    net_tx: int = 0
    net_rx: int = 0
    history: list[History] = field(default_factory=list)
    #: The last info_text and what it was written from (see :meth:`info_text`).
    _info: tuple[tuple, str] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.template.get_string("NAME") or ""

    @property
    def current(self) -> History | None:
        """The current history record (highest seq)."""
        return self.history[-1] if self.history else None

    @property
    def previous(self) -> History | None:
        """The record before the current one (the source host of a migration)."""
        return self.history[-2] if len(self.history) > 1 else None

    def reservation(self) -> tuple[int, int, int]:
        """(cpu percent, memory KB, disk) the VM reserves on its host; 0s without CPU/MEMORY."""
        memory = leading_int(self.template.get_string("MEMORY"))
        cpu = self.template.get_string("CPU")
        if memory == 0 or cpu is None:
            return (0, 0, 0)
        return (cpu_reservation(cpu), memory * 1024, 0)

    def pool_row(self) -> tuple:
        return (
            self.oid,
            self.uid,
            self.last_poll,
            self.oid,  # template_id: Haizea reads templates by VM oid
            int(self.state),
            int(self.lcm_state),
            self.stime,
            self.etime,
            self.deploy_id,
            self.memory,
            self.cpu,
            self.net_tx,
            self.net_rx,
        )

    def template_rows(self) -> list[tuple]:
        return [(self.oid, name, kind, value) for name, kind, value in self.template.to_rows()]

    def info_text(self) -> str:
        """The plain-text document of ``one.vmget_info`` (xmlrpc-api.md §3.1).

        Kept with the values it was written from and written again when one differs:
        fields are assigned all over the daemon, so comparing them (a dozen values) is
        the only invalidation that cannot miss a change. Only the last INFO_KEPT VMs
        asked about keep theirs."""
        template = self.template.info_text()
        values = (
            self.oid,
            self.uid,
            int(self.state),
            int(self.lcm_state),
            self.deploy_id,
            self.memory,
            self.cpu,
            self.last_poll,
            self.stime,
            self.etime,
            self.net_tx,
            self.net_rx,
            template,
        )
        cached = self._info
        if cached is not None and cached[0] == values:
            return cached[1]
        lines = "".join(
            f"{label:<18}: {value}\n" for label, value in zip(_VM_LABELS, values[:-1], strict=True)
        )
        text = f"{lines}Template\n{template}\n"
        if cached is None:
            _keep_info(self)
        self._info = (values, text)
        return text


@dataclass(slots=True)
class HostShares:
    """Capacity bookkeeping of a host (``host_shares``): CPU percent, memory KB."""

    hid: int
    endpoint: str = ""
    disk_usage: int = 0
    mem_usage: int = 0
    cpu_usage: int = 0
    max_disk: int = 0
    max_mem: int = 0
    max_cpu: int = 0
    running_vms: int = 0

    def add(self, cpu: int, mem: int, disk: int) -> None:
        self.cpu_usage += cpu
        self.mem_usage += mem
        self.disk_usage += disk
        self.running_vms += 1

    def remove(self, cpu: int, mem: int, disk: int) -> None:
        self.cpu_usage -= cpu
        self.mem_usage -= mem
        self.disk_usage -= disk
        self.running_vms -= 1

    def row(self) -> tuple:
        return (
            self.hid,
            self.endpoint,
            self.disk_usage,
            self.mem_usage,
            self.cpu_usage,
            self.max_disk,
            self.max_mem,
            self.max_cpu,
            self.running_vms,
        )


@dataclass(slots=True)
class Host:
    oid: int
    name: str
    im_mad: str
    vm_mad: str
    tm_mad: str
    managed: bool
    last_mon_time: int
    state: HostState = HostState.INIT
    #: Monitored attributes, upper-case names; a later report replaces by name.
    attributes: dict[str, str] = field(default_factory=dict)
    shares: HostShares = field(init=False)
    #: The last info_text and what it was written from (see :meth:`info_text`).
    _info: tuple[tuple, dict[str, str], str] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self.shares = HostShares(self.oid)

    def pool_row(self) -> tuple:
        return (
            self.oid,
            self.name,
            int(self.state),
            self.im_mad,
            self.vm_mad,
            self.tm_mad,
            self.last_mon_time,
            int(self.managed),
        )

    def attribute_rows(self) -> list[tuple]:
        return [(self.oid, name, 0, value) for name, value in self.attributes.items()]

    def info_text(self) -> str:
        """The plain-text document of ``one.hostinfo`` (xmlrpc-api.md §3.2), written
        again only when a value it shows differs (see VirtualMachine.info_text)."""
        values = (
            self.oid,
            self.name,
            self.im_mad,
            self.vm_mad,
            self.tm_mad,
            self.managed,
            self.shares.row(),
        )
        cached = self._info
        if cached is not None and cached[0] == values and cached[1] == self.attributes:
            return cached[2]
        text = self._info_text()
        self._info = (values, dict(self.attributes), text)
        return text

    def _info_text(self) -> str:
        header = (
            ("HID", self.oid),
            ("HOSTNAME", self.name),
            ("IM MAD", self.im_mad),
            ("VMM MAD", self.vm_mad),
            ("TM MAD", self.tm_mad),
            ("MANAGED", int(self.managed)),
        )
        shares = self.shares
        share_lines = (
            ("HID", shares.hid),
            ("ENDPOINT", shares.endpoint),
            ("MAX_CPU", shares.max_cpu),
            ("MAX_MEMORY", shares.max_mem),
            ("MAX_DISK", shares.max_disk),
            ("CPU_USAGE", shares.cpu_usage),
            ("MEMORY_USAGE", shares.mem_usage),
            ("DISK_USAGE", shares.disk_usage),
            ("RUNNING_VMS", shares.running_vms),
        )
        attributes = Template(self.attributes.items(), replace=True).info_text()
        return (
            "".join(f"{label:<8} = {value}\n" for label, value in header)
            + f"ATTRIBUTES\n{attributes}\n"
            + "HOST SHARES\n"
            + "".join(f"\t{label:<12} = {value}\n" for label, value in share_lines)
            + "\n"
        )
