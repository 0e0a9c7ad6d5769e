"""Cron expressions and IANA time zones: when a cron task fires.

A cron task is written as 5 fields, ``minute hour day-of-month month day-of-week``, in the syntax
of Debian cron as the `cronsim <https://github.com/cuu508/cronsim>`_ library reads it (ranges,
lists, steps, ``JAN``/``MON`` names, ``L``, ``LW``, ``MON#2``), or as one of the aliases
``@hourly``, ``@daily``, ``@midnight``, ``@weekly``, ``@monthly``, ``@yearly``, ``@annually``.
Six-field expressions (with seconds) are refused. The expression is matched against the wall
clock of an IANA time zone (``UTC``, ``Europe/Paris``, …), and every fire time is returned as an
instant in UTC with no microseconds.

Daylight-saving changes are handled in two ways, chosen by the expression, as Debian cron does:

* **A fixed time of day** — both the minute and the hour field start with something other than
  ``*`` (``30 2 * * *``, ``0 9 * * 1-5``, ``@daily``): the job runs once per matching local
  date. If its wall time falls in a spring-forward gap, it runs at the first valid minute after
  the gap (``02:30`` on a day that jumps from 02:00 to 03:00 runs at 03:00; where a gap spans
  midnight, that minute is on the next date); if it falls in a fall-back overlap, it runs once,
  at the first occurrence. cronsim implements exactly this when given an aware datetime.
* **Anything else** (``*/15 * * * *``, ``0 * * * *``, ``@hourly``): the job fires at every real
  instant whose local wall time matches. Wall times inside a gap do not exist, so they do not
  fire; wall times in a repeated hour fire twice, once per instant. A job every 15 minutes
  therefore keeps firing every 15 minutes of real time through both changes.

In both cases fire times strictly increase and no instant fires twice. Every loop is bounded:
cronsim gives up after 50 years without a match, and :func:`parse_cron` refuses an expression
that cannot fire at all (``0 0 30 2 *``), so callers never meet one.

Time zone data comes from the ``tzdata`` package when it is installed (it is a dependency), so
that every host running the same release agrees on every fire time, whatever the age of its
``/usr/share/zoneinfo``; the system database is only a fallback.
"""

from __future__ import annotations

import functools
import heapq
import re
from collections import deque
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib import resources
from itertools import takewhile
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import attrs
from cronsim import CronSim, CronSimError

from .errors import FrequencyError, TimezoneError
from .frequency import MAX_FREQUENCY_LENGTH

#: The aliases, in lower case, and the 5 fields each stands for.
ALIASES: dict[str, str] = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}

#: The longest time zone name accepted; the longest IANA name is about half of it.
MAX_TIMEZONE_LENGTH = 64

_FIELD_NAMES = "minute hour day-of-month month day-of-week"
# ASCII only: cronsim upper-cases fields before reading names, and "ſun".upper() == "SUN".
_FIELD = re.compile(r"[0-9A-Za-z*,/#-]+", re.ASCII)
_ZONE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_+-]*(?:/[A-Za-z0-9_+-]+)*", re.ASCII)
# Any fixed date does: validation only asks whether the expression parses and ever fires.
_REFERENCE = datetime(2000, 1, 1, tzinfo=UTC)
# cronsim's own search horizon: it raises StopIteration after this many years without a match.
_HORIZON_YEARS = 50
_FIRST_WINDOW = timedelta(hours=1)


def _invalid(text: str, reason: str) -> FrequencyError:
    return FrequencyError(f"invalid cron expression {text!r}: {reason}", text=text)


def _canonical(text: object) -> str:
    """The canonical text of a cron expression, or :class:`FrequencyError` saying what is wrong."""
    if not isinstance(text, str):
        raise FrequencyError(
            f"cron expression must be a string, got {type(text).__name__}", text=text
        )
    if len(text) > MAX_FREQUENCY_LENGTH:
        raise FrequencyError(
            f"cron expression is too long ({len(text)} characters, at most {MAX_FREQUENCY_LENGTH})",
            text=text,
        )
    parts = text.split()
    if len(parts) == 1 and parts[0].startswith("@"):
        alias = parts[0].lower()
        if alias not in ALIASES:
            known = ", ".join(ALIASES)
            raise _invalid(text, f"unknown alias {parts[0]!r}, expected one of {known}")
        return alias
    if len(parts) == 6:
        raise _invalid(
            text, f"6 fields given but seconds are not supported; use 5 fields ({_FIELD_NAMES})"
        )
    if len(parts) != 5:
        raise _invalid(text, f"expected 5 fields ({_FIELD_NAMES}), got {len(parts)}")
    for part in parts:
        if _FIELD.fullmatch(part) is None:
            raise _invalid(text, f"unexpected character in field {part!r}")
    fields = " ".join(_single_values(part) for part in parts)
    try:
        simulation = CronSim(fields, _REFERENCE)
    except CronSimError as error:
        raise _invalid(text, str(error).lower() or "not understood") from None
    try:
        next(simulation)
    except StopIteration:
        raise _invalid(text, f"it never fires (no match in {_HORIZON_YEARS} years)") from None
    return fields


