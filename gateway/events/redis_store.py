"""The event store in Redis, for deployments where several machines share one Redis; behaves like the SQLite one.

Keys, all under one prefix (default "gateway:events:"):

    version                  string  the layout's version: "2" (missing: 1; "upgrading": an upgrade under way)
    seq                      string  the insertion sequence (INCR), so no caller decides the order
    dedupe                   hash    dedupe_key -> event id
    dedupe:legacy            hash    while an upgrade from version 1 runs: its dedupe keys still to be rewritten
    event:<id>               hash    body (the event as JSON), received_at, seq, order_key, rank, trace_context,
                                     dedupe_key
    deliveries:<id>          hash    subscriber -> the delivery as JSON (state, attempts, times, history)
    events                   zset    every event id, scored by seq
    type:<type>              zset    event ids of that type, by seq
    order:<order id>         zset    event ids whose backend_order_id or order_number is that string, by seq
    state:<state>            zset    event ids with at least one delivery in that state, by seq
    pending:<subscriber>     zset    event ids whose delivery to that subscriber is pending, by seq
    stream:<stream>          zset    ranks of the stream's pending deliveries, all scored 0 so Redis sorts them
                                     by rank: occurred_at NUL seq (20 digits) NUL event id, i.e. in event order
    streams                  set     every <stream> whose zset is not empty
    settled                  zset    ids of the events none of whose deliveries is pending, by when they settled

A <stream> is the JSON array [subscriber, order_key], which no choice of names can make ambiguous.
add_event is one Lua script (dedupe, sequence and every index at once); the read-modify-write updates run as
WATCH/MULTI transactions, so all JSON and every float is written by Python, exactly.

Opening a store of version 1 upgrades it, a bounded batch per round trip, and any number of processes may do so
at once: its dedupe hash is moved aside to dedupe:legacy, then each key is rewritten (connection_dedupe_key) into
dedupe and noted on its event; every settled event is listed in `settled`; then the version is set. A process
that stopped half-way leaves "upgrading", and the next one to open the store finishes the work.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection, Mapping, Sequence

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
    check_connections,
    check_event,
    check_outcome,
    check_state,
    connection_dedupe_key,
    decode_trace_context,
    encode_trace_context,
    event_connection,
    matches_filters,
    new_delivery,
    order_ids,
    timestamp,
    unique_subscribers,
)
from gateway.stores import redis_client

# KEYS: dedupe, seq, event, deliveries, events, type index, state:pending, streams, settled, <order indexes>, then
#       per subscriber: its stream, its pending index; then the queue's list when messages are given.
# ARGV: dedupe_key, event id, body, received_at, order_key, occurred_at, number of order indexes, trace context,
#       number of subscribers, number of queue messages, then per subscriber: name, delivery JSON, stream id (in the
#       same order as the stream keys), then the queue messages.
# Returns {id, 1} when stored, {existing id, 0} for a known dedupe_key, {id, -1} when the id is taken. The queue
# messages are pushed last, only for an event stored now: dedupe, store and queue are one round trip.
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
           'trace_context', ARGV[8], 'dedupe_key', ARGV[1])
redis.call('ZADD', KEYS[5], seq, ARGV[2])
redis.call('ZADD', KEYS[6], seq, ARGV[2])
local order_indexes = tonumber(ARGV[7])
for i = 1, order_indexes do
    redis.call('ZADD', KEYS[9 + i], seq, ARGV[2])
end
local subscribers, messages = tonumber(ARGV[9]), tonumber(ARGV[10])
local first_stream = 10 + order_indexes
for i = 0, subscribers - 1 do
    local arg = 11 + 3 * i
    redis.call('HSET', KEYS[4], ARGV[arg], ARGV[arg + 1])
    redis.call('ZADD', KEYS[first_stream + 2 * i], 0, rank)
    redis.call('ZADD', KEYS[first_stream + 2 * i + 1], seq, ARGV[2])
    redis.call('SADD', KEYS[8], ARGV[arg + 2])
end
if subscribers > 0 then
    redis.call('ZADD', KEYS[7], seq, ARGV[2])
else
    redis.call('ZADD', KEYS[9], ARGV[4], ARGV[2])
end
local first_message = 11 + 3 * subscribers
for i = 0, messages - 1 do
    redis.call('LPUSH', KEYS[first_stream + 2 * subscribers], ARGV[first_message + i])
end
return {ARGV[2], 1}
"""

