"""Backends misbehaving below HTTP: a connection dropped after the request arrived is a 502 that says the update
may have been applied; a port where nothing listens is a 503; a silent backend is a 504 naming its timeout."""

from __future__ import annotations

import pytest

from tests.conftest import gateway_config
from tests.hostile.conftest import (
    CONNECTION_TABLES,
    KINDS,
    SERVICE_PATHS,
    assert_problem,
    send_valid_update,
)
from tests.servers import closed_port

#: calls one update makes to a backend that may have received it: idempotent operations are retried within the
#: deadline (UpdateOrder sets values, UpdateOrderInformation replaces addresses), updateOrderStatus never is
ATTEMPTS_AFTER_SENDING = {"ongoing": 3, "speed4trade": 1, "sellercenter": 3}


def gateway_at(make_gateway, kind: str, port: int, **overrides):
    """A test client of a gateway whose one connection, `hostile`, of backend `kind` is at 127.0.0.1:`port`."""
    url = f"http://127.0.0.1:{port}{SERVICE_PATHS[kind]}"
    return make_gateway(gateway_config(hostile=CONNECTION_TABLES[kind](url, **overrides))).test_client()


@pytest.mark.parametrize("behaviour", ["close", "reset"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_connection_dropped_after_the_request_arrived_is_502_may_have_been_applied(
        make_gateway, misbehaving_server, kind, behaviour):
    server = misbehaving_server(behaviour)
    reply = send_valid_update(gateway_at(make_gateway, kind, server.port), kind)
    problem = assert_problem(reply, 502, "backend-failure")
    assert "may have been applied" in problem["detail"]
    assert problem["backend"]["connection"] == "hostile"
    assert server.requests_read == ATTEMPTS_AFTER_SENDING[kind]


@pytest.mark.parametrize("behaviour", ["close", "reset"])
def test_a_dropped_bulk_call_fails_its_items_with_may_have_been_applied(make_gateway, misbehaving_server, behaviour):
    server = misbehaving_server(behaviour)
    client = gateway_at(make_gateway, "sellercenter", server.port)
    reply = client.patch("/orders", json={"orders": [{"order_id": 300001, "shipping_address": {"city": "Bonn"}},
                                                     {"order_id": 300002, "shipping_address": {"city": "Kiel"}}]})
    assert reply.status_code == 207, reply.get_data(as_text=True)
    results = reply.get_json()["results"]
    assert [result["status"] for result in results] == [502, 502]
    assert all("may have been applied" in result["body"]["detail"] for result in results)


@pytest.mark.parametrize("kind", KINDS)
def test_a_port_where_nothing_listens_is_still_503(make_gateway, kind):
    problem = assert_problem(send_valid_update(gateway_at(make_gateway, kind, closed_port()), kind), 503,
                             "backend-unavailable")
    assert "may have been applied" not in problem["detail"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_backend_that_never_answers_is_504_naming_the_read_timeout(make_gateway, misbehaving_server, kind):
    server = misbehaving_server("hang")
    client = gateway_at(make_gateway, kind, server.port, read_timeout=0.3, connect_timeout=5)
    problem = assert_problem(send_valid_update(client, kind), 504, "backend-timeout")
    assert "read_timeout 0.3 s" in problem["detail"]
    assert "5 s" not in problem["detail"]
    assert server.requests_read == ATTEMPTS_AFTER_SENDING[kind]
