"""The ``mailrelay`` administration command (the console script ``mailrelay = mailrelay.cli:main``)."""

from mailrelay.cli.main import main

__all__ = ["main"]
