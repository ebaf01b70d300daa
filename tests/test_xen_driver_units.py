"""vmm_xen and im_xen without a cluster: the deployment file byte for byte, and parsing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from nebula_xr.drivers.base import (
    VIRTUAL_MACHINE,
    DriverConfig,
    DriverContext,
    DriverError,
    VMAction,
)
from nebula_xr.template import Template
from nebula_xr_plugins.im_xen import parse_probe
from nebula_xr_plugins.vmm_xen import XenDriver, deployment_file, parse_xentop

SAMPLE = """NAME = vm-example
CPU = 0.5
MEMORY = 128
OS = [ kernel = /vmlinuz, initrd = /initrd.img, root = sda1 ]
DISK = [ source = /local/xen/domains/etch/disk.img, target = sda1, readonly = no ]
DISK = [ source = /local/xen/domains/etch/swap.img, target = sda2, readonly = no ]
NIC = [ mac = 00:ff:72:17:20:27 ]
NIC = [ network = "Private LAN", mac = 00:03:0a:00:00:01, bridge = eth0, ip = 10.0.0.1 ]
GRAPHICS = [ type = vnc, listen = 127.0.0.1, port = 5 ]
"""


def vm(text: str, vid: int = 3) -> VMAction:
    return VMAction(
        vid,
        "node01",
        "",
        Template.parse(text),
        "/srv/one/var",
        f"/srv/one/var/{vid}/images",
        Path("/tmp"),
        0,
    )


def test_the_spec_example_byte_for_byte() -> None:
    assert deployment_file(vm(SAMPLE), Template.parse("CREDIT = 256\n")) == (
        "name = 'one-3'\n"
        "#O CPU_CREDITS = 128\n"
        "memory  = '128'\n"
        "kernel = '/vmlinuz'\n"
        "ramdisk = '/initrd.img'\n"
        "root = '/dev/sda1'\n"
        "disk = [\n"
        "    'tap:aio:/srv/one/var/3/images/disk.0,sda1,w',\n"
        "    'tap:aio:/srv/one/var/3/images/disk.1,sda2,w',\n"
        "]\n"
        "vif = [\n"
        "    'mac=00:ff:72:17:20:27',\n"
        "    'mac=00:03:0a:00:00:01,bridge=eth0',\n"
        "]\n"
        "vfb = ['type=vnc,vnclisten=127.0.0.1,vncdisplay=5']\n"
    )


def test_defaults_bootloader_and_edge_cases() -> None:
    defaults = Template.parse(
        "MEMORY = 64\nOS = [ kernel = /k, root = hda1, kernel_cmd = ro ]\n", replace=True
    )
    text = deployment_file(
        vm(
            "OS = [ initrd = /i ]\nNIC = [ bridge = br0 ]\nNIC = [ ip = 1.2.3.4 ]\n"
            "DISK = [ target = xvda, readonly = YES ]\nGRAPHICS = [ type = sdl ]\n"
            "RAW = [ type = XEN, data = \"on_crash = 'destroy'\" ]\n"
        ),
        defaults,
    )
    assert text.splitlines() == [
        "name = 'one-3'",
        "#O CPU_CREDITS = 1",
        "memory  = '64'",
        "kernel = '/k'",
        "ramdisk = '/i'",
        "root = '/dev/hda1'",
        "extra = 'ro'",
        "disk = [",
        "    'tap:aio:/srv/one/var/3/images/disk.0,xvda,r',",
        "]",
        "vif = [",
        "    ' bridge=br0',",
        "    '',",
        "]",
        "on_crash = 'destroy'",
    ]
    loader = deployment_file(vm("MEMORY = 1\nOS = [ bootloader = /usr/bin/pygrub ]\n"), Template())
    assert 'bootloader = "/usr/bin/pygrub"' in loader and "kernel" not in loader


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("OS = [ kernel = /k ]\n", "MEMORY"),
        ("MEMORY = 64\n", "kernel or bootloader"),
        ("MEMORY = 64\nOS = [ kernel = /k ]\nDISK = [ source = /a ]\n", "target"),
    ],
)
def test_files_that_cannot_be_made(template: str, message: str) -> None:
    with pytest.raises(DriverError, match=message):
        deployment_file(vm(template), Template())


XENTOP = """      NAME  STATE   CPU(sec) CPU(%)     MEM(k) MEM(%)  MAXMEM(k) MAXMEM(%) VCPUS NETS NETTX(k) NETRX(k) VBDS   VBD_OO   VBD_RD   VBD_WR VBD_RSECT VBD_WSECT SSID
  Domain-0 -----r         50    0.0     524288   12.5   no limit       n/a     2    0        0        0    0        0        0        0          0          0    0
     one-1 --b---         10    0.0     131072    3.1     131072       3.1     1    1       10       20    1        0        0        0          0          0    0
    one-10 -----r          9    0.0      65536    1.6      65536       1.6     1    1        1        2    1        0        0        0          0          0    0
      NAME  STATE   CPU(sec) CPU(%)     MEM(k) MEM(%)  MAXMEM(k) MAXMEM(%) VCPUS NETS NETTX(k) NETRX(k) VBDS   VBD_OO   VBD_RD   VBD_WR VBD_RSECT VBD_WSECT SSID
  Domain-0 -----r         51    1.5     524288   12.5   no limit       n/a     2    0        0        0    0        0        0        0          0          0    0
     one-1 --b---         11   12.7     131072    3.1     131072       3.1     1    1       15       25    1        0        0        0          0          0    0
    one-10 --p---          9    0.0      65536    1.6      65536       1.6     1    1        3        4    1        0        0        0          0          0    0
