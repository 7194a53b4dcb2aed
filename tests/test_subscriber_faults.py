"""Subscribers that misbehave: a reply far larger than the cap, a reply dripped a byte at a time, and a subscriber
down for many resume periods — each attempt bounded like a backend call, and one scheduled drain per stream."""

from __future__ import annotations

import contextlib
import datetime
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from huey.consumer import Scheduler, Worker
from standardwebhooks import Webhook

from gateway.config import EventSettings, Secret, SubscriberSettings
from gateway.events import queue as delivery_queue
from gateway.events.delivery import Dispatcher
from gateway.events.leases import RedisStreamLeases, SqliteStreamLeases
from gateway.events.queue import DeliveryQueue, make_huey
from gateway.events.redis_store import RedisEventStore
from gateway.events.store import SqliteEventStore
from tests.servers import closed_port

SECRET = "whsec_b3JkZXItZ2F0ZXdheS1kZW1vLXN1YnNjcmliZXItc2VjcmV0"
CAP = 64 * 1024
#: what a huge reply would be if nobody stopped reading it
HUGE = 1 << 30
#: bytes the socket may have taken beyond what the client read: the kernel's buffers on both sides of loopback
#: (the fake subscriber's send buffer is fixed at 32 KiB; some 150 KiB in all were measured)
IN_FLIGHT = 1024 * 1024

#: writes a reply to the socket, noting in the record how many body bytes the socket took; returns that number
Reply = Callable[[socket.socket, dict], int]


