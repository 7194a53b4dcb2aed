"""gunicorn's access log under config/gunicorn.py names the caller of every request and never its key."""

from __future__ import annotations

import os
import time

import requests

from tests.processes import BIN, start, stop, wait_until_serving, write_sandbox_config_copy
from tests.servers import closed_port

DEMO_KEY = "demo-caller-key-0000"


def test_every_access_log_line_names_the_caller_and_never_the_key(tmp_path):
    port = closed_port()
    env = {**os.environ, "GATEWAY_CONFIG": write_sandbox_config_copy(tmp_path)}
    log = tmp_path / "gateway.log"
    gateway = start([str(BIN / "gunicorn"), "--config", "config/gunicorn.py", "--workers", "1", "--bind",
                     f"127.0.0.1:{port}", "wsgi:app"], env, log)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(f"{url}/openapi.json", gateway)
        with_key = requests.get(f"{url}/events?limit=1", headers={"Authorization": f"Bearer {DEMO_KEY}",
                                                                   "X-Request-ID": "access-with-key"}, timeout=5)
        without = requests.get(f"{url}/events?limit=1", headers={"X-Request-ID": "access-anonymous"}, timeout=5)
        unknown = requests.get(f"{url}/events?limit=1", headers={"Authorization": "Bearer unknown-key-000000000",
                                                                 "X-Request-ID": "access-unknown"}, timeout=5)
        assert (with_key.status_code, without.status_code, unknown.status_code) == (200, 200, 401)
        deadline = time.monotonic() + 5
        while "access-unknown" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop(gateway)
    lines = {line.rsplit("request_id=", 1)[1]: line for line in log.read_text().splitlines() if "request_id=" in line}
    assert "caller=demo " in lines["access-with-key"]
    assert "caller=anonymous " in lines["access-anonymous"]  # this test deployment also serves keyless requests
    assert "caller=- " in lines["access-unknown"]
    assert DEMO_KEY not in log.read_text() and "unknown-key-000000000" not in log.read_text()
