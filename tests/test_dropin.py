"""Drop-in fidelity with oned 1.2 as its clients see it: the introspection methods the
xmlrpc-c library of 1.2's time answered (system.*), 1.2's help texts, and the VM_MAD
``type`` choosing the deployment file whichever plugin implements the driver."""

from __future__ import annotations

import xmlrpc.client

import pytest

from tests.oned import OneDaemon, wait_for, write_conf
from tests.test_api14 import METHODS_12, METHODS_14
from tests.test_tutorial import wait_state

#: system.* as xmlrpc-c installs them in every registry, before the application's methods.
SYSTEM_METHODS = [
    "system.listMethods",
    "system.methodExist",
    "system.methodHelp",
    "system.methodSignature",
    "system.multicall",
    "system.shutdown",
    "system.capabilities",
    "system.getCapabilities",
]

#: include/RequestManager.h of release-1.2.
HELP_12 = {
    "one.vmallocate": "Allocates a virtual machine in the pool",
    "one.vmdeploy": "Deploys a virtual machine",
    "one.vmaction": "Performs an action on a virtual machine",
    "one.vmmigrate": "Migrates a virtual machine",
    "one.vmget_info": "Returns virtual machine information",
    "one.hostallocate": "Allocates a host in the pool",
    "one.hostinfo": "Returns host information",
    "one.hostdelete": "Deletes a host from the pool",
    "one.hostenable": "Enables or disables a host",
    "one.vnallocate": "Creates a virtual network",
    "one.vninfo": "Returns virtual network information",
    "one.vndelete": "Deletes a virtual network",
}


@pytest.fixture
def one(tmp_path):
    write_conf(tmp_path)
    daemon = OneDaemon(tmp_path).start()
    yield daemon
    assert daemon.stop() == 0


def test_list_methods_starts_with_what_1_2_listed_in_its_order(one: OneDaemon) -> None:
    with one.proxy() as proxy:
        names = proxy.system.listMethods()
    assert names[:20] == SYSTEM_METHODS + METHODS_12
    assert set(METHODS_14) <= set(names[20:])  # Haizea 1.0 needs the 1.4 pool methods
    assert len(names) == len(set(names))


def test_method_help_gives_1_2_texts(one: OneDaemon) -> None:
    with one.proxy() as proxy:
        for name, text in HELP_12.items():
            assert proxy.system.methodHelp(name) == text, name
        assert proxy.system.methodHelp("system.methodExist") == (
            "Tell whether a method by a specified name exists on this server"
        )


def test_method_exist_and_its_backwards_signature(one: OneDaemon) -> None:
    with one.proxy() as proxy:
        assert proxy.system.methodExist("one.vmget_info") is True
        assert proxy.system.methodExist("one.vm.info") is True
        assert proxy.system.methodExist("one.nothing") is False
        # xmlrpc-c registers it as "s:b" and introspection repeats that.
        assert proxy.system.methodSignature("system.methodExist") == [["string", "boolean"]]
        assert proxy.system.methodSignature("system.shutdown") == [["int", "string"]]
        assert proxy.system.methodSignature("system.capabilities") == [["struct"]]


def test_capabilities_are_xmlrpc_c_s(one: OneDaemon) -> None:
    with one.proxy() as proxy:
        assert proxy.system.capabilities() == {
            "facility": "xmlrpc-c",
            "version_major": 1,
            "version_minor": 18,
            "version_point": 0,
            "protocol_version": 2,
        }
        assert proxy.system.getCapabilities() == {
            "introspect": {
                "specUrl": "http://xmlrpc-c.sourceforge.net/xmlrpc-c/introspection.html",
                "specVersion": 1,
            }
        }


def test_system_shutdown_never_stops_the_daemon(one: OneDaemon) -> None:
    with one.proxy() as proxy:
        with pytest.raises(xmlrpc.client.Fault) as raised:
            proxy.system.shutdown("please")
    assert raised.value.faultCode == 0
    assert raised.value.faultString == "This server program is not capable of shutting down"
    assert one.process is not None and one.process.poll() is None
    assert one.call("one.hostallocate", "node01", "im_xen", "vmm_xen", "tm_nfs", True) == [True, 0]
    wait_for(lambda: one.call("one.hostinfo", 0)[0])


def test_vm_mad_type_chooses_the_deployment_file_whatever_the_plugin(tmp_path) -> None:
    drivers = (
        'IM_MAD = [ name = "im_xen", executable = "im_dummy" ]\n'
        'VM_MAD = [ name = "vmm_xen", executable = "vmm_dummy", type = "xen" ]\n'
        'VM_MAD = [ name = "vmm_own", executable = "vmm_dummy" ]\n'
        'TM_MAD = [ name = "tm_nfs", executable = "tm_dummy" ]\n'
    )
    write_conf(tmp_path, drivers=drivers)
    one = OneDaemon(tmp_path).start()
    try:
        for name, vmm in (("xenhost", "vmm_xen"), ("ownhost", "vmm_own")):
            assert one.call("one.hostallocate", name, "im_xen", vmm, "tm_nfs", True)[0]
        kernel_less = "NAME = bare\nCPU = 1\nMEMORY = 64\n"
        booted = kernel_less + "OS = [ kernel = /boot/vmlinuz, root = sda1 ]\n"
        vms = {}
        for key, template, hid in (("bare", kernel_less, 0), ("booted", booted, 0)):
            ok, vms[key] = one.call("one.vmallocate", template)
            assert one.call("one.vmdeploy", vms[key], hid) == [True]
        ok, vms["own"] = one.call("one.vmallocate", kernel_less)
        assert one.call("one.vmdeploy", vms["own"], 1) == [True]

        wait_state(one, vms["bare"], 7)  # FAILED, as 1.2 failed it at deploy
        var = tmp_path / "var"
        log = (var / str(vms["bare"]) / "vm.log").read_text()
        assert "No kernel or bootloader defined and no default provided." in log
        assert not (var / str(vms["bare"]) / "deployment.0").exists()

        wait_state(one, vms["booted"], 3, 3)
        xen_file = (var / str(vms["booted"]) / "deployment.0").read_text()
        assert xen_file.startswith(f"name = 'one-{vms['booted']}'\n")
        assert "kernel = '/boot/vmlinuz'\n" in xen_file and "root = '/dev/sda1'\n" in xen_file

        wait_state(one, vms["own"], 3, 3)  # no type: the plugin's own file
        own_file = (var / str(vms["own"]) / "deployment.0").read_text()
        assert own_file.startswith(f"# dummy deployment of one-{vms['own']}\n")
    finally:
        assert one.stop() == 0
