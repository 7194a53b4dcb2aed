"""Profiles: pyinstrument over the in-process Ongoing round and over gateway requests through Flask's test client.

The text reports go to bench/profiles/*.txt; the section lists, per profile, the functions with the most self
time and the gateway's own functions with the most total time. Run alone: `python -m bench.profile_hotspots
[--quick]` (starts its own sandbox).
"""

from __future__ import annotations

import copy
import itertools
import json
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask, request
from lxml import etree
from pyinstrument import Profiler
from pyinstrument.frame import Frame

from bench.measure import Budget, Section, microseconds, percentile, time_cases_interleaved
from bench.translate import GatewayRound, gateway_rounds
from bench.workload import (
    CONNECTIONS,
    REPEATABLE,
    ROOT,
    TYPICAL,
    as_demo_caller,
    parsed_config,
    recent_ongoing_timestamp,
)
from gateway import create_app
from gateway.backends.ongoing.update_order import XSD_PATH as UPDATE_ORDER_XSD
from gateway.canonical import OrderUpdateSchema
from gateway.canonical.schema import load_order_update
from gateway.runtime import gateway_of
from gateway.safexml import load_xsd, parse_untrusted_xml
from gateway.transport import BackendReply, OutboundRequest

PROFILES = Path(__file__).resolve().parent / "profiles"
WEBHOOK_AUTH = ("ongoing-webhooks", "webhook-demo-password")
SAMPLE_INTERVAL = 0.0001  # seconds: calls take tens of microseconds
MAX_CALLS = 200_000
TOP = 8


def profile_calls(call: Callable[[], Any], seconds: float) -> tuple[Profiler, int]:
    """Profile `call` repeated for `seconds` (at most MAX_CALLS times); returns the profiler and the count."""
    profiler = Profiler(interval=SAMPLE_INTERVAL)
    deadline = time.monotonic() + seconds
    calls = 0
    profiler.start()
    while calls < MAX_CALLS and time.monotonic() < deadline:
        call()
        calls += 1
    profiler.stop()
    return profiler, calls


def _where(frame: Frame) -> str:
    path = frame.file_path or "?"
    if path.startswith(str(ROOT)):
        path = path[len(str(ROOT)) + 1:]
    elif "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    return f"`{frame.function}` ({path}:{frame.line_no})"


def time_by_function(root: Frame) -> tuple[dict[str, float], dict[str, float]]:
    """Self time and total time (each stack counted once) per function, in seconds."""
    self_time: dict[str, float] = defaultdict(float)
    total_time: dict[str, float] = defaultdict(float)

    def visit(frame: Frame, ancestors: frozenset[str]) -> None:
        if frame.is_synthetic:  # pyinstrument's [self] entries: already in their parent's total_self_time
            return
        where = _where(frame)
        self_time[where] += frame.total_self_time
        if where not in ancestors:
            total_time[where] += frame.time
        for child in frame.children:
            visit(child, ancestors | {where})

    visit(root, frozenset())
    return self_time, total_time


def summarize_profile(section: Section, name: str, profiler: Profiler, calls: int) -> None:
    """Save the text report and add the profile's hot spots to the section."""
    PROFILES.mkdir(exist_ok=True)
    report = PROFILES / f"{name}.txt"
    report.write_text(profiler.output_text(unicode=True, color=False, show_all=False))
    root = profiler.last_session.root_frame()
    self_time, total_time = time_by_function(root)
    wall = root.time
    per_call = wall / calls * 1e6 if calls else float("nan")
    table = section.table(f"{name}: {calls} calls, {per_call:.0f} µs per call under the profiler "
                          f"(report: bench/profiles/{report.name})", ["rank", "self time", "function"])
    for rank, (where, seconds) in enumerate(sorted(self_time.items(), key=lambda item: -item[1])[:TOP], 1):
        table.add(rank, f"{seconds / wall:.1%}", where)
    own = section.table(f"{name}: the gateway's functions by total time",
                        ["rank", "total time", "µs per call", "function"])
    ranked = sorted(((where, seconds) for where, seconds in total_time.items() if "(gateway/" in where),
                    key=lambda item: -item[1])
    for rank, (where, seconds) in enumerate(ranked[:TOP], 1):
        own.add(rank, f"{seconds / wall:.1%}", f"{seconds / calls * 1e6:.1f}", where)
    section.hot_spots[name] = [(where, seconds / calls * 1e6) for where, seconds in ranked[:TOP]] if calls else []


class CannedTransport:
    """Stands in for a backend's HttpTransport: every request gets the same reply, nothing is sent."""

    def __init__(self, reply: BackendReply) -> None:
        self.reply = reply

    def send(self, outbound: OutboundRequest, deadline: object = None) -> BackendReply:
        """The canned reply."""
        return self.reply

    def close(self) -> None:
        """Nothing to release."""


