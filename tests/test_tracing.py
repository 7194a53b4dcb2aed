"""W3C trace context: continued from the caller or started, sent on to backends with a span id of its own, named
in the logs; with OpenTelemetry's SDK, the spans themselves (tested with its in-memory exporter)."""

from __future__ import annotations

import logging
import re

import pytest
import requests
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway import logs, tracing
from gateway.runtime import gateway_of
from tests.conftest import ONGOING_SERVICE_PATH, gateway_config, ongoing_connection
from tests.ongoing_timestamps import recent_timestamp
from tests.servers import RecordingMiddleware, serve_wsgi

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")


@pytest.fixture
def backend(sandbox_app):
    """The Ongoing sandbox behind a recorder of every request's headers."""
    recorder = RecordingMiddleware(sandbox_app)
    with serve_wsgi(recorder) as url:
        recorder.url = url
        yield recorder


@pytest.fixture
def gateway(make_gateway, backend):
    return make_gateway(gateway_config(wh=ongoing_connection(backend.url + ONGOING_SERVICE_PATH))).test_client()


@pytest.fixture
def exported():
    """Spans recorded by the SDK into memory while the test runs."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.use_provider(provider)
    yield exporter
    tracing.use_provider(None)
    provider.shutdown()


def _sent_traceparent(backend) -> tuple[str, str, str]:
    match = TRACEPARENT.fullmatch(backend.headers[-1]["Traceparent"])
    assert match, backend.headers[-1]
    return match.groups()


def test_the_callers_trace_goes_on_to_the_backend_with_a_span_id_of_the_gateways(gateway, backend, caplog):
    caplog.set_level(logging.INFO, logger="gateway.backends")
    caplog.handler.addFilter(logs.ContextFilter())  # as every handler of the gateway's has it
    reply = gateway.patch("/orders/SO-1006", json={"waybill": "TRACE-1"},
                          headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "tracestate": "vendor=abc"})
    assert reply.status_code == 200
    trace_id, parent_id, flags = _sent_traceparent(backend)
    assert (trace_id, flags) == (TRACE_ID, "01")
    assert parent_id not in (PARENT_ID, "0" * 16)
    assert backend.headers[-1]["Tracestate"] == "vendor=abc"
    (call,) = [record for record in caplog.records if record.name == "gateway.backends"]
    assert call.trace_id == TRACE_ID


def test_without_a_traceparent_each_request_starts_a_trace_of_its_own(gateway, backend):
    for waybill in ("TRACE-2", "TRACE-3"):
        assert gateway.patch("/orders/SO-1006", json={"waybill": waybill}).status_code == 200
    first, second = (TRACEPARENT.fullmatch(headers["Traceparent"]).group(1) for headers in backend.headers)
    assert first != second and "0" * 32 not in (first, second)
    assert all("Tracestate" not in headers for headers in backend.headers)


@pytest.mark.parametrize("value", [
    "garbage", f"00-{'0' * 32}-{PARENT_ID}-01", f"00-{TRACE_ID}-{'0' * 16}-01", f"ff-{TRACE_ID}-{PARENT_ID}-01",
    f"00-{TRACE_ID}-{PARENT_ID}-01-extra", "00-" + "a" * 600,
], ids=["garbage", "zero-trace", "zero-parent", "version-ff", "trailing-data", "oversized"])
def test_a_malformed_traceparent_is_ignored_and_a_new_trace_started(gateway, backend, value):
    assert gateway.patch("/orders/SO-1006", json={"waybill": "TRACE-4"}, headers={"traceparent": value}) \
        .status_code == 200
    trace_id, _, _ = _sent_traceparent(backend)
    assert trace_id != TRACE_ID


def test_with_the_sdk_the_request_and_each_backend_call_are_spans(gateway, backend, exported):
    reply = gateway.patch("/orders/SO-1006", json={"waybill": "TRACE-5"},
                          headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"})
    assert reply.status_code == 200
    spans = {span.name: span for span in exported.get_finished_spans()}
    server, client = spans["PATCH /orders/<path:order_id>"], spans["ongoing UpdateOrder"]
    assert server.kind == SpanKind.SERVER and client.kind == SpanKind.CLIENT
    assert format(server.context.trace_id, "032x") == TRACE_ID
    assert format(server.parent.span_id, "016x") == PARENT_ID and server.parent.is_remote
    assert client.parent.span_id == server.context.span_id
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["http.route"] == "/orders/<path:order_id>"
    assert (client.attributes["gateway.connection"], client.attributes["gateway.operation"],
            client.attributes["gateway.outcome"], client.attributes["http.response.status_code"]) == \
        ("wh", "UpdateOrder", "ok", 200)
    _, parent_id, _ = _sent_traceparent(backend)
    assert parent_id == format(client.context.span_id, "016x")  # the backend's parent is the call's span


def test_a_failed_backend_call_is_a_failed_span(make_gateway, exported):
    from tests.servers import closed_port

    app = make_gateway(gateway_config(wh=ongoing_connection(f"http://127.0.0.1:{closed_port()}/Service.asmx",
                                                            retry_attempts=1)))
    reply = app.test_client().patch("/orders/SO-1006", json={"waybill": "TRACE-6"})
    assert reply.status_code == 503
    (client,) = [span for span in exported.get_finished_spans() if span.kind == SpanKind.CLIENT]
    assert client.attributes["gateway.outcome"] == "unreachable"
    assert not client.status.is_ok


def test_an_otlp_endpoint_switches_the_sdk_on(monkeypatch):
    for name in tracing.ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert tracing.configure_from_environment("order-gateway") is False
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    try:
        assert tracing.configure_from_environment("order-gateway") is True
        with tracing.span("probe", kind=SpanKind.INTERNAL) as span:
            assert span.is_recording()
            assert tracing.outbound_headers()["traceparent"].split("-")[1] == tracing.current_trace_id()
    finally:
        provider = tracing._provider
        tracing.use_provider(None)
        provider.shutdown()


def test_a_delivery_is_a_span_of_the_trace_its_webhook_came_in_with(make_gateway, sandbox_url, exported):
    config = gateway_config(**{"ongoing-demo": ongoing_connection(
        sandbox_url + ONGOING_SERVICE_PATH,
        webhooks={"auth": "basic", "username": "ongoing-webhooks", "password": "webhook-demo-password"})})
    config["subscribers"] = {"demo": {"url": f"{sandbox_url}/subscriber/events",
                                      "secret": "whsec_b3JkZXItZ2F0ZXdheS1kZW1vLXN1YnNjcmliZXItc2VjcmV0"}}
    app = make_gateway(config)
    reply = app.test_client().post(
        "/webhooks/ongoing/ongoing-demo", auth=("ongoing-webhooks", "webhook-demo-password"),
        headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
        json={"webhookEventId": 77, "system": "trace-test", "timestamp": recent_timestamp(), "orderId": 1004,
              "orderNumber": "SO-1004", "webhookTemplate": "OrderStatusChanged", "orderStatus": {"number": 300}})
    assert reply.status_code == 202, reply.get_data(as_text=True)
    service = gateway_of(app).events
    for subscriber, order_key in service.store.pending_streams():
        service.dispatcher.drain_stream(subscriber, order_key)
    spans = exported.get_finished_spans()
    (server,) = [span for span in spans if span.kind == SpanKind.SERVER]
    (delivery,) = [span for span in spans if span.kind == SpanKind.PRODUCER]
    assert delivery.name == "deliver order.status_changed"
    assert delivery.context.trace_id == server.context.trace_id == int(TRACE_ID, 16)
    assert delivery.parent.span_id == server.context.span_id
    assert (delivery.attributes["gateway.subscriber"], delivery.attributes["gateway.outcome"],
            delivery.attributes["http.response.status_code"]) == ("demo", "delivered", 204)
    (received,) = requests.get(f"{sandbox_url}/subscriber/events", timeout=5).json()["received"]
    assert received["traceparent"] == f"00-{TRACE_ID}-{format(delivery.context.span_id, '016x')}-01"


class FakeCollector:
    """An OTLP/HTTP trace collector: keeps the spans each export request carried."""

    def __init__(self) -> None:
        self.spans: list[tuple[str, str, int]] = []  # (service.name, span name, kind)

    def __call__(self, environ, start_response):
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
        from werkzeug.wrappers import Request, Response

        request = Request(environ)
        if request.path == "/v1/traces" and request.method == "POST":
            export = ExportTraceServiceRequest.FromString(request.get_data())
            for resource_spans in export.resource_spans:
                service = next(attribute.value.string_value for attribute in resource_spans.resource.attributes
                               if attribute.key == "service.name")
                self.spans += [(service, span.name, span.kind) for scope in resource_spans.scope_spans
                               for span in scope.spans]
        return Response(b"", status=200, content_type="application/x-protobuf")(environ, start_response)


def test_under_gunicorn_each_worker_exports_its_spans_over_otlp(tmp_path, sandbox_url):
    import os
    import time

    from tests.processes import start_gateway, stop, wait_until_serving, write_sandbox_config_copy
    from tests.servers import closed_port

    collector = FakeCollector()
    with serve_wsgi(collector) as collector_url:
        port = closed_port()
        env = {**os.environ, "GATEWAY_CONFIG": write_sandbox_config_copy(tmp_path),
               "ONGOING_URL": sandbox_url + ONGOING_SERVICE_PATH,
               "OTEL_EXPORTER_OTLP_ENDPOINT": collector_url, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        gateway = start_gateway(port, env, workers=2)
        try:
            wait_until_serving(f"http://127.0.0.1:{port}/livez", gateway)
            reply = requests.patch(f"http://127.0.0.1:{port}/orders/SO-1006", json={"waybill": "OTLP-1"}, timeout=10)
            assert reply.status_code == 200, reply.text
            wanted = {("order-gateway", "PATCH /orders/<path:order_id>", 2),
                      ("order-gateway", "ongoing UpdateOrder", 3)}
            deadline = time.monotonic() + 10
            while not wanted <= set(collector.spans) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stop(gateway)
    assert wanted <= set(collector.spans), collector.spans  # SPAN_KIND_SERVER is 2, SPAN_KIND_CLIENT 3


def test_an_update_job_is_sent_in_the_trace_of_the_request_that_queued_it(gateway, backend, exported):
    from gateway.rest.orders import job_sender

    reply = gateway.patch("/orders/SO-1006", json={"waybill": "TRACE-JOB"},
                          headers={"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01", "Prefer": "respond-async"})
    assert reply.status_code == 202
    exported.clear()

    job_sender(gateway.application).drain_lane("wh")

    spans = {span.name: span for span in exported.get_finished_spans()}
    sending, call = spans["send update job UpdateOrder"], spans["ongoing UpdateOrder"]
    assert sending.kind == SpanKind.CONSUMER and sending.parent.is_remote
    assert format(sending.context.trace_id, "032x") == TRACE_ID
    assert sending.attributes["gateway.job_id"] == reply.get_json()["id"]
    assert call.parent.span_id == sending.context.span_id
    trace_id, parent_id, _ = _sent_traceparent(backend)
    assert (trace_id, parent_id) == (TRACE_ID, format(call.context.span_id, "016x"))
