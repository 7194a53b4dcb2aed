"""RESULTS.md: the machine, the versions, the date and command, a summary of the targets, then every section."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import psutil

from bench.measure import Section

PACKAGES = ("lxml", "marshmallow", "requests", "gunicorn", "zeep", "Flask", "Werkzeug", "pyinstrument", "psutil")


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (the platform's processor name elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_description() -> list[tuple[str, str]]:
    """CPU, cores, memory and OS, as (what, value) pairs."""
    memory = psutil.virtual_memory().total
    return [
        ("CPU", cpu_model()),
        ("cores", f"{os.cpu_count()} logical ({psutil.cpu_count(logical=False) or '?'} physical)"),
        ("memory", f"{memory / 2**30:.1f} GiB"),
        ("OS", f"{platform.system()} {platform.release()}"),
    ]


def versions() -> list[tuple[str, str]]:
    """Python and the packages that shape the figures."""
    found = [("Python", f"{platform.python_version()} ({platform.python_implementation()})")]
    for package in PACKAGES:
        try:
            found.append((package, metadata.version(package)))
        except metadata.PackageNotFoundError:
            found.append((package, "not installed"))
    return found


def summary_of_targets(sections: Sequence[Section]) -> str:
    """Every target of every section with its verdict, in one table."""
    rows = [f"| {section.title} | {verdict.target} | **{verdict.label}** | {verdict.detail} |"
            for section in sections for verdict in section.verdicts]
    return "| section | target | result | by how much |\n|---|---|---|---|\n" + "\n".join(rows)


def results_document(sections: Sequence[Section], *, command: str, started: datetime, seconds: float,
                     quick: bool) -> str:
    """The whole RESULTS.md."""
    facts = "\n".join(f"| {name} | {value} |" for name, value in machine_description())
    packages = " · ".join(f"{name} {version}" for name, version in versions())
    header = [
        "# Benchmark results",
        "Written by `bench/run_all.py`; see bench/README.md for what each section measures. On a shared 2-core "
        "machine single figures move by 10 to 30 % from run to run: compare the figures measured side by side in "
        "one run (the ratios), not figures of different runs."
        + (" **This was a `--quick` smoke run: its figures are not worth quoting.**" if quick else ""),
        f"- date: {started.astimezone(UTC).strftime('%Y-%m-%d %H:%M UTC')}; the run took {seconds / 60:.1f} min\n"
        f"- command: `{command}`\n- versions: {packages}",
        "| machine | |\n|---|---|\n" + facts,
        "## Targets\n\n" + summary_of_targets(sections),
    ]
    return "\n\n".join([*header, *(section.as_markdown() for section in sections)]) + "\n"


def _us(nanoseconds: float) -> str:
    return f"{nanoseconds / 1000:.0f} µs"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def why_targets_were_missed(translation: Section, load: Section | None, profiles: Section | None) -> Section:
    """For each missed target: by how much, and what the profiles and side-by-side figures say is why."""
    section = Section("Why targets were missed", "Derived from the figures of this run.")
    missed = {verdict.target for part in (translation, load) if part for verdict in part.verdicts
              if not verdict.passed}
    figures = {**translation.figures, **(profiles.figures if profiles else {})}
    if any("zeep" in target or "µs" in target for target in missed):
        validate, render, parse, whole = (figures[f"ongoing {stage} ns"]
                                          for stage in ("validate", "render", "parse", "round"))
        zeep = figures["zeep round ns"]
        text = (f"**Translation.** The Ongoing round takes {_us(whole)}: validate {_us(validate)} (marshmallow "
                f"`load_order_update` + the connection's `check`), render {_us(render)}, parse {_us(parse)}. "
                f"zeep's round takes {_us(zeep)}, so 10x would need the whole round at {_us(zeep / 10)}, less than "
                "the render step alone.")
        if "part ongoing render ns" in figures:
            copied, block, checked, written, parsed, whole_render = (
                figures[f"part ongoing {part} ns"]
                for part in ("template copy", "block copy", "xsd", "tostring", "xml parsing", "render"))
            rest = whole_render - copied - block - checked - written
            text += (f" Render splits into copying the envelope skeleton ({_us(copied)}) and each block the update "
                     f"uses ({_us(block)} each), the XSD check ({_us(checked)}), serialization ({_us(written)}) "
                     f"and {_us(max(rest, 0))} of filling in values (section 5). Parse is "
                     f"{_us(parsed)} of hardened lxml parsing plus the SOAP unwrapping and result reading. "
                     f"Validation is marshmallow ({_us(figures['part canonical load ns'])} for `load_order_update`), "
                     "which visits every declared field of the canonical schema for every document. zeep does no "
                     "canonical validation and no XSD check, so the gap is structural: per round the gateway does "
                     "more work than zeep, with the same library (lxml) underneath.")
        section.note(text)
    if load is not None and any("passthrough" in target or "over direct" in target for target in missed):
        for backend in ("ongoing", "speed4trade", "sellercenter"):
            gateway, passthrough, direct = (load.figures[f"{backend} 1 {target} p50"]
                                            for target in ("gateway", "passthrough", "direct"))
            cpu = ""
            if f"{backend} in-process gateway ns" in figures:
                own = figures[f"{backend} in-process gateway ns"] - figures[f"{backend} in-process bare ns"]
                cpu = (f" Without the network the gateway's request costs {_us(own)} more CPU than a bare Flask "
                       f"JSON endpoint, of which the translation round is {_us(figures[f'{backend} round ns'])} "
                       f"timed alone (section 1) and {_us(figures[f'{backend} in-process round ns'])} timed between "
                       "requests (section 5).")
            section.note(
                f"**{backend}, end to end (concurrency 1, p50).** Direct {_ms(direct)}; the passthrough adds "
                f"{_ms(passthrough - direct)} (a second hop: gunicorn's sync workers close every connection, so "
                "each request opens a new TCP connection, plus a second requests client call); the gateway adds "
                f"{_ms(gateway - passthrough)} on top (Flask, validation, translation, normalization).{cpu}")
        if figures.get("requests checks per request"):
            checks = figures["requests checks per request"]
            cost = figures.get("part requests checks ns", 0.0)
            section.note(
                f"Both the gateway and the passthrough pay requests' own per-call overhead; in this requests "
                f"version `to_key_val_list` does a `typing.Protocol` isinstance check, {checks:.0f} times per "
                f"outgoing request, {_us(cost)} in all (section 5).")
        section.note("At concurrency 16 the three processes (load generator, gateway or passthrough workers, "
                     "sandbox) share 2 cores, so throughput is CPU-bound: the gateway's extra CPU per request "
                     "above is what separates it from the passthrough.")
    if not section.notes:
        section.note("No target was missed.")
    return section
