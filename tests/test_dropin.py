"""Drop-in fidelity with oned 1.2 as its clients see it: the introspection methods the
xmlrpc-c library of 1.2's time answered (system.*), 1.2's help texts, and the VM_MAD
``type`` choosing the deployment file whichever plugin implements the driver."""

from __future__ import annotations

import xmlrpc.client

import pytest

from tests.oned import OneDaemon, wait_for, write_conf
from tests.test_api14 import METHODS_12, METHODS_14

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
