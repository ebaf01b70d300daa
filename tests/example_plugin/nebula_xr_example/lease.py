"""sched_lease: a toy lease scheduler, the shape of a Haizea adapter.

A VM asking for ``HAIZEA = [ DURATION = <seconds> ]`` is deployed on the first monitored
host as soon as it is submitted, and shut down when its lease ends: it needs VM events,
host views, the clock and the user actions, which is what a lease scheduler uses. The
daemon calls ``vm_changed`` of the scheduler it built; the plugin keeps no state of its own.
"""

from nebula_xr import hookimpl
from nebula_xr.scheduling import Scheduler


class LeaseScheduler(Scheduler):
    def vm_changed(self, vm, previous_state, previous_lcm_state):
        if previous_state == 0 and vm.state == 1:
            self.submitted(vm)
        elif vm.state == 3 and vm.lcm_state == 3 and previous_lcm_state != 3:
            self.running(vm)

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
