"""im_static: hosts report the attributes written in the driver's configuration file."""

from twisted.internet.defer import succeed

from nebula_xr import hookimpl
from nebula_xr.drivers.base import InformationDriver
from nebula_xr.template import Template


class StaticMonitor(InformationDriver):
    def __init__(self, config, context):
        super().__init__(config, context)
        path = config.resolve(config.arguments, context.etc_dir)
        self.attributes = dict(Template.parse(path.read_text(), replace=True))

    def monitor(self, hid, host):
        return succeed({"HOSTNAME": host, **self.attributes})


@hookimpl
def nebula_xr_im_driver(config, context):
    if config.plugin == "im_static":
        return StaticMonitor(config, context)
    return None
