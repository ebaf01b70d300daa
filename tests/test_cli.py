"""onevm, onehost and onevnet as a user runs them: installed scripts in subprocesses,
talking XML-RPC to a real daemon with dummy drivers (the 1.2 tutorial), in 1.2 tables
and in JSON; and every error path: clear message on stderr, exit status 255, no
traceback."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import xmlrpc.client
from pathlib import Path
from typing import Any
from xmlrpc.server import SimpleXMLRPCServer

import pytest

from tests.cluster.cluster import Cluster
from tests.oned import OneDaemon, wait_for, write_conf
from tests.test_api14 import FIXED, RANGED
from tests.test_tutorial import TUTORIAL

SCRIPTS = Path(sysconfig.get_path("scripts"))


class User:
    """Someone at a shell on another machine: only ONE_XMLRPC points at the daemon, and
    ONE_AUTH at their credentials (a missing file when ``one_auth`` is not given)."""

    def __init__(self, endpoint: str, cwd: Path, one_auth: Path | None = None) -> None:
        self.env = {k: v for k, v in os.environ.items() if k != "ONE_LOCATION"}
        self.env["ONE_XMLRPC"] = endpoint
        self.env["ONE_AUTH"] = str(one_auth or cwd / "no-one_auth")
        self.cwd = cwd

    def run(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(SCRIPTS / command), *args],
            env=self.env,
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def ok(self, command: str, *args: str) -> str:
        done = self.run(command, *args)
        assert done.returncode == 0 and done.stderr == "", done
        return done.stdout

    def fails(self, command: str, *args: str) -> str:
        """The error line of a failed command (and nothing else on stderr)."""
        done = self.run(command, *args)
        assert done.returncode == 255 and done.stdout == "", done
        assert done.stderr.startswith("Error: ") and done.stderr.count("\n") == 1, done.stderr
        return done.stderr.strip()

    def table(self, command: str, *args: str) -> list[list[str]]:
        """Rows of a 1.2 table (header first), split on blanks."""
        return [line.split() for line in self.ok(command, *args).splitlines()]

    def json(self, command: str, *args: str) -> Any:
        return json.loads(self.ok(command, *args, "-o", "json"))


@pytest.fixture
def user(tmp_path):
    write_conf(tmp_path)
    daemon = OneDaemon(tmp_path).start()
    for name, text in (("xen01.one", TUTORIAL), ("ranged.net", RANGED), ("fixed.net", FIXED)):
        (tmp_path / name).write_text(text)
    yield User(daemon.url, tmp_path, daemon.one_auth)
    assert daemon.stop() == 0


def vm_rows(user: User) -> dict[str, list[str]]:
    """``onevm list`` rows by ID: ID NAME DEPLOY_ID STAT CPU MEM HOSTNAME TIME."""
    return {row[0]: row for row in user.table("onevm", "list")[1:]}


def wait_stat(user: User, vid: str, stat: str, host: str | None = None) -> list[str]:
    def reached() -> list[str] | None:
        row = vm_rows(user).get(vid)
        if row is not None and stat in row and (host is None or host in row):
            return row
        return None

    return wait_for(reached, what=f"VM {vid} in {stat}")


def test_tutorial_with_the_1_2_tables(user: User) -> None:
    assert user.ok("onehost", "add", "node01", "im_xen", "vmm_xen", "tm_nfs") == ""
    assert user.ok("onehost", "-v", "create", "node02", "im_xen", "vmm_xen", "tm_nfs") == "HID: 1\n"
    wait_for(lambda: all(row[3] == "200" for row in user.table("onehost", "list")[1:]))
    header, *hosts = user.table("onehost", "list")
    assert header == "HID NAME RVM TCPU FCPU ACPU TMEM FMEM STAT".split()
    assert hosts[1] == ["1", "node02", "0", "200", "190", "200", "2097152", "1835008", "on"]

    assert user.ok("onevm", "create", "xen01.one") == ""
    header, pending = user.table("onevm", "list")
    assert header == "ID NAME DEPLOY_ID STAT CPU MEM HOSTNAME TIME".split()
    assert pending[:4] == ["0", "xen01", "pend", "0"]  # no deploy id, no host yet

    assert user.ok("onevm", "deploy", "xen01", "node02") == ""
    row = wait_stat(user, "0", "runn")
    assert row[:4] == ["0", "xen01", "one-0", "runn"] and row[6] == "node02"

    user.ok("onevm", "migrate", "xen01", "node01")
    wait_stat(user, "0", "runn", "node01")
    user.ok("onevm", "livemigrate", "one-0", "node02")  # the hypervisor's name works too
    wait_stat(user, "0", "runn", "node02")

    show = user.ok("onevm", "show", "xen01").splitlines()
    fields = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in show[:13]}
    assert fields["VID"] == "0" and fields["NAME"] == "xen01" and fields["DEPLOY ID"] == "one-0"
    assert fields["STATE"] == "ACTIVE" and fields["LCM STATE"] == "RUNNING"
    assert show[13:15] == ["", "....: Template :...."]
    assert "    MEMORY          : 156" in [line.rstrip() for line in show]

    history = user.ok("onevm", "history", "xen01").splitlines()
    assert history[:2] == ["History for VM xen01", ""]
    assert history[2].split() == "ID SEQ HOSTNAME STIME ETIME TIME REASON".split()
    records = [line.split() for line in history[3:6]]
    assert [(r[1], r[2], r[-1]) for r in records] == [
        ("0", "node02", "user"),
        ("1", "node01", "user"),
        ("2", "node02", "none"),
    ]
    assert records[2][5] == "--"  # still there: no end time

    # what Haizea TP1.3 runs: numeric ids
    user.ok("onevm", "suspend", "0")
    wait_stat(user, "0", "susp")
    user.ok("onevm", "resume", "0")
    wait_stat(user, "0", "runn")
    user.ok("onevm", "stop", "xen01")
    wait_stat(user, "0", "stop")
    user.ok("onevm", "resume", "xen01")
    wait_stat(user, "0", "pend")
    user.ok("onevm", "deploy", "0", "0")
    wait_stat(user, "0", "runn", "node01")

    user.ok("onevm", "submit", "xen01.one")
    assert user.fails("onevm", "hold", "xen01").startswith("Error: several VMs are named xen01")
    user.ok("onevm", "hold", "1")
    wait_stat(user, "1", "hold")
    user.ok("onevm", "release", "1")
    wait_stat(user, "1", "pend")
    user.ok("onevm", "delete", "1")
    user.ok("onevm", "cancel", "xen01")  # VM 1 is gone: the name is unique again
    wait_for(lambda: "0" not in vm_rows(user))

    user.ok("onevm", "create", "xen01.one")
    user.ok("onevm", "deploy", "xen01", "node01")
    wait_stat(user, "2", "runn")
    user.ok("onevm", "shutdown", "xen01")
    wait_for(lambda: not vm_rows(user))
    records = [row for row in user.table("onevm", "history", "2")[3:] if row]
    assert [(r[2], r[-1]) for r in records] == [("node01", "none")]

    assert user.ok("onevnet", "create", "ranged.net") == ""
    assert user.ok("onevnet", "-v", "create", "fixed.net") == "NID: 1\n"
    assert user.ok("onevnet", "list").splitlines() == [
        " NID NAME              TYPE BRIDGE",
        "   0 Private LAN     Ranged   eth0",
        "   1 Public           Fixed   eth1",
    ]
    show = user.ok("onevnet", "show", "Public")
    assert show.startswith(
        "NID               : 1\nUID               : 0\nNetwork Name      : Public\n"
    )
    assert "IP = 130.10.0.4     MAC = 00:03:82:0a:00:04  USED = 0 VID = -1\n" in show
    assert user.ok("onevnet", "show", "Private LAN").startswith("NID               : 0\n")
    user.ok("onevnet", "delete", "Public")
    assert [row[1] for row in user.table("onevnet", "list")[1:]] == ["Private"]

    assert "MANAGED  = 1" in user.ok("onehost", "show", "node02")
    user.ok("onehost", "disable", "node02")
    assert user.table("onehost", "list")[2][-1] == "off"
    user.ok("onehost", "enable", "node02")
    assert user.table("onehost", "list")[2][-1] == "on"
    user.ok("onehost", "delete", "node02")
    assert [row[1] for row in user.table("onehost", "list")[1:]] == ["node01"]


def test_tutorial_in_json(user: User) -> None:
    user.ok("onehost", "add", "node01", "im_xen", "vmm_xen", "tm_nfs")
    user.ok("onehost", "add", "node02", "im_xen", "vmm_xen", "tm_nfs")
    wait_for(lambda: all(h["HOST_SHARE"]["MAX_CPU"] == 200 for h in user.json("onehost", "list")))
    user.ok("onevm", "create", "xen01.one")
    (vm,) = user.json("onevm", "list")
    assert (vm["ID"], vm["NAME"], vm["STATE"], vm["DEPLOY_ID"]) == (0, "xen01", 1, "")

    def vm_state(wanted: tuple[int, int], host: str | None = None) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            vm = user.json("onevm", "show", "0")
            if (vm["STATE"], vm["LCM_STATE"]) != wanted:
                return None
            return vm if host is None or vm["HISTORY"]["HOSTNAME"] == host else None

        return wait_for(reached, what=f"VM 0 in {wanted}")

    user.ok("onevm", "deploy", "xen01", "node02")
    vm = vm_state((3, 3))
    assert vm["DEPLOY_ID"] == "one-0" and vm["TEMPLATE"]["MEMORY"] == "156"
    assert [d["TARGET"] for d in vm["TEMPLATE"]["DISK"]] == ["sda2", "sda1"]
    user.ok("onevm", "migrate", "xen01", "node01")
    vm_state((3, 3), "node01")
    user.ok("onevm", "livemigrate", "xen01", "node02")
    vm_state((3, 3), "node02")
    (history,) = user.json("onevm", "history", "xen01")
    assert history["ID"] == 0
    assert [(r["SEQ"], r["HOSTNAME"], r["REASON"]) for r in history["HISTORY"]] == [
        (0, "node02", 3),
        (1, "node01", 3),
        (2, "node02", 0),
    ]
    for action, wanted in (("suspend", (5, 0)), ("resume", (3, 3)), ("stop", (4, 0))):
        user.ok("onevm", action, "xen01")
        vm_state(wanted)
    user.ok("onevm", "resume", "xen01")
    vm_state((1, 0))
    user.ok("onevm", "hold", "xen01")
    vm_state((2, 0))
    user.ok("onevm", "release", "xen01")
    user.ok("onevm", "deploy", "xen01", "node01")
    vm_state((3, 3), "node01")
    user.ok("onevm", "cancel", "xen01")
    vm_state((6, 0))
    assert user.json("onevm", "list") == []

    user.ok("onevm", "create", "xen01.one")
    user.ok("onevm", "deploy", "1", "1")
    wait_for(lambda: user.json("onevm", "list")[0]["LCM_STATE"] == 3)
    user.ok("onevm", "shutdown", "1")
    wait_for(lambda: user.json("onevm", "list") == [])
    user.ok("onevm", "create", "xen01.one")
    user.ok("onevm", "delete", "xen01")
    assert user.json("onevm", "list") == []

    user.ok("onevnet", "create", "ranged.net")
    user.ok("onevnet", "create", "fixed.net")
    networks = user.json("onevnet", "list")
    assert [(n["ID"], n["NAME"], n["TYPE"], n["TOTAL_LEASES"]) for n in networks] == [
        (0, "Private LAN", 0, 0),
        (1, "Public", 1, 0),
    ]
    public = user.json("onevnet", "show", "Public")
    assert [lease["IP"] for lease in public["LEASES"]] == ["130.10.0.1", "130.10.0.4"]
    assert [lease["IP"] for lease in public["TEMPLATE"]["LEASES"]] == ["130.10.0.1", "130.10.0.4"]
    host = user.json("onehost", "show", "node01")
    assert host["TEMPLATE"]["TOTALCPU"] == "200" and host["HOST_SHARE"]["MAX_CPU"] == 200

    xml = user.ok("onevm", "list", "-o", "xml")
    assert xml == "<VM_POOL></VM_POOL>\n"
    assert user.ok("onevnet", "show", "0", "-o", "xml").startswith("<VNET><ID>0</ID>")


def test_options_columns_and_verbose(user: User) -> None:
    user.ok("onehost", "add", "node01", "im_xen", "vmm_xen", "tm_nfs")
    assert user.ok("onevm", "-v", "create", "xen01.one") == "ID: 0\n"
    assert user.ok("onevm", "hold", "0", "--verbose") == "Setting VM to hold state\n"
    assert user.table("onevm", "list", "--list", "name,stat,id") == [
        ["NAME", "STAT", "ID"],
        ["xen01", "hold", "0"],
    ]
    assert user.table("onevm", "-l", "id,user", "list") == [["ID", "USER"], ["0", "oneadmin"]]
    assert "deploy_id" in user.ok("onevm", "list-columns")
    assert user.fails("onevm", "list", "-l", "id,size") == (
        "Error: Unknown column size; columns: id, name, deploy_id, user, stat, cpu, mem, "
        "hostname, time"
    )
    assert user.ok("onehost", "list", "-l", "name,stat").splitlines()[1].split()[0] == "node01"
    help_text = user.ok("onevm", "--help")
    verbs = "create submit deploy shutdown livemigrate migrate hold release stop cancel suspend"
    for verb in (verbs + " resume delete list show top history console").split():
        assert f"  {verb}" in help_text


def test_top_refreshes_until_interrupted(user: User) -> None:
    user.ok("onevm", "create", "xen01.one")
    process = subprocess.Popen(
        [str(SCRIPTS / "onevm"), "top", "-d", "0.2"],
        env=user.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Interrupt once three screens are out (and the fourth has begun).
    seen = ""
    deadline = time.monotonic() + 30
    while seen.count("\33[H\33[2J") < 4:
        assert time.monotonic() < deadline, f"no three screens in 30 s: {seen!r}"
        ready, _, _ = select.select([process.stdout], [], [], 1.0)
        if ready:
            chunk = os.read(process.stdout.fileno(), 65536).decode()
            assert chunk, f"onevm top ended: {seen!r}"
            seen += chunk
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=10)
    out = seen + out
    assert process.returncode == 0 and err == ""
    screens = out.split("\33[H\33[2J")[1:]
    assert len(screens) >= 3
    assert all("xen01" in screen and "pend" in screen for screen in screens)


def test_a_user_signs_in_from_one_auth(user: User, tmp_path: Path) -> None:
    """With authentication on, the CLI signs its calls with ONE_AUTH's user:sha1(password):
    an ordinary user owns what it creates and sees only that; a wrong password is
    refused with 1.4's message."""
    admin = User(user.env["ONE_XMLRPC"], tmp_path, Path(user.env["ONE_AUTH"]))
    admin.ok("onehost", "add", "node01", "im_xen", "vmm_xen", "tm_nfs")
    admin.ok("onevm", "create", "xen01.one")  # oneadmin's VM 0
    admin_session = "oneadmin:" + hashlib.sha1(b"test-admin-password").hexdigest()
    with xmlrpc.client.ServerProxy(user.env["ONE_XMLRPC"]) as proxy:
        secret = hashlib.sha1(b"alice-pw").hexdigest()
        assert proxy.one.user.allocate(admin_session, "alice", secret)[0] is True
    (tmp_path / "alice_auth").write_text("alice:alice-pw\n")
    alice = User(user.env["ONE_XMLRPC"], tmp_path, tmp_path / "alice_auth")
    assert alice.ok("onevm", "-v", "create", "xen01.one") == "ID: 1\n"
    assert [row[0] for row in alice.table("onevm", "list")[1:]] == ["1"]
    assert alice.fails("onevm", "show", "0") == (
        "Error: User not authorized to perform operation upon VirtualMachine [0]"
    )
    assert alice.fails("onehost", "add", "node02", "im_xen", "vmm_xen", "tm_nfs") == (
        "Error: User not authorized to add new hosts"
    )
    assert alice.fails("onevm", "deploy", "0", "node01") == (
        "Error: User not authorized to perform the deploy"
    )
    (tmp_path / "guess_auth").write_text("alice:guess\n")
    guess = User(user.env["ONE_XMLRPC"], tmp_path, tmp_path / "guess_auth")
    assert guess.fails("onevm", "list") == (
        "Error: User not authenticated, aborting RequestManagerPoolInfo call."
    )
    assert guess.fails("onevm", "create", "xen01.one") == (
        "Error: User not authenticated, aborting RequestManagerAllocate call."
    )


