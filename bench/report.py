"""RESULTS.md: the machine, the versions, the date and command, a summary of the targets, then every section."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import psutil

from bench import caller_cost, hostile_inputs, resilience_cost
from bench.measure import Section
from bench.translate import SPEEDUP_TARGET
from gateway.rest.problems import MAX_LISTED_ERRORS

PACKAGES = ("lxml", "marshmallow", "requests", "gunicorn", "zeep", "Flask", "Werkzeug", "pyinstrument", "py-spy",
            "psutil", "filelock", "pybreaker", "tenacity", "redis")


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


def why_targets_were_missed(translation: Section, load: Section | None, profiles: Section | None,
                            hostile: Section | None = None, resilience: Section | None = None,
                            callers: Section | None = None, events: Section | None = None,
                            features: Section | None = None) -> Section:
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
                f"zeep's round takes {_us(zeep)}, so {SPEEDUP_TARGET:g}x would need the whole round at "
                f"{_us(zeep / SPEEDUP_TARGET)}.")
        gap = whole - validate - render - parse
        if gap > 0:
            text += (f" The round takes {_us(gap)} more than its three parts' medians: each part is timed in blocks "
                     "of 50 calls of its own, which keeps its code and data in the processor's caches, while the "
                     "round runs the three one after another, as a request does, and makes three parts' garbage per "
                     "call; that reading is not measured apart.")
        if "part ongoing render ns" in figures:
            copied, block, checked, written, parsed, whole_render = (
                figures[f"part ongoing {part} ns"]
                for part in ("template copy", "block copy", "xsd", "tostring", "xml parsing", "render"))
            rest = whole_render - copied - block - checked - written
            text += (f" Render splits into copying the envelope skeleton ({_us(copied)}) and each block the update "
                     f"uses ({_us(block)} each), the XSD check ({_us(checked)}), serialization ({_us(written)}) "
                     f"and {_us(max(rest, 0))} of filling in values (section 5). Parse is "
                     f"{_us(parsed)} of hardened lxml parsing plus the SOAP unwrapping and result reading. "
                     f"Validation is marshmallow ({_us(figures['part canonical load ns'])} for `load_order_update`, "
                     "its schema limited to the fields the document gives). zeep does no canonical validation and "
                     "no XSD check: per round the gateway does more work than zeep, with the same library (lxml) "
                     "underneath.")
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
            spent = ""
            if f"{backend} 1 gateway cpu per request" in load.figures:
                own, bound, sandbox = (load.figures[f"{backend} 1 {target} cpu per request"]
                                       for target in ("gateway", "passthrough", "direct"))
                spent = (f" Measured during the same runs, the gateway's worker spent {_ms(own)} of CPU per request "
                         f"and the passthrough's {_ms(bound)} (the sandbox {_ms(sandbox)} per direct call)")
                if gateway > passthrough:
                    spent += (f": the gateway's {_ms(own - bound)} more CPU is "
                              f"{(own - bound) / (gateway - passthrough):.0%} of its added latency, so the request "
                              "is not waiting on a lock, a queue or a timer, it is running Python (the profiles of "
                              "section 5 say which).")
                else:
                    spent += "."
            if f"{backend} live samples" in load.figures:
                layers = {key.split(" live layer ", 1)[1]: share for key, share in load.figures.items()
                          if key.startswith(f"{backend} live layer ")}
                named = ", ".join(f"{name} {share:.0%}" for name, share in
                                  sorted(layers.items(), key=lambda item: -item[1])[:5])
                top = load.hot_spots.get(f"live_{backend}", [])
                spent += (f" The live profile of the gateway's workers (section 2, py-spy) puts the samples in: "
                          f"{named}.")
                if top:
                    spent += (f" Its busiest own function, {top[0][0]}, holds {top[0][1]:.1%} of them by itself: "
                              "the extra CPU is spread over the many steps of a request (authentication, "
                              "validation, rendering and its checks, the lock, the breaker's shared state, the "
                              "journal, logs, metrics and trace context), not one hot spot.")
            section.note(
                f"**{backend}, end to end (concurrency 1, p50).** Direct {_ms(direct)}; the passthrough adds "
                f"{_ms(passthrough - direct)} (a second hop: a second gunicorn and a second requests client call); "
                "the gateway adds "
                f"{_ms(gateway - passthrough)} on top (Flask, validation, translation, normalization, the "
                f"journal, breaker, lock, logs and metrics).{spent}{cpu}")
        section.note("At concurrency 16 the three processes (load generator, gateway or passthrough workers, "
                     "sandbox) share 2 cores, so throughput is CPU-bound: the gateway's extra CPU per request "
                     "above (section 2's bounds table has it at every concurrency) is what separates it from the "
                     "passthrough; Ongoing's calls go one at a time besides, so its rate is one over a call's whole "
                     "time, lock included.")
        highest = max((int(key.split()[1]) for key in load.figures if key.endswith(" gateway cpu per request")),
                      default=1)
        if highest > 1:
            grown = [(backend, load.figures[f"{backend} 1 gateway cpu per request"],
                      load.figures[f"{backend} {highest} gateway cpu per request"])
                     for backend in ("ongoing", "speed4trade", "sellercenter")]
            grows = any(high > 1.1 * low for _, low, high in grown)
            section.note(
                f"The gateway's CPU per request {'grows' if grows else 'stays about the same'} with concurrency ("
                + "; ".join(f"{backend} {_ms(low)} at 1, {_ms(high)} at {highest}" for backend, low, high in grown)
                + ")" + (": a worker's request threads take turns at the interpreter lock, the journal's thread "
                         "with them, and each hand-over costs CPU the passthrough, with less Python per request, "
                         "pays less of." if grows else "."))
    if hostile is not None:
        for text in hostile_misses_explained(hostile):
            section.note(text)
    if resilience is not None:
        for text in resilience_misses_explained(resilience):
            section.note(text)
    if callers is not None:
        for text in caller_misses_explained(callers):
            section.note(text)
    for part in (events, features):
        if part is not None:
            for verdict in part.verdicts:
                if not verdict.passed:
                    section.note(f"**{part.title}: {verdict.target}** — {verdict.detail}; the section's own "
                                 "tables take the request apart.")
    spots = profiles.hot_spots.get("webhook_intake") if profiles is not None else None
    if events is not None and spots and any(not verdict.passed and "intake" in verdict.target
                                            for verdict in events.verdicts):
        named = ", ".join(f"{where.split(' (')[0]} {micros:.0f} µs" for where, micros in spots[1:6])
        section.note(f"**Webhook intake, profiled** (section 5, `webhook_intake`, µs per webhook under the profiler, "
                     f"which inflates them; the shares are what count): {spots[0][0].split(' (')[0]} takes "
                     f"{spots[0][1]:.0f} µs in all; below it {named}. Storing the event waits for one durable "
                     "SQLite commit (an fsync, section 8's figure); the baseline app stores nothing, so at "
                     "concurrency 16 the gateway's intake is bounded by those commits, one at a time per database.")
    if features is not None and any(not verdict.passed for verdict in features.verdicts):
        store = callers.figures if callers is not None else {}
        fsync, ping = store.get("fsync p50 ns"), store.get("redis ping p50 ns")
        detail = []
        if fsync:
            detail.append(f"a durable SQLite commit waits for an fsync ({_us(fsync)} here, section 8), and a fresh "
                          "Idempotency-Key makes three (begin, attempt, complete), the journal's writes come on top "
                          "in its thread")
        if ping:
            detail.append(f"with Redis every store call is a round trip ({_us(ping)} for a PING here), the key "
                          "store, the lock, the breaker and the journal each make at least one")
        if detail:
            section.note("**Production features.** Most of what they add is storage, not Python: "
                         + "; ".join(detail) + ". The *without* rows of section 10 say which feature spends it.")
    if not section.notes:
        section.note("No target was missed.")
    return section


def hostile_misses_explained(hostile: Section) -> list[str]:
    """Section 6's missed targets: which cases, and where the refusal of many unknown fields spends its time."""
    missed = {verdict.target for verdict in hostile.verdicts if not verdict.passed}
    figures = hostile.figures
    names = [case.name for case in hostile_inputs.CASES]
    texts = []
    limits = ((hostile_inputs.TIME_TARGET, "median s", hostile_inputs.TIME_TARGET_SECONDS),
              (hostile_inputs.PEAK_TARGET, "peak traced bytes", hostile_inputs.PEAK_TARGET_BYTES))
    over = {name for target, figure, limit in limits if target in missed
            for name in names if figures[f"{name} {figure}"] >= limit}
    unknown, at_limit = hostile_inputs.UNKNOWN_FIELDS, hostile_inputs.UNKNOWN_FIELDS_AT_LIMIT
    if unknown in over:
        texts.append(
            f"**Hostile inputs: {unknown}.** {figures[f'{unknown} items']:,.0f} members in one object, refused "
            f"with {figures[f'{unknown} status']:.0f} while the JSON is read, take "
            f"{_ms(figures[f'{unknown} median s'])} median and peak at "
            f"{figures[f'{unknown} peak traced bytes'] / 2**20:.0f} MB of traced memory: `json.loads` hands an "
            f"object to the member bound (MAX_OBJECT_MEMBERS, {hostile_inputs.MAX_OBJECT_MEMBERS:,}) only once "
            "all its members are parsed, so the parser still builds every one of them before the refusal.")
    if at_limit in over:
        fields = figures[f"{at_limit} items"]
        stage = {key: figures[f"refusal {key} s"] for key in hostile_inputs.REFUSAL_STAGES}
        text = (f"**Hostile inputs: {at_limit}.** The request takes {_ms(figures[f'{at_limit} median s'])} and "
                f"peaks at {figures[f'{at_limit} peak traced bytes'] / 2**20:.0f} MB of traced memory, and the reply "
                f"lists only {MAX_LISTED_ERRORS} paths, but every one of the body's {fields:,.0f} unknown fields "
                f"becomes an error before that cut: marshmallow's load ({_ms(stage['schema'])}) records an "
                f"`Unknown field.` per field, `flatten_errors` ({_ms(stage['paths'])}) and `ValidationFailed` "
                f"({_ms(stage['error'])}) copy them into field paths, and the problem document "
                f"({_ms(stage['problem'])}) scrubs all of them before it keeps {MAX_LISTED_ERRORS}; reading the JSON "
                f"itself takes {_ms(stage['read'])} (stage by stage, outside Flask's dispatch).")
        if "refusal problem peak bytes" in figures:
            peaks = ", ".join(f"{key} {figures[f'refusal {key} peak bytes'] / 2**20:.0f} MB"
                              for key in hostile_inputs.REFUSAL_STAGES)
            text += f" Traced memory at each stage's peak, earlier stages' results still held: {peaks}."
        texts.append(text)
    for name in sorted(over - {unknown, at_limit}, key=names.index):
        texts.append(f"**Hostile inputs: {name}.** {_ms(figures[f'{name} median s'])} median, "
                     f"{figures[f'{name} peak traced bytes'] / 2**20:.0f} MB peak traced memory (section 6).")
    if hostile_inputs.REPLY_TARGET in missed:
        for name in names:
            reply = figures[f"{name} reply bytes"]
            if figures[f"{name} status"] >= 400 and reply >= hostile_inputs.REPLY_TARGET_BYTES:
                texts.append(f"**Hostile inputs: {name}.** The refusal's reply is {reply:,.0f} bytes (section 6).")
    return texts


