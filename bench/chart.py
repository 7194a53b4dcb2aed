"""The scaling chart of section 2: throughput and p99 against concurrency, per backend, for each target.

Drawn with matplotlib (the `bench` extra) on its Agg backend, so no display is needed. The figures come from the
section's `figures` (`<backend> <concurrency> <target> rate` in requests/s, `... p99` in seconds), so a Section
and a plain dict of such figures both serve.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot is loaded: no display is needed

import matplotlib.pyplot as plt
from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

from bench.measure import Section

TARGET_STYLES = {  # target -> line colour and marker
    "gateway": ("tab:red", "o"),
    "passthrough": ("tab:blue", "s"),
    "direct": ("tab:green", "^"),
}
FIGURE = re.compile(r"(?P<backend>\w+) (?P<concurrency>\d+) (?P<target>\w+) (?P<metric>rate|p99)")

#: (backend, target) -> concurrency -> value
Series = dict[tuple[str, str], dict[int, float]]


def scaling_series(figures: Mapping[str, float]) -> tuple[Series, Series]:
    """Throughput (req/s) and p99 (ms) series read from a section's figures."""
    rates: Series = {}
    p99s: Series = {}
    for name, value in figures.items():
        match = FIGURE.fullmatch(name)
        if match is None or match["target"] not in TARGET_STYLES:
            continue
        key = match["backend"], match["target"]
        if match["metric"] == "rate":
            rates.setdefault(key, {})[int(match["concurrency"])] = value
        else:
            p99s.setdefault(key, {})[int(match["concurrency"])] = value * 1000
    return rates, p99s


def draw_scaling_chart(load: Section | Mapping[str, float], path: Path) -> Path:
    """Draw throughput (top row) and p99 (bottom row) against concurrency, one column per backend, to a PNG."""
    figures = load.figures if isinstance(load, Section) else load
    rates, p99s = scaling_series(figures)
    if not rates:
        raise ValueError("no `<backend> <concurrency> <target> rate` figures to draw")
    backends = list(dict.fromkeys(backend for backend, _ in rates))
    concurrencies = sorted({c for series in rates.values() for c in series})
    chart, axes = plt.subplots(2, len(backends), figsize=(4.6 * len(backends), 7.6), sharex=True, sharey="row",
                               squeeze=False, layout="constrained")
    for column, backend in enumerate(backends):
        for row, (series, label) in enumerate(((rates, "throughput (requests/s)"), (p99s, "p99 latency (ms)"))):
            ax = axes[row][column]
            for target, (colour, marker) in TARGET_STYLES.items():
                points = series.get((backend, target), {})
                if points:
                    xs = sorted(points)
                    ax.plot(xs, [points[x] for x in xs], color=colour, marker=marker, label=target)
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_locator(FixedLocator(concurrencies))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_locator(NullLocator())
            ax.grid(True, which="major", alpha=0.3)
            if row == 0:
                ax.set_title(backend)
            else:
                ax.set_yscale("log")
                ax.set_xlabel("concurrency (keep-alive connections, log scale)")
            if column == 0:
                ax.set_ylabel(label + (", log scale" if row == 1 else ""))
    # the throughput rows share one scale from zero, set once every panel's lines are drawn
    axes[0][0].set_ylim(0, 1.08 * max(value for series in rates.values() for value in series.values()))
    handles, labels = axes[0][0].get_legend_handles_labels()
    chart.legend(handles, labels, loc="outside lower center", ncols=len(labels))
    chart.suptitle("End to end over HTTP (wrk): gateway, passthrough and direct against concurrency")
    path.parent.mkdir(parents=True, exist_ok=True)
    chart.savefig(path, dpi=110)
    plt.close(chart)
    return path
