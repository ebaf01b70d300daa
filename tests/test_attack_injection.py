"""Attack suite, injection part (issue 7): hostile templates driven through the daemon to
the namespace cluster's hosts.

Every payload tries to create its own marker file (Python code for xm, which executes the
deployment file as root; shell syntax for the transfer and toolstack commands; options for
ssh/scp/cp; options of the Xen device specs). Each goes into one template field of its own
VM, owned by a user (and by oneadmin where the field is oneadmin's), and every VM is
driven as far as it gets: allocation, deploy, cold and live migration, shutdown. The fake
``xm`` on the hosts executes deployment files as Python like the real one
(``exec_config``), and a positive control proves it: oneadmin's RAW line that runs code
does run, and a RAW line setting a harmless value reaches the file. Payloads that are not
refused must be in the deployed file, as values. No marker may appear on any host or on
the front-end.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import uuid
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nebula_xr.template import Template
from tests.cluster.cluster import Cluster
from tests.oned import OneDaemon, wait_for
from tests.test_tutorial import history
from tests.test_xen_cluster import add_cluster_hosts, start_daemon

ADMIN = "oneadmin:" + hashlib.sha1(b"secret").hexdigest()
ALICE = "alice:" + hashlib.sha1(b"alice-pw").hexdigest()
RUNNING, DONE, FAILED = (3, 3), (6, 0), (7, 0)
HOSTS = ("node01", "node02", "node03")

#: Where each field goes in a template: (attribute, vector key or None).
FIELDS: dict[str, tuple[str, str | None]] = {
    "MEMORY": ("MEMORY", None),
    "CPU": ("CPU", None),
    "NAME": ("NAME", None),
    "OS/KERNEL": ("OS", "KERNEL"),
    "OS/INITRD": ("OS", "INITRD"),
    "OS/ROOT": ("OS", "ROOT"),
    "OS/KERNEL_CMD": ("OS", "KERNEL_CMD"),
    "OS/BOOTLOADER": ("OS", "BOOTLOADER"),
    "DISK/SOURCE": ("DISK", "SOURCE"),
    "DISK/TARGET": ("DISK", "TARGET"),
    "DISK/SIZE": ("DISK", "SIZE"),
    "NIC/MAC": ("NIC", "MAC"),
    "NIC/BRIDGE": ("NIC", "BRIDGE"),
    "NIC/IP": ("NIC", "IP"),
    "GRAPHICS/LISTEN": ("GRAPHICS", "LISTEN"),
    "GRAPHICS/PASSWD": ("GRAPHICS", "PASSWD"),
    "RAW": ("RAW", "DATA"),
}
#: Fields oneadmin may set that a user may not: tried by both.
ADMIN_FIELDS = ("OS/BOOTLOADER", "DISK/SOURCE")
#: Deployment file variable holding each field's value (when it is written there).
IN_FILE = {"OS/KERNEL": "kernel", "OS/INITRD": "ramdisk", "OS/KERNEL_CMD": "extra"}


def payloads(marker: str) -> list[str]:
    """Values that create ``marker-<n>`` if they escape their literal or reach a shell."""
    m = marker
    return [
        f"x'; __import__('os').system('touch {m}-1'); y='",
        f'x"; __import__("os").system("touch {m}-2"); y="',
        f"x\\'; __import__('os').system('touch {m}-3'); y='",
        f"x' + str(__import__('os').system('touch {m}-4')) + '",
        f"$(touch {m}-5)",
        f"`touch {m}-6`",
        f"x; touch {m}-7 #",
        f"00:16:3e:00:00:01,script=/usr/bin/touch {m}-8",
        f"-oProxyCommand=touch {m}-9",
    ]


@dataclass
class Attempt:
    field: str
    owner: str
    value: str
    vid: int | None = None
    refused_at: str = ""  # "allocation", or the state the VM failed in
    in_file: bool = False


def template_for(field: str, value: str, image: Path) -> str:
    """A runnable template with ``value`` in ``field`` (template syntax via to_text)."""
    vectors: dict[str, dict[str, str]] = {
        "OS": {"KERNEL": "/boot/vmlinuz", "ROOT": "xvda1"},
        "DISK": {"SOURCE": str(image), "TARGET": "xvda", "CLONE": "yes"},
        "NIC": {"MAC": "00:16:3e:00:00:02", "BRIDGE": "onebr0"},
        "GRAPHICS": {"TYPE": "vnc", "LISTEN": "127.0.0.1"},
    }
    singles = {"NAME": "attack", "MEMORY": "16", "CPU": "0.1"}
    attribute, key = FIELDS[field]
    if field == "OS/BOOTLOADER":
        vectors["OS"] = {"BOOTLOADER": value}
    elif field == "DISK/SIZE":
        vectors["DISK"] = {"TYPE": "swap", "SIZE": value, "TARGET": "xvdb"}
    elif field == "RAW":
        vectors["RAW"] = {"TYPE": "xen", "DATA": value}
    elif key is None:
        singles[attribute] = value
    else:
        vectors[attribute][key] = value
    template = Template()
    for name, single in singles.items():
        template.add(name, single)
    for name, vector in vectors.items():
        template.add(name, vector)
    return template.to_text()


def allocation_refusal(field: str, owner: str) -> str | None:
    """What one.vm.allocate answers a payload in ``field`` of ``owner``'s VM; None when
    the payload must be accepted (to be refused, or carried safely, further on)."""
    if field in ("RAW", "OS/BOOTLOADER") and owner == "alice":
        return "can only be set by oneadmin"
    if field == "MEMORY":
        return "MEMORY must be a number of megabytes"
    if field == "CPU":
        return "CPU must be a number of CPUs"
    return None


def rpc(one: OneDaemon, session: str, method: str, *args: Any) -> Any:
    with xmlrpc.client.ServerProxy(one.url) as proxy:
        return getattr(proxy, method)(session, *args)


def state(one: OneDaemon, vid: int) -> tuple[int, int]:
    return one.vm_state(vid)


def settle(one: OneDaemon, vids: list[int], wanted: tuple[tuple[int, int], ...]) -> None:
    wait_for(
        lambda: all(state(one, vid) in wanted for vid in vids),
        timeout=120,
        what=f"VMs {vids} in {wanted}",
    )


def deployed_values(one: OneDaemon, vid: int) -> dict[str, Any]:
    """The front-end copy of the VM's first deployment file, parsed as literals only."""
    text = (one.location / "var" / str(vid) / "deployment.0").read_text()
    values = {}
    for node in ast.parse(text).body:
        assert isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name), text
        values[node.targets[0].id] = ast.literal_eval(node.value)
    return values


