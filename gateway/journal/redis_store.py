"""The exchange journal in Redis, for deployments where several machines share one Redis; behaves like SQLite.

Keys, all under one prefix (default "gateway:journal:"):

    exchange:<id>          hash  exchange (the exchange as JSON), indexes (JSON: the names, without the prefix,
                                 of the index zsets below that list it, so pruning need not read the bodies) and
                                 timing (JSON [duration_ms, outcome], so timings() need not read them either;
                                 an exchange recorded before there was a timing field is decoded instead)
    exchanges              zset  every exchange id, scored by `at`
    order:<order id>       zset  the ids of the exchanges about that order, by `at`
    connection:<name>      zset  the ids of the exchanges with that connection, by `at`
    outcome:<outcome>      zset  the ids of the exchanges with that outcome, by `at`
    request:<request id>   zset  the ids of the exchanges made for that request, by `at`

An exchange and all its index entries are added in one MULTI (its hash WATCHed, so an id is recorded once) and
deleted in one MULTI; an index zset that loses its last member is gone with it. Retention by age is a range of
`exchanges` by score, retention by number a range by rank. Redis orders members of equal score by their bytes,
so exchanges that started at the same moment come in id order, as in SQLite.

timings() is one range of `connection:<name>` by score (the score is `at`) and one pipeline of HGET timing.
last_at() looks, for each outcome, for the newest id that both `connection:<name>` and `outcome:<outcome>` hold:
it walks the one of the two with fewer ids newer than what an earlier outcome found, newest first, a page at a
time, asking the other which of the page it holds (ZMSCORE).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence

import redis

from gateway.config import StoreSettings
from gateway.journal.base import (
    TIMINGS_LIMIT,
    Exchange,
    ExchangeJournal,
    PruneSchedule,
    check_exchange,
    check_last_at,
    check_list,
    check_retention,
    check_timings,
    connections_filter,
    decode_exchange,
    encode_exchange,
    encode_json,
    timestamp,
)
from gateway.stores import redis_client

#: how many ids list() reads from an index per round trip when filters skip some of them
LIST_PAGE_SIZE = 200
#: how many exchanges prune() deletes per MULTI, so that no single transaction holds Redis up for long
PRUNE_BATCH_SIZE = 500
#: how many ids last_at() reads from an index per round trip (the one it looks for is usually among the first)
LAST_AT_PAGE_SIZE = 500


def index_names(exchange: Exchange) -> list[str]:
    """The names of the index zsets that list the exchange (one per order id, connection, outcome, request id)."""
    names = [f"order:{order_id}" for order_id in dict.fromkeys(exchange.order_ids)]
    return [*names, f"connection:{exchange.connection}", f"outcome:{exchange.outcome}",
            f"request:{exchange.request_id}"]


def encode_timing(exchange: Exchange) -> str:
    """The exchange's timing field: [duration_ms, outcome] as JSON."""
    return encode_json([exchange.duration_ms, exchange.outcome])


def decode_timing(text: str) -> tuple[float, str]:
    """(duration_ms, outcome) of a timing field."""
    duration_ms, outcome = json.loads(text)
    return float(duration_ms), outcome


