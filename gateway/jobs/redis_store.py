"""Update jobs in Redis, for deployments where several machines share one Redis; behaves like the SQLite store.

Keys, all under one prefix (default "gateway:jobs:"):

    seq                      string  the acceptance sequence (INCR), so no caller decides the order
    job:<id>                 hash    id, seq, lane, connection, request_id, state, fixed (the job as accepted, JSON),
                                     order_ids (JSON), accepted_at, updated_at, attempts (one line of JSON per
                                     attempt, the newest MAX_KEPT_ATTEMPTS), attempt_count, finishes, announced, and
                                     when set: next_attempt_at, lease_owner, lease_until, exchange_id, result (JSON),
                                     finished_at, dedupe_key; a field that is not set is None
    dedupe                   hash    dedupe_key -> job id
    all                      zset    every job id, scored by seq
    connection:<connection>  zset    the connection's job ids, by seq
    order:<order id>         zset    ids of the jobs one of whose order_ids it is, by seq
    request:<request id>     zset    the request's job ids, by seq
    state:<state>            zset    the ids of the jobs in that state, by seq
    lane:<lane>              zset    the lane's active (queued or sending) job ids, by seq: the head is the first
    lanes                    set     every lane whose zset is not empty
    active:<connection>      zset    the connection's active job ids, by accepted_at
    active-connections       set     every connection whose active zset is not empty
    finished                 zset    final job ids, by finished_at
    unannounced              zset    final job ids whose completion event was not marked announced, by finished_at

Every change of a job is one Lua script, so it is atomic and one round trip: the job's hash and every index move
together. The scripts find some keys on their way (the job a dedupe key names, the head of a job's lane), so the
store needs one Redis, not a Redis Cluster. Every time and every JSON document is written by Python (repr() of the
float) and only compared in Lua, so floats come back exactly as given. A change is as durable as the Redis server's
persistence settings make a write (appendfsync); nothing waits for replicas.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from gateway.config import StoreSettings
from gateway.jobs.base import (
    ACTIVE_COUNT_LIMIT,
    ACTIVE_STATES,
    DEAD,
    DONE,
    FAILED,
    FINAL_STATES,
    MAX_KEPT_ATTEMPTS,
    QUEUED,
    JobStore,
    JobStoreError,
    NewJob,
    check_attempt,
    check_new_job,
    check_state,
    encode,
    timestamp,
)
from gateway.stores import redis_client

#: how many index entries list_jobs reads per round trip when filters skip some of them
LIST_PAGE_SIZE = 200

# Helpers every script starts with. ARGV[1] is always the store's prefix. Values are passed to Redis as the strings
# Python wrote: a Lua number given to a command would be rounded to 14 digits.
PRELUDE = """
local prefix = ARGV[1]
local function key(kind, value)
    return prefix .. kind .. (value or '')
end
local function load(id)
    local flat = redis.call('HGETALL', key('job:', id))
    if #flat == 0 then
        return nil, flat
    end
    local job = {}
    for i = 1, #flat, 2 do
        job[flat[i]] = flat[i + 1]
    end
    return job, flat
end
local function is_final(state)
    return state == 'done' or state == 'failed' or state == 'dead'
