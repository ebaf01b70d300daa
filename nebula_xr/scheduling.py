"""What a scheduler plugin sees and can do.

A scheduler gets a :class:`SchedulerContext`: the reactor clock, frozen views of VMs
and hosts, and the same user actions the XML-RPC API offers (answered exactly as the
API answers them). The daemon tells it of changes by calling its event methods
(:meth:`Scheduler.vm_changed`, :meth:`Scheduler.host_changed`,
:meth:`Scheduler.host_monitored`). A placement scheduler (``sched_rank``) places VMs as those
events come and runs a safety-net cycle every ``interval`` seconds; a lease scheduler can
also suspend, resume and shut VMs down at planned times using ``context.clock.callLater``,
and resume a suspended VM on another host (:meth:`SchedulerContext.resume_on`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from nebula_xr.template import Template

if TYPE_CHECKING:
    from nebula_xr.database import PluginStore


@dataclass(frozen=True)
class SchedulerConfig:
    """``SCHEDULER = [ plugin = "sched_rank", interval = 30, ... ]`` from oned.conf."""

    plugin: str
    #: Seconds between two scheduling cycles.
    interval: float = 30.0
    #: Every key of the vector, upper-case.
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class HostShares:
    """A host's capacity bookkeeping (host_shares): CPU in percent, memory in KB."""

    max_cpu: int = 0
    max_mem: int = 0
    max_disk: int = 0
    cpu_usage: int = 0
    mem_usage: int = 0
    disk_usage: int = 0
    running_vms: int = 0


@dataclass(frozen=True)
class HostView:
    """A host as it was when the view was taken."""

    hid: int
    name: str
    state: int
    im_mad: str
    vm_mad: str
    tm_mad: str
    managed: bool
    last_mon_time: int
    #: Monitored attributes (upper-case names, string values): what REQUIREMENTS see.
    attributes: dict[str, str]
    shares: HostShares


@dataclass(frozen=True)
class VMView:
    """A VM as it was when the view was taken."""

    vid: int
    name: str
    state: int
    lcm_state: int
    stime: int
    etime: int
    deploy_id: str
    template: Template
    #: Host of the current history record, or None if never placed.
    hid: int | None
    host_name: str | None
    #: Capacity the VM reserves on its host: CPU percent, memory KB.
    cpu_demand: int
    memory_demand: int
    #: When it was placed on its current host (the current history record's start),
    #: 0 if never placed: what a lease scheduler rebuilds its plan from after a restart.
    placed: int = 0
    #: The owner's uid (0 is oneadmin).
    uid: int = 0
    #: Seconds it ran in the placements whose running phase is over (history records
    #: with an end of running time): with ``placed``, how much of a lease is done.
    ran: int = 0


@dataclass(frozen=True)
class RequestResult:
    """The answer of a user action: ``ok`` and the 1.2 error message when not ok."""

    ok: bool
    message: str = ""


class SchedulerContext(Protocol):
    """The daemon as a scheduler sees it."""

    #: IReactorTime: ``seconds()`` and ``callLater()``; a ``task.Clock`` in tests.
    clock: Any
    #: The scheduler plugin's own tables in one.db (``nebula_xr_tables``); None in tests
    #: that build a context without a daemon.
    store: PluginStore | None

    def log(self, message: str) -> None:
        """Write an informational line to the scheduler log (oned.log)."""

    def hosts(self) -> list[HostView]:
        """Every host, in id order."""

    def vms(self, states: tuple[int, ...] | None = None) -> list[VMView]:
        """VMs in id order, only those in ``states`` when given."""

    def deploy(self, vid: int, hid: int) -> RequestResult:
        """``one.vmdeploy``: place a PENDING VM on a host."""

    def migrate(self, vid: int, hid: int, live: bool) -> RequestResult:
        """``one.vmmigrate``: move a RUNNING VM (live or save/restore)."""

    def action(self, action: str, vid: int) -> RequestResult:
        """``one.vmaction``: shutdown, hold, release, stop, cancel, suspend, resume, finalize."""

    def resume_on(self, vid: int, hid: int) -> RequestResult:
        """Resume a SUSPENDED VM on host ``hid``. On the host it was suspended on this is
        ``action("resume", vid)``; on another it is a cold migration: a new history record
        on ``hid``, PROLOG_MIGRATE (the transfer driver moves the checkpoint and images
        there), BOOT restoring the checkpoint, RUNNING; a failed transfer or restore leaves
        the VM FAILED, as a failed cold migration does. Refused ("Wrong state to perform
        action") unless the VM is SUSPENDED; an unknown or unmanaged host is refused with
        ``one.vmdeploy``'s messages."""

    def reject(self, vid: int, reason: str) -> RequestResult:
        """Refuse a PENDING or HOLD VM the scheduler will never run (a malformed or
        impossible request): ``reason`` goes to the VM's log and the VM to FAILED."""


class Scheduler:
    """Base class of scheduler plugins: ``start`` and ``stop`` bracket its life.

    Between the two, the daemon calls the event methods of the scheduler oned.conf
    configured, and of no other: each event carries a snapshot taken when the change
    happened and is delivered on the next reactor turn, in order, so the scheduler may act
    on it (call its context's actions) safely. The methods here do nothing; the daemon
    takes snapshots only for the events a subclass overrides (:func:`handles`), so a
    scheduler pays for no event it ignores. They run on the reactor: return quickly and
    never block.
    """

    def __init__(self, config: SchedulerConfig, context: SchedulerContext) -> None:
        self.config = config
        self.context = context

    def start(self) -> None:
        """Begin scheduling (e.g. start a cycle timer)."""

    def stop(self) -> None:
        """Stop scheduling; cancel any pending timers."""

    # -- events -------------------------------------------------------------------------

    def vm_changed(self, vm: VMView, previous_state: int, previous_lcm_state: int) -> None:
        """A VM changed ``state`` or ``lcm_state`` (a new VM arrives with previous state
        INIT); ``vm`` is a snapshot taken right after the change."""

    def host_changed(self, host: HostView, previous_state: int) -> None:
        """A host changed state (INIT, MONITORING, MONITORED, ERROR, DISABLED), or was
        added (``previous_state`` -1) or deleted (``host.state`` is -1)."""

    def host_monitored(self, host: HostView) -> None:
        """A host's monitoring succeeded: ``host.attributes`` and ``host.shares`` are fresh."""


def handles(scheduler: object, event: str) -> bool:
    """Whether ``scheduler`` wants ``event`` (``"vm_changed"``, ``"host_changed"`` or
    ``"host_monitored"``): its class defines that method, and not as :class:`Scheduler`'s
    no-op."""
    method = getattr(type(scheduler), event, None)
    return callable(method) and method is not getattr(Scheduler, event)
