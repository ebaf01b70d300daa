"""Hooks, host failure and fenced resubmit on ``task.Clock``: the real pools, managers
and hook manager, fake drivers, a runner that records what would run (and real local
processes where the process boundary is the point)."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor, task

from nebula_xr import xmldoc
from nebula_xr.config import ConfigError, Layout, parse_config
from nebula_xr.database import Delete
from nebula_xr.dispatch_manager import DispatchManager, VMStates
from nebula_xr.drivers.base import DriverError
from nebula_xr.drivers.remote import CommandResult, run_local
from nebula_xr.file_writer import SynchronousFileWriter
from nebula_xr.hook_manager import HOST, VM, HookManager, parse_hook
from nebula_xr.host_failure import Fencing
from nebula_xr.information_manager import InformationManager
from nebula_xr.lifecycle_manager import LifeCycleManager
from nebula_xr.log import Log
from nebula_xr.model import History, HostState, LCMState, Reason, VMState
from nebula_xr.pools import HostPool, VirtualMachinePool, VirtualNetworkPool
from nebula_xr.template import Template
from nebula_xr.transfer_manager import TransferManager
from nebula_xr.virtual_machine_manager import VirtualMachineManager
from tests.fake.lifecycle import POLLING_INTERVAL, TIMEOUT, FakeHypervisor, FakeTransfers


def flushed(log: Log, path: Path) -> str:
    """A log file's text once ``log`` has written what it buffers (the daemon flushes at
    the end of each reactor turn; these tests drive a Clock instead)."""
    log.flush()
    return path.read_text()


class RecordingDatabase:
    """What the pools write, kept in order (the writer thread is not under test)."""

    def __init__(self) -> None:
        self.operations: list[Any] = []

    def write(self, *operations: Any, undo: Any = None) -> None:
        self.operations.extend(operations)


class RecordingRunner:
    """Stands in for run_local: records each argv, answers with ``exit_code``."""

    def __init__(self, exit_code: int = 0) -> None:
        self.calls: list[list[str]] = []
        self.exit_code = exit_code

    def __call__(self, _reactor: Any, argv: Any, **_kwargs: Any) -> defer.Deferred:
        self.calls.append(list(argv))
        return defer.succeed(CommandResult(tuple(argv), self.exit_code, "out\n", "err\n"))


class RecordingRemote:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    def run(self, host: str, argv: Any, **_kwargs: Any) -> defer.Deferred:
        self.calls.append((host, list(argv)))
        return defer.succeed(CommandResult(tuple(argv), 0, "", ""))


class World:
    """Real pools and managers on a Clock, as the daemon wires them."""

    def __init__(self, tmp_path: Path, hooks: str = "", threshold: int = 1) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_000_000)
        self.db = RecordingDatabase()
        self.tmp = tmp_path
        self.oned_log = tmp_path / "oned.log"
        self.log = Log(self.oned_log, 3, lambda vid: tmp_path / f"vm{vid}.log")
        self.vms = VirtualMachinePool(self.db, tmp_path / "var")  # type: ignore[arg-type]
        self.hosts = HostPool(self.db)  # type: ignore[arg-type]
        networks = VirtualNetworkPool(self.db, 1, 254)  # type: ignore[arg-type]
        files = SynchronousFileWriter()
        vmm = VirtualMachineManager(
            {"vmm": FakeHypervisor()}, {"vmm": TIMEOUT}, self.vms, self.clock, self.log, files
        )
        tm = TransferManager(
            {"tm": FakeTransfers()}, {"tm": TIMEOUT}, self.vms, self.clock, self.log, "front", files
        )
        states = VMStates(self.vms, networks, self.clock, self.log)
        self.lcm = LifeCycleManager(
            self.vms, self.hosts, vmm, tm, states, self.clock, self.log, POLLING_INTERVAL
        )
        self.dm = DispatchManager(
            self.vms, self.hosts, networks, states, self.lcm, tm, self.clock, self.log, "/vm"
        )
        config = parse_config(hooks + "\n", Layout.from_environment({}))
        self.runner = RecordingRunner()
        self.remote = RecordingRemote()
        self.hm = HookManager(
            config.hooks,
            reactor,
            self.clock,
            self.log,
            directory=tmp_path / "hooks",
            timeout=5,
            remote=self.remote,  # type: ignore[arg-type]
            vm_document=xmldoc.vm_document,
            host_document=xmldoc.host_document,
            run=self.runner,
        )
        self.hm.watch(self.vms, self.hosts)
        self.threshold = threshold

    def host(self, name: str = "node01") -> Any:
        return self.hosts.allocate(name, "im", "vmm", "tm", True, int(self.clock.seconds()))

    def running_vm(self, host: Any, name: str = "v") -> Any:
        """A VM RUNNING on ``host`` with its capacity charged, as after a deploy."""
        vm = self.vms.allocate(Template.parse(f"NAME = {name}\nCPU = 1\nMEMORY = 64\n"), 1)
        record = History(vm.oid, 0, host.name, "/vm", host.oid, "vmm", "tm", stime=1)
        self.vms.add_history(vm, record)
        host.shares.add(*vm.reservation())
        vm.deploy_id = f"one-{vm.oid}"
        self.vms.transition(vm, VMState.ACTIVE, LCMState.RUNNING)
        return vm


# -- configuration ------------------------------------------------------------------------


def test_hook_vectors_are_read_with_1_4_syntax_and_refused_when_unusable() -> None:
    config = parse_config(
        'VM_HOOK = [ name = "n", on = "running", command = "notify", '
        'arguments = "$VMID one-$VMID", remote = "YES", timeout = 3 ]\n'
        'HOST_HOOK = [ on = "ERROR", command = "nebula-xr-host-error", arguments = "$HID -r n" ]\n'
        "HOST_ERROR_THRESHOLD = 3\n"
        'HM_MAD = [ executable = "one_hm", ssh = "ssh -F /etc/x", timeout = 7 ]\n',
        Layout.from_environment({}),
    )
    vm_hook, host_hook = config.hooks
    assert (vm_hook.kind, vm_hook.on, vm_hook.arguments) == (VM, "RUNNING", ("$VMID", "one-$VMID"))
    assert vm_hook.remote and vm_hook.timeout == 3
    assert (host_hook.kind, host_hook.name, host_hook.remote) == (
        HOST,
        "nebula-xr-host-error",
        False,
    )
    assert host_hook.arguments == ("$HID", "-r", "n")
    assert config.host_error_threshold == 3
    assert (config.hook_ssh, config.hook_timeout) == (("ssh", "-F", "/etc/x"), 7.0)
    for bad in (
        'VM_HOOK = [ on = "RUNNING" ]',
        'VM_HOOK = [ on = "REBOOT", command = "x" ]',
        'HOST_HOOK = [ on = "RUNNING", command = "x" ]',
        'VM_HOOK = [ on = "DONE", command = "x", remote = "maybe" ]',
        "HOST_ERROR_THRESHOLD = 0",
        'VM_HOOK = "x"',
    ):
        with pytest.raises(ConfigError):
            parse_config(bad + "\n", Layout.from_environment({}))


# -- VM hooks -------------------------------------------------------------------------------


VM_HOOKS = """
VM_HOOK = [ name = "created", on = "CREATE", command = "created", arguments = "$VMID $NAME" ]
VM_HOOK = [ name = "up", on = "RUNNING", command = "up", arguments = '--mac=$NIC[MAC, NETWORK="pub"] $TEMPLATE' ]
VM_HOOK = [ name = "on-host", on = "RUNNING", command = "/sbin/fw", arguments = "one-$VMID", remote = "yes" ]
VM_HOOK = [ name = "gone", on = "DONE", command = "gone", arguments = "$VMID" ]
VM_HOOK = [ name = "broken", on = "FAILED", command = "broken", arguments = "$VMID" ]
"""


def test_vm_hooks_run_on_entering_their_state_on_the_next_turn(tmp_path: Path) -> None:
    w = World(tmp_path, VM_HOOKS)
    host = w.host()
    template = (
        "NAME = web\nCPU = 1\nMEMORY = 64\n"
        'NIC = [ NETWORK = "priv", MAC = "00:00:00:00:00:01" ]\n'
        'NIC = [ NETWORK = "pub", MAC = "00:00:00:00:00:02" ]\n'
    )
    vm = w.vms.allocate(Template.parse(template), 1)
    assert w.runner.calls == []  # not inside the state change
    w.clock.advance(0)
    assert w.runner.calls == [["created", "0", "web"]]

    vm.history.append(History(0, 0, host.name, "/vm", host.oid, "vmm", "tm"))
    w.vms.transition(vm, VMState.ACTIVE, LCMState.PROLOG)
    w.vms.transition(vm, lcm=LCMState.BOOT)
    w.clock.advance(0)
    assert len(w.runner.calls) == 1
    w.vms.transition(vm, lcm=LCMState.RUNNING)
    w.clock.advance(0)
    (up,) = w.runner.calls[1:]
    assert up[:2] == ["up", "--mac=00:00:00:00:00:02"]
    document = base64.b64decode(up[2]).decode()
    assert document == xmldoc.vm_document(vm) and document.startswith("<VM><ID>0</ID>")
    assert w.remote.calls == [("node01", ["/sbin/fw", "one-0"])]
    w.vms.transition(vm, lcm=LCMState.RUNNING)  # no change: nothing runs again
    w.clock.advance(0)
    assert len(w.runner.calls) == 2

    w.vms.transition(vm, VMState.DONE)
    w.clock.advance(0)
    assert w.runner.calls[-1] == ["gone", "0"]
    w.vms.transition(vm, VMState.PENDING)  # resubmitted: PENDING again is no creation
    w.vms.transition(vm, VMState.HOLD)
    w.vms.transition(vm, VMState.PENDING)
    w.clock.advance(0)
    assert [call[0] for call in w.runner.calls] == ["created", "up", "gone"]
    log = flushed(w.log, w.oned_log)
    assert "Hook up succeeded" in log and "Hook up stdout: out" in log
    assert "Hook gone succeeded" in flushed(w.log, tmp_path / "vm0.log")


def test_a_failing_hook_is_logged_and_the_vm_goes_on(tmp_path: Path) -> None:
    w = World(tmp_path, VM_HOOKS)
    w.runner.exit_code = 3
    vm = w.running_vm(w.host())
    w.vms.transition(vm, VMState.FAILED)
    w.clock.advance(0)
    assert ["broken", "0"] in w.runner.calls
    assert "Hook broken failed (exit status 3)" in flushed(w.log, w.oned_log)
    assert "Hook broken stderr: err" in flushed(w.log, tmp_path / "vm0.log")
    assert vm.state is VMState.FAILED and w.vms.get(vm.oid) is vm


def test_a_remote_hook_of_a_vm_without_host_is_skipped(tmp_path: Path) -> None:
    w = World(tmp_path, 'VM_HOOK = [ on = "CREATE", command = "x", remote = "yes" ]')
    w.vms.allocate(Template.parse("NAME = a\n"), 0)
    w.clock.advance(0)
    assert w.remote.calls == [] and w.runner.calls == []
    assert "skipped: the VM has no host" in flushed(w.log, tmp_path / "vm0.log")


HOSTILE_TEXT = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40
)


@settings(max_examples=200, deadline=None)
@given(name=HOSTILE_TEXT, mac=HOSTILE_TEXT)
def test_substituted_values_stay_single_arguments(
    tmp_path_factory: Any, name: str, mac: str
) -> None:
    w = World(
        tmp_path_factory.mktemp("w"),
        'VM_HOOK = [ on = "CREATE", command = "c", arguments = "x$NAME-y $NIC[MAC] $VMID" ]',
    )
    template = Template(replace=True)
    template.set("NAME", name)
    template.add("NIC", {"MAC": mac})
    w.vms.allocate(template, 0)
    w.clock.advance(0)
    assert w.runner.calls == [["c", f"x{name}-y", mac, "0"]]


@pytest_twisted.inlineCallbacks
def test_hostile_values_reach_a_real_hook_process_unchanged(tmp_path: Path) -> None:
    """A real process, found in the hooks directory: what it receives in argv is the
    VM's name, byte for byte, and nothing it holds was run by a shell."""
    hostile = "a; touch CANARY $(touch CANARY) `touch CANARY` 'q\" \\ * ~ \n|x"
    w = World(tmp_path, 'VM_HOOK = [ on = "CREATE", command = "record", arguments = "$NAME" ]')
    w.hm.run_local = run_local
    (tmp_path / "hooks").mkdir()
    out = tmp_path / "argv.json"
    script = tmp_path / "hooks" / "record"
    script.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"open({str(out)!r}, 'w').write(json.dumps(sys.argv[1:]))\n"
    )
    script.chmod(0o755)
    template = Template(replace=True)
    template.set("NAME", hostile)
    w.vms.allocate(template, 0)
    w.clock.advance(0)
    yield wait_until(lambda: "Hook record succeeded" in flushed(w.log, w.oned_log))
    assert json.loads(out.read_text()) == [hostile]
    assert not list(tmp_path.glob("**/CANARY")) and not Path("CANARY").exists()


