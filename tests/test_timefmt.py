"""The one module that turns times and ages into text (mailrelay/timefmt.py)."""

from __future__ import annotations

import pytest

from mailrelay import timefmt


def test_rfc3339_is_utc_whole_seconds() -> None:
    assert timefmt.rfc3339(0) == "1970-01-01T00:00:00Z"
    assert timefmt.rfc3339(1796317660.999) == "2026-12-03T17:07:40Z"
    # the once-per-second cache gives the right text after the second changes
    assert timefmt.rfc3339(1796317661.2) == "2026-12-03T17:07:41Z"


@pytest.mark.parametrize("value, expected", [
    (1796317660999, "2026-12-03T17:07:40Z"), ("1796317660000", "2026-12-03T17:07:40Z"),
    ("1.79631766e12", "2026-12-03T17:07:40Z"), (None, None), ("soon", None), (float("inf"), None),
])
def test_rfc3339_ms(value: object, expected: str | None) -> None:
    assert timefmt.rfc3339_ms(value) == expected


def test_display_forms() -> None:
    assert timefmt.display_time(1796317660) == "2026-12-03 17:07:40"
    assert timefmt.display_time(1796317660, minutes_only=True) == "2026-12-03 17:07"
    assert timefmt.display_time_ms("1796317660000") == "2026-12-03 17:07:40"
    assert timefmt.display_time_ms("x") == ""
    assert timefmt.display_rfc3339("2026-12-03T17:07:40Z") == "2026-12-03 17:07:40"
    assert timefmt.display_rfc3339("yesterday") == "yesterday"
    assert timefmt.display_rfc3339(None) == ""


@pytest.mark.parametrize("seconds, compact, spaced", [
    (-5, "0s", "0s"), (42.9, "42s", "42s"), (312, "5m12s", "5m 12s"), (3 * 3600 + 5 * 60, "3h05m", "3h 05m"),
    (2 * 86400 + 4 * 3600 + 59, "2d04h", "2d 04h"),
])
def test_format_age(seconds: float, compact: str, spaced: str) -> None:
    assert timefmt.format_age(seconds) == compact
    assert timefmt.format_age(seconds, spaced=True) == spaced
