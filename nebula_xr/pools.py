"""The pools: every VM, host and network in memory, written through to one.db.

The in-memory objects are the truth while the daemon runs; every change is queued to the
database writer as whole rows, the way 1.2 writes them (``INSERT OR REPLACE`` of the
full row). At start-up the pools are rebuilt from the file, so a restart loses nothing.
Creating or deleting an object is written with an ``undo`` that takes it back in memory
should its commit fail for good (the request is then refused, see database.py).
Ids are never re-handed to a new object while anything of an old one with the same id
remains (a VM directory, a history record naming a deleted host).
State changes go through :meth:`VirtualMachinePool.transition` and
:meth:`HostPool.set_state` so that listeners (the scheduler, the hooks, the web console)
hear about each one.
"""

from __future__ import annotations

import shutil
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from nebula_xr.database import (
    Database,
    Delete,
    HistoryRow,
    HostAttributeRow,
    HostPoolRow,
    HostSharesRow,
    Insert,
    LeaseRow,
    NetworkPoolRow,
    Replace,
    Update,
    VMAttributeRow,
    VMPoolRow,
    VNTemplateRow,
)
from nebula_xr.model import History, Host, HostState, LCMState, VirtualMachine, VMState
from nebula_xr.template import Template, interned
from nebula_xr.vnet import Lease, NetworkType, VirtualNetwork

VMListener = Callable[[VirtualMachine, int, int], None]
HostListener = Callable[[Host, int], None]


def _next_id(ids: Iterable[int]) -> int:
    return max(ids, default=-1) + 1


def _numeric_names(directory: Path) -> Iterator[int]:
    try:
        entries = list(directory.iterdir())
    except OSError:
        return
    for entry in entries:
        if entry.name.isdigit():
            yield int(entry.name)


