"""HTTP face of the simulated Ongoing WMS: the SOAP service, JSON views of its data, webhooks and calls, admin calls."""

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from decimal import Decimal
from types import MappingProxyType

from flask import Blueprint, Request, Response, current_app, jsonify, request, url_for
from lxml import etree
from marshmallow import ValidationError

from sandbox.ongoing.concurrency import CallOverlaps, CallTracker
from sandbox.ongoing.model import (
    ORDER_IDENTIFICATION_TYPES,
    PROCESS_ORDER_IDENTIFICATION_TYPES,
    Customer,
    GoodsOwner,
    Order,
    OrderLine,
)
from sandbox.ongoing.new_order import read_new_order
from sandbox.ongoing.process_order import (
    PROCESS_ORDER_SOAP_ACTION,
    ProcessOrderTypes,
    read_process_order,
    render_process_order_response,
)
from sandbox.ongoing.store import NewOrderInvalid, OngoingSnapshot, OngoingStore, OrderNumberTaken
from sandbox.ongoing.update_order import (
    UPDATE_ORDER_SOAP_ACTION,
    UpdateOrderSchema,
    read_update_order,
    render_update_order_response,
)
from sandbox.ongoing.webhook_sender import SenderStopped, WebhookSender
from sandbox.outages import (
    APPLIED,
    FAULT,
    REFUSED,
    CallSummary,
    add_control_routes,
    build_service_view,
    plain_text_unavailable,
    service_controls,
)
from sandbox.problems import field_errors, problem_response
from sandbox.soap11 import (
    SOAP11_CONTENT_TYPE,
    SoapFault,
    check_soap11_content_type,
    new_soap11_envelope,
    read_soap11_operation,
    read_soap_action,
    render_soap11_fault,
    serialize_soap11_envelope,
)

EXTENSION_KEY = "sandbox.ongoing"
VENDOR = "ongoing"
INVALID_CREDENTIALS = "Invalid credentials."


def create_blueprint(service_path: str) -> Blueprint:
    """Build the Ongoing blueprint with the SOAP service at `service_path` and the JSON view under /ongoing."""
    blueprint = Blueprint("ongoing", __name__)
    blueprint.add_url_rule(
        service_path,
        "service",
        build_service_view(VENDOR, serve_soap_request, summarize_soap_call, plain_text_unavailable),
        methods=["POST"],
        provide_automatic_options=False,
    )
    blueprint.add_url_rule("/ongoing/orders", "list_orders", list_orders)
    blueprint.add_url_rule("/ongoing/orders", "create_order", create_order, methods=["POST"])
    blueprint.add_url_rule("/ongoing/orders/<int:system_id>", "show_order", show_order)
    blueprint.add_url_rule("/ongoing/way-of-delivery-types", "list_way_of_delivery_types", list_way_of_delivery_types)
    blueprint.add_url_rule("/ongoing/webhooks", "list_webhooks", list_webhooks)
    blueprint.add_url_rule(
        "/ongoing/webhooks/<int:event_id>/resend", "resend_webhook", resend_webhook, methods=["POST"]
    )
    blueprint.add_url_rule("/ongoing/concurrency", "show_concurrency", show_concurrency)
    blueprint.add_url_rule("/ongoing/_reset", "reset", reset_store, methods=["POST"])
    add_control_routes(blueprint, VENDOR)
    return blueprint


def _store() -> OngoingStore:
    """The application's Ongoing store."""
    return current_app.extensions[EXTENSION_KEY]["store"]


def _schema() -> UpdateOrderSchema:
    """The application's compiled UpdateOrder schema."""
    return current_app.extensions[EXTENSION_KEY]["schema"]


def _process_order_types() -> ProcessOrderTypes:
    """The application's ProcessOrder types, read from the WSDL's definitions."""
    return current_app.extensions[EXTENSION_KEY]["process_order_types"]


def _webhook_sender() -> WebhookSender:
    """The application's sender of order webhooks."""
    return current_app.extensions[EXTENSION_KEY]["webhooks"]


def _call_tracker() -> CallTracker:
    """The application's tracker of each goods owner's calls."""
    return current_app.extensions[EXTENSION_KEY]["calls"]


def _soap_response(payload: bytes, status: int) -> Response:
    """Wrap a serialized envelope in an HTTP response with the SOAP 1.1 content type."""
    return Response(payload, status=status, content_type=SOAP11_CONTENT_TYPE)


def _authenticate(goods_owner_code: str | None, user_name: str | None, password: str | None) -> GoodsOwner:
    """The goods owner the credentials act for; a Client fault if they do not all match."""
    goods_owner = _store().authenticate(goods_owner_code or "", user_name or "", password or "")
    if goods_owner is None:
        raise SoapFault("Client", INVALID_CREDENTIALS)
    return goods_owner


