"""HTTP face of the simulated Speed4Trade CONNECT: the SOAP service, a read-only JSON view of its orders, a reset."""

from flask import Blueprint, Request, Response, current_app, jsonify, request
from lxml import etree

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
from sandbox.speed4trade.model import Order
from sandbox.speed4trade.soap import (
    SOAP11,
    SoapFault,
    check_soap_content_type,
    find_soap_version,
    new_soap_envelope,
    read_soap_operation,
    render_soap_fault,
    serialize_soap_envelope,
)
from sandbox.speed4trade.store import RETURN_CODE_OK, ConnectStore
from sandbox.speed4trade.update_order_status import (
    UpdateOrderStatusSchema,
    parse_request_document,
    read_order_status_updates,
    read_request_data,
    read_significant_key_values,
    render_response_document,
    render_update_order_status_response,
)

EXTENSION_KEY = "sandbox.speed4trade"
VENDOR = "speed4trade"
AUTHENTICATION_REALM = "Speed4Trade CONNECT sandbox"


def create_blueprint(service_path: str) -> Blueprint:
    """Build the CONNECT blueprint with the SOAP service at `service_path` and the JSON view under /speed4trade."""
    blueprint = Blueprint("speed4trade", __name__)
    blueprint.add_url_rule(
        service_path,
        "service",
        build_service_view(VENDOR, serve_soap_request, summarize_soap_call, plain_text_unavailable),
        methods=["POST"],
        provide_automatic_options=False,
    )
    blueprint.add_url_rule("/speed4trade/orders", "list_orders", list_orders)
    blueprint.add_url_rule("/speed4trade/orders/<int:order_number>", "show_order", show_order)
    blueprint.add_url_rule("/speed4trade/_reset", "reset", reset_store, methods=["POST"])
    add_control_routes(blueprint, VENDOR)
    return blueprint


def _store() -> ConnectStore:
    """The application's CONNECT store."""
    return current_app.extensions[EXTENSION_KEY]["store"]


def _schema() -> UpdateOrderStatusSchema:
    """The application's compiled updateOrderStatus schema."""
    return current_app.extensions[EXTENSION_KEY]["schema"]


def _namespace() -> str:
    """The target namespace of the simulated web service."""
    return current_app.extensions[EXTENSION_KEY]["namespace"]


def _is_authenticated() -> bool:
    """Whether the request carries HTTP Basic credentials of the API user."""
    authorization = request.authorization
    if authorization is None or authorization.type != "basic":
        return False
    return _store().authenticate(authorization.username or "", authorization.password or "")


def _authentication_required() -> Response:
    """The 401 a web server in front of the service answers to missing or wrong credentials."""
    return Response(
        "Authentication required.\n",
        status=401,
        content_type="text/plain; charset=utf-8",
        headers={"WWW-Authenticate": f'Basic realm="{AUTHENTICATION_REALM}"'},
    )


def serve_soap_request() -> tuple[Response, str]:
    """Answer one updateOrderStatus call in the request's SOAP version: a report per order, or a fault; with the
    call's outcome for the call log (applied if any order was)."""
    if not _is_authenticated():
        return _authentication_required(), REFUSED
    found_version = find_soap_version(request.mimetype)
    # A request in neither version is answered as SOAP 1.1, the version of a plain text/xml client.
    version = found_version or SOAP11
    try:
        check_soap_content_type(found_version, request.mimetype, request.mimetype_params.get("charset"))
        # The SOAPAction header (1.1) and the action parameter (1.2) are not consulted, as in PHP's SoapServer:
        # the operation element in the Body decides.
        operation = read_soap_operation(version, request.get_data())
        request_data = read_request_data(operation, _namespace())
        updates = read_order_status_updates(parse_request_document(request_data, _schema()))
    except SoapFault as fault:
        fault_response = Response(
            render_soap_fault(version, fault), status=fault.http_status, content_type=version.content_type
        )
        return fault_response, FAULT
    reports = _store().update_order_statuses(updates)
    envelope, body = new_soap_envelope(version)
    render_update_order_status_response(body, _namespace(), render_response_document(reports))
    applied = any(report.return_code == RETURN_CODE_OK for report in reports)
    return (
        Response(serialize_soap_envelope(envelope), status=200, content_type=version.content_type),
        APPLIED if applied else REFUSED,
    )


def summarize_soap_call(incoming: Request, body: bytes) -> CallSummary:
    """The call log's view of a call, best effort: its operation element's name and each order's significant key
    value, as the request document in argRequestData names them."""
    version = find_soap_version(incoming.mimetype) or SOAP11
    try:
        operation = read_soap_operation(version, body)
    except SoapFault:
        return CallSummary(None)
    name = etree.QName(operation).localname
    try:
        return CallSummary(name, read_significant_key_values(read_request_data(operation, _namespace())))
    except SoapFault:
        return CallSummary(name)


def describe_order(order: Order) -> dict:
    """An order as JSON: its keys, status, ERP export flag and the informations it has collected."""
    return {
        "mandator_id": order.mandator_id,
        "order_number": order.order_number,
        "order_number_prefix": order.order_number_prefix,
        "external_order_number_1": order.external_order_number_1,
        "external_order_number_2": order.external_order_number_2,
        "marketplace_order_id_1": order.marketplace_order_id_1,
        "marketplace_order_id_2": order.marketplace_order_id_2,
        "transaction_id_1": order.transaction_id_1,
        "transaction_id_2": order.transaction_id_2,
        "status": order.status,
        "erp_exported": order.erp_exported,
        "export_time": order.export_time,
        "shipping_informations": [
            {
                "tracking_number": shipping.tracking_number,
                "shipping_provider_identifier": shipping.shipping_provider_identifier,
                "shipping_provider_external_id": shipping.shipping_provider_external_id,
            }
            for shipping in order.shipping_informations
        ],
        "payment_informations": [
            {
                "payment_status_id": payment.payment_status_id,
                "payment_status_identifier": payment.payment_status_identifier,
            }
            for payment in order.payment_informations
        ],
    }


def list_orders() -> Response:
    """All orders of every mandator, by order number."""
    return jsonify({"orders": [describe_order(order) for order in _store().snapshot()]})


def show_order(order_number: int) -> Response | tuple[Response, int]:
    """One order by order number, or a problem document if there is none."""
    for order in _store().snapshot():
        if order.order_number == order_number:
            return jsonify(describe_order(order))
    problem = jsonify(
        {
            "type": "about:blank",
            "title": "Not Found",
            "status": 404,
            "detail": f"No order with order number {order_number}.",
        }
    )
    problem.content_type = "application/problem+json"
    return problem, 404


def reset_store() -> tuple[str, int]:
    """Reload the data file, forgetting every change; end any outage and clear the call log."""
    _store().reset()
    service_controls(VENDOR).reset()
    return "", 204
