"""Translation in process: validate, render and parse per backend, beside zeep doing Ongoing's UpdateOrder.

A round is what the gateway does for one update apart from the network: validate the canonical document
(`load_order_update` and the connection's `check`, which plans the operation), render the wire request
(the operation's `render`, with its XSD or schema check and serialization) and read a success reply (the
reply's classification and the operation's `parse` on a canned BackendReply that the sandbox app produced).
zeep builds the same UpdateOrder envelope from Ongoing's 2017 WSDL (client made once, a transport that never
sends), serializes it as it would post it, and reads the same reply through its binding.

Run alone: `python -m bench.translate [--quick]`.
"""

from __future__ import annotations

import gc
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
import zeep
from requests.structures import CaseInsensitiveDict
from zeep.transports import Transport
from zeep.wsdl.utils import etree_to_string

import sandbox
from bench.measure import Budget, Section, microseconds, percentile, time_cases_interleaved
from bench.workload import ROOT, TYPICAL, configured_connections, rendered_request, sandbox_reply
from gateway.canonical import UpdateOutcome
from gateway.canonical.schema import load_order_update
from gateway.connections import Connection, PlannedUpdate
from gateway.replies import read_reply
from gateway.transport import BackendReply

ONGOING_WSDL = Path(os.environ.get(
    "BENCH_ONGOING_WSDL", ROOT.parent / "shared" / "reference" / "ongoing" / "ongoing-wsi-service.2017-apidemo.wsdl"))
SPEEDUP_TARGET = 5.0
STAGES = ("validate", "render", "parse", "round")


class NeverSendingTransport(Transport):
    """A zeep transport that loads the WSDL from disk and refuses to post anything."""

    def post(self, address: str, message: Any, headers: Any) -> Any:
        """Refuse: the benchmark only builds and reads messages."""
        raise RuntimeError(f"the benchmark never sends (to {address})")


@dataclass
class GatewayRound:
    """The gateway's stages for one backend's typical update, each callable on its own."""

    connection: Connection
    order_id: str
    document: dict
    reply: BackendReply

    def validate(self) -> PlannedUpdate:
        """Canonical JSON to a checked OrderUpdate with its operation planned."""
        return self.connection.check(load_order_update(self.order_id, self.document))

    def render(self, planned: PlannedUpdate) -> Any:
        """The planned update to the wire request."""
        return planned.operation.render([planned.update], self.connection.credentials)

    def parse(self, planned: PlannedUpdate) -> Any:
        """The canned success reply, classified, to normalized outcomes."""
        operation = planned.operation
        return operation.parse(read_reply(self.reply, operation.reply_format, self.connection.name), [planned.update])

    def round(self) -> Any:
        """All three, as one update goes through the gateway."""
        planned = self.validate()
        self.render(planned)
        return self.parse(planned)


def gateway_rounds(folder: Path, sandbox_url: str = "http://127.0.0.1:9") -> dict[str, GatewayRound]:
    """Per backend, its typical update with the reply the sandbox app gives it (the URL only names the target)."""
    connections = configured_connections(sandbox_url, folder)
    sandbox_client = sandbox.create_app().test_client()
    rounds = {}
    for name, workload in TYPICAL.items():
        connection = connections[name]
        reply = sandbox_reply(sandbox_client, connection, rendered_request(connection, workload))
        gateway_round = GatewayRound(connection, workload.order_id(0), workload.document(), reply)
        (outcome,) = gateway_round.round()
        if not isinstance(outcome, UpdateOutcome):
            raise RuntimeError(f"{name}: the canned reply is not a success: {outcome}")
        rounds[name] = gateway_round
    return rounds


@dataclass
class ZeepRound:
    """zeep building Ongoing's UpdateOrder from the WSDL and reading the reply to it."""

    client: zeep.Client
    arguments: dict
    response: requests.Response

    def build(self) -> bytes:
        """The envelope, serialized as zeep posts it."""
        envelope = self.client.create_message(self.client.service, "UpdateOrder", **self.arguments)
        return etree_to_string(envelope)

    def parse(self) -> Any:
        """The reply through the binding, as zeep reads what its transport returned."""
        binding = self.client.service._binding
        return binding.process_reply(self.client, binding.get("UpdateOrder"), self.response)

    def round(self) -> Any:
        """Build, then parse."""
        self.build()
        return self.parse()


def zeep_round(ongoing: GatewayRound) -> ZeepRound:
    """zeep with the 2017 WSDL, the same order and credentials as the gateway's Ongoing round, the same reply."""
    client = zeep.Client(str(ONGOING_WSDL), transport=NeverSendingTransport())
    settings = ongoing.connection.settings
    arguments = {
        "GoodsOwnerCode": settings.options["goods_owner_code"], "UserName": settings.username,
        "Password": ongoing.connection.credentials.password,
        "updateOrder": {
            "OrderUpdateIdentification": {"OrderIdentificationType": "GoodsOwnerOrderNumber",
                                          "GoodsOwnerOrderNumber": ongoing.order_id, "OrderId": None},
            "UpdateOrderStatus": {"OrderStatus": ongoing.connection.backend.status_map[ongoing.document["status"]]},
        },
    }
    response = requests.Response()
    response.status_code = ongoing.reply.status
    response.headers = CaseInsensitiveDict(ongoing.reply.headers)
    response._content = ongoing.reply.body
    response.encoding = "utf-8"
    built = ZeepRound(client, arguments, response)
    if built.parse().Success is not True:
        raise RuntimeError("zeep did not read the canned reply as a success")
    return built