@defer.inlineCallbacks
def wait_until(condition: Any, timeout: float = 10.0) -> Any:
    """Let the real reactor run until ``condition()`` holds; fail after ``timeout``."""
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        yield task.deferLater(reactor, 0.02, lambda: None)
    raise AssertionError("condition not reached")


@pytest_twisted.inlineCallbacks
def test_a_hanging_hook_is_killed_at_its_timeout(tmp_path: Path) -> None:
    hook = parse_hook(VM, {"ON": "DONE", "COMMAND": "sleep", "ARGUMENTS": "30", "TIMEOUT": "0.5"})
    log = Log(tmp_path / "oned.log", 3, lambda vid: tmp_path / f"vm{vid}.log")
    hm = HookManager(
        [hook],
        reactor,
        reactor,
        log,
        directory=tmp_path,
        timeout=300,
        vm_document=xmldoc.vm_document,
        host_document=xmldoc.host_document,
    )
    result = yield hm.run(hook, ["sleep", "30"], None, 4)
    assert result is None
    assert "Hook sleep could not run: Timeout: sleep did not finish in 0.5 s" in flushed(
        log, tmp_path / "vm4.log"
    )


# -- host hooks and the error threshold ------------------------------------------------------


class FlakyMonitor:
    """An IM driver whose answers the test decides: True answers, a string fails, "hang"
    waits for the test to fire ``hung``."""

    def __init__(self) -> None:
        self.outcomes: list[bool | str] = []
        self.hung: defer.Deferred = defer.Deferred()

    def monitor(self, _hid: int, host: str) -> defer.Deferred:
        outcome = self.outcomes.pop(0)
        if outcome == "hang":
            self.hung = defer.Deferred()
            return self.hung
        if outcome is True:
            return defer.succeed({"HOSTNAME": host, "TOTALCPU": "200", "TOTALMEMORY": "1024"})
        return defer.fail(DriverError(outcome))