def test_errors(user: User, tmp_path: Path) -> None:
    user.ok("onehost", "add", "node01", "im_xen", "vmm_xen", "tm_nfs")
    twin = user.run("onehost", "add", "node01", "im_xen", "vmm_xen", "tm_nfs")  # accepted...
    assert twin.returncode == 0 and twin.stdout == ""
    assert twin.stderr == "Warning: a host named node01 already exists (ID 0)\n"  # ...but noted
    user.ok("onevm", "create", "xen01.one")
    user.ok("onevm", "create", "xen01.one")
    user.ok("onevnet", "create", "ranged.net")

    assert user.fails("onevm", "show", "web") == "Error: VM named web not found"
    assert user.fails("onevm", "deploy", "0", "node09") == "Error: host named node09 not found"
    assert user.fails("onevnet", "show", "lan") == "Error: virtual network named lan not found"
    assert user.fails("onevm", "show", "xen01") == (
        "Error: several VMs are named xen01, use an ID: 0 (pend), 1 (pend)"
    )
    assert user.fails("onevm", "deploy", "0", "node01") == (
        "Error: several hosts are named node01, use an ID: 0 (on), 1 (on)"
    )
    # ids are passed on; oned's message says what is missing
    assert user.fails("onevm", "show", "9") == "Error: Error getting vm with VID = 9"
    assert user.fails("onevm", "deploy", "9", "0") == "Error: The virtual machine 9 does not exists"
    assert user.fails("onehost", "show", "7") == "Error: Error getting host with HID = 7"
    assert user.fails("onevnet", "delete", "4") == (
        "Error: Error getting Virtual Network with NID = 4"
    )
    assert user.fails("onevm", "shutdown", "0") == (
        "Error: Wrong state to perform action: VM 0 is PENDING"
    )
    assert user.fails("onevm", "console", "0") == "Error: VM 0 is not running"

    assert user.fails("onevm", "create", "missing.one") == (
        "Error: Can not read template file missing.one: No such file or directory"
    )
    assert user.fails("onevm", "create", str(tmp_path)) == (
        f"Error: Can not read template file {tmp_path}: Is a directory"
    )
    (tmp_path / "bad.one").write_text("NAME = a b\n")
    assert user.fails("onevm", "create", "bad.one") == (
        "Error: Error parsing VM template: line 1, column 10: "
        "syntax error, unexpected STRING, expecting NL"
    )
    assert user.fails("onevnet", "create", "nothing.net").startswith(
        "Error: Can not read template file nothing.net"
    )
    assert user.fails("onehost", "add", "n", "im", "vmm", "tm", "maybe") == (
        "Error: use true/false or 0/1 for the managed parameter"
    )

    down = User("http://127.0.0.1:1/RPC2", user.cwd)
    for command in (
        ("onevm", "list"),
        ("onehost", "show", "0"),
        ("onevnet", "create", "ranged.net"),
    ):
        assert down.fails(*command) == (
            "Error: Can not reach oned at http://127.0.0.1:1/RPC2: Connection refused"
        )
    assert user.fails("onevm", "list", "--endpoint", "http://127.0.0.1:1/RPC2").startswith(
        "Error: Can not reach oned"
    )
    assert User("ftp://x/RPC2", user.cwd).fails("onevm", "list") == (
        "Error: Invalid endpoint ftp://x/RPC2: unsupported XML-RPC protocol"
    )
    wrong_path = user.env["ONE_XMLRPC"].replace("/RPC2", "/nope")
    assert User(wrong_path, user.cwd).fails("onevm", "list").startswith("Error: ")


