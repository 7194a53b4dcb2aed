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
from flask import Flask
from marshmallow import ValidationError

from bench.measure import Budget, Section
from bench.workload import as_demo_caller, parsed_config, recent_ongoing_timestamp
from gateway import create_app
from gateway.canonical.schema import flatten_errors, load_order_update
from gateway.errors import ValidationFailed
from gateway.rest.problems import MAX_LISTED_ERRORS, gateway_error_document
from gateway.safejson import MAX_OBJECT_MEMBERS, load_untrusted_json

TIME_TARGET_SECONDS = 1.0
REPLY_TARGET_BYTES = 10 * 1024
PEAK_TARGET_BYTES = 100 * 2**20
TIME_TARGET = f"every case < {TIME_TARGET_SECONDS * 1000:.0f} ms median"
REPLY_TARGET = f"every refusal's reply < {REPLY_TARGET_BYTES // 1024} KB"
PEAK_TARGET = f"peak traced memory per request < {PEAK_TARGET_BYTES // 2**20} MB"
#: the configuration's max_json_depth
MAX_JSON_DEPTH = 32
#: traced memory a request may leave behind (caches, counters) before it counts as holding on to its input
HELD_AFTER_NOISE_BYTES = 64 * 1024
#: bodies are filled to at most this many bytes below max_body_bytes
HEADROOM_BYTES = 64
SPEED4TRADE_ORDER = "/orders/10001?dry_run=true"
ONGOING_ORDER_ID = "SO-1006"
ONGOING_ORDER = f"/orders/{ONGOING_ORDER_ID}?dry_run=true"
BULK = "/orders?dry_run=true"
WEBHOOK = "/webhooks/ongoing/ongoing-demo"
WEBHOOK_AUTH = ("ongoing-webhooks", "webhook-demo-password")  # config/sandbox.toml's default
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
    head = b'{"connection":"speed4trade-demo","status":"shipped","shipments":['
    body, items = filled_list(head, (str(n).encode() for n in count()), b"]}", limit)
    return body, items, "integers"


def _shipments(limit: int) -> tuple[bytes, int, str]:
    head = b'{"connection":"speed4trade-demo","status":"shipped","shipments":['
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
    body, items = filled_list(b'{"connection":"ongoing-demo",', fields, b"}", limit)
    return body, items, "unknown fields"


def _unknown_fields_at_limit(limit: int) -> tuple[bytes, int, str]:
    # the most members the JSON reader lets through: `connection` and the rest unknown
    fields = b",".join(b'"x%d":1' % n for n in range(MAX_OBJECT_MEMBERS - 1))
    return b'{"connection":"ongoing-demo",' + fields + b"}", MAX_OBJECT_MEMBERS - 1, "unknown fields"


def _long_string(limit: int) -> tuple[bytes, int, str]:
    head, tail = b'{"connection":"ongoing-demo","warehouse_instruction":"', b'"}'
    length = limit - len(head) - len(tail)
    return head + b"x" * length + tail, length, "characters"


def _valid_bulk(limit: int) -> tuple[bytes, int, str]:
    orders = [{"order_id": f"SO-{1006 + n % 5}", "picking_priority": 5} for n in range(500)]
    return compact_json({"connection": "ongoing-demo", "orders": orders}), len(orders), "items"


def _tiny_bulk(limit: int) -> tuple[bytes, int, str]:
    items = 200_000
    body = b'{"connection":"ongoing-demo","orders":[' + b",".join([b'{"order_id":"1"}'] * items) + b"]}"
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
        self.client = as_demo_caller(self.app.test_client())

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


#: the steps of refusing an invalid PATCH /orders/<id>, by the key of their figures
REFUSAL_STAGES = {
    "read": "read the bounded JSON (`load_untrusted_json`)",
    "schema": "canonical schema (`load_order_update`, marshmallow)",
    "paths": "field paths (`flatten_errors`)",
    "error": "`ValidationFailed(...)`",
    "problem": f"problem document (`gateway_error_document`: scrub every path, then keep {MAX_LISTED_ERRORS})",
}


def validation_stages(app: Flask, body: bytes, order_id: str) -> dict[str, Callable[[object], object]]:
    """The steps PATCH /orders/<id> takes to refuse an invalid document, each fed what the one before returned."""
    max_depth = app.config["GATEWAY_SETTINGS"].max_json_depth

    def canonical_schema(document: object) -> object:
        try:
            load_order_update(order_id, document)
        except ValidationError as error:
            return error.messages
        raise RuntimeError("the document was valid")

    return {"read": lambda _: load_untrusted_json(body, max_depth=max_depth), "schema": canonical_schema,
            "paths": flatten_errors, "error": ValidationFailed, "problem": gateway_error_document}


