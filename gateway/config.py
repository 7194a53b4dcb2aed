"""Loading the gateway's TOML configuration: connections, their backends, and secrets from the environment or files.

A configuration names **connections**; each is a backend kind plus an endpoint, credentials and the
backend's own settings. Strings may reference environment variables as `${NAME}` or `${NAME:-default}`, and
files as `${file:path}` (container and Kubernetes secrets are files), so secrets stay out of the file. The public
demo secrets config/sandbox.toml ships (PUBLIC_DEMO_SECRETS) are refused unless `[gateway] sandbox = true`.
Anything wrong stops start-up with a ConfigError naming file, key and problem, never a secret's value.

Each key is declared once. A table loaded into a dataclass (GatewaySettings, ConnectionSettings, EventSettings,
...) declares each key as an attribute, `setting(marshmallow field, description)`: the field validates the key and
gives its default (the attribute's default too), and `settings_schema` derives the table's marshmallow schema from
those attributes (Schema.from_dict), to which a schema subclass adds cross-key checks. A table that stays a mapping
(a backend's own settings, a connection's webhooks) declares its keys on its schema, `described(field,
description)`. docs/configuration.md is generated from these declarations (gateway/config_reference.py).
The derivation is our own, not marshmallow-dataclass: that library derives fields from type hints, while here each
key needs its own field (Secret, ranges, defaults) and several attributes hold a converted form of what the key
loads (paths resolved, keys digested), so it would save nothing, and it brings typeguard, typing-inspect and
mypy-extensions into the lock (it does load with marshmallow 4.4: it sets no upper bound).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import re
import ssl
import stat
import tomllib
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import Field, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from marshmallow import RAISE, Schema, ValidationError, fields, pre_load, validate, validates_schema

from gateway.canonical import flatten_errors
from gateway.canonical.events import ALL_EVENT_TYPES, EVENT_TYPES
from gateway.errors import ConfigError

MASK = "********"
#: what a caller may be allowed to do; every endpoint but the webhook receiver and the docs needs one of them
SCOPES = {
    "orders:write": "update orders (PATCH /orders/<id>, PATCH /orders), dry runs included",
    "orders:dry-run": "dry runs of order updates only: validate and translate, send nothing",
    "events:read": "list and show stored events (GET /events, GET /events/<id>)",
    "events:redeliver": "deliver an event again (POST /events/<id>/redeliver)",
    "updates:read": "list and show update jobs, the updates accepted with Prefer: respond-async (GET /updates, "
                    "GET /updates/<id>); sending a failed one again (POST /updates/<id>/retry) needs orders:write",
    "exchanges:read": "read the journal of backend exchanges (GET /exchanges, GET /exchanges/<id>)",
    "metrics:read": "read the Prometheus metrics (GET /metrics)",
    "console": "use the operator's web console (GET /console): connections, an order's exchanges and events, "
               "deliveries (redelivering needs events:redeliver too)",
}
#: the shortest API key accepted: keys are random secrets, not passwords a person remembers
MIN_KEY_LENGTH = 16
MIN_CONSOLE_SECRET_LENGTH = 32
CONFIG_VARIABLE = "GATEWAY_CONFIG"
#: `${file:path}` (a file's content) or `${NAME}` / `${NAME:-default}` (an environment variable); `${file:-x}` stays
#: the variable "file" with a default. One pass: a substituted value is never read as a reference itself.
_REFERENCE = re.compile(r"\$\{(?:file:(?!-)(?P<file>[^}]+)"
                        r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>[^}]*))?)\}")
#: a secret file larger than this is refused: a secret is a line, not a document
MAX_SECRET_FILE_BYTES = 65_536
#: The secrets config/sandbox.toml ships as its `${NAME:-default}` defaults: public, so good for the sandboxes and
#: nothing else. A configuration holding one of them anywhere, or its SHA-256 (a key_sha256s entry), starts only
#: with `[gateway] sandbox = true`. Listed here, not read from that file, because deployments need not carry it;
#: tests/test_config_secrets.py checks that this list and the file's secret defaults are the same.
#: Not listed: the backends' demo credentials, which the gateway sends rather than accepts (a real backend refuses
#: them), and the console's session secret, which the file does not set.
PUBLIC_DEMO_SECRETS = frozenset({
    "demo-caller-key-0000",  # [callers.demo]
    "demo-readonly-key-0000",  # [callers.demo-readonly]
    "demo-speed4trade-key-0000",  # [callers.demo-speed4trade]
    "webhook-demo-password",  # [connections.ongoing-demo.webhooks] password
    "whsec_b3JkZXItZ2F0ZXdheS1kZW1vLXN1YnNjcmliZXItc2VjcmV0",  # [subscribers.demo] secret
})
_PUBLIC_DEMO_DIGESTS = frozenset(hashlib.sha256(secret.encode()).hexdigest() for secret in PUBLIC_DEMO_SECRETS)
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


class Secret:
    """A credential that never shows itself in a repr, a log line or a reply; `reveal()` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret value, for the one place that must send it."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({MASK!r})"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class SecretField(fields.String):
    """A string setting loaded as a Secret."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Secret:
        return Secret(super()._deserialize(value, attr, data, **kwargs))


class RegexList(fields.List):
    """A list of regular expressions, compiled on load; `defaults` apply when the setting is absent."""

    def __init__(self, defaults: Sequence[str] = (), **kwargs: Any) -> None:
        kwargs.setdefault("load_default", lambda: [re.compile(pattern) for pattern in defaults])
        super().__init__(fields.String(validate=validate.Length(min=1)), **kwargs)

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> list[re.Pattern]:
        compiled = []
        for pattern in super()._deserialize(value, attr, data, **kwargs):
            try:
                compiled.append(re.compile(pattern))
            except re.error as error:
                raise ValidationError(f"Not a valid regular expression {pattern!r}: {error}.") from None
        return compiled


# --- declaring settings ---------------------------------------------------------------------------------------

#: the dataclass field metadata key that holds a setting's marshmallow field
SETTING = "setting"


def setting(marshmallow_field: fields.Field, description: str, *, attribute_default: bool = True) -> Field:
    """Declare one setting as a dataclass attribute: its marshmallow field validates it and gives its default, and
    `description` (one line) is what docs/configuration.md says of it. The attribute defaults to the field's
    load_default, unless the key is required or `attribute_default` is false (an attribute that stays positional)."""
    marshmallow_field.metadata["description"] = description
    metadata = {SETTING: marshmallow_field}
    default = marshmallow_field.load_default
    if marshmallow_field.required or not attribute_default:
        return field(metadata=metadata)
    if callable(default):
        return field(default_factory=default, metadata=metadata)
    return field(default=default, metadata=metadata)


def described(marshmallow_field: fields.Field, description: str) -> fields.Field:
    """A setting of a table that stays a mapping (a backend's own, a connection's webhooks): its marshmallow field,
    with the one-line description docs/configuration.md shows."""
    marshmallow_field.metadata["description"] = description
    return marshmallow_field


class Table(Schema):
    """A configuration table: a key it does not declare is an error, never ignored."""

    class Meta:
        unknown = RAISE


def settings_schema(settings_class: type, base: type[Schema] = Table) -> type[Schema]:
    """The marshmallow schema of a settings dataclass: one field per `setting` attribute, in declaration order."""
    declared = {item.name: item.metadata[SETTING] for item in dataclasses.fields(settings_class)
                if SETTING in item.metadata}
    schema = base.from_dict(declared, name=f"{settings_class.__name__}Schema")
    schema.__doc__ = settings_class.__doc__
    return schema


# --- field checks ---------------------------------------------------------------------------------------------

def _proxy_url(value: Secret) -> None:
    """A forward proxy's URL; the message never repeats it (it may hold a password)."""
    parts = urlsplit(value.reveal())
    try:
        port = parts.port
    except ValueError:  # not a number, or beyond 65535
        port = 0
    if port == 0:
        raise ValidationError("The proxy's port is not a number from 1 to 65535.")
    if (parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/")
            or parts.query or parts.fragment):
        raise ValidationError("Not a forward proxy's URL: http:// or https://, then user:password@ if the proxy "
                              "wants them (percent-encoded), the host and an optional port.")


