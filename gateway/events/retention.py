"""Retention: what the event worker removes, at start and then every `[events] retention_interval_seconds`.

    events            settled (none of their deliveries pending: each delivered or dead) more than
                      `[events] retention_days` ago, with their deliveries and dedupe keys; pending ones stay
    idempotency_keys  Idempotency-Key records past their life (`[gateway] idempotency_ttl_seconds`); Redis expires
                      its records by itself, so there this finds none
    jobs              update jobs done, failed or dead more than `[jobs] retention_days` ago; queued ones stay
    exchanges         the exchange journal beyond `[journal] max_age_days` or `max_count`: the journal prunes itself
                      while exchanges are recorded, and this keeps a quiet gateway's journal within its age too

Events, jobs and keys go in batches of `[events] retention_batch_size`, one short transaction each with a pause between
them, so the deliveries and requests waiting for the same store get their turn; a run removes at most
MAX_BATCHES_PER_RUN batches of a kind and leaves the rest to the next run. What is removed is counted in
`order_gateway_retention_removed_total{kind}`. A kind whose store fails is logged and left for the next run; the
other kinds go on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from gateway import metrics
from gateway.bookkeeping import log_failure
from gateway.config import EventSettings, GatewaySettings
from gateway.events.store import EventStore
from gateway.idempotency import IdempotencyStore, open_idempotency_store
from gateway.jobs import JobStore
from gateway.journal import ExchangeJournal, open_exchange_journal

#: the most batches of one kind a run removes, so that one run stays short however much is due
MAX_BATCHES_PER_RUN = 100
#: the pause between two batches, in which other writers of the same store take their turn
BATCH_PAUSE_SECONDS = 0.02
RETENTION_KINDS = ("events", "jobs", "idempotency_keys", "exchanges")

log = logging.getLogger("gateway.retention")


class Retention:
    """Removes what retention allows from the event store, the Idempotency-Key store and the journal."""

    def __init__(self, events: EventStore, idempotency: IdempotencyStore | None, journal: ExchangeJournal | None,
                 settings: EventSettings, *, clock: Callable[[], float] = time.time,
                 pause_seconds: float = BATCH_PAUSE_SECONDS, max_batches: int = MAX_BATCHES_PER_RUN,
                 jobs: JobStore | None = None, job_retention_days: float = 30.0) -> None:
        self.events, self.idempotency, self.journal = events, idempotency, journal
        self.jobs, self.job_retention_days = jobs, job_retention_days
        self.settings, self.clock = settings, clock
        self.pause_seconds, self.max_batches = pause_seconds, max_batches

    def run_once(self, stop: threading.Event | None = None) -> dict[str, int]:
        """Remove what is due now, kind by kind; how many records of each kind were removed."""
        stop = stop or threading.Event()
        now, batch = self.clock(), self.settings.retention_batch_size
        settled_by = now - self.settings.retention_days * 86400
        removed = {"events": self._in_batches(
            "events", lambda: self.events.purge_settled(settled_by=settled_by, limit=batch), stop)}
        if self.jobs is not None:
            finished_by = now - self.job_retention_days * 86400
            removed["jobs"] = self._in_batches(
                "jobs", lambda: self.jobs.purge_finished(finished_by=finished_by, limit=batch), stop)
        if self.idempotency is not None:
            removed["idempotency_keys"] = self._in_batches(
                "idempotency_keys", lambda: self.idempotency.purge_expired(now, limit=batch), stop)
        if self.journal is not None and not stop.is_set():
            # prune() applies the journal's own bounds (max_age_days, max_count), as record() does now and then.
            removed["exchanges"] = self._counted("exchanges", lambda: self.journal.prune(now=now))
        if any(removed.values()):
            log.info("retention removed %s", ", ".join(f"{count} {kind}" for kind, count in removed.items()))
        return removed

    def _in_batches(self, kind: str, remove_batch: Callable[[], int], stop: threading.Event) -> int:
        """Call `remove_batch` until it removes less than a batch, the run's bound is reached or `stop` is set."""
        total = 0
        for _ in range(self.max_batches):
            removed = self._counted(kind, remove_batch)
            total += removed
            if removed < self.settings.retention_batch_size or stop.wait(self.pause_seconds):
                break
        return total

    @staticmethod
    def _counted(kind: str, remove: Callable[[], int]) -> int:
        """Run one removal and count what it removed; a failure is logged and counts 0."""
        try:
            removed = remove()
        except Exception as error:  # a store down or busy: the next run tries again
            log_failure(error, "retention could not remove %s; trying again at the next run", kind, logger=log)
            return 0
        if removed:
            metrics.retention_removed.labels(kind).inc(removed)
        return removed

    def keep_running(self, stop: threading.Event) -> threading.Thread:
        """A daemon thread that runs retention now and then every retention interval until `stop` is set."""
        def run() -> None:
            while not stop.is_set():
                self.run_once(stop)
                if stop.wait(self.settings.retention_interval_seconds):
                    break

        thread = threading.Thread(target=run, name="retention", daemon=True)
        thread.start()
        return thread


class WorkerRetention(Retention):
    """Retention as the event worker runs it: on the worker's event store, with the Idempotency-Key store and the
    journal the configuration names, which it opens and closes."""

    def __init__(self, settings: GatewaySettings, events: EventStore, jobs: JobStore | None = None) -> None:
        journal = settings.journal
        idempotency = open_idempotency_store(settings)
        try:
            exchanges = open_exchange_journal(settings, max_age_seconds=journal.max_age_days * 86400,
                                              max_count=journal.max_count, record_bodies=journal.record_bodies)
        except BaseException:
            idempotency.close()
            raise
        super().__init__(events, idempotency, exchanges, settings.events, jobs=jobs,
                         job_retention_days=settings.jobs.retention_days)

    def close(self) -> None:
        """Close the stores this opened."""
        self.idempotency.close()
        self.journal.close()
