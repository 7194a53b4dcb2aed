"""Egress: backend calls and subscriber deliveries through a real forward proxy (tinyproxy, CONNECT), to HTTPS
peers signed by a private CA (trustme), some of them requiring a client certificate; the configuration of it; and
the failures, each mapped by the transport's one error map, with no proxy password or key in any reply, log line,
journal entry or delivery history."""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import socket
import ssl
import subprocess
import time
import types
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
import trustme
from cryptography.hazmat.primitives import serialization

import sandbox
from gateway.backends import BACKENDS
from gateway.config import MASK, EgressSettings, EventSettings, Secret, SubscriberSettings, read_config_file
from gateway.errors import BackendFailure, BackendUnavailable, ConfigError
from gateway.events.delivery import Dispatcher
from gateway.events.store import SqliteEventStore
from gateway.scrubbing import Scrubber
from gateway.transport import open_connection
from tests.conftest import ONGOING_SERVICE_PATH, gateway_config, ongoing_connection
from tests.hostile.conftest import assert_problem
from tests.servers import RecordingMiddleware, closed_port, serve_wsgi

TINYPROXY = "/usr/bin/tinyproxy"
PROXY_USER = "proxy-user"
#: tinyproxy's BasicAuth takes letters, digits and "-._" only
PROXY_PASSWORD = "Pr0xy-Pa55.wd_x"
SUBSCRIBER_SECRET = sandbox.DEFAULT_SUBSCRIBER_SECRET
SUBSCRIBER_PATH = "/subscriber/events"


# --- certificates --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> types.SimpleNamespace:
    """A private CA with the vendor's certificate for 127.0.0.1 and a client certificate, and another CA; their
    PEM files in one folder."""
    folder = tmp_path_factory.mktemp("pki")
    ca, other_ca = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("gateway.example.com")
    ca.cert_pem.write_to_path(folder / "ca.pem")
    other_ca.cert_pem.write_to_path(folder / "other-ca.pem")
    client.cert_chain_pems[0].write_to_path(folder / "client.pem")
    client.private_key_pem.write_to_path(folder / "client.key")
    return types.SimpleNamespace(ca=ca, server=server, folder=folder, ca_bundle=folder / "ca.pem",
                                 other_ca_bundle=folder / "other-ca.pem", client_cert=folder / "client.pem",
                                 client_key=folder / "client.key",
                                 key_text=client.private_key_pem.bytes().decode("ascii"))


def key_fragments(pki) -> list[str]:
    """Pieces of the client key's base64 body: none may appear anywhere."""
    body = "".join(line for line in pki.key_text.splitlines() if not line.startswith("-----"))
    return [body[start:start + 24] for start in range(0, len(body) - 24, 24)]


# --- an HTTPS vendor (the sandbox), a proxy --------------------------------------------------------------------

