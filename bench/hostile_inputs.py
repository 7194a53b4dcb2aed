"""Hostile inputs: what bodies of a few MB built to be expensive cost one gateway worker, in process.

Each case is one request through Flask's test client of a gateway app built from the sandbox configuration (every
URL at 127.0.0.1:9, where nothing listens): dry runs or bodies refused before anything would be sent. Per case:
the status, the reply's size, wall and CPU time over a few repeats, and in a separate pass the peak of Python's
traced memory while one request is handled; around all cases, this process's RSS. Run alone:
`python -m bench.hostile_inputs [--quick]`.
"""

from __future__ import annotations

import gc
import json
import resource
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path

import psutil

from bench.measure import Budget, Section
from bench.workload import DEMO_KEY, NO_BACKEND, SANDBOX, default_of, parsed_config, recent_ongoing_timestamp
from gateway import create_app
from gateway.safejson import MAX_OBJECT_MEMBERS

TIME_TARGET_SECONDS = 1.0
REPLY_TARGET_BYTES = 10 * 1024
PEAK_TARGET_BYTES = 100 * 2**20
TIME_TARGET = f"every case < {TIME_TARGET_SECONDS * 1000:.0f} ms median"
REPLY_TARGET = f"every refusal's reply < {REPLY_TARGET_BYTES // 1024} KB"
PEAK_TARGET = f"peak traced memory per request < {PEAK_TARGET_BYTES // 2**20} MB"
#: the configuration's max_json_depth
MAX_JSON_DEPTH = 32
#: bodies are filled to at most this many bytes below max_body_bytes
HEADROOM_BYTES = 64
SPEED4TRADE_ORDER = "/orders/10001?dry_run=true"
ONGOING_ORDER_ID = "SO-1006"
ONGOING_ORDER = f"/orders/{ONGOING_ORDER_ID}?dry_run=true"
BULK = "/orders?dry_run=true"
ONGOING, SPEED4TRADE = (SANDBOX[kind].name.encode() for kind in ("ongoing", "speed4trade"))
WEBHOOK = f"/webhooks/ongoing/{SANDBOX['ongoing'].name}"
WEBHOOK_AUTH = tuple(default_of(SANDBOX["ongoing"].table["webhooks"][key]) for key in ("username", "password"))
#: case names that the stage breakdown and the explanations of missed targets refer to
BULK_ACCEPTED = "bulk: 500 valid Ongoing items"
UNKNOWN_FIELDS = "unknown fields in one object"
UNKNOWN_FIELDS_AT_LIMIT = f"unknown fields up to the member limit ({MAX_OBJECT_MEMBERS:,} members)"
#: an Ongoing OrderPicked webhook, valid but for what a case adds to it
WEBHOOK_PAYLOAD = {"webhookEventId": 501, "system": "sandbox", "timestamp": recent_ongoing_timestamp(),
                   "orderId": 1004, "orderNumber": "SO-1004", "webhookTemplate": "OrderPicked"}


def compact_json(document: object) -> bytes:
    """`document` as JSON without optional whitespace, so a body carries as many items as it can."""
    return json.dumps(document, separators=(",", ":")).encode()


def filled_list(head: bytes, items: Iterable[bytes], tail: bytes, limit: int) -> tuple[bytes, int]:
    """`head`, as many comma-separated `items` as keep the whole within `limit` bytes, `tail`; and how many."""
    parts: list[bytes] = []
    size = len(head) + len(tail)
    for item in items:
        grown = size + len(item) + (1 if parts else 0)
        if grown > limit:
            break
        parts.append(item)
        size = grown
    return head + b",".join(parts) + tail, len(parts)


def nested_object(depth: int) -> bytes:
    """`{"x": {"x": ... {}}}`: `depth` objects, one inside the other."""
    return b'{"x":' * (depth - 1) + b"{}" + b"}" * (depth - 1)


@dataclass
class HostileCase:
    """One request: where it goes, how its body is built, the status the gateway's limits promise for it."""

    name: str
    path: str
    expected_status: int
    build_body: Callable[[int], tuple[bytes, int, str]]  # most bytes allowed -> body, how many of what it holds
    method: str = "PATCH"
    auth: tuple[str, str] | None = None


