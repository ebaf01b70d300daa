"""sched_lease: a toy lease scheduler, the shape of a Haizea adapter.

A VM asking for ``HAIZEA = [ DURATION = <seconds> ]`` is deployed on the first monitored
host as soon as it is submitted, and shut down when its lease ends: it needs VM events,
host views, the clock and the user actions, which is what a lease scheduler uses.
"""

from nebula_xr import hookimpl
from nebula_xr.scheduling import Scheduler

_schedulers = []


class LeaseScheduler(Scheduler):
    def start(self):
        _schedulers.append(self)

    def stop(self):
        _schedulers.remove(self)

    def submitted(self, vm):
        lease = vm.template.get_vector("HAIZEA") or {}
        if "DURATION" not in lease:
            return
        hosts = [h for h in self.context.hosts() if "TOTALCPU" in h.attributes]
        if not hosts:
            self.context.log(f"lease of VM {vm.vid}: no monitored host")
            return
        result = self.context.deploy(vm.vid, hosts[0].hid)
        self.context.log(f"lease of VM {vm.vid} starts on {hosts[0].name}: {result}")

    def running(self, vm):
        lease = vm.template.get_vector("HAIZEA") or {}
        if "DURATION" in lease:
            self.context.clock.callLater(
                float(lease["DURATION"]), self.context.action, "shutdown", vm.vid
            )


@hookimpl
def nebula_xr_scheduler(config, context):
    if config.plugin == "sched_lease":
        return LeaseScheduler(config, context)
    return None


@hookimpl
def nebula_xr_vm_state_changed(vm, previous_state, previous_lcm_state):
    for scheduler in list(_schedulers):
        if previous_state == 0 and vm.state == 1:
            scheduler.submitted(vm)
        elif vm.state == 3 and vm.lcm_state == 3 and previous_lcm_state != 3:
            scheduler.running(vm)
