"""Fire-time policy: when a task fires, for both kinds of recurrence.

- An interval task (:class:`~.frequency.Frequency`, ``every 30 seconds``) fires at
  ``anchor + k × interval`` for k = 1, 2, … The time zone plays no part: ``every 1 days`` is a
  fixed 24 hours of real time from the anchor, even across a daylight-saving change. Use a cron
  expression for a time of day on the wall clock.
- A cron task (:class:`~.cron.Cron`, ``30 2 * * *``) fires when its expression matches the wall
  clock of its time zone, after the anchor; :mod:`.cron` says what happens at daylight-saving
  changes.

The anchor is fixed by the server when the task is created and sent to every agent, so all the
agents of a task fire at the same instants and their executions group into one run. Interval
arithmetic is done in whole microseconds so that no float rounding can ever move a slot.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TypeAlias

from .cron import Cron, check_timezone, cron_fires_between, cron_next_after, parse_cron
from .errors import FrequencyError
from .frequency import MAX_FREQUENCY_LENGTH, Frequency, parse_frequency

#: What a task's ``frequency`` is: a fixed interval or a cron expression.
Recurrence: TypeAlias = Frequency | Cron

_EXPECTED = (
    "expected 'every <integer> (seconds|minutes|hours|days|weeks)' "
    "or a cron expression such as '*/5 * * * *' or '@daily'"
)

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


def parse_recurrence(text: str) -> Recurrence:
    """Parse ``every <integer> <unit>`` or a cron expression (5 fields or an ``@`` alias).

    A text whose first word is ``every`` (any case) is an interval; one with 5 or 6 fields or an
    ``@`` is a cron expression, whose errors name the bad field; anything else gets one message
    naming both forms. Raises :class:`FrequencyError`.
    """
    if not isinstance(text, str):
        raise FrequencyError(f"frequency must be a string, got {type(text).__name__}", text=text)
    if len(text) > MAX_FREQUENCY_LENGTH:
        raise FrequencyError(
            f"frequency is too long ({len(text)} characters, at most {MAX_FREQUENCY_LENGTH})",
            text=text,
        )
    words = text.split()
    if words and words[0].lower() == "every":
        return parse_frequency(text)
    if len(words) in (5, 6) or text.lstrip().startswith("@"):
        return parse_cron(text)
    raise FrequencyError(f"invalid frequency {text!r}: {_EXPECTED}", text=text)


def next_fire_after(
    recurrence: Recurrence, *, anchor: datetime, timezone: str, moment: datetime
) -> datetime:
    """The first fire time strictly after both ``moment`` and ``anchor``, in UTC.

    ``timezone`` (an IANA name) is checked for both kinds but only matters to cron.
    """
    if isinstance(recurrence, Frequency):
        check_timezone(timezone)
        return next_slot_after(anchor, recurrence, moment)
    start = max(require_utc(moment), require_utc(anchor, "anchor"))
    return cron_next_after(recurrence, timezone, start)


def fires_between(
    recurrence: Recurrence,
    *,
    anchor: datetime,
    timezone: str,
    after: datetime,
    until: datetime,
    limit: int,
) -> list[datetime]:
    """The newest ``limit`` fire times in ``(max(after, anchor), until]``, ascending, in UTC.

    What an agent back from a pause needs: the run that is due now and the few it missed, without
    walking every fire time since it stopped.
    """
    start = max(require_utc(after, "after"), require_utc(anchor, "anchor"))
    until = require_utc(until, "until")
    if isinstance(recurrence, Cron):
        return cron_fires_between(recurrence, timezone, start, until, limit)
    check_timezone(timezone)
    if limit < 1 or until <= start:
        return []
    first = slot_index_after(anchor, recurrence, start)
    last = (_micros(until) - _micros(require_utc(anchor, "anchor"))) // (
        recurrence.seconds * 1_000_000
    )
    return [slot(anchor, recurrence, k) for k in range(max(first, last - limit + 1), last + 1)]
