"""tm_nfs: images on storage shared by the front-end and the hosts (NFS), as in 1.2.

VM_DIR is mounted at the same path everywhere, so every command runs on the front-end:
CLONE copies (or downloads an ``http://`` source), LN links, MKSWAP makes a sparse swap
file, MV only moves a disk being saved to ``$VAR/<vid>/disk.<i>`` (anything else
already is where it must be), DELETE removes the VM's directory.
"""

from __future__ import annotations

import re

from twisted.internet import defer

from nebula_xr import hookimpl
from nebula_xr.drivers.base import DriverConfig, DriverContext, DriverError, TransferDriver
from nebula_xr_plugins.transfer import (
    IMAGE_MODE,
    ScriptTransferDriver,
    is_url,
    mkswap_script,
    prepare_dir_script,
    split_location,
    swap_size,
)


class NfsTransferDriver(ScriptTransferDriver):
    @defer.inlineCallbacks
    def clone(self, vid: int, source: str, destination: str) -> defer.Deferred:
        _, target = split_location(destination)
        checked = self.checked_source(vid, source)
        yield self.local(vid, [*prepare_dir_script(), target], "Error creating the directory")
        if is_url(checked):
            fetch = ["wget", "-q", "-O", target, "--", checked]
        else:
            fetch = ["cp", "--", split_location(checked)[1], target]
        yield self.local(vid, fetch, f"Error copying {source}")
        yield self.local(vid, ["chmod", IMAGE_MODE, "--", target], "Error setting permissions")

    @defer.inlineCallbacks
    def ln(self, vid: int, source: str, destination: str) -> defer.Deferred:
        _, target = split_location(destination)
        checked = self.checked_source(vid, source)
        if is_url(checked):
            raise DriverError(f"Can not link to a URL: {source}")
        yield self.local(vid, [*prepare_dir_script(), target], "Error creating the directory")
        link = ["ln", "-sf", "--", split_location(checked)[1], target]
        yield self.local(vid, link, f"Error linking {source}")

    def mkswap(self, vid: int, size: str, destination: str) -> defer.Deferred:
        _, target = split_location(destination)
        try:
            argv = [*mkswap_script(), swap_size(size), target]
        except DriverError:
            return defer.fail()
        return self.local(vid, argv, "Error creating swap")

    def mv(self, vid: int, source: str, destination: str) -> defer.Deferred:
        source_path, target = split_location(source)[1], split_location(destination)[1]
        saved_disk = re.fullmatch(rf"{re.escape(str(self.context.var_dir))}/+.+/disk\..+", target)
        if source_path == target or not saved_disk:
            return defer.succeed(None)  # shared storage: already in place
        return self.local(vid, ["mv", "--", source_path, target], f"Error moving {source}")

    def delete(self, vid: int, location: str) -> defer.Deferred:
        return self.local(vid, ["rm", "-rf", "--", split_location(location)[1]], "Error deleting")


@hookimpl
def nebula_xr_tm_driver(config: DriverConfig, context: DriverContext) -> TransferDriver | None:
    if config.plugin == "tm_nfs":
        return NfsTransferDriver(config, context)
    return None
