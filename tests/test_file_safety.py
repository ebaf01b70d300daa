"""Files a template can not reach, and files nobody else can (issue 7).

* DISK SOURCE through tm_nfs (which runs every command on the front-end, so real ``cp``
  and ``ln`` run here): a VM not owned by oneadmin reads only under IMAGE_DIRS, resolved
  (``..`` and symlinks refused), URLs only when allowed; nobody's source is option-like.
* Modes: image files 0660, their directories 0770, VM directories 0770.
* The ssh control directory: made 0700, and refused when another user made it first.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from nebula_xr.drivers.base import DriverConfig, DriverContext, DriverError, TransferCommand
from nebula_xr.drivers.remote import RemoteRunner, private_directory
from nebula_xr.users import ADMIN
from nebula_xr_plugins.tm_nfs import NfsTransferDriver
from tests.oned import OneDaemon, write_conf

ALICE = 5


def nfs_driver(tmp_path: Path, owner: int, settings: str) -> NfsTransferDriver:
    conf = tmp_path / "tm_nfs.conf"
    conf.write_text(f"SSH_CONTROL_DIR = {tmp_path}/ssh\n{settings}")
    context = DriverContext(
        reactor=reactor,
        var_dir=tmp_path / "var",
        etc_dir=tmp_path,
        frontend="front",
        vm_log=lambda vid, message: None,
        log=lambda message: None,
        vm_owner=lambda vid: owner,
    )
    return NfsTransferDriver(DriverConfig("tm_nfs", "tm", "tm_nfs", str(conf)), context)


@pytest.fixture
def images(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    (images / "ok.img").write_bytes(b"image")
    (tmp_path / "secret").write_bytes(b"front-end secret")
    (images / "escape.img").symlink_to(tmp_path / "secret")
    return images


def clone(driver: NfsTransferDriver, source: str, target: Path, action: str = "CLONE"):
    command = TransferCommand(action, (source, f"node01:{target}"))
    return driver.transfer(7, target.parent / "script", [command])


@pytest_twisted.inlineCallbacks
def test_a_users_source_stays_under_image_dirs(tmp_path: Path, images: Path) -> None:
    driver = nfs_driver(tmp_path, ALICE, f'IMAGE_DIRS = "{images}"\n')
    target = tmp_path / "vm" / "7" / "images" / "disk.0"
    yield clone(driver, f"front:{images}/ok.img", target)
    assert target.read_bytes() == b"image"
    assert stat.S_IMODE(target.stat().st_mode) == 0o660
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o770

    refused = [
        (f"front:{tmp_path}/secret", "is not under IMAGE_DIRS"),
        (f"front:{images}/../secret", "is not under IMAGE_DIRS"),
        (f"front:{images}/escape.img", "is not under IMAGE_DIRS"),
        (f"node02:{images}/ok.img", "is not on the front-end"),
        ("http://example.invalid/a.img", "URL sources are not allowed"),
        ("front:-rf", "Invalid image source"),
    ]
    for index, (source, message) in enumerate(refused):
        for action in ("CLONE", "LN"):
            other = tmp_path / "vm" / str(index) / f"disk.{action}"
            with pytest.raises(DriverError, match=message):
                yield clone(driver, source, other, action)
            assert not other.exists()


@pytest_twisted.inlineCallbacks
def test_oneadmin_reads_anywhere_but_never_an_option(tmp_path: Path, images: Path) -> None:
    driver = nfs_driver(tmp_path, ADMIN, f'IMAGE_DIRS = "{images}"\n')
    target = tmp_path / "vm" / "disk.0"
    yield clone(driver, f"front:{tmp_path}/secret", target)
    assert target.read_bytes() == b"front-end secret"
    with pytest.raises(DriverError, match="Invalid image source"):
        yield clone(driver, "front:--help", tmp_path / "vm" / "disk.1")
    with pytest.raises(DriverError, match="Invalid URL source"):
        yield clone(driver, "http://a b/x", tmp_path / "vm" / "disk.2")
    with pytest.raises(DriverError, match="Invalid swap size"):
        command = TransferCommand("MKSWAP", ("1 of=/etc/x", f"node01:{tmp_path}/vm/disk.3"))
        yield driver.transfer(7, tmp_path / "script", [command])


def test_vm_directories_are_not_world_writable(tmp_path: Path) -> None:
    write_conf(tmp_path)
    one = OneDaemon(tmp_path).start()
    try:
        ok, vid = one.call("one.vmallocate", "NAME = a\nMEMORY = 64\n")
        assert ok
    finally:
        one.stop()
    mode = stat.S_IMODE((tmp_path / "var" / str(vid)).stat().st_mode)
    assert mode & 0o007 == 0 and mode & 0o700 == 0o700


def control_dir(runner: RemoteRunner) -> str:
    control = next(o for o in runner.ssh if o.startswith("ControlPath="))
    return control.removeprefix("ControlPath=").removesuffix("/%C")


def test_control_directory_is_made_private() -> None:
    with tempfile.TemporaryDirectory(prefix="nx") as scratch:
        path = os.path.join(scratch, "ssh")
        assert control_dir(RemoteRunner(reactor, control_dir=path)) == path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
        assert os.stat(path).st_uid == os.geteuid()
        # Too long for a socket path: a fresh private mkdtemp, not a predictable name.
        long = os.path.join(scratch, "x" * 60)
        short = control_dir(RemoteRunner(reactor, control_dir=long))
        assert len(short) <= 48 and stat.S_IMODE(os.stat(short).st_mode) == 0o700
        assert short != control_dir(RemoteRunner(reactor, control_dir=long + "y"))
        os.rmdir(short)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to nobody needs root")
def test_a_control_directory_made_by_another_user_is_refused(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    # A short path, as ssh sockets need: a longer one would be replaced by a mkdtemp.
    scratch = Path(tempfile.mkdtemp(prefix="nx"))
    taken = scratch / "ssh"
    taken.mkdir(mode=0o700)
    os.chown(taken, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(DriverError, match=f"ssh control directory {taken} is not private"):
        private_directory(str(taken))

    # Through the daemon: it does not start, and says why.
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "xen.conf").write_text(f"SSH_CONTROL_DIR = {taken}\n")
    drivers = (
        'IM_MAD = [ name = "im_xen", executable = "im_xen", arguments = "xen.conf" ]\n'
        'VM_MAD = [ name = "vmm_xen", executable = "vmm_dummy", type = "xen" ]\n'
        'TM_MAD = [ name = "tm_nfs", executable = "tm_dummy" ]\n'
    )
    write_conf(tmp_path, drivers=drivers)
    try:
        with pytest.raises(RuntimeError, match=f"Driver im_xen: The ssh control directory {taken}"):
            OneDaemon(tmp_path).start()
        assert os.stat(taken).st_uid == nobody.pw_uid  # left alone, not taken over
    finally:
        shutil.rmtree(scratch)


def test_a_shared_or_linked_control_directory_is_refused(tmp_path: Path) -> None:
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o755)
    with pytest.raises(DriverError, match="mode 0755"):
        private_directory(str(open_dir))
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    with pytest.raises(DriverError, match="is not private"):
        private_directory(str(link))