HOST_HOOKS = """
HOST_HOOK = [ name = "err", on = "ERROR", command = "err", arguments = "$HID $NAME" ]
HOST_HOOK = [ name = "new", on = "CREATE", command = "new", arguments = "$HID" ]
HOST_HOOK = [ name = "off", on = "DISABLE", command = "off", arguments = "$HID", remote = "yes" ]
"""


def test_a_host_is_in_error_after_the_threshold_and_its_hook_runs_once(tmp_path: Path) -> None:
    w = World(tmp_path, HOST_HOOKS)
    driver = FlakyMonitor()
    im = InformationManager(
        {"im": driver}, {"im": 5}, w.hosts, w.clock, w.log, 10, error_threshold=3
    )
    host = w.host()
    driver.outcomes.append(True)
    im.host_added(host)
    w.clock.advance(0)
    assert w.runner.calls == [["new", "0"]]
    assert host.state is HostState.MONITORED  # a new host is monitored at once

    def monitor(outcome: bool | str) -> HostState:
        driver.outcomes.append(outcome)
        w.clock.advance(10)  # the monitoring cadence: one HOST_MONITORING_INTERVAL later
        w.clock.advance(0)  # the driver call
        w.clock.advance(0)  # the hooks
        return host.state

    assert monitor(True) is HostState.MONITORED
    assert monitor("ssh: connect to host node01 port 22: Connection refused") is (
        HostState.MONITORED
    )
    assert "Connection refused" in host.attributes["ERROR"]
    assert monitor("Timeout") is HostState.MONITORED
    assert w.runner.calls == [["new", "0"]]
    assert monitor("no route to host") is HostState.ERROR
    assert host.attributes["ERROR"].endswith(": no route to host")
    assert "ERROR=" in host.info_text() and "<ERROR>" in xmldoc.host_document(host)
    assert w.runner.calls[1:] == [["err", "0", "node01"]]
    driver.outcomes.append("hang")
    w.clock.advance(10)
    assert host.state is HostState.MONITORING and im.in_error(host)  # for the fencing
    driver.hung.errback(DriverError("still down"))
    w.clock.advance(0)
    assert host.state is HostState.ERROR  # MONITORING → ERROR again: no new run
    assert w.runner.calls[1:] == [["err", "0", "node01"]]

    assert monitor(True) is HostState.MONITORED
    assert "ERROR" not in host.attributes
    assert Delete.__name__ in {type(op).__name__ for op in w.db.operations}
    assert monitor("down") is HostState.MONITORED  # the count started again
    assert not im.in_error(host)
    w.hosts.set_state(host, HostState.DISABLED)
    w.clock.advance(0)
    assert w.remote.calls == [("node01", ["off", "0"])]


