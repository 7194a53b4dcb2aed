"""Timing loops bounded in count and time, percentiles, and the tables and verdicts a section reports."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Budget:
    """How much work each section may do: the full run, or a fraction of it for smoke tests."""

    quick: bool
    translation_rounds: int  # timed calls per case
    translation_seconds: float  # for all cases together
    load_seconds: tuple[int, int]  # per wrk run: below concurrency 16, from 16 on (wrk counts whole seconds)
    load_repetitions: int  # runs per backend, concurrency and target
    profile_seconds: int  # of load at concurrency 1 per backend under py-spy
    memory_checkpoints: tuple[int, ...]  # requests served when RSS is read
    memory_seconds: float  # for all checkpoints together
    hostile_repetitions: int  # timed requests per case
    hostile_seconds: float  # for all cases together
    feature_rounds: int  # timed requests per case
    feature_seconds: float  # per coordination
    intake_seconds: int  # per wrk run of the webhook intake

    @classmethod
    def from_command_line(cls, description: str) -> Budget:
        """The budget a section's own command line asks for (`--quick` for a smoke test)."""
        parser = argparse.ArgumentParser(description=description)
        parser.add_argument("--quick", action="store_true", help="a fraction of the work, for smoke tests")
        return cls.smoke() if parser.parse_args().quick else cls.full()

    @classmethod
    def full(cls) -> Budget:
        """The budget of `run_all.py`: about six minutes on a 2-core machine."""
        return cls(quick=False, translation_rounds=20_000, translation_seconds=30.0, load_seconds=(1, 2),
                   load_repetitions=2, profile_seconds=3, memory_checkpoints=(1_000, 4_000, 7_000, 10_000),
                   memory_seconds=150.0, hostile_repetitions=7, hostile_seconds=25.0, feature_rounds=5_000,
                   feature_seconds=12.5, intake_seconds=2)

    @classmethod
    def smoke(cls) -> Budget:
        """The budget of `run_all.py --quick`: every code path, few figures worth quoting."""
        return cls(quick=True, translation_rounds=2_000, translation_seconds=6.0, load_seconds=(1, 1),
                   load_repetitions=1, profile_seconds=1, memory_checkpoints=(200, 1_000), memory_seconds=30.0,
                   hostile_repetitions=3, hostile_seconds=8.0, feature_rounds=500, feature_seconds=3.0,
                   intake_seconds=1)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of `values` (fraction 0.5 is the median); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def time_cases_interleaved(cases: Mapping[str, Callable[[], Any]], *, rounds: int, seconds: float,
                           warmup_rounds: int = 200, block: int = 50) -> dict[str, list[int]]:
    """Nanoseconds per call of each case, run in alternating blocks so they share the machine's noise alike.

    Stops when every case has `rounds` timings or after `seconds`, whichever comes first.
    """
    for case in cases.values():
        for _ in range(warmup_rounds):
            case()
    timings: dict[str, list[int]] = {name: [] for name in cases}
    clock = time.perf_counter_ns
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(len(timings[name]) < rounds for name in cases):
        for name, case in cases.items():
            recorded = timings[name]
            for _ in range(min(block, rounds - len(recorded))):
                started = clock()
                case()
                recorded.append(clock() - started)
    return timings


@dataclass
class Table:
    """One table of a section: a caption, column names and rows of already formatted cells."""

    caption: str
    columns: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)

    def add(self, *cells: Any) -> None:
        """Add a row and print it, so every figure is seen as it is measured."""
        row = [str(cell) for cell in cells]
        self.rows.append(row)
        print("  " + " | ".join(f"{column}={cell}" for column, cell in zip(self.columns, row, strict=True)),
              flush=True)

    def as_markdown(self) -> str:
        """The table in GitHub Markdown."""
        lines = [f"**{self.caption}**", "", "| " + " | ".join(self.columns) + " |",
                 "|" + "|".join("---" for _ in self.columns) + "|"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in self.rows])


@dataclass
class Verdict:
    """A target and whether this run met it: PASS or MISS, and by how much."""

    target: str
    passed: bool
    detail: str

    @property
    def label(self) -> str:
        """PASS or MISS."""
        return "PASS" if self.passed else "MISS"


@dataclass
class Section:
    """What one benchmark reports: a one-paragraph method, tables, and verdicts against its targets."""

    title: str
    method: str
    tables: list[Table] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    #: named figures the scaling chart reads (`<backend> <concurrency> <target> rate|p99`)
    figures: dict[str, float] = field(default_factory=dict)

    def table(self, caption: str, columns: Sequence[str]) -> Table:
        """Start a new table in this section."""
        print(f"\n{self.title}: {caption}", flush=True)
        table = Table(caption, columns)
        self.tables.append(table)
        return table

    def judge(self, target: str, passed: bool, detail: str) -> None:
        """Record (and print) whether a target was met."""
        verdict = Verdict(target, passed, detail)
        self.verdicts.append(verdict)
        print(f"  {verdict.label}: {target} — {detail}", flush=True)

    def judge_at_most(self, target: str, value: float, limit: float, unit: str, context: str = "") -> None:
        """Judge `value <= limit`; the detail says the value and by how much it is under or over."""
        margin = (f"{limit - value:.2f} {unit} under" if value <= limit
                  else f"{value - limit:.2f} {unit} over, {value / limit:.1f}x the target")
        self.judge(target, value <= limit, f"{value:.2f} {unit}{f' ({context})' if context else ''}; {margin}")

    def judge_at_least(self, target: str, share: float, limit: float, context: str = "") -> None:
        """Judge a share `>= limit`; the detail says the share and by how many points it is over or under."""
        points = (share - limit) * 100
        self.judge(target, share >= limit, f"{share:.0%}{f' ({context})' if context else ''}; "
                                           f"{abs(points):.0f} points {'over' if points >= 0 else 'under'}")

    def as_markdown(self) -> str:
        """The section in GitHub Markdown: title, method, tables."""
        return "\n\n".join([f"## {self.title}", self.method, *(table.as_markdown() for table in self.tables)])


def microseconds(nanoseconds: float) -> str:
    """Nanoseconds shown as microseconds with one decimal."""
    return f"{nanoseconds / 1000:.1f}"


def milliseconds(seconds: float) -> str:
    """Seconds shown as milliseconds with two decimals."""
    return f"{seconds * 1000:.2f}"
