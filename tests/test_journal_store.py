"""The exchange journal contract: SQLite and Redis journals keep, find and drop backend calls alike."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import sqlite3
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis

from gateway.journal import (
    MAX_LAST_AT_OUTCOMES,
    TIMINGS_LIMIT,
    Exchange,
    ExchangeJournal,
    open_exchange_journal,
    redis_store,
)
from gateway.journal.redis_store import RedisExchangeJournal
from gateway.journal.sqlite_store import SELECT_LAST_AT, SELECT_TIMINGS, SqliteExchangeJournal
from tests.servers import closed_port

DAY = 24 * 3600.0
MAX_AGE = 30 * DAY
MAX_COUNT = 10_000
ADDRESS = "Åsa Öberg, Storgatan 12, 111 22 Stockholm"
REQUEST = {
    "method": "POST",
    "url": "https://api.ongoingsystems.se/Demo/service.asmx",
    "headers": {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '"http://ongoingsystems.se/WSI/Cancel"',
                "Authorization": "***"},
    "body": f"<soap:Envelope><Password>***</Password><Address>{ADDRESS}</Address></soap:Envelope>",
}
REPLY = {"status": 200, "headers": {"Content-Type": "text/xml; charset=utf-8", "Content-Length": "52"},
         "body": f"<CancelResult><Success>true</Success><Name>{ADDRESS}</Name></CancelResult>"}


def moment() -> float:
    """Now, in whole seconds plus 1/8: sums and differences of whole seconds stay exact floats."""
    return float(int(time.time())) + 0.125


def exchange(at: float, **fields) -> Exchange:
    """An exchange that started at `at`, with typical fields unless given."""
    defaults = {
        "id": f"exc_{uuid.uuid4().hex}", "at": at, "request_id": "req-1", "caller": "shop-frontend",
        "connection": "ongoing-demo", "backend": "ongoing", "operation": "cancel_order", "order_ids": ("1001",),
        "request": REQUEST, "reply": REPLY, "duration_ms": 123.5, "outcome": "ok", "error": None,
    }
    return Exchange(**{**defaults, **fields})


def ids(exchanges: list[Exchange]) -> list[str]:
    """The ids of these exchanges, in their order."""
    return [item.id for item in exchanges]


@dataclass(frozen=True)
class JournalLocation:
    """Where a test's exchanges live: an SQLite file, or a Redis URL and key prefix."""

    kind: str
    target: str
    prefix: str = ""

    def open(self, *, max_age_seconds: float = MAX_AGE, max_count: int = MAX_COUNT,
             record_bodies: bool = True) -> ExchangeJournal:
        """A new journal instance on these exchanges."""
        retention = {"max_age_seconds": max_age_seconds, "max_count": max_count, "record_bodies": record_bodies}
        if self.kind == "sqlite":
            return SqliteExchangeJournal(self.target, **retention)
        return RedisExchangeJournal(self.target, prefix=self.prefix, **retention)

    def stored_text(self) -> str:
        """Everything stored, as one text to search (the SQLite file and its WAL, or every Redis value)."""
        if self.kind == "sqlite":
            paths = [Path(self.target), Path(self.target + "-wal")]
            return "".join(path.read_bytes().decode("utf-8", "replace") for path in paths if path.exists())
        client = redis.Redis.from_url(self.target, decode_responses=True)
        try:
            parts = []
            for key in client.scan_iter(match=self.prefix + "*"):
                if client.type(key) == "hash":
                    parts += client.hgetall(key).values()
                else:
                    parts += client.zrange(key, 0, -1)
            return "\n".join(parts)
        finally:
            client.close()

    def assert_consistent(self) -> None:
        """Every index entry belongs to a stored exchange, and every stored exchange is in the time index."""
        if self.kind == "sqlite":
            with sqlite3.connect(self.target) as db:
                orphans = db.execute("SELECT COUNT(*) FROM exchange_orders"
                                     " WHERE exchange_seq NOT IN (SELECT seq FROM exchanges)").fetchone()[0]
            db.close()
            assert orphans == 0
            return
        client = redis.Redis.from_url(self.target, decode_responses=True)
        try:
            keys = set(client.scan_iter(match=self.prefix + "*"))
            hashes = {key.removeprefix(self.prefix + "exchange:") for key in keys
                      if key.startswith(self.prefix + "exchange:")}
            assert set(client.zrange(self.prefix + "exchanges", 0, -1)) == hashes
            for key in keys - {self.prefix + "exchanges"}:
                if key.startswith(self.prefix + "exchange:"):
                    continue
                name = key.removeprefix(self.prefix)
                for member in client.zrange(key, 0, -1):
                    assert name in json.loads(client.hget(self.prefix + "exchange:" + member, "indexes"))
        finally:
            client.close()


@pytest.fixture(params=["sqlite", "redis"])
def location(request, tmp_path) -> JournalLocation:
    """A fresh place for a journal: a file in a folder that does not exist yet, or an unused Redis prefix."""
    if request.param == "sqlite":
        return JournalLocation("sqlite", str(tmp_path / "not-yet-created" / "journal.sqlite3"))
    return JournalLocation("redis", request.getfixturevalue("redis_url"), f"test:{uuid.uuid4().hex}:journal:")


@pytest.fixture
def open_journal(location):
    """Opens journal instances on the test's exchanges and closes them all afterwards."""
    journals: list[ExchangeJournal] = []

    def open_(**retention) -> ExchangeJournal:
        journals.append(location.open(**retention))
        return journals[-1]

    yield open_
    for opened in journals:
        opened.close()


@pytest.fixture
def journal(open_journal) -> ExchangeJournal:
    """A journal on fresh exchanges, keeping bodies, for a month and up to MAX_COUNT."""
    return open_journal()


# --- round trips --------------------------------------------------------------------------------------------------

UNICODE_BODY = "<Name>Åsa Öberg — Straße 5, 東京 ✓ 🚚</Name>\r\n\t\x00"
BIG_BODY = ("<Row><Name>Ærø ✓</Name><Qty>1</Qty></Row>" * 3000)[:100_000]


