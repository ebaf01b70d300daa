"""The web console over HTTP, against a real daemon: sign-in, cookie, CSRF, ownership,
actions answered with the daemon's own replies, server-sent events, the WEB key.

The browser tests (tests/test_web_browser.py) drive the pages; these check the server's
rules directly, where a browser would hide them.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import urllib.parse
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nebula_xr.config import ConfigError, Layout, parse_config
from nebula_xr.template import Template
from nebula_xr.web.rows import FormError, form_template
from tests.oned import OneDaemon, wait_for
from tests.web_support import WebClient, start_web_daemon


@pytest.fixture
def web(tmp_path: Path):
    daemon, base = start_web_daemon(tmp_path)
    yield daemon, base
    assert daemon.stop() == 0


# -- the WEB key ---------------------------------------------------------------------------


def _parse(text: str):
    return parse_config(text, Layout(Path("/v"), Path("/e"), Path("/v"), Path("/l")), "oned.conf")


def test_web_key_turns_the_console_on_and_port_zero_or_absence_off() -> None:
    config = _parse('WEB = [ port = 9869, listen_address = "0.0.0.0" ]\n')
    assert (config.web.port, config.web.listen_address) == (9869, "0.0.0.0")
    assert _parse("WEB = [ port = 8000 ]\n").web.listen_address == "127.0.0.1"
    assert _parse("WEB = [ port = 0 ]\n").web is None
    assert _parse("PORT = 2633\n").web is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("WEB = 9869", "WEB must be a vector"),
        ("WEB = [ port = web ]", "WEB port must be an integer, not 'web'"),
        ("WEB = [ port = 70000 ]", "WEB port must be a TCP port, not 70000"),
    ],
)
def test_a_bad_web_key_is_refused_with_a_reason(line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _parse(line + "\n")


def test_the_shipped_conf_serves_the_console_on_localhost() -> None:
    shipped = Path(__file__).parent.parent / "conf" / "oned.conf"
    config = _parse(shipped.read_text())
    assert (config.web.port, config.web.listen_address) == (9869, "127.0.0.1")


def test_without_web_key_nothing_is_served(tmp_path: Path) -> None:
    from tests.oned import write_conf

    write_conf(tmp_path)
    daemon = OneDaemon(tmp_path).start()
    try:
        assert "web console" not in daemon.startup[-1]
    finally:
        assert daemon.stop() == 0


# -- the form's encoder --------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    name=st.text(min_size=1, max_size=30),
    kernel=st.text(max_size=30),
    disk=st.text(max_size=30),
    network=st.text(max_size=20),
    cpu=st.text(max_size=6),
    memory=st.text(max_size=6),
)
def test_a_form_value_never_becomes_template_syntax(name, kernel, disk, network, cpu, memory):
    form = {
        "name": name,
        "kernel": kernel,
        "disk": disk,
        "network": network,
        "cpu": cpu,
        "memory": memory,
    }
    try:
        text = form_template(form)
    except FormError:
        return
    template = Template.parse(text)
    assert template.get_string("NAME") == name.strip()
    assert sorted(name for name, _ in template) == sorted(
        ["NAME", "CPU", "MEMORY"]
        + (["OS"] if kernel.strip() else [])
        + (["DISK"] if disk.strip() else [])
        + (["NIC"] if network.strip() else [])
    )
    if kernel.strip():
        assert template.get_vector("OS") == {"KERNEL": kernel.strip()}
    if network.strip():
        assert template.get_vector("NIC") == {"NETWORK": network.strip()}
    if disk.strip():
        assert template.get_vector("DISK")["SOURCE"] == disk.strip()


def test_a_form_with_a_quote_is_refused_with_a_reason() -> None:
    with pytest.raises(FormError, match="name must not contain quotes"):
        form_template({"name": 'a", MEMORY = "9'})
    with pytest.raises(FormError, match="memory must be a whole number"):
        form_template({"name": "a", "memory": "1e9"})


# -- sign-in, cookie, CSRF -----------------------------------------------------------------


def test_pages_without_a_session_go_to_the_sign_in_page(web) -> None:
    _daemon, base = web
    parts = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    connection.request("GET", "/")
    response = connection.getresponse()
    assert (response.status, response.getheader("Location")) == (302, "/signin")
    connection.close()
    client = WebClient(base)
    status, body, _ = client.request("/api/state")
    assert (status, body) == (401, {"error": "Not signed in"})


def test_sign_in_checks_the_password_and_sets_a_strict_http_only_cookie(web) -> None:
    daemon, base = web
    client = WebClient(base)
    assert client.sign_in(password="wrong") == 401
    assert client.sign_in(user="nobody", password="x") == 401
    assert (
        "Authentication failed for user 'oneadmin'"
        in (daemon.location / "var" / "oned.log").read_text()
    )
    status, body, headers = client.request(
        "/api/signin", {"user": "oneadmin", "password": "test-admin-password"}
    )
    assert status == 200 and body["name"] == "oneadmin"
    cookie = headers.get("Set-Cookie")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    client.csrf = body["csrf"]
    status, me, _ = client.request("/api/me")
    assert (status, me["name"], me["uid"]) == (200, "oneadmin", 0)


def test_every_post_needs_the_csrf_token_and_json(web) -> None:
    _daemon, base = web
    client = WebClient(base)
    assert client.sign_in() == 200
    call = {"method": "one.host.allocate", "params": ["n1", "im_xen", "vmm_xen", "tm_nfs"]}
    token = client.csrf
    client.csrf = ""
    assert client.request("/api/call", call)[:2] == (
        403,
        {"error": "Missing or wrong CSRF token"},
    )
    assert client.request("/api/call", call, {"X-CSRF-Token": "x" + token})[0] == 403
    form = {"Content-Type": "application/x-www-form-urlencoded", "X-CSRF-Token": token}
    assert client.request("/api/call", raw=b"method=x", headers=form)[0] == 403
    client.csrf = token
    # None of the refused posts allocated anything: the first host is 0.
    assert client.call("one.host.allocate", "n1", "im_xen", "vmm_xen", "tm_nfs") == [True, 0]


def test_sign_out_ends_the_session(web) -> None:
    _daemon, base = web
    client = WebClient(base)
    assert client.sign_in() == 200
    assert client.request("/api/signout", {})[0] == 200
    assert client.request("/api/state")[0] == 401


# -- actions: the daemon's own replies -------------------------------------------------------


def test_actions_answer_as_the_xml_rpc_api_does(web) -> None:
    daemon, base = web
    client = WebClient(base)
    assert client.sign_in() == 200
    assert client.call("one.host.allocate", "n1", "im_xen", "vmm_xen", "tm_nfs") == [True, 0]
    assert client.call("one.host.allocate", "n2", "bogus", "vmm_xen", "tm_nfs") == (
        daemon.call14("one.host.allocate", "n2", "bogus", "vmm_xen", "tm_nfs")
    )
    bad = "NAME = [ oops"
    assert client.call("one.vm.allocate", bad) == daemon.call14("one.vm.allocate", bad)
    assert client.call("one.vm.allocate", "NAME = a\nMEMORY = 64\nCPU = 1") == [True, 0]
    refused = client.call("one.vm.action", "resume", 0)
    assert refused == [False, "Wrong state to perform action: VM 0 is PENDING"]
    assert refused == daemon.call14("one.vm.action", "resume", 0)
    assert client.call("one.vm.deploy", 0, 7) == daemon.call14("one.vm.deploy", 0, 7)
    # A wrong parameter type is the registry's fault text, as an XML-RPC client sees it.
    assert client.call("one.vm.deploy", "0", 0)[0] is False
    status, body, _ = client.request(
        "/api/call", {"method": "one.user.allocate", "params": ["eve", "x"]}
    )
    assert (status, body) == (400, {"error": "The console does not call 'one.user.allocate'"})


def test_a_user_sees_and_acts_on_its_own_vms_only(web) -> None:
    daemon, base = web
    from nebula_xr.auth import password_hash

    assert daemon.call14("one.user.allocate", "eve", password_hash("evepw"))[0]
    assert daemon.call14("one.vm.allocate", "NAME = admins\nMEMORY = 64\nCPU = 1") == [True, 0]
    eve = WebClient(base)
    assert eve.sign_in("eve", "evepw") == 200
    assert eve.call("one.vm.allocate", "NAME = eves\nMEMORY = 64\nCPU = 1") == [True, 1]
    status, state, _ = eve.request("/api/state")
    assert [vm["name"] for vm in state["vms"]] == ["eves"]
    assert eve.request("/api/vm/0")[0] == 404
    assert eve.call("one.vm.action", "hold", 0) == daemon.call14(
        "one.vm.action", "hold", 0, session=f"eve:{password_hash('evepw')}"
    )
    assert eve.call("one.vm.action", "hold", 0)[0] is False
    assert eve.call("one.host.allocate", "n1", "im_xen", "vmm_xen", "tm_nfs")[0] is False


def test_a_deleted_user_is_signed_out(web) -> None:
    daemon, base = web
    from nebula_xr.auth import password_hash

    ok, uid = daemon.call14("one.user.allocate", "eve", password_hash("evepw"))
    eve = WebClient(base)
    assert eve.sign_in("eve", "evepw") == 200
    assert eve.request("/api/state")[0] == 200
    assert daemon.call14("one.user.delete", uid) == [True]
    assert eve.request("/api/state")[0] == 401


def test_the_simple_form_creates_the_vm_it_describes(web) -> None:
    daemon, base = web
    client = WebClient(base)
    assert client.sign_in() == 200
    status, body, _ = client.request(
        "/api/vm/form", {"name": "formed", "cpu": "0.5", "memory": "96", "kernel": "/boot/k"}
    )
    assert body["reply"] == [True, 0]
    ok, document = daemon.call14("one.vm.info", 0)
    assert "<NAME>formed</NAME>" in document and "<MEMORY>96</MEMORY>" in document
    status, body, _ = client.request("/api/vm/form", {"name": 'x"y'})
    assert body["reply"] == [
        False,
        "name must not contain quotes, brackets, backslashes or newlines",
    ]


# -- server-sent events ----------------------------------------------------------------------


def test_state_changes_are_pushed_as_server_sent_events(web) -> None:
    daemon, base = web
    client = WebClient(base)
    assert client.sign_in() == 200
    cookie = "; ".join(f"{c.name}={c.value}" for c in client.cookies)
    parts = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=20)
    connection.request("GET", "/api/events", headers={"Cookie": cookie})
    response = connection.getresponse()
    assert response.getheader("Content-Type") == "text/event-stream"
    received: list[tuple[str, dict]] = []

    def read() -> None:
        kind = ""
        try:
            for raw in response:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    received.append((kind, json.loads(line[6:])))
        except (OSError, ValueError, http.client.HTTPException):
            pass

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert daemon.call14("one.host.allocate", "n1", "im_xen", "vmm_xen", "tm_nfs") == [True, 0]
    assert daemon.call14("one.vm.allocate", "NAME = a\nMEMORY = 64\nCPU = 1") == [True, 0]
    assert daemon.call14("one.vm.deploy", 0, 0) == [True]

    def vm_words() -> list[str]:
        return [data["words"] for kind, data in list(received) if kind == "vm"]

    wait_for(lambda: "RUNNING" in vm_words(), what="RUNNING pushed")
    words = vm_words()
    assert words.index("PROLOG") < words.index("BOOT") < words.index("RUNNING")
    wait_for(
        lambda: any(
            kind == "host" and data["state"] == "MONITORED" and data["total_cpu"] == 200
            for kind, data in list(received)
        ),
        what="the monitored host pushed",
    )
    texts = [data["text"] for kind, data in list(received) if kind == "event"]
    assert "VM 0 (a) is RUNNING" in texts
    connection.close()


def test_failures_reach_the_dashboard_with_their_messages(tmp_path: Path) -> None:
    daemon, base = start_web_daemon(
        tmp_path, im_extra=', fail_hosts = "broken*"', vmm_extra=', fail_hosts = "node02"'
    )
    try:
        client = WebClient(base)
        assert client.sign_in() == 200
        assert client.call("one.host.allocate", "broken1", "im_xen", "vmm_xen", "tm_nfs")[0]
        assert client.call("one.host.allocate", "node02", "im_xen", "vmm_xen", "tm_nfs")[0]
        assert client.call("one.vm.allocate", "NAME = doomed\nMEMORY = 64\nCPU = 1") == [True, 0]
        assert client.call("one.vm.deploy", 0, 1) == [True]

        def events() -> list[dict]:
            return client.request("/api/state")[1]["events"]

        def failures() -> list[str]:
            return [event["text"] for event in events() if event["level"] == "error"]

        wait_for(lambda: len(failures()) >= 2, what="both failures on the dashboard")
        host_failure = next(text for text in failures() if text.startswith("Host 0"))
        ok, document = daemon.call14("one.host.info", 0)
        reported = document.split("<ERROR>")[1].split("</ERROR>")[0]
        assert host_failure == f"Host 0 (broken1) is ERROR: {reported}"
        hosts = client.request("/api/state")[1]["hosts"]
        assert (hosts[0]["state"], hosts[0]["error"]) == ("ERROR", reported)
        assert hosts[1]["error"] == ""
        vm_failure = next(text for text in failures() if text.startswith("VM 0"))
        assert vm_failure.startswith("VM 0 (doomed) FAILED: ")
        last_error = [line for line in _vm_log(tmp_path, 0) if "[E]" in line][-1]
        assert vm_failure.endswith(last_error.split("[E]:", 1)[1].strip())
    finally:
        assert daemon.stop() == 0


def _vm_log(location: Path, vid: int) -> list[str]:
    return (location / "var" / str(vid) / "vm.log").read_text().splitlines()


def test_a_taken_web_port_stops_the_start_with_a_reason_and_creates_nothing(
    tmp_path: Path,
) -> None:
    from tests.oned import write_conf
    from tests.test_startup import created, refused, run_daemon

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        write_conf(tmp_path, extra=f"WEB = [ port = {port} ]")
        line = refused(run_daemon(tmp_path))
    assert line == f"Error: Can not listen on 127.0.0.1:{port}: Address already in use"
    assert created(tmp_path) == set()


def test_an_idle_session_is_signed_out_after_eight_hours() -> None:
    from twisted.internet.task import Clock

    from nebula_xr.web.server import COOKIE, IDLE_TIMEOUT, WebConsole, WebSession

    class Request:
        def __init__(self, token: str) -> None:
            self.token = token

        def getCookie(self, name: bytes) -> bytes | None:
            return self.token.encode() if name == COOKIE.encode() else None

    clock = Clock()
    console = WebConsole(daemon=None, history=None, clock=clock)
    console.sessions["t"] = WebSession("oneadmin:x", "oneadmin", 0, "csrf", clock.seconds())
    clock.advance(IDLE_TIMEOUT - 1)
    assert console.session_of(Request("t")) is console.sessions["t"]  # use renews it
    clock.advance(IDLE_TIMEOUT - 1)
    assert console.session_of(Request("t")) is not None
    clock.advance(IDLE_TIMEOUT + 1)
    assert console.session_of(Request("t")) is None
    assert console.sessions == {}


def _upgrade(base: str, headers: dict[str, str]) -> int:
    """The status of a WebSocket handshake to VM 0's console."""
    parts = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    wanted = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        **headers,
    }
    connection.request("GET", "/console/0", headers=wanted)
    status = connection.getresponse().status
    connection.close()
    return status


def test_the_console_websocket_needs_a_session_and_our_origin(web) -> None:
    _daemon, base = web
    client = WebClient(base)
    assert client.sign_in() == 200
    cookie = "; ".join(f"{c.name}={c.value}" for c in client.cookies)
    assert _upgrade(base, {"Origin": base, "Cookie": cookie}) == 101
    assert _upgrade(base, {"Origin": "http://evil.example", "Cookie": cookie}) == 403
    assert _upgrade(base, {"Origin": base}) == 401
    assert _upgrade(base, {"Origin": base, "Cookie": "nebula_web=forged"}) == 401
