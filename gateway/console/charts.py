"""The console's pictures: a connection's latency over the last hour as an inline SVG (no script, no CDN).

Drawn from the exchange journal's timings (`ExchangeJournal.timings`): per minute, the median and the 99th
percentile of the calls' durations (nearest rank), and a red mark under each minute with a failed call.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH, HEIGHT = 600, 160
LEFT, RIGHT, TOP, BOTTOM = 48, 8, 10, 26
FAILED_OUTCOMES = frozenset({"failed", "timeout", "unreachable"})


@dataclass(frozen=True)
class Minute:
    """One minute of a connection's calls."""

    calls: int
    failures: int
    p50: float | None
    p99: float | None


def percentile(sorted_values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile of values sorted ascending (not empty)."""
    rank = max(1, math.ceil(share * len(sorted_values)))
    return sorted_values[rank - 1]


def minutes(timings: Sequence[tuple[float, float, str]], now: float, count: int = 60) -> list[Minute]:
    """The last `count` minutes before `now`, oldest first, from (at, duration_ms, outcome) tuples."""
    durations: list[list[float]] = [[] for _ in range(count)]
    failures = [0] * count
    for at, duration_ms, outcome in timings:
        index = count - 1 - int((now - at) // 60)
        if 0 <= index < count:
            durations[index].append(duration_ms)
            failures[index] += outcome in FAILED_OUTCOMES
    result = []
    for values, failed in zip(durations, failures, strict=True):
        values.sort()
        result.append(Minute(len(values), failed, percentile(values, 0.5) if values else None,
                             percentile(values, 0.99) if values else None))
    return result


def _nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 5 times 10^n at or above value (an axis' top)."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** math.floor(math.log10(value))
    return next(step * magnitude for step in (1, 2, 5, 10) if step * magnitude >= value)


def latency_chart(per_minute: Sequence[Minute], *, label: str) -> Markup:
    """An SVG line chart of p50 and p99 per minute, failures marked below; `label` names it for screen readers."""
    count = len(per_minute)
    top = _nice_ceiling(max((minute.p99 for minute in per_minute if minute.p99 is not None), default=0.0))
    plot_width, plot_height = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(index: int) -> float:
        return LEFT + (index + 0.5) * plot_width / max(count, 1)

    def y(value: float) -> float:
        return TOP + plot_height * (1 - value / top)

    def line(values: list[float | None], css_class: str) -> str:
        # a minute without calls breaks the line: no call, no latency to draw
        runs, run = [], []
        for index, value in enumerate(values):
            if value is None:
                if run:
                    runs.append(run)
                run = []
            else:
                run.append(f"{x(index):.1f},{y(value):.1f}")
        if run:
            runs.append(run)
        return "".join(
            f'<polyline class="{css_class}" points="{" ".join(points)}"/>' if len(points) > 1
            else f'<circle class="{css_class}" cx="{points[0].split(",")[0]}" cy="{points[0].split(",")[1]}" r="2"/>'
            for points in runs)

    calls = sum(minute.calls for minute in per_minute)
    failed = sum(minute.failures for minute in per_minute)
    parts = [
        f'<svg class="latency" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{escape(label)}: {calls} calls, {failed} failed, p50 and p99 latency per minute" '
        'xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(label)}</title>",
        f'<line class="axis" x1="{LEFT}" y1="{TOP + plot_height}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_height}"/>',
        f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_height}"/>',
        f'<line class="grid" x1="{LEFT}" y1="{y(top / 2):.1f}" x2="{WIDTH - RIGHT}" y2="{y(top / 2):.1f}"/>',
        f'<text class="tick" x="{LEFT - 4}" y="{TOP + 4}" text-anchor="end">{top:g} ms</text>',
        f'<text class="tick" x="{LEFT - 4}" y="{y(top / 2) + 4:.1f}" text-anchor="end">{top / 2:g}</text>',
        f'<text class="tick" x="{LEFT - 4}" y="{TOP + plot_height}" text-anchor="end">0</text>',
        f'<text class="tick" x="{LEFT}" y="{HEIGHT - 8}">-{count} min</text>',
        f'<text class="tick" x="{WIDTH - RIGHT}" y="{HEIGHT - 8}" text-anchor="end">now</text>',
    ]
    for index, minute in enumerate(per_minute):
        if minute.failures:
            parts.append(f'<rect class="failure" x="{x(index) - 3:.1f}" y="{TOP + plot_height + 2}" width="6" '
                         f'height="6"><title>{minute.failures} failed</title></rect>')
    parts.append(line([minute.p99 for minute in per_minute], "p99"))
    parts.append(line([minute.p50 for minute in per_minute], "p50"))
    if not calls:
        parts.append(f'<text class="empty" x="{LEFT + plot_width / 2}" y="{TOP + plot_height / 2}" '
                     'text-anchor="middle">no calls in the last hour</text>')
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every value in it is a number or escaped