def test_mistakes_are_refused_with_their_reason(user: User, tmp_path: Path) -> None:
    # drivers oned.conf does not have
    assert user.fails("onehost", "add", "node01", "im_kvm", "vmm_xen", "tm_nfs") == (
        "Error: Can not allocate host node01: no IM driver named im_kvm in oned.conf "
        "(configured: im_xen)"
    )
    assert user.table("onehost", "list")[1:] == []
    user.ok("onehost", "add", "node01", "im_xen", "vmm_xen", "tm_nfs")
    user.ok("onehost", "add", "node02", "im_xen", "vmm_xen", "tm_nfs")

    # templates: where the mistake is, per line
    (tmp_path / "lots.one").write_text("NAME = big\nCPU = 1\nMEMORY = lots\n")
    assert user.fails("onevm", "create", "lots.one") == (
        "Error: Error parsing VM template: line 3, column 10: "
        "MEMORY must be a number of megabytes, not 'lots'"
    )
    (tmp_path / "quote.one").write_text('CPU = 1\nNAME = "web\nMEMORY = 64\n')
    assert user.fails("onevm", "create", "quote.one") == (
        'Error: Error parsing VM template: line 2, column 8: unterminated string, " is never closed'
    )
    (tmp_path / "nic.one").write_text("NAME = n\nNIC = [ NETWORK = nowhere ]\n")
    assert user.fails("onevm", "create", "nic.one") == (
        "Error: Error inserting VM in the database: no network named nowhere"
    )
    (tmp_path / "bad.net").write_text("NAME = r\nTYPE = RANGED\nBRIDGE = br0\n")
    assert user.fails("onevnet", "create", "bad.net") == (
        "Error: Can not create a network from bad.net: RANGED network without NETWORK_ADDRESS"
    )
    assert vm_rows(user) == {}

    # a DISABLED host is refused for deploy and migration, unless forced
    user.ok("onevm", "create", "xen01.one")
    user.ok("onehost", "disable", "node02")
    assert user.fails("onevm", "deploy", "xen01", "node02") == (
        "Error: Host node02 is DISABLED: use --force to deploy on it anyway"
    )
    assert vm_rows(user)["0"][:3] == ["0", "xen01", "pend"]
    user.ok("onevm", "deploy", "xen01", "node01")
    wait_stat(user, "0", "runn", "node01")
    for verb in ("migrate", "livemigrate"):
        assert user.fails("onevm", verb, "xen01", "node02") == (
            "Error: Host node02 is DISABLED: use --force to migrate on it anyway"
        )
    assert user.fails("onevm", "deploy", "xen01", "node01") == (
        "Error: Can not deploy VM 0, wrong state: VM 0 is ACTIVE (RUNNING)"
    )
    user.ok("onevm", "livemigrate", "xen01", "node02", "--force")
    wait_stat(user, "0", "runn", "node02")
    assert user.fails("onevm", "migrate", "xen01", "node02", "--force") == (
        "Error: Can not deploy VM 0, wrong state: VM 0 already runs on host 1"
    )
    user.ok("onevm", "suspend", "xen01")
    wait_stat(user, "0", "susp")
    assert user.fails("onevm", "suspend", "xen01") == (
        "Error: Wrong state to perform action: VM 0 is SUSPENDED"
    )