end
-- the history with one more line of JSON, cut to the newest `kept` lines (JSON text holds no raw newline)
local function append_attempt(attempts, attempt, kept)
    local lines = {}
    for line in string.gmatch(attempts, '[^\\n]+') do
        lines[#lines + 1] = line
    end
    lines[#lines + 1] = attempt
    local first = math.max(1, #lines - kept + 1)
    return table.concat(lines, '\\n', first, #lines)
end
local function seq_indexes(job)
    local indexes = {key('all'), key('connection:', job.connection), key('request:', job.request_id)}
    for _, order_id in ipairs(cjson.decode(job.order_ids)) do
        indexes[#indexes + 1] = key('order:', order_id)
    end
    return indexes
end
local function move_state(id, seq, from, to)
    redis.call('ZREM', key('state:', from), id)
    redis.call('ZADD', key('state:', to), seq, id)
end
local function activate(id, seq, job)
    redis.call('ZADD', key('lane:', job.lane), seq, id)
    redis.call('SADD', key('lanes'), job.lane)
    redis.call('ZADD', key('active:', job.connection), job.accepted_at, id)
    redis.call('SADD', key('active-connections'), job.connection)
end
local function deactivate(id, job)
    redis.call('ZREM', key('lane:', job.lane), id)
    if redis.call('ZCARD', key('lane:', job.lane)) == 0 then
        redis.call('SREM', key('lanes'), job.lane)
    end
    redis.call('ZREM', key('active:', job.connection), id)
    if redis.call('ZCARD', key('active:', job.connection)) == 0 then
        redis.call('SREM', key('active-connections'), job.connection)
    end
end
"""

# ARGV: prefix, now, then per job: id, lane, connection, request_id, fixed, order_ids (JSON), "1" if it has a
# dedupe key else "0", the dedupe key. Returns {"stored", {job fields, ...}} with one job per job given, or
# {"taken", id} (nothing stored) when a job's id is taken.
ADD_JOBS_SCRIPT = PRELUDE + """
local now = ARGV[2]
local count = (#ARGV - 2) / 8
local function known_job(arg)
    if ARGV[arg + 6] == '1' then
        return redis.call('HGET', key('dedupe'), ARGV[arg + 7])
    end
    return false
end
-- First check every job, so that a refused batch stores nothing.
local batch_ids, batch_dedupe = {}, {}
for i = 0, count - 1 do
    local arg = 3 + 8 * i
    local id = ARGV[arg]
    local deduped = ARGV[arg + 6] == '1' and (batch_dedupe[ARGV[arg + 7]] or known_job(arg))
    if not deduped then
        if batch_ids[id] or redis.call('EXISTS', key('job:', id)) == 1 then
            return {'taken', id}
        end
        batch_ids[id] = true
        if ARGV[arg + 6] == '1' then
            batch_dedupe[ARGV[arg + 7]] = id
        end
    end
end
local stored = {}
for i = 0, count - 1 do
    local arg = 3 + 8 * i
    local id = known_job(arg)
    if not id then
        id = ARGV[arg]
        local seq = tostring(redis.call('INCR', key('seq')))
        local job = {lane = ARGV[arg + 1], connection = ARGV[arg + 2], request_id = ARGV[arg + 3],
                     order_ids = ARGV[arg + 5], accepted_at = now}
        redis.call('HSET', key('job:', id), 'id', id, 'seq', seq, 'lane', job.lane, 'connection', job.connection,
                   'request_id', job.request_id, 'state', 'queued', 'fixed', ARGV[arg + 4], 'order_ids',
                   job.order_ids, 'accepted_at', now, 'updated_at', now, 'attempts', '', 'attempt_count', '0',
                   'finishes', '0', 'announced', '0')
        if ARGV[arg + 6] == '1' then
            redis.call('HSET', key('job:', id), 'dedupe_key', ARGV[arg + 7])
            redis.call('HSET', key('dedupe'), ARGV[arg + 7], id)
        end
        for _, index in ipairs(seq_indexes(job)) do
            redis.call('ZADD', index, seq, id)
        end
        redis.call('ZADD', key('state:', 'queued'), seq, id)
        activate(id, seq, job)
    end
    local _, flat = load(id)
    stored[#stored + 1] = flat
end
return {'stored', stored}
"""

# ARGV: prefix, lane. Returns the fields of the lane's head, or nil.
LANE_HEAD_SCRIPT = PRELUDE + """
local head = redis.call('ZRANGE', key('lane:', ARGV[2]), 0, 0)[1]
if not head then
    return false
end
local _, flat = load(head)
return flat
"""

# ARGV: prefix, job id, owner, now, lease_until. Returns the job's fields as they were before the claim, or nil.
CLAIM_SCRIPT = PRELUDE + """
local id, owner, now = ARGV[2], ARGV[3], ARGV[4]
local job, flat = load(id)
if not job or (job.state ~= 'queued' and job.state ~= 'sending') then
    return false
end
if redis.call('ZRANGE', key('lane:', job.lane), 0, 0)[1] ~= id then
    return false
end
if job.state == 'sending' and job.lease_owner ~= owner and tonumber(job.lease_until or '0') > tonumber(now) then
    return false
end
redis.call('HSET', key('job:', id), 'state', 'sending', 'lease_owner', owner, 'lease_until', ARGV[5],
           'updated_at', now)
redis.call('HDEL', key('job:', id), 'exchange_id')
move_state(id, job.seq, job.state, 'sending')
return flat
"""

# ARGV: prefix, job id, owner, exchange id, now. Returns 1 when noted.
NOTE_EXCHANGE_SCRIPT = PRELUDE + """
local state, owner = unpack(redis.call('HMGET', key('job:', ARGV[2]), 'state', 'lease_owner'))
if state ~= 'sending' or owner ~= ARGV[3] then
    return 0
end
redis.call('HSET', key('job:', ARGV[2]), 'exchange_id', ARGV[4], 'updated_at', ARGV[5])
return 1
"""

# ARGV: prefix, job id, owner, state, attempt (a line of JSON, or ""), result (JSON, or "" for none),
# next_attempt_at (or "" for due now), now, MAX_KEPT_ATTEMPTS. Returns 1 when released.
RELEASE_SCRIPT = PRELUDE + """
local id, owner, state, attempt, result, next_attempt_at, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6],
    ARGV[7], ARGV[8]
local job = load(id)
if not job or job.state ~= 'sending' or job.lease_owner ~= owner then
    return 0
end
local job_key = key('job:', id)
local attempts, attempt_count = job.attempts, tonumber(job.attempt_count)
if attempt ~= '' then
    attempts = append_attempt(attempts, attempt, tonumber(ARGV[9]))
    attempt_count = attempt_count + 1
end
redis.call('HDEL', job_key, 'lease_owner', 'lease_until', 'exchange_id')
redis.call('HSET', job_key, 'state', state, 'attempts', attempts, 'attempt_count', tostring(attempt_count),
           'updated_at', now)
move_state(id, job.seq, 'sending', state)
if is_final(state) then
    redis.call('HDEL', job_key, 'next_attempt_at')
    if result ~= '' then
        redis.call('HSET', job_key, 'result', result)
    else
        redis.call('HDEL', job_key, 'result')
    end
    redis.call('HSET', job_key, 'finished_at', now, 'finishes', tostring(tonumber(job.finishes) + 1))
    deactivate(id, job)
    redis.call('ZADD', key('finished'), now, id)
    redis.call('ZADD', key('unannounced'), now, id)
else
    if next_attempt_at ~= '' then
        redis.call('HSET', job_key, 'next_attempt_at', next_attempt_at)
    else
        redis.call('HDEL', job_key, 'next_attempt_at')
    end
    redis.call('HDEL', job_key, 'result', 'finished_at')
end
return 1
"""

# ARGV: prefix, job id, now, the "retry" attempt (a line of JSON), MAX_KEPT_ATTEMPTS. Returns nil for an unknown
# job, else {1 if queued again else 0, the job's fields}.
RETRY_SCRIPT = PRELUDE + """
local id, now = ARGV[2], ARGV[3]
local job, flat = load(id)
if not job then
    return false
end
if job.state ~= 'failed' and job.state ~= 'dead' then
    return {0, flat}
end
local seq = tostring(redis.call('INCR', key('seq')))
for _, index in ipairs(seq_indexes(job)) do
    redis.call('ZADD', index, seq, id)
end
move_state(id, seq, job.state, 'queued')
activate(id, seq, job)
redis.call('ZREM', key('finished'), id)
redis.call('ZREM', key('unannounced'), id)
local job_key = key('job:', id)
redis.call('HDEL', job_key, 'next_attempt_at', 'result', 'finished_at')
redis.call('HSET', job_key, 'seq', seq, 'state', 'queued', 'updated_at', now,
           'attempts', append_attempt(job.attempts, ARGV[4], tonumber(ARGV[5])),
           'attempt_count', tostring(tonumber(job.attempt_count) + 1))
local _, retried = load(id)
return {1, retried}
"""

# ARGV: prefix, job id, finish number. Returns 1 when the job is known.
MARK_ANNOUNCED_SCRIPT = PRELUDE + """
local announced, finishes = unpack(redis.call('HMGET', key('job:', ARGV[2]), 'announced', 'finishes'))
if not finishes then
    return 0
end
announced = math.max(tonumber(announced), tonumber(ARGV[3]))
redis.call('HSET', key('job:', ARGV[2]), 'announced', tostring(announced))
if announced >= tonumber(finishes) then
    redis.call('ZREM', key('unannounced'), ARGV[2])
end
return 1
"""

# ARGV: prefix, finished_by, limit. Returns how many jobs were deleted.
PURGE_FINISHED_SCRIPT = PRELUDE + """
local ids = redis.call('ZRANGEBYSCORE', key('finished'), '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])
local deleted = 0
for _, id in ipairs(ids) do
    local job = load(id)
    if job and is_final(job.state) then
        for _, index in ipairs(seq_indexes(job)) do
            redis.call('ZREM', index, id)
        end
        redis.call('ZREM', key('state:', job.state), id)
        redis.call('ZREM', key('unannounced'), id)
        if job.dedupe_key and redis.call('HGET', key('dedupe'), job.dedupe_key) == id then
            redis.call('HDEL', key('dedupe'), job.dedupe_key)
        end
        redis.call('DEL', key('job:', id))
        deleted = deleted + 1
    end
    redis.call('ZREM', key('finished'), id)
end
return deleted
"""


def _optional_float(value: str | None) -> float | None:
    """A time as stored (repr of a float), or None when not set."""
    return None if value is None else float(value)


def _job(fields: Mapping[str, str]) -> dict:
    """A job as the contract returns it, from its hash's fields."""
    fixed = json.loads(fields["fixed"])
    return {
        "id": fields["id"], "seq": int(fields["seq"]), "lane": fields["lane"], "connection": fields["connection"],
        "backend": fixed["backend"], "operation": fixed["operation"], "order_ids": fixed["order_ids"],
        "items": fixed["items"], "idempotent": fixed["idempotent"], "kind": fixed["kind"],
        "caller": fixed["caller"], "request_id": fixed["request_id"], "trace_context": fixed["trace_context"],
        "state": fields["state"], "accepted_at": float(fields["accepted_at"]),
        "updated_at": float(fields["updated_at"]), "next_attempt_at": _optional_float(fields.get("next_attempt_at")),
        "lease_owner": fields.get("lease_owner"), "lease_until": _optional_float(fields.get("lease_until")),
        "exchange_id": fields.get("exchange_id"),
        "attempts": [json.loads(line) for line in fields["attempts"].split("\n") if line],
        "attempt_count": int(fields["attempt_count"]),
        "result": None if fields.get("result") is None else json.loads(fields["result"]),
        "finished_at": _optional_float(fields.get("finished_at")), "finishes": int(fields["finishes"]),
        "announced": int(fields["announced"]),
    }


def _job_of_reply(flat: Sequence[str]) -> dict:
    """A job from a script's reply (its hash's fields and values, one after the other)."""
    return _job(dict(zip(flat[::2], flat[1::2], strict=True)))


class RedisJobStore(JobStore):
    """The jobs in one Redis, shared by every process of every machine that uses the same URL and prefix."""

    def __init__(self, url: str, *, prefix: str = "gateway:jobs:", stores: StoreSettings | None = None) -> None:
        self.prefix = prefix
        # [stores] timeouts, so a Redis that stops answering fails a request instead of hanging it.
        self._redis = redis_client(url, stores, store="update job store", decode_responses=True)
        self._add_jobs_script = self._redis.register_script(ADD_JOBS_SCRIPT)
        self._lane_head_script = self._redis.register_script(LANE_HEAD_SCRIPT)
        self._claim_script = self._redis.register_script(CLAIM_SCRIPT)
        self._note_exchange_script = self._redis.register_script(NOTE_EXCHANGE_SCRIPT)
        self._release_script = self._redis.register_script(RELEASE_SCRIPT)
        self._retry_script = self._redis.register_script(RETRY_SCRIPT)
        self._mark_announced_script = self._redis.register_script(MARK_ANNOUNCED_SCRIPT)
        self._purge_finished_script = self._redis.register_script(PURGE_FINISHED_SCRIPT)

    def _key(self, kind: str, value: str = "") -> str:
        """A key under this store's prefix."""
        return self.prefix + kind + value

    def _jobs(self, job_ids: Sequence[str]) -> list[dict | None]:
        """These jobs (None where unknown), read in one MULTI so the batch is consistent."""
        if not job_ids:
            return []
        with self._redis.pipeline() as pipe:
            for job_id in job_ids:
                pipe.hgetall(self._key("job:", job_id))
            replies = pipe.execute()
        return [_job(fields) if fields else None for fields in replies]

    def add_jobs(self, jobs: Sequence[NewJob], *, now: float | None = None) -> list[dict]:
        """Store the jobs (or find the ones stored under their dedupe keys) in one script."""
        now = timestamp(now)
        args: list[str] = [self.prefix, repr(now)]
        for job in jobs:
            fixed = check_new_job(job)
            args += [job.id, job.lane, job.connection, job.request_id, fixed, encode(list(job.order_ids)),
                     "0" if job.dedupe_key is None else "1", job.dedupe_key or ""]
        if not jobs:
            return []
        outcome, detail = self._add_jobs_script(args=args)
        if outcome == "taken":
            raise JobStoreError(f"a job with id {detail!r} is already stored")
        return [_job_of_reply(flat) for flat in detail]

    def get_job(self, job_id: str) -> dict | None:
        """The job by id."""
        return self._jobs([job_id])[0]

    def list_jobs(self, *, connections: Collection[str] | None = None, connection: str | None = None,
                  order_id: str | None = None, state: str | None = None, request_id: str | None = None,
                  limit: int = 100, before: str | None = None) -> list[dict]:
        """Walk the most selective index newest first (one per connection when only `connections` narrows the
        list), checking the other filters on the jobs read."""
        check_state(state)
        if connections is not None:
            connections = frozenset(connections)
            if not connections:
                return []
        limit = max(int(limit), 0)
        below = "+inf"
        if before is not None:
            seq, cursor_connection = self._redis.hmget(self._key("job:", before), "seq", "connection")
            if seq is None or (connections is not None and cursor_connection not in connections):
                return []
            below = f"({int(seq)}"
        if limit == 0 or (connection is not None and connections is not None and connection not in connections):
            return []

        def matches(job: dict) -> bool:
            return ((connections is None or job["connection"] in connections)
                    and (connection is None or job["connection"] == connection)
                    and (order_id is None or order_id in job["order_ids"])
                    and (state is None or job["state"] == state)
                    and (request_id is None or job["request_id"] == request_id))

        if order_id is not None:
            indexes = [self._key("order:", order_id)]
        elif request_id is not None:
            indexes = [self._key("request:", request_id)]
        elif state in ACTIVE_STATES:  # few jobs are active at a time; many are final
            indexes = [self._key("state:", state)]
        elif connection is not None:
            indexes = [self._key("connection:", connection)]
        elif connections is not None:
            indexes = [self._key("connection:", name) for name in sorted(connections)]
        elif state is not None:
            indexes = [self._key("state:", state)]
        else:
            indexes = [self._key("all")]
        found = [job for index in indexes for job in self._walk(index, below, limit, matches)]
        # The newest `limit` of the union are among the newest `limit` of each index.
        found.sort(key=lambda job: job["seq"], reverse=True)
        return found[:limit]

    def _walk(self, index: str, below: str, limit: int, matches: Callable[[dict], bool]) -> list[dict]:
        """Up to `limit` jobs of the index with a sequence below `below`, newest first, that `matches` accepts."""
        found: list[dict] = []
        while len(found) < limit:
            page = self._redis.zrange(index, below, "-inf", desc=True, byscore=True, withscores=True, offset=0,
                                      num=max(limit - len(found), LIST_PAGE_SIZE))
            if not page:
                break
            for (_, seq), job in zip(page, self._jobs([job_id for job_id, _ in page]), strict=True):
                # A job retried since the index was read has moved on (a new sequence): it is not listed here.
                if job is not None and job["seq"] == int(seq) and matches(job):
                    found.append(job)
            # Scores are unique sequence numbers, so "below the last one read" never skips or repeats a job.
            below = f"({int(page[-1][1])}"
        return found[:limit]

    def active_lanes(self) -> list[str]:
        """The lanes listed as having active jobs."""
        return sorted(self._redis.smembers(self._key("lanes")))

    def lane_head(self, lane: str) -> dict | None:
        """The first job of the lane's zset of active jobs."""
        flat = self._lane_head_script(args=[self.prefix, lane])
        return None if not flat else _job_of_reply(flat)

    def claim(self, job_id: str, owner: str, *, lease_seconds: float, now: float | None = None) -> dict | None:
        """Check the job heads its lane and is claimable, then take it, in one script."""
        now = timestamp(now)
        flat = self._claim_script(args=[self.prefix, job_id, owner, repr(now), repr(now + lease_seconds)])
        return None if not flat else _job_of_reply(flat)

    def note_exchange(self, job_id: str, owner: str, exchange_id: str, *, now: float | None = None) -> bool:
        """Set the exchange id on the owner's sending job."""
        return self._note_exchange_script(
            args=[self.prefix, job_id, owner, exchange_id, repr(timestamp(now))]) == 1

    def release(self, job_id: str, owner: str, *, state: str, attempt: Mapping[str, Any] | None = None,
                result: Mapping[str, Any] | None = None, next_attempt_at: float | None = None,
                now: float | None = None) -> bool:
        """Move the owner's sending job to its next state, in one script."""
        check_state(state, (QUEUED, DONE, FAILED, DEAD))
        now, new = timestamp(now), check_attempt(attempt)
        final = state in FINAL_STATES
        return self._release_script(args=[
            self.prefix, job_id, owner, state, "" if new is None else encode(new),
            encode(dict(result)) if final and result else "",
            "" if final or next_attempt_at is None else repr(float(next_attempt_at)), repr(now),
            MAX_KEPT_ATTEMPTS]) == 1

    def retry(self, job_id: str, *, requested_by: str = "", now: float | None = None) -> tuple[dict, bool] | None:
        """Give a failed or dead job the next sequence and queue it again, in one script."""
        now = timestamp(now)
        reply = self._retry_script(args=[
            self.prefix, job_id, repr(now), encode({"at": now, "outcome": "retry", "requested_by": requested_by}),
            MAX_KEPT_ATTEMPTS])
        if not reply:
            return None
        retried, flat = reply
        return _job_of_reply(flat), retried == 1

    def unannounced(self, *, finished_by: float, limit: int = 100) -> list[dict]:
        """Final jobs listed as unannounced, by finish time."""
        limit = max(int(limit), 0)
        if limit == 0:
            return []
        job_ids = self._redis.zrange(self._key("unannounced"), "-inf", repr(float(finished_by)), byscore=True,
                                     offset=0, num=limit)
        return [job for job in self._jobs(job_ids)
                if job is not None and job["state"] in FINAL_STATES and job["announced"] < job["finishes"]]

    def mark_announced(self, job_id: str, finish: int) -> None:
        """Raise the job's announced finish number to `finish`."""
        self._mark_announced_script(args=[self.prefix, job_id, int(finish)])

    def active_summary(self, *, limit: int = ACTIVE_COUNT_LIMIT) -> dict[str, tuple[int, float]]:
        """Per connection listed as active, its active zset's size (bounded) and first score."""
        connections = sorted(self._redis.smembers(self._key("active-connections")))
        with self._redis.pipeline() as pipe:
            for connection in connections:
                pipe.zcard(self._key("active:", connection))
                pipe.zrange(self._key("active:", connection), 0, 0, withscores=True)
            replies = pipe.execute()
        summary: dict[str, tuple[int, float]] = {}
        for connection, count, oldest in zip(connections, replies[::2], replies[1::2], strict=True):
            if count:
                summary[connection] = (count if limit < 0 else min(count, limit), oldest[0][1])
        return summary

    def purge_finished(self, *, finished_by: float, limit: int) -> int:
        """Delete the oldest finished jobs with their index entries and dedupe keys, in one script."""
        limit = max(int(limit), 0)
        if limit == 0:
            return 0
        return self._purge_finished_script(args=[self.prefix, repr(float(finished_by)), limit])

    def close(self) -> None:
        """Close the connection pool."""
        self._redis.close()