class RedisExchangeJournal(ExchangeJournal):
    """The exchanges in one Redis, shared by every process of every machine that uses the same URL and prefix."""

    def __init__(self, url: str, *, prefix: str = "gateway:journal:", max_age_seconds: float, max_count: int,
                 record_bodies: bool, stores: StoreSettings | None = None) -> None:
        self.max_age_seconds, self.max_count, self.record_bodies = check_retention(
            max_age_seconds, max_count, record_bodies)
        self.prefix = prefix
        self._schedule = PruneSchedule(self.max_count)
        # [stores] timeouts, so a Redis that stops answering fails a call instead of hanging it.
        self._redis = redis_client(url, stores, store="exchange journal", decode_responses=True)

    def _key(self, *parts: str) -> str:
        """A key under this journal's prefix."""
        return self.prefix + "".join(parts)

    def record_many(self, exchanges: Sequence[Exchange]) -> None:
        """Store the exchanges in one MULTI/EXEC (none of them if one cannot be), pruning now and then."""
        checked = [check_exchange(item, record_bodies=self.record_bodies) for item in exchanges]
        if len({exchange.id for exchange in checked}) < len(checked):
            raise ValueError("the exchanges to record name one id twice")
        entries = [(self._key("exchange:", exchange.id), exchange, encode_exchange(exchange), index_names(exchange))
                   for exchange in checked]

        def add(pipe: redis.client.Pipeline) -> None:
            for exchange_key, exchange, _, _ in entries:
                if pipe.exists(exchange_key):
                    raise ValueError(f"an exchange with id {exchange.id!r} is already recorded")
            pipe.multi()
            for exchange_key, exchange, text, indexes in entries:
                pipe.hset(exchange_key, mapping={"exchange": text, "indexes": encode_json(indexes),
                                                 "timing": encode_timing(exchange)})
                for index in ("exchanges", *indexes):
                    pipe.zadd(self._key(index), {exchange.id: exchange.at})

        if entries:
            self._redis.transaction(add, *(entry[0] for entry in entries))
        if self._schedule.due(len(entries)):
            self.prune()

    def get(self, exchange_id: str) -> Exchange | None:
        """The exchange with this id, or None if it is unknown (or pruned)."""
        text = self._redis.hget(self._key("exchange:", exchange_id), "exchange")
        return None if text is None else decode_exchange(text)

    def list(self, *, order_id: str | None = None, connection: str | None = None, outcome: str | None = None,
             request_id: str | None = None, since: float | None = None, limit: int = 100,
             connections: Collection[str] | None = None) -> list[Exchange]:
        """Up to `limit` exchanges matching every filter given, newest first (ties in descending id order)."""
        since = check_list(order_id=order_id, connection=connection, outcome=outcome, request_id=request_id,
                           since=since, limit=limit)
        allowed = connections_filter(connections, connection)
        if allowed == frozenset():
            return []
        wanted = {f"{kind}:{value}" for kind, value in (
            ("order", order_id), ("outcome", outcome), ("request", request_id)) if value is not None}
        # One connection is an index like the other filters; of several, an exchange must be in one of theirs.
        one_of = None
        if allowed is not None and len(allowed) == 1:
            wanted |= {f"connection:{name}" for name in allowed}
        elif allowed is not None:
            one_of = {f"connection:{name}" for name in allowed}
        lowest = "-inf" if since is None else since
        index = self._smallest_index(sorted(wanted), lowest) if wanted else "exchanges"
        if index is None:
            return []
        # Walk that index newest first; each id's index names tell whether it passes the other filters.
        found: list[str] = []
        seen: set[str] = set()
        offset = 0
        while len(found) < limit:
            page = self._redis.zrange(self._key(index), "+inf", lowest, desc=True, byscore=True, offset=offset,
                                      num=max(limit - len(found), LIST_PAGE_SIZE))
            if not page:
                break
            offset += len(page)
            # An exchange recorded meanwhile with a later `at` moves the rest down: skip what was read already.
            fresh = [exchange_id for exchange_id in page if exchange_id not in seen]
            seen.update(fresh)
            for exchange_id, names in zip(fresh, self._index_names_of(fresh), strict=True):
                if names is not None and wanted <= set(names) and (one_of is None or not one_of.isdisjoint(names)):
                    found.append(exchange_id)
        with self._redis.pipeline(transaction=False) as pipe:
            for exchange_id in found[:limit]:
                pipe.hget(self._key("exchange:", exchange_id), "exchange")
            texts = pipe.execute()
        # One pruned since its index names were read is left out.
        return [decode_exchange(text) for text in texts if text is not None]

    def timings(self, connection: str, *, since: float, limit: int = TIMINGS_LIMIT) -> list[tuple[float, float, str]]:
        """(at, duration_ms, outcome) of the connection's exchanges that started at `since` or later, newest first
        (ties in descending id order), at most `limit`; the bodies are not read."""
        since = check_timings(connection, since=since, limit=limit)
        # Newest first, and equal scores in descending member order: list()'s order, so the limit cuts alike.
        members = self._redis.zrange(self._key("connection:", connection), "+inf", since, desc=True, byscore=True,
                                     offset=0, num=limit, withscores=True)
        exchange_ids = [exchange_id for exchange_id, _ in members]
        timings = self._fields_of(exchange_ids, "timing")
        untimed = [exchange_id for exchange_id, text in zip(exchange_ids, timings, strict=True) if text is None]
        # Recorded before the timing field existed (or pruned meanwhile): the timing is in the exchange's JSON.
        decoded = {exchange_id: decode_exchange(text)
                   for exchange_id, text in zip(untimed, self._fields_of(untimed, "exchange"), strict=True)
                   if text is not None}
        found = []
        for (exchange_id, at), text in zip(members, timings, strict=True):
            if text is not None:
                found.append((at, *decode_timing(text)))
            elif exchange_id in decoded:
                found.append((at, decoded[exchange_id].duration_ms, decoded[exchange_id].outcome))
        return found

    def last_at(self, connection: str, outcomes: Collection[str]) -> float | None:
        """When the connection's most recent exchange with one of these outcomes started (None: none kept)."""
        outcomes = check_last_at(connection, outcomes)
        latest: float | None = None
        for outcome in outcomes:
            # Only what is newer than the best so far can change the answer.
            lowest = "-inf" if latest is None else f"({latest!r}"
            at = self._newest_in_both(self._key("connection:", connection), self._key("outcome:", outcome), lowest)
            if at is not None:
                latest = at
        return latest

    def _newest_in_both(self, first: str, second: str, lowest: float | str) -> float | None:
        """The score of the newest id, from `lowest` on, that both zsets hold (None if there is none)."""
        with self._redis.pipeline(transaction=False) as pipe:
            pipe.zcount(first, lowest, "+inf")
            pipe.zcount(second, lowest, "+inf")
            counts = pipe.execute()
        if min(counts) == 0:
            return None
        walked, asked = (first, second) if counts[0] <= counts[1] else (second, first)
        offset = 0
        while True:
            page = self._redis.zrange(walked, "+inf", lowest, desc=True, byscore=True, offset=offset,
                                      num=LAST_AT_PAGE_SIZE, withscores=True)
            if not page:
                return None
            # An id recorded meanwhile moves the rest down, so some may be read twice, but none is passed over.
            offset += len(page)
            held = self._redis.zmscore(asked, [exchange_id for exchange_id, _ in page])
            for (_, at), score in zip(page, held, strict=True):
                if score is not None:
                    return at

    def _fields_of(self, exchange_ids: Sequence[str], field: str) -> list[str | None]:
        """One field of each of these exchanges' hashes (None for one that is not recorded or lacks it)."""
        if not exchange_ids:
            return []
        with self._redis.pipeline(transaction=False) as pipe:
            for exchange_id in exchange_ids:
                pipe.hget(self._key("exchange:", exchange_id), field)
            return pipe.execute()

    def _smallest_index(self, names: Sequence[str], lowest: float | str) -> str | None:
        """Of these index zsets, the one with the fewest ids from `lowest` on; None if one of them has none."""
        with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zcount(self._key(name), lowest, "+inf")
            counts = pipe.execute()
        if min(counts) == 0:
            return None
        return min(zip(counts, names, strict=True))[1]

    def _index_names_of(self, exchange_ids: Sequence[str]) -> list[list[str] | None]:
        """The index names of each of these exchanges (None for one that is not recorded)."""
        with self._redis.pipeline(transaction=False) as pipe:
            for exchange_id in exchange_ids:
                pipe.hget(self._key("exchange:", exchange_id), "indexes")
            texts = pipe.execute()
        return [None if text is None else json.loads(text) for text in texts]

    def prune(self, *, now: float | None = None) -> int:
        """Delete the exchanges older than max_age_seconds, then the oldest beyond max_count; how many were deleted."""
        cutoff = timestamp(now) - self.max_age_seconds
        exchanges_key = self._key("exchanges")
        deleted = 0
        while True:
            # "(": strictly below the cutoff, as old as max_age_seconds is not too old yet.
            old = self._redis.zrange(exchanges_key, "-inf", f"({cutoff!r}", byscore=True, offset=0,
                                     num=PRUNE_BATCH_SIZE)
            if not old:
                break
            deleted += self._delete(old)
        while (excess := self._redis.zcard(exchanges_key) - self.max_count) > 0:
            # By rank from the lowest score: the oldest first, the reverse of list()'s order.
            deleted += self._delete(self._redis.zrange(exchanges_key, 0, min(excess, PRUNE_BATCH_SIZE) - 1))
        return deleted

    def _delete(self, exchange_ids: Sequence[str]) -> int:
        """Delete these exchanges and their index entries in one MULTI; how many were still there to delete."""
        if not exchange_ids:
            return 0
        indexes = self._index_names_of(exchange_ids)
        with self._redis.pipeline() as pipe:
            pipe.delete(*(self._key("exchange:", exchange_id) for exchange_id in exchange_ids))
            pipe.zrem(self._key("exchanges"), *exchange_ids)
            for exchange_id, names in zip(exchange_ids, indexes, strict=True):
                for name in names or ():
                    pipe.zrem(self._key(name), exchange_id)
            # DEL's count: an exchange another process pruned meanwhile is not counted twice.
            return pipe.execute()[0]

    def ping(self) -> None:
        """Raise (redis.ConnectionError, redis.TimeoutError, ...) if Redis does not answer."""
        self._redis.ping()

    def close(self) -> None:
        """Close the connection pool."""
        self._redis.close()
