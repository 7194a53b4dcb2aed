"""`python -m gateway check [--config PATH] [--connect]`: a configuration checked as start-up reads it, with every
problem at once, one line each naming the file and the key, never a secret's value (like `nginx -t`).

What is checked, in this order:

    the settings        everything gateway/config.py's load_settings reports, every problem rather than the first:
                        the schema, every ${...} reference, the callers' keys, demo secrets outside a sandbox, and
                        the egress files (ca_bundle, client_cert, client_key of connections and subscribers):
                        present, readable, loaded by `ssl` as the transport loads them
    start-up's rules    a gateway nobody could call (gateway/rest/auth.py refuses to start it)
    beyond start-up     the certificates of ca_bundle and client_cert valid today (start-up loads expired ones, and
                        calls then fail), the folders of the SQLite files writable or creatable
    with --connect      a TCP connection, and TLS for https://, to every backend and subscriber, through its proxy,
                        each reported as connected or as its mapped failure (gateway/transport.py's
                        open_connection, which sends nothing), each within a short timeout

The runtime requirements hold no X.509 package, so a certificate's validity dates are read from its DER (RFC 5280)
by the few lines below. `problems(path)` is the check for code (a reload hook): it never raises.
"""

from __future__ import annotations

import argparse
import os
import re
import ssl
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from gateway.config import (
    CONFIG_VARIABLE,
    ConnectionSettings,
    GatewaySettings,
    SubscriberSettings,
    read_config_file,
)
from gateway.errors import BackendError, ConfigError

#: the longest a --connect attempt waits for one backend or subscriber (connecting, the proxy and TLS included)
CONNECT_TIMEOUT_SECONDS = 5.0
_PEM_CERTIFICATE = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


@dataclass
class CheckReport:
    """What a check found: every problem, one line each, and the `lines` the command prints before its verdict (the
    configuration's problems, then one line per --connect target, reached or not, in the configuration's order)."""

    source: str
    problems: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)


def problems(config_path: str | os.PathLike | None = None, *, connect: bool = False,
             timeout: float = CONNECT_TIMEOUT_SECONDS) -> list[str]:
    """Every problem of the configuration at `config_path` (GATEWAY_CONFIG's file when None), one line each with
    the file and the key, never a secret's value; empty when the configuration is fine. Never raises."""
    return check(config_path, connect=connect, timeout=timeout).problems


def check(config_path: str | os.PathLike | None = None, *, connect: bool = False,
          timeout: float = CONNECT_TIMEOUT_SECONDS) -> CheckReport:
    """The whole check (see the module docstring); never raises."""
    source = str(config_path) if config_path is not None else os.environ.get(CONFIG_VARIABLE, "")
    report = CheckReport(source or CONFIG_VARIABLE)
    if not source:
        report.problems.append(str(ConfigError(CONFIG_VARIABLE, "", "is not set: name the gateway's configuration "
                                                                    "file, or give --config")))
        return report
    settings: GatewaySettings | None = None
    try:
        settings, errors = _load(source)
        if settings is not None:
            errors += _startup_rule_problems(settings)
            errors += _file_problems(settings)
        report.problems = [str(error) for error in _one_per_setting(errors)]
        report.lines = list(report.problems)
        if connect and settings is not None:
            for line, failed in _connection_reports(settings, timeout):
                report.lines.append(line)
                if failed:
                    report.problems.append(line)
    except Exception as error:  # a check reports; its caller (a reload hook too) carries on
        failure = f"{source}: the check itself failed ({type(error).__name__})"
        report.problems.append(failure)
        report.lines.append(failure)
    if settings is not None:
        scrub = _secret_masker(settings)
        report.problems = [scrub(line) for line in report.problems]
        report.lines = [scrub(line) for line in report.lines]
    return report


def _load(source: str) -> tuple[GatewaySettings | None, list[ConfigError]]:
    """The settings as start-up loads them, with every problem of theirs (no settings: the file cannot be read)."""
    from gateway.backends import BACKENDS

    errors: list[ConfigError] = []
    try:
        return read_config_file(source, BACKENDS, errors), errors
    except ConfigError as error:  # the file itself (missing, unreadable, not TOML): nothing else can be checked
        return None, [*errors, error]


def _one_per_setting(errors: Sequence[ConfigError]) -> list[ConfigError]:
    """One line per setting: a reference that cannot be resolved reads as a placeholder, which the schema may refuse
    too, at the same key or (an item of a list) at the list's."""
    kept: list[ConfigError] = []
    for error in errors:
        if not any(_same_setting(earlier.key, error.key) for earlier in kept):
            kept.append(error)
    return kept


