"""One SQLite file shared by the threads and processes of a machine, as every embedded store of the gateway uses
it: a connection per thread (opened again in a forked child, which must not share its parent's), WAL mode so
readers carry on while one process writes, a busy timeout, writes that take the write lock up front (BEGIN
IMMEDIATE) so no two writers decide on stale reads, and a schema created once and versioned in user_version.

`SqliteFile` is a mixin: a store calls `_open_file(...)` in its constructor and then uses `_connection()`,
`_write()`, `_read()` and `_close_file()`.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

#: how long a writer waits for another process's write to finish before giving up
BUSY_TIMEOUT_SECONDS = 30.0


class SqliteFile:
    """The connection handling of a store kept in one SQLite file."""

    path: Path
    _what: str
    _synchronous: str

    def _open_file(self, path: str | os.PathLike, *, schema: str, schema_version: int, synchronous: str,
                   what: str, migrations: Mapping[int, str] | None = None, pragmas: tuple[str, ...] = ()) -> None:
        """Open (and if need be create) the file with its schema; `what` names the store in errors.

        A file of an older version gets the statements of `migrations` (version -> SQL) it has not had yet;
        `pragmas` are run on every new connection.
        """
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._what, self._synchronous, self._pragmas = what, synchronous, pragmas
        self._local = threading.local()
        self._connections: list[tuple[int, sqlite3.Connection]] = []  # (opening process id, connection)
        self._connections_lock = threading.Lock()
        self._closed = False
        try:
            self._use_wal()
            with self._write() as db:
                version = db.execute("PRAGMA user_version").fetchone()[0]
                if version < schema_version:
                    for statement in schema.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    # The schema is of its first version; a file made now gets every migration, an older one
                    # the ones it lacks.
                    for target in range(max(version, 1) + 1, schema_version + 1):
                        db.execute((migrations or {})[target])
                    db.execute(f"PRAGMA user_version = {schema_version}")
        except BaseException:
            self._close_file()
            raise

    def _use_wal(self) -> None:
        """Put the file in WAL mode (kept in the file), so readers carry on while one process writes."""
        deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
        while True:
            # Switching the journal mode does not wait for the busy timeout, and it fails (or quietly keeps the
            # old mode) while another process is creating the same file; so wait here instead.
            try:
                if self._connection().execute("PRAGMA journal_mode = WAL").fetchone()[0] == "wal":
                    return
            except sqlite3.OperationalError as error:
                if error.sqlite_errorname not in ("SQLITE_BUSY", "SQLITE_LOCKED") or time.monotonic() > deadline:
                    raise
            if time.monotonic() > deadline:
                raise sqlite3.OperationalError(f"{self.path}: could not switch to WAL mode")
            time.sleep(0.01)

    def _connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use (and again in a forked child, which must not share it)."""
        if self._closed:
            raise RuntimeError(f"the {self._what} is closed")
        connection = getattr(self._local, "connection", None)
        if connection is None or self._local.pid != os.getpid():
            # isolation_level=None: transactions are begun explicitly, writes with BEGIN IMMEDIATE.
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None,
                                         check_same_thread=False)
            connection.row_factory = sqlite3.Row
            connection.execute(f"PRAGMA synchronous = {self._synchronous}")
            for pragma in self._pragmas:
                connection.execute(f"PRAGMA {pragma}")
            self._local.connection, self._local.pid = connection, os.getpid()
            with self._connections_lock:
                self._connections.append((os.getpid(), connection))
        return connection

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the write lock up front, so no two writers ever decide on stale reads."""
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            # Also after a failed COMMIT: an open transaction would make this thread's next BEGIN fail.
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: one consistent snapshot for several SELECTs."""
        db = self._connection()
        db.execute("BEGIN")
        try:
            yield db
        finally:
            db.execute("COMMIT")

    def _close_file(self) -> None:
        """Close every connection this process opened; the store cannot be used afterwards."""
        self._closed = True
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for pid, connection in connections:
            # A connection inherited through fork belongs to the parent, which may still be using the file.
            if pid == os.getpid():
                connection.close()