@pytest.mark.parametrize("fields", [
    {},
    {"reply": None, "outcome": "unreachable", "error": "connection refused by 127.0.0.1:9", "duration_ms": 0.0},
    {"reply": {**REPLY, "status": 500}, "outcome": "failed", "error": "SOAP fault: Server was unable to process"},
    {"request": {**REQUEST, "body": UNICODE_BODY, "headers": {"X-Note": "åäö ✓ \u00a0"}},
     "reply": {**REPLY, "body": UNICODE_BODY}},
    {"request": {**REQUEST, "body": BIG_BODY}, "reply": {**REPLY, "body": BIG_BODY}},
    {"request": {**REQUEST, "body": "not UTF-8: \udcff\udc80"}, "reply": {**REPLY, "body": "\udce9t\udce9"}},
    {"order_ids": ("1001", "1002", "1001"), "request_id": "", "error": ""},
    {"order_ids": (), "operation": "list_orders", "duration_ms": 30_000.0, "outcome": "timeout"},
], ids=["full", "no-reply", "error", "unicode", "100KB", "lone-surrogates", "repeated-orders", "no-orders"])
def test_every_field_comes_back_exactly(open_journal, fields):
    recorded = exchange(moment() - 0.5, **fields)
    journal = open_journal()

    journal.record(recorded)

    for reader in (journal, open_journal()):
        found = reader.get(recorded.id)
        assert found == recorded
        assert type(found.order_ids) is tuple and type(found.at) is float and type(found.duration_ms) is float
        assert found.reply is None or type(found.reply["status"]) is int
        assert reader.list() == [recorded]
    if fields.get("request", {}).get("body") == BIG_BODY:
        assert len(journal.get(recorded.id).request["body"]) == 100_000


def test_an_unknown_id_is_none(journal):
    journal.record(exchange(moment()))

    assert journal.get("exc_" + uuid.uuid4().hex) is None
    assert journal.get("") is None


def test_an_id_is_recorded_once(journal):
    first = exchange(moment())
    journal.record(first)

    with pytest.raises(ValueError, match="already recorded"):
        journal.record(dataclasses.replace(first, outcome="failed", order_ids=("2002",)))

    assert journal.list() == [first]
    assert journal.list(order_id="2002") == []


def test_record_many_stores_them_all_in_one_go(open_journal):
    start = moment() - 10
    batch = [exchange(start + number, order_ids=(f"30{number}",)) for number in range(5)]
    journal = open_journal()

    journal.record_many(batch)
    journal.record_many([])

    reader = open_journal()
    assert reader.list() == batch[::-1]
    assert [reader.get(item.id) for item in batch] == batch
    assert reader.list(order_id="303") == [batch[3]]


@pytest.mark.parametrize("spoil", ["already recorded", "named twice", "not an exchange"])
def test_record_many_stores_none_when_one_cannot_be_stored(journal, spoil):
    start = moment() - 10
    earlier = exchange(start - 5)
    journal.record(earlier)
    batch: list = [exchange(start + number, order_ids=("4001",)) for number in range(3)]
    if spoil == "already recorded":
        batch.insert(1, dataclasses.replace(earlier, order_ids=("4001",)))
    elif spoil == "named twice":
        batch.append(dataclasses.replace(batch[0], at=start + 9))
    else:
        batch.append({"id": "exc_1"})

    with pytest.raises((ValueError, TypeError)):
        journal.record_many(batch)

    assert journal.list() == [earlier]
    assert journal.list(order_id="4001") == []


def test_an_exchange_holds_its_order_ids_as_a_tuple_and_refuses_what_it_cannot_store():
    at = moment()
    assert exchange(at, order_ids=["1001", "1002"]).order_ids == ("1001", "1002")
    whole = exchange(int(at), duration_ms=5)
    assert (type(whole.at), whole.at, type(whole.duration_ms), whole.duration_ms) == (float, int(at), float, 5.0)
    for fields, error in [
        ({"id": ""}, ValueError), ({"at": math.nan}, ValueError), ({"at": "10:32"}, ValueError),
        ({"order_ids": "1001"}, TypeError), ({"order_ids": (1001,)}, TypeError), ({"request": None}, TypeError),
        ({"reply": "200 OK"}, TypeError), ({"duration_ms": -1}, ValueError), ({"duration_ms": True}, ValueError),
        ({"connection": None}, TypeError), ({"error": 500}, TypeError),
    ]:
        with pytest.raises(error):
            exchange(fields.pop("at", at), **fields)


# --- list: filters, order, limit ----------------------------------------------------------------------------------

# (order_ids, connection, outcome, request_id) of exchange n, which starts at n * 10 seconds
FILTER_SET = [
    (("1001",), "ongoing-demo", "ok", "req-a"),
    (("1001", "1002"), "ongoing-demo", "refused", "req-a"),
    (("1002",), "s4t-main", "ok", "req-b"),
    ((), "s4t-main", "failed", "req-c"),
    (("1003",), "ongoing-demo", "timeout", "req-d"),
    (("1001",), "s4t-main", "ok", "req-e"),
    (("10011",), "ongoing-demo", "ok", "req-a"),
]


@pytest.fixture
def filter_set(journal) -> tuple[ExchangeJournal, list[Exchange], float]:
    """The journal holding FILTER_SET, recorded in a shuffled order; the exchanges by number and the first `at`."""
    start = moment() - 1000
    exchanges = [exchange(start + 10 * number, order_ids=order_ids, connection=connection, outcome=outcome,
                          request_id=request_id)
                 for number, (order_ids, connection, outcome, request_id) in enumerate(FILTER_SET)]
    for number in (3, 0, 6, 1, 5, 2, 4):
        journal.record(exchanges[number])
    return journal, exchanges, start