def _whsec(value: Secret) -> None:
    if not value.reveal().startswith("whsec_"):
        raise ValidationError("Standard Webhooks secrets start with whsec_ followed by base64.")


def _sha256_hex(value: str) -> None:
    """64 hexadecimal digits; the message never repeats the value (it may be a key pasted by mistake)."""
    if not _SHA256_HEX.fullmatch(value):
        raise ValidationError("Not a SHA-256 digest: give its 64 hexadecimal digits, the first field of "
                              "`printf %s \"$KEY\" | sha256sum`.")


def _console_secret_long_enough(value: Secret) -> None:
    """A session secret worth the name."""
    if len(value.reveal()) < MIN_CONSOLE_SECRET_LENGTH:
        raise ValidationError(f"At least {MIN_CONSOLE_SECRET_LENGTH} characters.")


def _range(low: float | None = None, high: float | None = None) -> validate.Range:
    return validate.Range(min=low, max=high)


# --- the tables -----------------------------------------------------------------------------------------------

class WebhookSettingsSchema(Table):
    """How a backend's webhooks authenticate to the gateway, and how their templates map to event types.

    Loaded as a mapping (ConnectionSettings.webhooks), as the backend reads it."""

    auth = described(fields.String(required=True, validate=validate.OneOf(["basic", "token"])),
                     "how webhooks authenticate: HTTP Basic (username, password) or a token in a header")
    username = described(fields.String(load_default=None), "the Basic user name webhooks present")
    password = described(SecretField(load_default=None), "the Basic password webhooks present")
    header = described(fields.String(load_default="X-Webhook-Token", validate=validate.Length(min=1)),
                       "the header that carries the token")
    token = described(SecretField(load_default=None), "the token webhooks present in header")
    event_types = described(
        fields.Dict(keys=fields.String(), values=fields.String(validate=validate.OneOf(EVENT_TYPES)),
                    load_default=dict),
        "the backend's template name -> canonical event type, merged over the backend's defaults")
    timezone = described(fields.String(load_default="UTC"), "the time zone of timestamps that carry no offset")
    max_age_hours = described(
        fields.Float(load_default=48.0, validate=_range(0.1, 24 * 3650)),
        "a webhook whose timestamp is older than this is refused as a replay (Ongoing retries for a day)")
    # 15 h: a wrong time zone plus clock skew refuses nothing genuine; a date that cannot be is still refused
    max_ahead_minutes = described(
        fields.Float(load_default=900.0, validate=_range(0, 24 * 60)),
        "a webhook whose timestamp is this far ahead of the gateway's clock is refused too")

    @validates_schema
    def check_credentials(self, data: dict, **_: Any) -> None:
        """Basic needs a username and password; token needs a token; the time zone must exist."""
        if data["auth"] == "basic" and (not data.get("username") or not data.get("password")):
            raise ValidationError("auth = \"basic\" needs username and password.", field_name="auth")
        if data["auth"] == "token" and not data.get("token"):
            raise ValidationError("auth = \"token\" needs token.", field_name="token")
        try:
            ZoneInfo(data["timezone"])
        except (ZoneInfoNotFoundError, ValueError):
            raise ValidationError(f"Unknown time zone {data['timezone']!r}.", field_name="timezone") from None


#: the egress settings naming files, read from the configuration file's folder when relative
EGRESS_FILES = ("ca_bundle", "client_cert", "client_key")
#: a CA bundle, certificate or key file larger than this is refused (certifi's whole bundle is about 300 KB)
MAX_PEM_FILE_BYTES = 16_777_216