@contextmanager
def _one_call_at_a_time(goods_owner: GoodsOwner) -> Iterator[None]:
    """Hold the authenticated call in progress for its goods owner; a Server fault if it overlaps another."""
    try:
        with _call_tracker().call(goods_owner.code):
            yield
    except CallOverlaps as overlap:
        raise SoapFault("Server", str(overlap)) from None


def run_update_order(operation: etree._Element, body: etree._Element) -> bool:
    """Read UpdateOrder, check its credentials, apply it and write its response into `body`; whether it applied."""
    update_request = read_update_order(operation, _schema())
    goods_owner = _authenticate(update_request.goods_owner_code, update_request.user_name, update_request.password)
    with _one_call_at_a_time(goods_owner):
        result = _store().update_order(goods_owner, update_request.identification, update_request.changes)
        render_update_order_response(body, result)
    return result.success


def run_process_order(operation: etree._Element, body: etree._Element) -> bool:
    """Read ProcessOrder, check its credentials, apply it and write its response into `body`; whether it applied."""
    process_request = read_process_order(operation, _process_order_types())
    goods_owner = _authenticate(process_request.goods_owner_code, process_request.user_name, process_request.password)
    with _one_call_at_a_time(goods_owner):
        result = _store().process_order(goods_owner, process_request.order)
        render_process_order_response(body, result)
    return result.success


# SOAPAction -> the operation it runs. Each reads and authenticates, and is refused if it overlaps another call for
# its goods owner, before it touches the store, so a fault leaves the data as it was.
SOAP_OPERATIONS: Mapping[str, Callable[[etree._Element, etree._Element], bool]] = MappingProxyType(
    {UPDATE_ORDER_SOAP_ACTION: run_update_order, PROCESS_ORDER_SOAP_ACTION: run_process_order}
)


def serve_soap_request() -> tuple[Response, str]:
    """Answer one SOAP 1.1 call by its SOAPAction: a result envelope, or a fault for a request that cannot be run;
    with the call's outcome for the call log."""
    try:
        check_soap11_content_type(request.mimetype, request.mimetype_params.get("charset"))
        run_operation = SOAP_OPERATIONS[read_soap_action(request.headers.get("SOAPAction"), SOAP_OPERATIONS)]
        operation = read_soap11_operation(request.get_data())
        envelope, body = new_soap11_envelope()
        applied = run_operation(operation, body)
    except SoapFault as fault:
        return _soap_response(render_soap11_fault(fault), fault.http_status), FAULT
    return _soap_response(serialize_soap11_envelope(envelope), 200), APPLIED if applied else REFUSED


def _child(element: etree._Element | None, local_name: str) -> etree._Element | None:
    """The first child element of `element` with this local name, in any namespace."""
    if element is None:
        return None
    for child in element:
        if isinstance(child.tag, str) and etree.QName(child).localname == local_name:
            return child
    return None


def _identified_order_ids(operation: etree._Element) -> tuple[str, ...]:
    """The order an UpdateOrder or ProcessOrder identifies: the value of the element its identification type uses."""
    if etree.QName(operation).localname == "ProcessOrder":
        identification = _child(_child(operation, "co"), "OrderInfo")
        type_element, types = _child(identification, "OrderIdentification"), PROCESS_ORDER_IDENTIFICATION_TYPES
    else:
        identification = _child(_child(operation, "updateOrder"), "OrderUpdateIdentification")
        type_element, types = _child(identification, "OrderIdentificationType"), ORDER_IDENTIFICATION_TYPES
    if type_element is None:
        return ()
    _, value_element_name = types.get((type_element.text or "").strip(), (None, None))
    value_element = None if value_element_name is None else _child(identification, value_element_name)
    value = "" if value_element is None else (value_element.text or "").strip()
    return (value,) if value else ()


def summarize_soap_call(incoming: Request, body: bytes) -> CallSummary:
    """The call log's view of a call, best effort: its operation element's name (else its SOAPAction's last part)
    and the order it identifies."""
    action = (incoming.headers.get("SOAPAction") or "").strip().strip('"').rsplit("/", 1)[-1]
    try:
        operation = read_soap11_operation(body)
    except SoapFault:
        return CallSummary(action or None)
    return CallSummary(etree.QName(operation).localname, _identified_order_ids(operation))


def _describe_line(line: OrderLine) -> dict:
    """An order line as JSON; a fraction of an item is a JSON number too."""
    ordered = float(line.ordered) if isinstance(line.ordered, Decimal) else line.ordered
    return {"article": line.article, "ordered": ordered, "allocated": line.allocated, "picked": line.picked}


