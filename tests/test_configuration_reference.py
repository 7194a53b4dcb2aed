"""docs/configuration.md is what the settings' declarations give now; every key has its one-line description."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway import config_reference
from gateway.backends import BACKENDS
from gateway.config import ConnectionSettings, GatewaySettings
from gateway.config_reference import configuration_reference, reference_tables, table_keys

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "configuration.md"


def test_the_committed_reference_is_what_the_declarations_give_now(capsys):
    status = config_reference.main(["--check", str(REFERENCE)])
    assert status == 0, capsys.readouterr().err


def test_a_stale_reference_is_caught_and_the_refresh_named(tmp_path, capsys):
    generated = configuration_reference(BACKENDS)
    description = "calls per second to the backend, per connection, across every gateway process sharing the stores"
    assert generated.count(description) == 1
    stale = tmp_path / "configuration.md"
    stale.write_text(generated.replace(description, "calls per second to the backend"), encoding="utf-8")
    assert config_reference.main(["--check", str(stale)]) == 1
    message = capsys.readouterr().err
    assert str(stale) in message and "make docs" in message
    assert "python -m gateway configuration-reference > docs/configuration.md" in message
    assert "-| `max_calls_per_second`" in message and "calls per second to the backend |" in message
    stale.write_text(generated, encoding="utf-8")
    assert config_reference.main(["--check", str(stale)]) == 0


def test_the_reference_is_written_from_the_declarations(monkeypatch):
    declared = next(item for item in ConnectionSettings.__dataclass_fields__.values()
                    if item.name == "max_calls_per_second").metadata["setting"]
    monkeypatch.setitem(declared.metadata, "description", "a description changed where the key is declared")
    assert "| a description changed where the key is declared |" in configuration_reference(BACKENDS)


def test_the_command_writes_the_reference_to_standard_output(capsys):
    assert config_reference.main([]) == 0
    assert capsys.readouterr().out == configuration_reference(BACKENDS)


def test_every_key_has_a_one_line_description():
    keys = [(table.heading, name, declared) for table in reference_tables(BACKENDS)
            for name, declared in table_keys(table)]
    assert len(keys) > 80
    for heading, name, declared in keys:
        description = declared.metadata.get("description")
        assert isinstance(description, str) and description.strip(), f"{heading} {name} has no description"
        assert "\n" not in description, f"{heading} {name}: one line"


def test_every_table_and_key_is_in_the_reference():
    text = configuration_reference(BACKENDS)
    for table in reference_tables(BACKENDS):
        section = text.split(f"## {table.heading}\n", 1)[1].split("\n## ", 1)[0]
        for name, _ in table_keys(table):
            assert f"| `{name}` |" in section, f"{table.heading} {name}"
    for kind in BACKENDS:
        assert f'## [connections.<name>] with backend = "{kind}"' in text
    gateway_keys = [item.name for item in GatewaySettings.__dataclass_fields__.values() if "setting" in item.metadata]
    assert "request_timeout" in gateway_keys and "source" not in gateway_keys


@pytest.mark.parametrize(("table", "key", "row"), [
    ("[connections.<name>]", "connect_timeout", "| `connect_timeout` | number, ≥ 0.001, ≤ 300 | `3.05` |"),
    ("[connections.<name>]", "max_calls_per_second", "| `max_calls_per_second` | number, > 0 | unset |"),
    ("[connections.<name>]", "backend", "| `backend` | string | required |"),
    ("[callers.<name>]", "connections", '| `connections` | list of (string, length ≥ 1), length ≥ 1 | `["*"]` |'),
    ("[journal]", "record_bodies", "| `record_bodies` | boolean | `true` |"),
])
def test_a_row_shows_type_limits_and_default(table, key, row):
    text = configuration_reference(BACKENDS)
    section = text.split(f"## {table}\n", 1)[1].split("\n## ", 1)[0]
    assert row in section

