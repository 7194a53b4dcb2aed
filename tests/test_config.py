"""The configuration file: secrets from the environment, and broken files stopping start-up clearly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from marshmallow import Schema, fields, validate

from gateway import create_app
from gateway.backends import BACKENDS
from gateway.config import Secret, read_config_file
from gateway.errors import ConfigError
from gateway.runtime import gateway_of
from tests.refusals import refusal

GOOD = """
[gateway]
default_connection = "wh"

[connections.wh]
backend = "ongoing"
url = "https://api.ongoingsystems.se/demo/Service.asmx"
goods_owner_code = "ACME"
username = "${TEST_ONGOING_USER:-integration}"
password = "${TEST_ONGOING_PASSWORD}"
read_timeout = 12.5

[connections.wh.status_map]
packed = 425
released = 310

[callers.erp]
key = "${TEST_ERP_KEY:-erp-key-0123456789}"
scopes = ["orders:write"]
"""


def write(tmp_path, text: str):
    path = tmp_path / "gateway.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_good_file_loads_with_secrets_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_ONGOING_PASSWORD", "s3cret")
    settings = read_config_file(write(tmp_path, GOOD), BACKENDS)
    connection = settings.connections["wh"]
    assert settings.default_connection == "wh"
    assert connection.username == "integration"
    assert connection.password == Secret("s3cret")
    assert "s3cret" not in repr(connection) and "s3cret" not in str(connection.password)
    assert connection.read_timeout == 12.5 and connection.connect_timeout == 3.05
    assert connection.options["goods_owner_code"] == "ACME"
    backend = BACKENDS["ongoing"](connection)
    assert backend.status_map["packed"] == 425
    assert backend.status_map["released"] == 310  # a warehouse's own numbering overrides the default
    assert backend.status_map["picked"] == 400


@pytest.mark.parametrize(("line", "expected"), [("", None), ("max_calls_per_second = 2.5", 2.5),
                                                  ("max_calls_per_second = 40", 40.0)])
def test_max_calls_per_second_is_optional_and_absent_means_no_limit(tmp_path, monkeypatch, line, expected):
    monkeypatch.setenv("TEST_ONGOING_PASSWORD", "s3cret")
    settings = read_config_file(write(tmp_path, GOOD.replace("read_timeout = 12.5", line)), BACKENDS)
    assert settings.connections["wh"].max_calls_per_second == expected
    assert "max_calls_per_second" not in settings.connections["wh"].options


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        (GOOD.replace('password = "${TEST_ONGOING_PASSWORD}"', 'password = "${TEST_UNSET_VARIABLE}"'),
         "connections.wh.password", "environment variable TEST_UNSET_VARIABLE is not set"),
        (GOOD.replace('backend = "ongoing"', 'backend = "sap"'), "connections.wh.backend",
         "unknown backend kind 'sap'"),
        (GOOD.replace('backend = "ongoing"\n', ""), "connections.wh.backend", "missing backend kind"),
        (GOOD.replace('goods_owner_code = "ACME"\n', ""), "connections.wh.goods_owner_code",
         refusal(fields.String(required=True))),
        (GOOD.replace("read_timeout = 12.5", 'read_timeout = "soon"'), "connections.wh.read_timeout",
         refusal(fields.Float(), "soon")),
        (GOOD.replace("read_timeout = 12.5", "read_timeout = 0"), "connections.wh.read_timeout",
         refusal(validate.Range(min=0.001, max=3600), 0)),
        (GOOD.replace("read_timeout = 12.5", "retries = 3"), "connections.wh.retries",
         refusal(Schema(), {"retries": 3})),
        (GOOD.replace('url = "https://api.ongoingsystems.se/demo/Service.asmx"', 'url = "ftp://x/y"'),
         "connections.wh.url", refusal(fields.Url(schemes={"http", "https"}, require_tld=False), "ftp://x/y")),
        (GOOD.replace("packed = 425", 'packed = "425"'), "connections.wh.status_map",
         "Ongoing status codes are integers"),
        (GOOD.replace('default_connection = "wh"', 'default_connection = "elsewhere"'),
         "gateway.default_connection", "names no configured connection"),
        (GOOD + "\n[logging]\nlevel = 1\n", "logging", "unknown section"),
        ('[gateway]\ndefault_connection = "x"\n', "connections", "at least one"),
        (GOOD.replace('username = "${TEST_ONGOING_USER:-integration}"', 'username = ""'),
         "connections.wh.username", "username of 1 to 50"),
        (GOOD + '\n[connections.wh2]\nbackend = "ongoing"\nurl = "http://h/x"\ngoods_owner_code = "A"\n'
         'username = "u"\n', "connections.wh2.password", "password of 1 to 50"),
        (GOOD.replace("read_timeout = 12.5", "order_not_found_patterns = ['(unclosed']"),
         "connections.wh.order_not_found_patterns", "Not a valid regular expression"),
        (GOOD.replace("read_timeout = 12.5", "max_calls_per_second = 0"), "connections.wh.max_calls_per_second",
         refusal(validate.Range(min=0, min_inclusive=False), 0)),
        (GOOD.replace("read_timeout = 12.5", "max_calls_per_second = -2.5"), "connections.wh.max_calls_per_second",
         refusal(validate.Range(min=0, min_inclusive=False), -2.5)),
        (GOOD.replace("read_timeout = 12.5", 'max_calls_per_second = "fast"'),
         "connections.wh.max_calls_per_second", refusal(fields.Float(), "fast")),
    ],
)
def test_a_broken_file_names_file_key_and_problem(tmp_path, monkeypatch, text, key, problem):
    """`problem` is the gateway's own wording, or what marshmallow's check says (tests.refusals), never its wording."""
    monkeypatch.setenv("TEST_ONGOING_PASSWORD", "s3cret")
    monkeypatch.delenv("TEST_UNSET_VARIABLE", raising=False)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        read_config_file(path, BACKENDS)
    message = str(caught.value)
    assert message.startswith(str(path))
    assert key in message and problem in message, message
    assert "s3cret" not in message


ROOT = Path(__file__).resolve().parent.parent
SANDBOX_CONFIG = ROOT / "config" / "sandbox.toml"


def test_unreadable_and_invalid_toml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        read_config_file(tmp_path / "missing.toml", BACKENDS)
    with pytest.raises(ConfigError, match="not valid TOML"):
        read_config_file(write(tmp_path, "[gateway\n"), BACKENDS)


def test_create_app_reads_gateway_config(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_ONGOING_PASSWORD", "s3cret")
    monkeypatch.setenv("GATEWAY_CONFIG", str(write(tmp_path, GOOD)))
    app = create_app()
    try:
        assert app.config["GATEWAY_SETTINGS"].source == str(tmp_path / "gateway.toml")
        assert gateway_of(app).connections.resolve(None).name == "wh"
        # relative database paths are read from the configuration file's folder
        assert app.config["GATEWAY_SETTINGS"].events.database == tmp_path / "var" / "events.sqlite3"
    finally:
        gateway_of(app).close()


def test_without_gateway_config_the_gateway_refuses_to_start(monkeypatch):
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    with pytest.raises(ConfigError, match=r"^GATEWAY_CONFIG: is not set"):
        create_app()
    monkeypatch.setenv("GATEWAY_CONFIG", "")
    with pytest.raises(ConfigError, match=r"^GATEWAY_CONFIG: is not set"):
        create_app()


def test_the_shipped_sandbox_configuration_loads_without_any_environment(monkeypatch):
    for name in ("ONGOING_URL", "ONGOING_USERNAME", "ONGOING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    settings = read_config_file(SANDBOX_CONFIG, BACKENDS)
    connection = settings.connections[settings.default_connection]
    assert connection.url == "http://127.0.0.1:8001/ongoing/Service.asmx"
    assert connection.options["goods_owner_code"] == "DEMO"


@pytest.mark.parametrize("command", [["-c", "import wsgi"], ["-m", "gateway.events.worker"]],
                         ids=["gateway", "worker"])
def test_without_gateway_config_the_processes_exit_78_with_one_line(command):
    env = {name: value for name, value in os.environ.items() if name != "GATEWAY_CONFIG"}
    finished = subprocess.run([sys.executable, *command], env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=60, check=False)
    assert finished.returncode == 78, finished.stderr
    assert "configuration error: GATEWAY_CONFIG: is not set" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_the_worker_builds_its_app_without_the_rest_layer(tmp_path, monkeypatch):
    """The worker sends update jobs through the gateway's connections, but serves no request: no REST layer and no
    console."""
    from gateway import console, rest
    from gateway.events import worker

    def no_web_app(*args, **kwargs):
        raise AssertionError("the worker built the web app")

    ran = []
    monkeypatch.setattr(rest, "init_app", no_web_app)
    monkeypatch.setattr(console, "init_app", no_web_app)
    monkeypatch.setattr(worker, "create_app", no_web_app, raising=False)
    monkeypatch.setattr(worker, "consume", lambda consumer: ran.append(consumer.workers) or False)  # stopped at once
    monkeypatch.setenv("TEST_ONGOING_PASSWORD", "s3cret")
    monkeypatch.setenv("GATEWAY_CONFIG", str(write(tmp_path, GOOD)))
    blocked_before = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    worker.main()
    assert ran == [4]  # the consumer ran with [events] worker_threads (default 4)
    # the worker blocks SIGHUP until its consumer runs: it leaves the mask as it found it (processes started
    # later inherit it, and a blocked SIGHUP would never reach them)
    assert signal.pthread_sigmask(signal.SIG_BLOCK, set()) == blocked_before
