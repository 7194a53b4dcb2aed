"""Recording exchanges without slowing or failing a request: the call hands what it sent and received to a bounded
queue, and a background thread makes the exchange of it (the dry-run view of the request, every part scrubbed)
and writes it to the journal.

So the request pays for queueing its parts, not for masking, scrubbing, encoding and storing them; the thread
does that while the request thread waits on a backend or a client. A full queue drops the exchange and counts it
(`dropped`); an exchange that cannot be made or written is counted too (`failed`) and logged — the request it
belongs to has long been answered. The thread starts with the first exchange a process records, so a forked
gunicorn worker starts its own.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

from gateway import metrics
from gateway.journal import Exchange, ExchangeJournal

log = logging.getLogger("gateway.journal")
QUEUE_SIZE = 1000


@dataclass(frozen=True)
class CallContext:
    """Who asked for the calls being made: the REST layer sets it per request, the recorder reads it."""

    request_id: str
    caller: str


call_context: ContextVar[CallContext | None] = ContextVar("call_context", default=None)


class JournalRecorder:
    """A bounded queue in front of the journal, written by one daemon thread."""

    def __init__(self, journal: ExchangeJournal, *, record_bodies: bool, max_body_bytes: int) -> None:
        self.journal = journal
        self.record_bodies = record_bodies
        self.max_body_bytes = max_body_bytes
        self.dropped = self.failed = self.recorded = 0
        self._queue: queue.Queue[Exchange | Callable[[], Exchange] | None] = queue.Queue(QUEUE_SIZE)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def body_text(self, body: bytes | None) -> str | None:
        """A body as the journal keeps it: text, cut at max_body_bytes, or None when bodies are not kept."""
        if body is None or not self.record_bodies:
            return None
        text = body[:self.max_body_bytes].decode("utf-8", "replace")
        return text + (f"… ({len(body) - self.max_body_bytes} more bytes)" if len(body) > self.max_body_bytes else "")

    def record(self, exchange: Exchange | Callable[[], Exchange]) -> None:
        """Queue an exchange, or a function that makes it on the journal's thread, for writing; never blocks, never
        raises."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._write, name="gateway-journal", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait(exchange)
        except queue.Full:
            self.dropped += 1
            metrics.journal_failures.inc()
            log.warning("the exchange journal's queue is full: an exchange (%s) was not recorded",
                        exchange.id if isinstance(exchange, Exchange) else "not made yet")

    def _write(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            exchange = item if isinstance(item, Exchange) else None
            try:
                exchange = exchange or item()
                self.journal.record(exchange)
                self.recorded += 1
            except Exception:  # a journal that fails must not take anything else with it
                self.failed += 1
                metrics.journal_failures.inc()
                log.exception("the exchange journal could not record exchange %s",
                              exchange.id if exchange is not None else "(it could not be made)")
            finally:
                self._queue.task_done()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued exchange is written (for tests and shutdown); whether it happened in time."""
        done = threading.Event()
        threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True).start()
        return done.wait(timeout)

    def close(self) -> None:
        """Write what is queued, stop the thread and close the journal."""
        if self._thread is not None and self._thread.is_alive():
            self.flush()
            self._queue.put(None)
            self._thread.join(timeout=5)
        self.journal.close()
