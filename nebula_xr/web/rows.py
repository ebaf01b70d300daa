"""What the web console shows of VMs, hosts and networks: plain JSON-ready dicts.

The actions a VM row offers follow the dispatch manager's state checks, so the page
only enables buttons the daemon would accept; the daemon still decides (a click that
races a state change gets the daemon's own refusal).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from nebula_xr.expressions import ExpressionError, compile_requirements
from nebula_xr.model import Host, HostState, LCMState, VirtualMachine, VMState
from nebula_xr.vnet import NetworkType, VirtualNetwork, number_to_ip


def vm_actions(vm: VirtualMachine) -> list[str]:
    """The actions of the API valid in the VM's state (``delete`` is 1.4's finalize)."""
    state, lcm = vm.state, vm.lcm_state
    actions: list[str] = []
    if state in (VMState.PENDING, VMState.HOLD):
        actions.append("deploy")
    if state is VMState.ACTIVE and lcm is LCMState.RUNNING:
        actions += ["migrate", "livemigrate", "suspend", "stop", "shutdown", "cancel"]
    if state is VMState.PENDING:
        actions.append("hold")
    if state is VMState.HOLD:
        actions.append("release")
    if state in (VMState.STOPPED, VMState.SUSPENDED):
        actions.append("resume")
    if state is VMState.ACTIVE and lcm in (LCMState.BOOT, LCMState.UNKNOWN):
        actions.append("restart")
    if state is not VMState.DONE:
        actions.append("delete")
    return actions


def state_words(vm: VirtualMachine) -> str:
    """The life-cycle state of an ACTIVE VM (PROLOG, RUNNING ...), else its state."""
    if vm.state is VMState.ACTIVE and vm.lcm_state is not LCMState.LCM_INIT:
        return vm.lcm_state.name
    return vm.state.name


def vm_row(vm: VirtualMachine, owner_name: Callable[[int], str]) -> dict[str, Any]:
    current = vm.current
    return {
        "id": vm.oid,
        "name": vm.name,
        "owner": owner_name(vm.uid),
        "uid": vm.uid,
        "deploy_id": vm.deploy_id,
        "state": vm.state.name,
        "lcm_state": vm.lcm_state.name,
        "words": state_words(vm),
        "host": current.host_name if current is not None and vm.state is VMState.ACTIVE else "",
        "hid": current.hid if current is not None else -1,
        "cpu": vm.cpu,
        "memory": vm.memory,
        "net_tx": vm.net_tx,
        "net_rx": vm.net_rx,
        "stime": vm.stime,
        "etime": vm.etime,
        "actions": vm_actions(vm),
    }


def _attribute_int(host: Host, name: str) -> int | None:
    value = host.attributes.get(name)
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def host_row(host: Host, state: str | None = None) -> dict[str, Any]:
    shares = host.shares
    total_cpu = _attribute_int(host, "TOTALCPU") or shares.max_cpu
    used_cpu = _attribute_int(host, "USEDCPU")
    total_memory = _attribute_int(host, "TOTALMEMORY") or shares.max_mem
    used_memory = _attribute_int(host, "USEDMEMORY")
    return {
        "id": host.oid,
        "name": host.name,
        "state": state or HostState(host.state).name,
        "im_mad": host.im_mad,
        "vm_mad": host.vm_mad,
        "tm_mad": host.tm_mad,
        "running_vms": shares.running_vms,
        "total_cpu": total_cpu,
        "used_cpu": used_cpu if used_cpu is not None else shares.cpu_usage,
        "total_memory": total_memory,
        "used_memory": used_memory if used_memory is not None else shares.mem_usage,
        "cpu_usage": shares.cpu_usage,
        "memory_usage": shares.mem_usage,
        "last_mon_time": host.last_mon_time,
        # Why the last monitoring failed, as the information manager recorded it.
        "error": host.attributes.get("ERROR", "") if host.state is HostState.ERROR else "",
    }


def network_row(network: VirtualNetwork, owner_name: Callable[[int], str]) -> dict[str, Any]:
    used = sum(1 for lease in network.leases.values() if lease.used)
    ranged = network.type is NetworkType.RANGED
    return {
        "id": network.oid,
        "name": network.name,
        "type": network.type.name,
        "bridge": network.bridge,
        "owner": owner_name(network.uid),
        "size": network.size if ranged else len(network.leases),
        "leases": used,
    }


def leases(network: VirtualNetwork, vm_name: Callable[[int], str]) -> list[dict[str, Any]]:
    return [
        {
            "ip": number_to_ip(lease.ip),
            "mac": lease.mac,
            "used": lease.used,
            "vid": lease.vid if lease.used else -1,
            "vm": vm_name(lease.vid) if lease.used else "",
        }
        for lease in sorted(network.leases.values(), key=lambda lease: lease.ip)
    ]


def placement(vm: VirtualMachine, hosts: Iterable[Host]) -> dict[str, Any]:
    """Each host, and whether it meets the VM's REQUIREMENTS (the scheduler's test)."""
    requirements = vm.template.get_string("REQUIREMENTS") or ""
    error = ""
    try:
        matches = compile_requirements(requirements)
    except ExpressionError as failure:
        error = f"REQUIREMENTS do not parse: {failure}"
        matches = None
    rows = []
    for host in sorted(hosts, key=lambda host: host.oid):
        usable = host.state not in (HostState.DISABLED, HostState.ERROR)
        rows.append(
            {
                "id": host.oid,
                "name": host.name,
                "state": HostState(host.state).name,
                "matches": bool(usable and matches is not None and matches(host.attributes)),
            }
        )
    return {"requirements": requirements, "error": error, "hosts": rows}


#: What a form value may hold: the template grammar has no escapes inside quotes.
_UNSAFE = re.compile(r'["\\\x00-\x1f\x7f\[\]]')


class FormError(ValueError):
    """A form field cannot be written into a template."""


def _quoted(field: str, value: str) -> str:
    if _UNSAFE.search(value):
        raise FormError(f"{field} must not contain quotes, brackets, backslashes or newlines")
    return f'"{value}"'


def _number(field: str, value: str, *, decimal: bool = False) -> str:
    pattern = r"\d+(\.\d+)?" if decimal else r"\d+"
    if not re.fullmatch(pattern, value.strip(), re.ASCII):
        raise FormError(f"{field} must be a {'number' if decimal else 'whole number'}")
    return value.strip()


def form_template(form: dict[str, Any]) -> str:
    """A 1.2 VM template from the simple form's fields, every value quoted or checked."""

    def text(name: str) -> str:
        value = form.get(name, "")
        if not isinstance(value, str):
            raise FormError(f"{name} must be text")
        return value.strip()

    name = text("name")
    if not name:
        raise FormError("name is required")
    lines = [
        f"NAME = {_quoted('name', name)}",
        f"CPU = {_number('cpu', text('cpu') or '1', decimal=True)}",
        f"MEMORY = {_number('memory', text('memory') or '128')}",
    ]
    if text("kernel"):
        lines.append(f"OS = [ kernel = {_quoted('kernel', text('kernel'))} ]")
    if text("disk"):
        disk = _quoted("disk", text("disk"))
        lines.append(f'DISK = [ source = {disk}, target = "sda", readonly = "no" ]')
    if text("network"):
        lines.append(f"NIC = [ NETWORK = {_quoted('network', text('network'))} ]")
    return "\n".join(lines) + "\n"
