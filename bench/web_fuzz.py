#!/usr/bin/env python3
"""
bench/web_fuzz.py: the JSON API fuzzing of tests/test_web_fuzz.py at full scale.

    python bench/web_fuzz.py [--examples N]     (default 5,000 requests; the suite runs 150)

Runs that test (a real daemon, a real Redis, hypothesis-generated requests against every /api
operation of docs/openapi.json) with MAILRELAY_WEB_FUZZ_EXAMPLES=N, through the project's
.venv interpreter (scripts/dev.sh test sets it up). Exit status: pytest's; a failure prints
the smallest request hypothesis found that gets a 5xx or an undocumented answer.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=5000, help="requests to generate (default 5000)")
    args = parser.parse_args()
    python = ROOT / ".venv" / "bin" / "python"
    if not python.exists():
        print("bench/web_fuzz.py: no .venv: run scripts/dev.sh test once first", file=sys.stderr)
        return 2
    env = {**os.environ, "MAILRELAY_WEB_FUZZ_EXAMPLES": str(args.examples)}
    return subprocess.call([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "tests/test_web_fuzz.py"], cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main())
