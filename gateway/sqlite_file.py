"""One SQLite file shared by the threads and processes of a machine, as every embedded store of the gateway uses
it: a small pool of connections per process (`[stores] sqlite_pool_size`, opened anew in a forked child, which must
not share its parent's), WAL mode so readers carry on while one process writes, a bounded busy wait
(`[stores] sqlite_busy_timeout`), writes that take the write lock up front (BEGIN IMMEDIATE) so no two writers
decide on stale reads, and a schema created once and versioned in user_version.

The pool bounds the descriptors a process holds whatever its thread count (a connection keeps the file and its
WAL open): a thread borrows a connection for one statement or transaction, waiting at most the busy timeout for
one to come back, and a thread that holds one already gets the same one again. Every error raised while a
connection is borrowed names the store (gateway/stores.py), so a busy, full or broken file answers 503.

`SqliteFile` is a mixin: a store calls `_open_file(...)` in its constructor and then uses `_write()`, `_read()`,
`_borrowed()` and `_close_file()`.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config import StoreSettings
from gateway.stores import mark_store

#: how long opening a file waits for another process creating or migrating it (at start-up, not in a request)
OPEN_TIMEOUT_SECONDS = 30.0


class SqliteFile:
    """The connection handling of a store kept in one SQLite file."""

    path: Path
    _what: str
    _synchronous: str

    def _open_file(self, path: str | os.PathLike, *, schema: str, schema_version: int | None, synchronous: str,
                   what: str, migrations: Mapping[int, str] | None = None, pragmas: tuple[str, ...] = (),
                   stores: StoreSettings | None = None) -> None:
        """Open (and if need be create) the file with its schema; `what` names the store in errors.

        A file of an older version gets the statements of `migrations` (version -> SQL) it has not had yet;
        `pragmas` are run on every new connection. `schema_version` None: the schema's statements are idempotent
        (CREATE ... IF NOT EXISTS) and the file's version is another store's to keep.
        """
        stores = stores or StoreSettings()
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._what, self._synchronous, self._pragmas = what, synchronous, pragmas
        self._busy_timeout, self._pool_size = stores.sqlite_busy_timeout, stores.sqlite_pool_size
        # One condition guards the idle connections (the last given back is taken first) and wakes a waiter.
        self._pool_lock = threading.Condition(threading.Lock())
        self._idle: list[sqlite3.Connection] = []
        self._pool_pid, self._pool_opened = os.getpid(), 0
        self._held = threading.local()  # the connection this thread has borrowed, and from which process
        self._connections: list[tuple[int, sqlite3.Connection]] = []  # (opening process id, connection)
        self._closed = False
        # A connection of its own with a long busy wait: another process may be creating the same file right now.
        db = self._new_connection(timeout=OPEN_TIMEOUT_SECONDS)
        try:
            self._use_wal(db)
            db.execute("BEGIN IMMEDIATE")
            try:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if schema_version is None or version < schema_version:
                    for statement in schema.split(";"):
                        if statement.strip():
                            db.execute(statement)
                if schema_version is not None and version < schema_version:
                    # The schema is of its first version; a file made now gets every migration, an older one
                    # the ones it lacks.
                    for target in range(max(version, 1) + 1, schema_version + 1):
                        db.execute((migrations or {})[target])
                    db.execute(f"PRAGMA user_version = {schema_version}")
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        finally:
            db.close()

    def _use_wal(self, db: sqlite3.Connection) -> None:
        """Put the file in WAL mode (kept in the file), so readers carry on while one process writes."""
        deadline = time.monotonic() + OPEN_TIMEOUT_SECONDS
        while True:
            # Switching the journal mode does not wait for the busy timeout, and it fails (or quietly keeps the
            # old mode) while another process is creating the same file; so wait here instead.
            try:
                if db.execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal":
                    return
            except sqlite3.OperationalError as error:
                if error.sqlite_errorname not in ("SQLITE_BUSY", "SQLITE_LOCKED") or time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise sqlite3.OperationalError(f"{self.path}: could not switch to WAL mode")
            time.sleep(0.01)

    def _new_connection(self, timeout: float) -> sqlite3.Connection:
        """A new connection to the file (isolation_level None: transactions are begun explicitly)."""
        connection = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            connection.row_factory = sqlite3.Row
            connection.execute(f"PRAGMA synchronous = {self._synchronous}")
            for pragma in self._pragmas:
                connection.execute(f"PRAGMA {pragma}")
        except BaseException:
            connection.close()
            raise
        return connection

    def _take(self) -> sqlite3.Connection:
        """A connection of this process's pool: an idle one, a new one while fewer than the pool size are open, or
        the first given back within the busy timeout."""
        if self._closed:
            raise RuntimeError(f"the {self._what} is closed")
        with self._pool_lock:
            if self._pool_pid != os.getpid():  # a forked child: its parent's connections are not its own
                self._idle, self._pool_pid, self._pool_opened = [], os.getpid(), 0
            if self._idle:
                return self._idle.pop()
            opening = self._pool_opened < self._pool_size
            if opening:
                self._pool_opened += 1
            elif not self._pool_lock.wait_for(lambda: self._idle, timeout=self._busy_timeout):
                raise sqlite3.OperationalError(f"all {self._pool_size} connections to the {self._what} stayed in "
                                               f"use for {self._busy_timeout:g} s")
            else:
                return self._idle.pop()
        try:
            connection = self._new_connection(timeout=self._busy_timeout)
        except BaseException:
            with self._pool_lock:
                self._pool_opened -= 1
            raise
        with self._pool_lock:
            self._connections.append((os.getpid(), connection))
        return connection

    def _give_back(self, connection: sqlite3.Connection) -> None:
        """Return a borrowed connection to its pool (never one with a transaction left open)."""
        try:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
        except sqlite3.Error:  # closed under it (the store closing) or broken: it is not reused
            return
        with self._pool_lock:
            if self._pool_pid == os.getpid() and not self._closed:
                self._idle.append(connection)
                self._pool_lock.notify()

    @contextmanager
    def _borrowed(self) -> Iterator[sqlite3.Connection]:
        """A connection of the pool for the block: the one this thread holds already, if it holds one."""
        held = getattr(self._held, "connection", None)
        if held is not None and self._held.pid == os.getpid():
            yield held
            return
        try:
            connection = self._take()
        except (sqlite3.Error, OSError) as error:
            mark_store(error, self._what)
            raise
        self._held.connection, self._held.pid = connection, os.getpid()
        try:
            yield connection
        except (sqlite3.Error, OSError) as error:
            mark_store(error, self._what)
            raise
        finally:
            self._held.connection = None
            self._give_back(connection)

    @contextmanager
    def _write(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the write lock up front, so no two writers ever decide on stale reads.
        `durable`: its commit is synced to disk (`synchronous = FULL`, which also syncs the commits before it) in a
        file whose commits otherwise are not: for what must survive a power cut."""
        with self._borrowed() as db:
            sync = durable and self._synchronous != "FULL"
            if sync:  # outside a transaction: SQLite changes the level only there
                db.execute("PRAGMA synchronous = FULL")
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                    db.execute("COMMIT")
                except BaseException:
                    # Also after a failed COMMIT: an open transaction would make the connection's next BEGIN fail.
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            finally:
                if sync:
                    db.execute(f"PRAGMA synchronous = {self._synchronous}")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot for several SELECTs."""
        with self._borrowed() as db:
            db.execute("BEGIN")
            try:
                yield db
            finally:
                db.execute("COMMIT")

    def _close_file(self) -> None:
        """Close every connection this process opened; the store cannot be used afterwards."""
        self._closed = True
        with self._pool_lock:
            connections, self._connections = self._connections, []
        for pid, connection in connections:
            # A connection inherited through fork belongs to the parent, which may still be using the file.
            if pid == os.getpid():
                connection.close()


#: a batch's wait beyond the busy timeouts (for the fsync of its commit)
GROUP_COMMIT_SLACK_SECONDS = 5.0
#: the most writes one commit takes, and the most a process lets wait for one (beyond: a fast store failure)
GROUP_COMMIT_BATCH = 64
GROUP_COMMIT_QUEUE = 1024


@dataclass(eq=False)
class _Waiting:
    """One write waiting for its commit: its outcome, once done, or the turn to lead the next commit."""

    work: Any
    done: threading.Event = field(default_factory=threading.Event)
    leads: bool = False
    outcome: Any = None


class GroupCommit:
    """Many threads' writes, one commit: the writes that arrive while a commit runs wait and go together in the
    next, so concurrent writers share one fsync; each caller returns (or raises) only once its own write's
    outcome is known, i.e. once it is committed.

    No thread of its own: the first writer to find no commit running leads one (of at most `batch` writes,
    its own first); when it is done, it hands the lead to the oldest write still waiting. `commit_batch(works)`
    returns one outcome per work, a result or an exception to raise. At most `queue` writes wait; one that
    waits longer than `wait_seconds` fails (its write may still be committed: it is never acknowledged
    unstored, only possibly stored unacknowledged, which a retry's dedupe resolves). Both failures are store
    failures (sqlite3.OperationalError naming the store).
    """

    def __init__(self, commit_batch: Callable[[list[Any]], list[Any]], *, what: str, wait_seconds: float,
                 batch: int = GROUP_COMMIT_BATCH, queue: int = GROUP_COMMIT_QUEUE) -> None:
        self._commit_batch, self._what, self._wait_seconds = commit_batch, what, wait_seconds
        self._batch, self._queue = batch, queue
        self._lock = threading.Lock()
        self._waiting: list[_Waiting] = []
        self._leading = False
        self.commits = 0  # how many batches were committed (or tried): what the grouping saves shows here

    def submit(self, work: Any) -> Any:
        """Run `work` in the next commit and return its outcome (raise it, if it is an exception)."""
        entry = _Waiting(work)
        with self._lock:
            if len(self._waiting) >= self._queue:
                raise mark_store(sqlite3.OperationalError(
                    f"{self._queue} writes to the {self._what} are waiting already"), self._what)
            self._waiting.append(entry)
            if not self._leading:
                self._leading = entry.leads = True
        if not entry.leads:
            self._wait(entry)
        if entry.leads:
            self._lead()
        if isinstance(entry.outcome, BaseException):
            raise entry.outcome
        return entry.outcome

    def _wait(self, entry: _Waiting) -> None:
        """Wait for the entry's outcome or its turn to lead, at most wait_seconds."""
        if entry.done.wait(self._wait_seconds):
            return
        with self._lock:
            if entry.done.is_set():  # done (or handed the lead) just now
                return
            if entry in self._waiting:  # not taken into a commit yet: withdrawn, never written
                self._waiting.remove(entry)
        entry.outcome = mark_store(sqlite3.OperationalError(
            f"a write to the {self._what} waited {self._wait_seconds:g} s for its commit"), self._what)

    def _lead(self) -> None:
        """Commit one batch (the leader's write first), give each its outcome, and pass the lead on."""
        with self._lock:
            batch, self._waiting = self._waiting[:self._batch], self._waiting[self._batch:]
        try:
            outcomes = self._commit_batch([entry.work for entry in batch])
        except BaseException as error:
            outcomes = [error] * len(batch)
            raise
        finally:
            self.commits += 1
            for entry, outcome in zip(batch, outcomes, strict=True):
                entry.outcome = outcome
                entry.done.set()
            with self._lock:
                if self._waiting:
                    successor = self._waiting[0]
                    successor.leads = True
                    successor.done.set()
                else:
                    self._leading = False