def resilience_misses_explained(resilience: Section) -> list[str]:
    """Section 7's missed targets: what each mechanism costs alone and what the guard adds within a call."""
    missed = {verdict.target for verdict in resilience.verdicts if not verdict.passed}
    figures = resilience.figures

    def p50(key: str) -> float:
        return figures[f"{key} p50 ns"]

    texts = []
    if resilience_cost.BULKHEAD_TARGET in missed:
        texts.append(f"**Resilience: bulkhead.** {_us(p50('bulkhead'))} p50 for a `BoundedSemaphore` acquire and "
                     f"release that never waits (the timing loop alone takes {_us(p50('baseline'))}; section 7).")
    if resilience_cost.LOCK_TARGET in missed:
        texts.append(
            f"**Resilience: file lock.** Holding the call lock costs {_us(p50('lock file'))} p50, of which the "
            f"system calls themselves (open, flock, unlock, close) take {_us(p50('flock system calls'))}. The rest "
            f"is filelock's own Python code: a new `FileLock` object per call takes {_us(p50('filelock new'))} "
            "(FileCallLocks makes one each time, so that threads of one process exclude each other too), and its "
            f"`acquire()` + `release()` {_us(p50('filelock acquire release'))} even when the object is kept "
            "(section 7, the file lock taken apart).")
    if resilience_cost.BREAKER_TARGET in missed:
        statements = figures.get("breaker call SQLite statements per call", 0.0)
        texts.append(f"**Resilience: breaker (SQLite).** {_us(p50('breaker sqlite'))} p50 around a no-op, "
                     f"{statements:g} SQL statements per successful call (section 7).")
    if resilience_cost.GUARD_TARGET in missed:
        parts = {key: p50(key) for key in ("lock file", "breaker sqlite", "retries", "bulkhead", "watchdog")}
        alone = sum(parts.values())
        in_call = p50("watchdog in call embedded")
        rest = p50("guard embedded") - alone - in_call + parts["watchdog"]
        text = (
            f"**Resilience: the whole guard.** It adds {_us(p50('guard embedded'))} p50 to an Ongoing call that "
            f"takes {_us(p50('direct embedded'))} alone. Timed alone, its parts take {_us(alone)} together: the "
            f"file lock {_us(parts['lock file'])}, the breaker call {_us(parts['breaker sqlite'])}, retries "
            f"{_us(parts['retries'])}, the bulkhead "
            f"{_us(parts['bulkhead'])}, the watchdog registration {_us(parts['watchdog'])}. Within the call the "
            f"watchdog registration adds {_us(in_call)} (the guarded call with and without it): every `call_at` "
            "notifies the watchdog thread, which wakes and takes the GIL the next time the call releases it (lxml "
            "parsing the reply, SQLite, the lock file's system calls), so each call waits for a thread switch that "
            "a loop of registrations alone, which never releases the GIL, does not show.")
        if rest > 0:
            lock_after_call = p50("lock after call embedded")
            text += (f" The remaining {_us(rest)} is not in the parts timed alone; the parts cost more inside a "
                     f"real call than in a loop of their own: the file lock held right after a `_call` takes "
                     f"{_us(lock_after_call)}, against {_us(parts['lock file'])} in its own loop.")
        texts.append(text)
    return texts


