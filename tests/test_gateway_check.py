"""`python -m gateway check`: a configuration checked as start-up reads it, every problem at once on a line of its own
(file and key, never a secret), `--connect` reaching every backend and subscriber, and `make run` checking first."""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import ssl
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from flask import Flask
from marshmallow import Schema

from gateway import check
from gateway.backends import BACKENDS
from gateway.config import read_config_file
from gateway.errors import ConfigError
from gateway.rest import auth
from tests.processes import write_sandbox_config_copy
from tests.refusals import refusal
from tests.servers import ScriptedBackend, closed_port, serve_wsgi

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(sys.executable).parent.parent
PASSWORD = "ongoing-s3cret-password"
SUBSCRIBER_SECRET = "whsec_c2VjcmV0LW9mLXRoZS1mdWxmaWxtZW50LXNlcnZpY2U="
CALLER_KEY = "erp-caller-key-0123456789"
UTC = datetime.UTC


def run_check(*arguments: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m gateway check ...` as a person runs it."""
    return subprocess.run([sys.executable, "-m", "gateway", "check", *arguments], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)


def environment(**variables: str) -> dict[str, str]:
    """The test's environment without GATEWAY_CONFIG and the CHECK_ variables, plus `variables`."""
    env = {name: value for name, value in os.environ.items()
           if name != "GATEWAY_CONFIG" and not name.startswith("CHECK_")}
    return {**env, **variables}


def write_pem(path: Path, pem: trustme.Blob) -> Path:
    pem.write_to_path(str(path))
    return path


@pytest.mark.parametrize("how", ["GATEWAY_CONFIG", "--config"])
def test_a_clean_sandbox_configuration_passes(tmp_path, how):
    path = write_sandbox_config_copy(tmp_path)
    if how == "--config":
        finished = run_check("--config", path, env=environment())
    else:
        finished = run_check(env=environment(GATEWAY_CONFIG=path))
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert finished.stdout.splitlines() == [f"configuration {path} is fine"]
    assert finished.stderr == ""


@pytest.fixture
def broken_configuration(tmp_path) -> tuple[Path, dict[str, str], list[tuple[str, str]]]:
    """A configuration with eight problems at once, the environment it is checked in, and (key, problem) of each."""
    ca = trustme.CA()
    expired = ca.issue_cert("client.example", not_before=datetime.datetime(2019, 1, 1, tzinfo=UTC),
                            not_after=datetime.datetime(2020, 1, 1, tzinfo=UTC))
    write_pem(tmp_path / "client-cert.pem", expired.cert_chain_pems[0])
    write_pem(tmp_path / "client-key.pem", expired.private_key_pem)
    (tmp_path / "subscriber-secret").write_text(SUBSCRIBER_SECRET + "\n")
    (tmp_path / "blocked").write_text("a file where the events' folder should be\n")
    path = tmp_path / "gateway.toml"
    path.write_text(textwrap.dedent("""
        [gateway]
        default_connection = "wh"
        colour = "blue"

        [connections.wh]
        backend = "ongoing"
        url = "https://127.0.0.1:1/Service.asmx"
        goods_owner_code = "ACME"
        username = "integration"
        password = "${CHECK_ONGOING_PASSWORD}"
        ca_bundle = "missing-ca.pem"
        client_cert = "client-cert.pem"
        client_key = "client-key.pem"

        [callers.erp]
        key = "${CHECK_UNSET_KEY}"
        scopes = ["orders:write"]

        [callers.demo]
        keys = ["demo-caller-key-0000"]
        scopes = ["events:read"]

        [events]
        database = "blocked/events.sqlite3"
        queue_database = "var/queue.sqlite3"

        [subscribers.fulfilment]
        url = "${CHECK_UNSET_SUBSCRIBER_URL}"
        secret = "${file:subscriber-secret}"

        [subscribers.billing]
        url = "https://127.0.0.1:1/hooks"
        secret = "${file:subscriber-secret}"
        client_cert = "client-cert.pem"
        client_key = "client-key.pem"
        """))
    expected = [
        ("callers.erp.key", "environment variable CHECK_UNSET_KEY is not set"),
        ("subscribers.fulfilment.url", "environment variable CHECK_UNSET_SUBSCRIBER_URL is not set"),
        ("gateway.colour", refusal(Schema(), {"colour": "blue"})),
        ("connections.wh.ca_bundle", f"file {tmp_path / 'missing-ca.pem'} is missing"),
        ("callers.demo.keys.0", "is a public demo secret of config/sandbox.toml"),
        ("connections.wh.client_cert",
         f"the certificate in {tmp_path / 'client-cert.pem'} expired on 2020-01-01 00:00:00 UTC"),
        ("subscribers.billing.client_cert",
         f"the certificate in {tmp_path / 'client-cert.pem'} expired on 2020-01-01 00:00:00 UTC"),
        ("events.database", f"folder {tmp_path / 'blocked'} cannot be created: {tmp_path / 'blocked'} is not a folder"),
    ]
    return path, environment(CHECK_ONGOING_PASSWORD=PASSWORD), expected


def test_every_problem_is_listed_at_once_one_line_each_without_a_secret(broken_configuration):
    path, env, expected = broken_configuration
    finished = run_check("--config", str(path), env=env)
    lines = finished.stdout.splitlines()
    assert finished.returncode == 1, finished.stdout + finished.stderr
    assert lines[-1] == f"configuration {path}: {len(expected)} problems"
    problems = lines[:-1]
    assert len(problems) == len(expected), finished.stdout
    for line, (key, problem) in zip(problems, expected, strict=True):
        assert line.startswith(f"{path}: {key}: {problem}"), (line, key, problem)
    for secret in (PASSWORD, SUBSCRIBER_SECRET, SUBSCRIBER_SECRET.removeprefix("whsec_"),
                   (path.parent / "client-key.pem").read_text().splitlines()[1]):
        assert secret not in finished.stdout + finished.stderr


def test_the_first_problem_is_the_one_start_up_stops_at(broken_configuration, monkeypatch):
    path, env, _ = broken_configuration
    monkeypatch.setenv("CHECK_ONGOING_PASSWORD", env["CHECK_ONGOING_PASSWORD"])
    monkeypatch.delenv("CHECK_UNSET_KEY", raising=False)
    monkeypatch.delenv("CHECK_UNSET_SUBSCRIBER_URL", raising=False)
    with pytest.raises(ConfigError) as caught:
        read_config_file(path, BACKENDS)
    assert check.problems(path)[0] == str(caught.value)


def test_a_gateway_nobody_could_call_is_refused_as_start_up_refuses_it(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('[connections.wh]\nbackend = "speed4trade"\nurl = "http://127.0.0.1:1/"\nusername = "u"\n'
                    'password = "p"\nmandator_id = 1\nsoap_version = "1.1"\nnamespace = "urn:x"\n')
    settings = read_config_file(path, BACKENDS)
    with pytest.raises(ConfigError) as caught:
        auth.init_app(Flask(__name__), settings)
    assert check.problems(path) == [str(caught.value)]


def test_problems_print_nothing_and_hold_no_secret(broken_configuration, monkeypatch, capsys):
    path, env, expected = broken_configuration
    monkeypatch.setenv("CHECK_ONGOING_PASSWORD", env["CHECK_ONGOING_PASSWORD"])
    monkeypatch.delenv("CHECK_UNSET_KEY", raising=False)
    monkeypatch.delenv("CHECK_UNSET_SUBSCRIBER_URL", raising=False)
    found = check.problems(path)
    assert [line.split(": ", 2)[1] for line in found] == [key for key, _ in expected]
    assert capsys.readouterr() == ("", "")
    assert not any(PASSWORD in line or SUBSCRIBER_SECRET in line for line in found)


def test_problems_never_raise_and_name_no_more_than_the_failure(tmp_path, monkeypatch):
    missing = tmp_path / "missing.toml"
    assert check.problems(missing) == [f"{missing}: file not found (set GATEWAY_CONFIG to a configuration file)"]
    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    assert check.problems() == ["GATEWAY_CONFIG: is not set: name the gateway's configuration file, or give --config"]

    def failing(settings):
        raise RuntimeError(f"something about {PASSWORD}")

    monkeypatch.setattr(check, "_file_problems", failing)
    path = write_sandbox_config_copy(tmp_path)
    assert check.problems(path) == [f"{path}: the check itself failed (RuntimeError)"]


@contextlib.contextmanager
def serve_tls(app, server_certificate: trustme.LeafCert) -> Iterator[str]:
    """`app` over HTTPS on an ephemeral 127.0.0.1 port for the block; yields the base URL."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_certificate.configure_cert(context)
    with serve_wsgi(app, context) as url:
        yield url


def test_connect_reports_each_backend_and_subscriber_reachable_or_not_and_sends_nothing(tmp_path):
    ca = trustme.CA()
    write_pem(tmp_path / "ca.pem", ca.cert_pem)
    plain, secure = ScriptedBackend(), ScriptedBackend()
    down = closed_port()
    with serve_wsgi(plain) as plain_url, serve_tls(secure, ca.issue_cert("127.0.0.1")) as secure_url:
        path = tmp_path / "gateway.toml"
        path.write_text(textwrap.dedent(f"""
            [gateway]
            allow_anonymous = true

            [connections.up]
            backend = "speed4trade"
            url = "{plain_url}/speed4trade/"
            username = "u"
            password = "{PASSWORD}"
            mandator_id = 1
            soap_version = "1.1"
            namespace = "urn:x"

            [connections.down]
            backend = "speed4trade"
            url = "http://127.0.0.1:{down}/speed4trade/"
            username = "u"
            password = "{PASSWORD}"
            mandator_id = 1
            soap_version = "1.1"
            namespace = "urn:x"
            connect_timeout = 1.0

            [events]
            database = "var/events.sqlite3"
            queue_database = "var/queue.sqlite3"

            [subscribers.fulfilment]
            url = "{secure_url}/hooks"
            secret = "{SUBSCRIBER_SECRET}"
            ca_bundle = "ca.pem"
            """))
        finished = run_check("--config", str(path), "--connect", env=environment())
    plain_port, secure_port = plain_url.rsplit(":", 1)[1], secure_url.rsplit(":", 1)[1]
    assert finished.returncode == 1, finished.stdout + finished.stderr
    assert finished.stdout.splitlines() == [
        f"{path}: connections.up: connected to 127.0.0.1:{plain_port}",
        f"{path}: connections.down: cannot connect to 127.0.0.1:{down}: The backend of connection 'down' could not "
        f"be reached.",
        f"{path}: subscribers.fulfilment: connected to 127.0.0.1:{secure_port} with TLS",
        f"configuration {path}: 1 problem",
    ]
    assert plain.requests == [] and secure.requests == []
    assert PASSWORD not in finished.stdout and SUBSCRIBER_SECRET not in finished.stdout


def test_connect_reports_a_certificate_the_ca_bundle_does_not_trust(tmp_path):
    trusted, other = trustme.CA(), trustme.CA()
    write_pem(tmp_path / "ca.pem", trusted.cert_pem)
    with serve_tls(ScriptedBackend(), other.issue_cert("127.0.0.1")) as url:
        path = tmp_path / "gateway.toml"
        path.write_text(textwrap.dedent(f"""
            [gateway]
            allow_anonymous = true

            [connections.shop]
            backend = "speed4trade"
            url = "{url}/speed4trade/"
            username = "u"
            password = "{PASSWORD}"
            mandator_id = 1
            soap_version = "1.1"
            namespace = "urn:x"
            ca_bundle = "ca.pem"

            [events]
            database = "var/events.sqlite3"
            queue_database = "var/queue.sqlite3"
            """))
        found = check.problems(path, connect=True)
    assert len(found) == 1
    assert found[0].startswith(f"{path}: connections.shop: cannot connect to 127.0.0.1:{url.rsplit(':', 1)[1]}: "
                               f"The backend of connection 'shop' failed TLS certificate verification"), found


@pytest.mark.parametrize(
    ("not_before", "not_after"),
    [(datetime.datetime(2019, 1, 1, tzinfo=UTC), datetime.datetime(2020, 1, 1, tzinfo=UTC)),  # UTCTime
     (datetime.datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC), datetime.datetime(2050, 1, 1, tzinfo=UTC)),
     (None, None)],  # trustme's defaults: 2000-01-01 (UTCTime) to 3000-01-01 (GeneralizedTime)
    ids=["expired", "two-digit-and-four-digit-years", "defaults"],
)
def test_validity_dates_are_read_as_an_x509_library_reads_them(not_before, not_after):
    issued = trustme.CA().issue_cert("example.test", not_before=not_before, not_after=not_after)
    der = ssl.PEM_cert_to_DER_cert(issued.cert_chain_pems[0].bytes().decode())
    parsed = x509.load_der_x509_certificate(der)
    assert check.certificate_validity(der) == (parsed.not_valid_before_utc, parsed.not_valid_after_utc)


def test_a_certificate_not_yet_valid_and_each_expired_one_of_a_bundle_are_named(tmp_path):
    ca = trustme.CA()
    future = ca.issue_cert("later.test", not_before=datetime.datetime(2999, 1, 1, tzinfo=UTC))
    expired = ca.issue_cert("old.test", not_before=datetime.datetime(2019, 1, 1, tzinfo=UTC),
                            not_after=datetime.datetime(2020, 1, 1, tzinfo=UTC))
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(ca.cert_pem.bytes() + expired.cert_chain_pems[0].bytes() + future.cert_chain_pems[0].bytes())
    assert check._validity_problems(bundle) == [
        f"certificate 2 in {bundle} expired on 2020-01-01 00:00:00 UTC",
        f"certificate 3 in {bundle} is not valid before 2999-01-01 00:00:00 UTC",
    ]


def test_make_run_checks_the_configuration_first_and_stops_at_a_problem(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text((ROOT / "config" / "sandbox.toml").read_text().replace("sandbox = true", "sandbox = false"))
    env = {name: value for name, value in environment(GATEWAY_CONFIG=str(path)).items()
           if name not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    question = subprocess.run(["make", "-q", f"VENV={VENV}", f"{VENV}/.installed"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=30, check=False)
    assert question.returncode == 0, f"make would reinstall {VENV}: run `make install VENV={VENV}` first"
    # A session of its own: were the check to pass, the servers it would start are stopped with it.
    process = subprocess.Popen(["make", "-s", "run", f"VENV={VENV}"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
    assert process.returncode != 0
    assert stdout.splitlines()[-1] == f"configuration {path}: 5 problems", stdout + stderr
    assert "gateway on http://" not in stdout