def test_a_host_in_error_is_refused_unless_forced(tmp_path: Path) -> None:
    write_conf(tmp_path, im_extra=', fail_hosts = "bad*"')
    (tmp_path / "xen01.one").write_text(TUTORIAL)
    daemon = OneDaemon(tmp_path).start()
    try:
        user = User(daemon.url, tmp_path, daemon.one_auth)
        user.ok("onehost", "add", "badhost", "im_xen", "vmm_xen", "tm_nfs")
        wait_for(lambda: user.table("onehost", "list")[1][-1] == "err")
        user.ok("onevm", "create", "xen01.one")
        assert user.fails("onevm", "deploy", "xen01", "badhost") == (
            "Error: Host badhost is ERROR: use --force to deploy on it anyway"
        )
        assert user.json("onevm", "show", "0")["STATE"] == 1  # still PENDING
        user.ok("onevm", "deploy", "--force", "xen01", "badhost")
        assert user.json("onevm", "show", "0")["STATE"] in (3, 7)  # ACTIVE, then it fails
    finally:
        assert daemon.stop() == 0


def test_a_hung_server_times_out(tmp_path: Path) -> None:
    with socket.socket() as hung:  # accepts connections (the kernel does), never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen()
        url = f"http://127.0.0.1:{hung.getsockname()[1]}/RPC2"
        user = User(url, tmp_path)
        user.env["ONE_XMLRPC_TIMEOUT"] = "1"
        started = time.monotonic()
        assert user.fails("onevm", "show", "0") == (
            f"Error: oned at {url} did not answer one.vm.info within 1 seconds "
            "(ONE_XMLRPC_TIMEOUT sets the limit)"
        )
        assert time.monotonic() - started < 30
        user.env["ONE_XMLRPC_TIMEOUT"] = "soon"
        assert user.fails("onevm", "show", "0") == (
            "Error: ONE_XMLRPC_TIMEOUT must be a positive number of seconds, not 'soon'"
        )