@dataclass
class CaseFigures:
    """What one case measured."""

    case: HostileCase
    items: int
    holds: str
    body_bytes: int
    status: int
    reply_bytes: int
    wall_seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    peak_traced_bytes: int = 0
    held_after_bytes: int = 0  # traced memory still allocated once the reply was dropped

    @property
    def median_seconds(self) -> float:
        """Median wall time of the timed requests."""
        return statistics.median(self.wall_seconds)


def _integers(limit: int) -> tuple[bytes, int, str]:
    head = b'{"connection":"' + SPEED4TRADE + b'","status":"shipped","shipments":['
    body, items = filled_list(head, (str(n).encode() for n in count()), b"]}", limit)
    return body, items, "integers"


def _shipments(limit: int) -> tuple[bytes, int, str]:
    head = b'{"connection":"' + SPEED4TRADE + b'","status":"shipped","shipments":['
    shipments = (compact_json({"tracking_number": f"T-{n}", "carrier": "DHL"}) for n in count())
    body, items = filled_list(head, shipments, b"]}", limit)
    return body, items, "shipment objects"


def _brackets(depth: int | None) -> Callable[[int], tuple[bytes, int, str]]:
    def build(limit: int) -> tuple[bytes, int, str]:
        levels = depth if depth is not None else limit // 2
        return b"[" * levels + b"]" * levels, levels, "nested arrays"
    return build


def _deep_object(limit: int) -> tuple[bytes, int, str]:
    depth = MAX_JSON_DEPTH + 1
    return nested_object(depth), depth, "nested objects"


def _unknown_fields(limit: int) -> tuple[bytes, int, str]:
    fields = (b'"x%d":1' % n for n in count())
    body, items = filled_list(b'{"connection":"' + ONGOING + b'",', fields, b"}", limit)
    return body, items, "unknown fields"


def _unknown_fields_at_limit(limit: int) -> tuple[bytes, int, str]:
    # the most members the JSON reader lets through: `connection` and the rest unknown
    fields = b",".join(b'"x%d":1' % n for n in range(MAX_OBJECT_MEMBERS - 1))
    return b'{"connection":"' + ONGOING + b'",' + fields + b"}", MAX_OBJECT_MEMBERS - 1, "unknown fields"


def _long_string(limit: int) -> tuple[bytes, int, str]:
    head, tail = b'{"connection":"' + ONGOING + b'","warehouse_instruction":"', b'"}'
    length = limit - len(head) - len(tail)
    return head + b"x" * length + tail, length, "characters"


def _valid_bulk(limit: int) -> tuple[bytes, int, str]:
    orders = [{"order_id": f"SO-{1006 + n % 5}", "picking_priority": 5} for n in range(500)]
    return compact_json({"connection": ONGOING.decode(), "orders": orders}), len(orders), "items"


def _tiny_bulk(limit: int) -> tuple[bytes, int, str]:
    items = 200_000
    body = b'{"connection":"' + ONGOING + b'","orders":[' + b",".join([b'{"order_id":"1"}'] * items) + b"]}"
    return body, items, "items"


def _webhook_tracking(limit: int) -> tuple[bytes, int, str]:
    head = compact_json(WEBHOOK_PAYLOAD)[:-1] + b',"tracking":['
    body, items = filled_list(head, (b'{"isReturn":"maybe"}' for _ in count()), b"]}", limit)
    return body, items, "invalid tracking entries"


CASES = (
    HostileCase("Speed4Trade dry run: shipments as integers", SPEED4TRADE_ORDER, 422, _integers),
    HostileCase("Speed4Trade dry run: valid shipment objects", SPEED4TRADE_ORDER, 422, _shipments),
    HostileCase("brackets 1,000 deep", SPEED4TRADE_ORDER, 400, _brackets(1000)),
    HostileCase("brackets filling the body", SPEED4TRADE_ORDER, 400, _brackets(None)),
    HostileCase(f"object nested {MAX_JSON_DEPTH + 1} deep", SPEED4TRADE_ORDER, 400, _deep_object),
    HostileCase(UNKNOWN_FIELDS, ONGOING_ORDER, 400, _unknown_fields),
    HostileCase(UNKNOWN_FIELDS_AT_LIMIT, ONGOING_ORDER, 422, _unknown_fields_at_limit),
    HostileCase("one long string (warehouse_instruction)", ONGOING_ORDER, 422, _long_string),
    HostileCase(BULK_ACCEPTED, BULK, 200, _valid_bulk),
    HostileCase("bulk: 200,000 tiny items", BULK, 413, _tiny_bulk),
    HostileCase("Ongoing webhook: tracking list", WEBHOOK, 422, _webhook_tracking, method="POST",
                auth=WEBHOOK_AUTH),
)


