"""Every route's declaration (gateway/rest/endpoints.py) against the app's routes: every route declares its policy
(and an API operation its query schema), a route without one is closed to all but known callers, no route is open
without saying so, and every route whose policy says it touches connection data reads the caller's connections when
a caller limited to some connections uses it."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from flask import Blueprint, request, request_finished

from gateway.callers import SCOPED_ENVIRON_KEY
from gateway.config import SCOPES
from gateway.console.views import PUBLIC_ENDPOINTS
from gateway.rest.auth import KNOWN, OPEN, SESSION, UNDECLARED, OpenWhen, Policy
from gateway.rest.endpoints import declaration_of
from gateway.rest.queries import QuerySchema
from tests.conftest import ONGOING_SERVICE_PATH, ongoing_connection

SCOPED_KEY = "scoped-caller-key-000001"
WEBHOOK_AUTH = ("ongoing-webhooks", "webhook-demo-password")
SESSION_SECRET = "console-session-secret-for-policies-01"


@pytest.fixture
def app(make_gateway, sandbox_url):
    """Two connections, and a caller with every scope that may use one of them."""
    webhooks = {"auth": "basic", "username": WEBHOOK_AUTH[0], "password": WEBHOOK_AUTH[1]}
    return make_gateway({
        "gateway": {"default_connection": "ongoing-demo"},
        "connections": {
            "ongoing-demo": ongoing_connection(sandbox_url + ONGOING_SERVICE_PATH, webhooks=webhooks),
            "elsewhere": ongoing_connection("http://127.0.0.1:9" + ONGOING_SERVICE_PATH),
        },
        "callers": {"scoped": {"key": SCOPED_KEY, "connections": ["ongoing-demo"], "scopes": sorted(SCOPES)}},
        "console": {"session_secret": SESSION_SECRET},
    })


def policies(app) -> dict[str, Policy]:
    """endpoint -> the policy its view declares, for every route of the app (None: no declaration)."""
    return {rule.endpoint: getattr(declaration_of(app.view_functions[rule.endpoint]), "policy", None)
            for rule in app.url_map.iter_rules()}


def test_every_route_declares_its_policy(app):
    undeclared = sorted(endpoint for endpoint, policy in policies(app).items() if policy is None)

    assert undeclared == [], "routes without a declaration (@endpoint or @undocumented, gateway/rest/endpoints.py)"


def test_every_api_operation_declares_its_query(app):
    for rule in app.url_map.iter_rules():
        declaration = declaration_of(app.view_functions[rule.endpoint])
        if declaration is not None and declaration.operation is not None:
            assert isinstance(declaration.query, type) and issubclass(declaration.query, QuerySchema), rule.endpoint


def test_every_declaration_says_who_may_call_it_and_whether_it_touches_connection_data(app):
    for endpoint, policy in policies(app).items():
        assert isinstance(policy, Policy), endpoint
        assert type(policy.connection_data) is bool, endpoint
        access = policy.access
        assert access in (OPEN, SESSION, KNOWN) or isinstance(access, OpenWhen) or (
            isinstance(access, tuple) and access and set(access) <= set(SCOPES)), endpoint
        assert set(policy.dry_run_scopes) <= set(SCOPES), endpoint
    with pytest.raises(TypeError):
        Policy(("events:read",))  # connection_data has no default: every declaration says it


def test_a_route_without_a_declaration_is_closed_to_all_but_known_callers(app):
    undeclared = Blueprint("undeclared", __name__)
    undeclared.add_url_rule("/undeclared", "view", lambda: {"served": True})
    app.register_blueprint(undeclared)
    client = app.test_client()

    assert UNDECLARED.access == KNOWN and UNDECLARED.connection_data
    assert client.get("/undeclared").status_code == 401
    assert client.get("/undeclared", headers={"Authorization": "Bearer not-a-known-key-000"}).status_code == 401
    reply = client.get("/undeclared", headers={"Authorization": f"Bearer {SCOPED_KEY}"})
    assert (reply.status_code, reply.get_json()) == (200, {"served": True})


def _path(rule) -> str:
    return re.sub(r"<(?:[^:>]+:)?\w+>", "x", rule.rule)


def test_no_route_is_open_without_saying_so(app):
    settings = app.config["GATEWAY_SETTINGS"]
    client = app.test_client()
    checked = 0
    declared = policies(app)
    for rule in app.url_map.iter_rules():
        access = declared[rule.endpoint].access
        if isinstance(access, OpenWhen):
            if getattr(settings, access.setting):
                continue
            access = KNOWN
        if access == OPEN or rule.endpoint in PUBLIC_ENDPOINTS:
            continue
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            reply = client.open(_path(rule), method=method)
            if access == SESSION:
                assert reply.status_code == 303, (rule.rule, method)
                assert reply.headers["Location"].startswith("/console/login"), (rule.rule, method)
            else:
                assert reply.status_code == 401, (rule.rule, method, reply.status_code)
            checked += 1
    assert checked >= 12


# --- connection data ----------------------------------------------------------------------------------------------

def _recent_webhook() -> dict:
    moment = datetime.now(UTC) - timedelta(minutes=5)
    return {"webhookOrdersId": 3, "webhookEventId": 71, "system": "sandbox",
            "timestamp": f"{moment:%Y-%m-%dT%H:%M:%S}", "orderId": 1001, "orderNumber": "SO-1001",
            "goodsOwnerId": 1, "orderStatus": {"number": 300}, "webhookTemplate": "OrderStatusChanged"}


@pytest.fixture
def known(app):
    """What the samples use: an event and an exchange of the caller's connection, and a console login."""
    api = app.test_client()
    stored = api.post("/webhooks/ongoing/ongoing-demo", json=_recent_webhook(), auth=WEBHOOK_AUTH)
    assert stored.status_code == 202, stored.get_json()
    bearer = {"Authorization": f"Bearer {SCOPED_KEY}"}
    assert api.patch("/orders/SO-1008", json={"waybill": "POLICY-1"}, headers=bearer).status_code == 200
    exchanges = api.get("/exchanges", headers=bearer).get_json()["exchanges"]
    job = api.patch("/orders/SO-1009", json={"waybill": "POLICY-2"}, headers={**bearer, "Prefer": "respond-async"})
    assert job.status_code == 202, job.get_json()
    console = app.test_client()
    form = console.get("/console/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    assert console.post("/console/login", data={"csrf_token": token, "key": SCOPED_KEY}).status_code == 303
    page = console.get("/console").get_data(as_text=True)
    return {"api": api, "bearer": bearer, "event": stored.get_json()["id"], "exchange": exchanges[0]["id"],
            "job": job.get_json()["id"], "console": console,
            "csrf": re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)}


