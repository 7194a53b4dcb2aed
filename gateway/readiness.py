"""The threads /readyz runs its checks on, each check bounded by readiness_timeout (gateway/rest/health.py says
which checks there are)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

#: threads per process that run readiness checks
CHECK_THREADS = 8
#: a check: its componentType and its probe, which returns None (pass, timed) or its entries (status, output, ...)
Check = tuple[str, Callable[[], dict | list[dict] | None]]


def now() -> str:
    """The time, as an entry of a health document shows it."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def _unreachable(error: BaseException) -> dict:
    """A failed probe, naming the error's kind (never its text: it may hold an address)."""
    return {"status": "fail", "output": f"unreachable ({type(error).__name__})"}


def _probe(probe: Callable[[], dict | list[dict] | None]) -> list[dict]:
    """Run a probe: its entries, or a pass with its response time, or a fail naming the error's kind."""
    started = time.perf_counter()
    try:
        found = probe()
    except Exception as error:
        return [_unreachable(error)]
    if found is None:
        return [{"status": "pass", "observedValue": round((time.perf_counter() - started) * 1000, 3),
                 "observedUnit": "ms"}]
    return found if isinstance(found, list) else [found]


class ReadinessChecks:
    """The threads /readyz runs its checks on: CHECK_THREADS, started in the process that serves (a forked worker
    makes its own)."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0

    def _executor(self) -> ThreadPoolExecutor:
        with self._guard:
            if self._pool is None or self._pid != os.getpid():
                self._pool, self._pid = ThreadPoolExecutor(CHECK_THREADS, thread_name_prefix="readiness"), os.getpid()
            return self._pool

    def close(self) -> None:
        """Stop the check threads; checks not started yet never run."""
        with self._guard:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def run(self, checks: dict[str, Check], timeout: float) -> dict[str, list[dict]]:
        """Every check's entries within `timeout` seconds; a check not done by then fails (and, if it has not
        started, never runs)."""
        deadline = time.monotonic() + timeout
        pool = self._executor()
        futures = {name: pool.submit(_probe, probe) for name, (_, probe) in checks.items()}
        results = {}
        for name, future in futures.items():
            try:
                entries = future.result(timeout=max(deadline - time.monotonic(), 0))
            except TimeoutError:
                future.cancel()
                entries = [{"status": "fail", "output": f"no answer within readiness_timeout ({timeout:g} s)"}]
            results[name] = [{"componentType": checks[name][0], "time": now(), **entry} for entry in entries]
        return results
