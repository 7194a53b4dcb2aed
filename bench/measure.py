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
    translation_rounds: int  # per case
    translation_seconds: float  # for all cases together
    load_requests: int  # per target and repetition
    load_seconds: float  # per target and repetition
    load_repetitions: int
    memory_checkpoints: tuple[int, ...]
    memory_seconds: float  # for all checkpoints together
    bulk_items: int
    bulk_repetitions: int
    profile_seconds: float  # per profile
    hostile_repetitions: int  # timed requests per case
    hostile_seconds: float  # for all cases together
    resilience_rounds: int  # timed calls per case
    resilience_seconds: float  # for all cases together
    caller_rounds: int  # timed calls or requests per case
    caller_seconds: float  # for all cases together

    @classmethod
    def from_command_line(cls, description: str) -> Budget:
        """The budget a section's own command line asks for (`--quick` for a smoke test)."""
        parser = argparse.ArgumentParser(description=description)
        parser.add_argument("--quick", action="store_true", help="a fraction of the work, for smoke tests")
        return cls.smoke() if parser.parse_args().quick else cls.full()

    @classmethod
    def full(cls) -> Budget:
        """The budget of `run_all.py`: under ten minutes on a 2-core machine."""
        return cls(quick=False, translation_rounds=20_000, translation_seconds=30.0,
                   load_requests=2_500, load_seconds=1.6, load_repetitions=4,
                   memory_checkpoints=(1_000, 4_000, 7_000, 10_000), memory_seconds=150.0,
                   bulk_items=500, bulk_repetitions=3, profile_seconds=3.0,
                   hostile_repetitions=7, hostile_seconds=25.0,
                   resilience_rounds=5_000, resilience_seconds=25.0,
                   caller_rounds=5_000, caller_seconds=25.0)

    @classmethod
    def smoke(cls) -> Budget:
        """The budget of `run_all.py --quick`: every code path, few figures worth quoting."""
        return cls(quick=True, translation_rounds=2_000, translation_seconds=6.0,
                   load_requests=300, load_seconds=0.6, load_repetitions=1,
                   memory_checkpoints=(200, 1_000), memory_seconds=30.0,
                   bulk_items=500, bulk_repetitions=1, profile_seconds=0.5,
                   hostile_repetitions=3, hostile_seconds=8.0,
                   resilience_rounds=500, resilience_seconds=6.0,
                   caller_rounds=500, caller_seconds=6.0)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of `values` (fraction 0.5 is the median); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


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
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)


@dataclass
class Verdict:
    """A target and whether this run met it."""

    target: str
    passed: bool
    detail: str

    @property
    def label(self) -> str:
        """PASS or MISS."""
        return "PASS" if self.passed else "MISS"


@dataclass
class Section:
    """What one benchmark reports: an introduction, tables, verdicts against targets and notes."""

    title: str
    introduction: str
    tables: list[Table] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: named figures other sections' explanations refer to (seconds, or nanoseconds where the name says so)
    figures: dict[str, float] = field(default_factory=dict)
    #: per profile, the gateway's functions by total time: (function, µs per call), most first
    hot_spots: dict[str, list[tuple[str, float]]] = field(default_factory=dict)

    def table(self, caption: str, columns: Sequence[str]) -> Table:
        """Start a new table in this section."""
        print(f"\n{self.title}: {caption}", flush=True)
        table = Table(caption, columns)
        self.tables.append(table)
        return table

    def judge(self, target: str, passed: bool, detail: str) -> Verdict:
        """Record (and print) whether a target was met."""
        verdict = Verdict(target, passed, detail)
        self.verdicts.append(verdict)
        print(f"  {verdict.label}: {target} — {detail}", flush=True)
        return verdict

    def note(self, text: str) -> None:
        """Record (and print) a remark on the figures."""
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def as_markdown(self) -> str:
        """The section in GitHub Markdown."""
        parts = [f"## {self.title}", self.introduction]
        parts += [table.as_markdown() for table in self.tables]
        if self.verdicts:
            parts.append("| target | result | by how much |\n|---|---|---|\n" + "\n".join(
                f"| {verdict.target} | **{verdict.label}** | {verdict.detail} |" for verdict in self.verdicts))
        parts += self.notes
        return "\n\n".join(parts)


def microseconds(nanoseconds: float) -> str:
    """Nanoseconds shown as microseconds with one decimal."""
    return f"{nanoseconds / 1000:.1f}"


def milliseconds(seconds: float) -> str:
    """Seconds shown as milliseconds with two decimals."""
    return f"{seconds * 1000:.2f}"