@dataclass(frozen=True, kw_only=True)
class EgressSettings:
    """How calls to one peer (a connection's backend, a subscriber) leave the gateway: through which forward proxy,
    trusting which CAs, presenting which client certificate. An empty string is the setting left out, so
    `proxy_url = "${HTTPS_PROXY:-}"` uses the environment's proxy when there is one; relative paths are read from
    the configuration file's folder.

    Loaded, its files are resolved and checked at start."""

    proxy_url: Secret | None = setting(
        SecretField(load_default=None, validate=_proxy_url),
        "http:// or https:// forward proxy, with user:password@ if it wants them (a secret); HTTPS goes by CONNECT")
    ca_bundle: Path | None = setting(
        fields.String(load_default=None),
        "PEM file of the CAs trusted for this peer, instead of certifi's (verification stays on)")
    client_cert: Path | None = setting(
        fields.String(load_default=None),
        "PEM file of the client certificate for mutual TLS (its chain may follow it); needs client_key")
    client_key: Path | None = setting(
        fields.String(load_default=None), "PEM file of client_cert's key, unencrypted")
    verify_tls: bool = setting(fields.Boolean(load_default=True),
                               "false: certificates are not verified at all (tests only; a warning at start)")

    def proxy_credentials(self) -> tuple[str, str] | None:
        """The proxy's user name and password as they are sent (percent-decoded), or None without a password."""
        if self.proxy_url is None:
            return None
        parts = urlsplit(self.proxy_url.reveal())
        if parts.password is None:
            return None
        return unquote(parts.username or ""), unquote(parts.password)


class EgressSchema(settings_schema(EgressSettings)):
    """The egress settings of a connection or a subscriber (EgressSettings)."""

    @pre_load
    def _empty_is_unset(self, data: Any, **_: Any) -> Any:
        if isinstance(data, Mapping):
            data = {name: value for name, value in data.items()
                    if not (name in ("proxy_url", *EGRESS_FILES) and value == "")}
        return data

    @validates_schema
    def check_tls_settings(self, data: dict, **_: Any) -> None:
        """client_cert and client_key come together; a ca_bundle means verifying."""
        for name, other in (("client_cert", "client_key"), ("client_key", "client_cert")):
            if data.get(name) is not None and data.get(other) is None:
                raise ValidationError(f"needs {other} too: a client certificate is both files or neither.",
                                      field_name=name)
        if data.get("ca_bundle") is not None and data.get("verify_tls") is False:
            raise ValidationError("cannot be used with verify_tls = false: nothing would be verified.",
                                  field_name="ca_bundle")


@dataclass(frozen=True, kw_only=True)
class ConnectionSettings(EgressSettings):
    """Settings every connection has; its backend adds its own (the tables below).

    The backend's own settings (Backend.settings_schema) are loaded into `options`."""

    name: str
    backend: str = setting(fields.String(required=True), "the backend kind: ongoing, speed4trade or sellercenter")
    url: str = setting(fields.Url(required=True, schemes={"http", "https"}, require_tld=False),
                       "the backend's endpoint, http:// or https://")
    username: str = setting(fields.String(load_default=""), "the user name the backend knows the gateway by")
    password: Secret | None = setting(SecretField(load_default=None), "the password sent with username")
    connect_timeout: float = setting(fields.Float(load_default=3.05, validate=_range(0.001, 300)),
                                     "seconds to establish a connection to the backend")
    read_timeout: float = setting(fields.Float(load_default=30.0, validate=_range(0.001, 3600)),
                                  "seconds to wait for each read of the backend's reply")
    call_timeout: float = setting(
        fields.Float(load_default=30.0, validate=_range(0.01, 3600)),
        "seconds for the whole call, reply included, however the backend drips it; within request_timeout")
    max_concurrent_calls: int = setting(
        fields.Integer(load_default=8, validate=_range(1, 1000)),
        "calls in flight to this connection per gateway process (the bulkhead); beyond it a call waits "
        "queue_timeout")
    queue_timeout: float = setting(fields.Float(load_default=2.0, validate=_range(0, 600)),
                                   "seconds a call waits for a place among max_concurrent_calls")
    max_calls_per_second: float | None = setting(
        fields.Float(load_default=None, validate=validate.Range(min=0, min_inclusive=False)),
        "calls per second to the backend, per connection, across every gateway process sharing the stores")
    lock_timeout: float = setting(
        fields.Float(load_default=10.0, validate=_range(0, 600)),
        "seconds a call waits for its backend's call lock (Ongoing: one goods owner's calls one after another)")
    breaker_failures: int = setting(fields.Integer(load_default=5, validate=_range(1, 1000)),
                                    "consecutive failures that open the circuit breaker")
    breaker_reset_seconds: float = setting(
        fields.Float(load_default=30.0, validate=_range(0.01, 86400)),
        "seconds the open circuit breaker refuses calls before it lets one probe call through")
    retry_attempts: int = setting(
        fields.Integer(load_default=3, validate=_range(1, 10)),
        "attempts of a call that provably never reached the backend (or of an idempotent one), within its deadline")
    max_reply_bytes: int = setting(fields.Integer(load_default=1_048_576, validate=_range(1024)),
                                   "a longer reply from the backend is refused (502)")
    max_reply_depth: int = setting(fields.Integer(load_default=32, validate=_range(2, 256)),
                                   "JSON replies nested deeper are refused (502) before anything reads them")
    pool_size: int = setting(fields.Integer(load_default=10, validate=_range(1, 1000)),
                             "HTTP connections to the backend kept open per gateway process")
    status_map: Mapping[str, Any] = setting(
        fields.Dict(keys=fields.String(validate=validate.Length(min=1, max=50)), load_default=dict),
        "canonical status name -> the backend's status code, merged over the backend's defaults")
    webhooks: Mapping[str, Any] | None = setting(
        fields.Nested(WebhookSettingsSchema, load_default=None),
        "the table [connections.<name>.webhooks], for a backend that sends webhooks: they are accepted (below)")
    options: Mapping[str, Any] = field(default_factory=dict)


