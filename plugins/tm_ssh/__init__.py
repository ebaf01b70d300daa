"""tm_ssh: images copied between the front-end and the hosts with scp, as in 1.2.

No shared storage: CLONE and LN copy the image to the host (``http://`` sources are
downloaded there with the whole URL, which 1.2 mangled), MKSWAP makes the swap file on
the host, MV really moves a directory (copy, then remove the source), DELETE removes it.
``front-end:path`` locations are handled locally.
"""

from __future__ import annotations

from twisted.internet import defer

from nebula_xr import hookimpl
from nebula_xr.drivers.base import DriverConfig, DriverContext, DriverError, TransferDriver
from nebula_xr.drivers.remote import check_host
from nebula_xr_plugins.transfer import (
    DIR_MODE,
    IMAGE_MODE,
    ScriptTransferDriver,
    is_url,
    mkswap_script,
    parent,
    prepare_dir_script,
    split_location,
    swap_size,
)


class SshTransferDriver(ScriptTransferDriver):
    def _scp_location(self, location: str) -> str:
        host, path = split_location(location)
        if self.is_frontend(host):
            return path
        return f"{check_host(host)}:{path}"

    def _copy(self, vid: int, source: str, destination: str, recursive: bool) -> defer.Deferred:
        argv = [*self.scp, "-q", "-3"] + (["-r"] if recursive else [])
        try:
            argv += ["--", self._scp_location(source), self._scp_location(destination)]
        except Exception:  # an invalid host name
            return defer.fail()
        return self.local(vid, argv, f"Error copying {source} to {destination}")

    @defer.inlineCallbacks
    def clone(self, vid: int, source: str, destination: str) -> defer.Deferred:
        host, target = split_location(destination)
        checked = self.checked_source(vid, source)
        yield self.on(host, vid, [*prepare_dir_script(), target], "Error creating the directory")
        if is_url(checked):
            fetch = ["wget", "-q", "-O", target, "--", checked]
            yield self.on(host, vid, fetch, f"Error downloading {source}")
        else:
            yield self._copy(vid, checked, destination, recursive=False)
        yield self.on(host, vid, ["chmod", IMAGE_MODE, "--", target], "Error setting permissions")

    ln = clone  # without shared storage a link is a copy, as in 1.2

    def mkswap(self, vid: int, size: str, destination: str) -> defer.Deferred:
        host, target = split_location(destination)
        try:
            argv = [*mkswap_script(), swap_size(size), target]
        except DriverError:
            return defer.fail()
        return self.on(host, vid, argv, "Error creating swap")

    @defer.inlineCallbacks
    def mv(self, vid: int, source: str, destination: str) -> defer.Deferred:
        if source == destination:
            return None  # a move onto itself followed by rm -rf would destroy it
        source_host, source_path = split_location(source)
        host, target = split_location(destination)
        yield self.on(
            host,
            vid,
            ["mkdir", "-p", "-m", DIR_MODE, "--", parent(target)],
            "Error creating the directory",
        )
        # Like 1.2's `scp -r`: into an existing directory the source lands nested (the
        # stop epilog leaves $VAR/<vid>/images, which the resume prolog moves back).
        yield self._copy(vid, source, destination, recursive=True)
        yield self.on(
            source_host, vid, ["rm", "-rf", "--", source_path], "Error removing the source"
        )

    def delete(self, vid: int, location: str) -> defer.Deferred:
        host, path = split_location(location)
        return self.on(host, vid, ["rm", "-rf", "--", path], "Error deleting")


@hookimpl
def nebula_xr_tm_driver(config: DriverConfig, context: DriverContext) -> TransferDriver | None:
    if config.plugin == "tm_ssh":
        return SshTransferDriver(config, context)
    return None
