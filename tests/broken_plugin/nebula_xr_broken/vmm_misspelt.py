"""Imports, but implements a hook that does not exist (a typo)."""

from nebula_xr import hookimpl


@hookimpl
def nebula_xr_vmm_drvier(config, context):  # the typo is the point
    return None
