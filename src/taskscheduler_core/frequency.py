"""Frequencies: ``every <integer> (seconds|minutes|hours|days|weeks)``.

The text form is the one of the original design, plus days and weeks; ``str(frequency)`` gives the
canonical spelling (lower case, plural unit, no leading zeros) which parses back to an equal value.

A frequency is a fixed length of real time: ``every 1 days`` is 86 400 seconds after the previous
fire time, whatever the wall clock does at a daylight-saving change. Tasks that must run at a time
of day (``every day at 02:30 in Europe/Paris``) use a cron expression (:mod:`.cron`) instead.
"""

from __future__ import annotations

import enum
import re
from datetime import timedelta

import attrs

from .errors import FrequencyError


class Unit(enum.Enum):
    """A unit a frequency may be written in; the value is its length in seconds."""

    SECONDS = 1
    MINUTES = 60
    HOURS = 3600
    DAYS = 86400
    WEEKS = 604800

    @property
    def plural(self) -> str:
        return self.name.lower()


#: The longest interval we accept (``every 52 weeks`` is in, ``every 53 weeks`` is out). Anything
#: longer is almost surely a typo (``every 36000000 hours``), and it keeps every fire time inside
#: ``datetime``'s range for millennia.
MAX_INTERVAL = timedelta(days=366)

#: Longer texts are refused before any regular expression sees them.
MAX_FREQUENCY_LENGTH = 100

_PATTERN = re.compile(
    r"\s*every\s+(?P<count>[+-]?[0-9]+(?:\.[0-9]*)?|\S+)\s+(?P<unit>\S+)\s*",
    re.IGNORECASE | re.ASCII,
)
_DIGITS = re.compile("[0-9]+")
_UNITS = {unit.plural: unit for unit in Unit} | {unit.plural[:-1]: unit for unit in Unit}
_EXPECTED = "expected 'every <integer> (seconds|minutes|hours|days|weeks)'"


def _positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FrequencyError(f"frequency count must be an integer >= 1, got {value!r}", text=value)


@attrs.frozen(kw_only=True)
class Frequency:
    """A fixed interval between fire times, as written by a user (``every 30 seconds``)."""

    count: int = attrs.field(validator=_positive)
    unit: Unit

    def __attrs_post_init__(self) -> None:
        if self.interval > MAX_INTERVAL:
            raise FrequencyError(
                f"frequency must be at most {MAX_INTERVAL.days} days, got {self}", text=str(self)
            )

    @property
    def seconds(self) -> int:
        """The interval in whole seconds."""
        return self.count * self.unit.value

    @property
    def interval(self) -> timedelta:
        return timedelta(seconds=self.seconds)

    def __str__(self) -> str:
        return f"every {self.count} {self.unit.plural}"


def parse_frequency(text: str) -> Frequency:
    """Parse ``every <integer> (seconds|minutes|hours|days|weeks)``.

    Singular units and any letter case are accepted; the integer must be at least 1 and the
    interval at most :data:`MAX_INTERVAL`. Raises :class:`FrequencyError` saying what is wrong.
    """
    if not isinstance(text, str):
        raise FrequencyError(f"frequency must be a string, got {type(text).__name__}", text=text)
    if len(text) > MAX_FREQUENCY_LENGTH:
        raise FrequencyError(
            f"frequency is too long ({len(text)} characters, at most {MAX_FREQUENCY_LENGTH})",
            text=text,
        )
    match = _PATTERN.fullmatch(text)
    if match is None:
        raise FrequencyError(f"invalid frequency {text!r}: {_EXPECTED}", text=text)
    count_text, unit_text = match["count"], match["unit"]
    unit = _UNITS.get(unit_text.lower())
    if unit is None:
        raise FrequencyError(
            f"invalid frequency {text!r}: unknown unit {unit_text!r}, "
            "expected seconds, minutes, hours, days or weeks",
            text=text,
        )
    if _DIGITS.fullmatch(count_text) is None:
        raise FrequencyError(
            f"invalid frequency {text!r}: {count_text!r} is not a whole number >= 1", text=text
        )
    count = int(count_text)
    if count < 1:
        raise FrequencyError(f"invalid frequency {text!r}: the count must be >= 1", text=text)
    if count * unit.value > MAX_INTERVAL.total_seconds():
        raise FrequencyError(
            f"invalid frequency {text!r}: at most {MAX_INTERVAL.days} days is allowed", text=text
        )
    return Frequency(count=count, unit=unit)