class VirtualMachinePool:
    def __init__(self, db: Database, var_dir: Path) -> None:
        self.db = db
        self.var_dir = var_dir
        self.vms: dict[int, VirtualMachine] = {}
        self.listeners: list[VMListener] = []
        #: Wired by the daemon: gives back a VM's leases when its allocation is undone.
        self.networks: VirtualNetworkPool | None = None
        self._next_oid = 0

    def load(self) -> None:
        templates: dict[int, list[tuple[str, int, str]]] = defaultdict(list)
        for oid, name, kind, value in self.db.rows(VMAttributeRow):
            templates[oid].append((name, kind, value))
        histories: dict[int, list[History]] = defaultdict(list)
        for row in self.db.rows(HistoryRow):
            histories[row[0]].append(History(*row))
        for row in self.db.rows(VMPoolRow):
            oid, uid, last_poll, template_id, state, lcm, stime, etime, deploy_id = row[:9]
            memory, cpu, net_tx, net_rx = row[9:]
            vm = VirtualMachine(
                oid=oid,
                template=Template.from_rows(templates.get(template_id, ())),
                stime=stime,
                uid=uid,
                last_poll=last_poll,
                state=VMState(state),
                lcm_state=LCMState(lcm),
                etime=etime,
                deploy_id=deploy_id or "",
                memory=memory,
                cpu=cpu,
                net_tx=net_tx,
                net_rx=net_rx,
                history=sorted(histories.get(oid, ()), key=lambda record: record.seq),
            )
            self.vms[oid] = vm
            if vm.state not in (VMState.DONE, VMState.FAILED):
                # A front-end taking over from another (hot standby) has no directory yet
                # for the VMs the other one created: their logs and deployment files go here.
                self.vm_dir(oid).mkdir(mode=0o770, parents=True, exist_ok=True)
        # A VM acknowledged-then-lost (a crash before its commit) left only its directory:
        # its id is not handed out again, so no new VM inherits that directory and log.
        self._next_oid = _next_id([*self.vms, *_numeric_names(self.var_dir)])

    def next_oid(self) -> int:
        return self._next_oid

    def allocate(self, template: Template, now: int, uid: int = 0) -> VirtualMachine:
        """Create a PENDING VM with the next id; ``template`` already holds NAME and leases."""
        vm = VirtualMachine(oid=self._next_oid, template=template, stime=now, uid=uid)
        self._next_oid += 1
        self.vms[vm.oid] = vm
        directory = self.vm_dir(vm.oid)
        if directory.exists():  # not ours: set aside, never inherited
            directory.rename(directory.with_name(f"{vm.oid}.stale-{now}-{self._next_oid}"))
        # Owner and group only (1.2 used 0777): hosts reach it as the oneadmin group.
        directory.mkdir(mode=0o770, parents=True)
        # Its log exists from now on, as in 1.2.
        (directory / "vm.log").touch()
        self.db.write(
            Replace(VMPoolRow, [vm.pool_row()]),
            Insert(VMAttributeRow, vm.template_rows()),
            undo=lambda: self._undo_allocate(vm),
        )
        self._notify(vm, VMState.INIT, LCMState.LCM_INIT)
        return vm

    def _undo_allocate(self, vm: VirtualMachine) -> None:
        if self.vms.get(vm.oid) is not vm:
            return
        del self.vms[vm.oid]
        shutil.rmtree(self.vm_dir(vm.oid), ignore_errors=True)
        if self.networks is not None:
            self.networks.release_vm(vm)
        # Rows a later change (a deploy in the same group commit) may have re-created.
        self.db.write(
            Delete(VMPoolRow, (("oid", vm.oid),)),
            Delete(VMAttributeRow, (("id", vm.oid),)),
            Delete(HistoryRow, (("vid", vm.oid),)),
        )

    def vm_dir(self, oid: int) -> Path:
        """``$VAR/<vid>``: the VM's log, deployment and transfer files."""
        return self.var_dir / str(oid)

    def get(self, oid: int) -> VirtualMachine | None:
        return self.vms.get(oid)

    def __iter__(self) -> Iterator[VirtualMachine]:
        return iter(self.vms.values())

    def update(self, vm: VirtualMachine) -> None:
        """Write the VM's vm_pool row (1.2 rewrites the whole row on every change)."""
        self.db.write(Replace(VMPoolRow, [vm.pool_row()]))

    def transition(
        self, vm: VirtualMachine, state: VMState | None = None, lcm: LCMState | None = None
    ) -> None:
        """Change state and/or LCM state, write the row and tell the listeners."""
        previous = (vm.state, vm.lcm_state)
        if state is not None:
            vm.state = state
        if lcm is not None:
            vm.lcm_state = lcm
        if vm.state is not VMState.ACTIVE:
            vm.lcm_state = LCMState.LCM_INIT
        self.update(vm)
        if (vm.state, vm.lcm_state) != previous:
            self._notify(vm, *previous)

    def save_history(self, *records: History) -> None:
        self.db.write(Replace(HistoryRow, [record.row() for record in records]))

    def add_history(self, vm: VirtualMachine, record: History) -> None:
        vm.history.append(record)
        self.save_history(record)

    def set_attribute(self, vm: VirtualMachine, name: str, value: str) -> None:
        """Replace a single template attribute (unknown keys of a POLL reply), as 1.2 does."""
        vm.template.set(name, value)
        self.db.write(
            Delete(VMAttributeRow, (("id", vm.oid), ("name", name))),
            Insert(VMAttributeRow, [(vm.oid, name, 0, value)]),
        )

    def _notify(self, vm: VirtualMachine, state: int, lcm: int) -> None:
        for listener in self.listeners:
            listener(vm, state, lcm)


