"""Fire-time policy: an interval task fires at ``anchor + k × interval`` for k = 1, 2, …

The anchor is fixed by the server when the task is created and sent to every agent, so all the
agents of a task fire at the same instants and their executions group into one run. Arithmetic is
done in whole microseconds so that no float rounding can ever move a slot.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from .frequency import Frequency

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def require_utc(moment: datetime, name: str = "time") -> datetime:
    """Return ``moment`` in UTC; naive datetimes are refused, since they are ambiguous."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {moment.isoformat()}")
    return moment.astimezone(UTC)


def optional_utc(moment: datetime | None) -> datetime | None:
    """:func:`require_utc` for optional times."""
    return None if moment is None else require_utc(moment)


def slot(anchor: datetime, frequency: Frequency, k: int) -> datetime:
    """The k-th fire time (k ≥ 1) of a task anchored at ``anchor``."""
    if k < 1:
        raise ValueError(f"slot index must be >= 1, got {k}")
    return require_utc(anchor, "anchor") + k * frequency.interval


def slot_index_after(anchor: datetime, frequency: Frequency, moment: datetime) -> int:
    """The index k of the first fire time strictly after ``moment`` (always ≥ 1)."""
    elapsed = _micros(require_utc(moment)) - _micros(require_utc(anchor, "anchor"))
    if elapsed < 0:
        return 1
    return elapsed // (frequency.seconds * 1_000_000) + 1


def next_slot_after(anchor: datetime, frequency: Frequency, moment: datetime) -> datetime:
    """The first fire time strictly after ``moment``: never ``moment`` itself, never earlier."""
    return slot(anchor, frequency, slot_index_after(anchor, frequency, moment))
