"""HTTP load from wrk (Debian's `wrk` package): a C load generator that costs the measured servers nothing but its
own CPU time, scripted in Lua for the requests each benchmark sends.

`write_script(folder, requests=[...])` writes a Lua script that sends the given requests in turn (each wrk thread
starts at its own place in the list), or `body_template=` for bodies that must differ every time: each `%d` is
filled from `values`, Lua expressions of `n`, a number unique across the run's connections (each wrk thread
counts from its own million above `unique_base`; by default `n` itself: webhook ids). `run_wrk(url, script, ...)`
runs it; wrk's `done()` hook prints the figures as one JSON line, which is parsed into a `WrkResult`. wrk is
pinned to one CPU with taskset when `cpu` is given (on a 2-core machine the servers still share that CPU: the
report says so).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

#: the JSON line wrk's done() prints is marked so that nothing else wrk prints is mistaken for it
MARK = "WRK-RESULT "
PERCENTILES = (50.0, 90.0, 99.0)


@dataclass(frozen=True)
class WrkRequest:
    """One request of a load's rotation."""

    method: str
    path: str
    body: bytes = b""
    headers: Mapping[str, str] | None = None


@dataclass(frozen=True)
class WrkResult:
    """What wrk measured: completed requests, errors (socket errors and non-2xx/3xx statuses), latencies."""

    requests: int
    seconds: float
    non_2xx: int
    socket_errors: int
    timeouts: int
    p50: float  # seconds
    p90: float
    p99: float
    max: float

    @property
    def rate(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def errors(self) -> int:
        """Requests that failed one way or another."""
        return self.non_2xx + self.socket_errors + self.timeouts


def wrk_binary() -> str:
    """The wrk executable (`make bench` installs Debian's package); a clear error when it is missing."""
    found = shutil.which("wrk")
    if found is None:
        raise RuntimeError("wrk is not installed: `make bench` installs it (apt-get install wrk)")
    return found


def _lua_string(data: bytes | str) -> str:
    """A Lua string literal of any bytes."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return '"' + "".join(f"\\{byte:03d}" if byte < 32 or byte > 126 or byte in (34, 92) else chr(byte)
                         for byte in raw) + '"'


def _lua_headers(headers: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"[{_lua_string(name)}] = {_lua_string(value)}" for name, value in headers.items()) + "}"


DONE = """
function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format('%s{"requests": %d, "duration_us": %d, "non_2xx": %d, "socket_errors": %d, ' ..
    '"timeouts": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d}\\n', MARK,
    summary.requests, summary.duration, errors.status, errors.connect + errors.read + errors.write,
    errors.timeout, latency:percentile(50.0), latency:percentile(90.0), latency:percentile(99.0), latency.max))
end
"""

ROTATION = """
local counter = 0
local threads = {}
function setup(thread)
  thread:set("offset", #threads)
  table.insert(threads, thread)
end
function init(args)
  counter = offset or 0
end
function request()
  counter = counter + 1
  local r = REQUESTS[(counter % #REQUESTS) + 1]
  return wrk.format(r[1], r[2], r[4], r[3])
end
"""

#: each wrk thread numbers its requests from its own million on: setup() gives a thread its start before that
#: thread runs (changing a running thread's Lua state is a race), so no later call has to reach it
THREAD_STRIDE = 1_000_000

UNIQUE = f"""
local counter = 0
local threads = {{}}
function setup(thread)
  thread:set("first", #threads * {THREAD_STRIDE})
  table.insert(threads, thread)
end
function init(args)
  counter = first or 0
end
function request()
  counter = counter + 1
  return wrk.format(METHOD, PATH, HEADERS, string.format(TEMPLATE, VALUES(UNIQUE_BASE + counter)))
end
"""


def write_script(folder: Path, *, requests: Sequence[WrkRequest] | None = None,
                 body_template: str | None = None, method: str = "POST", path: str = "/",
                 headers: Mapping[str, str] | None = None, unique_base: int = 0, values: str = "n") -> Path:
    """The Lua script of a load: a rotation of `requests`, or one request whose body is `body_template` with its
    `%d`s filled by `values` (comma-separated Lua expressions of the unique number `n`, one per `%d`)."""
    lines = [f"MARK = {_lua_string(MARK)}"]
    if requests is not None:
        if not requests:
            raise ValueError("a rotation needs at least one request")
        rows = ",\n  ".join(f"{{{_lua_string(r.method)}, {_lua_string(r.path)}, {_lua_string(r.body)}, "
                             f"{_lua_headers(r.headers or {})}}}" for r in requests)
        lines.append(f"REQUESTS = {{\n  {rows}\n}}")
        lines.append(ROTATION)
    elif body_template is not None:
        if body_template.count("%d") != values.count(",") + 1 or "%" in body_template.replace("%d", ""):
            raise ValueError("body_template holds one %d per value and no other %")
        lines += [f"METHOD = {_lua_string(method)}", f"PATH = {_lua_string(path)}",
                  f"HEADERS = {_lua_headers(headers or {})}", f"TEMPLATE = {_lua_string(body_template)}",
                  f"UNIQUE_BASE = {int(unique_base)}", f"function VALUES(n) return {values} end", UNIQUE]
    else:
        raise ValueError("give requests or body_template")
    lines.append(DONE)
    script = Path(tempfile.mkstemp(prefix="load-", suffix=".lua", dir=folder)[1])
    script.write_text("\n".join(lines))
    return script


def run_wrk(url: str, script: Path, *, connections: int, seconds: float, threads: int = 1,
            cpu: int | None = None, timeout_seconds: float = 10.0) -> WrkResult:
    """Run wrk against `url` (scheme, host and port; the script gives the paths) for `seconds`."""
    threads = max(1, min(threads, connections))
    command = [wrk_binary(), "--latency", "-t", str(threads), "-c", str(connections), "-d", f"{max(seconds, 1):.0f}s",
               "--timeout", f"{timeout_seconds:.0f}s", "-s", str(script), url]
    if cpu is not None and shutil.which("taskset") and cpu < (os.cpu_count() or 1):
        command = ["taskset", "-c", str(cpu), *command]
    finished = subprocess.run(command, capture_output=True, text=True,  # noqa: S603 - wrk, arguments built here
                              timeout=seconds + timeout_seconds + 30, check=False)
    line = next((line for line in finished.stdout.splitlines() if line.startswith(MARK)), None)
    if finished.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({finished.returncode}): {finished.stderr.strip()[-500:]}"
                           f"{finished.stdout.strip()[-500:]}")
    figures = json.loads(line[len(MARK):])
    return WrkResult(requests=figures["requests"], seconds=figures["duration_us"] / 1e6,
                     non_2xx=figures["non_2xx"], socket_errors=figures["socket_errors"],
                     timeouts=figures["timeouts"], p50=figures["p50_us"] / 1e6, p90=figures["p90_us"] / 1e6,
                     p99=figures["p99_us"] / 1e6, max=figures["max_us"] / 1e6)