def test_threshold_one_keeps_1_2s_first_failure_error(tmp_path: Path) -> None:
    w = World(tmp_path, HOST_HOOKS)
    driver = FlakyMonitor()
    im = InformationManager({"im": driver}, {"im": 5}, w.hosts, w.clock, w.log, 10)
    host = w.host()
    driver.outcomes.append("refused")
    im.host_added(host)
    im.monitor_due()
    w.clock.advance(0)
    assert host.state is HostState.ERROR


# -- fenced resubmit -----------------------------------------------------------------------


class FakeVMM:
    """cancel and poll answers chosen by the test; ``hang`` never answers."""

    def __init__(self, cancel: str = "ok", poll: str = "fail") -> None:
        self.cancel_outcome = cancel
        self.poll_outcome = poll
        self.calls: list[tuple[str, str, str]] = []

    def _answer(self, outcome: str, value: object) -> defer.Deferred:
        if outcome == "hang":
            return defer.Deferred()
        if outcome == "fail":
            return defer.fail(DriverError("ssh: connect to host node01 port 22: No route"))
        return defer.succeed(value)

    def cancel(self, action: Any) -> defer.Deferred:
        self.calls.append(("cancel", action.host, action.deploy_id))
        return self._answer(self.cancel_outcome, None)

    def poll(self, action: Any) -> defer.Deferred:
        self.calls.append(("poll", action.host, action.deploy_id))
        return self._answer(self.poll_outcome, {"STATE": self.poll_outcome[:1]})