@pytest.mark.parametrize(("filters", "expected"), [
    ({}, [6, 5, 4, 3, 2, 1, 0]),
    ({"order_id": "1001"}, [5, 1, 0]),
    ({"order_id": "1002"}, [2, 1]),
    ({"order_id": "100"}, []),
    ({"order_id": "9999"}, []),
    ({"connection": "s4t-main"}, [5, 3, 2]),
    ({"connection": "s4t"}, []),
    ({"outcome": "ok"}, [6, 5, 2, 0]),
    ({"outcome": "timeout"}, [4]),
    ({"request_id": "req-a"}, [6, 1, 0]),
    ({"since": 30}, [6, 5, 4, 3]),
    ({"since": 61}, []),
    ({"order_id": "1001", "connection": "ongoing-demo"}, [1, 0]),
    ({"order_id": "1001", "outcome": "ok"}, [5, 0]),
    ({"order_id": "1001", "outcome": "failed"}, []),
    ({"connection": "ongoing-demo", "outcome": "ok", "request_id": "req-a"}, [6, 0]),
    ({"connection": "s4t-main", "since": 20}, [5, 3, 2]),
    ({"order_id": "1002", "connection": "s4t-main", "outcome": "ok", "request_id": "req-b", "since": 20}, [2]),
    ({"order_id": "1002", "connection": "s4t-main", "outcome": "ok", "request_id": "req-b", "since": 21}, []),
], ids=lambda value: json.dumps(value).replace(" ", "") if isinstance(value, dict) else None)
def test_the_filters_alone_and_combined_find_exactly_their_exchanges_newest_first(filter_set, filters, expected):
    journal, exchanges, start = filter_set
    if "since" in filters:
        filters = {**filters, "since": start + filters["since"]}

    assert ids(journal.list(**filters)) == [exchanges[number].id for number in expected]


def test_since_is_inclusive_to_the_exact_float(filter_set):
    journal, exchanges, _ = filter_set
    at = exchanges[4].at

    assert ids(journal.list(since=at)) == ids([exchanges[6], exchanges[5], exchanges[4]])
    assert ids(journal.list(since=math.nextafter(at, math.inf))) == ids([exchanges[6], exchanges[5]])


def test_the_newest_come_first_whatever_the_order_of_recording(journal):
    start = moment() - 1000
    exchanges = [exchange(start + number * 0.25, order_ids=("7",)) for number in range(40)]
    for item in random.Random(7).sample(exchanges, len(exchanges)):
        journal.record(item)

    assert ids(journal.list()) == ids(exchanges[::-1])
    assert ids(journal.list(order_id="7", connection="ongoing-demo")) == ids(exchanges[::-1])


def test_exchanges_that_started_at_the_same_moment_come_in_descending_id_order(journal):
    at = moment()
    for suffix in ("b", "a", "c"):
        journal.record(exchange(at, id=f"exc_{suffix}"))

    assert ids(journal.list()) == ["exc_c", "exc_b", "exc_a"]
    assert ids(journal.list(order_id="1001", since=at)) == ["exc_c", "exc_b", "exc_a"]


def test_limit_keeps_the_newest(journal):
    start = moment() - 1000
    exchanges = [exchange(start + number) for number in range(12)]
    for item in exchanges:
        journal.record(item)

    assert ids(journal.list(limit=3)) == ids(exchanges[:-4:-1])
    assert ids(journal.list(limit=1)) == [exchanges[-1].id]
    assert ids(journal.list(limit=1000)) == ids(exchanges[::-1])
    assert ids(journal.list(since=start + 5, limit=2)) == ids([exchanges[11], exchanges[10]])


def test_sparse_matches_are_found_across_many_exchanges(journal):
    start = moment() - 2000
    # Connection "a" for even numbers, outcome "failed" for odd ones and every hundredth: both filters are common,
    # together they are rare.
    exchanges = [exchange(start + number, connection="a" if number % 2 == 0 else "b",
                          outcome="failed" if number % 2 or number % 100 == 0 else "ok",
                          order_ids=(f"o{number % 3}",), request={**REQUEST, "body": ""}, reply=None)
                 for number in range(1000)]
    for item in exchanges:
        journal.record(item)
    rare = [item for item in exchanges[::-1] if item.connection == "a" and item.outcome == "failed"]
    assert len(rare) == 10

    assert ids(journal.list(connection="a", outcome="failed", limit=5)) == ids(rare[:5])
    assert ids(journal.list(connection="a", outcome="failed")) == ids(rare)
    assert ids(journal.list(connection="a", outcome="failed", order_id="o0")) == ids(
        [item for item in rare if item.order_ids == ("o0",)])
    assert ids(journal.list(connection="b", limit=1000)) == ids(
        [item for item in exchanges[::-1] if item.connection == "b"])


@pytest.mark.parametrize(("filters", "expected"), [
    ({"connections": {"s4t-main"}}, [5, 3, 2]),
    ({"connections": ["ongoing-demo", "s4t-main"]}, [6, 5, 4, 3, 2, 1, 0]),
    ({"connections": ("ongoing-demo", "elsewhere")}, [6, 4, 1, 0]),
    ({"connections": set()}, []),
    ({"connections": {"elsewhere"}}, []),
    ({"connections": {"ongoing-demo"}, "limit": 2}, [6, 4]),  # the limit counts what the filter lets through
    ({"connections": {"ongoing-demo", "elsewhere"}, "limit": 2}, [6, 4]),
    ({"connections": {"s4t-main"}, "connection": "ongoing-demo"}, []),  # one outside them matches nothing
    ({"connections": {"s4t-main", "ongoing-demo"}, "connection": "s4t-main"}, [5, 3, 2]),
    ({"connections": {"s4t-main", "elsewhere"}, "outcome": "ok"}, [5, 2]),
    ({"connections": {"s4t-main", "ongoing-demo"}, "order_id": "1002"}, [2, 1]),
    ({"connections": {"s4t-main", "elsewhere"}, "order_id": "1001", "request_id": "req-e"}, [5]),
    ({"connections": {"ongoing-demo", "elsewhere"}, "since": 30}, [6, 4]),
], ids=lambda value: json.dumps(value, default=sorted).replace(" ", "") if isinstance(value, dict) else None)
def test_the_connections_filter_alone_and_with_the_others_finds_exactly_their_exchanges(filter_set, filters,
                                                                                       expected):
    journal, exchanges, start = filter_set
    if "since" in filters:
        filters = {**filters, "since": start + filters["since"]}

    assert ids(journal.list(**filters)) == [exchanges[number].id for number in expected]


def test_the_connections_filter_finds_sparse_matches_page_after_page(journal, monkeypatch):
    monkeypatch.setattr(redis_store, "LIST_PAGE_SIZE", 3)
    start = moment() - 1000
    # "rare" for every tenth, "other" for every tenth but one, "common" for the rest: the list walks many pages.
    exchanges = [exchange(start + number, connection="rare" if number % 10 == 0 else
                          "other" if number % 10 == 1 else "common", request={**REQUEST, "body": ""}, reply=None)
                 for number in range(60)]
    journal.record_many(exchanges)
    newest_first = exchanges[::-1]

    assert ids(journal.list(connections={"rare"}, limit=4)) == ids(
        [item for item in newest_first if item.connection == "rare"][:4])
    assert ids(journal.list(connections={"rare", "other"}, limit=5)) == ids(
        [item for item in newest_first if item.connection in ("rare", "other")][:5])
    assert ids(journal.list(connections={"rare", "other"}, outcome="ok")) == ids(
        [item for item in newest_first if item.connection in ("rare", "other")])