@contextlib.contextmanager
def serve_https(app, pki, *, client_certificates: bool) -> Iterator[int]:
    """Serve a WSGI app over TLS with the private CA's certificate for 127.0.0.1; with `client_certificates`, a
    handshake without a client certificate signed by that CA is refused. Yields the port."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    pki.server.configure_cert(context)
    if client_certificates:
        context.verify_mode = ssl.CERT_REQUIRED
        pki.ca.configure_trust(context)
    with serve_wsgi(app, context) as url:
        yield int(url.rsplit(":", 1)[1])


@pytest.fixture
def vendor(pki):
    """Start the sandbox (Ongoing and the demo subscriber) over HTTPS, recording every POST: (port, recorder)."""
    with contextlib.ExitStack() as stack:

        def start(*, client_certificates: bool = True) -> tuple[int, RecordingMiddleware]:
            recorder = RecordingMiddleware(sandbox.create_app())
            port = stack.enter_context(serve_https(recorder, pki, client_certificates=client_certificates))
            return port, recorder

        yield start


#: how tinyproxy logs each client connection it accepts
ACCEPTED = "Connect (file descriptor"


class Tinyproxy:
    """Debian's tinyproxy in the foreground on a free 127.0.0.1 port, CONNECT allowed to the given ports only. The
    first connection it logs is the probe that waited for it to listen."""

    def __init__(self, folder: Path, connect_ports: list[int], basic_auth: tuple[str, str] | None) -> None:
        self.port = closed_port()
        self.log_path = folder / f"tinyproxy-{self.port}.log"
        lines = [f"Port {self.port}", "Listen 127.0.0.1", "Allow 127.0.0.1", "Timeout 30",
                 f'LogFile "{self.log_path}"', "LogLevel Info", *(f"ConnectPort {port}" for port in connect_ports)]
        if basic_auth is not None:
            lines.append(f"BasicAuth {basic_auth[0]} {basic_auth[1]}")
        config = folder / f"tinyproxy-{self.port}.conf"
        config.write_text("\n".join(lines) + "\n")
        self.process = subprocess.Popen([TINYPROXY, "-d", "-c", str(config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            assert self.process.poll() is None, f"tinyproxy ended at start: {self.log()}"
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                break
            assert time.monotonic() < deadline, "tinyproxy did not listen within 10 s"
            time.sleep(0.05)
        assert ACCEPTED in self.wait_for_log(ACCEPTED)

    def url(self, credentials: tuple[str, str] | None = None) -> str:
        """The proxy's URL, with user:password@ when given."""
        userinfo = f"{quote(credentials[0], safe='')}:{quote(credentials[1], safe='')}@" if credentials else ""
        return f"http://{userinfo}127.0.0.1:{self.port}"

    def log(self) -> str:
        """What tinyproxy logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, text: str) -> str:
        """The log once it holds `text` (tinyproxy writes its lines as they happen; allow a moment)."""
        deadline = time.monotonic() + 5
        while text not in (logged := self.log()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return logged

    def stop(self) -> None:
        """Terminate tinyproxy and wait for it."""
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


@pytest.fixture
def tinyproxy(tmp_path):
    """Start tinyproxies (CONNECT to `connect_ports`; BasicAuth when `basic_auth`); each is stopped after."""
    started: list[Tinyproxy] = []

    def start(*connect_ports: int, basic_auth: tuple[str, str] | None = None) -> Tinyproxy:
        proxy = Tinyproxy(tmp_path, list(connect_ports), basic_auth)
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        proxy.stop()


def ongoing_url(port: int) -> str:
    return f"https://127.0.0.1:{port}{ONGOING_SERVICE_PATH}"


def mutual_tls(pki, **overrides) -> dict:
    """Egress settings presenting the client certificate to a peer signed by the private CA."""
    return {"ca_bundle": str(pki.ca_bundle), "client_cert": str(pki.client_cert), "client_key": str(pki.client_key),
            **overrides}


def gateway_to(make_gateway, url: str, **egress):
    """A test client of a gateway whose Ongoing connection `vendor` is at `url`, with these egress settings."""
    return make_gateway(gateway_config(vendor=ongoing_connection(url, **egress))).test_client()


def order_status(port: int, pki, system_id: int = 1001) -> int:
    """The order's status in the sandbox, read over mutual TLS."""
    reply = requests.get(f"https://127.0.0.1:{port}/ongoing/orders/{system_id}", timeout=5,
                         verify=str(pki.ca_bundle), cert=(str(pki.client_cert), str(pki.client_key)))
    assert reply.status_code == 200
    return reply.json()["status"]


def journal_text(client) -> str:
    """Every exchange the journal holds, as the API shows it (at least one)."""
    reply = client.get("/exchanges", query_string={"limit": "100"})
    assert reply.status_code == 200, reply.get_data(as_text=True)
    exchanges = reply.get_json()["exchanges"]
    assert exchanges, "the journal recorded no exchange"
    return reply.get_data(as_text=True) + "".join(
        client.get(f"/exchanges/{exchange['id']}").get_data(as_text=True) for exchange in exchanges)


# --- backend calls ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("through_proxy", [True, False], ids=["through-the-proxy", "direct"])
def test_a_patch_reaches_a_vendor_requiring_a_client_certificate(make_gateway, pki, vendor, tinyproxy,
                                                                 through_proxy):
    port, recorder = vendor()
    proxy = tinyproxy(port)
    egress = mutual_tls(pki, **({"proxy_url": proxy.url()} if through_proxy else {}))
    client = gateway_to(make_gateway, ongoing_url(port), **egress)

    reply = client.patch("/orders/SO-1001", json={"status": "released"})

    assert reply.status_code == 200, reply.get_data(as_text=True)
    assert len(recorder.bodies) == 1 and recorder.sent("SO-1001")
    assert order_status(port, pki) == 300
    logged = proxy.wait_for_log(f"CONNECT 127.0.0.1:{port}")
    assert (f"CONNECT 127.0.0.1:{port}" in logged) is through_proxy, logged