def _same_setting(earlier: str, later: str) -> bool:
    """Whether a problem at `later` is about the setting at `earlier` (or the list holding it)."""
    holder, _, last = earlier.rpartition(".")
    return later == earlier or (last.isdigit() and later == holder)


def _startup_rule_problems(settings: GatewaySettings) -> list[ConfigError]:
    """What start-up refuses beyond the settings themselves (gateway/rest/auth.py's init_app)."""
    if not settings.callers and not settings.allow_anonymous:
        return [ConfigError(settings.source, "callers",
                            "no [callers.<name>] is configured, so every request would be refused: configure the "
                            "services that call the gateway, or set [gateway] allow_anonymous = true to serve anyone "
                            "without a key")]
    return []


def _targets(settings: GatewaySettings) -> Iterator[tuple[str, ConnectionSettings | SubscriberSettings]]:
    """(key, settings) of every connection and subscriber: what opens connections to the outside."""
    for name, connection in settings.connections.items():
        yield f"connections.{name}", connection
    for name, subscriber in settings.subscribers.items():
        yield f"subscribers.{name}", subscriber


def _file_problems(settings: GatewaySettings) -> list[ConfigError]:
    """Certificates of connections and subscribers not valid today, and SQLite folders the gateway cannot write."""
    errors = []
    for key, target in _targets(settings):
        for name, first_only in (("ca_bundle", False), ("client_cert", True)):
            path = getattr(target, name)
            if path is not None:
                errors += [ConfigError(settings.source, f"{key}.{name}", problem)
                           for problem in _validity_problems(path, first_only=first_only)]
    if not settings.events.redis_url:
        for name in ("database", "queue_database"):
            problem = _folder_problem(Path(getattr(settings.events, name)))
            if problem:
                errors.append(ConfigError(settings.source, f"events.{name}", problem))
    return errors


def _validity_problems(path: str | os.PathLike, *, first_only: bool = False) -> list[str]:
    """A line for each certificate in the PEM file that is expired or not yet valid (or cannot be read)."""
    try:
        with open(path, "rb") as handle:
            blocks = _PEM_CERTIFICATE.findall(handle.read())
    except OSError as error:
        return [f"{path} cannot be read: {error.strerror}"]
    found, now = [], datetime.now(UTC)
    for number, block in enumerate(blocks[:1] if first_only else blocks, start=1):
        which = f"the certificate in {path}" if len(blocks) == 1 or first_only else f"certificate {number} in {path}"
        try:
            not_before, not_after = certificate_validity(ssl.PEM_cert_to_DER_cert(block.decode("ascii")))
        except (ValueError, IndexError):
            found.append(f"{which} cannot be read as an X.509 certificate")
            continue
        if not_after < now:
            found.append(f"{which} expired on {not_after:%Y-%m-%d %H:%M:%S} UTC")
        elif not_before > now:
            found.append(f"{which} is not valid before {not_before:%Y-%m-%d %H:%M:%S} UTC")
    return found


def _der_element(der: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, where its content starts, where it ends) of the DER element at `offset`."""
    tag, length = der[offset], der[offset + 1]
    offset += 2
    if length & 0x80:
        count = length & 0x7F
        if not 0 < count <= 4:
            raise ValueError("unsupported DER length")
        length = int.from_bytes(der[offset:offset + count], "big")
        offset += count
    if offset + length > len(der):
        raise ValueError("truncated DER")
    return tag, offset, offset + length


def _der_time(der: bytes, offset: int) -> datetime:
    """A UTCTime (two-digit year, 1950 to 2049) or GeneralizedTime, in UTC."""
    tag, start, end = _der_element(der, offset)
    text = der[start:end].decode("ascii")
    if tag == 0x17:
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != 0x18:
        raise ValueError("not a time")
    return datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)


def certificate_validity(der: bytes) -> tuple[datetime, datetime]:
    """(notBefore, notAfter) of a DER X.509 certificate: Certificate ::= SEQUENCE { tbsCertificate SEQUENCE {
    [0] version OPTIONAL, serialNumber, signature, issuer, validity SEQUENCE { notBefore, notAfter }, ... }, ... }."""
    _, certificate, _ = _der_element(der, 0)
    _, position, _ = _der_element(der, certificate)
    if der[position] == 0xA0:  # the explicit version
        position = _der_element(der, position)[2]
    for _ in range(3):  # serialNumber, signature, issuer
        position = _der_element(der, position)[2]
    _, validity, _ = _der_element(der, position)
    not_before = _der_time(der, validity)
    return not_before, _der_time(der, _der_element(der, validity)[2])


def _folder_problem(database: Path) -> str | None:
    """Why the gateway could not create `database`'s folder or write the file in it, or None."""
    folder, existing = database.parent, database.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"folder {folder} cannot be created: {existing} is not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        if existing == folder:
            return f"folder {folder} is not writable"
        return f"folder {folder} cannot be created: {existing} is not writable"
    if database.exists() and not os.access(database, os.R_OK | os.W_OK):
        return f"{database} cannot be read and written"
    return None