def measure_validation_stages(app: Flask, body: bytes, order_id: str, *,
                              trace_memory: bool) -> list[tuple[str, float, int | None]]:
    """Per stage of refusing the body: seconds (an untraced pass) and, if asked, the traced peak (a second pass)."""
    seconds: list[float] = []
    peaks: list[int | None] = []
    for traced in (False, True) if trace_memory else (False,):
        with app.test_request_context(f"/orders/{order_id}", method="PATCH"):
            gc.collect()
            if traced:
                tracemalloc.start()
            value: object = None
            for stage in validation_stages(app, body, order_id).values():
                if traced:
                    tracemalloc.reset_peak()
                started = time.perf_counter()
                value = stage(value)
                if traced:
                    peaks.append(tracemalloc.get_traced_memory()[1])
                else:
                    seconds.append(time.perf_counter() - started)
            if traced:
                tracemalloc.stop()
            del value
    return list(zip(REFUSAL_STAGES, seconds, peaks or [None] * len(REFUSAL_STAGES), strict=True))


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
    """Everything the section measured: per case, an unknown-fields refusal by stage, this process's RSS."""

    cases: list[CaseFigures]
    stages: list[tuple[str, float, int | None]]  # key, seconds, traced bytes at the stage's peak (full runs)
    rss: dict[str, int]


def measure_hostile_inputs(budget: Budget) -> HostileRun:
    """Run every case against one app, then take apart the refusal of the most unknown fields read."""
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as scratch:
        config = parsed_config("http://127.0.0.1:9", Path(scratch))
        max_body_bytes = config["gateway"]["max_body_bytes"]
        gateway = GatewayUnderAttack(config)
        # the first request pays for what is loaded lazily
        gateway.send(CASES[0], b'{"connection":"speed4trade-demo","status":"shipped"}')
        rss = {"before": rss_bytes()}
        share = budget.hostile_seconds / len(CASES)
        cases = []
        for case in CASES:
            print(f"  {case.name} ...", flush=True)
            cases.append(measure_case(gateway, case, max_body_bytes, repetitions=budget.hostile_repetitions,
                                      seconds=share))
        rss["after"] = rss_bytes()
        rss["high-water"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux counts in KiB
        (at_limit,) = (case for case in CASES if case.name == UNKNOWN_FIELDS_AT_LIMIT)
        body, _, _ = at_limit.build_body(max_body_bytes - HEADROOM_BYTES)
        print(f"  {UNKNOWN_FIELDS_AT_LIMIT}, stage by stage ...", flush=True)
        stages = measure_validation_stages(gateway.app, body, ONGOING_ORDER_ID, trace_memory=not budget.quick)
    return HostileRun(cases, stages, rss)


def run_hostile_inputs(budget: Budget) -> Section:
    """Status, reply size, time and peak memory of one worker handling bodies built to be expensive."""
    section = Section(
        "6. Hostile inputs",
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
        section.figures.update({f"{case.name} median s": result.median_seconds,
                                f"{case.name} status": result.status,
                                f"{case.name} reply bytes": result.reply_bytes,
                                f"{case.name} peak traced bytes": result.peak_traced_bytes,
                                f"{case.name} items": result.items})
    refused = [result for result in results if result.status >= 400]
    accepted = [result for result in results if result.status < 400]
    section.figures["largest refusal reply bytes"] = max(result.reply_bytes for result in refused)
    stages = section.table(f"{UNKNOWN_FIELDS_AT_LIMIT}: the refusal stage by stage, outside Flask's dispatch",
                           ["stage", "ms", "traced MB at the stage's peak (earlier stages' results held)"])
    for key, seconds, peak in run.stages:
        stages.add(REFUSAL_STAGES[key], _ms(seconds), "not traced in --quick runs" if peak is None else _mb(peak))
        section.figures[f"refusal {key} s"] = seconds
        if peak is not None:
            section.figures[f"refusal {key} peak bytes"] = peak
    rss = run.rss
    memory = section.table("this process's RSS around all cases", ["before MB", "after MB", "growth MB",
                                                                   "high-water MB"])
    memory.add(_mb(rss["before"]), _mb(rss["after"]), _mb(rss["after"] - rss["before"]), _mb(rss["high-water"]))
    section.figures.update({f"rss {moment} bytes": size for moment, size in rss.items()})
    held_after = max(result.held_after_bytes for result in results)
    growth = f"RSS grew by {_mb(rss['after'] - rss['before'])} MB over the cases"
    if held_after < HELD_AFTER_NOISE_BYTES:
        section.note(f"{growth} while at most {held_after / 1024:.1f} KB of traced memory outlived any request: "
                     "the growth is freed memory the allocator keeps after the largest requests, not objects the "
                     "gateway holds on to.")
    else:
        section.note(f"{growth}, and up to {_mb(held_after)} MB of traced memory outlived a request (column *held "
                     "after*): requests leave objects behind.")
    for result in accepted:
        section.note(
            f"{result.case.name}: accepted ({result.status}), the reply is {result.reply_bytes:,} bytes, "
            f"{result.reply_bytes / max(result.items, 1):,.0f} per item. A dry run shows every request it would "
            "send, so an accepted batch's reply grows with its items (at most max_bulk_items), not with the size of "
            f"the body; the reply target covers refused inputs only, whose largest reply was "
            f"{section.figures['largest refusal reply bytes']:,.0f} bytes.")

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
