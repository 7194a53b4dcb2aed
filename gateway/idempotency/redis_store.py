"""Idempotency-Key records in Redis, for deployments where several machines share one Redis; behaves like SQLite.

One hash per key, under one prefix (default "gateway:idempotency:"):

    <key>   hash   state ("in-progress" or "completed"), fingerprint; while in progress lease_until (milliseconds
                   of the server's clock), and once a call was noted attempts (lines of JSON) and idempotent ("1"
                   while every call noted is); once completed status, headers (JSON [[name, value], ...]) and body
                   (the bytes as sent)

Redis expires each hash by itself (PEXPIRE): an in-progress one when its lease is over, an attempted or completed
one at the end of its life; so lease and lifetime run on the Redis server's clock (TIME), whatever the machines'
clocks say, and the `now` arguments, which exist for the SQLite store's tests, are ignored here. Every operation is
one Lua script on one key, so it is atomic (and would work on a Redis Cluster).
"""

from __future__ import annotations

import math

from gateway.config import StoreSettings
from gateway.idempotency.base import (
    OUTCOME_UNKNOWN,
    REPLAY,
    Attempt,
    Begun,
    IdempotencyStore,
    StoredResponse,
    check_attempt,
    check_record,
    check_seconds,
    decode_attempts,
    decode_headers,
    encode_attempt,
    encode_headers,
)
from gateway.stores import redis_client

# The scripts spell out the states: "in-progress" and "completed" as stored, and begin()'s answers. Times in a
# record (lease_until) are milliseconds of the Redis server's clock (TIME).

# KEYS: the record. ARGV: fingerprint, lease in milliseconds.
# Returns {"new"}, {"in-progress"}, {"mismatch"}, {"outcome-unknown", attempts} or {"replay", status, headers, body}.
BEGIN_SCRIPT = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local record = redis.call('HMGET', KEYS[1], 'state', 'fingerprint', 'lease_until', 'attempts', 'idempotent')
if record[1] then
    if record[2] ~= ARGV[1] then
        return {'mismatch'}
    end
    if record[1] ~= 'in-progress' then
        local response = redis.call('HMGET', KEYS[1], 'status', 'headers', 'body')
        return {'replay', response[1], response[2], response[3]}
    end
    if not record[4] or not record[3] or tonumber(record[3]) > now then
        return {'in-progress'}
    end
    if record[5] ~= '1' then
        return {'outcome-unknown', record[4]}
    end
    -- its holder is gone, and sending its calls again is harmless: the key is free
    redis.call('DEL', KEYS[1])
end
redis.call('HSET', KEYS[1], 'state', 'in-progress', 'fingerprint', ARGV[1],
           'lease_until', tostring(now + tonumber(ARGV[2])))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {'new'}
"""

# KEYS: the record. ARGV: fingerprint, the attempt (a line of JSON), "1" if it is idempotent else "0", lifetime in
# milliseconds. Returns 1 if noted.
ATTEMPT_SCRIPT = """
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local record = redis.call('HMGET', KEYS[1], 'state', 'fingerprint', 'lease_until', 'attempts', 'idempotent')
if record[1] ~= 'in-progress' or record[2] ~= ARGV[1] then
    return 0
end
local lease_until = record[3] or tostring(now + redis.call('PTTL', KEYS[1]))
if tonumber(lease_until) <= now then
    return 0
end
local attempts = ARGV[2]
if record[4] then
    attempts = record[4] .. '\\n' .. ARGV[2]
end
local idempotent = '1'
if ARGV[3] ~= '1' or record[5] == '0' then
    idempotent = '0'
end
redis.call('HSET', KEYS[1], 'attempts', attempts, 'idempotent', idempotent, 'lease_until', lease_until)
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then
    redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
return 1
"""

# KEYS: the record. ARGV: fingerprint, lifetime in milliseconds, status, headers, body. Returns 1 if stored.
COMPLETE_SCRIPT = """
local record = redis.call('HMGET', KEYS[1], 'state', 'fingerprint')
if record[1] ~= 'in-progress' or record[2] ~= ARGV[1] then
    return 0
