"""The dispatch manager (DM): accepts or refuses user requests, owns VM states.

Every request is checked here, synchronously, in the order and with the messages of
1.2 (xmlrpc-api.md §2): that check decides the XML-RPC answer. Accepted work goes to the
life-cycle manager; "accepted" does not mean "done". The LCM reports back when a VM
leaves ACTIVE (``suspend_success``, ``stop_success``, ``done``, ``failed``) to the DM's
:class:`VMStates`, built first so that the LCM can be given it at construction.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IReactorTime

from nebula_xr.interfaces import LifeCycleActions, TransferOperations, ignore_driver_failure
from nebula_xr.lifecycle_manager import RECOVERABLE
from nebula_xr.log import Log
from nebula_xr.model import History, Host, LCMState, Reason, VirtualMachine, VMState
from nebula_xr.pools import HostPool, VirtualMachinePool, VirtualNetworkPool
from nebula_xr.scheduling import RequestResult
from nebula_xr.template import Template
from nebula_xr.vnet import LeaseError, ip_to_number, number_to_ip

OK = RequestResult(True)

ACTIONS = ("shutdown", "hold", "release", "stop", "cancel", "suspend", "resume", "finalize")


class AllocationError(Exception):
    """The VM could not be created (its network leases could not be obtained)."""


class DispatchManager:
    def __init__(
        self,
        vms: VirtualMachinePool,
        hosts: HostPool,
        networks: VirtualNetworkPool,
        states: VMStates,
        lcm: LifeCycleActions,
        tm: TransferOperations,
        clock: IReactorTime,
        log: Log,
        vm_dir: str,
    ) -> None:
        self.vms = vms
        self.hosts = hosts
        self.networks = networks
        self.states = states
        self.lcm = lcm
        #: 1.4 finalize of a SUSPENDED VM deletes its images.
        self.tm = tm
        self.clock = clock
        self.log = log
        self.vm_dir = vm_dir

    def now(self) -> int:
        return int(self.clock.seconds())

    # -- requests -----------------------------------------------------------------------

    def allocate(self, template: Template, uid: int = 0) -> VirtualMachine:
        """Create a PENDING VM of user ``uid``: default NAME, network leases, rows.

        Raises AllocationError.
        """
        vid = self.vms.next_oid()
        if template.get_string("NAME") is None:
            template.add("NAME", f"one-{vid}")
        taken: list[tuple[Any, int]] = []
        nics: list[dict[str, str]] = []
        try:
            for nic in template.get_all("NIC"):
                nics.append(self._lease_nic(vid, nic, taken) if isinstance(nic, dict) else nic)
        except LeaseError as error:
            for network, ip in taken:
                self.networks.release(network, ip)
            raise AllocationError(str(error)) from error
        if nics:
            template.remove("NIC")
            for nic in nics:
                template.add("NIC", nic)
        vm = self.vms.allocate(template, self.now(), uid)
        self.log.vm(vm.oid, "DiM", 2, "New VM state is PENDING")
        return vm

    def _lease_nic(
        self, vid: int, nic: dict[str, str], taken: list[tuple[Any, int]]
    ) -> dict[str, str]:
        name = nic.get("NETWORK")
        network = self.networks.by_name(name) if name is not None else None
        if network is None:
            return nic  # 1.2: an unknown network leaves the NIC as written
        lease = self.networks.lease(network, vid, nic.get("IP"))
        taken.append((network, lease.ip))
        leased = dict(nic)
        leased.update(
            NETWORK=network.name,
            MAC=lease.mac,
            BRIDGE=network.bridge,
            VNID=str(network.oid),
            IP=number_to_ip(lease.ip),
        )
        return leased

    def deploy(self, vid: int, hid: int, *, managed_only: bool = True) -> RequestResult:
        """``managed_only``: refuse unmanaged hosts, as 1.2 does (1.4 has no such flag)."""
        return self._place(vid, hid, VMState.PENDING, None, managed_only, "deploy")

    def migrate(
        self, vid: int, hid: int, live: bool, *, managed_only: bool = True, verb: str = "deploy"
    ) -> RequestResult:
        """``verb`` names the request in the wrong-state message: 1.2 said "deploy"."""
        return self._place(vid, hid, VMState.ACTIVE, live, managed_only, verb)

    def _place(
        self,
        vid: int,
        hid: int,
        state: VMState,
        live: bool | None,
        managed_only: bool,
        verb: str,
    ) -> RequestResult:
        host = self.hosts.get(hid)
        if host is None:
            return RequestResult(False, f"The host {hid} does not exists")
        if managed_only and not host.managed:
            return RequestResult(False, f"Not managed hosts (id:{hid}) not supported")
        vm = self.vms.get(vid)
        if vm is None:
            return RequestResult(False, f"The virtual machine {vid} does not exists")
        wrong = RequestResult(False, f"Can not {verb} VM {vid}, wrong state")
        if vm.state is not state:
            return wrong
        if live is not None:
            if vm.lcm_state is not LCMState.RUNNING:
                return wrong
            # 1.2 accepted a migration onto the VM's own host; with tm_ssh the final
            # "rm -rf" of the move then destroyed the images.
            if vm.current is not None and vm.current.hid == hid:
                return wrong
        self._open_record(vm, host)
        if live is None:
            self.vms.transition(vm, state=VMState.ACTIVE)
            self.lcm.deploy(vid)
        elif live:
            self.lcm.live_migrate(vid)
        else:
            self.lcm.migrate(vid)
        return OK

    def _open_record(self, vm: VirtualMachine, host: Host) -> None:
        """A new current history record on ``host``."""
        seq = vm.current.seq + 1 if vm.current is not None else 0
        record = History(vm.oid, seq, host.name, self.vm_dir, host.oid, host.vm_mad, host.tm_mad)
        self.vms.add_history(vm, record)

    def resume_on(self, vid: int, hid: int) -> RequestResult:
        """Resume a SUSPENDED VM on host ``hid``: on its own host, the plain ``resume``;
        on another, by cold migration (the checkpoint and images move there first)."""
        host = self.hosts.get(hid)
        if host is None:
            return RequestResult(False, f"The host {hid} does not exists")
        if not host.managed:
            return RequestResult(False, f"Not managed hosts (id:{hid}) not supported")
        vm = self.vms.get(vid)
        if vm is None:
            return RequestResult(False, "Virtual machine does not exist")
        if vm.state is not VMState.SUSPENDED or vm.current is None:
            return RequestResult(False, "Wrong state to perform action")
        if vm.current.hid == hid:
            return self.action("resume", vid)
        self._open_record(vm, host)
        self.states.set(vm, VMState.ACTIVE)
        self.lcm.resume_migrate(vid)
        return OK

    def action(self, action: str, vid: int) -> RequestResult:
        if action not in ACTIONS:
            return RequestResult(False, "Unknown action")
        vm = self.vms.get(vid)
        if vm is None:
            return RequestResult(False, "Virtual machine does not exist")
        running = vm.state is VMState.ACTIVE and vm.lcm_state is LCMState.RUNNING
        wrong = RequestResult(False, "Wrong state to perform action")
        if action in ("shutdown", "stop", "cancel", "suspend"):
            if not running:
                return wrong
            getattr(self.lcm, action)(vid)
        elif action == "hold":
            if vm.state is not VMState.PENDING:
                return wrong
            self.states.set(vm, VMState.HOLD)
        elif action == "release":
            if vm.state is not VMState.HOLD:
                return wrong
            self.states.set(vm, VMState.PENDING)
        elif action == "resume":
            if vm.state is VMState.STOPPED:
                self.states.set(vm, VMState.PENDING)
            elif vm.state is VMState.SUSPENDED:
                self.states.set(vm, VMState.ACTIVE)
                self.lcm.restore(vid)
            else:
                return wrong
        else:  # finalize
            if vm.state in (VMState.ACTIVE, VMState.DONE):
                return wrong
            self.states.finish(vm, VMState.DONE)
        return OK

    # -- 1.4 actions (api-1.4.md §3.3); one.vmaction keeps the 1.2 rules above ------------

    def restart(self, vid: int) -> RequestResult:
        vm = self.vms.get(vid)
        if vm is None:
            return RequestResult(False, "Virtual machine does not exist")
        if vm.state is not VMState.ACTIVE or vm.lcm_state not in (
            LCMState.BOOT,
            LCMState.UNKNOWN,
        ):
            return RequestResult(False, "Wrong state to perform action")
        self.lcm.restart(vid)
        return OK

    def recover(self, vid: int, success: bool) -> RequestResult:
        """Complete (``success``) or fail by hand the pending step of a VM stuck in a
        transient state (OpenNebula 4.2's ``recover``)."""
        vm = self.vms.get(vid)
        if vm is None:
            return RequestResult(False, "Virtual machine does not exist")
        if vm.state is not VMState.ACTIVE or vm.lcm_state not in RECOVERABLE:
            return RequestResult(False, "Wrong state to perform action")
        self.lcm.recover(vid, success)
        return OK

    def finalize(self, vid: int) -> RequestResult:
        """1.4 finalize: accepted in every state, ACTIVE VMs included."""
        vm = self.vms.get(vid)
        if vm is None:
            return RequestResult(False, "Virtual machine does not exist")
        if vm.state is VMState.ACTIVE:
            self.lcm.delete(vid)
        elif vm.state is VMState.FAILED:
            # The end time is that of the failure.
            self.states.release_leases(vm)
            self.states.set(vm, VMState.DONE)
        elif vm.state is not VMState.DONE:
            if vm.state is VMState.SUSPENDED and vm.current is not None:
                # The checkpoint and images wait on the host: nothing will resume them.
                self.tm.delete(vm, vm.current).addErrback(ignore_driver_failure)
            self.states.finish(vm, VMState.DONE)
        return OK

    def resubmit(self, vid: int, *, reason: Reason = Reason.USER) -> RequestResult:
        """2.2's resubmit: the VM goes back to PENDING, to be placed again. An ACTIVE VM
        must be RUNNING or UNKNOWN with its domain already gone (see host_failure.py);
        its history record is closed with ``reason``. SUSPENDED and DONE are refused."""
        vm = self.vms.get(vid)
        if vm is None:
            return RequestResult(False, "Virtual machine does not exist")
        if vm.state in (VMState.INIT, VMState.PENDING):
            return OK
        if vm.state is VMState.ACTIVE:
            if not self.lcm.resubmit(vid, reason):
                return RequestResult(False, "Wrong state to perform action")
        elif vm.state not in (VMState.HOLD, VMState.STOPPED, VMState.FAILED):
            return RequestResult(False, "Wrong state to perform action")
        self.states.set(vm, VMState.PENDING)
        return OK


class VMStates:
    """The DM's half that records VM states: the LCM's events when a VM leaves ACTIVE
    (lifecycle.md §4.3), and the state changes of the DM's own requests."""

    def __init__(
        self, vms: VirtualMachinePool, networks: VirtualNetworkPool, clock: IReactorTime, log: Log
    ) -> None:
        self.vms = vms
        self.networks = networks
        self.clock = clock
        self.log = log

    # -- events (from the LCM) ----------------------------------------------------------

    def suspend_success(self, vid: int) -> None:
        self._leave_active(vid, VMState.SUSPENDED)

    def stop_success(self, vid: int) -> None:
        self._leave_active(vid, VMState.STOPPED)

    def done(self, vid: int) -> None:
        vm = self.vms.get(vid)
        if vm is not None and vm.state is VMState.ACTIVE:
            self.finish(vm, VMState.DONE)

    def failed(self, vid: int) -> None:
        vm = self.vms.get(vid)
        if vm is not None:
            # Leases are kept until the VM is finalized, as in 1.2.
            self.finish(vm, VMState.FAILED)

    # -- state changes ------------------------------------------------------------------

    def _leave_active(self, vid: int, state: VMState) -> None:
        vm = self.vms.get(vid)
        if vm is not None and vm.state is VMState.ACTIVE:
            self.set(vm, state)

    def set(self, vm: VirtualMachine, state: VMState) -> None:
        self.log.vm(vm.oid, "DiM", 2, f"New VM state is {state.name}")
        self.vms.transition(vm, state=state)

    def finish(self, vm: VirtualMachine, state: VMState) -> None:
        """DONE or FAILED: the VM's end time; DONE gives its leases back."""
        vm.etime = int(self.clock.seconds())
        if state is VMState.DONE:
            self.release_leases(vm)
        self.set(vm, state)

    def release_leases(self, vm: VirtualMachine) -> None:
        for nic in vm.template.vectors("NIC"):
            network = self.networks.get(_int(nic.get("VNID")))
            if network is None or "IP" not in nic:
                continue
            try:
                ip = ip_to_number(nic["IP"])
            except ValueError:
                continue
            lease = network.leases.get(ip)
            if lease is not None and lease.vid == vm.oid:
                self.networks.release(network, ip)


def _int(text: str | None) -> int:
    try:
        return int(text) if text is not None else -1
    except ValueError:
        return -1
