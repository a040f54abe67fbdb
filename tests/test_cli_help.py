"""
``mailrelay --help`` lists every subcommand, and each subcommand's help its actions.

The subcommands are registered on the parser by separate modules (mailrelay.cli.queue,
.suppressions, .bounces, .cluster, .domains; issue 17; .archive, issue 18): one left out of
:func:`mailrelay.cli.main.build_parser`, or an action left out of its module's parser, fails
here. The top-level help runs as the operator runs it (``python -m mailrelay.cli``).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from mailrelay.cli.main import main

# Each subcommand and its actions, in the order the help lists them.
SUBCOMMANDS: dict[str, list[str]] = {
    "check-config": [],
    "hash-password": [],
    "version": [],
    "queue": ["list", "show", "retry", "delete"],
    "cluster": [],
    "migrate": [],
    "bounce": ["classify", "reclassify"],
    "suppressions": ["list", "add", "remove"],
    "domains": ["add", "list", "show", "remove", "rotate", "verify"],
    "archive": ["status"],
}


def listed_commands(help_text: str) -> list[str]:
    """The names argparse lists under "positional arguments", one per line with its help."""
    section = help_text.split("positional arguments:", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^    (\S+)", section, re.MULTILINE)


def test_help_lists_every_subcommand() -> None:
    result = subprocess.run([sys.executable, "-m", "mailrelay.cli", "--help"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: mailrelay ")
    assert listed_commands(result.stdout) == list(SUBCOMMANDS)


@pytest.mark.parametrize("command", list(SUBCOMMANDS))
def test_subcommand_help_lists_its_actions(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mailrelay {command} ")
    actions = listed_commands(out) if "positional arguments:" in out else []
    assert actions == SUBCOMMANDS[command]
