"""Secrets in the configuration: `${file:path}` references, callers' keys given as SHA-256 digests, and the public
demo secrets of config/sandbox.toml, refused unless the configuration declares itself a sandbox."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.backends import BACKENDS
from gateway.config import MAX_SECRET_FILE_BYTES, PUBLIC_DEMO_SECRETS, Secret, caller_with_key, read_config_file
from gateway.errors import ConfigError
from tests.conftest import ONGOING_SERVICE_PATH, gateway_config, ongoing_connection

ROOT = Path(__file__).resolve().parent.parent
SANDBOX_CONFIG = ROOT / "config" / "sandbox.toml"
CONFIG = """
[connections.wh]
backend = "ongoing"
url = "http://127.0.0.1:9/Service.asmx"
goods_owner_code = "ACME"
username = "integration"
password = "@PASSWORD@"

[callers.erp]
keys = ["erp-key-0123456789"]
scopes = ["events:read"]
"""
HIDDEN = "never-shown-s3cret-value"  # what a secret file holds in the cases that must not show it


def write(tmp_path: Path, text: str = CONFIG, password: str = "ongoing-password") -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(textwrap.dedent(text).replace("@PASSWORD@", password))
    return path


def with_console_secret(reference: str) -> str:
    """The configuration with the console's session secret (no upper bound on its length) set to `reference`."""
    return CONFIG + f'\n[console]\nsession_secret = "{reference}"\n'


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


# --- ${file:path} -------------------------------------------------------------------------------------------------


def test_a_secret_comes_from_a_file_relative_to_the_configuration_folder_or_absolute(tmp_path):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "ongoing-password").write_text("pa55-from-a-file\n")
    absolute = tmp_path / "elsewhere" / "erp-key"
    absolute.parent.mkdir()
    absolute.write_bytes(b"erp-key-from-a-file-0001\r\n")
    text = CONFIG.replace('keys = ["erp-key-0123456789"]', f'keys = ["${{file:{absolute}}}"]')
    settings = read_config_file(write(tmp_path, text, "${file:secrets/ongoing-password}"), BACKENDS)
    assert settings.connections["wh"].password == Secret("pa55-from-a-file")  # the trailing newline stripped
    assert settings.callers["erp"].keys == (Secret("erp-key-from-a-file-0001"),)
    assert Path.cwd() != tmp_path  # so the relative path was read from the configuration's folder


def test_a_secret_file_of_the_largest_size_loads(tmp_path):
    (tmp_path / "console-secret").write_text("s" * MAX_SECRET_FILE_BYTES)
    settings = read_config_file(write(tmp_path, with_console_secret("${file:console-secret}")), BACKENDS)
    assert settings.console.session_secret == Secret("s" * MAX_SECRET_FILE_BYTES)


def test_an_environment_value_is_never_read_as_a_reference_and_file_with_a_default_is_a_variable(tmp_path,
                                                                                                monkeypatch):
    (tmp_path / "ongoing-password").write_text("from-the-file")
    monkeypatch.setenv("TEST_ONGOING_PASSWORD", "${file:ongoing-password}")
    settings = read_config_file(write(tmp_path, password="${TEST_ONGOING_PASSWORD}"), BACKENDS)
    assert settings.connections["wh"].password == Secret("${file:ongoing-password}")
    monkeypatch.delenv("file", raising=False)
    settings = read_config_file(write(tmp_path, password="${file:-fallback-password}"), BACKENDS)
    assert settings.connections["wh"].password == Secret("fallback-password")


