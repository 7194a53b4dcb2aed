"""The Gateway (gateway/runtime.py): one extension object holds what a gateway app opened, and one close() closes
it all, once, whatever one part's close does; a gunicorn worker closes its app's Gateway when it stops."""

from __future__ import annotations

import logging
import os
import runpy
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest

from gateway import create_app
from gateway.errors import ConfigError
from gateway.events import EventService
from gateway.runtime import EXTENSION, Gateway, current_gateway, find_gateway, gateway_of
from tests.conftest import ONGOING_SERVICE_PATH, gateway_config, ongoing_connection

ROOT = Path(__file__).resolve().parent.parent
#: the parts of a built app that have a close()
CLOSABLE = ("recorder", "connections", "events", "auth_throttle", "idempotency", "console_sessions")


@pytest.fixture
def built(make_gateway, sandbox_url):
    """A gateway app with callers (so an authenticator and its throttle) and one Ongoing connection."""
    config = gateway_config(ongoing=ongoing_connection(sandbox_url + ONGOING_SERVICE_PATH))
    config["callers"] = {"ops": {"key": "ops-key-000000000001", "scopes": ["events:read"]}}
    return make_gateway(config)


def spy_on_closes(gateway: Gateway, monkeypatch) -> list[tuple[str, dict]]:
    """Note every close of the Gateway's parts (and of each connection's HTTP pool), in order, with its keyword
    arguments; each still closes its part."""
    closed: list[tuple[str, dict]] = []

    def spy(name: str, part) -> None:
        original = part.close

        def close(**kwargs):
            closed.append((name, kwargs))
            return original(**kwargs)

        monkeypatch.setattr(part, "close", close)

    for name in CLOSABLE:
        spy(name, getattr(gateway, name))
    for name, connection in gateway.connections.by_name.items():
        spy(f"connection:{name}", connection)
    return closed


def test_the_app_keeps_one_gateway_holding_every_part(built):
    gateway = gateway_of(built)
    assert built.extensions[EXTENSION] is gateway and find_gateway(built) is gateway
    assert [name for name in built.extensions if name.startswith(("order_gateway", "order_events"))] == [EXTENSION]
    assert gateway.settings is built.config["GATEWAY_SETTINGS"]
    assert all(getattr(gateway, name) is not None for name in ("scrubber", "authenticator", *CLOSABLE))
    assert gateway.connections.recorder is gateway.recorder
    with built.app_context():
        assert current_gateway() is gateway
    assert built.test_client().get("/openapi.json").status_code == 200
    assert gateway.openapi_document is not None  # the document is built once and kept by the Gateway


def test_close_closes_every_part_once_the_journal_first_and_again_does_nothing(built, monkeypatch):
    gateway = gateway_of(built)
    closed = spy_on_closes(gateway, monkeypatch)
    gateway.close(journal_timeout=2.5)
    assert gateway.closed
    assert closed[0] == ("recorder", {"timeout": 2.5})  # written out within the time the caller gives it
    names = [name for name, _ in closed]
    # every part and every connection's pool once (the connections close the recorder again: it is closed by then)
    assert sorted(set(names)) == sorted({*CLOSABLE, "connection:ongoing"})
    assert {name: names.count(name) for name in names if name != "recorder"} == dict.fromkeys(
        {*CLOSABLE, "connection:ongoing"} - {"recorder"}, 1)
    assert gateway.openapi_document is None
    gateway.close()
    assert [name for name, _ in closed] == names, "a second close() closed something again"


def test_a_part_whose_close_fails_is_logged_and_the_others_are_closed(built, monkeypatch, caplog):
    gateway = gateway_of(built)
    closed = spy_on_closes(gateway, monkeypatch)

    def broken(**kwargs):
        closed.append(("events", kwargs))
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(gateway.events, "close", broken)
    with caplog.at_level(logging.WARNING, logger="gateway.runtime"):
        gateway.close()
    assert {name for name, _ in closed} == {*CLOSABLE, "connection:ongoing"}
    (line,) = [record for record in caplog.records if record.name == "gateway.runtime"]
    assert line.getMessage() == "closing the gateway's events failed: OperationalError: disk I/O error"


def test_an_app_that_cannot_be_built_closes_what_it_opened(tmp_path, sandbox_url, monkeypatch):
    closed = []
    original = EventService.close
    monkeypatch.setattr(EventService, "close", lambda service: (closed.append(service), original(service)))
    config = gateway_config(ongoing=ongoing_connection(sandbox_url + ONGOING_SERVICE_PATH))
    config["gateway"]["sandbox"] = True
    config["events"] = {"database": str(tmp_path / "events.sqlite3"), "queue_database": str(tmp_path / "q.sqlite3")}
    with pytest.raises(ConfigError, match=r"no \[callers\.<name>\] is configured"):
        create_app(config)  # the events are opened before the callers are checked
    assert len(closed) == 1


def load_gunicorn_settings(tmp_path, monkeypatch) -> dict:
    """config/gunicorn.py's names, loaded as gunicorn loads it (the metrics directory already chosen)."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    return runpy.run_path(str(ROOT / "config" / "gunicorn.py"))


def test_a_stopping_worker_closes_its_gateway_then_exports_its_spans(built, tmp_path, monkeypatch):
    settings = load_gunicorn_settings(tmp_path, monkeypatch)
    gateway = gateway_of(built)
    closed = spy_on_closes(gateway, monkeypatch)
    monkeypatch.setattr("gateway.tracing.shutdown", lambda: closed.append(("tracing", {})))
    settings["worker_exit"](SimpleNamespace(), SimpleNamespace(pid=os.getpid(), wsgi=built))
    assert gateway.closed
    assert closed[0] == ("recorder", {"timeout": settings["_JOURNAL_CLOSE_SECONDS"]})
    assert closed[-1] == ("tracing", {})
    assert {name for name, _ in closed} == {*CLOSABLE, "connection:ongoing", "tracing"}


def test_the_master_closes_no_gateway_for_a_worker_that_vanished(built, tmp_path, monkeypatch):
    settings = load_gunicorn_settings(tmp_path, monkeypatch)
    monkeypatch.setattr("gateway.tracing.shutdown", lambda: None)
    settings["worker_exit"](SimpleNamespace(), SimpleNamespace(pid=os.getpid() + 1, wsgi=built))
    assert not gateway_of(built).closed