def markers_found(cluster: Cluster, marker: str) -> list[str]:
    """Marker files on the front-end and on every host (each host's own view)."""
    found = [str(p) for p in Path(marker).parent.glob(Path(marker).name + "*")]
    for host in HOSTS:
        listing = cluster.run(host, f"ls -d {marker}* 2>/dev/null; true", check=True)
        found += [f"{host}:{line}" for line in listing.stdout.split()]
    return found


def test_no_template_injection_reaches_a_shell(fast_cluster: Cluster, tmp_path: Path) -> None:
    c = fast_cluster
    marker = f"/tmp/nebula-xr-injected-{uuid.uuid4().hex[:12]}"
    images = tmp_path / "images"
    images.mkdir()
    image = images / "disk.img"
    image.write_bytes(b"\0" * 4096)
    for host in HOSTS:
        c.configure_xen(host, exec_config=True)
    # The daemon's ONE_AUTH file (tests.oned keeps one written before the start).
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "one_auth").write_text("oneadmin:secret\n")
    one = start_daemon(
        tmp_path / "one",
        c,
        str(c.vm_dir),
        timeout=120,
        vm_polling=600,  # a hundred guests polled every second would swamp 2 cores
        extra_settings=f'IMAGE_DIRS = "{images}"\n',
    )
    try:
        add_cluster_hosts(one, "tm_ssh")
        ok, _ = rpc(one, ADMIN, "one.user.allocate", "alice", hashlib.sha1(b"alice-pw").hexdigest())
        assert ok

        # Positive controls (oneadmin's RAW is copied verbatim): the fake xm really runs
        # the file, and a harmless RAW value really reaches it.
        control = c.vm_dir / "control-marker"
        controls = {
            "runs": f"import os; os.system('touch {control}')",
            "value": "on_crash = 'destroy'",
        }
        control_vids = {}
        for name, data in controls.items():
            text = template_for("RAW", data, image)
            ok, control_vids[name] = rpc(one, ADMIN, "one.vm.allocate", text)
            assert ok, control_vids[name]

        attempts = [
            Attempt(field, owner, value)
            for field in FIELDS
            for owner in (("alice", "oneadmin") if field in ADMIN_FIELDS else ("alice",))
            for value in payloads(marker)
        ]
        for attempt in attempts:
            session = ALICE if attempt.owner == "alice" else ADMIN
            text = template_for(attempt.field, attempt.value, image)
            ok, answer = rpc(one, session, "one.vm.allocate", text)
            if ok:
                attempt.vid = answer
            else:
                attempt.refused_at = "allocation"
            expected = allocation_refusal(attempt.field, attempt.owner)
            assert (not ok and expected in answer) if expected else ok, (attempt, answer)

        # Deploy everything, round robin over the hosts.
        hids = itertools.cycle(range(len(HOSTS)))
        live = [a.vid for a in attempts if a.vid is not None] + list(control_vids.values())
        for vid in live:
            assert rpc(one, ADMIN, "one.vm.deploy", vid, next(hids)) == [True]
        settle(one, live, (RUNNING, FAILED))

        assert any((c.private_dir(h) / "control-marker").exists() for h in HOSTS), (
            "the fake xm did not execute the deployment file: the suite would prove nothing"
        )
        assert deployed_values(one, control_vids["value"])["on_crash"] == "destroy"

        running = []
        for attempt in attempts:
            if attempt.vid is None:
                continue
            if state(one, attempt.vid) == FAILED:
                attempt.refused_at = "deploy"
                log = (one.location / "var" / str(attempt.vid) / "vm.log").read_text()
                assert "Error" in log or "Can not" in log, log
                continue
            running.append(attempt.vid)
            variable = IN_FILE.get(attempt.field)
            if variable is not None:
                assert deployed_values(one, attempt.vid)[variable] == attempt.value
                attempt.in_file = True

        # Cold migration, live migration, shutdown of everything that runs.
        for index, vid in enumerate(running):
            hid = history(one, vid)[-1]["hid"]
            live_move = index % 2 == 1
            assert rpc(one, ADMIN, "one.vm.migrate", vid, (hid + 1) % 3, live_move) == [True]
        settle(one, running, (RUNNING, FAILED))
        for vid in running:
            assert rpc(one, ADMIN, "one.vm.action", "shutdown", vid)[0] is True
        settle(one, running, (DONE, FAILED))

        found = markers_found(c, marker)
        attempted = len(attempts)
        refused_alloc = sum(a.refused_at == "allocation" for a in attempts)
        refused_deploy = sum(a.refused_at == "deploy" for a in attempts)
        reached = sum(a.in_file for a in attempts)
        print(
            f"\ninjection attack suite: {attempted} injections attempted, "
            f"{refused_alloc} refused at allocation, {refused_deploy} refused at deploy/prolog, "
            f"{len(running)} ran (deploy, migrate, live migrate, shutdown), "
            f"{reached} reached the deployment file as values, executed: {len(found)}"
        )
        assert found == []
        assert reached >= len(IN_FILE) * 4  # the quoted Python payloads are in the files
        assert len(running) > 0 and refused_deploy > 0 and refused_alloc > 0
    finally:
        one.stop()
        for host in HOSTS:
            c.run(host, f"rm -f {marker}*")