@pytest.mark.parametrize(("prepare", "reason"), [
    (lambda path: None, "is missing"),
    (lambda path: path.write_text("\n\n"), "is empty"),
    (lambda path: path.write_text(HIDDEN * (MAX_SECRET_FILE_BYTES // len(HIDDEN) + 1)),
     f"is too large (more than {MAX_SECRET_FILE_BYTES} bytes)"),
    (lambda path: path.write_text("s" * MAX_SECRET_FILE_BYTES + "\n"), "is too large"),  # the newline counts
    (lambda path: path.mkdir(), "cannot be read: not a regular file"),
    (lambda path: path.write_bytes(HIDDEN.encode() + b"\xff\n"), "cannot be read: not UTF-8 text"),
], ids=["missing", "empty", "too-large", "one-byte-too-large", "a-folder", "not-text"])
def test_a_broken_secret_file_names_the_key_the_file_and_the_reason_never_the_value(tmp_path, prepare, reason):
    secret_file = tmp_path / "console-secret"
    prepare(secret_file)
    with pytest.raises(ConfigError) as caught:
        read_config_file(write(tmp_path, with_console_secret("${file:console-secret}")), BACKENDS)
    error = caught.value
    assert error.key == "console.session_secret"
    assert error.problem.startswith(f"secret file {secret_file} {reason}"), error.problem
    assert HIDDEN not in str(error) and "\n" not in str(error)


def test_a_secret_file_the_process_may_not_read_names_the_key_and_the_reason(tmp_path, monkeypatch):
    import gateway.config

    secret_file = tmp_path / "console-secret"
    secret_file.write_text(HIDDEN)
    real_open = open

    def refusing_open(path, *args, **kwargs):
        if Path(path) == secret_file:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    # file modes do not stop root, so the operating system's refusal is made here
    monkeypatch.setattr(gateway.config, "open", refusing_open, raising=False)
    with pytest.raises(ConfigError) as caught:
        read_config_file(write(tmp_path, with_console_secret("${file:console-secret}")), BACKENDS)
    assert caught.value.key == "console.session_secret"
    assert caught.value.problem == f"secret file {secret_file} cannot be read: Permission denied"
    assert HIDDEN not in str(caught.value)


# --- key_sha256s --------------------------------------------------------------------------------------------------

HASHED_KEY = "erp-key-only-its-sha256-is-configured"
PLAIN_KEY = "ops-key-given-in-plain-0001"


def test_a_key_configured_by_its_sha256_is_accepted_and_the_digest_itself_is_not(make_gateway):
    config = gateway_config(wh=ongoing_connection("http://127.0.0.1:9" + ONGOING_SERVICE_PATH))
    config["gateway"]["sandbox"] = False
    config["callers"] = {
        "erp": {"key_sha256s": [sha256_hex(HASHED_KEY).upper()], "scopes": ["events:read"]},
        "ops": {"keys": [PLAIN_KEY], "key_sha256s": [sha256_hex("ops-second-key-00000001")],
                "scopes": ["events:read", "events:redeliver"]},
    }
    app = make_gateway(config)
    settings = app.config["GATEWAY_SETTINGS"]
    assert settings.callers["erp"].keys == () and HASHED_KEY not in repr(settings)
    client = app.test_client()

    assert client.get("/events", headers=bearer(HASHED_KEY)).status_code == 200
    for digest in (sha256_hex(HASHED_KEY), sha256_hex(HASHED_KEY).upper()):
        assert client.get("/events", headers=bearer(digest)).status_code == 401
    # each key is its own caller's: erp may not redeliver, ops may (by its plain key and by its hashed one)
    refused = client.post("/events/evt_unknown/redeliver", headers=bearer(HASHED_KEY))
    assert refused.status_code == 403 and "'erp'" in refused.get_json()["detail"]
    assert client.post("/events/evt_unknown/redeliver", headers=bearer(PLAIN_KEY)).status_code == 404
    assert client.post("/events/evt_unknown/redeliver",
                       headers=bearer("ops-second-key-00000001")).status_code == 404


def test_the_matching_function_names_the_caller_of_a_key_plain_or_hashed(tmp_path):
    text = CONFIG + f'key_sha256s = ["{sha256_hex(HASHED_KEY)}"]\n\n[callers.ops]\nkeys = ["{PLAIN_KEY}"]\n' \
                    'scopes = ["events:read"]\n'
    callers = read_config_file(write(tmp_path, text), BACKENDS).callers.values()
    assert caller_with_key(callers, HASHED_KEY).name == "erp"
    assert caller_with_key(callers, "erp-key-0123456789").name == "erp"
    assert caller_with_key(callers, PLAIN_KEY).name == "ops"
    assert caller_with_key(callers, sha256_hex(HASHED_KEY)) is None
    assert caller_with_key(callers, HASHED_KEY + "x") is None


@pytest.mark.parametrize("value", [
    "erp-plain-key-pasted-by-mistake",
    sha256_hex(HASHED_KEY)[:-1],
    sha256_hex(HASHED_KEY) + "0",
    "g" * 64,
    f"{sha256_hex(HASHED_KEY)}  -",  # sha256sum's whole line
], ids=["a-key", "63-digits", "65-digits", "not-hex", "sha256sum-line"])
def test_a_malformed_key_sha256_is_refused_naming_its_key_never_its_value(tmp_path, value):
    text = CONFIG.replace('keys = ["erp-key-0123456789"]', f'key_sha256s = ["{value}"]')
    with pytest.raises(ConfigError) as caught:
        read_config_file(write(tmp_path, text), BACKENDS)
    assert caught.value.key == "callers.erp.key_sha256s.0"
    assert "Not a SHA-256 digest" in caught.value.problem and "sha256sum" in caught.value.problem
    assert value not in str(caught.value)


def test_a_hashed_key_of_another_callers_key_is_refused(tmp_path):
    text = CONFIG + f'\n[callers.ops]\nkey_sha256s = ["{sha256_hex("erp-key-0123456789")}"]\nscopes = ["events:read"]\n'
    with pytest.raises(ConfigError) as caught:
        read_config_file(write(tmp_path, text), BACKENDS)
    assert caught.value.key == "callers.ops.key_sha256s"
    assert "a key of caller 'erp' too" in caught.value.problem


# --- the public demo secrets --------------------------------------------------------------------------------------

#: `${NAME:-default}` references in config/sandbox.toml whose default is a public demo secret: name -> default
DEMO_REFERENCES = {name: default for name, default in
                   re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-([^}]*)\}", SANDBOX_CONFIG.read_text())
                   if default in PUBLIC_DEMO_SECRETS}