def test_the_environment_proxy_is_used_only_when_proxy_url_names_it(make_gateway, pki, vendor, tinyproxy,
                                                                    monkeypatch):
    port, recorder = vendor()
    proxy = tinyproxy(port)
    monkeypatch.setenv("HTTPS_PROXY", proxy.url())
    monkeypatch.setenv("https_proxy", proxy.url())

    implicit = gateway_to(make_gateway, ongoing_url(port), **mutual_tls(pki))
    assert implicit.patch("/orders/SO-1001", json={"status": "released"}).status_code == 200
    assert proxy.log().count(ACCEPTED) == 1, "the environment's proxy was used"

    explicit = gateway_to(make_gateway, ongoing_url(port), **mutual_tls(pki, proxy_url="${HTTPS_PROXY}"))
    assert explicit.patch("/orders/SO-1002", json={"status": "released"}).status_code == 200
    assert f"CONNECT 127.0.0.1:{port}" in proxy.wait_for_log(f"CONNECT 127.0.0.1:{port}")
    assert len(recorder.bodies) == 2


@pytest.mark.parametrize(
    ("case", "status", "slug", "named"),
    [
        ("wrong-ca", 502, "backend-failure", "failed TLS certificate verification"),
        ("no-client-certificate", 502, "backend-failure", "failed the TLS handshake"),
        ("dead-proxy", 503, "backend-unavailable", "could not be reached through its proxy (proxy_url): the proxy "
                                                   "did not accept the connection"),
        ("proxy-refuses-connect", 503, "backend-unavailable", "the proxy answered HTTP 407"),
    ],
)
def test_a_failed_egress_is_mapped_and_names_what_failed(make_gateway, pki, vendor, tinyproxy, caplog, case, status,
                                                         slug, named):
    port, recorder = vendor()
    egress = mutual_tls(pki, proxy_url=tinyproxy(port).url())
    if case == "wrong-ca":
        egress["ca_bundle"] = str(pki.other_ca_bundle)
    elif case == "no-client-certificate":
        del egress["client_cert"], egress["client_key"]
    elif case == "dead-proxy":
        egress["proxy_url"] = f"http://127.0.0.1:{closed_port()}"
    else:
        egress["proxy_url"] = tinyproxy(port, basic_auth=(PROXY_USER, PROXY_PASSWORD)).url()
    client = gateway_to(make_gateway, ongoing_url(port), **egress)
    caplog.set_level(logging.DEBUG)

    reply = client.patch("/orders/SO-1001", json={"status": "released"})

    problem = assert_problem(reply, status, slug)
    assert named in problem["detail"], problem["detail"]
    assert "may have been applied" not in problem["detail"]
    if case == "no-client-certificate":
        assert "client_cert" in problem["detail"]
    assert recorder.bodies == [], "nothing may reach the vendor's application"
    texts = reply.get_data(as_text=True) + caplog.text + journal_text(client)
    assert not [fragment for fragment in key_fragments(pki) if fragment in texts]


@pytest.mark.parametrize("password", [PROXY_PASSWORD, "Wr0ng-Pa55.wd_y"], ids=["right", "wrong"])
def test_a_proxy_password_is_used_and_never_shown(make_gateway, pki, vendor, tinyproxy, caplog, password):
    port, recorder = vendor()
    proxy = tinyproxy(port, basic_auth=(PROXY_USER, PROXY_PASSWORD))
    client = gateway_to(make_gateway, ongoing_url(port),
                        **mutual_tls(pki, proxy_url=proxy.url((PROXY_USER, password))))
    caplog.set_level(logging.DEBUG)

    reply = client.patch("/orders/SO-1001", json={"status": "released"})
    dry_run = client.patch("/orders/SO-1001", json={"status": "released"}, query_string={"dry_run": "true"})

    if password == PROXY_PASSWORD:
        assert reply.status_code == 200, reply.get_data(as_text=True)
        assert len(recorder.bodies) == 1
        assert f"CONNECT 127.0.0.1:{port}" in proxy.wait_for_log(f"CONNECT 127.0.0.1:{port}")
    else:
        problem = assert_problem(reply, 503, "backend-unavailable")
        assert "the proxy answered HTTP 401" in problem["detail"]
        assert recorder.bodies == []
    assert dry_run.status_code == 200
    forms = {"raw": password, "basic": base64.b64encode(f"{PROXY_USER}:{password}".encode()).decode("ascii"),
             "url": proxy.url((PROXY_USER, password))}
    for where, text in {"reply": reply.get_data(as_text=True), "dry run": dry_run.get_data(as_text=True),
                        "log": caplog.text, "journal": journal_text(client)}.items():
        leaked = [name for name, form in forms.items() if form in text]
        assert not leaked, f"the {where} shows the proxy password ({leaked})"


