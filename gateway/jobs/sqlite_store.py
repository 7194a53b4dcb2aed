"""Update jobs in one SQLite file (WAL), shared by the threads and processes of one machine.

One row per job: what never changes once accepted is one JSON column (`fixed`), the rest are columns the queries
use. `job_orders` lists each job's order ids for GET /updates?order_id=. A lane's head is found through a partial
index of the active jobs by lane and sequence, so the cost of finding it does not grow with the finished ones.

Every commit is synced to disk (`synchronous = FULL`): a 202 promises the job is kept, and a job's state decides
whether a call is sent (again). Concurrent add_jobs() calls of one process share a commit (GroupCommit, as the event
store's webhooks do), so a burst of asynchronous updates does not queue for one fsync each.
"""

# ruff: noqa: S608 - the SQL below joins fixed fragments and placeholders only, never a value
from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from gateway.config import StoreSettings
from gateway.jobs.base import (
    ACTIVE_COUNT_LIMIT,
    ACTIVE_STATES,
    DEAD,
    DONE,
    FAILED,
    FINAL_STATES,
    QUEUED,
    SENDING,
    JobStore,
    JobStoreError,
    NewJob,
    check_attempt,
    check_new_job,
    check_state,
    encode,
    kept_attempts,
    timestamp,
)
from gateway.sqlite_file import GROUP_COMMIT_SLACK_SECONDS, GroupCommit, SqliteFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,  -- the acceptance order (a retried job gets a new one)
    id              TEXT NOT NULL UNIQUE,
    lane            TEXT NOT NULL,
    connection      TEXT NOT NULL,
    request_id      TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('queued', 'sending', 'done', 'failed', 'dead')),
    fixed           TEXT NOT NULL,   -- JSON: the job as accepted
    accepted_at     REAL NOT NULL,
    updated_at      REAL NOT NULL,
    next_attempt_at REAL,
    lease_owner     TEXT,
    lease_until     REAL,
    exchange_id     TEXT,
    attempts        TEXT NOT NULL,   -- JSON list, the newest MAX_KEPT_ATTEMPTS
    attempt_count   INTEGER NOT NULL,
    result          TEXT,            -- JSON, once final
    finished_at     REAL,
    finishes        INTEGER NOT NULL,
    announced       INTEGER NOT NULL,
    dedupe_key      TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS jobs_active_by_lane ON jobs (lane, seq) WHERE state IN ('queued', 'sending');