#: the layout this code writes: dedupe keys per connection, settled events listed
LAYOUT_VERSION = "2"
UPGRADING = "upgrading"
#: dedupe keys or events one round trip of an upgrade handles
UPGRADE_BATCH_SIZE = 500

# KEYS: version, dedupe, dedupe:legacy. ARGV: LAYOUT_VERSION, UPGRADING.
# Returns the version found. A store of version 1 has its dedupe hash moved aside, once, and is marked upgrading.
BEGIN_UPGRADE_SCRIPT = """
local version = redis.call('GET', KEYS[1])
if version then
    return version
end
if redis.call('EXISTS', KEYS[2]) == 1 then
    redis.call('RENAME', KEYS[2], KEYS[3])
end
redis.call('SET', KEYS[1], ARGV[2])
return '1'
"""

# KEYS: dedupe, dedupe:legacy, then the event hash of each entry. ARGV: old key, new key, event id of each entry.
# Moves each entry still in dedupe:legacy under its new key (unless another event has that key: then the entry is
# dropped, as SQLite keeps the old key nobody sends any more) and notes the key on its event.
MOVE_DEDUPE_KEYS_SCRIPT = """
for i = 0, #ARGV / 3 - 1 do
    local old, new, id = ARGV[3 * i + 1], ARGV[3 * i + 2], ARGV[3 * i + 3]
    if redis.call('HGET', KEYS[2], old) == id then
        if redis.call('HSETNX', KEYS[1], new, id) == 1 and redis.call('EXISTS', KEYS[3 + i]) == 1 then
            redis.call('HSET', KEYS[3 + i], 'dedupe_key', new)
        end
        redis.call('HDEL', KEYS[2], old)
    end
end
return 1
"""

# KEYS: version, dedupe:legacy. ARGV: LAYOUT_VERSION. Returns 1 when the upgrade is done (nothing left to move).
FINISH_UPGRADE_SCRIPT = """
if redis.call('EXISTS', KEYS[2]) == 1 then
    return 0
end
redis.call('SET', KEYS[1], ARGV[1])
return 1
"""

