"""info_text is kept between info calls, and never outlives a change of what it shows.

Each test changes an object the ways the daemon does (fields assigned, template
attributes added, set, removed, a vector changed in place, host attributes replaced,
shares moved) and compares its info_text with that of a fresh copy that never had one.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from nebula_xr import model
from nebula_xr.model import Host, HostState, LCMState, VirtualMachine, VMState
from nebula_xr.template import Template

words = st.text(st.characters(codec="utf-8"), max_size=6)
numbers = st.integers(-5, 10**6)

vm_changes = st.one_of(
    st.tuples(st.just("field"), st.sampled_from(["uid", "memory", "cpu", "last_poll"]), numbers),
    st.tuples(st.just("field"), st.sampled_from(["stime", "etime", "net_tx", "net_rx"]), numbers),
    st.tuples(st.just("field"), st.just("deploy_id"), words),
    st.tuples(st.just("field"), st.just("state"), st.sampled_from(VMState)),
    st.tuples(st.just("field"), st.just("lcm_state"), st.sampled_from(LCMState)),
    st.tuples(st.just("add"), st.sampled_from(["A", "B", "NAME"]), words),
    st.tuples(st.just("set"), st.sampled_from(["A", "B", "NAME"]), words),
    st.tuples(st.just("remove"), st.sampled_from(["A", "B", "NAME"]), st.none()),
    st.tuples(st.just("vector"), st.sampled_from(["IP", "MAC"]), words),
    st.tuples(st.just("template"), st.none(), st.none()),
)


def fresh_vm(vm: VirtualMachine) -> VirtualMachine:
    template = Template(
        [(n, v if isinstance(v, str) else dict(v)) for n, v in vm.template.attributes]
    )
    copy = VirtualMachine(vm.oid, template, vm.stime)
    for name in ("uid", "last_poll", "state", "lcm_state", "etime", "deploy_id", "memory"):
        setattr(copy, name, getattr(vm, name))
    for name in ("cpu", "net_tx", "net_rx"):
        setattr(copy, name, getattr(vm, name))
    return copy


@settings(max_examples=200, deadline=None)
@given(st.lists(vm_changes, max_size=12))
def test_vm_info_text_follows_every_change(changes: list[tuple]) -> None:
    vm = VirtualMachine(7, Template.parse('NAME = "a"\nNIC = [ IP = "1.2.3.4" ]\n'), 5)
    assert vm.info_text() == fresh_vm(vm).info_text()
    for kind, name, value in changes:
        if kind == "field":
            setattr(vm, name, value)
        elif kind == "add":
            vm.template.add(name, value)
        elif kind == "set":
            vm.template.set(name, value)
        elif kind == "remove":
            vm.template.remove(name)
        elif kind == "vector":
            nics = vm.template.vectors("NIC")
            if nics:
                nics[0][name] = value  # in place, as lease bookkeeping may
        else:
            vm.template = Template([("NAME", "other")])
        assert vm.info_text() == fresh_vm(vm).info_text()
        assert vm.info_text() == fresh_vm(vm).info_text()  # and from the cache


host_changes = st.one_of(
    st.tuples(st.just("attribute"), st.sampled_from(["FREECPU", "USEDMEMORY", "X"]), words),
    st.tuples(st.just("forget"), st.sampled_from(["FREECPU", "USEDMEMORY", "X"]), st.none()),
    st.tuples(st.just("attributes"), st.none(), st.dictionaries(words, words, max_size=3)),
    st.tuples(st.just("share"), st.sampled_from(["max_cpu", "cpu_usage", "endpoint"]), numbers),
    st.tuples(st.just("add_vm"), st.none(), numbers),
    st.tuples(st.just("field"), st.sampled_from(["name", "im_mad", "vm_mad", "tm_mad"]), words),
    st.tuples(st.just("field"), st.just("managed"), st.booleans()),
    st.tuples(st.just("field"), st.just("state"), st.sampled_from(HostState)),
)


def fresh_host(host: Host) -> Host:
    copy = Host(host.oid, host.name, host.im_mad, host.vm_mad, host.tm_mad, host.managed, 0)
    copy.attributes = dict(host.attributes)
    for name in ("endpoint", "disk_usage", "mem_usage", "cpu_usage", "max_disk", "max_mem"):
        setattr(copy.shares, name, getattr(host.shares, name))
    copy.shares.max_cpu = host.shares.max_cpu
    copy.shares.running_vms = host.shares.running_vms
    return copy


@settings(max_examples=200, deadline=None)
@given(st.lists(host_changes, max_size=12))
def test_host_info_text_follows_every_change(changes: list[tuple]) -> None:
    host = Host(3, "node", "im", "vmm", "tm", True, 0)
    host.attributes = {"FREECPU": "100", "TOTALMEMORY": "2048"}
    assert host.info_text() == fresh_host(host).info_text()
    for kind, name, value in changes:
        if kind == "attribute":
            host.attributes[name] = value  # a monitoring report replaces by name
        elif kind == "forget":
            host.attributes.pop(name, None)
        elif kind == "attributes":
            host.attributes = value
        elif kind == "share":
            setattr(host.shares, name, value)
        elif kind == "add_vm":
            host.shares.add(value, value * 2, 0)
        else:
            setattr(host, name, value)
        assert host.info_text() == fresh_host(host).info_text()
        assert host.info_text() == fresh_host(host).info_text()


def test_only_the_last_vms_asked_about_keep_their_info_text(monkeypatch) -> None:
    monkeypatch.setattr(model, "INFO_KEPT", 3)
    vms = [
        VirtualMachine(i, Template.parse(f'NAME = "vm-{i}"\nDISK = [ A = b ]\n'), 5)
        for i in range(5)
    ]
    texts = [vm.info_text() for vm in vms]
    for _ in range(4):  # asked again: still kept, not counted twice
        assert vms[4].info_text() == texts[4]
    assert [vm._info is not None for vm in vms] == [False, False, True, True, True]
    assert [vm.template._info is not None for vm in vms] == [False, False, True, True, True]
    assert vms[0].info_text() == texts[0]  # written again, the same, and kept again
    assert [vm._info is not None for vm in vms] == [True, False, False, True, True]
    assert texts[0] == fresh_vm(vms[0]).info_text()
