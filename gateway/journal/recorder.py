"""Recording exchanges without slowing or failing a request: the call hands what it sent and received to a bounded
queue, and a background thread makes the exchange of it (the dry-run view of the request, every part scrubbed)
and writes it to the journal.

So the request pays for queueing its parts, not for masking, scrubbing, encoding and storing them; the thread
does that while the request thread waits on a backend or a client. Queueing never wakes the thread while it
lingers for more: it waits for a batch's first exchange on the queue and for the rest on an event only a flush or
close sets, so a batch costs one thread wake-up, not one per exchange. A full queue drops the exchange and counts
it (`dropped`); an exchange that cannot be made or written is counted too (`failed`) and logged — the request it
belongs to has long been answered. The thread starts with the first exchange a process records, so a forked
gunicorn worker starts its own; it is a daemon, so a worker that stops writes what is queued in `close()`, which
config/gunicorn.py's worker_exit calls.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from gateway import metrics
from gateway.bookkeeping import log_failure
from gateway.journal.base import Exchange, ExchangeJournal

log = logging.getLogger("gateway.journal")
QUEUE_SIZE = 1000
#: exchanges written in one transaction at most, when that many are waiting
BATCH_SIZE = 100
#: how long the writer waits for more exchanges to write with the one it has: a batch of ten costs about half as
#: much per exchange as ten single writes (bench section 2's live profile finds the writer's thread busy)
LINGER_SECONDS = 0.05
#: queued by flush(): write what is there now
_WRITE_NOW: Any = object()


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
        self._closed = False
        #: set by flush() and close(): the writer stops lingering and writes what is queued
        self._hurry = threading.Event()

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
            closed = self._closed
            if not closed and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._write, name="gateway-journal", daemon=True)
                self._thread.start()
        if closed:  # a request that outlived its worker's shutdown: nothing writes any more
            self.dropped += 1
            metrics.journal_failures.inc()
            log.warning("the exchange journal is closed: an exchange (%s) was not recorded",
                        exchange.id if isinstance(exchange, Exchange) else "not made yet")
            return
        try:
            self._queue.put_nowait(exchange)
        except queue.Full:
            self.dropped += 1
            metrics.journal_failures.inc()
            log.warning("the exchange journal's queue is full: an exchange (%s) was not recorded",
                        exchange.id if isinstance(exchange, Exchange) else "not made yet")

    def _write(self) -> None:
        while True:
            items = [self._queue.get()]
            # What queues up within LINGER_SECONDS is written with it, in one transaction (up to BATCH_SIZE); a
            # flush or close ends the wait. The writer lingers on `_hurry`, not on the queue: a queue.get with a
            # timeout would be woken by every exchange queued meanwhile, a thread switch per request.
            self._take_waiting(items)
            if not self._batch_ends(items):
                self._hurry.wait(LINGER_SECONDS)
                self._hurry.clear()  # (before taking: what a flush queued after its set is taken now or next)
                self._take_waiting(items)
            stop = items[-1] is None
            try:
                self._write_batch([item for item in items if item is not None and item is not _WRITE_NOW])
            finally:
                for _ in items:
                    self._queue.task_done()
            if stop:
                return

    @staticmethod
    def _batch_ends(items: list) -> bool:
        """Whether the batch is full, or ends at a flush's or close's marker."""
        return items[-1] is None or items[-1] is _WRITE_NOW or len(items) >= BATCH_SIZE

    def _take_waiting(self, items: list) -> None:
        """Add what is queued now to the batch, up to its end."""
        while not self._batch_ends(items):
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return

    def _write_batch(self, items: list[Exchange | Callable[[], Exchange]]) -> None:
        """Make the exchanges and write them together; if that fails, one at a time, so only the failing ones are
        lost (and counted)."""
        exchanges = [exchange for exchange in map(self._made, items) if exchange is not None]
        if not exchanges:
            return
        try:
            self.journal.record_many(exchanges)
            self.recorded += len(exchanges)
            return
        except Exception:  # each one is tried again below, where a failure is counted and logged
            if len(exchanges) == 1:
                self._count_failure(exchanges[0].id)
                return
        for exchange in exchanges:
            try:
                self.journal.record(exchange)
                self.recorded += 1
            except Exception:  # a journal that fails must not take anything else with it
                self._count_failure(exchange.id)

    def _made(self, item: Exchange | Callable[[], Exchange]) -> Exchange | None:
        """The exchange of a queued item (made now if it is a function); None, counted, if it cannot be made."""
        if isinstance(item, Exchange):
            return item
        try:
            return item()
        except Exception:
            self._count_failure("(it could not be made)")
            return None

    def _count_failure(self, exchange_id: str) -> None:
        """Count and log (the exception being handled: a store's in one line, anything else with its traceback) an
        exchange that was not recorded."""
        self.failed += 1
        metrics.journal_failures.inc()
        log_failure(sys.exc_info()[1], "the exchange journal could not record exchange %s", exchange_id, logger=log)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued exchange is written (for readers of the journal, tests and shutdown), without the
        writer's linger; whether it happened in time."""
        with self._lock:
            writing = self._thread is not None and self._thread.is_alive()
        if writing:  # (without a writer nothing is queued)
            with contextlib.suppress(queue.Full):  # a full queue is written at once anyway
                self._queue.put_nowait(_WRITE_NOW)
            self._hurry.set()
        done = threading.Event()
        threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True).start()
        return done.wait(timeout)

    def flushed_journal(self, timeout: float = 1.0) -> ExchangeJournal:
        """The journal, once what this process has queued is written (within `timeout`): for readers, so a call
        just made shows at once."""
        self.flush(timeout=timeout)
        return self.journal

    def close(self, timeout: float = 5.0) -> bool:
        """Write what is queued (at once, without the linger), stop the thread and close the journal, all within
        `timeout` seconds, so a stopping worker waits no longer; whether everything queued was written. If not, what
        is still queued is dropped (counted and logged), and the journal is left open to the writer still at it."""
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closed = True
            writer = self._thread
        if writer is not None and writer.is_alive():
            with contextlib.suppress(queue.Full):  # still full at the deadline: the writer is stuck
                self._queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
            self._hurry.set()
            writer.join(max(0.0, deadline - time.monotonic()))
            if writer.is_alive():  # what is still queued is taken off, so the writer stops after its batch
                left = 0
                with contextlib.suppress(queue.Empty):
                    while True:
                        item = self._queue.get_nowait()
                        self._queue.task_done()
                        left += item is not None and item is not _WRITE_NOW
                self._queue.put_nowait(None)
                self.dropped += left
                metrics.journal_failures.inc(left)
                log.warning("the exchange journal was not written within %s s of closing: %d queued exchanges were "
                            "not recorded", timeout, left)
                return False
        self.journal.close()
        return True