class HostPool:
    def __init__(self, db: Database) -> None:
        self.db = db
        self.hosts: dict[int, Host] = {}
        self.listeners: list[HostListener] = []
        self._next_oid = 0

    def load(self) -> None:
        attributes: dict[int, dict[str, str]] = defaultdict(dict)
        for hid, name, _kind, value in self.db.rows(HostAttributeRow):
            attributes[hid][interned(name)] = interned(value)
        shares = {row[0]: row for row in self.db.rows(HostSharesRow)}
        for oid, name, state, im, vmm, tm, last_mon, managed in self.db.rows(HostPoolRow):
            host = Host(oid, name, im, vmm, tm, bool(managed), last_mon, HostState(state))
            host.attributes = attributes.get(oid, {})
            if oid in shares:
                _, endpoint, *values = shares[oid]
                host.shares.endpoint = endpoint or ""
                (
                    host.shares.disk_usage,
                    host.shares.mem_usage,
                    host.shares.cpu_usage,
                    host.shares.max_disk,
                    host.shares.max_mem,
                    host.shares.max_cpu,
                    host.shares.running_vms,
                ) = values
            self.hosts[oid] = host
        # 1.2 takes MAX(oid)+1, so a host deleted under running VMs handed its id to the
        # next host, whose shares those VMs then left: ids named in history stay taken.
        hids = (row[4] for row in self.db.rows(HistoryRow) if row[4] is not None)
        self._next_oid = _next_id([*self.hosts, *hids])

    def allocate(self, name: str, im: str, vmm: str, tm: str, managed: bool, now: int) -> Host:
        host = Host(self._next_oid, name, im, vmm, tm, managed, now)
        self._next_oid += 1
        self.hosts[host.oid] = host
        self.save(host, undo=lambda: self._undo_allocate(host))
        self._notify(host, -1)
        return host

    def _undo_allocate(self, host: Host) -> None:
        if self.hosts.get(host.oid) is host:
            self.delete(host, undoable=False)

    def get(self, oid: int) -> Host | None:
        return self.hosts.get(oid)

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts.values())

    def save(self, host: Host, undo: Callable[[], None] | None = None) -> None:
        """Write the host as 1.2 does: attributes, then shares, then the host_pool row."""
        self.db.write(
            Replace(HostAttributeRow, host.attribute_rows()),
            Replace(HostSharesRow, [host.shares.row()]),
            Replace(HostPoolRow, [host.pool_row()]),
            undo=undo,
        )

    def remove_attribute(self, host: Host, name: str) -> None:
        """Drop a host attribute (a report only ever adds or replaces them)."""
        if host.attributes.pop(name, None) is not None:
            self.db.write(Delete(HostAttributeRow, (("id", host.oid), ("name", name))))

    def set_state(self, host: Host, state: HostState) -> None:
        previous = host.state
        host.state = state
        self.save(host)
        if state is not previous:
            self._notify(host, previous)

    def delete(self, host: Host, *, undoable: bool = True) -> None:
        del self.hosts[host.oid]
        self.db.write(
            Delete(HostAttributeRow, (("id", host.oid),)),
            Delete(HostSharesRow, (("hid", host.oid),)),
            Delete(HostPoolRow, (("oid", host.oid),)),
            undo=(lambda: self._undo_delete(host)) if undoable else None,
        )
        self._notify(host, host.state)

    def _undo_delete(self, host: Host) -> None:
        if host.oid not in self.hosts:
            self.hosts[host.oid] = host
            self.save(host)
            self._notify(host, -1)

    def _notify(self, host: Host, previous: int) -> None:
        for listener in self.listeners:
            listener(host, previous)


