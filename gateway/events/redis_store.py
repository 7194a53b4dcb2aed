"""The event store in Redis, for deployments where several machines share one Redis; behaves like the SQLite one.

Keys, all under one prefix (default "gateway:events:"):

    seq                      string  the insertion sequence (INCR), so no caller decides the order
    dedupe                   hash    dedupe_key -> event id
    event:<id>               hash    body (the event as JSON), received_at, seq, order_key, rank, trace_context
    deliveries:<id>          hash    subscriber -> the delivery as JSON (state, attempts, times, history)
    events                   zset    every event id, scored by seq
    type:<type>              zset    event ids of that type, by seq
    order:<order id>         zset    event ids whose backend_order_id or order_number is that string, by seq
    state:<state>            zset    event ids with at least one delivery in that state, by seq
    pending:<subscriber>     zset    event ids whose delivery to that subscriber is pending, by seq
    stream:<stream>          zset    ranks of the stream's pending deliveries, all scored 0 so Redis sorts them
                                     by rank: occurred_at NUL seq (20 digits) NUL event id, i.e. in event order
    streams                  set     every <stream> whose zset is not empty

A <stream> is the JSON array [subscriber, order_key], which no choice of names can make ambiguous.
add_event is one Lua script (dedupe, sequence and every index at once); the read-modify-write updates run as
WATCH/MULTI transactions, so all JSON and every float is written by Python, exactly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import redis

from gateway.config import StoreSettings
from gateway.events.store import (
    DELIVERY_STATES,
    PENDING,
    PENDING_COUNT_LIMIT,
    DeliveryNotFound,
    EventStore,
    EventStoreError,
    apply_attempt,
    apply_redeliver,
    check_event,
    check_outcome,
    check_state,
    decode_trace_context,
    encode_trace_context,
    matches_filters,
    new_delivery,
    order_ids,
    timestamp,
    unique_subscribers,
)
from gateway.stores import redis_client

# KEYS: dedupe, seq, event, deliveries, events, type index, state:pending, streams, <order indexes>, then per
#       subscriber: its stream, its pending index.
# ARGV: dedupe_key, event id, body, received_at, order_key, occurred_at, number of order indexes, trace context,
#       then per subscriber: name, delivery JSON, stream id (in the same order as the stream keys).
# Returns {id, 1} when stored, {existing id, 0} for a known dedupe_key, {id, -1} when the id is taken.
ADD_EVENT_SCRIPT = """
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing then
    return {existing, 0}
end
if redis.call('EXISTS', KEYS[3]) == 1 then
    return {ARGV[2], -1}
end
local seq = string.format('%d', redis.call('INCR', KEYS[2]))
local rank = ARGV[6] .. '\\0' .. string.rep('0', 20 - #seq) .. seq .. '\\0' .. ARGV[2]
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], 'body', ARGV[3], 'received_at', ARGV[4], 'seq', seq, 'order_key', ARGV[5], 'rank', rank,
           'trace_context', ARGV[8])
redis.call('ZADD', KEYS[5], seq, ARGV[2])
redis.call('ZADD', KEYS[6], seq, ARGV[2])
local order_indexes = tonumber(ARGV[7])
for i = 1, order_indexes do
    redis.call('ZADD', KEYS[8 + i], seq, ARGV[2])