def without_demo_overrides(monkeypatch) -> None:
    """The environment without the variables that replace the sandbox configuration's demo secrets."""
    for name in DEMO_REFERENCES:
        monkeypatch.delenv(name, raising=False)


def sandbox_copy(tmp_path: Path) -> Path:
    """config/sandbox.toml without `sandbox = true`, as a real deployment might copy it."""
    text = SANDBOX_CONFIG.read_text()
    assert "\nsandbox = true\n" in text
    path = tmp_path / "production.toml"
    path.write_text(text.replace("\nsandbox = true\n", "\n"))
    return path


def test_the_demo_secrets_listed_are_the_secrets_the_sandbox_configuration_ships(monkeypatch):
    without_demo_overrides(monkeypatch)
    settings = read_config_file(SANDBOX_CONFIG, BACKENDS)
    assert settings.sandbox
    shipped = {key.reveal() for caller in settings.callers.values() for key in caller.keys}
    shipped |= {subscriber.secret.reveal() for subscriber in settings.subscribers.values()}
    for connection in settings.connections.values():
        shipped |= {value.reveal() for value in (connection.webhooks or {}).values() if isinstance(value, Secret)}
    if settings.console.session_secret is not None:
        shipped.add(settings.console.session_secret.reveal())
    assert shipped == PUBLIC_DEMO_SECRETS
    assert set(DEMO_REFERENCES.values()) == PUBLIC_DEMO_SECRETS  # each one replaceable from the environment


def test_a_copy_of_the_sandbox_configuration_without_sandbox_true_refuses_to_start(tmp_path, monkeypatch):
    without_demo_overrides(monkeypatch)
    path = sandbox_copy(tmp_path)
    with pytest.raises(ConfigError) as caught:
        read_config_file(path, BACKENDS)
    message = str(caught.value)
    assert message == (f"{path}: connections.ongoing-demo.webhooks.password: is a public demo secret of "
                       "config/sandbox.toml, accepted only with [gateway] sandbox = true: set a secret of your own")
    assert not [secret for secret in PUBLIC_DEMO_SECRETS if secret in message]


def test_the_copy_starts_once_every_demo_secret_is_replaced(tmp_path, monkeypatch):
    for name, default in DEMO_REFERENCES.items():
        own = f"own-{name.lower()}-0123456789"
        monkeypatch.setenv(name, "whsec_" + base64.b64encode(own.encode()).decode() if default.startswith("whsec_")
                           else own)
    settings = read_config_file(sandbox_copy(tmp_path), BACKENDS)
    assert not settings.sandbox
    assert settings.callers["demo"].keys == (Secret("own-gateway_demo_key-0123456789"),)