def test_a_forwarding_proxy_carries_plain_http_and_its_407_is_the_proxys(make_gateway, tinyproxy):
    recorder = RecordingMiddleware(sandbox.create_app())
    with serve_wsgi(recorder) as url:
        proxy = tinyproxy(basic_auth=(PROXY_USER, PROXY_PASSWORD))
        without = gateway_to(make_gateway, url + ONGOING_SERVICE_PATH, proxy_url=proxy.url())
        problem = assert_problem(without.patch("/orders/SO-1001", json={"status": "released"}), 503,
                                 "backend-unavailable")
        assert "the proxy answered HTTP 407" in problem["detail"]
        assert recorder.bodies == []

        with_password = gateway_to(make_gateway, url + ONGOING_SERVICE_PATH,
                                   proxy_url=proxy.url((PROXY_USER, PROXY_PASSWORD)))
        assert with_password.patch("/orders/SO-1001", json={"status": "released"}).status_code == 200
    assert len(recorder.bodies) == 1
    assert f"POST {url}{ONGOING_SERVICE_PATH}" in proxy.wait_for_log("POST")


def test_verify_tls_false_calls_the_private_ca_vendor_and_warns_once_at_start(make_gateway, pki, vendor, caplog):
    port, _ = vendor(client_certificates=False)
    caplog.set_level(logging.WARNING, logger="gateway.transport")
    client = gateway_to(make_gateway, ongoing_url(port), verify_tls=False)
    warnings = [record.getMessage() for record in caplog.records if record.name == "gateway.transport"]
    assert warnings == ["The backend of connection 'vendor' is called without verifying its TLS certificate "
                        "(verify_tls = false): for tests only, never in production"]

    for order in ("SO-1001", "SO-1002"):  # no warning per call (pytest turns urllib3's into errors)
        assert client.patch(f"/orders/{order}", json={"status": "released"}).status_code == 200
    assert len([record for record in caplog.records if record.name == "gateway.transport"]) == 1


def test_without_a_ca_bundle_a_private_ca_is_not_trusted(make_gateway, vendor):
    port, _ = vendor(client_certificates=False)
    problem = assert_problem(gateway_to(make_gateway, ongoing_url(port)).patch(
        "/orders/SO-1001", json={"status": "released"}), 502, "backend-failure")
    assert "failed TLS certificate verification" in problem["detail"]


def test_a_tls_file_gone_since_start_fails_the_call_with_502_not_500(make_gateway, pki, vendor, tmp_path):
    port, recorder = vendor()
    bundle = tmp_path / "rotated-ca.pem"
    bundle.write_bytes(pki.ca_bundle.read_bytes())
    client = gateway_to(make_gateway, ongoing_url(port), **mutual_tls(pki, ca_bundle=str(bundle)))
    bundle.unlink()

    problem = assert_problem(client.patch("/orders/SO-1001", json={"status": "released"}), 502, "backend-failure")
    assert "a file of ca_bundle, client_cert or client_key is no longer there" in problem["detail"]
    assert recorder.bodies == []


# --- opening a connection only (python -m gateway check --connect) -----------------------------------------

