"""Wall-clock time for the agent, read only through trio.

Fire times are wall-clock (UTC) instants, but the agent never asks the operating system for the
time of day while it runs: it maps ``trio.current_time()`` onto UTC with an offset taken once, at
start. That makes trio's clock the single source of time, so ``trio.testing.MockClock`` drives
the whole agent (tests run hours of schedule in milliseconds), and a sleep computed from a
deadline always ends when ``now()`` has reached that deadline. The price is that a step of the
system clock after start (an operator's ``date -s``) is not followed; NTP's gradual slewing
applies to trio's monotonic clock as well, so ordinary drift correction still is.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import trio

from taskscheduler_core import require_utc

_SECOND = timedelta(seconds=1)


class WallClock:
    """UTC datetimes on top of trio's clock; build it inside ``trio.run``.

    ``start`` pins the wall time of "now" at construction (tests use it to get round,
    reproducible times); by default it is the system's time of day.
    """

    def __init__(self, *, start: datetime | None = None) -> None:
        self._trio_origin = trio.current_time()
        if start is None:
            start = datetime.fromtimestamp(time.time(), UTC)
        self._origin = require_utc(start, "start")

    def now(self) -> datetime:
        """The current UTC time, to the microsecond."""
        # timedelta(seconds=float) rounds to the nearest microsecond, which undoes the float
        # error of deadline(): at trio time deadline(m), now() is exactly m.
        return self._origin + timedelta(seconds=trio.current_time() - self._trio_origin)

    def deadline(self, moment: datetime) -> float:
        """The trio time at which :meth:`now` reaches ``moment``."""
        return self._trio_origin + (require_utc(moment) - self._origin) / _SECOND

    async def sleep_until(self, moment: datetime) -> None:
        """Sleep until :meth:`now` is at or past ``moment`` (returns at once if it is)."""
        await trio.sleep_until(self.deadline(moment))
