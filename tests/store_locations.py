"""What the stores' contract suites share: where a test's data lives (an SQLite file in a folder that does not exist
yet, or an unused key prefix of a test Redis), and the fixtures' way of opening store instances on it and closing
them all afterwards."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest


@dataclass(frozen=True)
class StoreLocation:
    """Where a test's data lives, and the two store classes (SQLite, Redis) that open it."""

    kind: str
    target: str
    prefix: str = ""
    classes: tuple[type, type] | None = None

    def open(self) -> Any:
        """A new store instance on this data."""
        sqlite_class, redis_class = self.classes
        if self.kind == "sqlite":
            return sqlite_class(self.target)
        return redis_class(self.target, prefix=self.prefix)


def store_location(request: pytest.FixtureRequest, tmp_path, file_name: str, classes: tuple[type, type], *,
                   redis_fixture: str = "store_redis_url", prefix_tail: str = "") -> StoreLocation:
    """A fresh place for the store of the test's parameter ("sqlite" or "redis")."""
    if request.param == "sqlite":
        return StoreLocation("sqlite", str(tmp_path / "not-yet-created" / file_name), classes=classes)
    return StoreLocation("redis", request.getfixturevalue(redis_fixture), f"test:{uuid.uuid4().hex}:{prefix_tail}",
                         classes=classes)


def opened_stores(location: StoreLocation) -> Iterator[Callable[[], Any]]:
    """A fixture's body: yields a function that opens a store instance on the location, and closes them all once the
    test is done."""
    stores: list[Any] = []

    def open_() -> Any:
        stores.append(location.open())
        return stores[-1]

    yield open_
    for opened in stores:
        opened.close()
