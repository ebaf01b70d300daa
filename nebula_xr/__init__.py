"""nebula-xr: a drop-in re-implementation of the OpenNebula 1.2 engine (oned).

Plugins write ``from nebula_xr import hookimpl`` and register a module under the
``nebula_xr`` entry-point group; see :mod:`nebula_xr.hookspecs` for the hooks.
"""

import pluggy

__version__ = "0.1.0"

#: Entry-point group (and pluggy project name) of nebula-xr plugins.
PROJECT_NAME = "nebula_xr"

hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = ["PROJECT_NAME", "__version__", "hookimpl"]
