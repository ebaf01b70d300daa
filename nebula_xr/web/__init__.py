"""The web console: hosts, VMs and networks in a browser, served by the daemon (``WEB``)."""

from nebula_xr.web.server import History, WebConsole, WebService

__all__ = ["History", "WebConsole", "WebService"]