CREATE INDEX IF NOT EXISTS jobs_by_connection ON jobs (connection, state, seq);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_by_request ON jobs (request_id, seq);
CREATE INDEX IF NOT EXISTS jobs_by_finish ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS job_orders (
    order_id TEXT NOT NULL,
    job_id   TEXT NOT NULL,
    PRIMARY KEY (order_id, job_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS job_orders_by_job ON job_orders (job_id);
"""
SCHEMA_VERSION = 1
_COLUMNS = ("seq, id, lane, connection, state, fixed, accepted_at, updated_at, next_attempt_at, lease_owner, "
            "lease_until, exchange_id, attempts, attempt_count, result, finished_at, finishes, announced")
_ACTIVE = "state IN ('queued', 'sending')"


def _job(row: sqlite3.Row) -> dict:
    fixed = json.loads(row["fixed"])
    return {
        "id": row["id"], "seq": row["seq"], "lane": row["lane"], "connection": row["connection"],
        "backend": fixed["backend"], "operation": fixed["operation"], "order_ids": fixed["order_ids"],
        "items": fixed["items"], "idempotent": fixed["idempotent"], "kind": fixed["kind"],
        "caller": fixed["caller"], "request_id": fixed["request_id"], "trace_context": fixed["trace_context"],
        "state": row["state"], "accepted_at": row["accepted_at"], "updated_at": row["updated_at"],
        "next_attempt_at": row["next_attempt_at"], "lease_owner": row["lease_owner"],
        "lease_until": row["lease_until"], "exchange_id": row["exchange_id"],
        "attempts": json.loads(row["attempts"]), "attempt_count": row["attempt_count"],
        "result": None if row["result"] is None else json.loads(row["result"]),
        "finished_at": row["finished_at"], "finishes": row["finishes"], "announced": row["announced"],
    }


class SqliteJobStore(SqliteFile, JobStore):
    """The jobs in one SQLite file, used by threads through a small pool of connections and by processes."""

    def __init__(self, path: str | os.PathLike, *, stores: StoreSettings | None = None) -> None:
        self._open_file(path, schema=SCHEMA, schema_version=SCHEMA_VERSION, synchronous="FULL",
                        what="update job store", stores=stores)
        # A batch waits for at most the pool and the write lock, then its commit; a retry one by one as long again.
        self._group_commit = GroupCommit(self._add_batches, what=self._what,
                                         wait_seconds=4 * self._busy_timeout + GROUP_COMMIT_SLACK_SECONDS)

    @staticmethod
    def _fetch(db: sqlite3.Connection, job_id: str) -> dict | None:
        row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def add_jobs(self, jobs: Sequence[NewJob], *, now: float | None = None) -> list[dict]:
        """Insert each job (or find the one stored under its dedupe key), all or none; returns once they are
        committed to disk, in one transaction with whatever other threads of this process added meanwhile
        (GroupCommit: concurrent requests share one fsync)."""
        checked = [(job, check_new_job(job)) for job in jobs]
        return self._group_commit.submit((checked, timestamp(now)))

    def _add_batches(self, works: Sequence[tuple[list[tuple[NewJob, str]], float]]) -> list[list[dict] | BaseException]:
        """Store the jobs of several add_jobs calls in one transaction, each call's all or none (a savepoint
        each); should the transaction fail, each call is tried again in one of its own."""
        try:
            with self._write() as db:
                outcomes: list[list[dict] | BaseException] = []
                for checked, now in works:
                    db.execute("SAVEPOINT add_jobs")
                    try:
                        outcomes.append([self._insert_job(db, job, fixed, now) for job, fixed in checked])
                    except JobStoreError as error:  # this call's jobs are rolled back: the others stand
                        db.execute("ROLLBACK TO add_jobs")
                        outcomes.append(error)
                    db.execute("RELEASE add_jobs")
            return outcomes
        except Exception as error:
            if len(works) == 1:
                return [error]
        return [self._add_batches([work])[0] for work in works]

    def _insert_job(self, db: sqlite3.Connection, job: NewJob, fixed: str, now: float) -> dict:
        """Insert one job in the open transaction, or find the one stored under its dedupe key."""
        if job.dedupe_key is not None:
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE dedupe_key = ?", (job.dedupe_key,)).fetchone()
            if row is not None:
                return _job(row)
        # A caller's mistake, not the file's: refused like any job the store cannot keep (the call's jobs are
        # rolled back), rather than as the UNIQUE constraint's IntegrityError.
        if db.execute("SELECT 1 FROM jobs WHERE id = ?", (job.id,)).fetchone() is not None:
            raise JobStoreError(f"a job with id {job.id!r} is already stored")
        db.execute(
            "INSERT INTO jobs (id, lane, connection, request_id, state, fixed, accepted_at, updated_at, "
            "attempts, attempt_count, finishes, announced, dedupe_key) "
            "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, '[]', 0, 0, 0, ?)",
            (job.id, job.lane, job.connection, job.request_id, fixed, now, now, job.dedupe_key))
        db.executemany("INSERT OR IGNORE INTO job_orders (order_id, job_id) VALUES (?, ?)",
                       [(order_id, job.id) for order_id in job.order_ids])
        return self._fetch(db, job.id)

    def get_job(self, job_id: str) -> dict | None:
        """The job by id."""
        with self._borrowed() as db:
            return self._fetch(db, job_id)

    def list_jobs(self, *, connections: Collection[str] | None = None, connection: str | None = None,
                  order_id: str | None = None, state: str | None = None, request_id: str | None = None,
                  limit: int = 100, before: str | None = None) -> list[dict]:
        """One SELECT with every filter given, newest first."""
        check_state(state)
        if connections is not None and not connections:
            return []
        where, args = [], []
        if connections is not None:
            where.append(f"connection IN ({', '.join('?' * len(connections))})")
            args.extend(sorted(connections))
        for column, value in (("connection", connection), ("state", state), ("request_id", request_id)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if order_id is not None:
            where.append("id IN (SELECT job_id FROM job_orders WHERE order_id = ?)")
            args.append(order_id)
        with self._read() as db:
            if before is not None:
                cursor = db.execute("SELECT seq, connection FROM jobs WHERE id = ?", (before,)).fetchone()
                if cursor is None or (connections is not None and cursor["connection"] not in connections):
                    return []
                where.append("seq < ?")
                args.append(cursor["seq"])
            sql = f"SELECT {_COLUMNS} FROM jobs"
            if where:
                sql += " WHERE " + " AND ".join(where)
            rows = db.execute(sql + " ORDER BY seq DESC LIMIT ?", (*args, max(int(limit), 0))).fetchall()
        return [_job(row) for row in rows]

    def active_lanes(self) -> list[str]:
        """The lanes the partial index of active jobs holds."""
        with self._borrowed() as db:
            return [row[0] for row in db.execute(f"SELECT DISTINCT lane FROM jobs WHERE {_ACTIVE} ORDER BY lane")]

    def lane_head(self, lane: str) -> dict | None:
        """The lane's active job with the lowest sequence."""
        with self._borrowed() as db:
            row = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE lane = ? AND {_ACTIVE} ORDER BY seq LIMIT 1",
                             (lane,)).fetchone()
        return None if row is None else _job(row)

    def claim(self, job_id: str, owner: str, *, lease_seconds: float, now: float | None = None) -> dict | None:
        """Check the job heads its lane and is claimable, then take it, in one immediate transaction."""
        now = timestamp(now)
        with self._write() as db:
            job = self._fetch(db, job_id)
            if job is None or job["state"] not in ACTIVE_STATES:
                return None
            head = db.execute(f"SELECT id FROM jobs WHERE lane = ? AND {_ACTIVE} ORDER BY seq LIMIT 1",
                              (job["lane"],)).fetchone()
            if head is None or head["id"] != job_id:
                return None
            if job["state"] == SENDING and job["lease_owner"] != owner and (job["lease_until"] or 0) > now:
                return None
            db.execute("UPDATE jobs SET state = 'sending', lease_owner = ?, lease_until = ?, exchange_id = NULL, "
                       "updated_at = ? WHERE id = ?", (owner, now + lease_seconds, now, job_id))
        return job

    def note_exchange(self, job_id: str, owner: str, exchange_id: str, *, now: float | None = None) -> bool:
        """Set the exchange id on the owner's sending job; synced like every commit of this file."""
        with self._write() as db:
            changed = db.execute("UPDATE jobs SET exchange_id = ?, updated_at = ? WHERE id = ? AND state = "
                                 "'sending' AND lease_owner = ?", (exchange_id, timestamp(now), job_id, owner))
            return changed.rowcount == 1

    def release(self, job_id: str, owner: str, *, state: str, attempt: Mapping[str, Any] | None = None,
                result: Mapping[str, Any] | None = None, next_attempt_at: float | None = None,
                now: float | None = None) -> bool:
        """Update the owner's sending job to its next state, in one immediate transaction."""
        check_state(state, (QUEUED, DONE, FAILED, DEAD))
        now, new = timestamp(now), check_attempt(attempt)
        with self._write() as db:
            row = db.execute("SELECT attempts, attempt_count, finishes FROM jobs WHERE id = ? AND state = "
                             "'sending' AND lease_owner = ?", (job_id, owner)).fetchone()
            if row is None:
                return False
            attempts = kept_attempts(json.loads(row["attempts"]), new)
            final = state in FINAL_STATES
            db.execute(
                "UPDATE jobs SET state = ?, lease_owner = NULL, lease_until = NULL, exchange_id = NULL, "
                "next_attempt_at = ?, attempts = ?, attempt_count = ?, result = ?, finished_at = ?, finishes = ?, "
                "updated_at = ? WHERE id = ?",
                (state, None if final else next_attempt_at, encode(attempts),
                 row["attempt_count"] + (new is not None), encode(dict(result)) if final and result else None,
                 now if final else None, row["finishes"] + final, now, job_id))
            return True

    def retry(self, job_id: str, *, requested_by: str = "", now: float | None = None) -> tuple[dict, bool] | None:
        """Give a failed or dead job the next sequence and queue it again."""
        now = timestamp(now)
        with self._write() as db:
            job = self._fetch(db, job_id)
            if job is None:
                return None
            if job["state"] not in (FAILED, DEAD):
                return job, False
            attempts = kept_attempts(job["attempts"], {"at": now, "outcome": "retry", "requested_by": requested_by})
            # The next number AUTOINCREMENT would hand out (above any ever used, a purged job's too), taken here,
            # so the next job stays behind this one
            seq = db.execute("SELECT max((SELECT coalesce(max(seq), 0) FROM jobs), "
                             "(SELECT coalesce(max(seq), 0) FROM sqlite_sequence WHERE name = 'jobs')) + 1"
                             ).fetchone()[0]
            db.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'jobs'", (seq,))
            db.execute("UPDATE jobs SET seq = ?, state = 'queued', next_attempt_at = NULL, result = NULL, "
                       "finished_at = NULL, attempts = ?, attempt_count = attempt_count + 1, updated_at = ? "
                       "WHERE id = ?", (seq, encode(attempts), now, job_id))
            return self._fetch(db, job_id), True

    def unannounced(self, *, finished_by: float, limit: int = 100) -> list[dict]:
        """Final jobs whose last finish was not announced, by finish time."""
        with self._borrowed() as db:
            rows = db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE finished_at IS NOT NULL AND finished_at <= ? "
                              "AND announced < finishes ORDER BY finished_at LIMIT ?",
                              (finished_by, max(int(limit), 0))).fetchall()
        return [_job(row) for row in rows]

    def mark_announced(self, job_id: str, finish: int) -> None:
        """Raise the job's announced finish number to `finish`."""
        with self._write() as db:
            db.execute("UPDATE jobs SET announced = max(announced, ?) WHERE id = ?", (int(finish), job_id))

    def active_summary(self, *, limit: int = ACTIVE_COUNT_LIMIT) -> dict[str, tuple[int, float]]:
        """Per connection with active jobs, a bounded count and the oldest acceptance."""
        summary: dict[str, tuple[int, float]] = {}
        with self._read() as db:
            oldest = db.execute(f"SELECT connection, min(accepted_at) FROM jobs WHERE {_ACTIVE} "
                                "GROUP BY connection").fetchall()
            for connection, accepted_at in oldest:
                count = db.execute(f"SELECT count(*) FROM (SELECT 1 FROM jobs WHERE connection = ? AND {_ACTIVE} "
                                   "LIMIT ?)", (connection, limit)).fetchone()[0]
                summary[connection] = (count, accepted_at)
        return summary

    def purge_finished(self, *, finished_by: float, limit: int) -> int:
        """Delete the oldest finished jobs and their order index rows."""
        with self._write() as db:
            ids = [row[0] for row in db.execute(
                "SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at <= ? AND state IN "
                "('done', 'failed', 'dead') ORDER BY finished_at LIMIT ?", (finished_by, max(int(limit), 0)))]
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ", ".join("?" * len(chunk))
                db.execute(f"DELETE FROM job_orders WHERE job_id IN ({marks})", chunk)
                db.execute(f"DELETE FROM jobs WHERE id IN ({marks})", chunk)
        return len(ids)

    def close(self) -> None:
        """Close the connections."""
        self._close_file()
