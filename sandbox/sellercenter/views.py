"""HTTP face of the simulated SellerCenter: the OMS API endpoint, a read-only JSON view of its orders, a reset."""

import json
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from flask import Blueprint, Request, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from sandbox.outages import (
    APPLIED,
    FAULT,
    REFUSED,
    CallSummary,
    add_control_routes,
    build_service_view,
    service_controls,
)
from sandbox.sellercenter.model import ADDRESS_FIELDS, ADDRESS_MEMBERS, Order
from sandbox.sellercenter.oms_api import (
    CallRefused,
    check_call_parameters,
    render_call_error,
    request_too_big,
    service_unavailable,
    too_many_requests,
    unexpected_internal_error,
)
from sandbox.sellercenter.rate_limit import CallsPerMinuteLimit
from sandbox.sellercenter.store import SellerCenterStore
from sandbox.sellercenter.update_order_information import (
    ACTION,
    read_order_ids,
    read_order_information_updates,
    render_item_errors_response,
    render_success_response,
)

EXTENSION_KEY = "sandbox.sellercenter"
VENDOR = "sellercenter"
JSON_CONTENT_TYPE = "application/json"


def create_blueprint(service_path: str) -> Blueprint:
    """Build the SellerCenter blueprint with the OMS API at `service_path` and the JSON view under /sellercenter."""
    blueprint = Blueprint("sellercenter", __name__)
    blueprint.add_url_rule(
        service_path,
        "oms_api",
        build_service_view(VENDOR, serve_oms_call, summarize_oms_call, render_service_unavailable),
        methods=["POST"],
        provide_automatic_options=False,
    )
    blueprint.add_url_rule("/sellercenter/orders", "list_orders", list_orders)
    blueprint.add_url_rule("/sellercenter/orders/<int:id_sales_order>", "show_order", show_order)
    blueprint.add_url_rule("/sellercenter/_reset", "reset", reset_store, methods=["POST"])
    add_control_routes(blueprint, VENDOR)
    return blueprint


def _store() -> SellerCenterStore:
    """The application's SellerCenter store."""
    return current_app.extensions[EXTENSION_KEY]["store"]


def _rate_limit() -> CallsPerMinuteLimit:
    """The application's simulated rate limit."""
    return current_app.extensions[EXTENSION_KEY]["rate_limit"]


def _timestamp_window() -> timedelta:
    """How far a call's Timestamp may be from the sandbox's clock."""
    return current_app.extensions[EXTENSION_KEY]["timestamp_window"]


def _now() -> datetime:
    """The sandbox's current time, from its clock."""
    clock: Callable[[], datetime] = current_app.extensions[EXTENSION_KEY]["clock"]
    return clock()


def _json_reply(document: dict, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """A JSON reply with its members in the order the specification prints them."""
    return Response(json.dumps(document), status=status, content_type=JSON_CONTENT_TYPE, headers=dict(headers or {}))


def _query_parameters() -> dict[str, str]:
    """The decoded query parameters; of a parameter given twice the last one counts, as in a PHP application."""
    return dict(request.args.items(multi=True))


def _read_request_body() -> bytes:
    """The request body; a body over the size limit is E011."""
    try:
        return request.get_data()
    except RequestEntityTooLarge:
        raise request_too_big() from None


def serve_oms_call() -> tuple[Response, str]:
    """Answer one OMS API call: SuccessResponse, an ErrorResponse of failed items, or a whole-call ErrorResponse;
    with the call's outcome for the call log (applied if any order was, a whole-call error is a fault)."""
    parameters = _query_parameters()
    # The Head of an error names the action the caller asked for.
    request_action = parameters.get("Action", "")
    try:
        now = _now()
        check_call_parameters(parameters, now, _timestamp_window(), _store().api_keys(), ACTION)
        updates = read_order_information_updates(_read_request_body())
        if not _rate_limit().admit(now):
            raise too_many_requests()
        errors = _store().update_order_information(updates)
    except CallRefused as refusal:
        return _json_reply(render_call_error(refusal, request_action), refusal.http_status, refusal.headers), FAULT
    except Exception:
        current_app.logger.exception("The SellerCenter sandbox failed on an OMS API call.")
        return _json_reply(render_call_error(unexpected_internal_error(), request_action)), FAULT
    if errors:
        return _json_reply(render_item_errors_response(errors)), APPLIED if len(errors) < len(updates) else REFUSED
    return _json_reply(render_success_response(now)), APPLIED


def summarize_oms_call(incoming: Request, body: bytes) -> CallSummary:
    """The call log's view of a call, best effort: the Action it asks for and the id_sales_order of each order."""
    return CallSummary(incoming.args.get("Action") or None, read_order_ids(body))


def render_service_unavailable() -> Response:
    """The whole-call ErrorResponse of a call that arrives while the platform is out."""
    refusal = service_unavailable()
    return _json_reply(render_call_error(refusal, request.args.get("Action", "")), refusal.http_status)


def describe_order(order: Order) -> dict:
    """An order as JSON: its ids, status and both addresses with every field."""
    return {
        "id_sales_order": order.id_sales_order,
        "src_id": order.src_id,
        "status": order.status,
        **{
            member: {name: getattr(getattr(order, member), name) for name in ADDRESS_FIELDS}
            for member in ADDRESS_MEMBERS
        },
    }


def list_orders() -> Response:
    """All orders, by id_sales_order."""
    return jsonify({"orders": [describe_order(order) for order in _store().snapshot()]})


def show_order(id_sales_order: int) -> Response | tuple[Response, int]:
    """One order by id_sales_order, or a problem document if there is none."""
    order = _store().find_order(id_sales_order)
    if order is not None:
        return jsonify(describe_order(order))
    problem = jsonify(
        {
            "type": "about:blank",
            "title": "Not Found",
            "status": 404,
            "detail": f"No order with id_sales_order {id_sales_order}.",
        }
    )
    problem.content_type = "application/problem+json"
    return problem, 404


def reset_store() -> tuple[str, int]:
    """Reload the data file, forgetting every change and every call counted against the rate limit; end any outage
    and clear the call log."""
    _store().reset()
    _rate_limit().forget()
    service_controls(VENDOR).reset()
    return "", 204