class ConnectionSchema(settings_schema(ConnectionSettings, EgressSchema)):
    """The settings every connection has (ConnectionSettings); each backend extends it with its own."""


@dataclass(frozen=True)
class SubscriberSettings(EgressSettings):
    """One internal service that receives canonical order events: the events it wants and the secret deliveries
    are signed with, and the egress settings, as connections have them."""

    name: str
    url: str = setting(fields.Url(required=True, schemes={"http", "https"}, require_tld=False),
                       "where events are delivered (POST), http:// or https://")
    types: tuple[str, ...] = setting(
        fields.List(fields.String(validate=validate.OneOf(ALL_EVENT_TYPES)), load_default=lambda: list(EVENT_TYPES)),
        "the event types delivered to it: by default the orders' own events; the completion events of update jobs "
        "(order.update_succeeded, order.update_failed) when listed", attribute_default=False)
    secret: Secret = setting(SecretField(required=True, validate=_whsec),
                             "the Standard Webhooks secret deliveries are signed with: whsec_ then base64")


class SubscriberSchema(settings_schema(SubscriberSettings, EgressSchema)):
    """A subscriber's settings (SubscriberSettings)."""


@dataclass(frozen=True)
class EventSettings:
    """Where events and the delivery queue live, and how deliveries are retried and kept.

    Loaded, the database paths are resolved."""

    database: Path = setting(fields.String(load_default="var/events.sqlite3"),
                             "the SQLite file of events, relative to the configuration file's folder",
                             attribute_default=False)
    queue_database: Path = setting(fields.String(load_default="var/queue.sqlite3"),
                                   "the SQLite file of the delivery queue, relative to the configuration file's "
                                   "folder", attribute_default=False)
    redis_url: str | None = setting(fields.String(load_default=None, validate=validate.Regexp(r"^rediss?://")),
                                    "redis:// or rediss://: events, queue and the shared state live in Redis")
    max_attempts: int = setting(fields.Integer(load_default=10, validate=_range(1, 1000)),
                                "delivery attempts of one event to one subscriber before it is dead")
    backoff_base_seconds: float = setting(fields.Float(load_default=1.0, validate=_range(0.01)),
                                          "the wait before the first retry; it doubles with each retry")
    backoff_max_seconds: float = setting(fields.Float(load_default=3600.0, validate=_range(0.01)),
                                         "the longest wait between two attempts")
    delivery_timeout: float = setting(
        fields.Float(load_default=5.0, validate=_range(0.1, 300)),
        "seconds of one delivery attempt, its reply included, however the subscriber drips it")
    worker_threads: int = setting(fields.Integer(load_default=4, validate=_range(1, 64)),
                                  "threads of the event worker delivering events")
    max_reply_bytes: int = setting(
        fields.Integer(load_default=65_536, validate=_range(1024)),
        "a subscriber's reply body is read up to this and no further: its status alone decides the outcome")
    resume_interval_seconds: float = setting(
        fields.Float(load_default=60.0, validate=_range(0.05, 3600)),
        "how often the worker nudges pending streams with no drain scheduled (a lost task costs this much)")
    max_list_bytes: int = setting(
        fields.Integer(load_default=1_048_576, validate=_range(4096, 67_108_864)),
        "a GET /events reply holds no more bytes than this (then it says so, with a link to the rest)")
    max_raw_bytes: int = setting(
        fields.Integer(load_default=65_536, validate=_range(1024, 16_777_216)),
        "an event keeps its webhook as received (raw) up to this many bytes of compact JSON; a larger one is 413")
    retention_days: float = setting(
        fields.Float(load_default=30.0, validate=_range(1, 3650)),
        "an event is removed this long after its last delivery was delivered or went dead (pending ones are kept)")
    retention_interval_seconds: float = setting(
        fields.Float(load_default=3600.0, validate=_range(0.05, 86400)),
        "how often the worker removes what retention allows")
    retention_batch_size: int = setting(fields.Integer(load_default=500, validate=_range(1, 10_000)),
                                        "the most records one retention transaction removes")


EventsSectionSchema = settings_schema(EventSettings)


@dataclass(frozen=True, kw_only=True)
class CallerSettings:
    """One internal service allowed to call the gateway: its API keys, the connections it may use and its scopes.

    Loaded, `keys` holds key and keys together, `connections` is None for every connection, and `key_digests` are
    the SHA-256 digests of every key it may present, its plain keys' and its key_sha256s."""

    name: str
    key: Secret | None = setting(SecretField(load_default=None), "the caller's API key (at least 16 characters)")
    keys: tuple[Secret, ...] = setting(
        fields.List(SecretField(), load_default=list),
        "more API keys, so a key can be rotated without downtime: add the new one, move the caller, drop the old",
        attribute_default=False)
    key_sha256s: tuple[str, ...] = setting(
        fields.List(fields.String(validate=_sha256_hex), load_default=list),
        "keys given as their SHA-256 (64 hex digits), so the configuration holds no key a reader could use",
        attribute_default=False)
    connections: frozenset[str] | None = setting(
        fields.List(fields.String(validate=validate.Length(min=1)), load_default=lambda: ["*"],
                    validate=validate.Length(min=1)),
        "the connections the caller may use; \"*\" is every one", attribute_default=False)
    scopes: frozenset[str] = setting(
        fields.List(fields.String(validate=validate.OneOf(sorted(SCOPES))), required=True,
                    validate=validate.Length(min=1)),
        "what the caller may do (README: scopes)")
    key_digests: frozenset[bytes] = frozenset()


class CallerSchema(settings_schema(CallerSettings)):
    """A caller's settings (CallerSettings)."""

    @validates_schema
    def check_keys(self, data: dict, **_: Any) -> None:
        """At least one key, each long enough to be a secret (a digest's key cannot be measured)."""
        keys = ([data["key"]] if data.get("key") is not None else []) + data["keys"]
        if not keys and not data["key_sha256s"]:
            raise ValidationError("Give the caller's API key (key) or keys, or their SHA-256 digests (key_sha256s).",
                                  field_name="keys")
        if any(len(key.reveal()) < MIN_KEY_LENGTH for key in keys):
            raise ValidationError(f"API keys are at least {MIN_KEY_LENGTH} characters.", field_name="keys")


