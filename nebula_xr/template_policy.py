"""What a template may hold, checked once at allocation (issue 7).

Two kinds of limits, both answered with a clear ``[false, "..."]`` by the request
managers (1.2 and 1.4 alike):

* **Storable**: one.db joins a vector's pairs with ``@^_^@`` and the 1.2 plain-text info
  replies put one attribute per line, so a name, key or value holding the separator or a
  line break would come back as other attributes after a restart, or forge lines in
  ``one.vmget_info``. Such templates (VM and network) are refused.
* **Privileged**: ``RAW`` (copied verbatim into the hypervisor's file) and
  ``OS/BOOTLOADER`` (a program dom0 runs as root) are oneadmin's only, as in 1.4.
"""

from __future__ import annotations

from nebula_xr.template import VECTOR_SEPARATOR, Template
from nebula_xr.users import ADMIN

#: Attributes only oneadmin may set: (name, vector key or None for the whole attribute).
ADMIN_ONLY = (("RAW", None), ("OS", "BOOTLOADER"))

_LINE_BREAKS = ("\n", "\r")


class TemplateRefused(Exception):
    """The template can not be accepted; ``str(error)`` is the reply's message."""


def _problem(text: str) -> str | None:
    if VECTOR_SEPARATOR in text:
        return f"contains {VECTOR_SEPARATOR!r}, which one.db can not store"
    if any(brk in text for brk in _LINE_BREAKS):
        return "contains a line break, which the 1.2 info replies can not show"
    return None


def check_storable(template: Template, kind: str) -> None:
    """Refuse names, vector keys and values that one.db or the text replies would alter."""
    for name, value in template.attributes:
        pieces = [(name, name)]
        if isinstance(value, str):
            pieces.append((name, value))
        else:
            for key, item in value.items():
                pieces += [(f"{name}/{key}", key), (f"{name}/{key}", item)]
        for where, text in pieces:
            problem = _problem(text)
            if problem is not None:
                raise TemplateRefused(f"Error in {kind} template: {where} {problem}")


def check_vm_template(template: Template, uid: int) -> None:
    """Everything a VM template of user ``uid`` must satisfy before it is allocated."""
    check_storable(template, "VM")
    if uid == ADMIN:
        return
    for name, key in ADMIN_ONLY:
        for value in template.get_all(name):
            if key is None or (isinstance(value, dict) and key in value):
                attribute = name if key is None else f"{name}/{key}"
                raise TemplateRefused(f"{attribute} can only be set by oneadmin")
