"""
statuscharts: the status page's throughput and bounce-rate charts, as inline SVG tags.

JOB
    :func:`charts_section` turns per-minute or per-hour counters
    (:meth:`Storage.counters <mailrelay.store.Storage.counters>`) into a card
    with two charts: the delivery outcomes stacked per bucket (delivered,
    deferred, bounced, expired) with the recipients accepted marked, and the
    bounce rate, bounced / (delivered + bounced) per bucket, with the bounce
    reports received in the window listed by type below it. :func:`svg_chart`
    draws one chart: y from 0 to a round maximum, x labelled with start,
    middle and end times (UTC), a ``<title>`` tooltip per bucket.

SECURITY
    SVG elements are ``Tag`` objects with attribute values as text, serialized
    by Twisted's flattener: labels and tooltips (bounce type names come from
    bounce reports) are escaped like every other value. No script.

STANDARDS
    SVG 1.1.

DIAGNOSTICS
    None.

CONFIGURATION
    None.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

from twisted.web.template import Flattenable, Tag, tags

from mailrelay.timefmt import display_time
from mailrelay.web.pagehtml import _card

SVG_NAMESPACE = "http://www.w3.org/2000/svg"


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that is >= value (at least 1)."""
    if value <= 1:
        return 1
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _fmt_num(value: float) -> str:
    return f"{value:g}" if value < 10_000 else f"{value / 1000:g}k"


def _svg(name: str, attributes: dict[str, Any], *children: Flattenable) -> Tag:
    """An SVG element (``tags`` knows only HTML names); attribute values as text."""
    return Tag(name, attributes={key: str(value) for key, value in attributes.items()},
               children=list(children))