def run_translation(budget: Budget) -> Section:
    """µs per stage and per round for every backend, and the Ongoing round against zeep's."""
    section = Section(
        "1. Translation, in process",
        "Microseconds per call, median and p90 of up to "
        f"{budget.translation_rounds} timed calls per case after 200 warm-up calls (`time.perf_counter_ns`), all "
        f"cases interleaved in blocks of 50 and the whole bounded to {budget.translation_seconds:g} s. *validate* = "
        "`load_order_update` + the connection's `check` (fields, rules, plan); *render* = the operation's `render` "
        "(with the XSD or schema check and serialization); *parse* = reply classification + the operation's "
        "`parse` on a canned success reply from the sandbox app; *round* = the "
        "three in a row. Typical updates: Ongoing `{\"status\": \"released\"}`, Speed4Trade shipped with one "
        "shipment, SellerCenter a shipping address (address1, city). zeep "
        f"{zeep.__version__}: `client.create_message(...)` + `etree_to_string` (*build*) and "
        "`binding.process_reply(client, operation, response)` (*parse*) with the 2017 WSDL, the same order, "
        "credentials, status and reply. What both sides built at start is frozen out of the garbage collector's "
        "passes (`gc.freeze()`), as in the gateway's gunicorn workers.",
    )
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as scratch:
        rounds = gateway_rounds(Path(scratch))
        zeep_ongoing = zeep_round(rounds["ongoing"])
        cases: dict[str, Callable[[], Any]] = {}
        for name, gateway_round in rounds.items():
            update = gateway_round.validate()
            cases[f"{name} validate"] = gateway_round.validate
            cases[f"{name} render"] = lambda r=gateway_round, u=update: r.render(u)
            cases[f"{name} parse"] = lambda r=gateway_round, u=update: r.parse(u)
            cases[f"{name} round"] = gateway_round.round
        cases["zeep build"] = zeep_ongoing.build
        cases["zeep parse"] = zeep_ongoing.parse
        cases["zeep round"] = zeep_ongoing.round
        print("timing", len(cases), "cases ...", flush=True)
        # As in a gunicorn worker (config/gunicorn.py freezes the preloaded app before forking): what was built at
        # start (schemas, XSDs, templates, zeep's client) is left out of the collector's passes, for both sides.
        gc.collect()
        gc.freeze()
        try:
            timings = time_cases_interleaved(cases, rounds=budget.translation_rounds,
                                             seconds=budget.translation_seconds)
        finally:
            gc.unfreeze()
        for gateway_round in rounds.values():
            gateway_round.connection.close()

    def median(case: str) -> float:
        return percentile(timings[case], 0.5)

    def cell(case: str) -> str:
        return f"{microseconds(median(case))} / {microseconds(percentile(timings[case], 0.9))}"

    table = section.table("gateway, µs per call (median / p90)", ["backend", *STAGES, "calls per case"])
    for name in rounds:
        table.add(name, *(cell(f"{name} {stage}") for stage in STAGES),
                  min(len(timings[f"{name} {stage}"]) for stage in STAGES))
    versus = section.table("Ongoing UpdateOrder: gateway vs zeep, µs per call (median / p90)",
                           ["work", "gateway", "zeep", "zeep ÷ gateway"])
    pairs = (("build the request", "ongoing render", "zeep build"),
             ("read the reply", "ongoing parse", "zeep parse"),
             ("build + read (no canonical validation)", None, None),
             ("full round (gateway also validates the canonical JSON)", "ongoing round", "zeep round"))
    for label, ours, theirs in pairs:
        if ours is None:
            gateway_ns = median("ongoing render") + median("ongoing parse")
            zeep_ns = median("zeep build") + median("zeep parse")
            versus.add(label, f"{microseconds(gateway_ns)} (sum of medians)",
                       f"{microseconds(zeep_ns)} (sum of medians)", f"{zeep_ns / gateway_ns:.1f}x")
        else:
            versus.add(label, cell(ours), cell(theirs), f"{median(theirs) / median(ours):.1f}x")

    speedup = median("zeep round") / median("ongoing round")
    section.judge(f"Ongoing translation round ≥ {SPEEDUP_TARGET:g}x faster than zeep's", speedup >= SPEEDUP_TARGET,
                  f"{speedup:.1f}x ({microseconds(median('ongoing round'))} vs {microseconds(median('zeep round'))} "
                  f"µs); {abs(speedup - SPEEDUP_TARGET):.1f}x {'over' if speedup >= SPEEDUP_TARGET else 'short'}")
    return section


def main() -> None:
    """Run this section alone."""
    budget = Budget.from_command_line(__doc__.splitlines()[0])
    print(run_translation(budget).as_markdown())


if __name__ == "__main__":
    main()
