"""Logs: one JSON object per line from gunicorn, the app and the worker (or text for a terminal), each carrying its
request's or delivery's fields, and never a configured secret."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import requests

from gateway import logs
from gateway.scrubbing import Scrubber, install_log_scrubbing
from tests.processes import ROOT, start_gateway, start_sandbox, stop, wait_until_serving, write_sandbox_config_copy
from tests.servers import closed_port

DEMO_KEY = "demo-caller-key-0000"
UNKNOWN_KEY = "unknown-key-000000000"


def _record(message: str = "hello", **extra) -> logging.LogRecord:
    record = logging.getLogger("gateway.test").makeRecord("gateway.test", logging.INFO, __file__, 1, message, (),
                                                           None, extra=extra or None)
    logs.ContextFilter().filter(record)
    return record


def test_a_json_line_has_time_level_logger_message_and_the_bound_fields():
    with logs.bound(request_id="req-1", caller="erp", order_ids=["SO-1"]):
        line = logs.JsonLineFormatter().format(_record("sent", outcome="ok"))
    record = json.loads(line)
    assert list(record)[:4] == ["time", "level", "logger", "message"]
    assert record["level"] == "INFO" and record["logger"] == "gateway.test" and record["message"] == "sent"
    assert (record["request_id"], record["caller"], record["order_ids"], record["outcome"]) == \
        ("req-1", "erp", ["SO-1"], "ok")
    assert "\n" not in line
    outside = json.loads(logs.JsonLineFormatter().format(_record("later")))
    assert "request_id" not in outside  # fields end with what bound them


def test_a_traceback_stays_inside_its_json_line():
    try:
        raise ValueError("broken")
    except ValueError:
        record = logging.getLogger("gateway.test").makeRecord("gateway.test", logging.ERROR, __file__, 1, "failed",
                                                               (), sys.exc_info())
    line = logs.JsonLineFormatter().format(record)
    assert len(line.splitlines()) == 1
    assert "ValueError: broken" in json.loads(line)["traceback"]


def test_the_text_format_shows_the_fields_after_the_message():
    with logs.bound(request_id="req-2", caller="shop", order_ids=["SO-1", "SO-2"]):
        line = logs.TextFormatter().format(_record("sent", backend_duration_ms=4.5))
    assert line.endswith("INFO gateway.test: sent request_id=req-2 caller=shop order_ids=SO-1,SO-2 "
                         "backend_duration_ms=4.5")


def test_note_collects_a_requests_fields():
    fields = logs.start_request(request_id="req-3")
    try:
        logs.note(caller="erp")
        logs.note(connection="a", order_ids=["SO-1"], backend_duration_ms=1.25)
        logs.note(connection="b", order_ids=["SO-1", "SO-2"], backend_duration_ms=2.5)
    finally:
        logs.end_request()
    assert fields == {"request_id": "req-3", "caller": "erp", "connection": ["a", "b"], "order_ids": ["SO-1", "SO-2"],
                      "backend_duration_ms": 3.75}
    logs.note(caller="nobody")  # outside a request: nothing to add to, nothing fails
    assert logs.current_fields() == {}


def test_every_field_of_a_line_is_scrubbed_whatever_the_format():
    scrubber = Scrubber(["s3cret-api-key-value"], [("user", "basic-password")])
    install_log_scrubbing(scrubber)
    basic = "dXNlcjpiYXNpYy1wYXNzd29yZA=="  # base64 of user:basic-password
    for formatter in (logs.JsonLineFormatter(), logs.TextFormatter()):
        line = formatter.format(_record("echo", outcome=f"x s3cret-api-key-value Basic {basic}"))
        assert "s3cret-api-key-value" not in line and basic not in line
        assert "***" in line
    del scrubber


def test_configure_sends_the_root_loggers_records_to_the_stream(monkeypatch):
    root = logging.getLogger()
    before = list(root.handlers), root.level
    stream = io.StringIO()
    monkeypatch.setenv(logs.FORMAT_VARIABLE, "json")
    try:
        logs.configure(stream)
        logs.configure(stream)  # a second call replaces its handler instead of adding one
        logging.getLogger("gateway.worker-test").warning("delivered %s", "evt_1")
    finally:
        for handler in list(root.handlers):
            if handler not in before[0]:
                root.removeHandler(handler)
        root.setLevel(before[1])
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["message"] == "delivered evt_1"


def test_a_configuration_error_is_one_json_line():
    env = {name: value for name, value in os.environ.items() if name not in ("GATEWAY_CONFIG", logs.FORMAT_VARIABLE)}
    finished = subprocess.run([sys.executable, "-c", "import wsgi"], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=60, check=False)
    assert finished.returncode == 78
    (line,) = finished.stderr.splitlines()
    record = json.loads(line)
    assert record["level"] == "CRITICAL"
    assert "configuration error: GATEWAY_CONFIG: is not set" in record["message"]


def _serve(tmp_path: Path, **extra_env):
    sandbox_port, gateway_port = closed_port(), closed_port()
    sandbox_url = f"http://127.0.0.1:{sandbox_port}"
    env = {**os.environ, "GATEWAY_CONFIG": write_sandbox_config_copy(tmp_path),
           "ONGOING_URL": f"{sandbox_url}/ongoing/Service.asmx", **extra_env}
    log = tmp_path / "gateway.log"
    sandbox = start_sandbox(sandbox_port, env)
    gateway = start_gateway(gateway_port, env, workers=1, log=log)
    wait_until_serving(f"{sandbox_url}/ongoing/orders/1", sandbox)
    wait_until_serving(f"http://127.0.0.1:{gateway_port}/livez", gateway)
    return sandbox, gateway, f"http://127.0.0.1:{gateway_port}", log


def _wait_for(log: Path, text: str) -> None:
    deadline = time.monotonic() + 5
    while text not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.05)


def test_gunicorns_access_and_backend_lines_are_json_with_the_requests_fields(tmp_path):
    sandbox, gateway, url, log = _serve(tmp_path)
    try:
        patched = requests.patch(f"{url}/orders/SO-1006", json={"waybill": "LOG-1"}, timeout=10,
                                 headers={"Authorization": f"Bearer {DEMO_KEY}", "X-Request-ID": "log-patch"})
        anonymous = requests.get(f"{url}/events?limit=1", headers={"X-Request-ID": "log-anonymous"}, timeout=5)
        unknown = requests.get(f"{url}/events?limit=1", timeout=5,
                               headers={"Authorization": f"Bearer {UNKNOWN_KEY}", "X-Request-ID": "log-unknown"})
        assert (patched.status_code, anonymous.status_code, unknown.status_code) == (200, 200, 401)
        _wait_for(log, "log-unknown")
    finally:
        stop(gateway)
        stop(sandbox)
    text = log.read_text()
    records = [json.loads(line) for line in text.splitlines()]  # every line is one JSON object
    access = {record["request_id"]: record for record in records if record["logger"] == "gunicorn.access"}
    patch_line = access["log-patch"]
    assert patch_line["message"] == "PATCH /orders/SO-1006 200"
    assert (patch_line["caller"], patch_line["status"], patch_line["method"], patch_line["path"]) == \
        ("demo", 200, "PATCH", "/orders/SO-1006")
    assert (patch_line["connection"], patch_line["backend"], patch_line["operation"], patch_line["order_ids"]) == \
        ("ongoing-demo", "ongoing", "UpdateOrder", ["SO-1006"])
    assert patch_line["duration_ms"] >= patch_line["backend_duration_ms"] > 0
    (call,) = [record for record in records if record["logger"] == "gateway.backends"]
    assert (call["request_id"], call["caller"], call["outcome"], call["backend_status"], call["order_ids"]) == \
        ("log-patch", "demo", "ok", 200, ["SO-1006"])
    assert access["log-anonymous"]["caller"] == "anonymous"  # this test deployment also serves keyless requests
    assert "caller" not in access["log-unknown"] and access["log-unknown"]["status"] == 401
    assert DEMO_KEY not in text and UNKNOWN_KEY not in text
    assert any(record["logger"] == "gunicorn.error" for record in records)  # gunicorn's own lines are JSON too


def test_the_text_format_is_for_people_at_a_terminal(tmp_path):
    sandbox, gateway, url, log = _serve(tmp_path, GATEWAY_LOG_FORMAT="text")
    try:
        assert requests.get(f"{url}/events?limit=1", timeout=5, headers={
            "Authorization": f"Bearer {DEMO_KEY}", "X-Request-ID": "log-text"}).status_code == 200
        _wait_for(log, "log-text")
    finally:
        stop(gateway)
        stop(sandbox)
    (line,) = [line for line in log.read_text().splitlines() if "log-text" in line]
    assert re.search(r" INFO gunicorn\.access: GET /events\?limit=1 200 request_id=log-text caller=demo "
                     r"trace_id=[0-9a-f]{32} status=200 duration_ms=[0-9.]+$", line), line
    assert not line.startswith("{")
