"""Transports to backends: the `Transport` contract, and HttpTransport, one pooled requests.Session per
connection with every call under a timeout.

A transport's whole contract is `send(OutboundRequest) -> BackendReply` (and `close()`), so a connection can be
given any transport, as tests and benchmarks do. `map_transport_errors` is the one place where requests and
urllib3 exceptions become gateway errors; tests/test_transport.py proves each of them is mapped. What a reply
means (status, media type, SOAP fault) is read next door, in replies.py.

How calls leave the gateway is each peer's egress settings (gateway.config.EgressSettings, of a connection or a
subscriber): a forward proxy (`proxy_url`; HTTPS goes through its CONNECT, so TLS stays end to end), the CAs
trusted (`ca_bundle`, else certifi's), a client certificate (`client_cert`, `client_key`). Nothing comes from the
environment (HTTPS_PROXY, .netrc): a configuration that wants HTTPS_PROXY says `proxy_url = "${HTTPS_PROXY}"`.
`open_connection` opens one connection as a call would and sends nothing (`python -m gateway check --connect`).
"""

from __future__ import annotations

import contextlib
import http
import logging
import re
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

import requests
import urllib3.connection
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from requests.hooks import dispatch_hook

from gateway.config import EgressSettings
from gateway.deadlines import WATCHDOG, Deadline
from gateway.errors import BackendError, BackendFailure, BackendTimeout, BackendUnavailable
from gateway.safejson import parse_ascii_int

log = logging.getLogger("gateway.transport")


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
    (requests.exceptions.SSLError, BackendFailure, "failed the TLS handshake", True),
    (requests.exceptions.ProxyError, BackendUnavailable, "could not be reached through its proxy (proxy_url)", True),
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


class ProxyRefusal(Exception):
    """A forwarding proxy answered an http:// call with 407: the call never went past it."""

    def __init__(self, status: int) -> None:
        super().__init__(f"Tunnel connection failed: {status}")


class TLSFileUnreadable(Exception):
    """A file of ca_bundle, client_cert or client_key (checked at start) could not be found when a call needed it."""


#: how http.client reports a CONNECT the proxy answered with anything but 200 (and ProxyRefusal says a 407)
_TUNNEL_REFUSED = re.compile(r"Tunnel connection failed: (\d{3})")
#: TLS alerts and errors that a backend wanting a client certificate (or not trusting the one given) causes
_CLIENT_CERTIFICATE_TROUBLE = re.compile(r"CERTIFICATE|UNKNOWN_CA|HANDSHAKE_FAILURE|EOF", re.IGNORECASE)
_CLIENT_CERTIFICATE_HINT = ("; a backend that requires a client certificate ends the handshake without one it "
                            "trusts: see client_cert and client_key")


def _causes(error: BaseException) -> Iterator[BaseException]:
    """The error and everything it wraps: requests and urllib3 keep causes in args, `reason` and __cause__."""
    seen: set[int] = set()
    pending = [error]
    while pending and len(seen) < 32:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [item for item in (*current.args, getattr(current, "reason", None), current.__cause__,
                                      current.__context__) if isinstance(item, BaseException)]


def _tls_failure(error: BaseException, what: str) -> str:
    """What went wrong in a TLS handshake: the peer's certificate failed verification, or the handshake (a client
    certificate wanted or refused, most often). Only OpenSSL's reason codes are quoted, never a certificate."""
    causes = list(_causes(error))
    if any(isinstance(cause, TLSFileUnreadable) for cause in causes):
        return f"{what} (a file of ca_bundle, client_cert or client_key is no longer there)"
    for cause in causes:
        if isinstance(cause, ssl.SSLCertVerificationError):
            because = cause.verify_message or "certificate verify failed"
            return (f"failed TLS certificate verification ({because}): the CAs trusted are ca_bundle's, or "
                    "certifi's when it is not set")
    reason = next((cause.reason for cause in causes if isinstance(cause, ssl.SSLError) and cause.reason), None)
    closed = any(isinstance(cause, ssl.SSLEOFError) for cause in causes)
    if reason is None and closed:
        reason = "the connection was closed during the handshake"
    if reason is None:
        return what
    hint = _CLIENT_CERTIFICATE_HINT if closed or _CLIENT_CERTIFICATE_TROUBLE.search(reason) else ""
    return f"{what} ({reason}{hint})"