#: endpoint -> a request of the scoped caller to it (a route whose policy says it touches connection data needs one)
SAMPLES = {
    "orders.update_order": lambda k: k["api"].patch("/orders/SO-1001?dry_run=true", json={"status": "released"},
                                                    headers=k["bearer"]),
    "orders.update_orders": lambda k: k["api"].patch(
        "/orders?dry_run=true", json={"orders": [{"order_id": "SO-1001", "status": "released"}]},
        headers=k["bearer"]),
    "events.list_events": lambda k: k["api"].get("/events", headers=k["bearer"]),
    "events.show_event": lambda k: k["api"].get(f"/events/{k['event']}", headers=k["bearer"]),
    "events.redeliver_event": lambda k: k["api"].post(f"/events/{k['event']}/redeliver", headers=k["bearer"]),
    "exchanges.list_exchanges": lambda k: k["api"].get("/exchanges", headers=k["bearer"]),
    "exchanges.show_exchange": lambda k: k["api"].get(f"/exchanges/{k['exchange']}", headers=k["bearer"]),
    "updates.list_updates": lambda k: k["api"].get("/updates", headers=k["bearer"]),
    "updates.show_update": lambda k: k["api"].get(f"/updates/{k['job']}", headers=k["bearer"]),
    "updates.retry_update": lambda k: k["api"].post(f"/updates/{k['job']}/retry", headers=k["bearer"]),
    "console.overview": lambda k: k["console"].get("/console"),
    "console.order_timeline": lambda k: k["console"].get("/console/orders?order_id=SO-1001"),
    "console.redeliver": lambda k: k["console"].post(
        f"/console/events/{k['event']}/redeliver", data={"csrf_token": k["csrf"], "idempotency_key": "policy-1"}),
    "console.retry_update": lambda k: k["console"].post(
        f"/console/updates/{k['job']}/retry", data={"csrf_token": k["csrf"], "idempotency_key": "policy-2"}),
}
#: the routes whose policy says they touch connection data (checked against the declarations below)
CONNECTION_DATA = sorted(SAMPLES)


def scoped_requests(app) -> tuple[list, object]:
    """A list that receives (endpoint, whether the request read its caller's connections) for each request, and
    the receiver to connect."""
    seen: list[tuple[str, bool]] = []

    def record(sender, response, **_):
        seen.append((request.endpoint, bool(request.environ.get(SCOPED_ENVIRON_KEY))))

    return seen, record


def test_every_route_that_touches_connection_data_has_a_sample(app):
    touching = sorted(endpoint for endpoint, policy in policies(app).items() if policy.connection_data)

    assert touching == CONNECTION_DATA


@pytest.mark.parametrize("endpoint", CONNECTION_DATA)
def test_a_route_that_touches_connection_data_reads_the_callers_connections(app, known, endpoint):
    seen, record = scoped_requests(app)
    with request_finished.connected_to(record, app):
        reply = SAMPLES[endpoint](known)

    assert reply.status_code < 500, reply.get_data(as_text=True)[:500]
    assert (endpoint, True) in seen, (
        f"{endpoint} touches connection data (its declared policy) but never read the caller's connections: use "
        f"current_caller().sees(connection), scoped_connections() or require_connection(); seen: {seen}")


def test_a_route_that_does_not_read_them_is_seen_as_such(app):
    seen, record = scoped_requests(app)
    with request_finished.connected_to(record, app):
        app.test_client().get("/livez")
        app.test_client().get("/console/login")

    assert seen == [("health.livez", False), ("console.login_form", False)]
