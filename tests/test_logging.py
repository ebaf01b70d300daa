"""oned.log and vm.log: 1.2's line format, files kept open, reopened on SIGHUP (logrotate)."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest

from tests.oned import OneDaemon, wait_for, write_conf
from tests.test_tutorial import TUTORIAL, add_hosts, wait_state

#: database.md / 1.2's Log.cc: ``<ctime> [<module>][<letter>]: <message>``.
LINE = re.compile(r"^\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4} \[[A-Za-z]+\]\[[EWID]\]: .*$")


@pytest.fixture
def one(tmp_path: Path):
    write_conf(tmp_path)
    daemon = OneDaemon(tmp_path).start()
    yield daemon
    daemon.stop()


def _open_files(one: OneDaemon) -> set[str]:
    assert one.process is not None
    fd_dir = Path(f"/proc/{one.process.pid}/fd")
    names = set()
    for fd in fd_dir.iterdir():
        try:
            names.add(os.readlink(fd))
        except OSError:
            pass  # closed meanwhile
    return names


def test_lines_keep_the_1_2_format_and_files_stay_open(one: OneDaemon, tmp_path: Path) -> None:
    add_hosts(one, "node01")
    assert one.call("one.vmallocate", TUTORIAL) == [True, 0]
    assert one.call("one.vmdeploy", 0, 0) == [True]
    wait_state(one, 0, 3, 3)
    var = tmp_path / "var"
    # Lines below ERROR reach oned.log within log.FLUSH_DELAY.
    wait_for(lambda: "POST /RPC2" in (var / "oned.log").read_text(), what="oned.log flushed")
    for path in (var / "oned.log", var / "0" / "vm.log"):
        lines = path.read_text().splitlines()
        assert lines
        assert [line for line in lines if not LINE.match(line)] == []
        # Opened once and kept open: not opened and closed for each line.
        assert str(path) in _open_files(one)
    assert "[DiM][I]: New VM state is PENDING" in (var / "0" / "vm.log").read_text()


def test_sighup_reopens_the_logs_after_rotation(one: OneDaemon, tmp_path: Path) -> None:
    var = tmp_path / "var"
    add_hosts(one, "node01")
    assert one.call("one.vmallocate", TUTORIAL) == [True, 0]
    assert one.call("one.vmdeploy", 0, 0) == [True]
    wait_state(one, 0, 3, 3)
    (var / "oned.log").rename(var / "oned.log.1")
    (var / "0" / "vm.log").rename(var / "0" / "vm.log.1")
    assert one.process is not None
    one.process.send_signal(signal.SIGHUP)
    wait_for(lambda: (var / "oned.log").exists(), what="oned.log reopened")
    assert one.process.poll() is None  # SIGHUP does not stop the daemon

    assert one.call("one.hostallocate", "after-rotation", "im_xen", "vmm_xen", "tm_nfs", True)[0]
    assert one.call("one.vmaction", "suspend", 0) == [True]
    wait_state(one, 0, 5)
    wait_for(lambda: "after-rotation" in (var / "oned.log").read_text(), what="new oned.log")
    assert "after-rotation" not in (var / "oned.log.1").read_text()
    assert "SUSPENDED" in (var / "0" / "vm.log").read_text()
    assert "SUSPENDED" not in (var / "0" / "vm.log.1").read_text()
    assert str(var / "oned.log.1") not in _open_files(one)


def test_oned_log_is_flushed_within_the_delay_vm_logs_at_the_turns_end(tmp_path: Path) -> None:
    from twisted.internet.task import Clock

    from nebula_xr.log import DEBUG, FLUSH_DELAY, Log

    clock = Clock()
    (tmp_path / "7").mkdir()
    log = Log(
        tmp_path / "oned.log", DEBUG, lambda vid: tmp_path / str(vid) / "vm.log", reactor=clock
    )
    oned_log, vm_log = tmp_path / "oned.log", tmp_path / "7" / "vm.log"
    log.debug("ReM", "an access line")
    log.info("LCM", "a state change")
    log.vm(7, "LCM", 2, "New VM state is RUNNING")
    assert "an access line" not in oned_log.read_text()
    assert "RUNNING" not in vm_log.read_text()
    clock.advance(0)  # the end of the reactor turn
    assert "RUNNING" in vm_log.read_text()
    assert "an access line" not in oned_log.read_text()
    clock.advance(FLUSH_DELAY)
    assert "a state change" in oned_log.read_text()

    log.debug("ReM", "waits")
    log.error("VMM", "an error goes at once, with what waited before it")
    text = oned_log.read_text()  # the clock has not moved
    assert text.index("[ReM][D]: waits") < text.index("[VMM][E]: an error goes at once")

    log.debug("ReM", "written at close")
    log.close()
    assert "written at close" in oned_log.read_text()
    clock.advance(FLUSH_DELAY)  # the flush that was pending finds nothing to do
