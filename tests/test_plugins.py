"""The plugin system: documented hooks, entry points, third-party plugins, clear errors."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from nebula_xr import hookimpl, hookspecs
from nebula_xr.plugin_manager import PluginManager
from nebula_xr.scheduling import Scheduler
from tests.oned import OneDaemon, wait_for, write_conf
from tests.test_tutorial import history, wait_state

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = {
    "im_dummy": "nebula_xr_plugins.dummy.im_dummy",
    "vmm_dummy": "nebula_xr_plugins.dummy.vmm_dummy",
    "tm_dummy": "nebula_xr_plugins.dummy.tm_dummy",
    "im_xen": "nebula_xr_plugins.im_xen",
    "vmm_xen": "nebula_xr_plugins.vmm_xen",
    "tm_nfs": "nebula_xr_plugins.tm_nfs",
    "tm_ssh": "nebula_xr_plugins.tm_ssh",
    "sched_rank": "nebula_xr_plugins.sched_rank",
}


def _hookspecs() -> dict[str, inspect.Signature]:
    return {
        name: inspect.signature(function)
        for name, function in vars(hookspecs).items()
        if name.startswith("nebula_xr_") and callable(function)
    }


def test_every_hook_is_documented_with_its_signature() -> None:
    documented = dict(
        re.findall(
            r"^### `(nebula_xr_\w+)\(([^)]*)\)`", (ROOT / "docs/plugins.md").read_text(), re.M
        )
    )
    specs = _hookspecs()
    assert set(documented) == set(specs)
    for name, signature in specs.items():
        assert documented[name].split(", ") == list(signature.parameters), name
        assert inspect.getdoc(getattr(hookspecs, name)), f"{name} has no docstring"


def test_every_scheduler_event_is_documented_with_its_signature() -> None:
    documented = dict(
        re.findall(r"^#### `(\w+)\(([^)]*)\)`", (ROOT / "docs/plugins.md").read_text(), re.M)
    )
    events = {
        name: inspect.signature(method)
        for name, method in vars(Scheduler).items()
        if callable(method) and not name.startswith("_") and name not in ("start", "stop")
    }
    assert set(documented) == set(events) == {"vm_changed", "host_changed", "host_monitored"}
    for name, signature in events.items():
        assert documented[name].split(", ") == list(signature.parameters)[1:], name
        assert inspect.getdoc(getattr(Scheduler, name)), f"{name} has no docstring"


def test_shipped_drivers_are_entry_point_plugins() -> None:
    entry_points = {ep.name: ep.value for ep in metadata.entry_points(group="nebula_xr")}
    for name, module in SHIPPED.items():
        assert entry_points.get(name) == module
    manager = PluginManager()
    manager.load()
    installed = {info.name: info for info in manager.installed()}
    assert set(SHIPPED) <= set(installed)
    assert installed["im_dummy"].distribution == "nebula-xr"
    # Its events come through the scheduler object the daemon built, not through hooks.
    assert installed["sched_rank"].hooks == ("nebula_xr_scheduler",)


def test_list_plugins_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "nebula_xr", "--list-plugins"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in SHIPPED:
        assert re.search(rf"^{name}\s+nebula-xr", out, re.M), out


def test_misspelt_hook_fails_loudly() -> None:
    class Broken:
        @hookimpl
        def nebula_xr_vm_state_chnaged(self, vm):  # the typo is the point
            pass

    manager = PluginManager()
    with pytest.raises(Exception, match="unknown hook"):
        manager.register(Broken(), "broken")


def test_unknown_plugin_is_a_clear_startup_error(tmp_path) -> None:
    write_conf(tmp_path, drivers='IM_MAD = [ name = "im_x", executable = "im_nowhere" ]\n')
    with pytest.raises(RuntimeError) as error:
        OneDaemon(tmp_path).start()
    message = str(error.value)
    assert "No plugin named 'im_nowhere'" in message
    assert "im_dummy" in message and "sched_rank" in message
    assert "Traceback" not in message


@pytest.fixture(scope="session")
def example_plugin():
    """The tiny third-party package under tests/, installed the way users install plugins."""
    try:
        metadata.distribution("nebula-xr-example")
    except metadata.PackageNotFoundError:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-build-isolation",
                str(ROOT / "tests" / "example_plugin"),
            ],
            check=True,
        )
    yield
    subprocess.run(
        [sys.executable, "-m", "pip", "uninstall", "-q", "-y", "nebula-xr-example"], check=False
    )


def test_pip_installed_plugin_is_used_by_naming_it(tmp_path, example_plugin) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "static.conf").write_text("TOTALCPU = 800\nTOTALMEMORY = 16777216\nFREECPU = 800\n")
    drivers = (
        'IM_MAD = [ name = "im_static", executable = "im_static", arguments = "static.conf" ]\n'
        'VM_MAD = [ name = "vmm_xen", executable = "vmm_dummy" ]\n'
        'TM_MAD = [ name = "tm_nfs", executable = "tm_dummy" ]\n'
    )
    write_conf(tmp_path, drivers=drivers, scheduler='SCHEDULER = [ plugin = "sched_lease" ]')
    one = OneDaemon(tmp_path).start()
    try:
        assert one.call("one.hostallocate", "big", "im_static", "vmm_xen", "tm_nfs", True) == [
            True,
            0,
        ]
        wait_for(lambda: "TOTALCPU=800" in one.call("one.hostinfo", 0)[1])
        template = "NAME = leased\nCPU = 1\nMEMORY = 32\nHAIZEA = [ DURATION = 1 ]\n"
        assert one.call("one.vmallocate", template) == [True, 0]
        wait_state(one, 0, 3, 3)  # deployed by the plugin's scheduler
        wait_state(one, 0, 6)  # and shut down when its lease ended
        assert history(one, 0)[0]["host_name"] == "big"
    finally:
        one.stop()


def test_the_shipped_oned_conf_starts_with_every_driver(tmp_path) -> None:
    import shutil

    from tests.web_support import free_port

    etc = tmp_path / "etc"
    shutil.copytree(ROOT / "conf", etc)
    conf = etc / "oned.conf"
    web_port = free_port()  # the shipped conf serves the web console on 9869
    conf.write_text(
        conf.read_text()
        .replace("PORT=2633", "PORT=0")
        .replace('"0.0.0.0"', '"127.0.0.1"')
        .replace("port = 9869", f"port = {web_port}")
    )
    one = OneDaemon(tmp_path, conf).start()
    assert f"web console on http://127.0.0.1:{web_port}/" in one.startup[-1]
    try:
        assert one.call("one.hostallocate", "local", "im_dummy", "vmm_dummy", "tm_dummy", True) == [
            True,
            0,
        ]
        oned_log = tmp_path / "var" / "oned.log"
        # Lines below ERROR reach oned.log within log.FLUSH_DELAY.
        wait_for(lambda: "Loaded driver" in oned_log.read_text(), what="oned.log flushed")
        log = oned_log.read_text()
        for name, plugin in [
            ("im_xen", "im_xen"),
            ("vmm_xen", "vmm_xen"),
            ("tm_ssh", "tm_ssh"),
            ("vmm_dummy", "vmm_dummy"),
        ]:
            assert f"Loaded driver {name} from plugin {plugin}" in log
    finally:
        one.stop()


def test_plugin_xmlrpc_methods_get_the_callers_uid_and_need_new_names() -> None:
    from nebula_xr.plugin_manager import PluginError, XmlRpcMethod
    from nebula_xr.transport.xmlrpc import Fault, MethodRegistry

    class Echo:
        @hookimpl
        def nebula_xr_xmlrpc_methods(self, scheduler):
            return [XmlRpcMethod("echo.uid", lambda uid, n: [True, uid, n, scheduler], "A:i")]

    manager = PluginManager()
    manager.register(Echo(), "echo")
    registry = MethodRegistry()
    sessions = {"bob:x": 7}

    def guard(handler: Any) -> Any:
        return lambda _context, session, *params: handler(sessions[session], *params)

    assert manager.add_xmlrpc_methods(registry, None, guard) == ["echo.uid"]
    assert registry.call("echo.uid", ["bob:x", 3]) == [True, 7, 3, None]
    assert "echo.uid" in registry.names()
    with pytest.raises(Fault):
        registry.call("echo.uid", ["bob:x", "3"])  # the signature is checked as for the core's
    with pytest.raises(PluginError, match="'echo.uid' is already registered"):
        manager.add_xmlrpc_methods(registry, None, guard)


def _pip_installed(name: str, directory: str):
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", directory],
            check=True,
        )
    yield
    subprocess.run([sys.executable, "-m", "pip", "uninstall", "-q", "-y", name], check=False)


@pytest.fixture
def hostile_plugin():
    """An installed plugin answering every builder hook first (tryfirst), for any name."""
    yield from _pip_installed("nebula-xr-hostile", str(ROOT / "tests" / "hostile_plugin"))


def test_a_plugin_cannot_take_over_drivers_it_is_not_named_for(tmp_path, hostile_plugin) -> None:
    manager = PluginManager()
    manager.load()
    assert "hostile" in {info.name for info in manager.installed()}
    write_conf(tmp_path, scheduler='SCHEDULER = [ plugin = "sched_rank", interval = 0.2 ]')
    one = OneDaemon(tmp_path).start()
    try:
        assert one.call("one.hostallocate", "node01", "im_xen", "vmm_xen", "tm_nfs", True)[0]
        # Monitored by the dummy driver oned.conf names (200 CPUs), not the hostile one (666).
        wait_for(lambda: "TOTALCPU=200" in one.call("one.hostinfo", 0)[1])
        assert one.call("one.vmallocate", "NAME = mine\nCPU = 1\nMEMORY = 32\n") == [True, 0]
        wait_state(one, 0, 3, 3)  # placed by sched_rank, deployed and run by the dummies
        log = (tmp_path / "var" / "0" / "vm.log").read_text()
        assert "hijacked" not in log
    finally:
        one.stop()
