"""What the benchmarks send: per registered backend, its sandbox connection and canonical documents that the
sandbox accepts again and again.

The backends are gateway.backends.BACKENDS; each one's connection, URL variable and sandbox path come from the
shipped config/sandbox.toml (its first connection of that backend). The configuration a benchmark runs is that
file with every URL pointed at one sandbox and the event databases moved into a scratch folder, so a benchmark
never touches var/ or port 8001.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from gateway.backends import BACKENDS
from gateway.canonical.schema import load_order_update
from gateway.config import load_settings
from gateway.connections import Connection
from gateway.transport import BackendReply, OutboundRequest

ROOT = Path(__file__).resolve().parent.parent
SANDBOX_CONFIG = ROOT / "config" / "sandbox.toml"
#: `${NAME:-default}` as the configuration writes a setting that the environment may override
REFERENCE = re.compile(r"\$\{(?P<name>\w+):-(?P<default>[^}]*)\}")
#: where every backend connection points when nothing is to be sent: nothing listens on port 9
NO_BACKEND = "http://127.0.0.1:9"


def default_of(value: str) -> str:
    """The default of a `${NAME:-default}` setting (the value itself when it is not one)."""
    match = REFERENCE.fullmatch(value)
    return match["default"] if match else value


@dataclass(frozen=True)
class SandboxConnection:
    """A backend's connection in config/sandbox.toml: its name, its URL's variable and its path in the sandbox."""

    name: str
    url_variable: str
    path: str
    table: Mapping[str, Any]


def sandbox_connections() -> dict[str, SandboxConnection]:
    """Backend kind -> its connection in config/sandbox.toml, for every kind of the registry."""
    raw = tomllib.loads(SANDBOX_CONFIG.read_text())
    found: dict[str, SandboxConnection] = {}
    for name, table in raw["connections"].items():
        match = REFERENCE.fullmatch(table["url"])
        if table["backend"] in BACKENDS and match and table["backend"] not in found:
            found[table["backend"]] = SandboxConnection(name, match["name"], urlsplit(match["default"]).path, table)
    if missing := sorted(set(BACKENDS) - set(found)):
        raise RuntimeError(f"{SANDBOX_CONFIG} has no connection of backend(s) {missing}")
    return {kind: found[kind] for kind in BACKENDS}


SANDBOX = sandbox_connections()
_RAW = tomllib.loads(SANDBOX_CONFIG.read_text())
#: the sandbox configuration's demo caller (every scope, every connection): the benchmarks call as it
DEMO_KEY = default_of(_RAW["callers"]["demo"]["keys"][0])


@dataclass(frozen=True)
class Workload:
    """One backend's updates: the orders they go to and the canonical change sent to each."""

    backend: str
    order_ids: tuple[str, ...]
    change: Mapping[str, Any]

    @property
    def connection(self) -> str:
        """The sandbox configuration's connection to this backend."""
        return SANDBOX[self.backend].name

    def order_id(self, index: int) -> str:
        """The order the `index`-th request goes to (round robin)."""
        return self.order_ids[index % len(self.order_ids)]

    def document(self) -> dict[str, Any]:
        """The body of PATCH /orders/<id>."""
        return {"connection": self.connection, **self.change}


def per_backend(workloads: Mapping[str, Workload]) -> dict[str, Workload]:
    """The workloads in the registry's order; every registered backend must have one."""
    if missing := sorted(set(BACKENDS) - set(workloads)):
        raise RuntimeError(f"no benchmark workload for backend(s) {missing}: add one in bench/workload.py")
    return {kind: workloads[kind] for kind in BACKENDS}


#: Load and memory: updates of orders in sandbox/data that succeed every time (no state change refuses a repeat).
REPEATABLE = per_backend({
    "ongoing": Workload("ongoing", tuple(f"SO-{n}" for n in range(1006, 1011)), {"picking_priority": 5}),
    "speed4trade": Workload("speed4trade", tuple(str(n) for n in range(10001, 10009)), {"status": "fetched"}),
    "sellercenter": Workload("sellercenter", tuple(str(n) for n in range(300001, 300009)),
                             {"billing_address": {"phone": "+49 40 1234567"}}),
})
#: Translation in process: a typical update of each backend, as the README shows them.
TYPICAL = per_backend({
    "ongoing": Workload("ongoing", ("SO-1006",), {"status": "released"}),
    "speed4trade": Workload("speed4trade", ("10001",), {
        "status": "shipped", "shipments": [{"tracking_number": "00340434161094042557", "carrier": "DHL"}]}),
    "sellercenter": Workload("sellercenter", ("300001",),
                             {"shipping_address": {"address1": "Hauptstraße 5", "city": "Hamburg"}}),
})