@dataclass(frozen=True)
class StoreSettings:
    """How long the gateway waits for Redis and SQLite, and how many files it keeps open."""

    redis_connect_timeout: float = setting(fields.Float(load_default=1.0, validate=_range(0.01, 60)),
                                           "seconds to establish a connection to Redis")
    redis_socket_timeout: float = setting(fields.Float(load_default=2.0, validate=_range(0.01, 60)),
                                          "seconds each Redis command waits for its reply")
    sqlite_busy_timeout: float = setting(
        fields.Float(load_default=2.0, validate=_range(0.01, 60)),
        "seconds an SQLite write waits for another's write to end, and a thread for one of the pool's connections")
    sqlite_pool_size: int = setting(fields.Integer(load_default=4, validate=_range(1, 64)),
                                    "connections per SQLite file per process, whatever the number of threads")
    min_free_disk_mb: float = setting(fields.Float(load_default=100.0, validate=_range(0)),
                                      "/readyz fails when the folders of the SQLite files have less free space")


StoresSectionSchema = settings_schema(StoreSettings)


@dataclass(frozen=True)
class JobSettings:
    """Update jobs (PATCH with `Prefer: respond-async`): how long the worker keeps trying, how it waits, how long
    finished jobs are kept."""

    max_age_seconds: float = setting(
        fields.Float(load_default=86400.0, validate=_range(1, 30 * 86400)),
        "a job the backend could not take (unavailable, breaker open, rate-limited) is tried again until it is this "
        "old, then it is dead")
    backoff_base_seconds: float = setting(fields.Float(load_default=1.0, validate=_range(0.01, 3600)),
                                          "the wait before a job's second attempt; it doubles with each attempt")
    backoff_max_seconds: float = setting(
        fields.Float(load_default=300.0, validate=_range(0.01, 86400)),
        "the longest wait between two attempts of a job (a backend's longer Retry-After is honoured)")
    send_timeout: float = setting(
        fields.Float(load_default=60.0, validate=_range(0.1, 3600)),
        "seconds one attempt of a job may take, its waits for the connection's guards included (as request_timeout "
        "for a synchronous update)")
    lease_margin_seconds: float = setting(
        fields.Float(load_default=30.0, validate=_range(0.1, 3600)),
        "a worker's claim on a job lasts send_timeout plus this: a worker killed mid-send holds its job that long, "
        "then another worker takes it over (and resends it only when resending is harmless)")
    warn_queued_age_seconds: float = setting(
        fields.Float(load_default=900.0, validate=_range(1, 30 * 86400)),
        "/readyz warns (without failing) while the oldest queued job is older than this")
    retention_days: float = setting(
        fields.Float(load_default=30.0, validate=_range(1, 3650)),
        "a job is removed this long after it was done, failed or went dead (queued ones are kept)")
    max_list_limit: int = setting(fields.Integer(load_default=200, validate=_range(1, 10_000)),
                                  "the most jobs one GET /updates lists")


JobsSectionSchema = settings_schema(JobSettings)


@dataclass(frozen=True)
class JournalSettings:
    """How long, how many and how much of each backend exchange is kept."""

    max_age_days: float = setting(fields.Float(load_default=7.0, validate=_range(0.001, 3650)),
                                  "an exchange is removed this long after it was made")
    max_count: int = setting(fields.Integer(load_default=100_000, validate=_range(1, 100_000_000)),
                             "the most exchanges kept; the oldest go first")
    record_bodies: bool = setting(fields.Boolean(load_default=True),
                                  "bodies hold customers' addresses: false keeps only the metadata of each exchange")
    max_body_bytes: int = setting(fields.Integer(load_default=65_536, validate=_range(0, 16_777_216)),
                                  "each request and reply body is kept up to this many bytes")


JournalSectionSchema = settings_schema(JournalSettings)


@dataclass(frozen=True)
class ConsoleSettings:
    """The operator's web console and its login session."""

    session_secret: Secret | None = setting(
        SecretField(load_default=None, validate=_console_secret_long_enough),
        "signs the session cookie (at least 32 characters); every process serving the console needs the same; "
        "unset: one made at start, so sessions end with the server")
    session_minutes: float = setting(
        fields.Float(load_default=480.0, validate=_range(0.01, 7 * 24 * 60)),
        "a login's whole life, from the login on (fractions of a minute too); using the console does not extend it")
    secure_cookie: bool = setting(
        fields.Boolean(load_default=True),
        "false only for plain HTTP beyond localhost (browsers keep a Secure cookie for https and localhost)")


ConsoleSectionSchema = settings_schema(ConsoleSettings)


