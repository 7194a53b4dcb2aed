"""Transports to backends: the `Transport` contract, and HttpTransport, one pooled requests.Session per
connection with every call under a timeout.

A transport's whole contract is `send(OutboundRequest) -> BackendReply` (and `close()`), so a connection can be
given any transport, as tests and benchmarks do. `map_transport_errors` is the one place where requests and
urllib3 exceptions become gateway errors; tests/test_transport.py proves each of them is mapped. What a reply
means (status, media type, SOAP fault) is read next door, in replies.py.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import requests
import urllib3.connection
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from requests.hooks import dispatch_hook

from gateway.deadlines import WATCHDOG, Deadline
from gateway.errors import BackendError, BackendFailure, BackendTimeout, BackendUnavailable
from gateway.safejson import parse_ascii_int


@dataclass(frozen=True, slots=True)
class OutboundRequest:
    """A fully rendered request to a backend."""

    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class BackendReply:
    """What the backend answered, with the body read in full (within the size limit)."""

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def content_type(self) -> str:
        """The reply's media type, lower-cased, without parameters."""
        return self.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


class Transport(Protocol):
    """What a connection needs of a transport."""

    def send(self, request: OutboundRequest, deadline: Deadline | None = None) -> BackendReply:
        """Send one request and return the whole reply within `deadline`; raise a BackendError when there is none."""

    def close(self) -> None:
        """Release what the transport holds open."""


#: said of every failure after the request may have reached the backend: nobody knows whether it was applied
OUTCOME_UNKNOWN = "; the update may have been applied: check the order before sending it again"
# (exception class, gateway error class, what to say, whether the request provably never reached the backend)
# — most specific first. Timeouts name their setting. Only calls that never reached the backend are retried
# whatever the operation (gateway/connections.py).
TRANSPORT_ERROR_MAP: tuple[tuple[type[BaseException], type, str, bool], ...] = (
    (requests.exceptions.ConnectTimeout, BackendTimeout, "did not accept the connection in time", True),
    (requests.exceptions.ReadTimeout, BackendTimeout, "did not answer in time", False),
    (urllib3.exceptions.ReadTimeoutError, BackendTimeout, "did not answer in time", False),
    (requests.exceptions.SSLError, BackendFailure, "TLS handshake failed", True),
    (requests.exceptions.ProxyError, BackendUnavailable, "could not be reached through the proxy", True),
    (requests.exceptions.ChunkedEncodingError, BackendFailure, "sent a broken reply" + OUTCOME_UNKNOWN, False),
    (requests.exceptions.ContentDecodingError, BackendFailure, "sent a reply that could not be decoded", False),
    (urllib3.exceptions.ProtocolError, BackendFailure,
     "closed or reset the connection before its reply was complete" + OUTCOME_UNKNOWN, False),
    (urllib3.exceptions.DecodeError, BackendFailure, "sent a reply that could not be decoded", False),
    (requests.exceptions.ConnectionError, BackendUnavailable, "could not be reached", True),
    (requests.exceptions.InvalidURL, BackendFailure, "has an invalid endpoint URL", True),
    (requests.exceptions.RequestException, BackendFailure, "could not be called", False),
    (urllib3.exceptions.HTTPError, BackendFailure, "could not be called", False),
)


def _timeout_named(error: BaseException, connect_timeout: float, read_timeout: float) -> str:
    if isinstance(error, requests.exceptions.ConnectTimeout):
        return f" (connect_timeout {connect_timeout:g} s)"
    return f" (read_timeout {read_timeout:g} s)"


