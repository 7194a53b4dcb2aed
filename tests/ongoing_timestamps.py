"""Timestamps for the Ongoing webhooks tests send: recent, since the gateway refuses those older than 48 hours."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

#: a whole minute an hour before the tests started, in UTC (the zone a connection reads timestamps in by default)
RECENT = (datetime.now(UTC) - timedelta(hours=1)).replace(second=0, microsecond=0)


def ongoing_timestamp(moment: datetime) -> str:
    """A moment as Ongoing writes it: its wall-clock time in the zone it is given in, without an offset."""
    return f"{moment:%Y-%m-%dT%H:%M:%S}"


def recent_timestamp(seconds: float = 0) -> str:
    """RECENT plus `seconds`, as Ongoing writes it (read in UTC, it is that many seconds after RECENT)."""
    return ongoing_timestamp(RECENT + timedelta(seconds=seconds))
