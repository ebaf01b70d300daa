"""The web console's serial console on the namespace cluster: a QEMU guest booted by the
Xen driver, its console opened in chromium, the guest's own output seen in the page.

The console command is the driver's (``ssh -t node01 -- sudo xm console one-0``, with the
cluster's ssh configuration as ``$ONE_SSH``); the fake toolstack's ``xm console`` prints
what the guest's serial port printed.
"""

from __future__ import annotations

from tests.oned import wait_for
from tests.test_web_browser import (  # noqa: F401 (the fixtures)
    TIMEOUT_MS,
    artefacts_fixture,
    browser_fixture,
    shoot,
    sign_in,
)
from tests.test_xen_cluster import RUNNING, add_cluster_hosts, start_daemon, ticks
from tests.web_support import free_port

GUEST = "NAME = guest\nCPU = 1\nMEMORY = 128\nOS = [ kernel = /boot/vmlinuz ]\n"


def test_the_console_of_a_qemu_guest_in_the_page(
    qemu_cluster,
    tmp_path,
    browser,
    artefacts,
    monkeypatch,
) -> None:
    c = qemu_cluster
    monkeypatch.setenv("ONE_SSH", f"ssh -F {c.ssh_config}")
    port = free_port()
    one = start_daemon(
        tmp_path, c, str(c.shared_dir / "one"), timeout=60, extra=f"WEB = [ port = {port} ]"
    )
    base = f"http://127.0.0.1:{port}"
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.set_default_timeout(TIMEOUT_MS * 3)
    try:
        add_cluster_hosts(one, "tm_nfs")
        assert one.call("one.vmallocate", GUEST) == [True, 0]
        assert one.call("one.vmdeploy", 0, 0) == [True]
        wait_for(lambda: one.vm_state(0) == RUNNING, timeout=90, what="RUNNING")
        wait_for(lambda: len(ticks(c.console_log("node01", "one-0"))) >= 3, timeout=90, what="boot")
        sign_in(page, base)
        page.wait_for_selector("body[data-ready=yes]")
        page.goto(base + "/#/vm/0")
        page.wait_for_selector("#vm-state:text('RUNNING')")
        seen_before = ticks(c.console_log("node01", "one-0"))[-1]
        page.click("#console-open")
        # The terminal keeps the last 24 rows: the guest's latest ticks.
        page.wait_for_selector(f"#console-screen:has-text('tick {seen_before}')")
        screen = page.inner_text("#console-screen").replace("\xa0", " ")
        shown = ticks("\n".join(line.strip() for line in screen.splitlines()))
        assert shown and shown[-1] >= seen_before, (shown, page.inner_text("#console-message"))
        logged = ticks(c.console_log("node01", "one-0"))
        assert set(shown) <= set(logged)
        shoot(page, artefacts, "qemu-console")
    finally:
        page.close()
        one.stop()