@pytest.mark.parametrize("connections", ["ongoing-demo", 7, [7], [b"ongoing-demo"]])
def test_connections_that_are_not_a_collection_of_names_are_refused(journal, connections):
    journal.record(exchange(moment(), connection="o"))

    with pytest.raises(TypeError):
        journal.list(connections=connections)


@pytest.mark.parametrize(("arguments", "error"), [
    ({"limit": 0}, ValueError), ({"limit": 1001}, ValueError), ({"limit": -1}, ValueError),
    ({"limit": True}, ValueError), ({"limit": 2.5}, ValueError), ({"since": math.nan}, ValueError),
    ({"since": "yesterday"}, ValueError), ({"order_id": 1001}, TypeError), ({"connection": ["a"]}, TypeError),
])
def test_unusable_list_arguments_are_refused(journal, arguments, error):
    with pytest.raises(error):
        journal.list(**arguments)


def test_only_exchanges_are_recorded(journal):
    with pytest.raises(TypeError, match="Exchange"):
        journal.record({"id": "exc_1"})

    assert journal.list() == []


# --- timings and last_at -----------------------------------------------------------------------------------------

# (connection, outcome, duration_ms) of exchange n, which starts at n * 10 seconds
TIMING_SET = [
    ("ongoing-demo", "ok", 120.5),
    ("ongoing-demo", "failed", 2000.0),
    ("s4t-main", "ok", 80.25),
    ("ongoing-demo", "timeout", 30_000.0),
    ("s4t-main", "unreachable", 0.0),
    ("ongoing-demo", "ok", 95.0),
    ("ongoing-demo", "refused", 310.75),
    ("s4t-main", "failed", 450.0),
]


def timing(item: Exchange) -> tuple[float, float, str]:
    """What timings() says of this exchange."""
    return (item.at, item.duration_ms, item.outcome)


@pytest.fixture(params=[True, False], ids=["bodies", "no-bodies"])
def timing_set(request, open_journal) -> tuple[ExchangeJournal, list[Exchange], float]:
    """A journal (keeping bodies or not) holding TIMING_SET in a shuffled order; the exchanges and the first `at`."""
    journal = open_journal(record_bodies=request.param)
    start = moment() - 1000
    exchanges = [exchange(start + 10 * number, connection=connection, outcome=outcome, duration_ms=duration_ms)
                 for number, (connection, outcome, duration_ms) in enumerate(TIMING_SET)]
    for number in (4, 1, 7, 0, 6, 2, 5, 3):
        journal.record(exchanges[number])
    return journal, exchanges, start


@pytest.mark.parametrize(("connection", "since", "limit", "expected"), [
    ("ongoing-demo", 0, TIMINGS_LIMIT, [6, 5, 3, 1, 0]),
    ("s4t-main", 0, TIMINGS_LIMIT, [7, 4, 2]),
    ("ongoing-demo", 30, TIMINGS_LIMIT, [6, 5, 3]),
    ("ongoing-demo", 31, TIMINGS_LIMIT, [6, 5]),
    ("ongoing-demo", -1000, TIMINGS_LIMIT, [6, 5, 3, 1, 0]),
    ("ongoing-demo", 61, TIMINGS_LIMIT, []),
    ("ongoing-demo", 0, 2, [6, 5]),
    ("ongoing-demo", 10, 1, [6]),
    ("s4t-main", 25, 5, [7, 4]),
    ("ongoing", 0, TIMINGS_LIMIT, []),
    ("unknown", 0, TIMINGS_LIMIT, []),
])
def test_timings_are_the_connections_exchanges_from_since_on_newest_first(timing_set, connection, since, limit,
                                                                           expected):
    journal, exchanges, start = timing_set

    assert journal.timings(connection, since=start + since, limit=limit) == [
        timing(exchanges[number]) for number in expected]


def test_timings_since_is_inclusive_to_the_exact_float_and_the_values_are_floats(timing_set):
    journal, exchanges, _ = timing_set
    at = exchanges[3].at

    found = journal.timings("ongoing-demo", since=at)
    assert found == [timing(exchanges[6]), timing(exchanges[5]), timing(exchanges[3])]
    assert all(type(at) is float and type(duration) is float and type(outcome) is str
               for at, duration, outcome in found)
    assert journal.timings("ongoing-demo", since=math.nextafter(at, math.inf)) == [
        timing(exchanges[6]), timing(exchanges[5])]
    assert journal.timings("ongoing-demo", since=int(exchanges[0].at) + 1) == journal.timings(
        "ongoing-demo", since=exchanges[1].at)


def test_timings_of_exchanges_that_started_at_the_same_moment_come_in_descending_id_order(journal):
    at = moment()
    for suffix, duration_ms in (("b", 2.0), ("a", 1.0), ("d", 4.0), ("c", 3.0)):
        journal.record(exchange(at, id=f"exc_{suffix}", duration_ms=duration_ms))

    assert journal.timings("ongoing-demo", since=at) == [(at, 4.0, "ok"), (at, 3.0, "ok"), (at, 2.0, "ok"),
                                                         (at, 1.0, "ok")]
    # The limit cuts where list() does.
    assert journal.timings("ongoing-demo", since=at, limit=2) == [(at, 4.0, "ok"), (at, 3.0, "ok")]
    assert ids(journal.list(connection="ongoing-demo", limit=2)) == ["exc_d", "exc_c"]


def test_timings_sample_a_busy_connection_by_its_most_recent_calls_beyond_what_list_returns(journal):
    start = moment() - 2000
    exchanges = [exchange(start + number * 0.5, connection="busy" if number % 4 else "quiet",
                          duration_ms=float(number % 97), outcome="failed" if number % 13 == 0 else "ok",
                          request={**REQUEST, "body": ""}, reply=None)
                 for number in range(1600)]
    for item in exchanges:
        journal.record(item)
    busy = [timing(item) for item in exchanges[::-1] if item.connection == "busy"]
    assert len(busy) == 1200

    assert journal.timings("busy", since=start) == busy
    assert journal.timings("busy", since=start, limit=1100) == busy[:1100]
    assert journal.timings("busy", since=start + 700) == [item for item in busy if item[0] >= start + 700]
    assert journal.timings("quiet", since=start, limit=5) == [
        timing(item) for item in exchanges[::-1] if item.connection == "quiet"][:5]


