"""The OpenNebula 1.4 XML-RPC API, served beside the 1.2 one (api-1.4.md).

The nineteen dotted methods (``one.vm.allocate`` ...) answer from the same pools and
life cycle as the twelve 1.2 methods, with 1.4's checks, messages and XML documents
(:mod:`nebula_xr.xmldoc`). nebula-xr methods complete them for the CLI:
``nebula_xr.vm.history`` (every history record; 1.4 only shows the current one) and
``nebula_xr.vm.console`` (how to reach a VM's console, as its VMM driver says), and
2.2's resubmit as ``nebula_xr.vm.resubmit`` (for the host_error hook).

Sessions ``user:sha1(password)`` are verified (:mod:`nebula_xr.access`), and the caller
is the owner of what it creates and the meaning of the pool filter -1. Beyond 1.4, which
let any user read everything, a user only sees its own VMs, and its own and oneadmin's
networks (one.vm.info, the pools, nebula_xr.vm.*).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from twisted.internet.defer import Deferred

from nebula_xr import xmldoc
from nebula_xr.access import Access, Caller
from nebula_xr.database import Database
from nebula_xr.dispatch_manager import ACTIONS, AllocationError, DispatchManager
from nebula_xr.drivers.base import DriverError
from nebula_xr.host_failure import Fencing
from nebula_xr.listing import answer_in_slices
from nebula_xr.log import Log
from nebula_xr.model import LCMState, VirtualMachine, VMState
from nebula_xr.monitoring_history import HOST, VM, MonitoringHistory
from nebula_xr.pools import HostPool, VirtualMachinePool, VirtualNetworkPool
from nebula_xr.request_manager import (
    NOT_AUTHENTICATED_ALLOCATE,
    NOT_AUTHENTICATED_HOST_INFO,
    NOT_AUTHENTICATED_VN_ALLOCATE,
    NOT_AUTHORIZED_ADD_HOST,
    NOT_AUTHORIZED_DEPLOY,
    NOT_AUTHORIZED_MIGRATE,
    NOT_AUTHORIZED_VN_INFO,
    Reply,
    RequestManager,
    not_authorized_vm,
)
from nebula_xr.scheduling import RequestResult
from nebula_xr.template import VM_NUMERIC_ATTRIBUTES, Template, TemplateSyntaxError
from nebula_xr.template_policy import TemplateRefused, check_storable
from nebula_xr.transport.xmlrpc import MethodRegistry
from nebula_xr.users import ADMIN, UserPool
from nebula_xr.virtual_machine_manager import VirtualMachineManager
from nebula_xr.vnet import NetworkTemplateError

WRONG_STATE = "Wrong state to perform action"


def describe_state(vm: VirtualMachine) -> str:
    """``PENDING``, or ``ACTIVE (PROLOG)`` with the life-cycle state of an ACTIVE VM."""
    if vm.state is VMState.ACTIVE:
        return f"{vm.state.name} ({vm.lcm_state.name})"
    return vm.state.name


def _pool_filter(flag: int, caller: int) -> Callable[[int], bool]:
    """Which owners a pool call lists: ≤ -2 everyone, -1 the caller, ≥ 0 that uid."""
    if flag <= -2:
        return lambda uid: True
    wanted = caller if flag == -1 else flag
    return lambda uid: uid == wanted


NOT_AUTHENTICATED_VM_POOL = [
    False,
    "User not authenticated, aborting RequestManagerPoolInfo call.",
]
NOT_AUTHENTICATED_HOST_POOL = [
    False,
    "User not authenticated, RequestManagerHostPoolInfo aborted.",
]
NOT_AUTHENTICATED_VN_INFO = [False, "User not authenticated, VirtualNetworkInfo call aborted."]
NOT_AUTHENTICATED_VN_POOL = [False, "User not authenticated, NetworkPoolInfo call aborted."]
NOT_AUTHORIZED_ADD_USER = [False, "User not authorized to add new users"]
NOT_AUTHORIZED_USER_INFO = [False, "User not authorized to retrieve user information"]
NOT_AUTHORIZED_DELETE_USER = [False, "User not authorized to delete users"]


class RequestManager14(RequestManager):
    """The 1.4 request manager; it shares the 1.2 one's pools and commit discipline."""

    def __init__(
        self,
        dm: DispatchManager,
        vms: VirtualMachinePool,
        hosts: HostPool,
        networks: VirtualNetworkPool,
        users: UserPool,
        vmm: VirtualMachineManager,
        db: Database,
        clock: Any,
        log: Log,
        on_host_added: Callable[[Any], None] | None = None,
        access: Access | None = None,
        fencing: Fencing | None = None,
        *,
        driver_names: Mapping[str, Collection[str]] | None = None,
        monitoring: MonitoringHistory | None = None,
    ) -> None:
        super().__init__(
            dm,
            vms,
            hosts,
            networks,
            db,
            clock,
            log,
            on_host_added,
            access,
            driver_names=driver_names,
        )
        self.users = users
        self.vmm = vmm
        self.fencing = fencing
        self.monitoring = monitoring

    def register(self, registry: MethodRegistry) -> None:
        # Help strings as xmlrpc-c announced them in 1.4 (userpool.info's sic included).
        methods: tuple[tuple[str, Callable[..., Any], str, str], ...] = (
            (
                "one.vm.allocate",
                self.vm_allocate14,
                "A:ss",
                "Allocates a virtual machine in the pool",
            ),
            ("one.vm.deploy", self.vm_deploy14, "A:sii", "Deploys a virtual machine"),
            ("one.vm.action", self.vm_action14, "A:ssi", "Performs an action on a virtual machine"),
            ("one.vm.migrate", self.vm_migrate14, "A:siib", "Migrates a virtual machine"),
            ("one.vm.info", self.vm_info14, "A:si", "Returns virtual machine information"),
            (
                "one.vm.recover",
                self.vm_recover,
                "A:sib",
                "Recovers a stuck VM that is waiting for a driver operation",
            ),
            ("one.vmpool.info", self.vm_pool_info, "A:si", "Returns the virtual machine pool"),
            (
                "one.vm.monitoring",
                self.vm_monitoring,
                "A:si",
                "Returns the virtual machine monitoring records",
            ),
            ("one.host.allocate", self.host_allocate14, "A:sssss", "Allocates a host in the pool"),
            ("one.host.info", self.host_info14, "A:si", "Returns host information"),
            ("one.host.delete", self.host_delete, "A:si", "Deletes a host from the pool"),
            ("one.host.enable", self.host_enable, "A:sib", "Enables or disables a host"),
            ("one.hostpool.info", self.host_pool_info, "A:s", "Returns the host pool information"),
            (
                "one.host.monitoring",
                self.host_monitoring,
                "A:si",
                "Returns the host monitoring records",
            ),
            ("one.vn.allocate", self.vn_allocate14, "A:ss", "Creates a virtual network"),
            ("one.vn.info", self.vn_info14, "A:si", "Returns virtual network information"),
            ("one.vn.delete", self.vn_delete, "A:si", "Deletes a virtual network"),
            (
                "one.vnpool.info",
                self.vn_pool_info,
                "A:si",
                "Returns the virtual network pool information",
            ),
            ("one.user.allocate", self.user_allocate, "A:sss", "Creates a new user"),
            ("one.user.info", self.user_info, "A:si", "Returns the Info of the user"),
            ("one.user.delete", self.user_delete, "A:si", "Deletes a user account"),
            ("one.userpool.info", self.user_pool_info, "A:s", "Creates a new user"),
            ("nebula_xr.vm.history", self.vm_history, "A:si", "Returns the history of a VM"),
            (
                "nebula_xr.vm.resubmit",
                self.vm_resubmit,
                "A:si",
                "Sends a virtual machine back to PENDING, its domain destroyed first",
            ),
            (
                "nebula_xr.vm.console",
                self.vm_console,
                "A:si",
                "Returns how to reach the console of a VM",
            ),
        )
        for name, handler, signature, help_text in methods:
            guarded = self.access.guard(handler, legacy=False)
            registry.register(name, guarded, signature, help_text, takes_context=True)

    # -- virtual machines ---------------------------------------------------------------

    def vm_allocate14(self, caller: Caller, text: str) -> Deferred | Reply:
        if not caller.authenticated:
            return NOT_AUTHENTICATED_ALLOCATE
        check = self.network_check(caller, unknown_fails=True)
        return self._allocate_vm(
            text,
            caller.uid,
            check,
            # Also refuses what 1.2 let through to fail later (MEMORY = lots).
            lambda text: Template.parse_strict(text, VM_NUMERIC_ATTRIBUTES),
        )

    def parse_refused(self, error: TemplateSyntaxError) -> Reply:
        return [False, f"Error parsing VM template: {error.located()}"]

    def allocation_refused(self, error: AllocationError) -> Reply:
        return [False, f"Error inserting VM in the database: {error}"]

    def _refused(self, vid: int, message: str) -> Reply:
        """A refusal; a wrong-state one also says which state the VM is in."""
        vm = self.vms.get(vid)
        if vm is not None and (message == WRONG_STATE or message.endswith(", wrong state")):
            message = f"{message}: VM {vid} is {describe_state(vm)}"
        return [False, message]

    def vm_deploy14(self, caller: Caller, vid: int, hid: int) -> Deferred | Reply:
        if self.hosts.get(hid) is not None:
            refused = self._vm_refused(caller, vid, NOT_AUTHORIZED_DEPLOY)
            if refused:
                return refused
        # 1.4 hosts have no "managed" flag: a host added unmanaged through 1.2 is usable.
        result = self.dm.deploy(vid, hid, managed_only=False)
        if not result.ok:
            return self._refused(vid, result.message)
        return self._durable([True], [False, f"Can not deploy VM {vid}, can not insert history"])

    def vm_action14(self, caller: Caller, action: str, vid: int) -> Deferred | Reply:
        # 1.4 looks the VM up before the action name; 1.2 did it the other way round.
        vm = self.vms.get(vid)
        if vm is None:
            return [False, f"The virtual machine {vid} does not exists"]
        if not caller.owns(vm.uid):
            return not_authorized_vm(vid)
        if action == "restart":
            result = self.dm.restart(vid)
        elif action == "finalize":
            result = self.dm.finalize(vid)
        elif action in ACTIONS:
            result = self.dm.action(action, vid)
        else:
            return [False, "Unknown action"]
        if not result.ok:
            return self._refused(vid, result.message)
        return self._durable([True], [False, "Error writing the database, check oned.log"])

    def vm_migrate14(self, caller: Caller, vid: int, hid: int, live: bool) -> Deferred | Reply:
        if self.hosts.get(hid) is not None:
            refused = self._vm_refused(caller, vid, NOT_AUTHORIZED_MIGRATE)
            if refused:
                return refused
        result = self.dm.migrate(vid, hid, live, managed_only=False, verb="migrate")
        if not result.ok:
            vm = self.vms.get(vid)
            if vm is not None and vm.current is not None and vm.current.hid == hid:
                if vm.lcm_state is LCMState.RUNNING:
                    return [False, f"{result.message}: VM {vid} already runs on host {hid}"]
            return self._refused(vid, result.message)
        return self._durable([True], [False, f"Can not migrate VM {vid}, can not insert history"])

    def vm_recover(self, caller: Caller, vid: int, success: bool) -> Deferred | Reply:
        """OpenNebula 4.2's recover: the administrator says how the pending driver step
        of a VM in a transient state ended, for the cases no driver can settle. As in
        4.2 it needs administrator rights on the VM: oneadmin's."""
        if self.vms.get(vid) is None:
            return [False, f"The virtual machine {vid} does not exists"]
        if not caller.admin:
            return not_authorized_vm(vid)
        result = self.dm.recover(vid, bool(success))
        if not result.ok:
            return [False, result.message]
        return self._durable([True], [False, "Error writing the database, check oned.log"])

    def _own_vm(self, caller: Caller, vid: int) -> Any:
        """VM ``vid`` if the caller may see it, else the reply refusing it."""
        vm = self.vms.get(vid)
        if vm is None:
            return [False, f"Error getting vm with VID = {vid}"]
        if not caller.owns(vm.uid):
            return not_authorized_vm(vid)
        return vm

    def vm_info14(self, caller: Caller, vid: int) -> Reply:
        vm = self._own_vm(caller, vid)
        if isinstance(vm, list):
            return vm
        return [True, xmldoc.vm_document(vm)]

    def vm_pool_info(self, caller: Caller, flag: int) -> Deferred | Reply:
        if not caller.authenticated:
            return NOT_AUTHENTICATED_VM_POOL
        wanted = _pool_filter(flag, caller.uid)
        vms = [
            vm
            for vm in sorted(self.vms, key=lambda vm: vm.oid)
            if vm.state is not VMState.DONE and wanted(vm.uid) and caller.owns(vm.uid)
        ]
        return answer_in_slices(xmldoc.vm_pool_pieces(vms, self.users.name_of, xmlrpc=True))

    def vm_monitoring(self, caller: Caller, vid: int) -> Reply:
        """3.x's one.vm.monitoring: the VM's polls kept by the monitoring history."""
        vm = self._own_vm(caller, vid)
        if isinstance(vm, list):
            return vm
        samples = self.monitoring.samples(VM, vid) if self.monitoring is not None else []
        return [True, xmldoc.vm_monitoring_document(vid, samples)]

    def vm_history(self, caller: Caller, vid: int) -> Reply:
        vm = self._own_vm(caller, vid)
        if isinstance(vm, list):
            return vm
        return [True, xmldoc.history_document(vm)]

    def vm_resubmit(self, caller: Caller, vid: int) -> Deferred | Reply:
        """2.2's resubmit (host_error -r): ``[true]`` once the VM is PENDING again. It
        destroys a domain on a failed host, so, as host failure handling, it is oneadmin's."""
        if self.vms.get(vid) is None:
            return [False, f"The virtual machine {vid} does not exists"]
        if not caller.admin:
            return not_authorized_vm(vid)
        if self.fencing is None:
            return [False, "resubmit is not available"]

        def answer(result: RequestResult) -> Deferred | Reply:
            if not result.ok:
                return [False, result.message]
            return self._durable([True], [False, "Error writing the database, check oned.log"])

        return self.fencing.resubmit(vid).addCallback(answer)

    def vm_console(self, caller: Caller, vid: int) -> Reply:
        """``[true, {host, domain, method}, banner]``: where the console is; the client
        builds the command from a fixed form (it never runs one a server sends)."""
        vm = self._own_vm(caller, vid)
        if isinstance(vm, list):
            return vm
        if vm.state is not VMState.ACTIVE or vm.lcm_state is not LCMState.RUNNING:
            return [False, f"VM {vid} is not running"]
        try:
            command = self.vmm.console(vm)
        except DriverError as error:
            return [False, f"Can not reach the console of VM {vid}: {error}"]
        if command is None:
            return [False, f"The virtualization driver of VM {vid} offers no console"]
        target = {"host": command.host, "domain": command.domain, "method": command.method}
        return [True, target, command.banner]

    # -- hosts --------------------------------------------------------------------------

    def host_allocate14(
        self, caller: Caller, name: str, im: str, vmm: str, tm: str
    ) -> Deferred | Reply:
        if not caller.admin:
            return NOT_AUTHORIZED_ADD_HOST
        problems = self.unknown_drivers(im, vmm, tm)
        if problems:
            return [False, f"Can not allocate host {name}: {problems}"]
        return self._allocate_host(name, im, vmm, tm, True)

    def host_info14(self, caller: Caller, hid: int) -> Reply:
        if not caller.authenticated:
            return NOT_AUTHENTICATED_HOST_INFO
        host = self.hosts.get(hid)
        if host is None:
            return [False, f"Error getting host with HID = {hid}"]
        return [True, xmldoc.host_document(host)]

    def host_monitoring(self, caller: Caller, hid: int) -> Reply:
        """3.x's one.host.monitoring: readable by every user, as one.host.info is."""
        if not caller.authenticated:
            return NOT_AUTHENTICATED_HOST_INFO
        if self.hosts.get(hid) is None:
            return [False, f"Error getting host with HID = {hid}"]
        samples = self.monitoring.samples(HOST, hid) if self.monitoring is not None else []
        return [True, xmldoc.host_monitoring_document(hid, samples)]

    def host_pool_info(self, caller: Caller) -> Deferred | Reply:
        if not caller.authenticated:
            return NOT_AUTHENTICATED_HOST_POOL
        hosts = sorted(self.hosts, key=lambda host: host.oid)
        return answer_in_slices(xmldoc.host_pool_pieces(hosts, xmlrpc=True))

    # -- virtual networks ---------------------------------------------------------------

    def vn_allocate14(self, caller: Caller, text: str) -> Deferred | Reply:
        if not caller.authenticated:
            return NOT_AUTHENTICATED_VN_ALLOCATE
        failure = f"Error allocating VN with template: \n{text}"
        # 1.4's message, then why (a line of its own, so clients matching 1.4 still do).
        failure += "" if failure.endswith("\n") else "\n"
        try:
            # The 1.4 grammar needs no final newline; the 1.2 one we parse does.
            template = Template.parse(text + "\n")
            check_storable(template, "VN")
            network = self.networks.allocate(template, caller.uid)
        except TemplateRefused as error:
            self.log.error("ReM", f"Error allocating virtual network: {error}")
            return [False, str(error)]
        except TemplateSyntaxError as error:
            self.log.error("ReM", f"Error allocating virtual network: {error}")
            return [False, f"{failure}Template error at {error.located()}"]
        except (NetworkTemplateError, ValueError) as error:
            self.log.error("ReM", f"Error allocating virtual network: {error}")
            return [False, f"{failure}{error}"]
        return self._durable([True, network.oid], [False, f"{failure}database write failed"])

    def vn_info14(self, caller: Caller, nid: int) -> Reply:
        if not caller.authenticated:
            return NOT_AUTHENTICATED_VN_INFO
        network = self.networks.get(nid)
        if network is None:
            return [False, f"Error getting Virtual Network with NID = {nid}"]
        if not caller.may_use_network(network.uid):
            return NOT_AUTHORIZED_VN_INFO
        return [True, xmldoc.vnet_document(network)]

    def vn_pool_info(self, caller: Caller, flag: int) -> Deferred | Reply:
        if not caller.authenticated:
            return NOT_AUTHENTICATED_VN_POOL
        wanted = _pool_filter(flag, caller.uid)
        networks = [
            network
            for network in sorted(self.networks, key=lambda network: network.oid)
            if wanted(network.uid) and caller.may_use_network(network.uid)
        ]
        return answer_in_slices(xmldoc.vnet_pool_pieces(networks, self.users.name_of, xmlrpc=True))

    # -- users --------------------------------------------------------------------------

    def user_allocate(self, caller: Caller, name: str, password: str) -> Deferred | Reply:
        """``password`` is what the user will sign in with (the SHA-1 hex of the clear
        text, as 1.4 clients send it); only a slow salted hash of it is stored."""
        if not caller.admin:
            return NOT_AUTHORIZED_ADD_USER
        if self.users.taken(name):
            return [False, "Existing user, cannot duplicate"]
        failure = [False, "Error allocating user"]
        if not name or ":" in name:
            return failure  # it could never log in: sessions split at the first ':'

        def hashed(stored_hash: str) -> Deferred | Reply:
            if self.users.taken(name):  # allocated meanwhile, while hashing
                return [False, "Existing user, cannot duplicate"]
            user = self.users.allocate(name, stored_hash)
            return self._durable([True, user.oid], failure)

        return self.access.hash_secret(password).addCallback(hashed)

    def user_info(self, caller: Caller, uid: int) -> Reply:
        if not caller.admin:
            return NOT_AUTHORIZED_USER_INFO
        user = self.users.get(uid)
        if user is None:
            return [False, "Error getting user"]
        return [True, xmldoc.user_document(user)]

    def user_delete(self, caller: Caller, uid: int) -> Deferred | Reply:
        if uid == ADMIN:
            return [False, "User oneadmin cannot be deleted"]
        if not caller.admin:
            return NOT_AUTHORIZED_DELETE_USER
        user = self.users.get(uid)
        if user is None:
            return [False, f"Error retrieving user {uid}"]
        self.users.delete(user)
        self.access.forget(user)
        return self._durable([True], [False, f"Error deleting user {uid}"])

    def user_pool_info(self, caller: Caller) -> Reply:
        if not caller.admin:
            code = -1 if caller.uid is None else caller.uid
            return [False, f"User not authorized to pull user pool info. Error code: {code}"]
        return [True, xmldoc.user_pool_document(self.users)]