class GatewayUnderAttack:
    """An in-process gateway app that sends one case's body at a time through Flask's test client."""

    def __init__(self, config: dict) -> None:
        self.app = create_app(config)
        self.client = self.app.test_client()
        self.client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {DEMO_KEY}"

    def send(self, case: HostileCase, body: bytes) -> tuple[int, int]:
        """Send the body as the case says; the reply's status and size in bytes."""
        reply = self.client.open(case.path, method=case.method, data=body, content_type="application/json",
                                 auth=case.auth)
        return reply.status_code, len(reply.get_data())

    def time_requests(self, case: HostileCase, body: bytes, *, repetitions: int,
                      seconds: float) -> tuple[int, int, list[float], list[float]]:
        """Status, reply bytes, wall and CPU seconds of up to `repetitions` requests (none begun after `seconds`)."""
        deadline = time.monotonic() + seconds
        replies: set[tuple[int, int]] = set()
        wall_seconds: list[float] = []
        cpu_seconds: list[float] = []
        while len(wall_seconds) < repetitions:
            wall, cpu = time.perf_counter(), time.process_time()
            replies.add(self.send(case, body))
            cpu_seconds.append(time.process_time() - cpu)
            wall_seconds.append(time.perf_counter() - wall)
            if time.monotonic() >= deadline:
                break
        if len(replies) != 1:
            raise RuntimeError(f"{case.name}: the same body got different replies (status, bytes): {replies}")
        ((status, reply_bytes),) = replies
        return status, reply_bytes, wall_seconds, cpu_seconds

    def traced_memory(self, case: HostileCase, body: bytes) -> tuple[int, int]:
        """Python's traced memory while one request is handled: its peak, and what is still held afterwards."""
        gc.collect()
        tracemalloc.start()
        try:
            self.send(case, body)
            peak = tracemalloc.get_traced_memory()[1]
            gc.collect()
            return peak, tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()


def measure_case(gateway: GatewayUnderAttack, case: HostileCase, max_body_bytes: int, *, repetitions: int,
                 seconds: float) -> CaseFigures:
    """Build the case's body, time requests with it, then trace one request's memory."""
    body, items, what = case.build_body(max_body_bytes - HEADROOM_BYTES)
    if len(body) > max_body_bytes:
        raise RuntimeError(f"{case.name}: a body of {len(body)} bytes would be refused for its size alone")
    status, reply_bytes, wall_seconds, cpu_seconds = gateway.time_requests(case, body, repetitions=repetitions,
                                                                          seconds=seconds)
    peak, held_after = gateway.traced_memory(case, body)
    return CaseFigures(case, items, f"{items:,} {what}", len(body), status, reply_bytes, wall_seconds, cpu_seconds,
                       peak, held_after)


def rss_bytes() -> int:
    """This process's resident set size after a full garbage collection."""
    gc.collect()
    return psutil.Process().memory_info().rss


def _mb(size: float) -> str:
    return f"{size / 2**20:.1f}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


@dataclass
class HostileRun:
    """Everything the section measured: per case, and this process's RSS."""

    cases: list[CaseFigures]
    rss: dict[str, int]


