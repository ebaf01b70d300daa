"""The lease a VM asks for, read from Haizea 1.0's ``HAIZEA`` template vector.

``HAIZEA = [ START = ..., DURATION = ..., PREEMPTIBLE = ..., GROUP = ... ]`` as Haizea's
OpenNebula front-end read it:

* ``START``: ``now`` (immediate), ``best_effort``, ``+HH:MM:SS`` (that long after the
  VM was submitted) or ``YYYY-MM-DD HH:MM:SS`` (local time): the last two make an
  advance reservation.
* ``DURATION``: ``HH:MM:SS`` or ``unlimited``.
* ``PREEMPTIBLE``: ``yes`` or ``no``.
* ``GROUP`` (optional): VMs naming the same group form one multi-node lease.

Haizea required the first three whenever the vector was present and crashed on
anything else; here each mistake is a :class:`LeaseRequestError` whose message goes
to the VM's log. A VM without the vector asks for an immediate, unlimited,
non-preemptible lease, as in Haizea.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from datetime import datetime

from nebula_xr.template import Template

_DURATION = re.compile(r"(\d+):([0-5]\d):([0-5]\d)")
_ABSOLUTE = re.compile(r"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}")


class LeaseRequestError(ValueError):
    """The HAIZEA vector of a VM is not a lease request."""


class LeaseKind(enum.Enum):
    ADVANCE_RESERVATION = "advance_reservation"
    IMMEDIATE = "immediate"
    BEST_EFFORT = "best_effort"


@dataclass(frozen=True)
class LeaseRequest:
    kind: LeaseKind
    #: Epoch seconds an advance reservation starts at; None for the other kinds.
    start: float | None
    #: Seconds; ``math.inf`` when unlimited.
    duration: float
    preemptible: bool
    group: str | None


def parse_duration(text: str) -> float:
    """``HH:MM:SS`` (hours may exceed 23) in seconds."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise LeaseRequestError(f"HAIZEA DURATION {text!r} is not HH:MM:SS or unlimited")
    hours, minutes, seconds = (int(part) for part in match.groups())
    return float(hours * 3600 + minutes * 60 + seconds)


def _start(text: str, submitted: float) -> tuple[LeaseKind, float | None]:
    value = text.strip()
    if value == "now":
        return LeaseKind.IMMEDIATE, None
    if value == "best_effort":
        return LeaseKind.BEST_EFFORT, None
    if value.startswith("+"):
        try:
            offset = parse_duration(value[1:])
        except LeaseRequestError:
            raise LeaseRequestError(f"HAIZEA START {text!r} is not +HH:MM:SS") from None
        return LeaseKind.ADVANCE_RESERVATION, submitted + offset
    if _ABSOLUTE.fullmatch(value):
        try:
            return LeaseKind.ADVANCE_RESERVATION, datetime.fromisoformat(value).timestamp()
        except (ValueError, OverflowError, OSError):
            # Out of the calendar, or out of what the platform's local time can convert.
            raise LeaseRequestError(f"HAIZEA START {text!r} is not a valid date") from None
    raise LeaseRequestError(
        f"HAIZEA START {text!r} is not now, best_effort, +HH:MM:SS or YYYY-MM-DD HH:MM:SS"
    )


def parse_lease_request(template: Template, submitted: float) -> LeaseRequest:
    """The lease a VM template asks for; ``submitted`` is the VM's submission time."""
    if template.get("HAIZEA") is None:
        return LeaseRequest(LeaseKind.IMMEDIATE, None, math.inf, False, None)
    vector = template.get_vector("HAIZEA")
    if vector is None:
        raise LeaseRequestError("HAIZEA must be a vector: HAIZEA = [ START = ..., ... ]")
    unknown = sorted(set(vector) - {"START", "DURATION", "PREEMPTIBLE", "GROUP"})
    if unknown:
        raise LeaseRequestError(f"HAIZEA has unknown attributes: {', '.join(unknown)}")
    missing = [key for key in ("START", "DURATION", "PREEMPTIBLE") if key not in vector]
    if missing:
        raise LeaseRequestError(f"HAIZEA lacks {', '.join(missing)}")
    kind, start = _start(vector["START"], submitted)
    duration_text = vector["DURATION"].strip()
    duration = math.inf if duration_text == "unlimited" else parse_duration(duration_text)
    if duration <= 0:
        raise LeaseRequestError("HAIZEA DURATION must be longer than 00:00:00")
    if kind is LeaseKind.ADVANCE_RESERVATION and math.isinf(duration):
        raise LeaseRequestError("an advance reservation (HAIZEA START) needs a DURATION")
    preemptible = vector["PREEMPTIBLE"].strip()
    if preemptible not in ("yes", "no"):
        raise LeaseRequestError(f"HAIZEA PREEMPTIBLE {vector['PREEMPTIBLE']!r} is not yes or no")
    group = vector.get("GROUP", "").strip() or None
    return LeaseRequest(kind, start, duration, preemptible == "yes", group)