def test_timings_and_last_at_leave_out_what_is_pruned(open_journal):
    journal = open_journal(max_age_seconds=3600)
    start = moment()
    old_failure, failure, success = (exchange(start - 3000, outcome="failed"), exchange(start - 2000, outcome="failed"),
                                     exchange(start - 1000))
    for item in (old_failure, failure, success):
        journal.record(item)
    assert journal.last_at("ongoing-demo", {"failed"}) == failure.at

    assert journal.prune(now=start + 1700) == 2

    assert journal.timings("ongoing-demo", since=start - DAY) == [timing(success)]
    assert journal.last_at("ongoing-demo", {"failed"}) is None
    assert journal.last_at("ongoing-demo", {"ok", "failed"}) == success.at


def test_an_empty_journal_has_no_timings_and_no_last_exchange(journal):
    assert journal.timings("ongoing-demo", since=0) == []
    assert journal.last_at("ongoing-demo", ("ok", "failed")) is None


@pytest.mark.parametrize(("connection", "outcomes", "expected"), [
    ("ongoing-demo", {"ok"}, 5),
    ("ongoing-demo", ["failed"], 1),
    ("ongoing-demo", ("failed", "timeout", "refused", "unreachable"), 6),
    ("ongoing-demo", ["failed", "timeout"], 3),
    ("ongoing-demo", ["timeout", "failed", "timeout"], 3),
    ("ongoing-demo", frozenset({"ok", "failed"}), 5),
    ("ongoing-demo", {"failed": 1, "ok": 2}.keys(), 5),
    ("ongoing-demo", ["unreachable"], None),
    ("ongoing-demo", ["Ok"], None),
    ("ongoing-demo", [], None),
    ("s4t-main", ["ok"], 2),
    ("s4t-main", ["failed", "unreachable"], 7),
    ("s4t-main", ["timeout", "refused"], None),
    ("unknown", ["ok"], None),
], ids=lambda value: None if isinstance(value, str | int) or value is None else repr(sorted(value)))
def test_last_at_is_when_the_connections_latest_exchange_with_one_of_the_outcomes_started(timing_set, connection,
                                                                                         outcomes, expected):
    journal, exchanges, _ = timing_set

    assert journal.last_at(connection, outcomes) == (None if expected is None else exchanges[expected].at)


def test_last_at_finds_an_old_match_under_many_newer_exchanges_page_after_page(journal, monkeypatch):
    monkeypatch.setattr(redis_store, "LAST_AT_PAGE_SIZE", 3)
    start = moment() - 1000
    # The connection's one failure lies under its 40 newer successes; other connections fail often.
    exchanges = [exchange(start, connection="a", outcome="failed")] + [
        exchange(start + 1 + number, connection="a" if number % 3 else "b", outcome="ok" if number % 3 else "failed")
        for number in range(60)]
    for item in random.Random(11).sample(exchanges, len(exchanges)):
        journal.record(item)
    last_success = max(item.at for item in exchanges if item.connection == "a" and item.outcome == "ok")

    assert journal.last_at("a", ["failed"]) == start
    assert journal.last_at("a", ["ok", "failed"]) == last_success
    assert journal.last_at("a", ["failed", "ok"]) == last_success
    assert journal.last_at("b", ["ok"]) is None
    assert journal.last_at("a", ["timeout", "failed"]) == start


@pytest.mark.parametrize(("arguments", "error"), [
    ({"connection": ""}, ValueError), ({"connection": None}, TypeError), ({"connection": 7}, TypeError),
    ({"since": math.nan}, ValueError), ({"since": math.inf}, ValueError), ({"since": -math.inf}, ValueError),
    ({"since": None}, ValueError), ({"since": "an hour ago"}, ValueError), ({"since": True}, ValueError),
    ({"limit": 0}, ValueError), ({"limit": -1}, ValueError), ({"limit": TIMINGS_LIMIT + 1}, ValueError),
    ({"limit": True}, ValueError), ({"limit": 10.0}, ValueError), ({"limit": "10"}, ValueError),
])
def test_unusable_timings_arguments_are_refused(journal, arguments, error):
    journal.record(exchange(moment()))
    arguments = {"connection": "ongoing-demo", "since": 0.0, **arguments}

    with pytest.raises(error):
        journal.timings(arguments.pop("connection"), **arguments)


def test_timings_take_a_whole_number_since_and_the_largest_limit(journal):
    item = exchange(moment())
    journal.record(item)

    assert journal.timings("ongoing-demo", since=int(item.at) - 1, limit=TIMINGS_LIMIT) == [timing(item)]
    assert journal.timings("ongoing-demo", since=item.at) == journal.timings("ongoing-demo", since=item.at, limit=1)


@pytest.mark.parametrize(("connection", "outcomes", "error"), [
    ("", ["ok"], ValueError), (None, ["ok"], TypeError), (b"ongoing-demo", ["ok"], TypeError),
    ("ongoing-demo", "ok", TypeError), ("ongoing-demo", b"ok", TypeError), ("ongoing-demo", None, TypeError),
    ("ongoing-demo", 7, TypeError), ("ongoing-demo", (outcome for outcome in ["ok"]), TypeError),
    ("ongoing-demo", ["ok", 1], TypeError), ("ongoing-demo", [None], TypeError),
    ("ongoing-demo", [f"outcome-{number}" for number in range(MAX_LAST_AT_OUTCOMES + 1)], ValueError),
], ids=lambda value: repr(value)[:30] if not isinstance(value, type) else None)
def test_unusable_last_at_arguments_are_refused(journal, connection, outcomes, error):
    journal.record(exchange(moment()))

    with pytest.raises(error):
        journal.last_at(connection, outcomes)


# --- bodies -------------------------------------------------------------------------------------------------------

