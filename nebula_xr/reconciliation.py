"""Start-up reconciliation: no VM stays in a transient state because the daemon stopped.

1.2 lost every queued action and outstanding driver request at a restart and left the
VMs where they were (PROLOG, BOOT, SAVE_*... forever). At start-up nebula-xr asks the
drivers what is true and settles each VM:

* the host shares are recomputed from the VMs' records (a host is charged from PROLOG
  to the end of EPILOG; during a migration both hosts are);
* RUNNING and UNKNOWN VMs are polled at once;
* transfers (PROLOG*, EPILOG*) are run again: the scripts only copy, link, move to a
  fixed place or delete;
* a VM whose domain should exist is polled where it should be (both hosts during a live
  migration), then the interrupted step is taken as done (the domain is where the step
  puts it), run again (it is idempotent and the domain is still there), rolled back (a
  live migration whose domain is still on the source stays RUNNING there, with a
  history record saying so), or, when no host can tell, the VM is marked UNKNOWN;
* a live migration the stopped daemon started may still run without it (the source
  shows the domain as ``migrating-<name>``): the VM stays in MIGRATE and both hosts
  are polled again every polling interval until the migration ends or the VMM driver's
  timeout has passed, then one of the decisions above is taken;
* a VM caught between the DM's acceptance and the LCM's action is deployed.

Every decision is written to the VM's log.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IReactorTime

from nebula_xr.interfaces import DispatchEvents, VirtualMachineOperations
from nebula_xr.lifecycle_manager import POLLED, LifeCycleManager
from nebula_xr.log import Log
from nebula_xr.model import History, LCMState, VirtualMachine, VMState
from nebula_xr.pools import HostPool, VirtualMachinePool

L = LCMState

RUNNING, PAUSED, CRASHED, GONE, UNREACHABLE = "running", "paused", "crashed", "gone", "unreachable"
MIGRATING = "migrating away"
_LETTERS = {"a": RUNNING, "p": PAUSED, "e": CRASHED, "d": GONE, "m": MIGRATING}

_TRANSFERS = (L.PROLOG, L.PROLOG_RESUME, L.PROLOG_MIGRATE, L.EPILOG, L.EPILOG_STOP)
_SAVES = (L.SAVE_STOP, L.SAVE_SUSPEND, L.SAVE_MIGRATE)
#: Seconds an orphaned live migration is waited for when its VMM driver names no timeout.
DEFAULT_VMM_TIMEOUT = 300.0
#: LCM states in which an ACTIVE VM holds no host capacity.
_UNCHARGED = (L.LCM_INIT, L.DELETE, L.FAILURE)


def charged_records(vm: VirtualMachine) -> list[History]:
    """The records whose hosts an ACTIVE VM is charged to (lifecycle.md §6)."""
    if vm.state is not VMState.ACTIVE or vm.lcm_state in _UNCHARGED or vm.current is None:
        return []
    if vm.lcm_state in (L.MIGRATE, L.SAVE_MIGRATE) and vm.previous is not None:
        return [vm.current, vm.previous]
    return [vm.current]


class Reconciler:
    def __init__(
        self,
        vms: VirtualMachinePool,
        hosts: HostPool,
        lcm: LifeCycleManager,
        vmm: VirtualMachineOperations,
        dm: DispatchEvents,
        log: Log,
        clock: IReactorTime,
        vmm_timeouts: Mapping[str, float],
    ) -> None:
        self.vms = vms
        self.hosts = hosts
        self.lcm = lcm
        self.vmm = vmm
        self.dm = dm
        self.log = log
        self.clock = clock
        #: Seconds each VMM driver is given for a request: how long an orphaned live
        #: migration is waited for.
        self.vmm_timeouts = vmm_timeouts
        #: When each VM was first seen migrating away (oid -> clock seconds).
        self._migrating_since: dict[int, float] = {}

    def start(self) -> None:
        """Recompute the shares, then settle every ACTIVE VM (asynchronously)."""
        self.recompute_shares()
        unsettled = sorted(
            (vm for vm in self.vms if vm.state is VMState.ACTIVE), key=lambda vm: vm.oid
        )
        transient = [vm.oid for vm in unsettled if vm.lcm_state not in POLLED]
        if transient:
            listed = ", ".join(map(str, transient))
            self.log.info("ReC", f"Settling {len(transient)} VMs left mid-operation: {listed}")
        for vm in unsettled:
            self.settle(vm)

    def recompute_shares(self) -> None:
        charges: dict[int, list[VirtualMachine]] = {host.oid: [] for host in self.hosts}
        for vm in self.vms:
            for record in charged_records(vm):
                charges.setdefault(record.hid, []).append(vm)
        for host in self.hosts:
            shares = host.shares
            before = (shares.running_vms, shares.cpu_usage, shares.mem_usage, shares.disk_usage)
            shares.running_vms = shares.cpu_usage = shares.mem_usage = shares.disk_usage = 0
            for vm in charges[host.oid]:
                shares.add(*vm.reservation())
            after = (shares.running_vms, shares.cpu_usage, shares.mem_usage, shares.disk_usage)
            if after != before:
                self.log.info(
                    "ONE",
                    f"Host {host.name} shares recomputed: running VMs {before[0]} -> "
                    f"{after[0]}, CPU {before[1]} -> {after[1]}, memory {before[2]} -> {after[2]}",
                )
                self.hosts.save(host)

    def settle(self, vm: VirtualMachine) -> None:
        state, vid = vm.lcm_state, vm.oid
        if state in POLLED:
            self.lcm.poll(vm)
        elif state is L.LCM_INIT:
            self._note(vid, "LCM_INIT", "the deploy action never ran: deploying")
            self.lcm.deploy(vid)
        elif state is L.DELETE:
            self._note(vid, "DELETE", "finishing the deletion")
            self.dm.done(vid)
        elif state in _TRANSFERS:
            self._note(vid, state.name, "running the interrupted transfer again")
            self.lcm.retry(vid)
        elif state is L.MIGRATE and vm.previous is not None:
            self._probe_migration(vm)
        elif state in (L.BOOT, L.SHUTDOWN, L.CANCEL, *_SAVES):
            if state is L.BOOT and not vm.deploy_id:
                # The deploy answer was lost; 1.2's drivers name the domain one-<vid>.
                vm.deploy_id = f"one-{vid}"
                self.vms.update(vm)
            record = vm.previous if state is L.SAVE_MIGRATE else vm.current
            self._ask(vm, self._probe(vm, record), self._found)
        else:
            self._note(vid, state.name, "left as it is: no step of this daemon leads there")

    # -- asking where the domain is -----------------------------------------------------

    def _probe(self, vm: VirtualMachine, record: History | None) -> Deferred[str]:
        """Where the domain stands on ``record``'s host; never fails."""

        def letter(info: dict[str, str]) -> str:
            return _LETTERS.get(info.get("STATE", "")[:1], UNREACHABLE)

        return self.vmm.poll(vm, record).addCallbacks(letter, lambda _failure: UNREACHABLE)

    def _probe_migration(self, vm: VirtualMachine) -> None:
        probes = [self._probe(vm, vm.current), self._probe(vm, vm.previous)]
        self._ask(vm, gatherResults(probes), self._migrated)

    def _ask(
        self, vm: VirtualMachine, probe: Deferred[Any], decide: Callable[[int, Any], None]
    ) -> None:
        self.lcm.ask(vm, "POLL", vm.current, probe, decide, lambda _vid: None)

    # -- decisions ----------------------------------------------------------------------

    def _migrated(self, vid: int, found: list[str]) -> None:
        on_target, on_source = found
        vm = self.vms.get(vid)
        assert vm is not None and vm.current is not None and vm.previous is not None
        seen = f"{on_target} on {vm.current.host_name}, {on_source} on {vm.previous.host_name}"
        first_seen = vid not in self._migrating_since
        if on_source == MIGRATING and self._still_waiting(vm):
            if first_seen:
                self._note(vid, "MIGRATE", f"domain {seen}: the migration still runs, waiting")
            seq = vm.current.seq
            self.clock.callLater(self.lcm.polling_interval, self._poll_migration_again, vid, seq)
            return
        self._migrating_since.pop(vid, None)
        if on_source == MIGRATING:
            on_source = RUNNING  # the driver's timeout passed: the domain is still there
        if on_target in (RUNNING, PAUSED):
            self._note(vid, "MIGRATE", f"domain {seen}: the migration completed")
            self.lcm.deploy_success(vid)
        elif on_source in (RUNNING, PAUSED):
            self._note(vid, "MIGRATE", f"domain {seen}: rolled back, running on the source")
            self.lcm.deploy_failure(vid)
        else:
            self._note(vid, "MIGRATE", f"domain {seen}: back on the source record, UNKNOWN")
            self.lcm.deploy_failure(vid)
            self.lcm.lost(vid, f"after an interrupted live migration the domain was {seen}")

    def _still_waiting(self, vm: VirtualMachine) -> bool:
        """Whether an orphaned migration is still within its VMM driver's timeout."""
        assert vm.previous is not None
        now = self.clock.seconds()
        since = self._migrating_since.setdefault(vm.oid, now)
        return now - since < self.vmm_timeouts.get(vm.previous.vm_mad, DEFAULT_VMM_TIMEOUT)

    def _poll_migration_again(self, vid: int, seq: int) -> None:
        vm = self.vms.get(vid)
        current = vm.current if vm is not None else None
        if (
            vm is None
            or vm.state is not VMState.ACTIVE
            or vm.lcm_state is not L.MIGRATE
            or current is None
            or current.seq != seq
        ):
            # Settled meanwhile (deleted, recovered), or a new migration of this daemon's.
            self._migrating_since.pop(vid, None)
            return
        self._probe_migration(vm)

    def _found(self, vid: int, found: str) -> None:
        vm = self.vms.get(vid)
        assert vm is not None
        state = vm.lcm_state

        def note(decision: str) -> None:
            self._note(vid, state.name, f"domain {found}: {decision}")

        present = found in (RUNNING, PAUSED)
        if state is L.BOOT:
            if found == RUNNING:
                note("the boot completed")
                self.lcm.deploy_success(vid)
            elif found == GONE:
                note("booting it again")
                self.lcm.retry(vid)
            elif found == CRASHED:
                note("the boot failed")
                self.lcm.deploy_failure(vid)
            else:
                note("booted, state unknown")
                self.lcm.deploy_success(vid)
                self.lcm.lost(vid, f"domain {found} after an interrupted boot")
        elif state in _SAVES:
            if present:
                note("saving it again")
                self.lcm.retry(vid)
            elif found == GONE:
                note("the save completed")
                self.lcm.save_success(vid)
            else:
                note("the save failed, state unknown")
                self.lcm.save_failure(vid)
                self.lcm.lost(vid, f"domain {found} after an interrupted save")
        elif state is L.SHUTDOWN:
            if present:
                note("shutting it down again")
                self.lcm.retry(vid)
            elif found == GONE:
                note("the shutdown completed")
                self.lcm.shutdown_success(vid)
            else:
                note("the shutdown failed, state unknown")
                self.lcm.shutdown_failure(vid)
                self.lcm.lost(vid, f"domain {found} after an interrupted shutdown")
        elif state is L.CANCEL:
            if found == GONE:
                note("the cancel completed")
                self.lcm.cancel_success(vid)
            elif found == UNREACHABLE:
                note("the cancel failed, state unknown")
                self.lcm.cancel_failure(vid)
                self.lcm.lost(vid, "host unreachable after an interrupted cancel")
            else:
                note("cancelling it again")
                self.lcm.retry(vid)

    def _note(self, vid: int, state: str, decision: str) -> None:
        self.log.vm(vid, "ReC", 1, f"Found in {state} at start-up; {decision}")