log = logging.getLogger("gateway.events")

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
        self._begin_upgrade_script = self._redis.register_script(BEGIN_UPGRADE_SCRIPT)
        self._move_dedupe_keys_script = self._redis.register_script(MOVE_DEDUPE_KEYS_SCRIPT)
        self._finish_upgrade_script = self._redis.register_script(FINISH_UPGRADE_SCRIPT)
        self._upgraded = False
        try:
            self.upgrade()
        except redis.RedisError as error:  # Redis down at start-up: the first add_event or purge tries again
            log.warning("could not check the event store's layout in Redis (%s); trying again when it is next used",
                        type(error).__name__)

    def upgrade(self) -> None:
        """Bring a store of an earlier layout to this one (see the module's docstring); at once when it is."""
        version = self._begin_upgrade_script(
            keys=[self._key("version"), self._key("dedupe"), self._key("dedupe:legacy")],
            args=[LAYOUT_VERSION, UPGRADING])
        if version != LAYOUT_VERSION:
            log.info("upgrading the event store in Redis (prefix %s) from layout %s to %s", self.prefix, version,
                     LAYOUT_VERSION)
            self._move_legacy_dedupe_keys()
            self._list_settled_events()
            while not self._finish_upgrade_script(keys=[self._key("version"), self._key("dedupe:legacy")],
                                                  args=[LAYOUT_VERSION]):
                self._move_legacy_dedupe_keys()
        self._upgraded = True

    def _ensure_upgraded(self) -> None:
        """Upgrade now if opening the store could not."""
        if not self._upgraded:
            self.upgrade()

    def _move_legacy_dedupe_keys(self) -> None:
        """Rewrite every dedupe key left in dedupe:legacy into dedupe, a batch per round trip."""
        legacy = self._key("dedupe:legacy")
        while self._redis.exists(legacy):
            cursor = 0
            while True:
                # Each entry is deleted once moved, so a scan that others' moves reshuffle loses nothing: the
                # outer loop scans again while any entry is left.
                cursor, entries = self._redis.hscan(legacy, cursor, count=UPGRADE_BATCH_SIZE)
                if entries:
                    self._move_dedupe_keys(entries)
                if cursor == 0:
                    break

    def _move_dedupe_keys(self, entries: Mapping[str, str]) -> None:
        """Move these entries (old key -> event id) of dedupe:legacy to their keys of this layout."""
        old_keys = list(entries)
        with self._redis.pipeline(transaction=False) as pipe:
            for old in old_keys:
                pipe.hget(self._key("event:", entries[old]), "body")
            bodies = pipe.execute()
        keys, args = [self._key("dedupe"), self._key("dedupe:legacy")], []
        for old, body in zip(old_keys, bodies, strict=True):
            new = old if body is None else connection_dedupe_key(old, json.loads(body))
            keys.append(self._key("event:", entries[old]))
            args += [old, new, entries[old]]
        self._move_dedupe_keys_script(keys=keys, args=args)

    def _list_settled_events(self) -> None:
        """List in `settled` every event without a pending delivery that is not listed yet, by when its last
        attempt was made (or it was received), a batch per transaction."""
        above = "-inf"
        while page := self._redis.zrange(self._key("events"), above, "+inf", byscore=True, withscores=True,
                                         offset=0, num=UPGRADE_BATCH_SIZE):
            event_ids = [event_id for event_id, _ in page]

            def list_settled(pipe: redis.client.Pipeline, event_ids: list[str] = event_ids) -> None:
                # Read after WATCH (on another connection, in one round trip): a change meanwhile fails the EXEC.
                with self._redis.pipeline(transaction=False) as reads:
                    for event_id in event_ids:
                        reads.hget(self._key("event:", event_id), "received_at")
                        reads.hvals(self._key("deliveries:", event_id))
                    replies = reads.execute()
                settled: dict[str, float] = {}
                for event_id, received_at, raw_deliveries in zip(event_ids, replies[::2], replies[1::2],
                                                                  strict=True):
                    deliveries = [json.loads(raw) for raw in raw_deliveries]
                    if received_at is None or any(delivery["state"] == PENDING for delivery in deliveries):
                        continue
                    settled[event_id] = max([float(received_at)] + [line["at"] for delivery in deliveries
                                                                    for line in delivery["history"]])
                pipe.multi()
                if settled:
                    pipe.zadd(self._key("settled"), settled, nx=True)

            self._redis.transaction(list_settled, *(self._key("deliveries:", event_id) for event_id in event_ids))
            above = f"({int(page[-1][1])}"

    def _key(self, *parts: str) -> str:
        """A key under this store's prefix."""
        return self.prefix + "".join(parts)

    def add_event(self, event: dict, *, dedupe_key: str, order_key: str, subscribers: Sequence[str],
                  now: float | None = None, trace_context: Mapping[str, str] | None = None,
                  queue: tuple[str, Sequence[bytes]] | None = None) -> tuple[str, bool]:
        """Store the event and one due delivery per subscriber at once; (existing id, False) if dedupe_key is known.

        `queue`: (a list's key in this Redis, messages) to push onto it in the same round trip, when the event is
        stored now (the delivery queue's wake-ups, so a webhook costs one round trip)."""
        body = check_event(event)
        names = unique_subscribers(subscribers)
        now = timestamp(now)
        self._ensure_upgraded()
        event_id = event["id"]
        index_keys = [self._key("order:", value) for value in order_ids(event)]
        keys = [self._key("dedupe"), self._key("seq"), self._key("event:", event_id),
                self._key("deliveries:", event_id), self._key("events"), self._key("type:", event["type"]),
                self._key("state:", PENDING), self._key("streams"), self._key("settled"), *index_keys]
        queue_key, messages = queue if queue is not None and queue[1] else (None, ())
        args = [dedupe_key, event_id, body, repr(now), order_key, event["occurred_at"], len(index_keys),
                encode_trace_context(trace_context), len(names), len(messages)]
        for name in names:
            stream = stream_id(name, order_key)
            keys += [self._key("stream:", stream), self._key("pending:", name)]
            args += [name, encode(new_delivery(name, now)), stream]
        if queue_key is not None:
            keys.append(queue_key)
            args += messages
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
                    limit: int = 100, connections: Collection[str] | None = None,
                    before: str | None = None) -> list[dict]:
        """Up to `limit` events shaped like get_event's result, newest first, matching every filter given."""
        check_state(state)
        connections = check_connections(connections)
        if limit <= 0 or connections == frozenset():
            return []
        below = "+inf"
        if before is not None:
            seq, body = self._redis.hmget(self._key("event:", before), "seq", "body")
            # The cursor passes the connections filter too; an unknown or hidden one lists nothing.
            if seq is None or (connections is not None and event_connection(json.loads(body)) not in connections):
                return []
            below = f"({int(seq)}"
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
        while len(found) < limit:
            page = self._redis.zrange(index, below, "-inf", desc=True, byscore=True, withscores=True, offset=0,
                                      num=max(limit - len(found), LIST_PAGE_SIZE))
            if not page:
                break
            for item in self._items([event_id for event_id, _ in page]):
                if item is not None and matches_filters(item, order_id=order_id, type=type, state=state,
                                                        connections=connections):
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
            self._queue_state_indexes(pipe, event_id, seq, deliveries, now)
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
                             deliveries: dict[str, dict], now: float) -> None:
        """Queue the updates that list the event under exactly the states its deliveries are in, and as settled
        (now) or not."""
        states = {delivery["state"] for delivery in deliveries.values()}
        for state in DELIVERY_STATES:
            if state in states:
                pipe.zadd(self._key("state:", state), {event_id: int(seq)})
            else:
                pipe.zrem(self._key("state:", state), event_id)
        if PENDING in states:
            pipe.zrem(self._key("settled"), event_id)
        elif deliveries:
            pipe.zadd(self._key("settled"), {event_id: now})

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
            self._queue_state_indexes(pipe, event_id, seq, deliveries, now)
            return sorted(deliveries)

        subscribers = self._redis.transaction(update, deliveries_key, value_from_callable=True)
        return [(subscriber, order_key) for subscriber in subscribers]

    def purge_settled(self, *, settled_by: float, limit: int) -> int:
        """Delete up to `limit` events that settled at or before `settled_by`, oldest settled first, with their
        deliveries, index entries and dedupe keys, in one transaction; how many were deleted."""
        if limit <= 0:
            return 0
        self._ensure_upgraded()
        settled_by, settled_key = float(settled_by), self._key("settled")
        event_ids = self._redis.zrange(settled_key, "-inf", repr(settled_by), byscore=True, offset=0, num=limit)
        if not event_ids:
            return 0

        def purge(pipe: redis.client.Pipeline) -> int:
            # Read after WATCH (on another connection, in one round trip): a redelivery, an attempt or another
            # purge of these events meanwhile fails the EXEC, and the batch is read again.
            with self._redis.pipeline(transaction=False) as reads:
                reads.zmscore(settled_key, event_ids)
                reads.zmscore(self._key("state:", PENDING), event_ids)
                for event_id in event_ids:
                    reads.hmget(self._key("event:", event_id), "body", "dedupe_key")
                settled_at, pending, *events = reads.execute()
            dedupe_keys = [dedupe_key for _, dedupe_key in events if dedupe_key is not None]
            owners = dict(zip(dedupe_keys, self._redis.hmget(self._key("dedupe"), dedupe_keys), strict=True)) \
                if dedupe_keys else {}
            pipe.multi()
            deleted = 0
            for event_id, score, pending_score, (body, dedupe_key) in zip(event_ids, settled_at, pending, events,
                                                                          strict=True):
                if score is None or score > settled_by:
                    continue
                if pending_score is not None or body is None:
                    # Pending after all (redelivered by a process of the earlier layout), or gone: not settled.
                    pipe.zrem(settled_key, event_id)
                    continue
                event = json.loads(body)
                pipe.delete(self._key("event:", event_id), self._key("deliveries:", event_id))
                for index in (self._key("events"), self._key("type:", event["type"]), settled_key,
                              *(self._key("state:", state) for state in DELIVERY_STATES),
                              *(self._key("order:", value) for value in order_ids(event))):
                    pipe.zrem(index, event_id)
                if dedupe_key is not None and owners.get(dedupe_key) == event_id:
                    pipe.hdel(self._key("dedupe"), dedupe_key)
                deleted += 1
            return deleted

        return self._redis.transaction(
            purge, *(self._key(kind, event_id) for event_id in event_ids for kind in ("event:", "deliveries:")),
            value_from_callable=True)

    def close(self) -> None:
        """Close the connection pool."""
        self._redis.close()

