"""The transport: every requests/urllib3 exception is mapped to a gateway error, and pooling holds."""

from __future__ import annotations

import inspect

import pytest
import requests
import urllib3.exceptions

from gateway.errors import BackendError, BackendFailure, BackendTimeout, BackendUnavailable
from gateway.transport import TRANSPORT_ERROR_MAP, HttpTransport, OutboundRequest, map_transport_errors
from tests.servers import ScriptedBackend, serve_keep_alive, serve_wsgi


def all_subclasses(base: type) -> set[type]:
    found = set()
    for sub in base.__subclasses__():
        found |= {sub} | all_subclasses(sub)
    return found


def instantiate(exception_class: type) -> BaseException:
    for args in ((), ("message",), (None, "message"), (None, None, "message")):
        try:
            return exception_class(*args)
        except (TypeError, AttributeError):
            continue
    return exception_class.__new__(exception_class)


# requests.JSONDecodeError comes from Response.json(), which the gateway never calls.
REQUESTS_EXCEPTIONS = sorted(
    (cls for cls in all_subclasses(requests.exceptions.RequestException) | {requests.exceptions.RequestException}
     if inspect.getmodule(cls).__name__.startswith("requests") and cls is not requests.exceptions.JSONDecodeError),
    key=lambda cls: cls.__name__,
)
URLLIB3_EXCEPTIONS = sorted(
    (cls for cls in all_subclasses(urllib3.exceptions.HTTPError) | {urllib3.exceptions.HTTPError}
     if not issubclass(cls, Warning)),
    key=lambda cls: cls.__name__,
)


@pytest.mark.parametrize("exception_class", REQUESTS_EXCEPTIONS + URLLIB3_EXCEPTIONS,
                         ids=lambda cls: f"{cls.__module__}.{cls.__name__}")
def test_every_transport_exception_becomes_a_backend_error(exception_class):
    with pytest.raises(BackendError) as caught, map_transport_errors("demo", 1.5, 2.0):
        raise instantiate(exception_class)
    assert caught.value.connection == "demo"
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    assert caught.value.status in (502, 503, 504)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (requests.exceptions.ConnectTimeout(), BackendTimeout),
        (requests.exceptions.ReadTimeout(), BackendTimeout),
        (requests.exceptions.ConnectionError(urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out")),
         BackendTimeout),
        (requests.exceptions.ConnectionError("refused"), BackendUnavailable),
        (requests.exceptions.SSLError(), BackendFailure),
        (requests.exceptions.ChunkedEncodingError(), BackendFailure),
        (urllib3.exceptions.ProtocolError("reset"), BackendFailure),
        # the request went out, then the backend closed or reset the connection: the outcome is unknown
        (requests.exceptions.ConnectionError(urllib3.exceptions.ProtocolError("Connection aborted.")), BackendFailure),
    ],
)
def test_transport_exceptions_map_to_the_documented_status(error, expected):
    with pytest.raises(expected), map_transport_errors("demo", 1.5, 2.0):
        raise error


@pytest.mark.parametrize(("error", "named"), [
    (requests.exceptions.ConnectTimeout(), "(connect_timeout 1.5 s)"),
    (requests.exceptions.ReadTimeout(), "(read_timeout 2 s)"),
    (requests.exceptions.ConnectionError(urllib3.exceptions.ReadTimeoutError(None, "/", "read timed out")),
     "(read_timeout 2 s)"),
])
def test_a_timeout_names_the_setting_that_ran_out(error, named):
    with pytest.raises(BackendTimeout) as caught, map_transport_errors("demo", 1.5, 2.0):
        raise error
    assert caught.value.detail.endswith(named + ".")


def test_the_map_is_ordered_most_specific_first():
    classes = [entry[0] for entry in TRANSPORT_ERROR_MAP]
    for position, cls in enumerate(classes):
        for later in classes[position + 1:]:
            assert not issubclass(later, cls) or later is cls, f"{later} is shadowed by {cls}"


def test_connections_are_reused_from_the_pool():
    with serve_keep_alive(b"<ok/>") as (url, client_ports):
        transport = HttpTransport(connection="demo", connect_timeout=1, read_timeout=1, max_reply_bytes=1024)
        request = OutboundRequest("POST", url, {"Content-Type": "text/xml"}, b"<x/>")
        try:
            replies = [transport.send(request) for _ in range(3)]
        finally:
            transport.close()
    assert [reply.body for reply in replies] == [b"<ok/>"] * 3
    assert len(client_ports) == 3
    assert len(set(client_ports)) == 1, "every request should travel on the same pooled connection"


class SetsACookie(ScriptedBackend):
    """A backend that sets a cookie on every reply."""

    def __call__(self, environ, start_response):
        def with_cookie(status, headers, exc_info=None):
            return start_response(status, [*headers, ("Set-Cookie", "session=backend-set; Path=/")], exc_info)

        return super().__call__(environ, with_cookie)


def test_the_request_goes_out_as_rendered_with_its_length_and_the_connections_authentication():
    backend = ScriptedBackend(b"<ok/>")
    with serve_wsgi(backend) as url:
        transport = HttpTransport(connection="demo", connect_timeout=1, read_timeout=1, max_reply_bytes=1024,
                                  auth=requests.auth.HTTPBasicAuth("user", "pass"))
        try:
            reply = transport.send(OutboundRequest("POST", url + "/soap?x=1", {"Content-Type": "text/xml",
                                                                               "SOAPAction": '"urn:a"'}, b"<x/>"))
        finally:
            transport.close()
    assert reply.status == 200 and reply.body == b"<ok/>"
    headers, body = backend.requests[0]
    assert body == b"<x/>"
    assert headers["Content-Length"] == "4"
    assert headers["Content-Type"] == "text/xml" and headers["Soapaction"] == '"urn:a"'
    assert headers["Authorization"] == "Basic dXNlcjpwYXNz"


def test_cookies_a_backend_sets_are_never_sent_back():
    backend = SetsACookie(b"<ok/>")
    with serve_wsgi(backend) as url:
        transport = HttpTransport(connection="demo", connect_timeout=1, read_timeout=1, max_reply_bytes=1024)
        try:
            for _ in range(2):
                transport.send(OutboundRequest("POST", url + "/", {"Content-Type": "text/xml"}, b"<x/>"))
        finally:
            transport.close()
    assert len(backend.requests) == 2
    assert all("Cookie" not in headers for headers, _ in backend.requests)


@pytest.mark.parametrize("name, value", [("X-Injected", "a\r\nX-Other: b"), ("X-Split\r\nX-Other", "v"),
                                         ("X-Lead", " v")])
def test_a_header_that_would_split_the_request_is_refused_before_sending(name, value):
    backend = ScriptedBackend(b"<ok/>")
    with serve_wsgi(backend) as url:
        transport = HttpTransport(connection="demo", connect_timeout=1, read_timeout=1, max_reply_bytes=1024)
        try:
            with pytest.raises(BackendError):
                transport.send(OutboundRequest("POST", url + "/", {name: value}, b"<x/>"))
        finally:
            transport.close()
    assert backend.requests == []