@contextlib.contextmanager
def map_transport_errors(connection: str, connect_timeout: float, read_timeout: float) -> Iterator[None]:
    """Translate requests/urllib3 exceptions raised inside the block into gateway BackendErrors.

    requests wraps what happened after the request went out (a read timeout while streaming, a connection the
    backend closed or reset before replying) in its ConnectionError, which otherwise means "never reached";
    such causes are unwrapped, since only a request that provably never arrived is a 503.
    """
    try:
        yield
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as error:
        cause = error.args[0] if error.args else None
        if isinstance(cause, urllib3.exceptions.ReadTimeoutError | urllib3.exceptions.ProtocolError):
            error = cause
        for exception_class, gateway_error, what, never_sent in TRANSPORT_ERROR_MAP:
            if isinstance(error, exception_class):
                detail = f"The backend of connection {connection!r} {what}"
                if gateway_error is BackendTimeout:
                    detail += _timeout_named(error, connect_timeout, read_timeout)
                mapped = gateway_error(detail + ".", connection=connection)
                mapped.from_transport, mapped.never_sent = True, never_sent
                raise mapped from None
        raise  # pragma: no cover - TRANSPORT_ERROR_MAP ends with the base classes


class _CallInFlight:
    """The connection and socket one call is using, so the watchdog can cut them when the call's deadline passes."""

    __slots__ = ("aborted", "connection", "sock")

    def __init__(self) -> None:
        self.connection: Any = None
        self.sock: socket.socket | None = None
        self.aborted = False

    def watch(self, sock: socket.socket | None) -> None:
        """Keep the socket the reply will be read from; cut it at once if the deadline already passed."""
        self.sock = sock
        if self.aborted:
            _shut_down(sock)

    def abort(self) -> None:
        """Shut the sockets down: a blocked read returns at once, however the backend drips."""
        self.aborted = True
        _shut_down(getattr(self.connection, "sock", None))
        _shut_down(self.sock)


def _ends_at_close(reply: BackendReply) -> bool:
    """Whether the reply's body is delimited by the connection closing (neither a length nor chunked)."""
    return ("Content-Length" not in reply.headers
            and "chunked" not in reply.headers.get("Transfer-Encoding", "").lower())


def _shut_down(sock: socket.socket | None) -> None:
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


_in_flight = threading.local()


class _WatchedConnectionMixin:
    """Hands the call its socket before the reply is read.

    A reply saying `Connection: close` takes the socket from the connection (http.client leaves the connection
    without one), so the connection alone would give the watchdog nothing to cut while the body drips in.
    """

    def getresponse(self) -> Any:
        call = getattr(_in_flight, "call", None)
        if call is not None:
            call.watch(self.sock)
        return super().getresponse()


class _WatchedHTTPConnection(_WatchedConnectionMixin, urllib3.connection.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedConnectionMixin, urllib3.connection.HTTPSConnection):
    pass


class _WatchedPoolMixin:
    """Remembers the connection a call takes from the pool, for that call's watchdog."""

    def _get_conn(self, timeout: float | None = None) -> Any:
        connection = super()._get_conn(timeout)
        call = getattr(_in_flight, "call", None)
        if call is not None:
            call.connection = connection
        return connection


