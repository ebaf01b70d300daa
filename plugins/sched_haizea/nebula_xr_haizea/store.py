"""What the plugin keeps in one.db: what it cannot rebuild from the VMs after a restart.

Two tables of its own (declared with ``nebula_xr_tables``, written through the daemon's
group-commit writer; the 1.2 tables are never touched):

* ``haizea_rates``: the suspend, resume and migrate rates corrected by real ones;
* ``haizea_finished``: the leases that are over (done, failed, rejected), for listing.
"""

from __future__ import annotations

import math

import peewee

from nebula_xr.database import Delete, PluginStore, PluginTable, Replace
from nebula_xr_haizea.planner import Lease, LeaseState
from nebula_xr_haizea.request import LeaseKind


class RateRow(PluginTable):
    action = peewee.TextField(primary_key=True)  # suspend, resume, migrate
    rate = peewee.FloatField()  # MB/s

    class Meta:
        table_name = "haizea_rates"


class FinishedLeaseRow(PluginTable):
    lid = peewee.IntegerField(primary_key=True)
    uid = peewee.IntegerField()
    kind = peewee.TextField()
    state = peewee.TextField()
    vids = peewee.TextField()  # comma-separated
    hosts = peewee.TextField()  # comma-separated
    nodes = peewee.IntegerField()
    cpu = peewee.IntegerField()
    memory = peewee.IntegerField()
    preemptible = peewee.IntegerField()
    submitted = peewee.FloatField()
    duration = peewee.FloatField(null=True)  # NULL: unlimited
    start = peewee.FloatField(null=True)
    work_done = peewee.FloatField()

    class Meta:
        table_name = "haizea_finished"


TABLES = [RateRow, FinishedLeaseRow]


def _ids(text: str) -> tuple[int, ...]:
    return tuple(int(each) for each in text.split(",") if each)


def save_rate(store: PluginStore, action: str, rate: float) -> None:
    store.write(Replace(RateRow, [(action, rate)]))


def load_rates(store: PluginStore) -> dict[str, float]:
    return {action: rate for action, rate in store.rows(RateRow)}


def save_finished(store: PluginStore, lease: Lease, vids: list[int], uid: int) -> None:
    row = (
        lease.lid,
        uid,
        lease.kind.value,
        lease.state.value,
        ",".join(map(str, vids)),
        ",".join(map(str, lease.hosts)),
        lease.nodes,
        lease.cpu,
        lease.memory,
        int(lease.preemptible),
        lease.submitted,
        None if math.isinf(lease.duration) else lease.duration,
        lease.start,
        lease.work_done,
    )
    store.write(Replace(FinishedLeaseRow, [row]))


def forget_finished(store: PluginStore, lid: int) -> None:
    store.write(Delete(FinishedLeaseRow, (("lid", lid),)))


def load_finished(store: PluginStore) -> list[tuple[Lease, list[int], int]]:
    """The finished leases, oldest first: (lease, its VM ids, owner uid)."""
    leases = []
    for row in store.rows(FinishedLeaseRow):
        lid, uid, kind, state, vids, hosts, nodes, cpu, memory = row[:9]
        preemptible, submitted, duration, start, work_done = row[9:]
        lease = Lease(
            lid=lid,
            kind=LeaseKind(kind),
            nodes=nodes,
            cpu=cpu,
            memory=memory,
            submitted=submitted,
            duration=math.inf if duration is None else duration,
            preemptible=bool(preemptible),
            start=start,
            state=LeaseState(state),
            hosts=_ids(hosts),
            work_done=work_done,
        )
        leases.append((lease, list(_ids(vids)), uid))
    return leases