end
redis.call('HSET', KEYS[1], 'state', 'completed', 'status', ARGV[3], 'headers', ARGV[4], 'body', ARGV[5])
redis.call('HDEL', KEYS[1], 'lease_until', 'attempts', 'idempotent')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: the record. ARGV: fingerprint. Returns 1 if the marker was deleted.
ABANDON_SCRIPT = """
local record = redis.call('HMGET', KEYS[1], 'state', 'fingerprint', 'attempts')
if record[1] ~= 'in-progress' or record[2] ~= ARGV[1] or record[3] then
    return 0
end
return redis.call('DEL', KEYS[1])
"""


def milliseconds(seconds: float) -> int:
    """A duration for PEXPIRE: whole milliseconds, rounded up so that no positive duration becomes 0."""
    return max(1, math.ceil(seconds * 1000))


class RedisIdempotencyStore(IdempotencyStore):
    """The records in one Redis, shared by every process of every machine that uses the same URL and prefix."""

    def __init__(self, url: str, *, prefix: str = "gateway:idempotency:", stores: StoreSettings | None = None) -> None:
        self.prefix = prefix
        # [stores] timeouts, so a Redis that stops answering fails a request instead of hanging it; bytes, for the
        # bodies.
        self._redis = redis_client(url, stores, store="idempotency store")
        self._begin_script = self._redis.register_script(BEGIN_SCRIPT)
        self._attempt_script = self._redis.register_script(ATTEMPT_SCRIPT)
        self._complete_script = self._redis.register_script(COMPLETE_SCRIPT)
        self._abandon_script = self._redis.register_script(ABANDON_SCRIPT)

    def _key(self, key: str) -> str:
        """The Redis key of an idempotency key."""
        return self.prefix + key

    def begin(self, key: str, fingerprint: str, *, lease_seconds: float, now: float | None = None) -> Begun:
        """Claim the key for this request (NEW) or say why not: IN_PROGRESS, REPLAY, MISMATCH or OUTCOME_UNKNOWN."""
        check_record(key, fingerprint)
        lease = milliseconds(check_seconds("lease_seconds", lease_seconds))
        reply = self._begin_script(keys=[self._key(key)], args=[fingerprint, lease])
        state = reply[0].decode()
        if state == OUTCOME_UNKNOWN:
            return Begun(OUTCOME_UNKNOWN, attempts=decode_attempts(reply[1]))
        if state != REPLAY:
            return Begun(state)
        status, headers, body = reply[1:]
        return Begun(REPLAY, StoredResponse(int(status), decode_headers(headers), body))

    def attempt(self, key: str, fingerprint: str, attempt: Attempt, *, ttl_seconds: float,
                now: float | None = None) -> bool:
        """Note a call about to be sent on the key's in-progress marker, if it holds this fingerprint and its lease
        runs; the record then lives at least `ttl_seconds`. Whether it was noted (if not, the call must not go)."""
        check_record(key, fingerprint)
        check_attempt(attempt)
        ttl = milliseconds(check_seconds("ttl_seconds", ttl_seconds))
        return self._attempt_script(keys=[self._key(key)], args=[
            fingerprint, encode_attempt(attempt), "1" if attempt.idempotent else "0", ttl]) == 1

    def complete(self, key: str, fingerprint: str, response: StoredResponse, *, ttl_seconds: float,
                 now: float | None = None) -> None:
        """Store the response for `ttl_seconds` if the key's live in-progress marker holds this fingerprint."""
        check_record(key, fingerprint)
        ttl = milliseconds(check_seconds("ttl_seconds", ttl_seconds))
        if not isinstance(response, StoredResponse):
            raise TypeError(f"complete() stores a StoredResponse, not {type(response).__name__}")
        self._complete_script(keys=[self._key(key)], args=[
            fingerprint, ttl, response.status, encode_headers(response.headers), response.body])

    def abandon(self, key: str, fingerprint: str) -> None:
        """Delete the key's in-progress marker if it holds this fingerprint and noted no call, so the key can be
        used afresh."""
        check_record(key, fingerprint)
        self._abandon_script(keys=[self._key(key)], args=[fingerprint])

    def purge_expired(self, now: float | None = None, *, limit: int | None = None) -> int:
        """Nothing to do: Redis deletes expired records by itself."""
        return 0

    def ping(self) -> None:
        """Raise (redis.ConnectionError, redis.TimeoutError, ...) if Redis does not answer."""
        self._redis.ping()

    def close(self) -> None:
        """Close the connection pool."""
        self._redis.close()