end
local first_stream = 9 + order_indexes
for i = 0, (#KEYS - first_stream + 1) / 2 - 1 do
    local arg = 9 + 3 * i
    redis.call('HSET', KEYS[4], ARGV[arg], ARGV[arg + 1])
    redis.call('ZADD', KEYS[first_stream + 2 * i], 0, rank)
    redis.call('ZADD', KEYS[first_stream + 2 * i + 1], seq, ARGV[2])
    redis.call('SADD', KEYS[8], ARGV[arg + 2])
end
if #KEYS >= first_stream then
    redis.call('ZADD', KEYS[7], seq, ARGV[2])
end
return {ARGV[2], 1}
"""

#: how many index entries list_events reads per round trip when filters skip some of them
LIST_PAGE_SIZE = 200


def encode(value: dict) -> str:
    """JSON text for a value the store keeps (floats written exactly, as Python's repr)."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False)


def stream_id(subscriber: str, order_key: str) -> str:
    """The name of one (subscriber, order_key) stream."""
    return json.dumps([subscriber, order_key], ensure_ascii=False)


def event_id_of_rank(rank: str) -> str:
    """The event id at the end of a stream rank (occurred_at, which holds no NUL, and seq come first)."""
    return rank.split("\x00", 2)[2]


class RedisEventStore(EventStore):
    """The event store in one Redis, shared by every process of every machine that uses the same URL and prefix."""

    def __init__(self, url: str, *, prefix: str = "gateway:events:", stores: StoreSettings | None = None) -> None:
        self.prefix = prefix
        # [stores] timeouts, so a Redis that stops answering fails a request instead of hanging it.
        self._redis = redis_client(url, stores, store="event store", decode_responses=True)
        self._add_event_script = self._redis.register_script(ADD_EVENT_SCRIPT)

    def _key(self, *parts: str) -> str:
        """A key under this store's prefix."""
        return self.prefix + "".join(parts)

    def add_event(self, event: dict, *, dedupe_key: str, order_key: str, subscribers: Sequence[str],
                  now: float | None = None, trace_context: Mapping[str, str] | None = None) -> tuple[str, bool]:
        """Store the event and one due delivery per subscriber at once; (existing id, False) if dedupe_key is known."""
        body = check_event(event)
        names = unique_subscribers(subscribers)
        now = timestamp(now)
        event_id = event["id"]
        index_keys = [self._key("order:", value) for value in order_ids(event)]
        keys = [self._key("dedupe"), self._key("seq"), self._key("event:", event_id),
                self._key("deliveries:", event_id), self._key("events"), self._key("type:", event["type"]),
                self._key("state:", PENDING), self._key("streams"), *index_keys]
        args = [dedupe_key, event_id, body, repr(now), order_key, event["occurred_at"], len(index_keys),
                encode_trace_context(trace_context)]
        for name in names:
            stream = stream_id(name, order_key)
            keys += [self._key("stream:", stream), self._key("pending:", name)]
            args += [name, encode(new_delivery(name, now)), stream]
        stored_id, created = self._add_event_script(keys=keys, args=args)
        if created == -1:
            raise EventStoreError(f"an event with id {event_id!r} is already stored")
        return stored_id, created == 1

    def get_event(self, event_id: str) -> dict | None:
        """The event with its received_at and its deliveries (sorted by subscriber), or None if unknown."""
        return self._items([event_id])[0]

    def _items(self, event_ids: Sequence[str]) -> list[dict | None]:
        """get_event-shaped items for these ids (None where unknown), read in one MULTI so each is consistent."""
        with self._redis.pipeline() as pipe:
            for event_id in event_ids:
                pipe.hmget(self._key("event:", event_id), "body", "received_at")
                pipe.hgetall(self._key("deliveries:", event_id))
            replies = pipe.execute()
        items: list[dict | None] = []
        for (body, received_at), deliveries in zip(replies[::2], replies[1::2], strict=True):
            if body is None:
                items.append(None)
                continue
            items.append({"event": json.loads(body), "received_at": float(received_at),
                          "deliveries": [json.loads(deliveries[name]) for name in sorted(deliveries)]})
        return items

    def list_events(self, *, order_id: str | None = None, type: str | None = None, state: str | None = None,
                    limit: int = 100) -> list[dict]:
        """Up to `limit` events shaped like get_event's result, newest first, matching every filter given."""
        check_state(state)
        if limit <= 0:
            return []
        # Walk the most selective index newest first; the other filters are checked on the events read.
        if order_id is not None:
            index = self._key("order:", str(order_id))
        elif type is not None:
            index = self._key("type:", type)
        elif state is not None:
            index = self._key("state:", state)
        else:
            index = self._key("events")
        found: list[dict] = []
        below = "+inf"
        while len(found) < limit:
            page = self._redis.zrange(index, below, "-inf", desc=True, byscore=True, withscores=True, offset=0,
                                      num=max(limit - len(found), LIST_PAGE_SIZE))
            if not page:
                break
            for item in self._items([event_id for event_id, _ in page]):
                if item is not None and matches_filters(item, order_id=order_id, type=type, state=state):
                    found.append(item)
            # Scores are unique sequence numbers, so "below the last one read" never skips or repeats an event.
            below = f"({int(page[-1][1])}"
        return found[:limit]

    def next_delivery(self, subscriber: str, order_key: str) -> dict | None:
        """The pending delivery that heads this stream in event order, due or not, with its event's received_at;
        None if nothing is pending."""
        stream_key = self._key("stream:", stream_id(subscriber, order_key))

        def read_head(pipe: redis.client.Pipeline) -> tuple[str, str, str, str | None, str] | None:
            ranks = pipe.zrange(stream_key, 0, 0)
            if not ranks:
                return None
            event_id = event_id_of_rank(ranks[0])
            deliveries_key = self._key("deliveries:", event_id)
            # EXEC fails, and the read is repeated, if the head or its delivery changed while being read.
            pipe.watch(deliveries_key)
            body, received_at, trace = pipe.hmget(self._key("event:", event_id), "body", "received_at", "trace_context")
            delivery = pipe.hget(deliveries_key, subscriber)
            pipe.multi()
            return event_id, body, received_at, trace, delivery

        head = self._redis.transaction(read_head, stream_key, value_from_callable=True)
        if head is None:
            return None
        event_id, body, received_at, trace, raw_delivery = head
        delivery = json.loads(raw_delivery)
        return {"event_id": event_id, "event": json.loads(body), "received_at": float(received_at),
                "trace_context": decode_trace_context(trace),
                "attempts": delivery["attempts"], "next_attempt_at": delivery["next_attempt_at"]}

    def record_attempt(self, event_id: str, subscriber: str, *, outcome: str, status_code: int | None = None,
                       error: str | None = None, next_attempt_at: float | None = None,
                       now: float | None = None) -> None:
        """Add one attempt ("delivered", "failed" or "dead") to the delivery's history and update its state."""
        check_outcome(outcome)
        now = timestamp(now)
        event_key, deliveries_key = self._key("event:", event_id), self._key("deliveries:", event_id)
        seq, order_key, rank = self._redis.hmget(event_key, "seq", "order_key", "rank")
        if seq is None:
            raise DeliveryNotFound(f"no delivery of event {event_id!r} to {subscriber!r}")
        stream = stream_id(subscriber, order_key)
        stream_key = self._key("stream:", stream)

        def update(pipe: redis.client.Pipeline) -> None:
            deliveries = {name: json.loads(raw) for name, raw in pipe.hgetall(deliveries_key).items()}
            if subscriber not in deliveries:
                raise DeliveryNotFound(f"no delivery of event {event_id!r} to {subscriber!r}")
            delivery = deliveries[subscriber] = apply_attempt(
                deliveries[subscriber], outcome=outcome, status_code=status_code, error=error,
                next_attempt_at=next_attempt_at, now=now)
            others_queued = pipe.zcard(stream_key) - (pipe.zscore(stream_key, rank) is not None)
            pipe.multi()
            pipe.hset(deliveries_key, subscriber, encode(delivery))
            self._queue_state_indexes(pipe, event_id, seq, deliveries)
            if delivery["state"] == PENDING:
                pipe.zadd(stream_key, {rank: 0})
                pipe.sadd(self._key("streams"), stream)
                pipe.zadd(self._key("pending:", subscriber), {event_id: int(seq)})
            else:
                pipe.zrem(stream_key, rank)
                pipe.zrem(self._key("pending:", subscriber), event_id)
                if others_queued == 0:
                    pipe.srem(self._key("streams"), stream)

        # The stream is watched too: a delivery added to it meanwhile must keep it listed in "streams".
        self._redis.transaction(update, deliveries_key, stream_key)

    def _queue_state_indexes(self, pipe: redis.client.Pipeline, event_id: str, seq: str,
                             deliveries: dict[str, dict]) -> None:
        """Queue the updates that list the event under exactly the states its deliveries are in."""
        states = {delivery["state"] for delivery in deliveries.values()}
        for state in DELIVERY_STATES:
            if state in states:
                pipe.zadd(self._key("state:", state), {event_id: int(seq)})
            else:
                pipe.zrem(self._key("state:", state), event_id)

    def pending_streams(self) -> list[tuple[str, str]]:
        """Every (subscriber, order_key) with at least one pending delivery, sorted."""
        return sorted(tuple(json.loads(stream)) for stream in self._redis.smembers(self._key("streams")))

    def pending_counts(self, subscribers: Sequence[str], *, limit: int = PENDING_COUNT_LIMIT) -> dict[str, int]:
        """How many deliveries to each of these subscribers are pending, each counted up to `limit`."""
        names = unique_subscribers(subscribers)
        with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                pipe.zcard(self._key("pending:", name))
            counts = pipe.execute()
        return {name: min(count, max(limit, 0)) for name, count in zip(names, counts, strict=True)}

    def redeliver(self, event_id: str, *, now: float | None = None,
                  requested_by: str | None = None) -> list[tuple[str, str]] | None:
        """Make every delivery of the event pending and due now with 0 attempts; the streams to nudge, or None."""
        now = timestamp(now)
        event_key, deliveries_key = self._key("event:", event_id), self._key("deliveries:", event_id)
        seq, order_key, rank = self._redis.hmget(event_key, "seq", "order_key", "rank")
        if seq is None:
            return None

        def update(pipe: redis.client.Pipeline) -> list[str]:
            deliveries = {name: apply_redeliver(json.loads(raw), now, requested_by)
                          for name, raw in pipe.hgetall(deliveries_key).items()}
            pipe.multi()
            for name, delivery in deliveries.items():
                stream = stream_id(name, order_key)
                pipe.hset(deliveries_key, name, encode(delivery))
                pipe.zadd(self._key("stream:", stream), {rank: 0})
                pipe.sadd(self._key("streams"), stream)
                pipe.zadd(self._key("pending:", name), {event_id: int(seq)})
            self._queue_state_indexes(pipe, event_id, seq, deliveries)
            return sorted(deliveries)

        subscribers = self._redis.transaction(update, deliveries_key, value_from_callable=True)
        return [(subscriber, order_key) for subscriber in subscribers]

    def close(self) -> None:
        """Close the connection pool."""
        self._redis.close()

