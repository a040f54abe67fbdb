"""
timefmt: the one place times and ages are turned into text.

JOB
    Formats instants and durations the same way everywhere: RFC 3339 UTC for data
    (events, the JSON API, webhooks, bounce records, the CLI's machine-readable
    fields), ``YYYY-MM-DD HH:MM:SS`` for people (the status page), and compact
    ages (``42s``, ``5m12s``, ``3h05m``, ``2d04h``) for the CLI and the status page.
    Pure functions, no I/O.

SECURITY
    None: the inputs are numbers the daemon measured or read from its own Redis data.
    A value that is not a number gives ``None`` or ``""``, never an exception.

STANDARDS
    RFC 3339 (date and time on the Internet; always UTC, ``Z``, whole seconds).

DIAGNOSTICS
    None.

CONFIGURATION
    None.
"""

from __future__ import annotations

import re
import time
from typing import Any

_RFC3339_START = re.compile(r"^\d{4}-\d\d-\d\dT")

_rfc3339_last: tuple[int | None, str] = (None, "")


def rfc3339(seconds: float) -> str:
    """``2026-11-28T09:15:00Z`` (UTC, whole seconds)."""
    global _rfc3339_last
    whole = int(seconds)
    last = _rfc3339_last
    if last[0] != whole:  # formatted once per second on the hot path
        last = _rfc3339_last = (whole, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(whole)))
    return last[1]


def rfc3339_ms(ms: Any) -> str | None:
    """Milliseconds since the epoch (int or str) -> RFC 3339 UTC, whole seconds; None when unknown."""
    try:
        return rfc3339(int(float(ms)) / 1000)
    except (TypeError, ValueError, OverflowError):
        return None


def display_time(seconds: float, *, minutes_only: bool = False) -> str:
    """``2026-11-28 09:15:00`` (UTC; ``2026-11-28 09:15`` with ``minutes_only``), for people."""
    return time.strftime("%Y-%m-%d %H:%M" if minutes_only else "%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def display_time_ms(ms: Any) -> str:
    """Milliseconds (int or str) -> ``2026-11-28 09:15:00`` (UTC); ``""`` when unknown."""
    try:
        return display_time(int(float(ms)) / 1000)
    except (TypeError, ValueError, OverflowError):
        return ""


def display_rfc3339(text: Any) -> str:
    """``2026-11-28T09:15:00Z`` -> ``2026-11-28 09:15:00``; anything else as it is."""
    text = "" if text is None else str(text)
    return text.replace("T", " ").removesuffix("Z") if _RFC3339_START.match(text) else text


def format_age(seconds: float, *, spaced: bool = False) -> str:
    """``42s``, ``5m12s``, ``3h05m``, ``2d04h`` (``5m 12s``... with ``spaced``); negative is 0."""
    seconds = max(0, int(seconds))
    gap = " " if spaced else ""
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{gap}{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{gap}{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{gap}{seconds % 86400 // 3600:02d}h"
