"""Fire times: ``anchor + k × interval``, in exact microsecond arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import aware_datetimes, frequencies
from taskscheduler_core import (
    Frequency,
    next_slot_after,
    parse_frequency,
    require_utc,
    slot,
    slot_index_after,
)

ANCHOR = datetime(2026, 11, 28, 3, 16, 31, 123456, tzinfo=UTC)
EVERY_30S = parse_frequency("every 30 seconds")
MICROSECOND = timedelta(microseconds=1)


def _micros(delta: timedelta) -> int:
    return delta // MICROSECOND


def test_slots_are_anchor_plus_k_intervals() -> None:
    assert slot(ANCHOR, EVERY_30S, 1) == ANCHOR + timedelta(seconds=30)
    assert slot(ANCHOR, EVERY_30S, 2) == datetime(2026, 11, 28, 3, 17, 31, 123456, tzinfo=UTC)
    assert slot(ANCHOR, EVERY_30S, 120) == ANCHOR + timedelta(hours=1)


def test_slot_zero_and_negative_are_refused() -> None:
    for k in (0, -1):
        with pytest.raises(ValueError, match=">= 1"):
            slot(ANCHOR, EVERY_30S, k)


def test_far_slots_keep_their_microseconds() -> None:
    # Ten million seconds later, the microseconds of the anchor are still there: no float ever
    # touches the arithmetic.
    every_second = parse_frequency("every 1 second")
    far = slot(ANCHOR, every_second, 10_000_000)
    assert far.microsecond == ANCHOR.microsecond
    assert _micros(far - ANCHOR) == 10_000_000 * 1_000_000


def test_next_slot_is_strictly_after() -> None:
    first = ANCHOR + timedelta(seconds=30)
    assert next_slot_after(ANCHOR, EVERY_30S, ANCHOR) == first
    assert next_slot_after(ANCHOR, EVERY_30S, first - MICROSECOND) == first
    assert next_slot_after(ANCHOR, EVERY_30S, first) == first + timedelta(seconds=30)
    assert next_slot_after(ANCHOR, EVERY_30S, first + MICROSECOND) == first + timedelta(seconds=30)


def test_before_the_anchor_the_first_slot_comes_next() -> None:
    long_before = ANCHOR - timedelta(days=3)
    assert slot_index_after(ANCHOR, EVERY_30S, long_before) == 1
    assert next_slot_after(ANCHOR, EVERY_30S, long_before) == ANCHOR + timedelta(seconds=30)


def test_offsets_are_the_same_instant() -> None:
    tokyo = timezone(timedelta(hours=9))
    moment = datetime(2026, 11, 28, 12, 17, 0, tzinfo=tokyo)
    in_utc = moment.astimezone(UTC)
    result = next_slot_after(ANCHOR.astimezone(tokyo), EVERY_30S, moment)
    assert result == next_slot_after(ANCHOR, EVERY_30S, in_utc)
    assert result.tzinfo is UTC
    assert require_utc(moment) == in_utc
    assert require_utc(moment).tzinfo is UTC


def test_naive_datetimes_are_refused() -> None:
    naive = datetime(2026, 11, 28, 3, 16, 31)
    with pytest.raises(ValueError, match="anchor must be timezone-aware"):
        slot(naive, EVERY_30S, 1)
    with pytest.raises(ValueError, match="anchor must be timezone-aware"):
        next_slot_after(naive, EVERY_30S, ANCHOR)
    with pytest.raises(ValueError, match="timezone-aware"):
        next_slot_after(ANCHOR, EVERY_30S, naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        slot_index_after(ANCHOR, EVERY_30S, naive)
    with pytest.raises(ValueError, match="when must be timezone-aware"):
        require_utc(naive, "when")


@settings(max_examples=150)
@given(anchor=aware_datetimes(), frequency=frequencies(), data=st.data())
def test_slot_is_exact(anchor: datetime, frequency: Frequency, data: st.DataObject) -> None:
    # up to about three centuries of slots, so the result stays inside datetime's range
    k = data.draw(st.integers(min_value=1, max_value=10**10 // frequency.seconds), label="k")
    fired = slot(anchor, frequency, k)
    assert fired.tzinfo is UTC
    assert _micros(fired - anchor) == k * frequency.seconds * 1_000_000


@settings(max_examples=150)
@given(
    anchor=aware_datetimes(),
    frequency=frequencies(),
    offset=st.integers(min_value=-(10**13), max_value=10**13),
)
def test_next_slot_after_is_the_next_grid_point(
    anchor: datetime, frequency: Frequency, offset: int
) -> None:
    moment = anchor + timedelta(microseconds=offset)
    result = next_slot_after(anchor, frequency, moment)
    interval = _micros(frequency.interval)
    since_anchor = _micros(result - anchor)
    # strictly later, on the grid, k >= 1
    assert result > moment
    assert since_anchor % interval == 0
    assert since_anchor // interval >= 1
    if moment >= anchor:
        # ... and no grid point is skipped over
        assert result <= moment + frequency.interval
        assert result - frequency.interval <= moment
    else:
        assert result == anchor + frequency.interval
    k = slot_index_after(anchor, frequency, moment)
    assert slot(anchor, frequency, k) == result
    if k > 1:
        assert slot(anchor, frequency, k - 1) <= moment
