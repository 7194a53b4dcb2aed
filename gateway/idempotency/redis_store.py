"""Idempotency-Key records in Redis, for deployments where several machines share one Redis; behaves like SQLite.

One hash per key, under one prefix (default "gateway:idempotency:"):

    <key>   hash   state ("in-progress" or "completed"), fingerprint, and once completed status, headers (JSON
                   [[name, value], ...]) and body (the bytes as sent)

Redis expires each hash by itself (PEXPIRE): an in-progress one when its lease is over, a completed one at the
end of its life; so lease and lifetime run on the Redis server's clock, whatever the machines' clocks say, and
the `now` arguments, which exist for the SQLite store's tests, are ignored here. Every operation is one Lua
script on one key, so it is atomic (and would work on a Redis Cluster).
"""

from __future__ import annotations

import math

import redis

from gateway.idempotency import (
    REPLAY,
    Begun,
    IdempotencyStore,
    StoredResponse,
    check_record,
    check_seconds,
    decode_headers,
    encode_headers,
)

# The scripts spell out the states: "in-progress" and "completed" as stored, and begin()'s answers.

# KEYS: the record. ARGV: fingerprint, lease in milliseconds.
# Returns {"new"}, {"in-progress"}, {"mismatch"} or {"replay", status, headers, body}.
BEGIN_SCRIPT = """
local record = redis.call('HMGET', KEYS[1], 'state', 'fingerprint')
if not record[1] then
    redis.call('HSET', KEYS[1], 'state', 'in-progress', 'fingerprint', ARGV[1])
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {'new'}
end
if record[2] ~= ARGV[1] then
    return {'mismatch'}
end
if record[1] == 'in-progress' then
    return {'in-progress'}
end
local response = redis.call('HMGET', KEYS[1], 'status', 'headers', 'body')
return {'replay', response[1], response[2], response[3]}
"""

# KEYS: the record. ARGV: fingerprint, lifetime in milliseconds, status, headers, body. Returns 1 if stored.
COMPLETE_SCRIPT = """
local record = redis.call('HMGET', KEYS[1], 'state', 'fingerprint')
if record[1] ~= 'in-progress' or record[2] ~= ARGV[1] then
    return 0
end
redis.call('HSET', KEYS[1], 'state', 'completed', 'status', ARGV[3], 'headers', ARGV[4], 'body', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: the record. ARGV: fingerprint. Returns 1 if the marker was deleted.
ABANDON_SCRIPT = """
local record = redis.call('HMGET', KEYS[1], 'state', 'fingerprint')
if record[1] ~= 'in-progress' or record[2] ~= ARGV[1] then
    return 0
end
return redis.call('DEL', KEYS[1])
"""


def milliseconds(seconds: float) -> int:
    """A duration for PEXPIRE: whole milliseconds, rounded up so that no positive duration becomes 0."""
    return max(1, math.ceil(seconds * 1000))


class RedisIdempotencyStore(IdempotencyStore):
    """The records in one Redis, shared by every process of every machine that uses the same URL and prefix."""

    def __init__(self, url: str, *, prefix: str = "gateway:idempotency:") -> None:
        self.prefix = prefix
        # Timeouts, so a Redis that stops answering fails a request instead of hanging it; bytes, for the bodies.
        self._redis = redis.Redis.from_url(url, decode_responses=False, socket_connect_timeout=5, socket_timeout=30)
        self._begin_script = self._redis.register_script(BEGIN_SCRIPT)
        self._complete_script = self._redis.register_script(COMPLETE_SCRIPT)
        self._abandon_script = self._redis.register_script(ABANDON_SCRIPT)

    def _key(self, key: str) -> str:
        """The Redis key of an idempotency key."""
        return self.prefix + key

    def begin(self, key: str, fingerprint: str, *, lease_seconds: float, now: float | None = None) -> Begun:
        """Claim the key for this request (NEW) or say why not: IN_PROGRESS, REPLAY or MISMATCH."""
        check_record(key, fingerprint)
        lease = milliseconds(check_seconds("lease_seconds", lease_seconds))
        reply = self._begin_script(keys=[self._key(key)], args=[fingerprint, lease])
        state = reply[0].decode()
        if state != REPLAY:
            return Begun(state)
        status, headers, body = reply[1:]
        return Begun(REPLAY, StoredResponse(int(status), decode_headers(headers), body))

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
        """Delete the key's in-progress marker if it holds this fingerprint, so the key can be used afresh."""
        check_record(key, fingerprint)
        self._abandon_script(keys=[self._key(key)], args=[fingerprint])

    def purge_expired(self, now: float | None = None) -> int:
        """Nothing to do: Redis deletes expired records by itself."""
        return 0

    def ping(self) -> None:
        """Raise (redis.ConnectionError, redis.TimeoutError, ...) if Redis does not answer."""
        self._redis.ping()

    def close(self) -> None:
        """Close the connection pool."""
        self._redis.close()