class _ConsoleServer:
    """A stand-in oned that only knows VM 3 and how to reach its console."""

    def __init__(self, target: Any) -> None:
        self.server = SimpleXMLRPCServer(("127.0.0.1", 0), logRequests=False, allow_none=False)
        fields = {"ID": 3, "UID": 0, "USERNAME": "oneadmin", "NAME": "web", "LAST_POLL": 0}
        fields.update(STATE=3, LCM_STATE=3, STIME=0, ETIME=0, DEPLOY_ID="one-3", MEMORY=0)
        fields.update(CPU=0, NET_TX=0, NET_RX=0)
        vm = "".join(f"<{name}>{value}</{name}>" for name, value in fields.items())
        pool = f"<VM_POOL><VM>{vm}</VM></VM_POOL>"
        self.server.register_function(lambda session, flag: [True, pool], "one.vmpool.info")
        self.server.register_function(
            lambda session, vid: [True, target, "Escape character is '^]'"],
            "nebula_xr.vm.console",
        )
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/RPC2"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_console_builds_its_own_ssh_command(tmp_path: Path) -> None:
    """The server says where the console is; onevm runs the fixed ssh form with the
    user's $ONE_SSH, and refuses anything else the server answers."""
    fake_ssh = tmp_path / "fake-ssh"
    fake_ssh.write_text("#!/bin/sh\nprintf '%s|' \"$@\"\n")
    fake_ssh.chmod(0o755)
    target = {"host": "node01", "domain": "one-3", "method": "sudo-xm"}
    stand_in = _ConsoleServer(target)
    try:
        user = User(stand_in.url, tmp_path)
        user.env["ONE_SSH"] = f"{fake_ssh} -F /etc/cluster.cfg"
        done = user.run("onevm", "console", "web")
        assert (done.returncode, done.stdout) == (
            0,
            "-F|/etc/cluster.cfg|-t|node01|--|sudo|xm|console|one-3|",
        )
        assert done.stderr == "Escape character is '^]'\n"
    finally:
        stand_in.close()
    marker = tmp_path / "MARKER"
    hostile = [
        (
            [sys.executable, "-c", f"open({str(marker)!r}, 'w')"],
            "Error: The server did not say where the console is",
        ),
        (
            dict(target, host="-oProxyCommand=touch MARKER"),
            "Error: Invalid console host '-oProxyCommand=touch MARKER'",
        ),
        (
            dict(target, host="node01;touch MARKER"),
            "Error: Invalid console host 'node01;touch MARKER'",
        ),
        (
            dict(target, domain="one-3 $(touch MARKER)"),
            "Error: Invalid console domain 'one-3 $(touch MARKER)'",
        ),
        (dict(target, method="touch MARKER"), "Error: Unknown console method 'touch MARKER'"),
    ]
    for answer, error in hostile:
        server = _ConsoleServer(answer)
        try:
            user = User(server.url, tmp_path)
            user.env["ONE_SSH"] = str(fake_ssh)
            assert user.fails("onevm", "console", "3") == error
        finally:
            server.close()
    assert not marker.exists()
    missing = _ConsoleServer(target)
    try:
        user = User(missing.url, tmp_path)
        user.env["ONE_SSH"] = "/nonexistent/ssh"
        assert user.fails("onevm", "console", "3") == (
            "Error: Can not run /nonexistent/ssh: No such file or directory"
        )
    finally:
        missing.close()


