"""The leases through the daemon's API: ``haizea.lease.list`` and ``haizea.lease.info``.

Both answer like the 1.4 info methods, ``[true, <xml>]`` or ``[false, message]``. A
lease belongs to the owner of its VMs: oneadmin (uid 0) sees every lease, other users
their own. Times are epoch seconds; -1 is "not planned" (or "unlimited" for an end).
"""

from __future__ import annotations

import math
from typing import Any

from lxml import etree

from nebula_xr.plugin_manager import XmlRpcMethod
from nebula_xr_haizea.planner import Lease
from nebula_xr_haizea.scheduler import HaizeaScheduler

ADMIN = 0


def _seconds(value: float | None) -> str:
    return "-1" if value is None or math.isinf(value) else str(int(value))


def lease_element(scheduler: HaizeaScheduler, lid: int) -> etree._Element:
    if lid in scheduler.leases:
        lease: Lease = scheduler.leases[lid]
        vids = scheduler.vids_ever[lid]
        state = lease.state
    else:
        lease, vids_list, state = scheduler.finished[lid]
        vids = tuple(vids_list)
    reservation = scheduler.last_plan.reservations.get(lid)
    queued = lid in scheduler.last_plan.queued
    element = etree.Element("LEASE")
    fields: list[tuple[str, Any]] = [
        ("ID", lid),
        ("UID", scheduler.owners.get(lid, ADMIN)),
        ("TYPE", lease.kind.value),
        ("STATE", state.value),
        ("VMS", ",".join(str(vid) for vid in vids)),
        ("HOSTS", ",".join(str(hid) for hid in lease.hosts)),
        ("PREEMPTIBLE", int(lease.preemptible)),
        ("SUBMITTED", _seconds(lease.submitted)),
        ("DURATION", _seconds(lease.duration)),
        ("WORK_DONE", _seconds(lease.work_done)),
        ("START", _seconds(reservation.start if reservation and not queued else None)),
        ("END", _seconds(reservation.end if reservation and not queued else None)),
        ("SUSPEND", _seconds(reservation.suspend_at if reservation else None)),
    ]
    for name, value in fields:
        etree.SubElement(element, name).text = str(value)
    return element


def _visible(scheduler: HaizeaScheduler, uid: int, lid: int) -> bool:
    return uid == ADMIN or scheduler.owners.get(lid) == uid


def lease_list(scheduler: HaizeaScheduler, uid: int) -> list[Any]:
    pool = etree.Element("LEASE_POOL")
    for lid in sorted({*scheduler.leases, *scheduler.finished}):
        if _visible(scheduler, uid, lid):
            pool.append(lease_element(scheduler, lid))
    return [True, etree.tostring(pool, encoding="unicode")]


def lease_info(scheduler: HaizeaScheduler, uid: int, lid: int) -> list[Any]:
    known = lid in scheduler.leases or lid in scheduler.finished
    if not known or not _visible(scheduler, uid, lid):
        return [False, f"Error getting lease with ID = {lid}"]
    return [True, etree.tostring(lease_element(scheduler, lid), encoding="unicode")]


def methods(scheduler: HaizeaScheduler) -> list[XmlRpcMethod]:
    return [
        XmlRpcMethod(
            "haizea.lease.list",
            lambda uid: lease_list(scheduler, uid),
            "A:",
            "Returns the Haizea leases: state, VMs, hosts, planned start and end",
        ),
        XmlRpcMethod(
            "haizea.lease.info",
            lambda uid, lid: lease_info(scheduler, uid, lid),
            "A:i",
            "Returns one Haizea lease",
        ),
    ]