@pytest.mark.parametrize(
    ("case", "error", "named"),
    [
        ("opens", None, None),
        ("wrong-ca", BackendFailure, "failed TLS certificate verification"),
        ("no-client-certificate", BackendFailure, "failed the TLS handshake"),
        ("dead-proxy", BackendUnavailable, "the proxy did not accept the connection"),
    ],
)
def test_open_connection_handshakes_through_the_proxy_and_sends_nothing(pki, vendor, tinyproxy, case, error, named):
    port, recorder = vendor()
    proxy = tinyproxy(port)
    egress = {"ca_bundle": pki.ca_bundle, "client_cert": pki.client_cert, "client_key": pki.client_key,
              "proxy_url": Secret(proxy.url())}
    if case == "wrong-ca":
        egress["ca_bundle"] = pki.other_ca_bundle
    elif case == "no-client-certificate":
        egress["client_cert"] = egress["client_key"] = None
    elif case == "dead-proxy":
        egress["proxy_url"] = Secret(f"http://127.0.0.1:{closed_port()}")

    def attempt() -> None:
        open_connection(ongoing_url(port), EgressSettings(**egress), connection="vendor", connect_timeout=2)

    if error is None:
        attempt()
        assert f"CONNECT 127.0.0.1:{port}" in proxy.wait_for_log(f"CONNECT 127.0.0.1:{port}")
    else:
        with pytest.raises(error) as caught:
            attempt()
        assert named in caught.value.detail, caught.value.detail
    assert recorder.bodies == []
    assert requests.get(f"https://127.0.0.1:{port}/subscriber/events", timeout=5, verify=str(pki.ca_bundle),
                        cert=(str(pki.client_cert), str(pki.client_key))).status_code == 200  # still serving


# --- subscriber deliveries -----------------------------------------------------------------------------------

def event(number: int) -> dict:
    return {"id": f"evt_{number:04d}", "type": "order.status_changed", "occurred_at": "2026-11-23T12:00:00+00:00",
            "order": {"backend_order_id": "1004", "order_number": "SO-1004"}}


@pytest.fixture
def deliver(tmp_path):
    """Deliver one event to subscriber `demo` with these egress settings: its delivery record as stored."""
    store = SqliteEventStore(tmp_path / "events.sqlite3")
    made: list[Dispatcher] = []

    def run(url: str, **egress) -> dict:
        settings = EventSettings(database=None, queue_database=None, redis_url=None, max_attempts=3,
                                 backoff_base_seconds=1.0, backoff_max_seconds=1.0, delivery_timeout=3.0,
                                 worker_threads=1)
        subscriber = SubscriberSettings("demo", url, ("order.status_changed",), Secret(SUBSCRIBER_SECRET),
                                        **egress)
        dispatcher = Dispatcher(store, {"demo": subscriber}, settings, clock=lambda: 1_800_000_000.0,
                                jitter=lambda bound: bound)
        made.append(dispatcher)
        number = len(made)
        store.add_event(event(number), dedupe_key=f"k{number}", order_key=f"c:{number}", subscribers=["demo"],
                        now=1_800_000_000.0)
        dispatcher.drain_stream("demo", f"c:{number}")
        return store.get_event(event(number)["id"])["deliveries"][0]

    yield run
    for dispatcher in made:
        dispatcher.close()
    store.close()


def subscriber_egress(pki, proxy_url: str | None, **overrides) -> dict:
    settings = {"ca_bundle": pki.ca_bundle, "client_cert": pki.client_cert, "client_key": pki.client_key,
                "proxy_url": Secret(proxy_url) if proxy_url else None}
    return {**settings, **overrides}


def received(port: int, pki) -> dict:
    reply = requests.get(f"https://127.0.0.1:{port}{SUBSCRIBER_PATH}", timeout=5, verify=str(pki.ca_bundle),
                         cert=(str(pki.client_cert), str(pki.client_key)))
    assert reply.status_code == 200
    return reply.json()


def test_a_delivery_goes_through_the_proxy_to_a_subscriber_requiring_a_client_certificate(pki, vendor, tinyproxy,
                                                                                         deliver, caplog):
    port, _ = vendor()
    proxy = tinyproxy(port, basic_auth=(PROXY_USER, PROXY_PASSWORD))
    caplog.set_level(logging.DEBUG)

    delivery = deliver(f"https://127.0.0.1:{port}{SUBSCRIBER_PATH}",
                       **subscriber_egress(pki, proxy.url((PROXY_USER, PROXY_PASSWORD))))

    assert delivery["state"] == "delivered", delivery
    seen = received(port, pki)["received"]
    assert [(record["webhook_id"], record["verified"]) for record in seen] == [("evt_0001", True)]
    assert f"CONNECT 127.0.0.1:{port}" in proxy.wait_for_log(f"CONNECT 127.0.0.1:{port}")
    assert PROXY_PASSWORD not in caplog.text and PROXY_PASSWORD not in str(delivery)


