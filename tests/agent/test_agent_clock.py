"""``WallClock``: UTC time read through trio, so a ``MockClock`` drives it."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
import trio
import trio.testing

from taskscheduler_agent import WallClock

START = datetime(2026, 11, 28, 3, 16, 1, tzinfo=UTC)


async def test_now_follows_trio_time(mock_clock: trio.testing.MockClock) -> None:
    clock = WallClock(start=START)
    assert clock.now() == START
    mock_clock.jump(90.25)
    assert clock.now() == START + timedelta(seconds=90.25)


async def test_sleep_until_ends_exactly_at_the_moment(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = WallClock(start=START)
    for moment in [
        START + timedelta(hours=1, microseconds=7),
        START + timedelta(days=400, seconds=3, microseconds=999_999),
    ]:
        await clock.sleep_until(moment)
        assert clock.now() == moment


async def test_sleep_until_the_past_returns_at_once(mock_clock: trio.testing.MockClock) -> None:
    clock = WallClock(start=START)
    with trio.fail_after(1):  # the mock clock never moves: any real sleep would hang
        await clock.sleep_until(START - timedelta(seconds=5))
        await clock.sleep_until(START)


async def test_deadline_is_trio_time() -> None:
    clock = WallClock(start=START)
    assert clock.deadline(START + timedelta(seconds=2)) == pytest.approx(trio.current_time() + 2)


async def test_default_start_is_the_time_of_day() -> None:
    before = time.time()
    now = WallClock().now().timestamp()
    assert before - 1 <= now <= time.time() + 1


async def test_naive_start_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        WallClock(start=datetime(2026, 1, 1))  # naive: the point of the test


async def test_resync_follows_the_time_of_day_after_a_suspend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = WallClock()
    assert not clock.resync()  # in step with the system: nothing to do
    # A suspended host cannot be made here: the system clock reading jumps instead, which is
    # what the agent sees when it wakes up after one.
    suspended = 90.0
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + suspended)
    assert clock.resync()
    assert abs(clock.now().timestamp() - time.time()) < 0.5
    assert not clock.resync()


async def test_a_pinned_clock_never_resyncs(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = WallClock(start=START)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)
    assert not clock.resync()
    assert clock.now() - START < timedelta(seconds=1)