class _WatchedHTTPPool(_WatchedPoolMixin, urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(_WatchedPoolMixin, urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


class HttpTransport:
    """Sends OutboundRequests over one pooled session with connect and read timeouts, under a whole-call deadline.

    `send(request, deadline)` bounds the call, headers and body included: each socket operation waits at most
    the connect or read timeout and what is left of the deadline, and the watchdog cuts the socket when the
    deadline passes (a BackendTimeout naming the deadline), whatever the reply's Connection header says.

    The request goes straight to the session's adapter, then through the request's response hooks: `Session.send`
    would also resolve redirects even when told not to follow them (reading a 3xx reply's whole body, unbounded,
    and its cookies into a jar) and keep every cookie a backend sets. A redirect is never followed; it comes back
    as the reply it is, and replies.py refuses it.
    """

    def __init__(self, *, connection: str, connect_timeout: float, read_timeout: float,
                 max_reply_bytes: int, pool_size: int = 10, verify_tls: bool = True,
                 auth: requests.auth.AuthBase | None = None) -> None:
        self.connection = connection
        self.timeout = (connect_timeout, read_timeout)
        self.max_reply_bytes = max_reply_bytes
        self.session = requests.Session()
        # Proxies and .netrc come from the configuration, not from whatever the environment holds.
        self.session.trust_env = False
        self.session.verify = verify_tls
        self.session.auth = auth
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
        adapter.poolmanager.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def send(self, request: OutboundRequest, deadline: Deadline | None = None) -> BackendReply:
        """Send one request and read the whole reply within `deadline`, refusing replies above max_reply_bytes."""
        if deadline is None:
            return self._exchange(request, self.timeout)
        if deadline.expired():
            raise self._deadline_passed(deadline)
        remaining = deadline.remaining()
        timeouts = (min(self.timeout[0], remaining), min(self.timeout[1], remaining))
        call = _in_flight.call = _CallInFlight()
        watch = WATCHDOG.call_at(deadline.at, call.abort)
        try:
            reply = self._exchange(request, timeouts)
        except BackendError:
            if call.aborted or deadline.expired():
                raise self._deadline_passed(deadline) from None
            raise
        finally:
            WATCHDOG.cancel(watch)
            _in_flight.call = None
        if call.aborted and _ends_at_close(reply):  # cut short, that body ends as if the backend had closed
            raise self._deadline_passed(deadline)
        return reply

    def _deadline_passed(self, deadline: Deadline) -> BackendTimeout:
        error = BackendTimeout(f"The backend of connection {self.connection!r} did not complete its reply within "
                               f"{deadline.reason}{OUTCOME_UNKNOWN}.", connection=self.connection)
        error.from_transport = True
        return error

    def _exchange(self, request: OutboundRequest, timeouts: tuple[float, float]) -> BackendReply:
        with map_transport_errors(self.connection, *self.timeout):
            prepared = self._prepared(request)
            response = self.session.get_adapter(prepared.url).send(
                prepared, stream=True, timeout=timeouts, verify=self.session.verify, proxies={}, cert=None)
            # as Session.send does: an authentication may watch the reply (its status) through a response hook
            response = dispatch_hook("response", prepared.hooks, response)
            try:
                declared = parse_ascii_int(response.headers.get("Content-Length"))
                if declared is not None and declared > self.max_reply_bytes:
                    raise self._too_large()
                body = response.raw.read(self.max_reply_bytes + 1, decode_content=True)
                if len(body) > self.max_reply_bytes:
                    raise self._too_large()
            except BaseException:
                response.close()  # an unfinished reply: drop the connection rather than reuse it
                raise
            response.raw.release_conn()  # read to the end: the connection goes back to the pool
        return BackendReply(status=response.status_code, headers=response.headers, body=body)

    def _prepared(self, request: OutboundRequest) -> requests.PreparedRequest:
        """The request as requests sends it, prepared here rather than by `Session.request`.

        `Session.request` merges the session's settings into every call (cookies, hooks, environment, proxies,
        each through runtime protocol checks), which cost a call 150 to 175 µs of CPU (timed interleaved with this
        path against the sandbox) for nothing: the session holds none of them but its authentication. So the
        method, URL and headers are checked as requests checks them, the body (always bytes) is set with its
        length, and the connection's authentication is applied. Cookies a backend sets are never sent back: calls
        of different callers share a session, and no backend needs them.
        """
        prepared = requests.PreparedRequest()
        prepared.prepare_method(request.method)
        prepared.prepare_url(request.url, None)
        prepared.prepare_headers(request.headers)
        prepared.body = request.body
        prepared.headers["Content-Length"] = str(len(request.body))
        prepared.prepare_hooks({})
        if self.session.auth is not None:
            prepared.prepare_auth(self.session.auth)
        return prepared

    def _too_large(self) -> BackendFailure:
        return BackendFailure(
            f"The backend of connection {self.connection!r} sent a reply larger than "
            f"{self.max_reply_bytes} bytes.",
            connection=self.connection,
        )

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()