def fencing(w: World, vmm: FakeVMM) -> Fencing:
    return Fencing(
        w.vms,
        w.hosts,
        w.dm,
        {"vmm": vmm},
        {"vmm": 4},
        w.clock,
        w.log,
        w.vms.vm_dir,
        lambda host: host.state is HostState.ERROR,
    )


def outcome(deferred: defer.Deferred) -> Any:
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "not settled"
    return results[0]


def test_resubmit_destroys_the_domain_first_then_the_vm_is_pending(tmp_path: Path) -> None:
    w = World(tmp_path)
    host = w.host()
    vm = w.running_vm(host)
    vmm = FakeVMM(cancel="ok")
    result = outcome(fencing(w, vmm).resubmit(vm.oid))
    assert result.ok
    assert vmm.calls == [("cancel", "node01", "one-0")]
    assert (vm.state, vm.lcm_state) == (VMState.PENDING, LCMState.LCM_INIT)
    assert vm.current.reason == Reason.USER and vm.current.etime == vm.current.retime > 0
    assert (host.shares.cpu_usage, host.shares.running_vms) == (0, 0)


def test_an_unreachable_host_not_in_error_refuses_the_resubmit(tmp_path: Path) -> None:
    w = World(tmp_path)
    host = w.host()
    vm = w.running_vm(host)
    result = outcome(fencing(w, FakeVMM(cancel="fail", poll="fail")).resubmit(vm.oid))
    assert not result.ok and "the host is not in ERROR" in result.message
    assert (vm.state, vm.lcm_state) == (VMState.ACTIVE, LCMState.RUNNING)
    assert host.shares.running_vms == 1