@pytest.mark.parametrize(
    ("case", "named"),
    [
        ("wrong-ca", "SSLError: Subscriber 'demo' failed TLS certificate verification"),
        ("no-client-certificate", "SSLError: Subscriber 'demo' failed the TLS handshake"),
        ("dead-proxy", "ProxyError: Subscriber 'demo' could not be reached through its proxy (proxy_url): the proxy "
                       "did not accept the connection"),
        ("wrong-proxy-password", "ProxyError: Subscriber 'demo' could not be reached through its proxy (proxy_url): "
                                 "the proxy answered HTTP 401"),
    ],
)
def test_a_failed_delivery_egress_is_retried_and_its_history_names_what_failed(pki, vendor, tinyproxy, deliver,
                                                                               caplog, case, named):
    port, _ = vendor()
    proxy = tinyproxy(port, basic_auth=(PROXY_USER, PROXY_PASSWORD))
    password = "Wr0ng-Pa55.wd_y" if case == "wrong-proxy-password" else PROXY_PASSWORD
    egress = subscriber_egress(pki, proxy.url((PROXY_USER, password)))
    if case == "wrong-ca":
        egress["ca_bundle"] = pki.other_ca_bundle
    elif case == "no-client-certificate":
        egress["client_cert"] = egress["client_key"] = None
    elif case == "dead-proxy":
        egress["proxy_url"] = Secret(f"http://{PROXY_USER}:{password}@127.0.0.1:{closed_port()}")
    caplog.set_level(logging.DEBUG)

    delivery = deliver(f"https://127.0.0.1:{port}{SUBSCRIBER_PATH}", **egress)

    assert delivery["state"] == "pending" and delivery["attempts"] == 1, delivery
    assert delivery["last_error"].startswith(named), delivery["last_error"]
    assert received(port, pki)["received"] == []
    texts = str(delivery) + caplog.text
    assert password not in texts
    assert not [fragment for fragment in key_fragments(pki) if fragment in texts]


# --- configuration ---------------------------------------------------------------------------------------------

def write_config(folder: Path, connection_egress: str = "", subscriber_egress: str = "") -> Path:
    path = folder / "gateway.toml"
    path.write_text(f"""
[gateway]
default_connection = "vendor"

[connections.vendor]
backend = "ongoing"
url = "https://ongoing.example.com/Service.asmx"
goods_owner_code = "ACME"
username = "user"
password = "vendor-password"
{connection_egress}

[subscribers.fulfilment]
url = "https://fulfilment.example.com/hooks"
secret = "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ="
{subscriber_egress}
""")
    return path


@pytest.fixture
def config_folder(tmp_path, pki) -> Path:
    """A configuration folder holding the PEM files under tls/, named relatively from the file."""
    (tmp_path / "tls").mkdir()
    for name in ("ca.pem", "client.pem", "client.key", "other-ca.pem"):
        (tmp_path / "tls" / name).write_bytes((pki.folder / name).read_bytes())
    return tmp_path


RELATIVE_FILES = 'ca_bundle = "tls/ca.pem"\nclient_cert = "tls/client.pem"\nclient_key = "tls/client.key"'


def test_egress_settings_load_with_paths_from_the_configuration_folder(config_folder, monkeypatch):
    monkeypatch.setenv("TEST_EGRESS_PROXY", f"http://{PROXY_USER}:{quote('p@ss w/rd+1', safe='')}@proxy.corp:3128")
    path = write_config(config_folder, RELATIVE_FILES + '\nproxy_url = "${TEST_EGRESS_PROXY}"',
                        RELATIVE_FILES + '\nproxy_url = "${TEST_EGRESS_UNSET:-}"')
    monkeypatch.chdir("/")  # relative to the file, not to the working directory
    settings = read_config_file(path, BACKENDS)
    connection, subscriber = settings.connections["vendor"], settings.subscribers["fulfilment"]
    for egress in (connection, subscriber):
        assert egress.ca_bundle == config_folder / "tls" / "ca.pem"
        assert egress.client_cert == config_folder / "tls" / "client.pem"
        assert egress.client_key == config_folder / "tls" / "client.key"
        assert egress.verify_tls is True
    assert connection.proxy_url == Secret(os.environ["TEST_EGRESS_PROXY"])
    assert connection.proxy_credentials() == (PROXY_USER, "p@ss w/rd+1")
    assert "p%40ss" not in repr(connection)
    assert subscriber.proxy_url is None and subscriber.proxy_credentials() is None