_RANGE_WITH_STEP = re.compile(r"([0-9A-Za-z]+)-([0-9A-Za-z]+)/[0-9]+", re.ASCII)


def _single_values(field: str) -> str:
    """``field`` with each range of one value and a step (``5-5/2``) written as that value.

    Cron reads ``5-5/2`` as hour 5 alone; cronsim (2.x) reads it as ``5/2``, every other hour
    from 5 to 23 — the same expression would fire far more often here than in cron.
    """
    items = []
    for item in field.split(","):
        match = _RANGE_WITH_STEP.fullmatch(item)
        if match is not None:
            first, last = match.group(1), match.group(2)
            same = (
                int(first) == int(last)
                if first.isdigit() and last.isdigit()
                else first.lower() == last.lower()
            )
            if same:
                item = first
        items.append(item)
    return ",".join(items)


def _must_be_canonical(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    if _canonical(value) != value:
        raise FrequencyError(
            f"cron expression {value!r} is not in canonical form; build it with parse_cron",
            text=value,
        )


@attrs.frozen
class Cron:
    """A cron expression in canonical form: a lower-case alias, or 5 fields joined by spaces."""

    expression: str = attrs.field(validator=_must_be_canonical)

    def __str__(self) -> str:
        return self.expression

    @property
    def fields(self) -> str:
        """The 5-field form, with an alias expanded (``@daily`` → ``0 0 * * *``)."""
        return ALIASES.get(self.expression, self.expression)

    @property
    def fixed_time(self) -> bool:
        """Whether it runs at a fixed time of day, with Debian cron's daylight-saving rules.

        The same test cronsim applies: neither the minute nor the hour field starts with ``*``.
        """
        minute, hour = self.fields.split()[:2]
        return not minute.startswith("*") and not hour.startswith("*")

    def describe(self) -> str:
        """The expression in English (``At 00:00 on Monday through Friday``), by cronsim."""
        try:
            return CronSim(self.fields, _REFERENCE).explain()
        except Exception:
            # An explanation is a nicety: a gap in cronsim's English must not break a listing.
            return self.expression


def parse_cron(text: str) -> Cron:
    """Parse a 5-field cron expression or an alias (any case); whitespace between fields is free.

    Raises :class:`FrequencyError` naming the problem: wrong number of fields, a bad field, or
    an expression that can never fire (``0 0 30 2 *``).
    """
    return Cron(_canonical(text))


# --- time zones ----------------------------------------------------------------------------------


def _unknown_zone(name: str) -> TimezoneError:
    return TimezoneError(
        f"unknown time zone {name!r}; use an IANA name such as 'Europe/Paris'", name=name
    )


def check_timezone(name: str) -> ZoneInfo:
    """The zone of an IANA name (``UTC``, ``Europe/Paris``), or :class:`TimezoneError`.

    Only the names of the IANA database are accepted: no paths, no ``posix/`` or ``right/``
    variants, no ``localtime``, which would mean different things on different hosts.
    """
    if not isinstance(name, str):
        raise TimezoneError(f"time zone must be a string, got {type(name).__name__}", name=name)
    if not name:
        raise TimezoneError(
            "time zone must not be empty; use an IANA name such as 'Europe/Paris'", name=name
        )
    if len(name) > MAX_TIMEZONE_LENGTH:
        raise TimezoneError(
            f"time zone name is too long ({len(name)} characters, at most {MAX_TIMEZONE_LENGTH})",
            name=name,
        )
    # The pattern first: it keeps paths and odd characters away from the file system.
    if _ZONE_NAME.fullmatch(name) is None or name not in _iana_names():
        raise _unknown_zone(name)
    return _load_zone(name)


@functools.cache
def _iana_names() -> frozenset[str]:
    try:
        listing = resources.files("tzdata").joinpath("zones").read_text(encoding="utf-8")
    except (ImportError, OSError):
        return frozenset(available_timezones())
    return frozenset(listing.split())


@functools.cache
def _load_zone(name: str) -> ZoneInfo:
    try:
        resource = resources.files("tzdata").joinpath("zoneinfo")
        for part in name.split("/"):
            resource = resource.joinpath(part)
        with resource.open("rb") as data:
            return ZoneInfo.from_file(data, key=name)
    except (ImportError, OSError):
        pass
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise _unknown_zone(name) from None


# --- fire times ----------------------------------------------------------------------------------


def _aware_utc(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware, got naive {moment.isoformat()}")
    return moment.astimezone(UTC)


def _instants(wall: datetime, zone: ZoneInfo) -> list[datetime]:
    """The real instants whose wall time in ``zone`` is ``wall`` (naive), ascending.

    None in a spring-forward gap, two in a fall-back overlap, one otherwise.
    """
    found: list[datetime] = []
    for fold in (0, 1):
        instant = wall.replace(tzinfo=zone, fold=fold).astimezone(UTC)
        # A wall time in a gap does not come back from UTC as itself.
        if instant.astimezone(zone).replace(tzinfo=None) == wall and instant not in found:
            found.append(instant)
    return sorted(found)


def _fixed_time_fires(cron: Cron, zone: ZoneInfo, moment: datetime) -> Iterator[datetime]:
    last = moment
    # With an aware start, cronsim walks the wall clock and moves each result out of a gap and
    # onto the first occurrence in an overlap: Debian cron's rules.
    for local in CronSim(cron.fields, moment.astimezone(zone)):
        instant = local.astimezone(UTC)
        # cronsim walks wall times, which forget the fold: from the second pass of a repeated
        # hour it proposes first-pass instants that are already past, and a gap can map two
        # wall times onto one instant. Both are dropped here.
        if instant > last:
            last = instant
            yield instant


def _wall_clock_fires(cron: Cron, zone: ZoneInfo, moment: datetime) -> Iterator[datetime]:
    local = moment.astimezone(zone)
    # If ``moment`` is in the first pass of a repeated hour, the second pass is still ahead and
    # its wall times are earlier than ours: start the walk that much earlier.
    ahead = local.utcoffset() or timedelta(0)
    second_pass = local.replace(fold=1).utcoffset() or timedelta(0)
    start = local.replace(tzinfo=None) - max(ahead - second_pass, timedelta(0))
    pending: list[datetime] = []
    last = moment
    for wall in CronSim(cron.fields, start):
        instants = _instants(wall, zone)
        for instant in instants:
            if instant > last:
                heapq.heappush(pending, instant)
        if len(instants) == 1:
            # A wall time that occurs once: later wall times all map to later instants (zones
            # change offset hours apart, never gap and overlap at once), so what is pending up
            # to this instant is final. Inside an overlap we wait: the second pass of an early
            # wall time comes after the first pass of a later one.
            while pending and pending[0] <= instants[0]:
                instant = heapq.heappop(pending)
                if instant > last:
                    last = instant
                    yield instant
    for instant in sorted(pending):
        if instant > last:
            last = instant
            yield instant


def _fires(cron: Cron, zone: ZoneInfo, moment: datetime) -> Iterator[datetime]:
    """Every fire time strictly after ``moment`` (UTC), ascending, until cronsim gives up."""
    fires = _fixed_time_fires if cron.fixed_time else _wall_clock_fires
    try:
        yield from fires(cron, zone, moment)
    except OverflowError:
        # past year 9999: there is no later fire time to give
        return


def cron_next_after(cron: Cron, timezone: str, moment: datetime) -> datetime:
    """The first fire time of ``cron`` in ``timezone`` strictly after ``moment``, in UTC.

    See the module docstring for what happens at daylight-saving changes. Raises
    :class:`TimezoneError` for an unknown zone, :class:`FrequencyError` if nothing matches in
    the next 50 years (which :func:`parse_cron` already rules out), ``ValueError`` if ``moment``
    is naive.
    """
    zone = check_timezone(timezone)
    moment = _aware_utc(moment, "moment")
    for instant in _fires(cron, zone, moment):
        return instant
    raise FrequencyError(
        f"cron expression {cron.expression!r} never fires after {moment.isoformat()}",
        text=cron.expression,
    )


def cron_fires_between(
    cron: Cron, timezone: str, after: datetime, until: datetime, limit: int
) -> list[datetime]:
    """The newest ``limit`` fire times in ``(after, until]``, ascending, in UTC.

    Cheap however long the range: it looks back from ``until`` in windows that double in
    length (1 h, 2 h, 4 h, …) and stops as soon as one holds ``limit`` fire times, so an agent
    back after a year away does not walk a year of minutes.
    """
    zone = check_timezone(timezone)
    after = _aware_utc(after, "after")
    until = _aware_utc(until, "until")
    if limit < 1 or until <= after:
        return []
    window = _FIRST_WINDOW
    while True:
        start = max(after, until - window)
        newest: deque[datetime] = deque(maxlen=limit)
        count = 0
        for instant in takewhile(lambda instant: instant <= until, _fires(cron, zone, start)):
            newest.append(instant)
            count += 1
        if count >= limit or start == after:
            return list(newest)
        window *= 2