def svg_chart(label: str, times_ms: list[int], resolution: str, *,
              stacks: Iterable[tuple[str, list[float]]] = (), line: tuple[str, list[float | None]] | None = None,
              ticks: tuple[str, list[float]] | None = None, percent: bool = False, width: int = 560,
              height: int = 150) -> Tag:
    """
    An inline SVG chart of one value per bucket: stacked bars (``stacks``: css name, values),
    a short mark per bucket (``ticks``: css name, values) and/or a line (``line``: name,
    values, None for no value); y from 0 to a round maximum, x labelled with start, middle and
    end times (UTC). Each bucket carries a ``<title>`` tooltip with its numbers.
    """
    stacks = list(stacks)
    n = len(times_ms)
    left, right, top, bottom = 40, 8, 8, 20
    plot_w, plot_h = width - left - right, height - top - bottom
    totals = [sum(values[i] for _, values in stacks) for i in range(n)]
    peak = max(totals + [v for v in (line[1] if line else []) if v is not None]
               + (ticks[1] if ticks else []) + [0])
    y_max = _nice_ceiling(peak) if not percent else max(1, min(100, _nice_ceiling(peak)))
    slot = plot_w / max(n, 1)

    def y(value: float) -> float:
        return top + plot_h - value / y_max * plot_h

    unit = "%" if percent else ""
    chart = _svg("svg", {"class": "chart", "viewBox": f"0 0 {width} {height}", "role": "img",
                         "aria-label": label, "xmlns": SVG_NAMESPACE})
    for fraction in (0, 0.5, 1):
        value = y_max * fraction
        gy = f"{y(value):.1f}"
        chart(_svg("line", {"class": "grid", "x1": left, "x2": width - right, "y1": gy, "y2": gy}),
              _svg("text", {"x": left - 5, "y": f"{y(value) + 3:.1f}", "text-anchor": "end"},
                   _fmt_num(value) + unit))
    axis_y = f"{y(0):.1f}"
    chart(_svg("line", {"class": "axis", "x1": left, "x2": width - right, "y1": axis_y, "y2": axis_y}))
    fmt = "%H:%M"
    for index in sorted({0, n // 2, n - 1}) if n else ():
        x = left + slot * (index + 0.5)
        anchor = "start" if index == 0 else "end" if index == n - 1 else "middle"
        if index == 0:
            x = left
        elif index == n - 1:
            x = width - right
        chart(_svg("text", {"x": f"{x:.1f}", "y": height - 5, "text-anchor": anchor},
                   time.strftime(fmt, time.gmtime(times_ms[index] / 1000))))
    bar_w = max(1.0, slot * 0.72)
    for i in range(n):
        base = 0.0
        x = left + slot * i + (slot - bar_w) / 2
        tip = [display_time(times_ms[i] / 1000, minutes_only=True) + " UTC"]
        marks: list[Tag] = []
        for name, values in stacks:
            value = values[i]
            if value > 0:
                y_top, y_bottom = y(base + value), y(base)
                marks.append(_svg("rect", {"class": f"b-{name}", "x": f"{x:.1f}", "y": f"{y_top:.1f}",
                                           "width": f"{bar_w:.1f}",
                                           "height": f"{max(0.5, y_bottom - y_top):.1f}"}))
                base += value
            tip.append(f"{name} {value:g}")
        if ticks is not None and ticks[1][i] > 0:
            ty = f"{y(ticks[1][i]):.1f}"
            marks.append(_svg("line", {"class": f"t-{ticks[0]}", "x1": f"{x - 1:.1f}",
                                       "x2": f"{x + bar_w + 1:.1f}", "y1": ty, "y2": ty}))
            tip.insert(1, f"{ticks[0]} {ticks[1][i]:g}")
        if line is not None and line[1][i] is not None:
            tip.append(f"{line[0]} {line[1][i]:.1f}{unit}" if percent else f"{line[0]} {line[1][i]:g}")
        if marks or (line is not None and line[1][i] is not None):
            # an invisible full-height target carries the tooltip of the bucket
            chart(_svg("g", {}, _svg("title", {}, " · ".join(tip)), *marks,
                       _svg("rect", {"x": f"{left + slot * i:.1f}", "y": top, "width": f"{slot:.1f}",
                                     "height": plot_h, "fill": "transparent"})))
    if line is not None:
        name, values = line
        segment: list[tuple[str, str]] = []
        segments: list[list[tuple[str, str]]] = []
        for i, value in enumerate(values):
            if value is None:
                if segment:
                    segments.append(segment)
                segment = []
                continue
            segment.append((f"{left + slot * (i + 0.5):.1f}", f"{y(value):.1f}"))
        if segment:
            segments.append(segment)
        css = "rate" if percent else name
        for points in segments:
            if len(points) > 1:
                chart(_svg("polyline", {"class": f"l-{css}", "points": " ".join(f"{cx},{cy}" for cx, cy in points)}))
            if percent or len(points) == 1:
                for cx, cy in points:
                    chart(_svg("circle", {"class": "p-rate", "cx": cx, "cy": cy, "r": 2}) if percent else
                          _svg("circle", {"cx": cx, "cy": cy, "r": 2, "fill": "#175cd3"}))
    return chart


OUTCOMES = ("delivered", "deferred", "bounced", "expired")


def charts_section(title: str, rows: list[tuple[int, dict[str, int]]], resolution: str) -> Tag:
    times = [start for start, _ in rows]
    get = lambda name: [float(c.get(name, 0)) for _, c in rows]  # noqa: E731
    stacks = [(name, get(name)) for name in OUTCOMES]
    throughput = svg_chart(f"{title}: throughput", times, resolution, stacks=stacks,
                           ticks=("accepted", get("recipients")))
    rates: list[float | None] = []
    for _, c in rows:
        delivered, bounced = c.get("delivered", 0), c.get("bounced", 0)
        rates.append(100.0 * bounced / (delivered + bounced) if delivered + bounced else None)
    rate_chart = svg_chart(f"{title}: bounce rate", times, resolution, line=("bounce rate", rates),
                           percent=True, height=120)
    totals = {name: sum(int(c.get(name, 0)) for _, c in rows)
              for name in ("accepted", "recipients") + OUTCOMES}
    legend = [tags.span(tags.span(class_="sw accepted"),
                        f"accepted {totals['recipients']:,} ({totals['accepted']:,} messages)")]
    legend += [tags.span(tags.span(class_=f"sw {name}"), f"{name} {totals[name]:,}") for name in OUTCOMES]
    ended = totals["delivered"] + totals["bounced"]
    overall = f"{100.0 * totals['bounced'] / ended:.1f}%" if ended else "-"
    by_type: dict[str, int] = {}
    for _, c in rows:
        for key, value in c.items():
            if key.startswith("bounce:"):
                by_type[key[len("bounce:"):]] = by_type.get(key[len("bounce:"):], 0) + int(value)
    reports = ", ".join(f"{kind} {count:,}" for kind, count in sorted(by_type.items()) if count) or "none"
    return _card(title,
                 tags.h3("Throughput (recipients)"), throughput,
                 tags.div(legend, class_="legend"),
                 tags.h3("Bounce rate (bounced / (delivered + bounced))"), rate_chart,
                 tags.div(tags.span(tags.span(class_="sw rate"), f"bounce rate {overall}"),
                          tags.span(f"bounce reports: {reports}"), class_="legend"))
