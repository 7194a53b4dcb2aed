"""Where a gunicorn worker's CPU goes while it serves HTTP load: py-spy attached to the running server.

py-spy (`record --subprocesses --gil --nonblocking --format raw`) samples the gunicorn master and its workers while
wrk sends them requests, keeping only the samples of a thread that holds the interpreter lock: what the worker
spends CPU on, with gunicorn, Flask, requests, the journal's thread, logging and metrics included. Each sample's
innermost frame is put in a layer (the package its file belongs to), and each stack in the thread it ran on (a
request thread, the journal's writer, gunicorn's main loop).
Time in C code (lxml, sqlite3, the json encoder) counts in the Python function that called it. A text report of
each profile is kept beside the others (bench/profiles/live_*.txt).

py-spy reads another process's memory (ptrace): where the operating system refuses it, the section says so and
carries on without the profile.
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from bench.measure import Section

SAMPLES_PER_SECOND = 500
#: the gateway's own functions the section's table lists
TOP = 12
PROFILES = Path(__file__).resolve().parent / "profiles"
#: the layers a sample's innermost frame is put in, by the first pattern its file path matches
LAYERS: tuple[tuple[str, str], ...] = (
    ("the gateway's own code", r"(^|/)gateway/"),
    ("requests, urllib3, http.client (and its email header parser)", r"(^|/)(requests|urllib3)/|http/client\.py|"
                                                                    r"(^|/)email/|socket\.py|ssl\.py"),
    ("Flask, Werkzeug, Jinja2", r"(^|/)(flask|werkzeug|jinja2|markupsafe)/"),
    ("gunicorn", r"(^|/)gunicorn/"),
    ("logging, python-json-logger", r"(^|/)logging/|(^|/)pythonjsonlogger/"),
    ("marshmallow", r"(^|/)marshmallow/"),
    ("prometheus-client", r"(^|/)prometheus_client/"),
    ("OpenTelemetry", r"(^|/)opentelemetry/"),
    ("pybreaker, tenacity", r"(^|/)(pybreaker|tenacity)/"),
    ("json", r"(^|/)json/"),
    ("threading, queue, selectors, concurrent.futures", r"(^|/)(threading|queue|selectors)\.py|concurrent/"),
)
OTHER_LAYER = "the rest (standard library and others)"
#: the thread a stack ran on, by a function anywhere in it
THREADS: tuple[tuple[str, str], ...] = (
    ("request threads", "ThreadWorker.handle "),
    ("request threads", "_worker (concurrent/futures/thread.py"),
    ("the journal's writer thread", "JournalRecorder._write "),
    ("gunicorn's main loop (accepting, keep-alive, heartbeat)", "ThreadWorker.run "),
)
#: py-spy without pausing the process (--nonblocking) now and then reads a stack only in part
OTHER_THREAD = "other threads, or stacks read only in part"
FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


@dataclass(frozen=True)
class LiveProfile:
    """The samples of one profile: (frames outermost first, count) per distinct stack."""

    stacks: tuple[tuple[tuple[str, ...], int], ...]

    @property
    def samples(self) -> int:
        """Samples in all."""
        return sum(count for _, count in self.stacks)

    def shares(self, classify: Callable[[tuple[str, ...]], str]) -> list[tuple[str, float]]:
        """Each class's share of the samples, largest first."""
        counted: collections.Counter[str] = collections.Counter()
        for frames, count in self.stacks:
            counted[classify(frames)] += count
        total = self.samples or 1
        return [(name, count / total) for name, count in counted.most_common()]

    def by_layer(self) -> list[tuple[str, float]]:
        """Share of the samples per layer of the innermost frame."""
        return self.shares(lambda frames: layer_of(frames[-1]) if frames else OTHER_LAYER)

    def by_thread(self) -> list[tuple[str, float]]:
        """Share of the samples per thread kind."""
        return self.shares(thread_of)

    def gateway_self_time(self, top: int) -> list[tuple[str, float]]:
        """The gateway's own functions by self share (the innermost frame; C code it calls included)."""
        counted: collections.Counter[str] = collections.Counter()
        for frames, count in self.stacks:
            if frames and layer_of(frames[-1]) == LAYERS[0][0]:
                counted[function_of(frames[-1])] += count
        total = self.samples or 1
        return [(name, count / total) for name, count in counted.most_common(top)]

    def gateway_functions(self, top: int) -> list[tuple[str, float]]:
        """The gateway's own functions by inclusive share (a function counted once per stack)."""
        counted: collections.Counter[str] = collections.Counter()
        for frames, count in self.stacks:
            for name in {function_of(frame) for frame in frames if layer_of(frame) == LAYERS[0][0]}:
                counted[name] += count
        total = self.samples or 1
        return [(name, count / total) for name, count in counted.most_common(top)]