def test_the_gateway_process_refuses_a_demo_secret_with_one_line_that_does_not_show_it(tmp_path):
    env = {name: value for name, value in os.environ.items() if name not in DEMO_REFERENCES}
    env["GATEWAY_CONFIG"] = str(sandbox_copy(tmp_path))
    finished = subprocess.run([sys.executable, "-c", "import wsgi"], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=60, check=False)
    assert finished.returncode == 78, finished.stderr
    lines = finished.stderr.strip().splitlines()
    assert len(lines) == 1, finished.stderr
    assert "configuration error" in lines[0] and "connections.ongoing-demo.webhooks.password" in lines[0]
    assert "[gateway] sandbox = true" in lines[0]
    assert not [secret for secret in PUBLIC_DEMO_SECRETS if secret in finished.stderr + finished.stdout]


DEMO_KEY = "demo-caller-key-0000"
DEMO_PLACES = [
    (CONFIG.replace("erp-key-0123456789", DEMO_KEY), {}, "callers.erp.keys.0", "is a public demo secret"),
    (CONFIG.replace('keys = ["erp-key-0123456789"]', f'key_sha256s = ["{sha256_hex("demo-readonly-key-0000")}"]'),
     {}, "callers.erp.key_sha256s.0", "is the SHA-256 of a public demo secret"),
    (CONFIG + '\n[connections.wh.webhooks]\nauth = "basic"\nusername = "hooks"\npassword = "webhook-demo-password"\n',
     {}, "connections.wh.webhooks.password", "is a public demo secret"),
    (CONFIG + '\n[subscribers.s]\nurl = "http://127.0.0.1:9/"\n'
              'secret = "whsec_b3JkZXItZ2F0ZXdheS1kZW1vLXN1YnNjcmliZXItc2VjcmV0"\n',
     {}, "subscribers.s.secret", "is a public demo secret"),
    (CONFIG.replace("erp-key-0123456789", "${file:erp-key}"), {"erp-key": DEMO_KEY + "\n"}, "callers.erp.keys.0",
     "is a public demo secret"),
    (CONFIG.replace("erp-key-0123456789", "${TEST_ERP_KEY}"), {"$TEST_ERP_KEY": DEMO_KEY}, "callers.erp.keys.0",
     "is a public demo secret"),
]


@pytest.mark.parametrize(("text", "sources", "key", "problem"), DEMO_PLACES,
                         ids=["caller-key", "key-sha256", "webhook-password", "subscriber-secret", "from-a-file",
                              "from-the-environment"])
def test_a_demo_secret_anywhere_is_refused_unless_the_configuration_is_a_sandbox(tmp_path, monkeypatch, text,
                                                                                sources, key, problem):
    for name, value in sources.items():
        if name.startswith("$"):
            monkeypatch.setenv(name[1:], value)
        else:
            (tmp_path / name).write_text(value)
    with pytest.raises(ConfigError) as caught:
        read_config_file(write(tmp_path, text), BACKENDS)
    assert caught.value.key == key and caught.value.problem.startswith(problem), caught.value
    assert "[gateway] sandbox = true" in caught.value.problem
    assert not [secret for secret in PUBLIC_DEMO_SECRETS if secret in str(caught.value)]
    settings = read_config_file(write(tmp_path, "[gateway]\nsandbox = true\n" + text), BACKENDS)
    assert settings.sandbox


def test_the_demo_key_works_in_a_sandbox_configuration_only(make_gateway):
    def config(sandbox: bool) -> dict:
        settings = gateway_config(wh=ongoing_connection("http://127.0.0.1:9" + ONGOING_SERVICE_PATH))
        settings["gateway"]["sandbox"] = sandbox
        settings["callers"] = {"demo": {"keys": [DEMO_KEY], "scopes": ["events:read"]}}
        return settings

    client = make_gateway(config(sandbox=True)).test_client()
    assert client.get("/events", headers=bearer(DEMO_KEY)).status_code == 200
    with pytest.raises(ConfigError, match=r"^<test configuration>: callers\.demo\.keys\.0: is a public demo secret"):
        make_gateway(config(sandbox=False))
