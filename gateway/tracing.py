"""W3C trace context on everything the gateway does, and OpenTelemetry spans when an exporter is configured.

Every request continues the trace its caller sent (`traceparent`/`tracestate`, read by OpenTelemetry's W3C
propagator, which refuses malformed and oversized values) or starts one; every backend call and every subscriber
delivery sends the trace on, with a span id of its own, and every log line of the work names the trace id.

That much needs only opentelemetry-api. Spans are recorded and exported when OTEL_EXPORTER_OTLP_ENDPOINT is set and
the `otel` extra (OpenTelemetry's SDK and OTLP exporter) is installed: `configure_from_environment()` builds the
SDK's tracer provider with a batch processor, and it runs after gunicorn forks (config/gunicorn.py `post_fork`) and
at the worker's start, because the processor's export thread does not survive a fork. The SDK reads the rest of
its standard settings (OTEL_SERVICE_NAME, OTEL_TRACES_SAMPLER, OTEL_EXPORTER_OTLP_HEADERS ...) itself. Tests hand
a provider with an in-memory exporter to `use_provider()`.

The gateway keeps its provider to itself rather than setting OpenTelemetry's global one: it can then be replaced
(tests build many apps), and libraries the gateway uses are not traced behind its back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger("gateway.tracing")
ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
HEADERS = ("traceparent", "tracestate")
PROPAGATOR = TraceContextTextMapPropagator()
_ids = random.SystemRandom()
_provider: Any = None  # an OpenTelemetry SDK TracerProvider, once configured
_tracer: trace.Tracer | None = None


def use_provider(provider: Any) -> None:
    """Record spans with this TracerProvider (None: only propagate the trace context)."""
    global _provider, _tracer
    _provider = provider
    _tracer = provider.get_tracer("order-gateway") if provider is not None else None


def configure_from_environment(service_name: str) -> bool:
    """Export spans over OTLP when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set; True when they will be."""
    if not any(os.environ.get(name) for name in ENDPOINT_VARIABLES):
        return False
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning("OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry's SDK is not installed "
                    "(pip install 'order-gateway[otel]'): the trace context is propagated, no span is exported")
        return False
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME")
                                                        or service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    use_provider(provider)
    return True


def shutdown() -> None:
    """Export what is still buffered (a process that stops)."""
    if _provider is not None and hasattr(_provider, "shutdown"):
        _provider.shutdown()


def incoming_context(headers: Mapping[str, Any]) -> otel_context.Context:
    """The trace context `headers` carry (a mapping of header name to its values), or an empty context."""
    carrier = {name: list(values) if isinstance(values, list | tuple) else [values]
               for name, values in headers.items() if name.lower() in HEADERS and values}
    return PROPAGATOR.extract({name.lower(): values for name, values in carrier.items()})


def _own_span(parent: otel_context.Context) -> Span:
    """A span that records nothing but has ids of its own: the parent's trace, or a new one."""
    parent_span = trace.get_current_span(parent).get_span_context()
    if parent_span.is_valid:
        trace_id, flags, state = parent_span.trace_id, parent_span.trace_flags, parent_span.trace_state
    else:
        trace_id, flags, state = _ids.getrandbits(128) or 1, TraceFlags(TraceFlags.DEFAULT), None
    return NonRecordingSpan(SpanContext(trace_id, _ids.getrandbits(64) or 1, is_remote=False, trace_flags=flags,
                                        trace_state=state))


def start_span(name: str, *, kind: SpanKind, parent: otel_context.Context | None = None,
               attributes: Mapping[str, Any] | None = None) -> tuple[Span, object]:
    """Start a span as the current one (under `parent`, by default the current context); returns it and the token
    `end_span` needs."""
    parent = otel_context.get_current() if parent is None else parent
    if _tracer is not None:
        span = _tracer.start_span(name, context=parent, kind=kind, attributes=dict(attributes or {}))
    else:
        span = _own_span(parent)
    return span, otel_context.attach(trace.set_span_in_context(span, parent))


def end_span(span: Span, token: object, *, error: str | None = None) -> None:
    """End a span started by `start_span` and restore the context before it."""
    try:
        if error is not None and span.is_recording():
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()
    finally:
        otel_context.detach(token)


@contextlib.contextmanager
def span(name: str, *, kind: SpanKind, parent: otel_context.Context | None = None,
         attributes: Mapping[str, Any] | None = None) -> Iterator[Span]:
    """A span around a block; an exception leaving it marks the span as failed."""
    started, token = start_span(name, kind=kind, parent=parent, attributes=attributes)
    error = None
    try:
        yield started
    except BaseException as raised:
        error = type(raised).__name__
        raise
    finally:
        end_span(started, token, error=error)


def annotate(attributes: Mapping[str, Any], *, error: str | None = None) -> None:
    """Add attributes (and a failure) to the current span, when it records."""
    current = trace.get_current_span()
    if current.is_recording():
        current.set_attributes({key: value for key, value in attributes.items() if value is not None})
        if error is not None:
            current.set_status(Status(StatusCode.ERROR, error))


def outbound_headers() -> dict[str, str]:
    """`traceparent` (and `tracestate`) for a request sent now: the current span's trace, with its span id."""
    carrier: dict[str, str] = {}
    PROPAGATOR.inject(carrier)
    return carrier


def current_trace_id() -> str | None:
    """The current trace's id in hex, None outside any trace."""
    span_context = trace.get_current_span().get_span_context()
    return trace.format_trace_id(span_context.trace_id) if span_context.is_valid else None