def test_the_proxy_password_is_scrubbed_in_every_form(config_folder, monkeypatch):
    password = "p@ss w/rd+1"
    monkeypatch.setenv("TEST_EGRESS_PROXY", f"http://{PROXY_USER}:{quote(password, safe='')}@proxy.corp:3128")
    settings = read_config_file(write_config(config_folder, subscriber_egress='proxy_url = "${TEST_EGRESS_PROXY}"'),
                                BACKENDS)
    scrubber = Scrubber.for_settings(settings)
    basic = base64.b64encode(f"{PROXY_USER}:{password}".encode()).decode("ascii")
    for form in (password, quote(password, safe=""), basic, os.environ["TEST_EGRESS_PROXY"]):
        scrubbed = scrubber.scrub(f"echo: {form} :end")
        assert password not in scrubbed and quote(password, safe="") not in scrubbed and basic not in scrubbed
        assert MASK in scrubbed


def encrypted_key(pki, folder: Path) -> None:
    key = serialization.load_pem_private_key(pki.key_text.encode(), None)
    (folder / "tls" / "encrypted.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))


@pytest.mark.parametrize(
    ("egress", "key", "problem"),
    [
        ('client_cert = "tls/client.pem"', "client_cert", "needs client_key too"),
        ('client_key = "tls/client.key"', "client_key", "needs client_cert too"),
        ('ca_bundle = "tls/missing.pem"', "ca_bundle", "file {folder}/tls/missing.pem is missing"),
        ('client_cert = "tls/client.pem"\nclient_key = "tls/nowhere.key"', "client_key",
         "file {folder}/tls/nowhere.key is missing"),
        ('ca_bundle = "tls/client.key"', "ca_bundle", "{folder}/tls/client.key holds no PEM certificate"),
        ('client_cert = "tls/client.pem"\nclient_key = "tls/ca.pem"', "client_key",
         "{folder}/tls/ca.pem holds no PEM private key"),
        ('client_cert = "tls/ca.pem"\nclient_key = "tls/client.key"', "client_key",
         "{folder}/tls/client.key is not the key of client_cert's certificate"),
        ('client_cert = "tls/client.pem"\nclient_key = "tls/encrypted.key"', "client_key",
         "{folder}/tls/encrypted.key is encrypted"),
        ('ca_bundle = "tls/ca.pem"\nverify_tls = false', "ca_bundle", "cannot be used with verify_tls = false"),
        ('proxy_url = "socks5://proxy-user:SOCKS-secret-1@proxy.corp:1080"', "proxy_url",
         "Not a forward proxy's URL"),
        ('proxy_url = "http://proxy-user:PORT-secret-1@proxy.corp:99999"', "proxy_url",
         "The proxy's port is not a number"),
    ],
)
@pytest.mark.parametrize("section", ["connections.vendor", "subscribers.fulfilment"])
def test_broken_egress_settings_stop_start_naming_the_key(config_folder, pki, egress, key, problem, section):
    encrypted_key(pki, config_folder)
    path = (write_config(config_folder, connection_egress=egress) if section.startswith("connections")
            else write_config(config_folder, subscriber_egress=egress))
    with pytest.raises(ConfigError) as caught:
        read_config_file(path, BACKENDS)
    assert caught.value.key == f"{section}.{key}"
    assert problem.format(folder=config_folder) in caught.value.problem, caught.value.problem
    assert "secret-1" not in str(caught.value)


def test_every_broken_egress_setting_is_reported_when_problems_are_collected(config_folder):
    path = write_config(config_folder, 'ca_bundle = "tls/missing.pem"',
                        'client_cert = "tls/client.pem"\nclient_key = "tls/gone.key"')
    problems: list[ConfigError] = []
    settings = read_config_file(path, BACKENDS, problems)
    assert [problem.key for problem in problems] == ["connections.vendor.ca_bundle",
                                                     "subscribers.fulfilment.client_key"]
    assert settings.connections["vendor"].ca_bundle is None
