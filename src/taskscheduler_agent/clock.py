"""Wall-clock time for the agent, read through trio.

Fire times are wall-clock (UTC) instants. The agent maps ``trio.current_time()`` onto UTC with an
offset taken at start, so trio's clock is the source of time: ``trio.testing.MockClock`` drives
the whole agent (tests run hours of schedule in milliseconds), and a sleep computed from a
deadline ends when ``now()`` has reached that deadline. At each wake-up the engine also compares
it with the system's time of day (:meth:`WallClock.resync`) and takes the offset again when they
disagree by more than a second: a suspended host (trio's monotonic clock stopped meanwhile) or a
step of the system clock. A clock pinned with ``start=`` (tests) never resyncs.
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
        #: Whether "now" follows the system's time of day (a pinned start does not).
        self.follows_system = start is None
        if start is None:
            start = datetime.fromtimestamp(time.time(), UTC)
        self._origin = require_utc(start, "start")

    def resync(self, *, tolerance: timedelta = _SECOND) -> bool:
        """Take the offset again if the time of day has moved away from :meth:`now`.

        trio's clock is monotonic and stops while the host is suspended (a laptop lid, a paused
        VM): after a pause of Δ, "now" would stay Δ behind and every slot would run Δ late.
        The engine calls this at each wake-up; it returns whether the offset changed. Drift
        below ``tolerance`` is left alone, so ordinary slewing never moves a fire time.
        """
        if not self.follows_system:
            return False
        system = datetime.fromtimestamp(time.time(), UTC)
        if abs(system - self.now()) <= tolerance:
            return False
        self._trio_origin = trio.current_time()
        self._origin = system
        return True

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
