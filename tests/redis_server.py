"""A real redis-server for the tests: started on a free 127.0.0.1 port in a temporary folder, stopped afterwards."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.servers import closed_port

#: how long a fresh redis-server may take to answer PING
STARTUP_SECONDS = 10.0
#: a free port can be taken by someone else before redis-server binds it; then try another
START_ATTEMPTS = 3


def answers_ping(url: str) -> bool:
    """Whether a Redis at `url` answers PING right now."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.2, socket_timeout=0.5)
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False
    finally:
        client.close()


def stop(process: subprocess.Popen) -> None:
    """Stop redis-server and reap it (killing it if it ignores SIGTERM)."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@contextlib.contextmanager
def run_redis_server(directory: Path) -> Iterator[str]:
    """Run a throwaway redis-server (no persistence) with its files in `directory`; yields its URL."""
    executable = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/sbin:/usr/bin")
    if executable is None:
        pytest.fail("redis-server is not installed: the Redis event store tests need it (apt-get install "
                    "redis-server)", pytrace=False)
    log_file = directory / "redis.log"
    for _ in range(START_ATTEMPTS):
        port = closed_port()
        url = f"redis://127.0.0.1:{port}/0"
        # Its log goes to a file rather than a pipe that nobody reads and that could fill up and block it.
        process = subprocess.Popen(
            [executable, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(directory), "--logfile", str(log_file)],
            cwd=directory, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + STARTUP_SECONDS
            while process.poll() is None and time.monotonic() < deadline and not answers_ping(url):
                time.sleep(0.05)
            if process.poll() is None and answers_ping(url):
                yield url
                return
        finally:
            stop(process)
    log = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else "(no log written)"
    pytest.fail(f"redis-server did not start after {START_ATTEMPTS} attempts; its log ends with:\n{log}",
                pytrace=False)


def redis_url_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Body of a pytest fixture that yields the URL of a fresh redis-server, e.g. with scope="session"."""
    with run_redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url