def bare_flask_app() -> Flask:
    """The least a Flask PATCH endpoint does: read the JSON body, answer JSON."""
    app = Flask("bench_bare_flask")

    @app.patch("/orders/<path:order_id>")
    def echo_update(order_id: str) -> dict:
        return {"order_id": order_id, "updated": request.get_json()}

    return app


def time_request_without_network(section: Section, folder: Path, rounds: dict[str, GatewayRound],
                                 budget: Budget) -> None:
    """Per backend: a whole PATCH through the test client with a canned backend reply, against its parts."""
    transports = {CONNECTIONS[backend]: CannedTransport(rounds[backend].reply) for backend in TYPICAL}
    app = create_app(parsed_config("http://127.0.0.1:9", folder), transports=transports)
    try:
        cases: dict[str, Callable[[], Any]] = {}
        client, bare_client = as_demo_caller(app.test_client()), bare_flask_app().test_client()
        for backend, workload in TYPICAL.items():
            url, document = f"/orders/{workload.order_id(0)}", workload.document()
            if client.patch(url, json=document).status_code != 200:
                raise RuntimeError(f"{backend}: the gateway refused the canned round trip")
            cases[f"{backend} gateway"] = lambda url=url, document=document: client.patch(url, json=document)
            cases[f"{backend} bare"] = lambda url=url, document=document: bare_client.patch(url, json=document)
            cases[f"{backend} round"] = rounds[backend].round
        timings = time_cases_interleaved(cases, rounds=max(200, budget.translation_rounds // 5),
                                         seconds=budget.profile_seconds * 3)
    finally:
        gateway_of(app).connections.close()
        gateway_of(app).events.close()

    table = section.table(
        "where one request's CPU goes, without the network (µs, medians; the backend answers from memory)",
        ["backend", "gateway PATCH (test client)", "bare Flask PATCH (test client)",
         "translation round (timed between the requests)", "the rest: REST layer, request ids, JSON reply"])
    for backend in TYPICAL:
        gateway, bare, round_ = (percentile(timings[f"{backend} {case}"], 0.5) for case in ("gateway", "bare", "round"))
        section.figures.update({f"{backend} in-process gateway ns": gateway, f"{backend} in-process bare ns": bare,
                                f"{backend} in-process round ns": round_})
        table.add(backend, microseconds(gateway), microseconds(bare), microseconds(round_),
                  microseconds(gateway - bare - round_))


def time_parts(section: Section, rounds: dict[str, GatewayRound], budget: Budget) -> None:
    """The cost of the parts the profiles point at, timed without a profiler."""
    sellercenter = rounds["sellercenter"].connection
    ongoing_planned = rounds["ongoing"].validate()
    ongoing_update = ongoing_planned.update
    ongoing_request = rounds["ongoing"].render(ongoing_planned)
    envelope = etree.fromstring(ongoing_request.body)
    sellercenter_planned = rounds["sellercenter"].validate()
    sellercenter_document = json.loads(rounds["sellercenter"].render(sellercenter_planned).body)
    update_order = ongoing_planned.operation
    update_order_information = sellercenter_planned.operation
    skeleton, block_templates = update_order.template
    #: figure key -> (what, the call, calls per request)
    parts: dict[str, tuple[str, Callable[[], Any], int]] = {
        "ongoing render": ("Ongoing UpdateOrder render, whole",
                           lambda: rounds["ongoing"].render(ongoing_planned), 1),
        "ongoing template copy": ("— copy.deepcopy of the UpdateOrder skeleton (no update blocks)",
                                  lambda: copy.deepcopy(skeleton), 1),
        "ongoing block copy": (f"— copy.deepcopy of one update block (of {len(block_templates)})",
                               lambda: copy.deepcopy(block_templates[0][1]), 1),
        "ongoing xsd": ("— XSD validation of the filled envelope",
                        lambda: load_xsd(UPDATE_ORDER_XSD).validate(envelope), 1),
        "ongoing tostring": ("— etree.tostring of the envelope",
                             lambda: etree.tostring(envelope, xml_declaration=True, encoding="utf-8"), 1),
        "ongoing parse": ("Ongoing reply classification + UpdateOrder parse, whole",
                          lambda: rounds["ongoing"].parse(ongoing_planned), 1),
        "ongoing xml parsing": ("— parse_untrusted_xml of the reply",
                                lambda: parse_untrusted_xml(rounds["ongoing"].reply.body), 1),
        "canonical load": (f"load_order_update of the Ongoing document (marshmallow, {len(OrderUpdateSchema().fields)} "
                           "declared fields)",
                           lambda: load_order_update(ongoing_update.order_id, rounds["ongoing"].document), 1),
        "sellercenter render": ("SellerCenter UpdateOrderInformation render, whole",
                                lambda: rounds["sellercenter"].render(sellercenter_planned), 1),
        "sellercenter check": ("— marshmallow check of the rendered JSON document",
                               lambda: update_order_information.document_schema.load(sellercenter_document), 1),
        "sellercenter signing": ("SellerCenter signing of the URL (`signed_url`, at send time)",
                                 lambda: sellercenter.auth.signed_url(update_order_information.url), 1),
    }
    timings = time_cases_interleaved({key: part for key, (_, part, _) in parts.items()},
                                     rounds=max(500, budget.translation_rounds // 4),
                                     seconds=budget.profile_seconds * 2)
    table = section.table("costs of the parts the profiles point at (µs, medians, no profiler)",
                          ["part", "µs per call", "calls per request", "µs per request"])
    for key, (label, _, per_request) in parts.items():
        cost = percentile(timings[key], 0.5)
        table.add(label, microseconds(cost), per_request, microseconds(cost * per_request))
        section.figures[f"part {key} ns"] = cost * per_request


def run_profiles(sandbox_url: str, budget: Budget) -> Section:
    """Profile the Ongoing round in process and one gateway request per backend against the sandbox."""
    section = Section(
        "5. Profiles",
        f"pyinstrument (sampling every {SAMPLE_INTERVAL * 1e6:.0f} µs) over {budget.profile_seconds:g} s of "
        "calls each: the in-process Ongoing round of section 1, and `PATCH /orders/<id>` through Flask's test "
        "client of a gateway app built from the same configuration, sending to the running sandbox, and an "
        "Ongoing webhook (`POST /webhooks/ongoing/ongoing-demo`, each one new: stored and queued). *Self time* "
        "is time in the function's own code (C calls it makes, such as lxml's, included); *total time* includes "
        "everything it calls. Profiling inflates per-call times; the shares are what matter. First, without a "
        "profiler, the CPU of one request taken apart: the gateway through the test client with each backend "
        "answering from memory (section 1's canned replies and typical updates), a bare Flask app doing the least "
        "a JSON PATCH endpoint does (same test client), and the translation round alone, interleaved.",
    )
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as scratch:
        rounds = gateway_rounds(Path(scratch), sandbox_url)
        time_request_without_network(section, Path(scratch), rounds, budget)
        time_parts(section, rounds, budget)
        profiler, calls = profile_calls(rounds["ongoing"].round, budget.profile_seconds)
        summarize_profile(section, "ongoing_translation", profiler, calls)
        for gateway_round in rounds.values():
            gateway_round.connection.close()

        app = create_app(parsed_config(sandbox_url, Path(scratch)))
        try:
            client = as_demo_caller(app.test_client())
            for backend, workload in REPEATABLE.items():
                document = workload.document()
                counter = itertools.count()

                def patch_one(workload=workload, document=document, counter=counter) -> None:
                    reply = client.patch(f"/orders/{workload.order_id(next(counter))}", json=document)
                    if reply.status_code != 200:
                        raise RuntimeError(f"{workload.backend}: HTTP {reply.status_code}: {reply.get_data()!r}")

                for _ in range(20):
                    patch_one()
                profiler, calls = profile_calls(patch_one, budget.profile_seconds)
                summarize_profile(section, f"gateway_request_{backend}", profiler, calls)
            webhook_ids = itertools.count(1)
            anonymous = app.test_client()

            def receive_one() -> None:
                number = next(webhook_ids)
                reply = anonymous.post("/webhooks/ongoing/ongoing-demo", auth=WEBHOOK_AUTH, json={
                    "webhookEventId": number, "system": "profile", "timestamp": recent_ongoing_timestamp(),
                    "orderId": 700_000 + number, "orderNumber": f"SO-P{number}", "webhookTemplate":
                    "OrderStatusChanged", "orderStatus": {"number": 300}})
                if reply.status_code != 202:
                    raise RuntimeError(f"webhook: HTTP {reply.status_code}: {reply.get_data()!r}")

            for _ in range(20):
                receive_one()
            profiler, calls = profile_calls(receive_one, budget.profile_seconds)
            summarize_profile(section, "webhook_intake", profiler, calls)
        finally:
            gateway_of(app).connections.close()
            gateway_of(app).events.close()
    return section


def main() -> None:
    """Run this section alone, with its own sandbox."""
    from bench.servers import running_deployment

    budget = Budget.from_command_line(__doc__.splitlines()[0])
    with running_deployment(gateway_workers=1, with_passthrough=False) as deployment:
        print(run_profiles(deployment.sandbox.url, budget).as_markdown())


if __name__ == "__main__":
    main()