def test_console_reaches_a_qemu_guest(qemu_cluster: Cluster, tmp_path: Path) -> None:
    """On the namespace cluster, a VM deployed by the daemon through vmm_xen: from where
    the driver says the console is, onevm's own ssh command (ssh -t to the host, then the
    toolstack's console) attaches this terminal to the guest's serial console."""
    from tests.test_xen_cluster import add_cluster_hosts, start_daemon

    c = qemu_cluster
    one = start_daemon(tmp_path / "one", c, str(c.shared_dir / "one"), timeout=60)
    controller, terminal = pty.openpty()
    try:
        add_cluster_hosts(one, "tm_nfs")
        template = "NAME = guest\nCPU = 1\nMEMORY = 128\nOS = [ kernel = /boot/vmlinuz ]\n"
        assert one.call("one.vmallocate", template) == [True, 0]
        assert one.call("one.vmdeploy", 0, 0) == [True]
        wait_for(lambda: "GUEST-BOOTED" in c.console_log("node01", "one-0"), timeout=90)
        process = subprocess.Popen(
            [str(SCRIPTS / "onevm"), "console", "guest"],
            env=dict(User(one.url, tmp_path, one.one_auth).env, ONE_SSH=f"ssh -F {c.ssh_config}"),
            stdin=terminal,
            stdout=terminal,
            stderr=terminal,
        )
        seen = b""
        deadline = time.monotonic() + 30
        while seen.count(b"tick") < 3 and time.monotonic() < deadline:
            if select.select([controller], [], [], 1)[0]:
                seen += os.read(controller, 65536)
        assert seen.count(b"tick") >= 3, seen
        # Ctrl-] detaches, as with xm console (the fake reads its tty line by line)
        os.write(controller, b"\x1d\r")
        assert process.wait(timeout=20) == 0
    finally:
        os.close(controller)
        os.close(terminal)
        one.stop()
