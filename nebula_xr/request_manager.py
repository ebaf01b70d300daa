"""The request manager (RM): the twelve OpenNebula 1.2 XML-RPC methods.

Each method parses its arguments, asks the dispatch manager or a pool, and answers
``[true, value]`` or ``[false, "message"]`` with 1.2's exact messages
(xmlrpc-api.md §2). Methods that change anything answer only once the change is
durable in one.db. 1.2 ignored the session; here it decides who the caller is
(:mod:`nebula_xr.access`): oneadmin for 1.2 clients on the front-end, else the user of a
valid session, who may only act on its own VMs and networks, as through the 1.4 API.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from twisted.internet.defer import Deferred

from nebula_xr.access import Access, Caller
from nebula_xr.config import AuthConfig
from nebula_xr.database import Database
from nebula_xr.dispatch_manager import AllocationError, DispatchManager
from nebula_xr.drivers.base import INFORMATION, TRANSFER, VIRTUAL_MACHINE
from nebula_xr.log import Log
from nebula_xr.model import HostState
from nebula_xr.pools import HostPool, VirtualMachinePool, VirtualNetworkPool
from nebula_xr.scheduling import RequestResult
from nebula_xr.template import Template, TemplateSyntaxError
from nebula_xr.template_policy import TemplateRefused, check_storable, check_vm_template
from nebula_xr.transport.xmlrpc import MethodRegistry
from nebula_xr.users import ADMIN
from nebula_xr.vnet import NetworkTemplateError

Reply = list[Any]

#: 1.4's refusals (api-1.4.md §3), also given by the 1.2 methods to a caller without rights.
NOT_AUTHORIZED_DEPLOY = [False, "User not authorized to perform the deploy"]
NOT_AUTHORIZED_MIGRATE = [False, "User not authorized to perform migration upon this VM"]
NOT_AUTHORIZED_ADD_HOST = [False, "User not authorized to add new hosts"]
NOT_AUTHORIZED_DELETE_HOST = [False, "User not authorized to delete hosts"]
NOT_AUTHORIZED_ENABLE_HOST = [False, "Only oneadmin can enable hosts"]
NOT_AUTHENTICATED_ALLOCATE = [
    False,
    "User not authenticated, aborting RequestManagerAllocate call.",
]
NOT_AUTHENTICATED_HOST_INFO = [False, "User not authenticated, HostInfo call aborted."]
NOT_AUTHENTICATED_VN_ALLOCATE = [False, "User not recognized, cannot allocate VirtualNetwork"]
NOT_AUTHORIZED_VN_DELETE = [False, "User cannot delete VN"]
NOT_AUTHORIZED_VN_INFO = [False, "User not authorized to use VirtualNetwork"]


def not_authorized_vm(vid: int) -> Reply:
    return [False, f"User not authorized to perform operation upon VirtualMachine [{vid}]"]


def _result(result: RequestResult) -> Reply:
    return [True] if result.ok else [False, result.message]


class RequestManager:
    def __init__(
        self,
        dm: DispatchManager,
        vms: VirtualMachinePool,
        hosts: HostPool,
        networks: VirtualNetworkPool,
        db: Database,
        clock: Any,
        log: Log,
        on_host_added: Callable[[Any], None] | None = None,
        access: Access | None = None,
        *,
        driver_names: Mapping[str, Collection[str]] | None = None,
    ) -> None:
        self.access = access or Access(AuthConfig(enabled=False))
        self.dm = dm
        #: The driver names oned.conf configures, by kind (IM, VMM, TM).
        self.driver_names = driver_names or {}
        self.vms = vms
        self.hosts = hosts
        self.networks = networks
        self.db = db
        self.clock = clock
        self.log = log
        self.on_host_added = on_host_added

    def register(self, registry: MethodRegistry) -> None:
        # 1.2's help texts (include/RequestManager.h), in 1.2's registration order.
        methods: tuple[tuple[str, Callable[..., Any], str, str], ...] = (
            (
                "one.vmallocate",
                self.vm_allocate,
                "A:ss",
                "Allocates a virtual machine in the pool",
            ),
            ("one.vmdeploy", self.vm_deploy, "A:sii", "Deploys a virtual machine"),
            ("one.vmaction", self.vm_action, "A:ssi", "Performs an action on a virtual machine"),
            ("one.vmmigrate", self.vm_migrate, "A:siib", "Migrates a virtual machine"),
            ("one.vmget_info", self.vm_info, "A:si", "Returns virtual machine information"),
            ("one.hostallocate", self.host_allocate, "A:sssssb", "Allocates a host in the pool"),
            ("one.hostinfo", self.host_info, "A:si", "Returns host information"),
            ("one.hostdelete", self.host_delete, "A:si", "Deletes a host from the pool"),
            ("one.hostenable", self.host_enable, "A:sib", "Enables or disables a host"),
            ("one.vnallocate", self.vn_allocate, "A:ss", "Creates a virtual network"),
            ("one.vninfo", self.vn_info, "A:si", "Returns virtual network information"),
            ("one.vndelete", self.vn_delete, "A:si", "Deletes a virtual network"),
        )
        for name, handler, signature, help_text in methods:
            guarded = self.access.guard(handler, legacy=True)
            registry.register(name, guarded, signature, help_text, takes_context=True)

    def _settled(self, reply: Reply) -> Deferred | Reply:
        """Answer a read once the changes it may show are in one.db too, so that a
        client that reads the file after the reply never sees an older state (but not
        later than a second: a reader's lock may hold the commit up much longer)."""
        if self.db.is_settled():
            return reply
        return self.db.settled(1.0).addCallback(lambda _: reply)

    def _durable(self, reply: Reply, on_error: Reply) -> Deferred:
        """Answer ``reply`` once every change made so far is committed to one.db."""

        def failed(failure: Any) -> Reply:
            self.log.error("ReM", f"Database write failed: {failure.getErrorMessage()}")
            return on_error

        return self.db.committed().addCallbacks(lambda _: reply, failed)

    # -- virtual machines -------------------------------------------------------------

    def vm_allocate(self, caller: Caller, text: str) -> Deferred | Reply:
        if not caller.authenticated:
            return NOT_AUTHENTICATED_ALLOCATE
        if caller.admin:
            return self._allocate_vm(text, ADMIN)  # 1.2: unknown networks kept as written
        check = self.network_check(caller, unknown_fails=False)
        return self._allocate_vm(text, caller.uid, check)

    def network_check(self, caller: Caller, *, unknown_fails: bool) -> Callable[[Template], None]:
        """The check of a new VM's NICs: its owner may lease from its own networks and
        oneadmin's (api-1.4.md §3.17). 1.4 also fails a NIC naming an unknown network."""

        def check(template: Template) -> None:
            for nic in template.vectors("NIC"):
                name = nic.get("NETWORK")
                if name is None:
                    continue
                network = self.networks.by_name(name)
                if network is None:
                    if unknown_fails:
                        raise AllocationError(f"no network named {name}")
                elif not caller.may_use_network(network.uid):
                    raise AllocationError(f"network {name} is not usable by user {caller.uid}")

        return check

    def _allocate_vm(
        self,
        text: str,
        uid: int,
        check: Callable[[Template], None] | None = None,
        parse: Callable[[str], Template] = Template.parse,
    ) -> Deferred | Reply:
        """``parse`` (with the newline 1.2 appends), ``check``, allocate; AllocationError
        fails. TemplateSyntaxError answers :meth:`parse_refused`."""
        try:
            template = parse(text + "\n")
        except TemplateSyntaxError as error:
            self.log.error("ReM", f"Error parsing VM template: {error}")
            return self.parse_refused(error)
        try:
            check_vm_template(template, uid)
        except TemplateRefused as error:
            self.log.error("ReM", f"Error allocating VM: {error}")
            return [False, str(error)]
        failure = [False, "Error inserting VM in the database, check oned.log"]
        try:
            if check is not None:
                check(template)
            vm = self.dm.allocate(template, uid)
        except AllocationError as error:
            self.log.error("ReM", f"Error allocating VM: {error}")
            return self.allocation_refused(error)
        return self._durable([True, vm.oid], failure)

    def parse_refused(self, error: TemplateSyntaxError) -> Reply:
        """The reply to a VM template that does not parse: 1.2 does not say where."""
        return [False, "Error parsing VM template"]

    def allocation_refused(self, error: AllocationError) -> Reply:
        """The reply when a VM's leases cannot be had: 1.2 only says to look in oned.log."""
        return [False, "Error inserting VM in the database, check oned.log"]

    def _vm_refused(self, caller: Caller, vid: int, refusal: Reply) -> Reply | None:
        """``refusal`` when VM ``vid`` exists and is not the caller's (a missing VM gets
        the usual message)."""
        vm = self.vms.get(vid)
        return refusal if vm is not None and not caller.owns(vm.uid) else None

    def vm_deploy(self, caller: Caller, vid: int, hid: int) -> Deferred | Reply:
        if self.hosts.get(hid) is not None:
            refused = self._vm_refused(caller, vid, NOT_AUTHORIZED_DEPLOY)
            if refused:
                return refused
        result = self.dm.deploy(vid, hid)
        if not result.ok:
            return _result(result)
        return self._durable([True], [False, f"Can not deploy VM {vid}, can not insert history"])

    def vm_action(self, caller: Caller, action: str, vid: int) -> Deferred | Reply:
        refused = self._vm_refused(caller, vid, not_authorized_vm(vid))
        if refused:
            return refused
        result = self.dm.action(action, vid)
        if not result.ok:
            return _result(result)
        return self._durable([True], [False, "Error writing the database, check oned.log"])

    def vm_migrate(self, caller: Caller, vid: int, hid: int, live: bool) -> Deferred | Reply:
        if self.hosts.get(hid) is not None:
            refused = self._vm_refused(caller, vid, NOT_AUTHORIZED_MIGRATE)
            if refused:
                return refused
        result = self.dm.migrate(vid, hid, live)
        if not result.ok:
            return _result(result)
        return self._durable([True], [False, f"Can not deploy VM {vid}, can not insert history"])

    def vm_info(self, caller: Caller, vid: int) -> Deferred | Reply:
        vm = self.vms.get(vid)
        if vm is None:
            return [False, f"Error getting vm with VID = {vid}"]
        if not caller.owns(vm.uid):
            return not_authorized_vm(vid)
        return self._settled([True, vm.info_text()])

    # -- hosts --------------------------------------------------------------------------

    def unknown_drivers(self, im: str, vmm: str, tm: str) -> str:
        """What is wrong with a host's driver names ('' when oned.conf has them all)."""
        wanted = ((INFORMATION, "IM", im), (VIRTUAL_MACHINE, "VMM", vmm), (TRANSFER, "TM", tm))
        problems = [
            f"no {label} driver named {name} in oned.conf (configured: "
            f"{', '.join(sorted(self.driver_names.get(kind, ()))) or 'none'})"
            for kind, label, name in wanted
            if name not in self.driver_names.get(kind, ())
        ]
        return "; ".join(problems)

    def host_allocate(
        self, caller: Caller, name: str, im: str, vmm: str, tm: str, managed: bool
    ) -> Deferred | Reply:
        if not caller.admin:
            return NOT_AUTHORIZED_ADD_HOST
        problems = self.unknown_drivers(im, vmm, tm)
        if problems:
            # 1.2 accepts it (the host fails at monitoring or deploy); say so in oned.log.
            self.log.warning("ReM", f"Host {name} added with unknown drivers: {problems}")
        return self._allocate_host(name, im, vmm, tm, managed)

    def _allocate_host(self, name: str, im: str, vmm: str, tm: str, managed: bool) -> Deferred:
        host = self.hosts.allocate(name, im, vmm, tm, managed, int(self.clock.seconds()))
        if self.on_host_added is not None:
            self.on_host_added(host)
        error = f"Can not allocate host {name} in the HostPool, returned error code [-1]"
        return self._durable([True, host.oid], [False, error])

    def host_info(self, caller: Caller, hid: int) -> Deferred | Reply:
        if not caller.authenticated:
            return NOT_AUTHENTICATED_HOST_INFO
        host = self.hosts.get(hid)
        if host is None:
            return [False, f"Error getting host with HID = {hid}"]
        return self._settled([True, host.info_text()])

    def host_delete(self, caller: Caller, hid: int) -> Deferred | Reply:
        if not caller.admin:
            return NOT_AUTHORIZED_DELETE_HOST
        host = self.hosts.get(hid)
        if host is None:
            return [False, f"Error getting host with HID = {hid}"]
        self.hosts.delete(host)
        return self._durable([True], [False])

    def host_enable(self, caller: Caller, hid: int, enable: bool) -> Deferred | Reply:
        if not caller.admin:
            return NOT_AUTHORIZED_ENABLE_HOST
        host = self.hosts.get(hid)
        if host is None:
            return [False, f"Error getting host with HID = {hid}"]
        self.hosts.set_state(host, HostState.INIT if enable else HostState.DISABLED)
        return self._durable([True], [False, "Error writing the database, check oned.log"])

    # -- virtual networks ---------------------------------------------------------------

    def vn_allocate(self, caller: Caller, text: str) -> Deferred | Reply:
        if not caller.authenticated:
            return NOT_AUTHENTICATED_VN_ALLOCATE
        failure = [False, f"Error allocating VN with template: \n{text}"]
        try:
            # 1.2 did not append the newline here, so a last line without one failed.
            template = Template.parse(text + "\n")
            check_storable(template, "VN")
            network = self.networks.allocate(template, caller.uid)
        except TemplateRefused as error:
            self.log.error("ReM", f"Error allocating virtual network: {error}")
            return [False, str(error)]
        except (TemplateSyntaxError, NetworkTemplateError, ValueError) as error:
            self.log.error("ReM", f"Error allocating virtual network: {error}")
            return failure
        return self._durable([True, network.oid], failure)

    def vn_info(self, caller: Caller, nid: int) -> Deferred | Reply:
        network = self.networks.get(nid)
        if network is None:
            return [False, f"Error getting Virtual Network with NID = {nid}"]
        if not caller.may_use_network(network.uid):
            return NOT_AUTHORIZED_VN_INFO
        return self._settled([True, network.info_text()])

    def vn_delete(self, caller: Caller, nid: int) -> Deferred | Reply:
        network = self.networks.get(nid)
        if network is None:
            return [False, f"Error getting Virtual Network with NID = {nid}"]
        if not caller.owns(network.uid):
            return NOT_AUTHORIZED_VN_DELETE
        self.networks.delete(network)
        return self._durable([True], [False])
