"""Stream leases: exclusive, renewable by their owner, released only by their owner, expiring on their own."""

from __future__ import annotations

import threading
import time

import pytest

from gateway.events.leases import RedisStreamLeases, SqliteStreamLeases


@pytest.fixture(params=["sqlite", "redis"])
def leases(request, tmp_path):
    if request.param == "sqlite":
        made = SqliteStreamLeases(tmp_path / "events.sqlite3")
    else:
        made = RedisStreamLeases(request.getfixturevalue("redis_url"))
    yield made
    made.close()


def test_a_lease_is_exclusive_until_released(leases):
    assert leases.acquire("s", "a", 30)
    assert not leases.acquire("s", "b", 30)
    assert leases.acquire("other", "b", 30)
    leases.release("s", "b")  # not b's lease: nothing happens
    assert not leases.acquire("s", "b", 30)
    leases.release("s", "a")
    assert leases.acquire("s", "b", 30)


def test_the_owner_renews_its_lease(leases):
    assert leases.acquire("s", "a", 0.3)
    time.sleep(0.2)
    assert leases.acquire("s", "a", 0.3)  # renewed: still a's
    time.sleep(0.2)
    assert not leases.acquire("s", "b", 30)


def test_an_abandoned_lease_expires(leases):
    assert leases.acquire("s", "killed-worker", 0.2)
    assert not leases.acquire("s", "b", 30)
    time.sleep(0.35)
    assert leases.acquire("s", "b", 30)


def test_many_threads_one_winner(leases, tmp_path, request):
    winners = []
    start = threading.Barrier(8)

    def contend(owner: str) -> None:
        start.wait()
        if leases.acquire("contested", owner, 30):
            winners.append(owner)

    threads = [threading.Thread(target=contend, args=(f"w{n}",)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