def measure_hostile_inputs(budget: Budget) -> HostileRun:
    """Run every case against one app."""
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as scratch:
        config = parsed_config(NO_BACKEND, Path(scratch))
        max_body_bytes = config["gateway"]["max_body_bytes"]
        gateway = GatewayUnderAttack(config)
        # the first request pays for what is loaded lazily
        gateway.send(CASES[0], b'{"connection":"' + SPEED4TRADE + b'","status":"shipped"}')
        rss = {"before": rss_bytes()}
        share = budget.hostile_seconds / len(CASES)
        cases = []
        for case in CASES:
            print(f"  {case.name} ...", flush=True)
            cases.append(measure_case(gateway, case, max_body_bytes, repetitions=budget.hostile_repetitions,
                                      seconds=share))
        rss["after"] = rss_bytes()
        rss["high-water"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux counts in KiB
    return HostileRun(cases, rss)


def run_hostile_inputs(budget: Budget) -> Section:
    """Status, reply size, time and peak memory of one worker handling bodies built to be expensive."""
    section = Section(
        "6. Hostile inputs, in process",
        "One gateway app in process (Flask's test client; the sandbox configuration with every URL at "
        "127.0.0.1:9): every case is a dry run or refused before anything would be sent. Bodies are filled to "
        f"just under `max_body_bytes` (at most {HEADROOM_BYTES} bytes below) unless their size says otherwise, "
        "built before the clock starts and sent as ready bytes. Per case: wall and CPU time "
        f"(`time.process_time`) of up to {budget.hostile_repetitions} requests, no more once "
        f"{budget.hostile_seconds / len(CASES):.1f} s have passed; then, in a separate pass, `tracemalloc` over one "
        "request: the peak of what it allocated (the body read from the stream, the parsed document, validation, "
        "the reply; not the body the client holds) and what was still allocated once the reply was dropped. RSS "
        "is this process's, which holds the app as one worker would, after a full collection. The reply-size "
        "target applies to refused inputs: an accepted dry run answers with every request it would send.",
    )
    run = measure_hostile_inputs(budget)
    results = run.cases
    table = section.table("per case (times over the timed requests)", [
        "case", "request", "body holds", "body bytes", "status (expected)", "reply bytes", "median ms", "max ms",
        "median CPU ms", "requests", "peak traced MB", "held after KB"])
    for result in results:
        case = result.case
        table.add(case.name, f"`{case.method} {case.path}`", result.holds, f"{result.body_bytes:,}",
                  f"{result.status} ({case.expected_status})", f"{result.reply_bytes:,}",
                  _ms(result.median_seconds), _ms(max(result.wall_seconds)),
                  _ms(statistics.median(result.cpu_seconds)), len(result.wall_seconds),
                  _mb(result.peak_traced_bytes), f"{result.held_after_bytes / 1024:.1f}")
    refused = [result for result in results if result.status >= 400]
    rss = run.rss
    memory = section.table("this process's RSS around all cases", ["before MB", "after MB", "growth MB",
                                                                   "high-water MB"])
    memory.add(_mb(rss["before"]), _mb(rss["after"]), _mb(rss["after"] - rss["before"]), _mb(rss["high-water"]))

    judge_worst(section, results, TIME_TARGET, lambda result: result.median_seconds, TIME_TARGET_SECONDS,
                lambda s: f"{_ms(s)} ms")
    judge_worst(section, refused, REPLY_TARGET, lambda result: result.reply_bytes, REPLY_TARGET_BYTES,
                lambda size: f"{size:,.0f} bytes")
    judge_worst(section, results, PEAK_TARGET, lambda result: result.peak_traced_bytes, PEAK_TARGET_BYTES,
                lambda size: f"{_mb(size)} MB")
    unexpected = [f"{result.case.name}: {result.status}, not {result.case.expected_status}"
                  for result in results if result.status != result.case.expected_status]
    section.judge("every case answered with the status its limit documents", not unexpected,
                  "; ".join(unexpected) or f"all {len(results)} cases")
    return section


def judge_worst(section: Section, results: list[CaseFigures], target: str, figure: Callable[[CaseFigures], float],
                limit: float, shown: Callable[[float], str]) -> None:
    """Judge the target on the case with the largest figure, naming every case over the limit and the margin."""
    worst = max(results, key=figure)
    over = [result for result in results if figure(result) >= limit]
    if over:
        detail = "; ".join(f"{result.case.name}: {shown(figure(result))}, {figure(result) / limit:.1f}x the target"
                           for result in sorted(over, key=figure, reverse=True))
    else:
        detail = (f"largest {shown(figure(worst))} ({worst.case.name}), {shown(limit - figure(worst))} under the "
                  "target")
    section.judge(target, not over, detail)


def main() -> None:
    """Run this section alone."""
    budget = Budget.from_command_line(__doc__.splitlines()[0])
    print(run_hostile_inputs(budget).as_markdown())


if __name__ == "__main__":
    main()