"""


def test_xentop_takes_the_domains_last_line() -> None:
    assert parse_xentop(XENTOP, "one-1") == {
        "USEDMEMORY": "131072",
        "USEDCPU": "12.7",
        "NETTX": "15",
        "NETRX": "25",
        "STATE": "a",
    }
    assert parse_xentop(XENTOP, "one-10")["STATE"] == "p"
    assert parse_xentop(XENTOP, "one-2") == {"STATE": "d"}
    crashed = XENTOP.replace("one-10 --p---", "migrating-one-10 ---c--")
    assert parse_xentop(crashed, "one-10")["STATE"] == "e"
    for flags in ("-----r", "--b---", "--p---"):
        migrating = XENTOP.replace("one-10 --p---", f"migrating-one-10 {flags}")
        assert parse_xentop(migrating, "one-10")["STATE"] == "m", flags
    several = XENTOP.replace("one-10 --p---", "one-10 --ps--")
    assert parse_xentop(several, "one-10")["STATE"] == "u"


def test_probe_units_and_sums() -> None:
    output = (
        "HOSTNAME=node07\nARCH=x86_64\nMODELNAME=AMD Opteron(tm), rev. E\n--- info\n"
        "host                   : node07\nnr_cpus                : 4\ncpu_mhz                : 2211\n"
        "total_memory           : 4096\nfree_memory            : 1024\n--- xentop\n" + XENTOP
    )
    attributes = parse_probe(output)
    assert attributes == {
        "HOSTNAME": "node07",
        "ARCH": "x86_64",
        "MODELNAME": "AMD Opteron(tm), rev. E",
        "HYPERVISOR": "xen",
        "TOTALCPU": "400",
        "CPUSPEED": "2211",
        "TOTALMEMORY": "4194304",
        "FREEMEMORY": "1048576",
        "USEDMEMORY": "3145728",
        "USEDCPU": "14",
        "FREECPU": "386",
        "NETTX": "18",
        "NETRX": "29",
    }
    with pytest.raises(DriverError):
        parse_probe("HOSTNAME=x\n--- info\n--- xentop\n")


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [("", "/usr/sbin/xl"), ("own.conf", "/usr/sbin/xm")],
)
def test_vmm_xen_shares_im_xen_settings_without_arguments(
    tmp_path: Path, arguments: str, expected: str
) -> None:
    """A 1.2 VM_MAD names no file: vmm_xen then uses the toolstack im_xen monitors with."""
    (tmp_path / "im_xen").mkdir()
    (tmp_path / "im_xen" / "im_xen.conf").write_text("TOOLSTACK = xl\nSUDO = no\n")
    (tmp_path / "own.conf").write_text("SUDO = no\n")
    logged: list[str] = []
    context = DriverContext(
        reactor=None,
        var_dir=tmp_path,
        etc_dir=tmp_path,
        frontend="front",
        vm_log=lambda vid, message: None,
        log=logged.append,
    )
    config = DriverConfig(
        name="vmm_xen", kind=VIRTUAL_MACHINE, plugin="vmm_xen", arguments=arguments, type="xen"
    )
    driver = XenDriver(config, context)
    assert driver.tools.tool("create", "f") == [expected, "create", "f"]
    source = tmp_path / ("im_xen/im_xen.conf" if not arguments else arguments)
    toolstack = expected.rsplit("/", 1)[1]
    assert logged == [f"vmm_xen: Xen toolstack {toolstack} (from {source})"]


XL_MIGRATION_FAILURE = """\
migration target: Ready to receive domain.
Saving to migration stream new xl format (info 0x1/0x0/1234)
Loading new save file <incoming migration stream> (new xl fmt info 0x1/0x0/1234)
 Savefile contains xl domain config in JSON format
Parsing config from <saved>
libxl: error: libxl_device.c:1093:device_backend_callback: unable to add device with path /srv/one/var/3/images/disk.0
migration target: Domain creation failed (code -3).
migration sender: Target reported startup failure, trying to resume at sender.
Migration failed, resuming at sender.
"""


@pytest_twisted.ensureDeferred
async def test_failed_live_migration_says_what_the_destination_said(tmp_path: Path) -> None:
    """Through real processes: an ssh stand-in running locally, an xl that fails as xl does
    when the disk is missing on the destination."""
    ssh = tmp_path / "ssh"
    ssh.write_text('#!/bin/sh\nfor last; do :; done\nexec sh -c "$last"\n')
    xl = tmp_path / "xl"
    xl.write_text(f"#!/bin/sh\ncat >&2 <<'EOF'\n{XL_MIGRATION_FAILURE}EOF\nexit 1\n")
    for script in (ssh, xl):
        script.chmod(0o755)
    (tmp_path / "xen.conf").write_text(
        f'TOOLSTACK = xl\nSUDO = no\nXL_PATH = "{xl}"\nSSH = "{ssh}"\nSSH_CONTROL_DIR = ""\n'
    )
    context = DriverContext(
        reactor=reactor,
        var_dir=tmp_path,
        etc_dir=tmp_path,
        frontend="front",
        vm_log=lambda vid, message: None,
        log=lambda message: None,
    )
    config = DriverConfig(
        name="vmm_xen", kind=VIRTUAL_MACHINE, plugin="vmm_xen", arguments="xen.conf", type="xen"
    )
    driver = XenDriver(config, context)
    action = replace(vm(SAMPLE), deploy_id="one-3")
    with pytest.raises(DriverError) as raised:
        await driver.migrate(action, "node02")
    assert str(raised.value) == (
        "Error migrating to node02: libxl: error: libxl_device.c:1093:device_backend_callback: "
        "unable to add device with path /srv/one/var/3/images/disk.0 / "
        "migration target: Domain creation failed (code -3)."
    )