@dataclass(frozen=True, kw_only=True)
class GatewaySettings:
    """Requests: their limits and budget, which connection they go to, who may call without a key.

    Loaded, the whole configuration: the `[gateway]` table's settings and every other table."""

    source: str
    connections: Mapping[str, ConnectionSettings]
    events: EventSettings
    subscribers: Mapping[str, SubscriberSettings] = field(default_factory=dict)
    callers: Mapping[str, CallerSettings] = field(default_factory=dict)
    journal: JournalSettings = field(default_factory=JournalSettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    stores: StoreSettings = field(default_factory=StoreSettings)
    jobs: JobSettings = field(default_factory=JobSettings)
    default_connection: str | None = setting(fields.String(load_default=None),
                                             "the connection of a request that names none")
    max_body_bytes: int = setting(fields.Integer(load_default=4_194_304, validate=_range(1024)),
                                  "a longer request body (chunked too) is refused with 413")
    max_json_depth: int = setting(
        fields.Integer(load_default=32, validate=_range(2, 256)),
        "JSON bodies (requests and webhooks) nested deeper are refused with 400 before they are validated")
    max_bulk_items: int = setting(fields.Integer(load_default=500, validate=_range(1, 100_000)),
                                  "the most updates one PATCH /orders may carry")
    request_timeout: float = setting(
        fields.Float(load_default=60.0, validate=_range(0.1, 3600)),
        "a request's whole budget in seconds (one call, or every call of a bulk); below the server's worker timeout")
    allow_anonymous: bool = setting(
        fields.Boolean(load_default=False),
        "serve requests without an API key as the caller \"anonymous\", with every scope (never in production)")
    open_docs: bool = setting(fields.Boolean(load_default=True), "/openapi.json and /docs without a key")
    open_metrics: bool = setting(
        fields.Boolean(load_default=False),
        "/metrics without a key (a scraper on a trusted network); otherwise the scope metrics:read")
    idempotency_ttl_seconds: float = setting(fields.Float(load_default=86400.0, validate=_range(1, 30 * 86400)),
                                             "how long a stored Idempotency-Key reply is replayed")
    idempotency_lease_margin_seconds: float = setting(
        fields.Float(load_default=30.0, validate=_range(0.1, 3600)),
        "an Idempotency-Key's request holds the key for request_timeout plus this; a holder that died frees it after")
    readiness_timeout: float = setting(
        fields.Float(load_default=2.0, validate=_range(0.1, 60)),
        "/readyz answers within this, reporting a check that did not finish in time as failed")
    auth_failures_allowed: int = setting(
        fields.Integer(load_default=10, validate=_range(1, 100_000)),
        "failed authentications allowed from one client address, or with one key prefix, within the window; "
        "then 429")
    auth_failure_window_seconds: float = setting(
        fields.Float(load_default=300.0, validate=_range(0.1, 86400)),
        "the window of auth_failures_allowed, from the first failure; 429 carries Retry-After until it ends")
    sandbox: bool = setting(
        fields.Boolean(load_default=False),
        "a sandbox configuration: accepts the public demo secrets of config/sandbox.toml")


GatewaySectionSchema = settings_schema(GatewaySettings)


def _config_folder(source: str) -> Path:
    """The folder relative paths of the configuration are read from: the file's own (a mapping given in code: the
    working directory)."""
    return Path(source).resolve().parent if Path(source).is_file() else Path.cwd()


class _EncryptedKey(Exception):
    """OpenSSL asked for a passphrase: the key file is encrypted."""


def _refuse_passphrase() -> str:
    raise _EncryptedKey


def _pem_file_problem(path: Path, setting: str) -> str | None:
    """Why the PEM file an egress setting names cannot serve (None: it can); never quotes the file's content."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return f"{path} cannot be read: not a regular file"
        with open(path, "rb") as handle:
            data = handle.read(MAX_PEM_FILE_BYTES + 1)
    except FileNotFoundError:
        return f"file {path} is missing"
    except OSError as error:
        return f"{path} cannot be read: {error.strerror}"
    if len(data) > MAX_PEM_FILE_BYTES:
        return f"{path} is too large (more than {MAX_PEM_FILE_BYTES} bytes)"
    if setting == "client_key":
        return None if b"PRIVATE KEY-----" in data else f"{path} holds no PEM private key"
    if b"-----BEGIN CERTIFICATE-----" not in data:
        return f"{path} holds no PEM certificate"
    if setting == "ca_bundle":
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=str(path))
        except ssl.SSLError as error:
            return f"{path} holds no usable PEM certificate ({error.reason or 'unreadable'})"
    return None


def _client_pair_problem(cert: Path, key: Path) -> str | None:
    """Why client_key cannot serve with client_cert's certificate (None: it can), as OpenSSL loads them."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(str(cert), str(key), password=_refuse_passphrase)
    except _EncryptedKey:
        return f"{key} is encrypted: give the key unencrypted (the gateway holds no passphrase; protect the file)"
    except ssl.SSLError as error:
        if error.reason == "KEY_VALUES_MISMATCH":
            return f"{key} is not the key of client_cert's certificate ({cert})"
        return f"{key} cannot be used with client_cert's certificate ({error.reason or 'unreadable PEM'})"
    return None


def _egress_settings(loaded: Mapping[str, Any], source: str, key: str, folder: Path,
                     report: Callable[[ConfigError], None]) -> dict[str, Any]:
    """The egress settings of a loaded connection or subscriber table, its files resolved from `folder` and checked:
    each exists and holds what it should, the key is unencrypted and the certificate's. A file with a problem is
    reported, naming its key, and left unset."""
    settings = {name: loaded[name] for name in EgressSchema._declared_fields}
    for name in EGRESS_FILES:
        if settings[name] is not None:
            path = (folder / settings[name]).resolve()
            problem = _pem_file_problem(path, name)
            if problem:
                report(ConfigError(source, f"{key}.{name}", problem))
            settings[name] = None if problem else path
    if settings["client_cert"] is not None and settings["client_key"] is not None:
        problem = _client_pair_problem(settings["client_cert"], settings["client_key"])
        if problem:
            report(ConfigError(source, f"{key}.client_key", problem))
            settings["client_cert"] = settings["client_key"] = None
    return settings


def _read_secret_file(reference: str, folder: Path, source: str, key: str) -> str:
    """The content of a `${file:...}` secret, its trailing newlines stripped; a ConfigError naming the key, the
    file and the reason when it is missing, unreadable, too large or empty (never the content)."""
    path = folder / reference
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise ConfigError(source, key, f"secret file {path} cannot be read: not a regular file")
        with open(path, "rb") as handle:
            data = handle.read(MAX_SECRET_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(source, key, f"secret file {path} is missing") from None
    except OSError as error:
        raise ConfigError(source, key, f"secret file {path} cannot be read: {error.strerror}") from None
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise ConfigError(source, key, f"secret file {path} is too large (more than {MAX_SECRET_FILE_BYTES} bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(source, key, f"secret file {path} cannot be read: not UTF-8 text") from None
    text = text.rstrip("\r\n")
    if not text:
        raise ConfigError(source, key, f"secret file {path} is empty")
    return text


def _raise(error: ConfigError) -> None:
    """How start-up reports a problem: the first one stops it."""
    raise error


def _interpolate(value: Any, source: str, key: str, folder: Path,
                 report: Callable[[ConfigError], None] = _raise) -> Any:
    """Replace ${NAME} / ${NAME:-default} / ${file:path} in every string of a parsed TOML value; relative paths
    are read from `folder`. A reference that cannot be resolved is reported (a placeholder when `report` returns)."""
    if isinstance(value, str):
        def substitute(match: re.Match) -> str:
            try:
                if match["file"] is not None:
                    return _read_secret_file(match["file"], folder, source, key)
                name, default = match["name"], match["default"]
                if name in os.environ:
                    return os.environ[name]
                if default is not None:
                    return default
                raise ConfigError(source, key, f"environment variable {name} is not set")
            except ConfigError as error:
                report(error)
                # a placeholder longer than a key must be: only the setting that holds it is refused again
                return f"<unresolved reference of {key}>"

        return _REFERENCE.sub(substitute, value)
    if isinstance(value, Mapping):
        return {k: _interpolate(v, source, f"{key}.{k}" if key else k, folder, report) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, source, f"{key}.{i}", folder, report) for i, v in enumerate(value)]
    return value


def _refuse_public_demo_secrets(value: Any, source: str, key: str,
                                report: Callable[[ConfigError], None] = _raise) -> None:
    """Report each key that holds a public demo secret or its SHA-256 (never the value)."""
    if isinstance(value, str):
        if value in PUBLIC_DEMO_SECRETS:
            report(ConfigError(source, key, "is a public demo secret of config/sandbox.toml, accepted only with "
                                            "[gateway] sandbox = true: set a secret of your own"))
        elif value.lower() in _PUBLIC_DEMO_DIGESTS:
            report(ConfigError(source, key, "is the SHA-256 of a public demo secret of config/sandbox.toml, "
                                            "accepted only with [gateway] sandbox = true: set a key of your own"))
    elif isinstance(value, Mapping):
        for name, item in value.items():
            _refuse_public_demo_secrets(item, source, f"{key}.{name}" if key else str(name), report)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_public_demo_secrets(item, source, f"{key}.{index}", report)


def key_digest(key: str) -> bytes:
    """The SHA-256 of an API key, as CallerSettings.key_digests hold them."""
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def caller_with_key(callers: Iterable[CallerSettings], key: str) -> CallerSettings | None:
    """The caller `key` belongs to, or None. The key is hashed once and its digest compared in constant time with
    every digest of every caller, so the time taken says nothing about which matched, or how nearly."""
    presented, found = key_digest(key), None
    for caller in callers:
        for digest in caller.key_digests:
            if hmac.compare_digest(presented, digest):
                found = caller
    return found


def _load_section(schema: Schema, data: Any, source: str, key: str,
                  report: Callable[[ConfigError], None] = _raise) -> dict | None:
    """Load one table with a marshmallow schema, reporting each of its errors as a ConfigError (None when any)."""
    if not isinstance(data, Mapping):
        report(ConfigError(source, key, "must be a table"))
        return None
    try:
        return schema.load(data)
    except ValidationError as error:
        errors = sorted(flatten_errors(error.messages).items())
    for path, messages in errors:
        report(ConfigError(source, f"{key}.{path}", " ".join(messages)))
    return None


def _load_defaulted_section(schema: Schema, data: Any, source: str, key: str,
                            report: Callable[[ConfigError], None]) -> dict:
    """A table whose settings all have defaults: loaded, or (its errors reported) those defaults."""
    loaded = _load_section(schema, data, source, key, report)
    return schema.load({}) if loaded is None else loaded


def load_settings(raw: Mapping[str, Any], source: str, backends: Mapping[str, type],
                  problems: list[ConfigError] | None = None) -> GatewaySettings:
    """Validate a parsed configuration mapping against the generic and the per-backend schemas.

    The first problem raises its ConfigError; given `problems`, each is appended to it instead and loading carries
    on (an unresolved reference read as a placeholder, a broken table as absent or its defaults), so one run finds
    them all.
    """
    report: Callable[[ConfigError], None] = _raise if problems is None else problems.append
    raw = _interpolate(raw, source, "", _config_folder(source), report)
    unknown = sorted(set(raw) - {"gateway", "connections", "events", "subscribers", "callers", "journal", "console",
                                 "stores", "jobs"})
    for section in unknown:
        report(ConfigError(source, section, "unknown section (expected [gateway], [connections.<name>], [events] "
                                            "[subscribers.<name>], [callers.<name>], [jobs], [journal], "
                                            "[console] and [stores])"))
    gateway = _load_defaulted_section(GatewaySectionSchema(), raw.get("gateway", {}), source, "gateway", report)
    tables = raw.get("connections", {})
    if not isinstance(tables, Mapping) or not tables:
        report(ConfigError(source, "connections", "at least one [connections.<name>] table is required"))
        tables = {}

    connections: dict[str, ConnectionSettings] = {}
    for name, table in tables.items():
        key = f"connections.{name}"
        if not isinstance(table, Mapping):
            report(ConfigError(source, key, "must be a table"))
            continue
        kind = table.get("backend")
        if kind not in backends:
            known = ", ".join(sorted(backends))
            problem = "missing backend kind" if kind is None else f"unknown backend kind {kind!r}"
            report(ConfigError(source, f"{key}.backend", f"{problem} (known: {known})"))
            continue
        backend_class = backends[kind]
        loaded = _load_section(backend_class.settings_schema(), table, source, key, report)
        if loaded is None:
            continue
        generic = {name: loaded.pop(name) for name in ConnectionSchema._declared_fields}
        generic.update(_egress_settings(generic, source, key, _config_folder(source), report))
        connections[name] = ConnectionSettings(name=name, options=loaded, **generic)
        if connections[name].webhooks is not None and not backend_class.default_webhook_event_types:
            report(ConfigError(source, f"{key}.webhooks", f"backend {kind!r} sends no webhooks"))
        problem = backend_class.check_settings(connections[name])
        if problem:
            report(ConfigError(source, f"{key}.{problem[0]}", problem[1]))

    for name, connection in connections.items():
        if connection.call_timeout > gateway["request_timeout"]:
            report(ConfigError(source, f"connections.{name}.call_timeout",
                               f"{connection.call_timeout:g} s is longer than [gateway] request_timeout "
                               f"({gateway['request_timeout']:g} s), the whole budget of a request"))
    default = gateway["default_connection"]
    # `tables`, not `connections`: a connection whose table is broken is named in a problem of its own
    if default is not None and default not in tables:
        report(ConfigError(source, "gateway.default_connection", f"names no configured connection: {default!r}"))

    events = _load_defaulted_section(EventsSectionSchema(), raw.get("events", {}), source, "events", report)
    for name, connection in connections.items():
        # A retry accepted after its event was removed would be stored and delivered again.
        if connection.webhooks is not None and connection.webhooks["max_age_hours"] > events["retention_days"] * 24:
            report(ConfigError(source, f"connections.{name}.webhooks.max_age_hours",
                               f"{connection.webhooks['max_age_hours']:g} h is longer than [events] retention_days "
                               f"({events['retention_days']:g} days): retries must not outlive their events"))
    base = _config_folder(source)
    for key in ("database", "queue_database"):
        events[key] = (base / events[key]).resolve()
    subscriber_tables = raw.get("subscribers", {})
    if not isinstance(subscriber_tables, Mapping):
        report(ConfigError(source, "subscribers", "must be a table of [subscribers.<name>] tables"))
        subscriber_tables = {}
    subscribers = {}
    for name, table in subscriber_tables.items():
        loaded = _load_section(SubscriberSchema(), table, source, f"subscribers.{name}", report)
        if loaded is None:
            continue
        subscribers[name] = SubscriberSettings(name=name, url=loaded["url"], types=tuple(loaded["types"]),
                                               secret=loaded["secret"],
                                               **_egress_settings(loaded, source, f"subscribers.{name}", base,
                                                                  report))
    callers = _load_callers(raw.get("callers", {}), source, set(tables), report)
    journal = JournalSettings(**_load_defaulted_section(JournalSectionSchema(), raw.get("journal", {}), source,
                                                        "journal", report))
    stores = StoreSettings(**_load_defaulted_section(StoresSectionSchema(), raw.get("stores", {}), source, "stores",
                                                     report))
    console = ConsoleSettings(**_load_defaulted_section(ConsoleSectionSchema(), raw.get("console", {}), source,
                                                        "console", report))
    jobs = JobSettings(**_load_defaulted_section(JobsSectionSchema(), raw.get("jobs", {}), source, "jobs", report))
    if not gateway["sandbox"]:
        _refuse_public_demo_secrets(raw, source, "", report)
    return GatewaySettings(source=source, connections=connections, events=EventSettings(**events),
                           subscribers=subscribers, callers=callers, journal=journal, console=console, stores=stores,
                           jobs=jobs, **gateway)


def _load_callers(tables: Any, source: str, connections: Collection[str],
                  report: Callable[[ConfigError], None] = _raise) -> dict:
    """The [callers.<name>] tables; a key may belong to one caller only, `connections` named must exist."""
    if not isinstance(tables, Mapping):
        report(ConfigError(source, "callers", "must be a table of [callers.<name>] tables"))
        return {}
    callers, owners = {}, {}
    for name, table in tables.items():
        key = f"callers.{name}"
        loaded = _load_section(CallerSchema(), table, source, key, report)
        if loaded is None:
            continue
        keys = tuple(([loaded["key"]] if loaded["key"] is not None else []) + loaded["keys"])
        digests = [(f"{key}.keys", key_digest(secret.reveal())) for secret in keys]
        digests += [(f"{key}.key_sha256s", bytes.fromhex(value)) for value in loaded["key_sha256s"]]
        for setting, digest in digests:
            if digest in owners:
                report(ConfigError(source, setting,
                                   f"a key of caller {owners[digest]!r} too: each key names one caller"))
            owners.setdefault(digest, name)
        allowed = loaded["connections"]
        unknown = [connection for connection in allowed if connection != "*" and connection not in connections]
        if unknown:
            report(ConfigError(source, f"{key}.connections", f"names no configured connection: {unknown[0]!r}"))
        callers[name] = CallerSettings(name=name, key=loaded["key"], keys=keys,
                                       key_sha256s=tuple(loaded["key_sha256s"]), scopes=frozenset(loaded["scopes"]),
                                       connections=None if "*" in allowed else frozenset(allowed),
                                       key_digests=frozenset(digest for _, digest in digests))
    return callers


def read_config_file(path: str | os.PathLike, backends: Mapping[str, type],
                     problems: list[ConfigError] | None = None) -> GatewaySettings:
    """Read and validate the TOML file at `path` (`problems`: as load_settings; an unreadable file still raises)."""
    source = str(path)
    try:
        with open(path, "rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(source, "", "file not found (set GATEWAY_CONFIG to a configuration file)") from None
    except OSError as error:
        raise ConfigError(source, "", f"cannot be read: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(source, "", f"is not valid TOML: {error}") from None
    return load_settings(raw, source, backends, problems)


def read_configured_settings(backends: Mapping[str, type]) -> GatewaySettings:
    """The configuration in the file GATEWAY_CONFIG names; unset is an error, never a silent default."""
    path = os.environ.get(CONFIG_VARIABLE)
    if not path:
        raise ConfigError(CONFIG_VARIABLE, "", "is not set: name the gateway's configuration file "
                                               "(config/sandbox.toml points at the sandboxes)")
    return read_config_file(path, backends)
