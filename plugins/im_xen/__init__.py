"""im_xen: monitors Xen hosts over SSH, reporting what 1.2's Xen probes reported.

One ssh round trip per monitoring runs a small script that prints ``uname``, the CPU
model, the toolstack's ``info`` and two ``xentop`` samples; the attributes are computed
here with 1.2's names and units (drivers.md §4): CPU in percent (100 per core),
memory in KB, network in KB summed over all domains. ``HYPERVISOR=xen`` is added, as
later OpenNebula probes do. Settings: see :mod:`nebula_xr_plugins.xen`.
"""

from __future__ import annotations

from twisted.internet import defer

from nebula_xr import hookimpl
from nebula_xr.drivers.base import DriverConfig, DriverContext, DriverError, InformationDriver
from nebula_xr.drivers.remote import CommandResult, remote_command
from nebula_xr_plugins import xen

_PROBE = """\
printf 'HOSTNAME=%s\\n' "$(uname -n)"
printf 'ARCH=%s\\n' "$(uname -m)"
printf 'MODELNAME=%s\\n' "$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -n 1)"
echo '--- info'
{info} || exit 1
echo '--- xentop'
{xentop} || exit 1
"""


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def parse_probe(output: str) -> dict[str, str]:
    """Host attributes from the probe script's output."""
    identity, _, rest = output.partition("--- info\n")
    info_text, _, xentop_text = rest.partition("--- xentop\n")
    attributes = dict(line.split("=", 1) for line in identity.splitlines() if "=" in line)
    info = {}
    for line in info_text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    if "nr_cpus" not in info or "total_memory" not in info:
        raise DriverError("Can not read the toolstack's info (nr_cpus, total_memory)")
    # The second sample of xentop is the one with meaningful CPU(%) values.
    sample: list[list[str]] = []
    for line in xentop_text.splitlines():
        fields = line.replace("no limit", "no_limit").split()
        if fields and fields[0] == "NAME":
            sample = []
        elif len(fields) >= 12:
            sample.append(fields)
    total_cpu = int(_number(info["nr_cpus"])) * 100
    used_cpu = round(sum(_number(fields[3]) for fields in sample))
    total_memory = int(_number(info["total_memory"])) * 1024
    free_memory = int(_number(info.get("free_memory", "0"))) * 1024
    attributes.update(
        HYPERVISOR="xen",
        TOTALCPU=str(total_cpu),
        CPUSPEED=str(int(_number(info.get("cpu_mhz", "0")))),
        TOTALMEMORY=str(total_memory),
        FREEMEMORY=str(free_memory),
        USEDMEMORY=str(total_memory - free_memory),
        USEDCPU=str(used_cpu),
        FREECPU=str(total_cpu - used_cpu),
        NETTX=str(round(sum(_number(fields[10]) for fields in sample))),
        NETRX=str(round(sum(_number(fields[11]) for fields in sample))),
    )
    return attributes


class XenMonitor(InformationDriver):
    def __init__(self, config: DriverConfig, context: DriverContext) -> None:
        super().__init__(config, context)
        settings = xen.load_settings(config, context)
        tools = xen.toolstack(settings)
        self.remote = xen.runner(settings, context)
        self.probe = _PROBE.format(
            info=remote_command(tools.tool("info")),
            xentop=remote_command(tools.xentop("-b", "-i", "2")),
        )

    def monitor(self, hid: int, host: str) -> defer.Deferred:
        def parsed(result: CommandResult) -> dict[str, str]:
            if not result.ok:
                raise DriverError(result.error_text("Unknown error"))
            return parse_probe(result.stdout)

        return self.remote.run_script(host, self.probe).addCallback(parsed)


@hookimpl
def nebula_xr_im_driver(config: DriverConfig, context: DriverContext) -> InformationDriver | None:
    if config.plugin == "im_xen":
        return XenMonitor(config, context)
    return None