def test_without_record_bodies_only_the_metadata_is_kept(open_journal, location):
    journal = open_journal(record_bodies=False)
    start = moment() - 10
    answered, unanswered = exchange(start), exchange(start + 1, reply=None, outcome="unreachable", error="refused")

    journal.record(answered)
    journal.record(unanswered)

    found = journal.get(answered.id)
    assert found.request == {"method": "POST", "url": REQUEST["url"], "headers": REQUEST["headers"], "body": None}
    assert found.reply == {"status": 200, "headers": REPLY["headers"], "body": None}
    assert found == dataclasses.replace(answered, request=found.request, reply=found.reply)
    assert journal.get(unanswered.id) == dataclasses.replace(unanswered, request={**REQUEST, "body": None})
    assert ids(journal.list()) == [unanswered.id, answered.id]
    assert ADDRESS not in location.stored_text()


def test_with_record_bodies_the_bodies_are_stored(journal, location):
    journal.record(exchange(moment()))

    assert ADDRESS in location.stored_text()


# --- retention ----------------------------------------------------------------------------------------------------

def test_prune_drops_what_is_older_than_the_maximum_age(open_journal, location):
    journal = open_journal(max_age_seconds=3600)
    start = moment()
    exchanges = [exchange(start - age, order_ids=(f"order-{age}",)) for age in (3000, 2000, 1000, 0)]
    for item in exchanges:
        journal.record(item)

    assert journal.prune(now=start) == 0
    assert journal.prune() == 0
    assert journal.prune(now=start + 1000) == 1
    assert ids(journal.list()) == ids(exchanges[:0:-1])
    assert journal.prune(now=start + 2600) == 1  # the one exactly an hour old stays
    assert ids(journal.list()) == ids(exchanges[:1:-1])
    assert journal.prune(now=start + 3600) == 1
    assert journal.get(exchanges[2].id) is None
    assert journal.list(order_id="order-1000") == []
    assert ids(journal.list()) == [exchanges[3].id]
    location.assert_consistent()


def test_prune_drops_the_oldest_beyond_the_maximum_count(open_journal, location):
    start = moment() - 1000
    exchanges = [exchange(start + number, order_ids=(str(number), "shared")) for number in range(8)]
    for item in random.Random(3).sample(exchanges, len(exchanges)):
        open_journal().record(item)
    journal = open_journal(max_count=5)

    assert journal.prune() == 3

    assert ids(journal.list()) == ids(exchanges[:2:-1])
    assert ids(journal.list(order_id="shared")) == ids(exchanges[:2:-1])
    assert [journal.get(item.id) for item in exchanges[:3]] == [None] * 3
    assert journal.prune() == 0
    location.assert_consistent()


def test_prune_applies_the_age_and_then_the_count(open_journal):
    start = moment()
    exchanges = [exchange(start - 100 * number) for number in range(10)]
    for item in exchanges:
        open_journal().record(item)
    journal = open_journal(max_age_seconds=450, max_count=3)

    assert journal.prune(now=start) == 7  # 5 too old, then 2 beyond the count

    assert ids(journal.list()) == ids(exchanges[:3])


def test_record_keeps_the_count_bounded_by_itself(open_journal, location):
    journal = open_journal(max_count=50)
    start = moment() - 1000
    exchanges = [exchange(start + number * 0.5) for number in range(300)]

    sizes = []
    for item in exchanges:
        journal.record(item)
        sizes.append(len(journal.list(limit=1000)))

    assert max(sizes) <= 55
    assert 50 <= sizes[-1] <= 55
    assert ids(journal.list(limit=1000)) == ids(exchanges[::-1][:sizes[-1]])
    location.assert_consistent()


def test_record_drops_what_is_too_old_by_itself(open_journal):
    journal = open_journal(max_age_seconds=60)
    stale = exchange(time.time() - 120)

    journal.record(stale)  # the first record of a journal prunes

    assert journal.get(stale.id) is None


@pytest.mark.parametrize("retention", [
    {"max_age_seconds": 0}, {"max_age_seconds": -1}, {"max_age_seconds": math.inf}, {"max_count": 0},
    {"max_count": 10.5}, {"record_bodies": "yes"},
])
def test_unusable_retention_is_refused(location, retention):
    with pytest.raises((ValueError, TypeError)):
        location.open(**retention)


# --- concurrency and sharing --------------------------------------------------------------------------------------

def test_ten_threads_recording_at_once_lose_nothing(open_journal, location):
    threads, each = 10, 40
    start = moment() - 1000
    journal = open_journal()
    ready = threading.Barrier(threads)

    def record(thread: int) -> list[Exchange]:
        ready.wait()
        made = [exchange(start + number * 0.001 + thread * 0.0001, order_ids=(f"t{thread}", "all"),
                         request_id=f"req-{thread}") for number in range(each)]
        for item in made:
            journal.record(item)
        return made

    with ThreadPoolExecutor(max_workers=threads) as pool:
        made = [item for batch in pool.map(record, range(threads)) for item in batch]

    newest_first = sorted(made, key=lambda item: item.at, reverse=True)
    assert ids(journal.list(limit=1000)) == ids(newest_first)
    assert ids(open_journal().list(order_id="all", limit=1000)) == ids(newest_first)
    for thread in range(threads):
        assert len(journal.list(request_id=f"req-{thread}", order_id=f"t{thread}")) == each
    location.assert_consistent()


def test_threads_recording_into_a_small_journal_keep_it_bounded_and_consistent(open_journal, location):
    threads = 10
    journal = open_journal(max_count=100)
    start = moment() - 1000

    def record(thread: int) -> None:
        for number in range(60):
            journal.record(exchange(start + number + thread * 0.01, order_ids=(f"t{thread}-{number % 7}",)))

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(record, range(threads)))

    assert 100 <= len(journal.list(limit=1000)) <= 110
    journal.prune()
    assert len(journal.list(limit=1000)) == 100
    location.assert_consistent()


# --- reachability and configuration -------------------------------------------------------------------------------

def test_ping_answers_when_the_storage_is_there(journal):
    journal.ping()


def test_ping_of_a_redis_that_is_not_there_raises():
    journal = RedisExchangeJournal(f"redis://127.0.0.1:{closed_port()}/0", max_age_seconds=MAX_AGE,
                                   max_count=MAX_COUNT, record_bodies=True)
    try:
        with pytest.raises(redis.ConnectionError):
            journal.ping()
        with pytest.raises(redis.ConnectionError):
            journal.record(exchange(moment()))
    finally:
        journal.close()