def recent_ongoing_timestamp() -> str:
    """An hour ago in UTC as Ongoing writes it (no offset, seven fractional digits): the gateway refuses webhooks
    dated more than 48 hours back as replays."""
    moment = datetime.now(UTC) - timedelta(hours=1)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond * 10:07d}"


def sandbox_urls(sandbox_url: str) -> dict[str, str]:
    """The environment that points every connection (and the demo subscriber) at one sandbox."""
    return {**{entry.url_variable: sandbox_url + entry.path for entry in SANDBOX.values()},
            "DEMO_SUBSCRIBER_URL": f"{sandbox_url}/subscriber/events"}


def write_config_copy(folder: Path, redis_url: str | None = None) -> Path:
    """config/sandbox.toml with its [events] databases moved into `folder` (and Redis when `redis_url` is given);
    URLs come from the environment."""
    text = SANDBOX_CONFIG.read_text()
    replacements = {f'{key} = "../var/{name}.sqlite3"': f'{key} = "{folder / name}.sqlite3"'
                    for key, name in (("database", "events"), ("queue_database", "queue"))}
    if redis_url is not None:
        replacements['# redis_url = "redis://127.0.0.1:6379/0"'] = f'redis_url = "{redis_url}"'
    for shipped, replacement in replacements.items():
        if shipped not in text:
            raise RuntimeError(f"{SANDBOX_CONFIG}: expected the line {shipped!r}")
        text = text.replace(shipped, replacement)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "gateway.toml"
    path.write_text(text)
    return path


def parsed_config(sandbox_url: str, folder: Path, redis_url: str | None = None) -> dict[str, Any]:
    """The parsed configuration copy for an in-process gateway (`create_app(config)`)."""
    with open(write_config_copy(folder, redis_url), "rb") as handle:
        raw = tomllib.load(handle)
    for entry in SANDBOX.values():
        raw["connections"][entry.name]["url"] = sandbox_url + entry.path
    raw["subscribers"]["demo"]["url"] = f"{sandbox_url}/subscriber/events"
    return raw


def configured_connections(sandbox_url: str, folder: Path) -> dict[str, Connection]:
    """Backend kind -> the ready Connection of its sandbox connection, built as the gateway builds it."""
    settings = load_settings(parsed_config(sandbox_url, folder), str(folder / "gateway.toml"), BACKENDS)
    return {kind: Connection(settings.connections[entry.name], BACKENDS[kind]) for kind, entry in SANDBOX.items()}


def rendered_request(connection: Connection, workload: Workload, index: int = 0) -> OutboundRequest:
    """The request the gateway would send for the workload's `index`-th update, with the real credentials."""
    planned = connection.check(load_order_update(workload.order_id(index), workload.document()))
    return planned.operation.render([planned.update], connection.credentials)


def prepared_request(connection: Connection, request: OutboundRequest) -> requests.PreparedRequest:
    """The request as it leaves the gateway: with the connection's transport-level authentication applied now."""
    return requests.Request(request.method, request.url, headers=dict(request.headers), data=request.body,
                            auth=connection.auth).prepare()


def sandbox_reply(sandbox_client: Any, connection: Connection, request: OutboundRequest) -> BackendReply:
    """The sandbox's reply to one rendered request, through a Flask test client of the sandbox app."""
    prepared = prepared_request(connection, request)
    response = sandbox_client.open(prepared.path_url, method=prepared.method, data=prepared.body,
                                   headers=dict(prepared.headers))
    return BackendReply(status=response.status_code, headers=dict(response.headers), body=response.data)


def environment_without_backend_urls() -> dict[str, str]:
    """This process's environment minus anything that would point a gateway elsewhere than the bench's sandbox."""
    dropped = {*(entry.url_variable for entry in SANDBOX.values()), "GATEWAY_CONFIG", "DEMO_SUBSCRIBER_URL"}
    return {name: value for name, value in os.environ.items()
            if name not in dropped and not name.startswith("SANDBOX_")}