def test_a_poll_that_finds_no_domain_settles_a_failed_destroy(tmp_path: Path) -> None:
    w = World(tmp_path)
    vm = w.running_vm(w.host())
    f = fencing(w, FakeVMM(cancel="fail", poll="d"))
    assert outcome(f.resubmit(vm.oid)).ok and vm.state is VMState.PENDING
    assert f.stale == {}


def test_a_host_in_error_is_fenced_when_it_answers_again(tmp_path: Path) -> None:
    w = World(tmp_path)
    host = w.host()
    vm = w.running_vm(host)
    w.hosts.set_state(host, HostState.ERROR)
    vmm = FakeVMM(cancel="hang", poll="hang")
    f = fencing(w, vmm)
    pending = f.resubmit(vm.oid)
    w.clock.advance(3.9)
    assert vm.state is VMState.ACTIVE  # nothing decided while the destroy may succeed
    w.clock.advance(0.1)  # the destroy times out, then the poll
    w.clock.advance(4)
    result = outcome(pending)
    assert result.ok and vm.state is VMState.PENDING
    assert vm.current.reason == Reason.ERROR
    assert "host error" in flushed(w.log, tmp_path / "vm0.log")
    assert set(f.stale) == {host.oid}

    vmm.cancel_outcome = "fail"
    vmm.poll_outcome = "a"  # back, still running the old domain
    f.host_monitored(host)
    assert set(f.stale) == {host.oid}
    assert "still not destroyed" in flushed(w.log, tmp_path / "vm0.log")
    vmm.cancel_outcome = "ok"
    f.host_monitored(host)
    assert f.stale == {}
    assert vmm.calls[-1] == ("cancel", "node01", "one-0")
    assert "Stale domain one-0 on node01 destroyed" in flushed(w.log, tmp_path / "vm0.log")


def test_resubmit_states(tmp_path: Path) -> None:
    w = World(tmp_path)
    f = fencing(w, FakeVMM())
    vm = w.running_vm(w.host())
    w.vms.transition(vm, lcm=LCMState.SAVE_MIGRATE)
    assert outcome(f.resubmit(vm.oid)).message == "Wrong state to perform action"
    w.vms.transition(vm, VMState.SUSPENDED)
    assert not outcome(f.resubmit(vm.oid)).ok
    w.vms.transition(vm, VMState.FAILED)
    assert outcome(f.resubmit(vm.oid)).ok and vm.state is VMState.PENDING
    assert outcome(f.resubmit(vm.oid)).ok and vm.state is VMState.PENDING
    w.vms.transition(vm, VMState.DONE)
    assert not outcome(f.resubmit(vm.oid)).ok
    assert not outcome(f.resubmit(99)).ok


def test_a_hook_that_cannot_be_prepared_never_breaks_the_state_change(tmp_path: Path) -> None:
    w = World(tmp_path, 'VM_HOOK = [ on = "RUNNING", command = "x", arguments = "$TEMPLATE" ]')

    def broken(_vm: Any) -> str:
        raise RuntimeError("no document")

    w.hm.vm_document = broken
    vm = w.running_vm(w.host())  # the transition to RUNNING fires the hook
    w.clock.advance(0)
    assert (vm.state, vm.lcm_state) == (VMState.ACTIVE, LCMState.RUNNING)
    assert w.runner.calls == []
    assert "Hook x not run: RuntimeError('no document')" in flushed(w.log, tmp_path / "vm0.log")
