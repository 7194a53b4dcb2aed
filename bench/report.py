"""RESULTS.md: when, where and with what the figures were taken, the target table, every section's tables, and
the hand-written analysis, which a run carries over from the file it replaces (it names the run it was written for).
"""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import psutil

from bench.measure import Section
from bench.workload import ROOT

PACKAGES = ("lxml", "marshmallow", "requests", "gunicorn", "zeep", "Flask", "Werkzeug", "py-spy", "psutil",
            "pybreaker", "tenacity", "redis", "huey")
ANALYSIS = "## Analysis"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor name elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> str:
    """Python and the packages that shape the figures."""
    found = [f"Python {platform.python_version()} ({platform.python_implementation()})"]
    for package in PACKAGES:
        try:
            found.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            found.append(f"{package} not installed")
    return " · ".join(found)


def commit() -> str:
    """The commit the figures were taken on (`+ changes` when the work tree differs from it)."""
    def git(*arguments: str) -> str:
        return subprocess.run(["git", *arguments], cwd=ROOT, capture_output=True, text=True,  # noqa: S603, S607
                              timeout=10, check=False).stdout.strip()
    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" + changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def target_table(sections: Sequence[Section]) -> str:
    """Every target of every section with PASS or MISS and by how much, one line each."""
    rows = [f"| {section.title} | {verdict.target} | **{verdict.label}** | {verdict.detail} |"
            for section in sections for verdict in section.verdicts]
    return "| section | target | result | by how much |\n|---|---|---|---|\n" + "\n".join(rows)


def carried_analysis(previous: Path) -> str:
    """The hand-written analysis of the file being replaced, or a placeholder asking for one."""
    text = previous.read_text() if previous.exists() else ""
    if ANALYSIS in text:
        return text[text.index(ANALYSIS):].rstrip()
    return f"{ANALYSIS}\n\nNot written yet: write it by hand from this run's figures, naming the run."


def results_document(sections: Sequence[Section], *, command: str, revision: str, started: datetime,
                     seconds: float, quick: bool, previous: Path) -> str:
    """The whole RESULTS.md."""
    memory = psutil.virtual_memory().total / 2**30
    header = [
        "# Benchmark results",
        "Written by `bench/run_all.py` (bench/README.md says what each section measures), apart from the analysis "
        "at the end, which is written by hand. On a shared 2-core machine single figures move by 10 to 30 % from "
        "run to run: compare what was measured side by side in one run (the ratios)."
        + (" **This was a `--quick` smoke run: its figures are not worth quoting.**" if quick else ""),
        f"- commit: {revision}\n- date: {started.astimezone(UTC):%Y-%m-%d %H:%M} UTC; the run took "
        f"{seconds / 60:.1f} min\n- command: `{command}`\n- machine: {cpu_model()}, {os.cpu_count()} logical cores, "
        f"{memory:.1f} GiB, {platform.system()} {platform.release()}\n- versions: {versions()}",
        "## Targets\n\n" + target_table(sections),
    ]
    return "\n\n".join([*header, *(section.as_markdown() for section in sections), carried_analysis(previous)]) + "\n"