def _proxy_failure(error: BaseException, what: str) -> str:
    """Why the proxy let the call no further: it refused the CONNECT (its status), could not be reached, or failed
    its own TLS handshake. The proxy's URL is never quoted: it may carry a password."""
    causes = list(_causes(error))
    for cause in causes:
        refused = _TUNNEL_REFUSED.search(str(cause)) if isinstance(cause, OSError | ProxyRefusal) else None
        if refused:
            return f"{what}: the proxy answered HTTP {refused[1]}{_status_phrase(int(refused[1]))}"
    if any(isinstance(cause, ssl.SSLError | urllib3.exceptions.SSLError) for cause in causes):
        return f"{what}: the TLS handshake with the proxy failed"
    if any(isinstance(cause, urllib3.exceptions.NewConnectionError | ConnectionRefusedError) for cause in causes):
        return f"{what}: the proxy did not accept the connection"
    if any(isinstance(cause, urllib3.exceptions.TimeoutError | TimeoutError) for cause in causes):
        return f"{what}: the proxy did not answer in time"
    return what


def _status_phrase(status: int) -> str:
    try:
        return f" ({http.HTTPStatus(status).phrase})"
    except ValueError:
        return ""


def _described(error: BaseException, what: str) -> str:
    if isinstance(error, requests.exceptions.SSLError):
        return _tls_failure(error, what)
    if isinstance(error, requests.exceptions.ProxyError):
        return _proxy_failure(error, what)
    return what


@contextlib.contextmanager
def map_transport_errors(connection: str, connect_timeout: float, read_timeout: float,
                         peer: str | None = None) -> Iterator[None]:
    """Translate requests/urllib3 exceptions raised inside the block into gateway BackendErrors; `peer` is how
    their detail names whom the call was for (by default: the backend of `connection`).

    requests wraps what happened after the request went out (a read timeout while streaming, a connection the
    backend closed or reset before replying) in its ConnectionError, which otherwise means "never reached";
    such causes are unwrapped, since only a request that provably never arrived is a 503. TLS and proxy failures
    say what failed (certificate verification, the handshake, the proxy's answer to CONNECT).
    """
    peer = peer or f"The backend of connection {connection!r}"
    try:
        yield
    except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as error:
        cause = error.args[0] if error.args else None
        if isinstance(cause, urllib3.exceptions.ReadTimeoutError | urllib3.exceptions.ProtocolError):
            error = cause
        for exception_class, gateway_error, what, never_sent in TRANSPORT_ERROR_MAP:
            if isinstance(error, exception_class):
                detail = f"{peer} {_described(error, what)}"
                if gateway_error is BackendTimeout:
                    detail += _timeout_named(error, connect_timeout, read_timeout)
                raise gateway_error(detail + ".", connection=connection, from_transport=True,
                                    never_sent=never_sent) from None
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
#: how long open_connection waits, after the handshake, for the backend to refuse it (TLS 1.3 backends refuse a
#: missing client certificate only after the client considers the handshake done); at most the connect timeout
REFUSAL_WAIT_SECONDS = 1.0


class _ConnectionOpened(Exception):
    """Raised where the request would be written, when the connection was only to be opened (not an error)."""


def _await_refusal(sock: socket.socket, seconds: float) -> None:
    """Wait up to `seconds` for what an opened connection's peer does unasked: a TLS alert raises its SSLError;
    a close is an EOF during the handshake; silence (the backend waiting for a request) is success."""
    sock.settimeout(seconds)
    try:
        data = sock.recv(1)
    except TimeoutError:
        return
    except ConnectionError:  # reset or aborted right after the handshake: the peer refused it
        data = b""
    if not data:
        raise ssl.SSLEOFError(ssl.SSL_ERROR_EOF, "the connection was closed during the handshake")


class _WatchedConnectionMixin:
    """Hands the call its socket before the reply is read.

    A reply saying `Connection: close` takes the socket from the connection (http.client leaves the connection
    without one), so the connection alone would give the watchdog nothing to cut while the body drips in.
    When the call only opens its connection (HttpTransport.open_connection), the request is never written.
    """

    def request(self, *args: Any, **kwargs: Any) -> None:
        if getattr(_in_flight, "opening_only", False):
            if self.sock is None:  # plain HTTP connects here; HTTPS (proxy CONNECT, handshake) already has
                self.connect()
            if isinstance(self.sock, ssl.SSLSocket):
                _await_refusal(self.sock, min(REFUSAL_WAIT_SECONDS, self.sock.gettimeout() or REFUSAL_WAIT_SECONDS))
            raise _ConnectionOpened
        return super().request(*args, **kwargs)

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

    def _validate_conn(self, conn: Any) -> None:
        """Connect; with verification off (verify_tls = false, said once when the transport was made) without
        urllib3's warning on every call."""
        if self.cert_reqs != "CERT_NONE":
            super()._validate_conn(conn)
        elif conn.is_closed:
            conn.connect()


_WATCHED_POOLS = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}