def _describe_customer(customer: Customer | None) -> dict | None:
    """An order's customer as JSON, None for an order that came without one."""
    if customer is None:
        return None
    return {
        "customer_number": customer.customer_number,
        "name": customer.name,
        "address": customer.address,
        "address2": customer.address2,
        "address3": customer.address3,
        "post_code": customer.post_code,
        "city": customer.city,
        "country_code": customer.country_code,
    }


def describe_order(order: Order, snapshot: OngoingSnapshot) -> dict:
    """An order as JSON with snake_case keys, its status name and way of delivery spelled out."""
    way_of_delivery_type = snapshot.way_of_delivery_types.get(order.way_of_delivery_type_code or "")
    return {
        "system_id": order.system_id,
        "goods_owner_code": order.goods_owner_code,
        "order_number": order.order_number,
        "order_id": order.order_id,
        "status": order.status,
        "status_name": snapshot.statuses.get(order.status),
        "delivery_date": order.delivery_date,
        "waybill": order.waybill,
        "transporter_order_number": order.transporter_order_number,
        "printed_time": order.printed_time,
        "shipped_time": order.shipped_time,
        "picking_priority": order.picking_priority,
        "warehouse_instruction": order.warehouse_instruction,
        "return_waybill": order.return_waybill,
        "service_point_code": order.service_point_code,
        "way_of_delivery_type": (
            None
            if way_of_delivery_type is None
            else {"code": way_of_delivery_type.code, "name": way_of_delivery_type.name}
        ),
        "customer": _describe_customer(order.customer),
        "lines": [_describe_line(line) for line in order.lines],
    }


def list_orders() -> Response:
    """All orders of every goods owner, by SystemId."""
    snapshot = _store().snapshot()
    return jsonify({"orders": [describe_order(order, snapshot) for order in snapshot.orders]})


def show_order(system_id: int) -> Response | tuple[Response, int]:
    """One order by SystemId, or a problem document if there is none."""
    snapshot = _store().snapshot()
    for order in snapshot.orders:
        if order.system_id == system_id:
            return jsonify(describe_order(order, snapshot))
    problem = jsonify(
        {
            "type": "about:blank",
            "title": "Not Found",
            "status": 404,
            "detail": f"No order with SystemId {system_id}.",
        }
    )
    problem.content_type = "application/problem+json"
    return problem, 404


def list_way_of_delivery_types() -> Response:
    """Every way of delivery type the warehouse knows, including those FindOrCreate added."""
    snapshot = _store().snapshot()
    return jsonify(
        {
            "way_of_delivery_types": [
                {"code": kind.code, "name": kind.name} for kind in snapshot.way_of_delivery_types.values()
            ]
        }
    )


def create_order() -> Response:
    """Add an order with the next SystemId, as if it had come into the warehouse; this fires "order created"."""
    document = request.get_json(silent=True)
    if document is None:
        return problem_response(422, "Unprocessable Content", "The body must be a JSON object.")
    try:
        new_order = read_new_order(document)
        order = _store().create_order(
            new_order.goods_owner_code, new_order.order_number, new_order.order_id, new_order.status, new_order.lines
        )
    except ValidationError as error:
        return problem_response(
            422, "Unprocessable Content", "The order is not valid.", errors=field_errors(error.messages)
        )
    except NewOrderInvalid as error:
        return problem_response(
            422, "Unprocessable Content", str(error), errors=[{"field": error.field, "message": str(error)}]
        )
    except OrderNumberTaken as error:
        return problem_response(409, "Conflict", str(error))
    response = jsonify(describe_order(order, _store().snapshot()))
    response.status_code = 201
    response.headers["Location"] = url_for("ongoing.show_order", system_id=order.system_id)
    return response


def list_webhooks() -> Response:
    """Every order webhook fired since the start or the last reset, and how its delivery went."""
    return jsonify({"webhooks": _webhook_sender().records()})


def resend_webhook(event_id: int) -> Response:
    """Send a fired webhook again with the same payload and webhookEventId."""
    try:
        record = _webhook_sender().resend(event_id)
    except SenderStopped as error:
        return problem_response(409, "Conflict", str(error))
    if record is None:
        return problem_response(404, "Not Found", f"No webhook with webhookEventId {event_id}.")
    response = jsonify(record)
    response.status_code = 202
    return response


def show_concurrency() -> Response:
    """Per goods owner that received a call: calls completed, calls refused as overlapping, most in progress at once."""
    return jsonify({"goods_owners": _call_tracker().records()})


def reset_store() -> tuple[str, int]:
    """Reload the data file, forgetting every change, every recorded webhook and planned retry, and the call counts;
    end any outage and clear the call log."""
    _store().reset()
    _webhook_sender().reset()
    _call_tracker().reset()
    service_controls(VENDOR).reset()
    return "", 204
