"""The twistd plugin: ``twistd -n mailrelay [-c FILE]``.

Kept light on purpose: the application is imported inside makeService, so
that listing twistd's plugins neither loads mailrelay nor installs a reactor.
"""

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from twisted.python import usage
from zope.interface import implementer


class Options(usage.Options):
    optParameters = [
        ["config", "c", None, "TOML configuration file (default: built-in safe local defaults)"],
    ]


@implementer(IServiceMaker, IPlugin)
class MailrelayServiceMaker:
    tapname = "mailrelay"
    description = "Transactional mail daemon: submission, delivery, bounces, tracking"
    options = Options

    def makeService(self, options):
        from mailrelay.cli.common import load_or_exit
        from mailrelay.config import ConfigError
        from mailrelay.service import make_service

        config = load_or_exit(options["config"])
        try:
            return make_service(config)
        except ConfigError as e:
            raise SystemExit(f"mailrelay: {e}")


serviceMaker = MailrelayServiceMaker()