class Clock:
    """A clock the test moves by hand, so a retry is due without waiting for its backoff."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class FakeSubscriber:
    """A raw HTTP/1.1 server on 127.0.0.1 answering each POST with `reply`, a function that writes to the socket
    and returns how many body bytes the socket took; it records each request, those bytes, and whether the
    client hung up before the reply was over."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.replies: list[dict] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/events"

    def serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._answer, args=(connection,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _answer(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                received = connection.recv(65536)
                if not received:
                    return
                data += received
            head, body = data.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")[1:]
            headers = {name.strip().lower(): value.strip() for name, value in (line.split(":", 1) for line in lines)}
            while len(body) < int(headers.get("content-length", 0)):
                body += connection.recv(65536)
            self.requests.append((headers, body))
            record = {"body_sent": 0, "hung_up": False}
            self.replies.append(record)
            try:
                record["body_sent"] = self.reply(connection, record)
            except OSError:  # the client closed or reset the connection
                record["hung_up"] = True

    def wait_for_replies(self) -> None:
        """Wait until every reply begun has ended (the client hung up, or it was written whole)."""
        for thread in list(self._threads):
            thread.join(timeout=15)
            assert not thread.is_alive()

    @contextlib.contextmanager
    def running(self) -> Iterator[FakeSubscriber]:
        server = threading.Thread(target=self.serve, daemon=True)
        server.start()
        try:
            yield self
        finally:
            self._stop.set()
            server.join(timeout=5)
            self._listener.close()
            for thread in self._threads:
                thread.join(timeout=15)


def answer_at_once(status: int = 204) -> Reply:
    def reply(connection: socket.socket, record: dict) -> int:
        connection.sendall(f"HTTP/1.1 {status} Status\r\nContent-Length: 0\r\n\r\n".encode())
        return 0
    return reply


def huge_reply(status: int, framing: str) -> Reply:
    """A reply of HUGE bytes, framed by Content-Length, chunked, or by closing the connection."""
    def reply(connection: socket.socket, record: dict) -> int:
        # A fixed, small send buffer, so what the socket takes stays near what the client's side has room for.
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        framing_header = {"length": f"Content-Length: {HUGE}", "chunked": "Transfer-Encoding: chunked",
                          "close": "Connection: close"}[framing]
        connection.sendall(f"HTTP/1.1 {status} Status\r\n{framing_header}\r\n\r\n".encode())
        piece = b"x" * 16384
        if framing == "chunked":
            piece = b"4000\r\n" + piece + b"\r\n"
        while record["body_sent"] < HUGE:
            rest = memoryview(piece)
            while rest:
                sent = connection.send(rest)
                record["body_sent"] += sent
                rest = rest[sent:]
        return record["body_sent"]
    return reply


def dripping(where: str, every: float = 0.05, seconds: float = 10.0) -> Reply:
    """A 200 whose headers, or whose body, come a byte at a time: each wait is far below any read timeout."""
    def reply(connection: socket.socket, record: dict) -> int:
        connection.sendall({"headers": b"HTTP/1.1 200 OK\r\nX-Slow: ",
                            "body": b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n",
                            "body until close": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"}[where])
        ends = time.monotonic() + seconds
        while time.monotonic() < ends:
            record["body_sent"] += connection.send(b"a")
            time.sleep(every)
        return record["body_sent"]
    return reply


def event(number: int, order: str) -> dict:
    return {"id": f"evt_{number:04d}", "type": "order.status_changed",
            "occurred_at": f"2026-11-23T12:00:{number:02d}+00:00",
            "order": {"backend_order_id": order, "order_number": f"SO-{order}"}}


def add(store, number: int, order: str = "1004", now: float = 1_800_000_000.0) -> None:
    _, created = store.add_event(event(number, order), dedupe_key=f"k{number}", order_key=f"c:{order}",
                                 subscribers=["demo"], now=now)
    assert created


def settings(**overrides) -> EventSettings:
    values = {"database": None, "queue_database": None, "redis_url": None, "max_attempts": 4,
              "backoff_base_seconds": 2.0, "backoff_max_seconds": 30.0, "delivery_timeout": 2.0,
              "worker_threads": 2, "max_reply_bytes": CAP, "resume_interval_seconds": 60.0, **overrides}
    return EventSettings(**values)


def demo_subscriber(url: str) -> dict[str, SubscriberSettings]:
    return {"demo": SubscriberSettings("demo", url, ("order.status_changed",), Secret(SECRET))}


@pytest.fixture
def sqlite_store(tmp_path):
    store = SqliteEventStore(tmp_path / "events.sqlite3")
    yield store
    store.close()


def history(store, event_id: str = "evt_0001") -> list[tuple[str, int | None]]:
    return [(entry["outcome"], entry["status_code"]) for entry in store.get_event(event_id)["deliveries"][0]["history"]]


# --- a reply far larger than the cap ------------------------------------------------------------------------------

@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
@pytest.mark.parametrize(("status", "outcome", "returned"), [(200, "delivered", None), (503, "failed", 2.0)])
def test_a_huge_reply_is_judged_on_its_status_and_read_no_further_than_the_cap(sqlite_store, framing, status,
                                                                             outcome, returned):
    with FakeSubscriber(huge_reply(status, framing)).running() as subscriber:
        dispatcher = Dispatcher(sqlite_store, demo_subscriber(subscriber.url), settings(), clock=Clock(),
                                jitter=lambda bound: bound)
        try:
            add(sqlite_store, 1)
            started = time.monotonic()
            assert dispatcher.drain_stream("demo", "c:1004") == returned
            assert time.monotonic() - started < 1.0  # cut at the cap, not at the deadline (2 s)
        finally:
            dispatcher.close()
        subscriber.wait_for_replies()
    assert history(sqlite_store) == [(outcome, status)]
    (reply,) = subscriber.replies
    # The gateway stopped reading at the cap and dropped the connection: of the 1 GiB, the socket took no more
    # than the cap and what the kernel buffers held when it closed.
    assert reply["hung_up"] and reply["body_sent"] < CAP + IN_FLIGHT
    (headers, body), = subscriber.requests
    assert Webhook(SECRET).verify(body, headers) == event(1, "1004")  # signed as Standard Webhooks asks


# --- a reply dripped a byte at a time -----------------------------------------------------------------------------

@pytest.mark.parametrize("where", ["headers", "body", "body until close"])
def test_a_dripping_subscriber_is_cut_at_the_deadline_and_retried(sqlite_store, where):
    clock = Clock()
    timeout = 0.5
    with FakeSubscriber(dripping(where)).running() as subscriber:
        dispatcher = Dispatcher(sqlite_store, demo_subscriber(subscriber.url), settings(delivery_timeout=timeout),
                                clock=clock, jitter=lambda bound: bound)
        try:
            add(sqlite_store, 1)
            started = time.monotonic()
            assert dispatcher.drain_stream("demo", "c:1004") == 2.0  # failed: retried after the first backoff step
            assert time.monotonic() - started < timeout + 1.0
            subscriber.wait_for_replies()
            assert subscriber.replies[0]["hung_up"]  # the gateway cut the connection, the drip did not end it

            subscriber.reply = answer_at_once(204)
            clock.now += 2.0
            assert dispatcher.drain_stream("demo", "c:1004") is None
        finally:
            dispatcher.close()
    assert history(sqlite_store) == [("failed", None), ("delivered", 204)]
    first = sqlite_store.get_event("evt_0001")["deliveries"][0]["history"][0]
    assert first["error"] == f"timed out after {timeout:g} s"


# --- a subscriber down for many resume periods --------------------------------------------------------------------

@contextlib.contextmanager
def delivery_queue_for(store, tmp_path, redis_url: str | None, **overrides) -> Iterator[DeliveryQueue]:
    """A DeliveryQueue on huey of the store's kind (SQLite file or Redis), delivering to a closed port."""
    events = settings(database=tmp_path / "events.sqlite3", queue_database=tmp_path / "queue.sqlite3",
                      redis_url=redis_url, **overrides)
    dispatcher = Dispatcher(store, demo_subscriber(f"http://127.0.0.1:{closed_port()}/events"), events)
    leases = RedisStreamLeases(redis_url) if redis_url else SqliteStreamLeases(events.database)
    huey = make_huey(events)
    try:
        yield DeliveryQueue(huey, dispatcher, leases)
    finally:
        dispatcher.close()
        leases.close()
        if redis_url:
            huey.storage.conn.close()
        else:
            huey.storage.close()


@pytest.fixture
def queue_maker(event_store, tmp_path, request):
    """Makes DeliveryQueues on huey of the event store's kind: its SQLite file, or its Redis."""
    redis_url = request.getfixturevalue("redis_url") if isinstance(event_store, RedisEventStore) else None
    return lambda **overrides: delivery_queue_for(event_store, tmp_path, redis_url, **overrides)


@contextlib.contextmanager
def consuming(queue: DeliveryQueue) -> Iterator[list[int]]:
    """huey's own worker and scheduler loops in threads, as the worker process runs them, with the resume of
    pending streams; yields how many streams each resume nudged."""
    stop = threading.Event()
    processes = [Scheduler(queue.huey, stop, interval=1, periodic=False),
                 *(Worker(queue.huey, stop, default_delay=0.05, max_delay=0.5, backoff=1.15) for _ in range(2))]

    def run(process) -> None:
        while not stop.is_set():
            process.loop()

    nudged: list[int] = []
    resume_pending = queue.resume_pending

    def counted_resume() -> int:
        nudged.append(resume_pending())
        return nudged[-1]

    queue.resume_pending = counted_resume
    threads = [threading.Thread(target=run, args=(process,), daemon=True) for process in processes]
    for thread in threads:
        thread.start()
    resuming = queue.keep_resuming(stop)
    try:
        yield nudged
    finally:
        stop.set()
        for thread in [*threads, resuming]:
            thread.join(timeout=10)


def wait_for(predicate: Callable[[], bool], seconds: float = 10.0) -> None:
    ends = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < ends, "gave up waiting"
        time.sleep(0.02)


def sample_for(seconds: float, queue: DeliveryQueue) -> list[dict[tuple[str, str], int]]:
    """scheduled_drains every 50 ms for `seconds`."""
    seen, ends = [], time.monotonic() + seconds
    while time.monotonic() < ends:
        seen.append(scheduled_drains(queue))
        time.sleep(0.05)
    return seen


def scheduled_drains(queue: DeliveryQueue) -> dict[tuple[str, str], int]:
    """The drains waiting in huey's schedule per stream, and those enqueued to be scheduled (eta in the future);
    the schedule is read first, so a task moving from the queue into it is never counted twice."""
    waiting = queue.huey.scheduled()
    now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)  # huey's etas: naive UTC (utc=True)
    waiting += [task for task in queue.huey.pending() if task.eta is not None and task.eta > now]
    counts: dict[tuple[str, str], int] = {}
    for task in waiting:
        counts[tuple(task.args)] = counts.get(tuple(task.args), 0) + 1
    return counts


STREAMS = [("demo", "c:1001"), ("demo", "c:1002"), ("demo", "c:1003")]


def test_a_subscriber_down_for_several_resume_periods_keeps_one_scheduled_drain_per_stream(event_store,
                                                                                        queue_maker):
    for number, order in enumerate(["1001", "1002", "1003", "1001"], start=1):
        add(event_store, number, order, now=time.time())
    # Backoff far beyond the test: every stream waits in the schedule while the resume comes round again and again.
    with queue_maker(backoff_base_seconds=30.0, resume_interval_seconds=0.1) as queue, consuming(queue) as nudged:
        for subscriber, order_key in STREAMS:
            queue.nudge(subscriber, order_key)
        wait_for(lambda: scheduled_drains(queue) == dict.fromkeys(STREAMS, 1))
        resumes_before = len(nudged)
        seen = sample_for(1.5, queue)
    assert len(nudged) - resumes_before >= 5, "the resume came round several times"
    assert set(nudged[resumes_before:]) == {0}, "a stream with a drain scheduled is not nudged again"
    assert all(count <= 1 for counts in seen for count in counts.values()), seen
    assert scheduled_drains(queue) == dict.fromkeys(STREAMS, 1)
    assert queue.huey.pending_count() == 0
    for event_id in ("evt_0001", "evt_0002", "evt_0003"):
        assert event_store.get_event(event_id)["deliveries"][0]["attempts"] == 1


def test_drains_that_keep_failing_schedule_their_successor_one_at_a_time(event_store, queue_maker):
    for number, order in enumerate(["1001", "1002", "1003"], start=1):
        add(event_store, number, order, now=time.time())
    # Backoff of a tenth of a second: each drain runs when the scheduler next looks (every second), fails, and
    # schedules the next, while the resume runs every tenth of a second.
    with queue_maker(backoff_base_seconds=0.1, backoff_max_seconds=0.1, max_attempts=100,
                     resume_interval_seconds=0.1) as queue, consuming(queue) as nudged:
        for subscriber, order_key in STREAMS:
            queue.nudge(subscriber, order_key)
        seen = sample_for(2.6, queue)
    assert len(nudged) >= 10
    assert all(count <= 1 for counts in seen for count in counts.values()), seen
    assert scheduled_drains(queue) == dict.fromkeys(STREAMS, 1)
    for event_id in ("evt_0001", "evt_0002", "evt_0003"):
        assert event_store.get_event(event_id)["deliveries"][0]["attempts"] >= 3  # the successors did run


def test_a_scheduled_drain_that_was_lost_is_resumed_once_overdue(event_store, queue_maker, monkeypatch, caplog):
    monkeypatch.setattr(delivery_queue, "CONSUMER_SLACK_SECONDS", 0.2)
    add(event_store, 1, "1001", now=time.time())
    with queue_maker(resume_interval_seconds=0.2) as queue:
        assert queue.schedule_drain("demo", "c:1001", delay=0.1)
        assert not queue.schedule_drain("demo", "c:1001", delay=0.1)  # one is scheduled already
        assert queue.resume_pending() == 0
        queue.huey.storage.flush_queue()  # the scheduled task is lost, as a power loss or a SIGKILL can lose it
        queue.huey.storage.flush_schedule()
        assert queue.resume_pending() == 0  # not yet overdue by a resume interval and the slack
        time.sleep(0.6)  # due after 0.1 s, lost once 0.4 s more have passed
        assert queue.resume_pending() == 1
        assert [task.args for task in queue.huey.pending()] == [("demo", "c:1001")]
        assert "never started" in caplog.text
        assert queue.schedule_drain("demo", "c:1001", delay=0.1)  # the lost one no longer blocks the stream
