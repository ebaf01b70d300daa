"""The web console in a real browser: Debian's chromium driven by Playwright.

The daemon is the real one with the dummy drivers, plots drawn from its monitoring
history. Screenshots of every page go to a directory printed at the start
(``$NEBULA_XR_WEB_ARTEFACTS``, else a temporary one); with ``NEBULA_XR_DOC_IMAGES=1`` the
dashboard and VM page are also written to docs/img for the README.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.oned import ADMIN_PASSWORD, wait_for
from tests.web_support import start_web_daemon

CHROMIUM = "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason="chromium is installed by tests/cluster/install.sh"
)
DOCS = Path(__file__).parent.parent / "docs" / "img"
#: Generous: the measurement is reported; the bound only catches a pathological page.
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module", name="artefacts")
def artefacts_fixture(tmp_path_factory) -> Path:
    wanted = os.environ.get("NEBULA_XR_WEB_ARTEFACTS")
    directory = Path(wanted) if wanted else tmp_path_factory.mktemp("web-screenshots")
    directory.mkdir(parents=True, exist_ok=True)
    print(f"\nweb console screenshots in {directory}")
    return directory


@pytest.fixture(scope="module", name="browser")
def browser_fixture():
    with playwright.sync_playwright() as driver:
        chromium = driver.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def console(tmp_path, browser):
    daemon, base = start_web_daemon(tmp_path)
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield daemon, base, page
    context.close()
    assert daemon.stop() == 0
    assert errors == []  # no script error on any page


def sign_in(page, base: str, password: str = ADMIN_PASSWORD) -> None:
    page.goto(base + "/")
    assert page.url == base + "/signin"
    page.fill("#user", "oneadmin")
    page.fill("#password", password)
    page.click("#signin-button")


def shoot(page, artefacts: Path, name: str, *, full_page: bool = True) -> None:
    page.screenshot(path=str(artefacts / f"{name}.png"), full_page=full_page)
    if os.environ.get("NEBULA_XR_DOC_IMAGES") and name in ("dashboard", "vm"):
        DOCS.mkdir(parents=True, exist_ok=True)
        shutil.copy(artefacts / f"{name}.png", DOCS / f"web-{name}.png")


def row_state(page, vid: int) -> str:
    return page.get_attribute(f'tr[data-vm="{vid}"]', "data-state") or ""


def wait_row(page, vid: int, words: str) -> None:
    page.wait_for_selector(f'tr[data-vm="{vid}"][data-state="{words}"]')


def pick(page, action: str, vid: int, host: str) -> None:
    page.click(f'tr[data-vm="{vid}"] button[data-action="{action}"]')
    page.wait_for_selector("#picker[open]")
    page.click(f'#picker button:has-text("{host} (")')


def plot_points(page, series: str) -> int:
    """Points of a plot after a fresh load of the page (samples are read on load)."""
    page.reload()
    page.wait_for_selector("#vm-plots")
    return page.evaluate(
        f"Number(document.querySelector('polyline[data-series={series}]')?.dataset.points || 0)"
    )


TEXT_TEMPLATE = """NAME = from-text
CPU = 0.5
MEMORY = 64
REQUIREMENTS = "HOSTNAME = node01"
DISK = [ source = "/images/disk.img", target = "sda", readonly = "no" ]"""


def test_the_tutorial_in_the_browser(console, artefacts) -> None:
    daemon, base, page = console
    sign_in(page, base, password="wrong")
    page.wait_for_selector("#signin-error:has-text('Wrong user name or password')")
    shoot(page, artefacts, "signin-refused")
    sign_in(page, base)
    page.wait_for_url(base + "/")
    page.wait_for_selector("body[data-ready=yes]")
    # Everything from here on happens in this one page load: the marker would be lost by
    # any reload, so the states seen below came by server-sent events.
    page.evaluate("window.__sameLoad = true")

    page.click("a[data-nav=hosts]")
    for name in ("node01", "node02"):
        page.fill("#host-name", name)
        page.click("#add-host button[type=submit]")
        page.wait_for_selector("#add-host-message:has-text('added')")
    page.wait_for_selector('#hosts tr[data-host="1"] .state:text("MONITORED")')
    page.wait_for_selector('#hosts tr[data-host="0"] .state:text("MONITORED")')
    shoot(page, artefacts, "hosts")

    page.click("a[data-nav=vms]")
    page.fill("#form-name", "from-form")
    page.fill("#form-memory", "96")
    page.click("#create-form button[type=submit]")
    page.wait_for_selector("#create-form-message:text('VM 0 created')")
    page.fill("#template", TEXT_TEMPLATE)
    page.click("#create-text button[type=submit]")
    page.wait_for_selector("#create-text-message:text('VM 1 created')")
    # A malformed template: the daemon's own message, where the template was typed.
    page.fill("#template", "NAME = [ broken")
    page.click("#create-text button[type=submit]")
    expected = daemon.call14("one.vm.allocate", "NAME = [ broken")[1]
    page.wait_for_selector("#create-text-message.error")
    assert page.inner_text("#create-text-message") == expected
    assert expected.startswith("Error parsing VM template: line 1")
    wait_row(page, 0, "PENDING")
    assert page.text_content('tr[data-vm="1"] td:nth-child(2)') == "from-text"

    # The host picker says which hosts meet the VM's REQUIREMENTS.
    page.click('tr[data-vm="1"] button[data-action="deploy"]')
    page.wait_for_selector("#picker[open]")
    assert page.inner_text("#picker-requirements") == "REQUIREMENTS = HOSTNAME = node01"
    assert page.get_attribute('#picker button[data-host="0"]', "class") == "match"
    assert page.get_attribute('#picker button[data-host="1"]', "class") == "nomatch"
    page.click("#picker button[value=cancel]")
    page.wait_for_selector("#picker", state="hidden")
    # Deploy with the host picker; the row goes through PROLOG and BOOT to RUNNING.
    page.evaluate(
        """() => { window.__seen = [];
        new MutationObserver(() => { const r = document.querySelector('tr[data-vm="0"]');
          if (r && window.__seen.at(-1) !== r.dataset.state) window.__seen.push(r.dataset.state); })
        .observe(document.getElementById('view'), {subtree: true, childList: true}); }"""
    )
    pick(page, "deploy", 0, "node02")
    wait_row(page, 0, "RUNNING")
    assert page.text_content('tr[data-vm="0"] td:nth-child(6)') == "node02"
    assert page.text_content('tr[data-vm="0"] td:nth-child(4)') == "one-0"
    assert page.evaluate("window.__sameLoad") is True
    events = page.evaluate("nebula.store.events.map(e => e.text)")
    assert "VM 0 (from-form) is PROLOG" in events and "VM 0 (from-form) is BOOT" in events
    # Only the actions valid when RUNNING are enabled.
    enabled = page.eval_on_selector_all(
        'tr[data-vm="0"] button:not([disabled])', "buttons => buttons.map(b => b.dataset.action)"
    )
    assert enabled == ["migrate", "livemigrate", "suspend", "stop", "shutdown", "cancel", "delete"]
    # A refused action (the button forced on): the daemon's refusal, next to the button.
    page.eval_on_selector('tr[data-vm="0"] button[data-action="resume"]', "b => b.disabled = false")
    page.click('tr[data-vm="0"] button[data-action="resume"]')
    page.wait_for_selector('tr[data-vm="0"] .message.error')
    assert page.text_content('tr[data-vm="0"] .message') == (
        "Wrong state to perform action: VM 0 is ACTIVE (RUNNING)"
    )

    pick(page, "migrate", 0, "node01")
    page.wait_for_selector('tr[data-vm="0"][data-state="RUNNING"] td:nth-child(6):text("node01")')
    pick(page, "livemigrate", 0, "node02")
    page.wait_for_selector('tr[data-vm="0"][data-state="RUNNING"] td:nth-child(6):text("node02")')
    seen = page.evaluate("window.__seen")
    assert "SAVE_MIGRATE" in seen and "MIGRATE" in seen, seen

    page.click('tr[data-vm="0"] button[data-action="suspend"]')
    wait_row(page, 0, "SUSPENDED")
    page.click('tr[data-vm="0"] button[data-action="resume"]')
    wait_row(page, 0, "RUNNING")
    assert page.evaluate("window.__sameLoad") is True
    shoot(page, artefacts, "vms")

    # The VM page: template, history, log, plots with points, and the console's refusal
    # (the dummy driver has no console).
    page.click('tr[data-vm="0"] a')
    page.wait_for_selector("#vm-state:text('RUNNING')")
    page.wait_for_selector("#vm-history tbody tr:nth-child(3)")
    assert page.inner_text("#vm-template") == "NAME = from-form\nCPU = 1\nMEMORY = 96\n"
    wait_for(lambda: plot_points(page, "cpu") >= 2, timeout=20, what="CPU samples of VM 0")
    page.wait_for_selector("#vm-log:has-text('New VM state is RUNNING')")
    page.click("#console-open")
    refusal = daemon.call14("nebula_xr.vm.console", 0)[1]
    page.wait_for_selector(f"#console-message:text({refusal!r})")
    shoot(page, artefacts, "vm")

    page.goto(base + "/#/host/1")
    # A flat line has no height: "attached", not "visible".
    page.wait_for_selector(
        'figure[data-plot="CPU"] polyline[data-series="used_cpu"]', state="attached"
    )
    assert int(page.get_attribute('polyline[data-series="used_cpu"]', "data-points")) >= 2
    shoot(page, artefacts, "host")

    page.click("a[data-nav=dashboard]")
    page.wait_for_selector("#card-vms")
    shoot(page, artefacts, "dashboard")

    # Delete: the row leaves the list by itself.
    page.click("a[data-nav=vms]")
    page.click('tr[data-vm="1"] button[data-action="delete"]')
    page.wait_for_selector('tr[data-vm="1"]', state="detached")
    page.click('tr[data-vm="0"] button[data-action="delete"]')
    page.wait_for_selector('tr[data-vm="0"]', state="detached")
    assert daemon.vm_state(0)[0] == 6  # DONE


def test_networks_and_their_leases(console, artefacts) -> None:
    daemon, base, page = console
    sign_in(page, base)
    page.wait_for_selector("body[data-ready=yes]")
    page.click("a[data-nav=networks]")
    page.fill("#network-name", "public")
    page.fill("#network-address", "10.9.0.0")
    page.fill("#network-size", "10")
    page.click("#create-network button[type=submit]")
    page.wait_for_selector("#create-network-message:text('Network 0 created')")
    page.fill("#network-name", "fixed")
    page.select_option("#network-type", "FIXED")
    page.fill("#network-leases", "192.168.7.5\n192.168.7.6")
    page.click("#create-network button[type=submit]")
    page.wait_for_selector("#create-network-message:text('Network 1 created')")
    # A bad address: the daemon's own message, under the form.
    page.fill("#network-name", "bad")
    page.select_option("#network-type", "RANGED")
    page.fill("#network-address", "10.9.0")
    page.click("#create-network button[type=submit]")
    page.wait_for_selector("#create-network-message.error")
    sent = 'NAME = "bad"\nTYPE = RANGED\nBRIDGE = "br0"\nNETWORK_ADDRESS = "10.9.0"\nNETWORK_SIZE = "10"'
    refusal = daemon.call14("one.vn.allocate", sent)
    assert refusal[0] is False
    assert page.inner_text("#create-network-message") == refusal[1]
    page.click("a[data-nav=vms]")
    page.fill("#form-name", "leaser")
    page.select_option("#form-network", "fixed")
    page.click("#create-form button[type=submit]")
    page.wait_for_selector("#create-form-message:text('VM 0 created')")
    page.goto(base + "/#/network/1")
    page.wait_for_selector("#leases a:text('0 leaser')")
    assert page.inner_text("#leases tbody tr:first-child td:first-child") == "192.168.7.5"
    shoot(page, artefacts, "network")
    page.click("a[data-nav=networks]")
    page.click('tr[data-network="0"] button[data-action="delete"]')
    page.wait_for_selector('tr[data-network="0"]', state="detached")
    assert daemon.call14("one.vn.info", 0)[0] is False


def test_a_thousand_vms_render_and_update(console, artefacts) -> None:
    daemon, base, page = console
    calls = [
        {"methodName": "one.vm.allocate", "params": [daemon.session, f"NAME = vm{n}\nMEMORY = 64"]}
        for n in range(1000)
    ]
    with daemon.proxy() as proxy:
        for start in range(0, 1000, 100):
            answers = proxy.system.multicall(calls[start : start + 100])
            assert all(answer[0][0] for answer in answers)
    sign_in(page, base)
    page.wait_for_selector("body[data-ready=yes]")
    page.goto(base + "/#/vms")
    page.wait_for_selector('tr[data-vm="999"]')
    render_ms = page.evaluate(
        """() => { const start = performance.now(); nebula.route(true);
        document.body.offsetHeight; return performance.now() - start; }"""
    )
    assert page.locator("#vms tbody tr").count() == 1000
    # An update from the daemon, end to end: the call, the event, the row replaced.
    started = time.monotonic()
    assert daemon.call14("one.vm.action", "hold", 500) == [True]
    wait_row(page, 500, "HOLD")
    end_to_end_ms = (time.monotonic() - started) * 1000
    apply_ms = page.evaluate(
        """() => { const vm = {...nebula.store.vms.get(500), words: "PENDING", state: "PENDING"};
        const start = performance.now(); nebula.applyVM(vm); document.body.offsetHeight;
        return performance.now() - start; }"""
    )
    shoot(page, artefacts, "vms-1000", full_page=False)
    print(
        f"\n1000 VMs: list rendered in {render_ms:.0f} ms, an update applied in "
        f"{apply_ms:.1f} ms, call-to-row end to end {end_to_end_ms:.0f} ms"
    )
    assert render_ms < 10_000 and apply_ms < 1_000


def test_the_serial_console_in_the_page_takes_typing(tmp_path, browser, artefacts, monkeypatch):
    """The console WebSocket runs what ``onevm console`` runs (``$ONE_SSH -t host -- xm
    console domain``, here a stand-in ssh) on a pseudo-terminal, both ways."""
    monkeypatch.setenv("ONE_SSH", str(Path(__file__).parent / "fake" / "console_ssh"))
    daemon, base = start_web_daemon(tmp_path, vmm_extra=', console = "xm"')
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.set_default_timeout(TIMEOUT_MS)
    try:
        assert daemon.call14("one.host.allocate", "node01", "im_xen", "vmm_xen", "tm_nfs")[0]
        assert daemon.call14("one.vm.allocate", "NAME = guest\nMEMORY = 64\nCPU = 1") == [True, 0]
        wait_for(lambda: daemon.call14("one.vm.deploy", 0, 0) == [True], what="deploy")
        sign_in(page, base)
        page.wait_for_selector("body[data-ready=yes]")
        page.goto(base + "/#/vm/0")
        page.wait_for_selector("#vm-state:text('RUNNING')")
        page.click("#console-open")
        page.wait_for_selector("#console-message:text(\"Escape character is '^]'\")")
        page.wait_for_selector(
            "#console-screen:has-text('console of one-0 on node01 (xm console)')"
        )
        page.wait_for_selector("#console-screen:has-text('guest login:')")
        page.click("#console-screen")
        page.keyboard.type("hello web")
        page.keyboard.press("Enter")
        page.wait_for_selector("#console-screen:has-text('guest read: hello web')")
        shoot(page, artefacts, "console")
    finally:
        page.close()
        assert daemon.stop() == 0


def test_a_failing_host_shows_the_daemon_s_message_in_the_list(tmp_path, browser) -> None:
    daemon, base = start_web_daemon(tmp_path, im_extra=', fail_hosts = "broken*"')
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    try:
        assert daemon.call14("one.host.allocate", "broken1", "im_xen", "vmm_xen", "tm_nfs")[0]
        sign_in(page, base)
        page.wait_for_selector("body[data-ready=yes]")
        page.click("a[data-nav=hosts]")
        page.wait_for_selector('#hosts tr[data-host="0"] .host-error')
        ok, document = daemon.call14("one.host.info", 0)
        reported = document.split("<ERROR>")[1].split("</ERROR>")[0]
        assert page.text_content('#hosts tr[data-host="0"] .host-error') == reported
    finally:
        page.close()
        assert daemon.stop() == 0


def test_names_from_clients_are_shown_as_text(console) -> None:
    daemon, base, page = console
    hostile = "<img src=x id=injected>&amp;'"
    assert daemon.call14("one.vm.allocate", f'NAME = "{hostile}"\nMEMORY = 64') == [True, 0]
    assert daemon.call14("one.host.allocate", "<b>h</b>", "im_xen", "vmm_xen", "tm_nfs")[0]
    sign_in(page, base)
    page.wait_for_selector("body[data-ready=yes]")
    for view in ("vms", "hosts", "dashboard"):
        page.click(f"a[data-nav={view}]")
        page.wait_for_selector("main h1")
        assert page.locator("#injected").count() == 0 and page.locator("main b").count() == 0
    page.click("a[data-nav=vms]")
    assert page.text_content('tr[data-vm="0"] td:nth-child(2)') == hostile
    page.goto(base + "/#/vm/0")
    page.wait_for_selector("#vm-template")
    assert page.locator("#injected").count() == 0
    assert hostile in page.inner_text("main h1")