def _connection_reports(settings: GatewaySettings, timeout: float) -> list[tuple[str, bool]]:
    """(line, failed) for every backend and subscriber, in the configuration's order, all tried at once."""
    targets = list(_targets(settings))
    if not targets:
        return []
    with ThreadPoolExecutor(max_workers=min(8, len(targets)), thread_name_prefix="gateway-check") as pool:
        outcomes = list(pool.map(lambda item: _connect_reported(settings, *item, timeout), targets))
    return [(f"{settings.source}: {key}: {outcome}", failed)
            for (key, _), (outcome, failed) in zip(targets, outcomes, strict=True)]


def _connect_reported(settings: GatewaySettings, key: str, target: ConnectionSettings | SubscriberSettings,
                      timeout: float) -> tuple[str, bool]:
    """_connect's outcome; an unexpected failure of one attempt is that target's problem, named by its type only."""
    try:
        return _connect(settings, target, timeout)
    except Exception as error:
        return f"the attempt to connect failed itself ({type(error).__name__})", True


def _connect(settings: GatewaySettings, target: ConnectionSettings | SubscriberSettings,
             timeout: float) -> tuple[str, bool]:
    """(what opening a connection to the target did, whether it failed), within its connect timeout (a subscriber:
    [events] delivery_timeout), at most `timeout`."""
    from gateway.transport import open_connection

    if isinstance(target, ConnectionSettings):
        peer, limit = f"The backend of connection {target.name!r}", target.connect_timeout
        connection = target.name
    else:
        peer, limit = f"Subscriber {target.name!r}", settings.events.delivery_timeout
        connection = f"subscriber:{target.name}"
    parts = urlsplit(target.url)
    address = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"  # the URL was validated
    try:
        open_connection(target.url, target, connection=connection, connect_timeout=min(limit, timeout), peer=peer)
    except BackendError as error:
        return f"cannot connect to {address}: {error.detail}", True
    if target.proxy_url is not None and parts.scheme == "http":
        return f"reached its proxy (for {address}; an http:// peer behind a proxy shows only to a request)", False
    how = " with TLS" if parts.scheme == "https" else ""
    return f"connected to {address}{how}{' through its proxy' if target.proxy_url is not None else ''}", False


def _secret_masker(settings: GatewaySettings) -> Callable[[str], str]:
    """A function masking every secret of the settings (proxy passwords included) in a line."""
    from gateway.scrubbing import Scrubber

    return Scrubber.for_settings(settings).scrub


def _seconds(text: str) -> float:
    """A positive number of seconds, for --timeout."""
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 300:
        raise argparse.ArgumentTypeError(f"not a number of seconds from 0 to 300: {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: print each problem (and with --connect each target), then the verdict; 0 when fine, else
    1."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway check",
        description="Check the gateway's configuration as start-up would, and say everything that is wrong at once.")
    parser.add_argument("--config", metavar="PATH",
                        help=f"the configuration file (default: ${CONFIG_VARIABLE}, as start-up reads it)")
    parser.add_argument("--connect", action="store_true",
                        help="also open a TCP (and TLS) connection to every backend and subscriber, through its "
                             "proxy, and report each")
    parser.add_argument("--timeout", type=_seconds, default=CONNECT_TIMEOUT_SECONDS, metavar="SECONDS",
                        help=f"--connect's limit for each (default {CONNECT_TIMEOUT_SECONDS:g})")
    arguments = parser.parse_args(argv)
    report = check(arguments.config, connect=arguments.connect, timeout=arguments.timeout)
    for line in report.lines:
        print(line)
    count = len(report.problems)
    if count:
        print(f"configuration {report.source}: {count} problem{'s' if count > 1 else ''}")
        return 1
    print(f"configuration {report.source} is fine")
    return 0