def layer_of(frame: str) -> str:
    """The layer a frame's file belongs to."""
    match = FRAME.match(frame)
    path = match["file"] if match else frame
    for name, pattern in LAYERS:
        if re.search(pattern, path):
            return name
    return OTHER_LAYER


def thread_of(frames: Iterable[str]) -> str:
    """The kind of thread a stack ran on."""
    joined = "\n".join(f"{frame} " for frame in frames)
    for name, marker in THREADS:
        if marker in joined:
            return name
    return OTHER_THREAD


def function_of(frame: str) -> str:
    """`function` (path) of a frame, without its line: one entry per function."""
    match = FRAME.match(frame)
    return f"`{match['function']}` ({match['file']})" if match else frame


def parse_collapsed(text: str) -> LiveProfile:
    """py-spy's raw output: one `frame;frame;... count` line per distinct stack."""
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((tuple(frame for frame in stack.split(";") if frame), int(count)))
    return LiveProfile(tuple(stacks))


def py_spy_binary() -> str | None:
    """The py-spy executable of this environment (the bench extra installs it), or None."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def record_while(pid: int, seconds: float, output: Path, load: Callable[[], object]) -> LiveProfile | str:
    """Sample `pid` and its children for `seconds` while `load()` runs; the profile, or why there is none."""
    binary = py_spy_binary()
    if binary is None:
        return "py-spy is not installed (the bench extra of setup.cfg installs it)"
    command = [binary, "record", "--pid", str(pid), "--subprocesses", "--gil", "--nonblocking", "--format", "raw",
               "--rate", str(SAMPLES_PER_SECOND), "--duration", str(max(1, round(seconds))), "--output", str(output)]
    spy = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # noqa: S603
    try:
        load()
    finally:
        try:
            said, _ = spy.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
            said, _ = spy.communicate()
    if spy.returncode != 0 or not output.exists():
        return f"py-spy could not sample the server (exit {spy.returncode}): {said.strip()[-300:]}"
    return parse_collapsed(output.read_text(errors="replace"))


def report_text(profile: LiveProfile, title: str, top: int = 30) -> str:
    """The profile as a plain-text report: shares by layer and by thread, the gateway's own functions (inclusive
    and self) and every function by self share."""
    def lines(heading: str, rows: Iterable[tuple[str, float]]) -> list[str]:
        return [heading, *(f"  {share:6.1%}  {name}" for name, share in rows), ""]

    everything: collections.Counter[str] = collections.Counter()
    for frames, count in profile.stacks:
        if frames:
            everything[function_of(frames[-1])] += count
    total = profile.samples or 1
    return "\n".join([
        f"{title}: {profile.samples} samples of a thread holding the interpreter lock (py-spy --gil)", "",
        *lines("by layer (innermost frame):", profile.by_layer()),
        *lines("by thread:", profile.by_thread()),
        *lines("the gateway's own functions, inclusive:", profile.gateway_functions(top)),
        *lines("the gateway's own functions, self:", profile.gateway_self_time(top)),
        *lines("every function, self:", ((name, count / total) for name, count in everything.most_common(top))),
    ])


def describe(section: Section, profiles: dict[str, LiveProfile | str]) -> None:
    """Write each backend's report to bench/profiles/live_gateway_<backend>.txt; its layers and the gateway's
    hottest functions become tables of the section."""
    PROFILES.mkdir(exist_ok=True)
    for kind, profile in profiles.items():
        if isinstance(profile, str) or not profile.samples:
            section.table(f"{kind}: no live profile", ["why"]).add(profile or "no samples")
            continue
        (PROFILES / f"live_gateway_{kind}.txt").write_text(
            report_text(profile, f"the gateway's workers under wrk at concurrency 1, {kind}"))
        layers = section.table(f"{kind}: where the gateway workers' CPU goes at concurrency 1 (py-spy, "
                               f"{profile.samples} samples; bench/profiles/live_gateway_{kind}.txt)",
                               ["layer (innermost frame)", "share"])
        for name, share in profile.by_layer():
            layers.add(name, f"{share:.1%}")
        own = section.table(f"{kind}: the gateway's own functions by share of the samples",
                            ["rank", "inclusive", "function", "self", "function"])
        inclusive, itself = profile.gateway_functions(TOP), profile.gateway_self_time(TOP)
        for rank in range(max(len(inclusive), len(itself))):
            wide = inclusive[rank] if rank < len(inclusive) else ("", 0.0)
            narrow = itself[rank] if rank < len(itself) else ("", 0.0)
            own.add(rank + 1, f"{wide[1]:.1%}", wide[0], f"{narrow[1]:.1%}", narrow[0])
