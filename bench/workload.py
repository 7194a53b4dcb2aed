"""What the benchmarks send: per backend, canonical documents that the sandboxes accept again and again.

The configuration is the shipped config/sandbox.toml with every URL pointed at one sandbox and the event
databases moved into a scratch folder, so a benchmark never touches var/ or port 8001.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from gateway.backends import BACKENDS
from gateway.canonical.schema import load_order_update
from gateway.config import load_settings
from gateway.connections import Connection
from gateway.transport import BackendReply, OutboundRequest

ROOT = Path(__file__).resolve().parent.parent
SANDBOX_CONFIG = ROOT / "config" / "sandbox.toml"
CONNECTIONS = {"ongoing": "ongoing-demo", "speed4trade": "speed4trade-demo", "sellercenter": "sellercenter-demo"}
SERVICE_PATHS = {"ongoing": "/ongoing/Service.asmx", "speed4trade": "/speed4trade/",
                 "sellercenter": "/sellercenter/oms-api/"}
#: the sandbox configuration's demo caller (every scope, every connection): the benchmarks call as it
DEMO_KEY = "demo-caller-key-0000"
#: the environment variables config/sandbox.toml reads the backend URLs from
URL_VARIABLES = {"ongoing": "ONGOING_URL", "speed4trade": "SPEED4TRADE_URL", "sellercenter": "SELLERCENTER_URL"}


@dataclass(frozen=True)
class Workload:
    """One backend's repeatable updates: the orders they go to and the canonical change sent to each."""

    backend: str
    order_ids: tuple[str, ...]
    change: Mapping[str, Any]

    @property
    def connection(self) -> str:
        """The sandbox configuration's connection to this backend."""
        return CONNECTIONS[self.backend]

    def order_id(self, index: int) -> str:
        """The order the `index`-th request goes to (round robin)."""
        return self.order_ids[index % len(self.order_ids)]

    def document(self) -> dict[str, Any]:
        """The body of PATCH /orders/<id>."""
        return {"connection": self.connection, **self.change}

    def bulk_document(self, items: int) -> dict[str, Any]:
        """The body of PATCH /orders with `items` items, round robin over the orders."""
        return {"connection": self.connection,
                "orders": [{"order_id": self.order_id(index), **self.change} for index in range(items)]}


#: Load, memory and bulk: updates that succeed every time (no state change refuses a repeat).
REPEATABLE = {
    "ongoing": Workload("ongoing", tuple(f"SO-{n}" for n in range(1006, 1011)), {"picking_priority": 5}),
    "speed4trade": Workload("speed4trade", tuple(str(n) for n in range(10001, 10009)), {"status": "fetched"}),
    "sellercenter": Workload("sellercenter", tuple(str(n) for n in range(300001, 300009)),
                             {"billing_address": {"phone": "+49 40 1234567"}}),
}

#: Translation in process: a typical update of each backend, as the README shows them.
TYPICAL = {
    "ongoing": Workload("ongoing", ("SO-1006",), {"status": "released"}),
    "speed4trade": Workload("speed4trade", ("10001",), {
        "status": "shipped", "shipments": [{"tracking_number": "00340434161094042557", "carrier": "DHL"}]}),
    "sellercenter": Workload("sellercenter", ("300001",),
                             {"shipping_address": {"address1": "Hauptstraße 5", "city": "Hamburg"}}),
}


def recent_ongoing_timestamp() -> str:
    """An hour ago in UTC as Ongoing writes it (no offset, seven fractional digits): the gateway refuses webhooks
    dated more than 48 hours back as replays."""
    moment = datetime.now(UTC) - timedelta(hours=1)
    return f"{moment:%Y-%m-%dT%H:%M:%S}.{moment.microsecond * 10:07d}"


def as_demo_caller(client: Any) -> Any:
    """A Flask test client of the gateway that sends the demo caller's key with every request."""
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {DEMO_KEY}"
    return client


def sandbox_urls(sandbox_url: str) -> dict[str, str]:
    """The environment that points every connection (and the demo subscriber) at one sandbox."""
    return {
        **{URL_VARIABLES[backend]: sandbox_url + path for backend, path in SERVICE_PATHS.items()},
        "DEMO_SUBSCRIBER_URL": f"{sandbox_url}/subscriber/events",
    }


def write_config_copy(folder: Path) -> Path:
    """config/sandbox.toml with its [events] databases moved into `folder`; URLs come from the environment."""
    text = SANDBOX_CONFIG.read_text()
    for key, name in (("database", "events"), ("queue_database", "queue")):
        shipped = f'{key} = "../var/{name}.sqlite3"'
        if shipped not in text:
            raise RuntimeError(f"{SANDBOX_CONFIG}: expected the line {shipped!r}")
        text = text.replace(shipped, f'{key} = "{folder / name}.sqlite3"')
    path = folder / "gateway.toml"
    path.write_text(text)
    return path


def parsed_config(sandbox_url: str, folder: Path) -> dict[str, Any]:
    """The parsed configuration copy for an in-process gateway (`create_app(config)`)."""
    with open(write_config_copy(folder), "rb") as handle:
        raw = tomllib.load(handle)
    for backend, path in SERVICE_PATHS.items():
        raw["connections"][CONNECTIONS[backend]]["url"] = sandbox_url + path
    raw["subscribers"]["demo"]["url"] = f"{sandbox_url}/subscriber/events"
    return raw


def configured_connections(sandbox_url: str, folder: Path) -> dict[str, Connection]:
    """Backend kind -> the ready Connection of its sandbox connection, built as the gateway builds it."""
    settings = load_settings(parsed_config(sandbox_url, folder), str(folder / "gateway.toml"), BACKENDS)
    return {backend: Connection(settings.connections[name], BACKENDS[backend])
            for backend, name in CONNECTIONS.items()}


def rendered_request(connection: Connection, workload: Workload, index: int = 0) -> OutboundRequest:
    """The request the gateway would send for the workload's `index`-th update, with the real credentials."""
    planned = connection.check(load_order_update(workload.order_id(index), workload.document()))
    return planned.operation.render([planned.update], connection.credentials)


def prepared_request(connection: Connection, request: OutboundRequest) -> requests.PreparedRequest:
    """The request as it leaves the gateway: with the connection's transport-level authentication applied."""
    return requests.Request(request.method, request.url, headers=dict(request.headers), data=request.body,
                            auth=connection.auth).prepare()


def sandbox_reply(sandbox_client: Any, connection: Connection, request: OutboundRequest) -> BackendReply:
    """The sandbox's reply to one rendered request, through a Flask test client of the sandbox app."""
    prepared = prepared_request(connection, request)
    path = prepared.path_url
    response = sandbox_client.open(path, method=prepared.method, data=prepared.body,
                                   headers=dict(prepared.headers))
    return BackendReply(status=response.status_code, headers=dict(response.headers), body=response.data)


def environment_without_backend_urls() -> dict[str, str]:
    """This process's environment minus anything that would point a gateway elsewhere than the bench's sandbox."""
    return {name: value for name, value in os.environ.items()
            if name not in {*URL_VARIABLES.values(), "GATEWAY_CONFIG", "DEMO_SUBSCRIBER_URL"}
            and not name.startswith("SANDBOX_")}