def caller_misses_explained(callers: Section) -> list[str]:
    """Section 8's missed targets: what authentication, the decorator and the Idempotency-Key store each add."""
    missed = {verdict.target for verdict in callers.verdicts if not verdict.passed}
    figures = callers.figures

    def p50(key: str) -> float:
        return figures[f"{key} p50 ns"]

    def p90(key: str) -> float:
        return figures[f"{key} p90 ns"]

    texts = []
    for name, target in (("embedded", caller_cost.SQLITE_TARGET), ("redis", caller_cost.REDIS_TARGET)):
        if target not in missed:
            continue
        store = caller_cost.STORES[name]
        authentication, decorator = p50(f"authentication {name}"), p50(f"decorator {name}")
        within, alone = p50(f"store within {name}"), p50(f"begin attempt complete {name}")
        text = (
            f"**Callers and idempotency ({store} store).** Together they add {_us(p50(f'both {name}'))} p50 to a "
            f"PATCH that takes {_us(p50(f'anonymous {name}'))} anonymous (section 8). Authentication is the small "
            f"part: (a) minus (c) is {_us(authentication)}, and timed alone the whole `authenticate` hook takes "
            f"{_us(p50('authenticate'))}, of which `caller_for` {_us(p50('caller_for 3'))} with the sandbox's 3 keys "
            f"({_us(p50('caller_for 50'))} with 50); the anonymous gateway runs the same hook but for `caller_for`. "
            f"The Idempotency-Key decorator without storage, (d) minus (a), adds {_us(decorator)}: `read_key` + "
            f"`fingerprint` take {_us(p50('read_key fingerprint'))} alone, the rest is its other work per request "
            "(the StoredResponse built from the reply, the kept headers looked up, the context variable of attempted "
            f"calls, one more request header). The store adds {_us(p50(f'store in request {name}'))}, (b) minus "
            f"(d): inside each request ((e), taken apart) its `begin` + `attempt` + `complete` take {_us(within)} p50 "
            f"(p90 {_us(p90(f'store within {name}'))})"
            + (f", {within / alone:.1f}x the {_us(alone)} they take timed back to back." if within > 1.2 * alone
               else f"; timed back to back, {_us(alone)}."))
        if name == "embedded":
            fsync = p50("fsync")
            text += (
                f" A fresh key whose call goes out costs the SQLite store three write transactions, the claim in "
                f"`begin` ({_us(p50('begin embedded'))} alone), the call noted in `attempt` "
                f"({_us(p50('attempt embedded'))}) and the reply in `complete` ({_us(p50('complete embedded'))}), "
                "and with `PRAGMA synchronous = FULL` every commit waits for the disk to flush the WAL file: a small "
                f"write + fsync in the same folder takes {_us(fsync)} p50 (p90 {_us(p90('fsync'))}) on this machine, "
                f"so the three flushes alone are about {_us(3 * fsync)}; a replay's `begin` only reads and takes "
                f"{_us(p50('begin replay embedded'))}.")
        else:
            text += (
                f" A fresh key whose call goes out costs the Redis store three round trips, `begin`'s, `attempt`'s "
                f"and `complete`'s Lua scripts ({_us(p50('begin redis'))}, {_us(p50('attempt redis'))} and "
                f"{_us(p50('complete redis'))} alone), and one `PING` round trip "
                f"alone takes {_us(p50('redis ping'))}: most of each call is the trip to the redis-server process, "
                "which shares the machine's cores with this one.")
        slower = p50(f"rest slower {name}")
        if slower > 0.05 * p50(f"keyed in memory {name}"):
            text += (f" The rest of a request that waits for the store also runs {_us(slower)} slower than the same "
                     "request with the store in memory ((e)'s rest minus (d)): it sleeps three times per request, and "
                     "what runs on its core meanwhile probably leaves it colder caches.")
        without_store = authentication + decorator
        if without_store < caller_cost.TOTAL_TARGET_NS:
            text += (f" Without the store's calls, authentication and the decorator add {_us(without_store)}, "
                     f"within the {_us(caller_cost.TOTAL_TARGET_NS)}: the store accounts for the miss.")
        texts.append(text)
    return texts
