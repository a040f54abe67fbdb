"""mailrelay: a transactional mail daemon on Twisted and Redis."""

__version__ = "0.1.0"