def test_a_closed_sqlite_journal_refuses_to_work(tmp_path):
    journal = SqliteExchangeJournal(tmp_path / "journal.sqlite3", max_age_seconds=MAX_AGE, max_count=MAX_COUNT,
                                    record_bodies=True)
    journal.close()

    with pytest.raises(RuntimeError, match="closed"):
        journal.ping()


def test_the_journal_is_opened_in_redis_when_the_events_use_redis_and_beside_the_events_otherwise(tmp_path,
                                                                                                   redis_url):
    events = SimpleNamespace(database=tmp_path / "data" / "events.sqlite3", redis_url=None)
    retention = {"max_age_seconds": 7 * DAY, "max_count": 5000, "record_bodies": False}
    journal = open_exchange_journal(SimpleNamespace(events=events), **retention)
    try:
        assert isinstance(journal, SqliteExchangeJournal)
        assert journal.path == tmp_path / "data" / "journal.sqlite3"
        assert (journal.max_age_seconds, journal.max_count, journal.record_bodies) == (7 * DAY, 5000, False)
        journal.ping()
    finally:
        journal.close()

    journal = open_exchange_journal(SimpleNamespace(events=SimpleNamespace(database=events.database,
                                                                           redis_url=redis_url)), **retention)
    try:
        assert isinstance(journal, RedisExchangeJournal)
        assert journal.prefix == "gateway:journal:"
        assert (journal.max_age_seconds, journal.max_count, journal.record_bodies) == (7 * DAY, 5000, False)
        journal.ping()
    finally:
        journal.close()


# --- what each kind keeps -----------------------------------------------------------------------------------------

def test_the_sqlite_journal_uses_wal_and_indexes_every_filter_and_the_time(tmp_path):
    path = tmp_path / "new-folder" / "journal.sqlite3"
    SqliteExchangeJournal(path, max_age_seconds=MAX_AGE, max_count=MAX_COUNT, record_bodies=True).close()

    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        indexes = {row[0]: row[1] for row in db.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    db.close()
    assert indexes == {
        "exchanges_by_time": "CREATE INDEX exchanges_by_time ON exchanges (at, id)",
        "exchanges_by_connection": "CREATE INDEX exchanges_by_connection ON exchanges (connection, at)",
        "exchanges_by_outcome": "CREATE INDEX exchanges_by_outcome ON exchanges (outcome, at)",
        "exchanges_by_request": "CREATE INDEX exchanges_by_request ON exchanges (request_id, at)",
        "exchange_orders_by_exchange": "CREATE INDEX exchange_orders_by_exchange ON exchange_orders (exchange_seq)",
        "exchanges_timings_by_connection": "CREATE INDEX exchanges_timings_by_connection"
                                           " ON exchanges (connection, at, id, duration_ms, outcome)",
        "exchanges_by_connection_and_outcome": "CREATE INDEX exchanges_by_connection_and_outcome"
                                               " ON exchanges (connection, outcome, at)",
    }


def test_the_sqlite_timings_and_last_at_read_covering_indexes_alone(tmp_path):
    path = tmp_path / "journal.sqlite3"
    SqliteExchangeJournal(path, max_age_seconds=MAX_AGE, max_count=MAX_COUNT, record_bodies=True).close()

    with sqlite3.connect(path) as db:
        plans = [[row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql, parameters)]
                 for sql, parameters in ((SELECT_TIMINGS, ("ongoing-demo", 0.0, 10)),
                                         (SELECT_LAST_AT, ("ongoing-demo", "ok")))]
    db.close()
    # A covering index never reads a row of `exchanges`, where the bodies are; and no sort: the index is in order.
    assert plans == [
        ["SEARCH exchanges USING COVERING INDEX exchanges_timings_by_connection (connection=? AND at>?)"],
        ["SEARCH exchanges USING COVERING INDEX exchanges_by_connection_and_outcome (connection=? AND outcome=?)"],
    ]


def test_an_sqlite_journal_of_the_first_version_gains_the_timing_indexes_and_keeps_its_exchanges(tmp_path):
    path = tmp_path / "old-journal.sqlite3"
    at = moment() - 10
    kept = [exchange(at, outcome="failed", duration_ms=30.5), exchange(at + 1)]
    journal = SqliteExchangeJournal(path, max_age_seconds=MAX_AGE, max_count=MAX_COUNT, record_bodies=True)
    for item in kept:
        journal.record(item)
    journal.close()
    with sqlite3.connect(path) as db:  # as version 1 left it: no timing indexes
        db.execute("DROP INDEX exchanges_timings_by_connection")
        db.execute("DROP INDEX exchanges_by_connection_and_outcome")
        db.execute("PRAGMA user_version = 1")
    db.close()

    reopened = SqliteExchangeJournal(path, max_age_seconds=MAX_AGE, max_count=MAX_COUNT, record_bodies=True)
    try:
        assert reopened.list() == kept[::-1]
        assert reopened.timings("ongoing-demo", since=at) == [(at + 1, 123.5, "ok"), (at, 30.5, "failed")]
        assert reopened.last_at("ongoing-demo", {"failed"}) == at
    finally:
        reopened.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 3
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    db.close()
    assert {"exchanges_timings_by_connection", "exchanges_by_connection_and_outcome"} <= names


def test_the_redis_timings_come_from_a_small_field_beside_the_exchange_not_from_its_json(redis_url):
    prefix = f"test:{uuid.uuid4().hex}:journal:"
    journal = RedisExchangeJournal(redis_url, prefix=prefix, max_age_seconds=MAX_AGE, max_count=MAX_COUNT,
                                   record_bodies=True)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        at = moment() - 10
        journal.record(exchange(at, id="exc_1", duration_ms=42.25, outcome="timeout"))

        assert client.hgetall(prefix + "exchange:exc_1").keys() == {"exchange", "indexes", "timing"}
        assert json.loads(client.hget(prefix + "exchange:exc_1", "timing")) == [42.25, "timeout"]
        # The bodies are in the JSON: unreadable JSON shows timings() does not read it.
        client.hset(prefix + "exchange:exc_1", "exchange", "not JSON")
        assert journal.timings("ongoing-demo", since=at) == [(at, 42.25, "timeout")]
    finally:
        client.close()
        journal.close()