class VirtualNetworkPool:
    def __init__(self, db: Database, mac_prefix: int, default_size: int) -> None:
        self.db = db
        self.mac_prefix = mac_prefix
        self.default_size = default_size
        self.networks: dict[int, VirtualNetwork] = {}
        self._next_oid = 0

    def load(self) -> None:
        templates: dict[int, list[tuple[str, int, str]]] = defaultdict(list)
        for oid, name, kind, value in self.db.rows(VNTemplateRow):
            templates[oid].append((name, kind, value))
        leases: dict[int, list[tuple]] = defaultdict(list)
        for row in self.db.rows(LeaseRow):
            leases[row[0]].append(row)
        for oid, uid, _name, _kind, _bridge in self.db.rows(NetworkPoolRow):
            template = Template.from_rows(templates.get(oid, ()))
            network = VirtualNetwork.from_template(
                oid, template, self.mac_prefix, self.default_size
            )
            network.uid = uid
            network.leases = {
                ip: Lease(ip, prefix, suffix, vid, bool(used))
                for _, ip, prefix, suffix, vid, used in leases.get(oid, ())
            }
            self.networks[oid] = network
        self._next_oid = _next_id(iter(self.networks))

    def allocate(self, template: Template, uid: int = 0) -> VirtualNetwork:
        """Create a network of user ``uid``; raises NetworkTemplateError or ValueError
        (duplicate name)."""
        name = template.get_string("NAME") or ""
        if self.by_name(name) is not None:
            # 1.2 silently replaced the row (name is the key) and orphaned the old leases.
            raise ValueError(f"a network named {name!r} already exists")
        network = VirtualNetwork.from_template(
            self._next_oid, template, self.mac_prefix, self.default_size
        )
        network.uid = uid
        self._next_oid += 1
        self.networks[network.oid] = network
        self._write_network(network, undo=lambda: self._undo_allocate(network))
        return network

    def _write_network(self, network: VirtualNetwork, undo: Callable[[], None] | None) -> None:
        self.db.write(
            Replace(NetworkPoolRow, [network.pool_row()]),
            Insert(VNTemplateRow, network.template_rows()),
            Replace(LeaseRow, [lease.row(network.oid) for lease in network.leases.values()]),
            undo=undo,
        )

    def _undo_allocate(self, network: VirtualNetwork) -> None:
        if self.networks.get(network.oid) is network:
            self.delete(network, undoable=False)

    def get(self, oid: int) -> VirtualNetwork | None:
        return self.networks.get(oid)

    def by_name(self, name: str) -> VirtualNetwork | None:
        return next((n for n in self.networks.values() if n.name == name), None)

    def __iter__(self) -> Iterator[VirtualNetwork]:
        return iter(self.networks.values())

    def delete(self, network: VirtualNetwork, *, undoable: bool = True) -> None:
        del self.networks[network.oid]
        self.db.write(
            Delete(VNTemplateRow, (("id", network.oid),)),
            Delete(LeaseRow, (("oid", network.oid),)),
            Delete(NetworkPoolRow, (("name", network.name),)),
            undo=(lambda: self._undo_delete(network)) if undoable else None,
        )

    def _undo_delete(self, network: VirtualNetwork) -> None:
        if network.oid not in self.networks and self.by_name(network.name) is None:
            self.networks[network.oid] = network
            self.db.write(
                Delete(VNTemplateRow, (("id", network.oid),)),
                Delete(LeaseRow, (("oid", network.oid),)),
            )
            self._write_network(network, undo=None)

    def release_vm(self, vm: VirtualMachine) -> None:
        """Give back the leases ``vm`` holds (its allocation was undone)."""
        for network in self.networks.values():
            for lease in list(network.leases.values()):
                if lease.used and lease.vid == vm.oid:
                    self.release(network, lease.ip)

    def lease(self, network: VirtualNetwork, vid: int, ip: str | None) -> Lease:
        """Lease an address to ``vid`` and write it; raises LeaseError."""
        lease = network.lease(vid, ip)
        self._write_lease(network, lease)
        return lease

    def release(self, network: VirtualNetwork, ip: int) -> None:
        lease = network.release(ip)
        if lease is not None:
            self._write_lease(network, lease)

    def _write_lease(self, network: VirtualNetwork, lease: Lease) -> None:
        if network.type is NetworkType.FIXED:
            # Filter on oid too: 1.2 matched the IP only and flipped other networks' leases.
            self.db.write(
                Update(
                    LeaseRow,
                    (("used", int(lease.used)), ("vid", lease.vid)),
                    (("oid", network.oid), ("ip", lease.ip)),
                )
            )
        elif lease.used:
            self.db.write(Replace(LeaseRow, [lease.row(network.oid)]))
        else:
            self.db.write(Delete(LeaseRow, (("oid", network.oid), ("ip", lease.ip))))