class _WatchedAdapter(HTTPAdapter):
    """An adapter whose pools, direct or through a proxy, hand each call its connection and socket."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _WATCHED_POOLS

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = _WATCHED_POOLS
        return manager

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        """As requests does, but a TLS file gone since start is a failed call (502), not an OSError (500)."""
        try:
            super().cert_verify(conn, url, verify, cert)
        except OSError as error:
            raise requests.exceptions.SSLError(TLSFileUnreadable()) from error


class HttpTransport:
    """Sends OutboundRequests over one pooled session with connect and read timeouts, under a whole-call deadline.

    `send(request, deadline)` bounds the call, headers and body included: each socket operation waits at most
    the connect or read timeout and what is left of the deadline, and the watchdog cuts the socket when the
    deadline passes (a BackendTimeout naming the deadline), whatever the reply's Connection header says.

    The request goes straight to the session's adapter, then through the request's response hooks: `Session.send`
    would also resolve redirects even when told not to follow them (reading a 3xx reply's whole body, unbounded,
    and its cookies into a jar) and keep every cookie a backend sets. A redirect is never followed; it comes back
    as the reply it is, and replies.py refuses it.

    `egress` (a connection's or a subscriber's settings) says how calls leave: through `proxy_url` (HTTPS by its
    CONNECT), trusting `ca_bundle`'s CAs, presenting `client_cert` with `client_key`. `peer` names whom the calls
    are for in error details (by default "The backend of connection '<connection>'").
    """

    def __init__(self, *, connection: str, connect_timeout: float, read_timeout: float,
                 max_reply_bytes: int, pool_size: int = 10, egress: EgressSettings | None = None,
                 auth: requests.auth.AuthBase | None = None, peer: str | None = None) -> None:
        egress = egress or EgressSettings()
        self.connection = connection
        self.peer = peer or f"The backend of connection {connection!r}"
        self.timeout = (connect_timeout, read_timeout)
        self.max_reply_bytes = max_reply_bytes
        self.session = requests.Session()
        # Proxies and .netrc come from the configuration, not from whatever the environment holds.
        self.session.trust_env = False
        self.session.verify = str(egress.ca_bundle) if egress.ca_bundle is not None else egress.verify_tls
        self.session.auth = auth
        self._cert = ((str(egress.client_cert), str(egress.client_key))
                      if egress.client_cert is not None and egress.client_key is not None else None)
        proxy = egress.proxy_url.reveal() if egress.proxy_url is not None else ""
        self._proxies = {"http": proxy, "https": proxy} if proxy else {}
        if not egress.verify_tls:
            log.warning("%s is called without verifying its TLS certificate (verify_tls = false): for tests only, "
                        "never in production", self.peer)
        adapter = _WatchedAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
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

    def open_connection(self, url: str) -> None:
        """Open one connection to `url` as a call would, and close it, sending nothing: through the proxy (its
        CONNECT, for HTTPS), the TLS handshake verified with ca_bundle, the client certificate presented, then up to
        REFUSAL_WAIT_SECONDS for the backend to refuse it. A BackendError (the one error map) when it cannot be
        opened. An http:// URL through a proxy reaches only the proxy: nothing shows the backend without a
        request."""
        _in_flight.opening_only = True
        try:
            self._exchange(OutboundRequest("HEAD", url, {}, b""), self.timeout)
        except _ConnectionOpened:
            return
        finally:
            _in_flight.opening_only = False
        raise AssertionError("unreachable: a connection opened only raises _ConnectionOpened")  # pragma: no cover

    def _deadline_passed(self, deadline: Deadline) -> BackendTimeout:
        return BackendTimeout(f"{self.peer} did not complete its reply within {deadline.reason}{OUTCOME_UNKNOWN}.",
                              connection=self.connection, from_transport=True)

    def _exchange(self, request: OutboundRequest, timeouts: tuple[float, float]) -> BackendReply:
        with map_transport_errors(self.connection, *self.timeout, peer=self.peer):
            prepared = self._prepared(request)
            response = self.session.get_adapter(prepared.url).send(
                prepared, stream=True, timeout=timeouts, verify=self.session.verify, proxies=self._proxies,
                cert=self._cert)
            if response.status_code == 407 and self._proxies and urlsplit(prepared.url).scheme == "http":
                # a forwarding proxy's own refusal (HTTPS calls meet it at CONNECT): the call went no further
                response.close()
                raise requests.exceptions.ProxyError(ProxyRefusal(407))
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
        return BackendFailure(f"{self.peer} sent a reply larger than {self.max_reply_bytes} bytes.",
                              connection=self.connection)

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()


def open_connection(url: str, egress: EgressSettings, *, connection: str, connect_timeout: float,
                    peer: str | None = None) -> None:
    """Open one connection to `url` with `egress` (a ConnectionSettings or SubscriberSettings) as a call would, and
    close it, sending no request; raise the BackendError a call would have met (502 certificate verification or
    handshake, 503 proxy or unreachable, 504 connect timeout)."""
    transport = HttpTransport(connection=connection, connect_timeout=connect_timeout, read_timeout=connect_timeout,
                              max_reply_bytes=1024, pool_size=1, egress=egress, peer=peer)
    try:
        transport.open_connection(url)
    finally:
        transport.close()