def test_redis_exchanges_recorded_before_the_timing_field_existed_have_their_timings_too(redis_url):
    prefix = f"test:{uuid.uuid4().hex}:journal:"
    journal = RedisExchangeJournal(redis_url, prefix=prefix, max_age_seconds=MAX_AGE, max_count=MAX_COUNT,
                                   record_bodies=False)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        at = moment() - 100
        exchanges = [exchange(at + number, duration_ms=10.0 + number, outcome=("ok", "failed")[number % 2])
                     for number in range(6)]
        for item in exchanges:
            journal.record(item)
        expected = journal.timings("ongoing-demo", since=at)
        for item in exchanges[::2]:  # as recorded by the previous version: every other one
            client.hdel(prefix + "exchange:" + item.id, "timing")

        assert journal.timings("ongoing-demo", since=at) == expected
        assert expected == [(item.at, item.duration_ms, item.outcome) for item in exchanges[::-1]]
        assert journal.last_at("ongoing-demo", ["failed"]) == exchanges[5].at
    finally:
        client.close()
        journal.close()


def test_the_redis_journal_keeps_its_keys_under_its_prefix_and_leaves_none_behind(redis_url):
    prefix = f"test:{uuid.uuid4().hex}:journal:"
    journal = RedisExchangeJournal(redis_url, prefix=prefix, max_age_seconds=3600, max_count=MAX_COUNT,
                                   record_bodies=True)
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        start = moment()
        first = exchange(start - 10, id="exc_1", order_ids=("1001", "1002"), request_id="req-1")
        second = exchange(start, id="exc_2", order_ids=("1002",), request_id="req-2", outcome="refused")
        journal.record(first)
        journal.record(second)

        assert sorted(client.scan_iter(match="*")) == sorted(prefix + name for name in (
            "exchange:exc_1", "exchange:exc_2", "exchanges", "order:1001", "order:1002", "connection:ongoing-demo",
            "outcome:ok", "outcome:refused", "request:req-1", "request:req-2"))
        assert client.type(prefix + "exchange:exc_1") == "hash"
        assert client.zrange(prefix + "order:1002", 0, -1, withscores=True) == [("exc_1", start - 10),
                                                                                 ("exc_2", start)]

        assert journal.prune(now=start + 3595) == 1
        assert sorted(client.scan_iter(match="*")) == sorted(prefix + name for name in (
            "exchange:exc_2", "exchanges", "order:1002", "connection:ongoing-demo", "outcome:refused",
            "request:req-2"))
        assert journal.prune(now=start + 3601) == 1
        assert list(client.scan_iter(match="*")) == []
    finally:
        client.close()
        journal.close()


# --- the recorder: a queue in front of the journal, written by one thread -----------------------------------------

class ListJournal:
    """A journal in a list that notes each batch it is given; record_many can be held until released."""

    def __init__(self, refuse: frozenset[str] = frozenset()) -> None:
        self.batches: list[list[str]] = []
        self.stored: list[Exchange] = []
        self.refuse = refuse
        self.held = threading.Event()
        self.held.set()

    def record_many(self, exchanges):
        self.held.wait(5)
        if self.refuse & {item.id for item in exchanges}:
            raise ValueError("refused")
        self.batches.append(ids(exchanges))
        self.stored.extend(exchanges)

    def record(self, item):
        self.record_many([item])

    def close(self):
        pass


def a_recorder(journal: ListJournal):
    from gateway.journal.recorder import JournalRecorder

    return JournalRecorder(journal, record_bodies=True, max_body_bytes=1000)


def test_the_recorder_writes_what_queued_up_meanwhile_in_one_batch(monkeypatch):
    monkeypatch.setattr("gateway.journal.recorder.LINGER_SECONDS", 0.0)
    journal = ListJournal()
    recorder = a_recorder(journal)
    start = moment()
    journal.held.clear()
    recorder.record(exchange(start))
    deadline = time.monotonic() + 5
    while not recorder._queue.empty() and time.monotonic() < deadline:
        time.sleep(0.005)  # the writer has taken the first and waits in record_many
    waiting = [exchange(start + number) for number in range(1, 6)]
    for item in waiting:
        recorder.record(lambda item=item: item)  # made on the writer's thread
    journal.held.set()

    assert recorder.flush()
    recorder.close()
    assert [len(batch) for batch in journal.batches] == [1, 5]
    assert journal.stored[1:] == waiting and recorder.recorded == 6 and recorder.failed == 0


def test_exchanges_recorded_within_the_linger_are_written_in_one_transaction():
    journal = ListJournal()
    recorder = a_recorder(journal)
    start = moment()
    items = [exchange(start + number) for number in range(5)]
    for item in items:
        recorder.record(item)

    assert recorder.flush()
    recorder.close()
    assert journal.batches == [ids(items)]


def test_a_flush_writes_at_once_whatever_the_linger(monkeypatch):
    monkeypatch.setattr("gateway.journal.recorder.LINGER_SECONDS", 30.0)
    journal = ListJournal()
    recorder = a_recorder(journal)
    assert recorder.flush(timeout=0.5), "nothing queued, no writer: nothing to wait for"
    item = exchange(moment())
    recorder.record(item)

    started = time.monotonic()
    assert recorder.flush(timeout=5)
    assert time.monotonic() - started < 2
    assert journal.stored == [item]
    recorder.close()


@pytest.mark.expected_traceback  # each failure is logged with its traceback
def test_in_a_batch_only_the_exchanges_that_fail_are_lost_and_each_is_counted(monkeypatch):
    monkeypatch.setattr("gateway.journal.recorder.LINGER_SECONDS", 0.0)
    start = moment()
    items = [exchange(start + number) for number in range(4)]
    journal = ListJournal(refuse=frozenset({items[2].id}))
    recorder = a_recorder(journal)
    journal.held.clear()
    recorder.record(items[0])
    deadline = time.monotonic() + 5
    while not recorder._queue.empty() and time.monotonic() < deadline:
        time.sleep(0.005)

    def cannot_be_made():
        raise RuntimeError("the dry-run view failed")

    for item in (items[1], cannot_be_made, items[2], items[3]):
        recorder.record(item)
    journal.held.set()

    assert recorder.flush()
    recorder.close()
    assert journal.stored == [items[0], items[1], items[3]]
    assert recorder.recorded == 3 and recorder.failed == 2
