"""The OMS API endpoint's checks of a call's query parameters, and the whole-call ErrorResponse that refuses one.

The checks run in SellerCenter's order: mandatory parameters (E001), Version (E002), Timestamp format (E004)
and age (E003), Signature (E007), ServiceName and Action (E008). Errors of the body (E005, E011, E030), the rate
limit (E429), internal failures (E006) and a simulated outage (E503) are raised as the same `CallRefused` by the code
that finds them.
"""

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta

from sandbox.sellercenter.signing import SIGNATURE_PARAMETER, signature_matches

SENDER = "Sender"
PLATFORM = "Platform"
SUPPORTED_VERSION = "1.0"
SERVICE_NAME = "OMS"
MANDATORY_PARAMETERS = ("Action", "Timestamp", "Version", SIGNATURE_PARAMETER)
RETRY_AFTER_SECONDS = 60

# ISO 8601 date and time with seconds and an offset (Z, +hh:mm or +hhmm); the calendar is checked when parsing.
_TIMESTAMP_PATTERN = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(?:Z|[+-][0-9]{2}:?[0-9]{2})"
)


class CallRefused(Exception):
    """A whole-call error: ErrorCode, ErrorMessage and ErrorType of the ErrorResponse, its HTTP status and headers."""

    def __init__(
        self,
        error_code: str,
        error_message: str,
        error_type: str = SENDER,
        http_status: int = 200,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(error_message)
        self.error_code = error_code
        self.error_message = error_message
        self.error_type = error_type
        self.http_status = http_status
        self.headers = dict(headers or {})


def parameter_missing(name: str) -> CallRefused:
    """E001: a mandatory query parameter is missing or empty."""
    return CallRefused("1", f"E001: Parameter {name} is mandatory")


def invalid_version() -> CallRefused:
    """E002: the Version is not the one the API speaks."""
    return CallRefused("2", "E002: Invalid Version")


def timestamp_expired() -> CallRefused:
    """E003: the Timestamp is too far from the platform's clock, in either direction."""
    return CallRefused("3", "E003: Timestamp has expired")


def invalid_timestamp_format() -> CallRefused:
    """E004: the Timestamp is not ISO 8601 with an offset."""
    return CallRefused("4", "E004: Invalid Timestamp format")


def invalid_request_format() -> CallRefused:
    """E005: the body is not the JSON document the action takes."""
    return CallRefused("5", "E005: Invalid Request Format")


def unexpected_internal_error() -> CallRefused:
    """E006: the platform failed on its side."""
    return CallRefused("6", "E006: Unexpected internal error", error_type=PLATFORM)


def signature_mismatch() -> CallRefused:
    """E007: no API key gives the parameters the Signature they carry."""
    return CallRefused("7", "E007: Login failed. Signature mismatch")


def invalid_action() -> CallRefused:
    """E008: the ServiceName and Action name nothing this endpoint offers."""
    return CallRefused("8", "E008: Invalid Action")


def request_too_big() -> CallRefused:
    """E011: the body is larger than the platform takes."""
    return CallRefused("11", "E011: Request too big")


def empty_request() -> CallRefused:
    """E030: the request names no element to work on."""
    return CallRefused("30", "E030: Empty Request")


def too_many_requests() -> CallRefused:
    """E429: the rate limit is reached; answered with HTTP 429 and Retry-After."""
    return CallRefused(
        "429",
        "E429: Too many requests",
        http_status=429,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def service_unavailable() -> CallRefused:
    """E503 (the sandbox's own code, as SellerCenter publishes none): the platform is out; answered with HTTP 503."""
    return CallRefused("503", "E503: Service unavailable", error_type=PLATFORM, http_status=503)


def parse_timestamp(text: str) -> datetime | None:
    """The aware datetime of an ISO 8601 timestamp with offset, or None if `text` is not one."""
    if not _TIMESTAMP_PATTERN.fullmatch(text):
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        # A date or time that does not exist (February 30th, hour 24, an offset of a day or more).
        return None


def check_call_parameters(
    parameters: Mapping[str, str],
    now: datetime,
    timestamp_window: timedelta,
    api_keys: Iterable[str],
    action: str,
) -> None:
    """Refuse the call unless its parameters are complete, current, signed by an API key and name `action`."""
    for name in MANDATORY_PARAMETERS:
        if not parameters.get(name):
            raise parameter_missing(name)
    if parameters["Version"] != SUPPORTED_VERSION:
        raise invalid_version()
    timestamp = parse_timestamp(parameters["Timestamp"])
    if timestamp is None:
        raise invalid_timestamp_format()
    if abs(now - timestamp) > timestamp_window:
        raise timestamp_expired()
    if not signature_matches(parameters, api_keys):
        raise signature_mismatch()
    if parameters.get("ServiceName") != SERVICE_NAME or parameters["Action"] != action:
        raise invalid_action()


def render_call_error(refusal: CallRefused, request_action: str) -> dict:
    """The whole-call ErrorResponse: its Head names the error and the action asked for, its Body is empty."""
    return {
        "ErrorResponse": {
            "Head": {
                "RequestAction": request_action,
                "ErrorType": refusal.error_type,
                "ErrorCode": refusal.error_code,
                "ErrorMessage": refusal.error_message,
            },
            "Body": "",
        }
    }


def format_response_timestamp(moment: datetime) -> str:
    """A reply's Timestamp: ISO 8601 in UTC to the second, with the `+0000` offset form SellerCenter writes."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")
