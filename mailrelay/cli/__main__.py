"""
cli.__main__: ``python -m mailrelay.cli``, the same command as the ``mailrelay`` script.

JOB
    Runs :func:`mailrelay.cli.main.main` with the process's arguments and exits with its status.

SECURITY
    As :mod:`mailrelay.cli.main`.

STANDARDS
    None.

DIAGNOSTICS
    As :mod:`mailrelay.cli.main`.

CONFIGURATION
    As :mod:`mailrelay.cli.main`.
"""

import sys

from mailrelay.cli.main import main

sys.exit(main())
