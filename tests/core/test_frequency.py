"""Parsing ``every <integer> (seconds|minutes|hours|days|weeks)`` and the Frequency value."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from strategies import frequencies, frequency_texts
from taskscheduler_core import (
    MAX_INTERVAL,
    Frequency,
    FrequencyError,
    TaskSchedulerError,
    Unit,
    parse_frequency,
)
from taskscheduler_core.frequency import MAX_FREQUENCY_LENGTH

MAX_SECONDS = int(MAX_INTERVAL.total_seconds())


@pytest.mark.parametrize(
    ("text", "count", "unit"),
    [
        ("every 30 seconds", 30, Unit.SECONDS),
        ("every 1 second", 1, Unit.SECONDS),
        ("every 1 seconds", 1, Unit.SECONDS),
        ("every 5 minute", 5, Unit.MINUTES),
        ("every 5 minutes", 5, Unit.MINUTES),
        ("every 2 hour", 2, Unit.HOURS),
        ("every 2 hours", 2, Unit.HOURS),
        ("EVERY 10 SECONDS", 10, Unit.SECONDS),
        ("Every 10 Minutes", 10, Unit.MINUTES),
        ("eVeRy 3 HoUr", 3, Unit.HOURS),
        ("  every 30 seconds  ", 30, Unit.SECONDS),
        ("\tevery\t30\tseconds\n", 30, Unit.SECONDS),
        ("every    30     seconds", 30, Unit.SECONDS),
        ("every 007 minutes", 7, Unit.MINUTES),
        (f"every {MAX_SECONDS} seconds", MAX_SECONDS, Unit.SECONDS),
        (f"every {MAX_SECONDS // 60} minutes", MAX_SECONDS // 60, Unit.MINUTES),
        (f"every {MAX_SECONDS // 3600} hours", MAX_SECONDS // 3600, Unit.HOURS),
        ("every 1 day", 1, Unit.DAYS),
        ("every 3 days", 3, Unit.DAYS),
        ("EVERY 2 DAY", 2, Unit.DAYS),
        ("every 366 days", 366, Unit.DAYS),
        ("every 1 week", 1, Unit.WEEKS),
        ("Every 2 Weeks", 2, Unit.WEEKS),
        ("every 52 weeks", 52, Unit.WEEKS),
    ],
)
def test_accepts(text: str, count: int, unit: Unit) -> None:
    assert parse_frequency(text) == Frequency(count=count, unit=unit)


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("every 0 seconds", ">= 1"),
        ("every 000 seconds", ">= 1"),
        ("every -3 minutes", "'-3'"),
        ("every +3 minutes", "'+3'"),
        ("every 1.5 hours", "'1.5'"),
        ("every 1. hours", "'1.'"),
        ("every 1e3 seconds", "'1e3'"),
        ("every 0x10 seconds", "'0x10'"),
        ("every five minutes", "'five'"),
        ("every 10 fortnights", "unknown unit 'fortnights'"),
        ("every 10 months", "unknown unit 'months'"),
        ("every 10 fortnight", "expected seconds, minutes, hours, days or weeks"),
        ("every 367 days", "366 days"),
        ("every 53 weeks", "366 days"),
        ("every 10 secs", "unknown unit 'secs'"),
        ("every 10 s", "unknown unit 's'"),
        ("30 seconds", "expected 'every <integer>"),
        ("every 30", "expected 'every <integer>"),
        ("every seconds", "expected 'every <integer>"),
        ("every30 seconds", "expected 'every <integer>"),
        ("every 30seconds", "expected 'every <integer>"),
        ("each 30 seconds", "expected 'every <integer>"),
        ("every 30 seconds please", "expected 'every <integer>"),
        ("every 1_000 seconds", "'1_000'"),
        ("", "expected 'every <integer>"),
        ("   ", "expected 'every <integer>"),
        (f"every {MAX_SECONDS + 1} seconds", "366 days"),
        (f"every {MAX_SECONDS // 60 + 1} minutes", "366 days"),
        (f"every {MAX_SECONDS // 3600 + 1} hours", "366 days"),
        ("every 99999999999999999999999999999 hours", "366 days"),
        ("every ５ seconds", "'５'"),  # fullwidth digit: int() would accept it
        ("every ٣ minutes", "'٣'"),  # Arabic-Indic digit
        ("every ³ hours", "'³'"),
        ("every 1\x00 seconds", "'1\\x00'"),
        ("x" * (MAX_FREQUENCY_LENGTH + 1), "too long"),
        ("every 30 seconds" + " " * MAX_FREQUENCY_LENGTH, "too long"),
    ],
)
def test_refuses_and_names_the_problem(text: str, names: str) -> None:
    with pytest.raises(FrequencyError) as caught:
        parse_frequency(text)
    assert names in str(caught.value)
    assert caught.value.text == text


@pytest.mark.parametrize("value", [None, 30, 30.0, b"every 30 seconds", ["every 30 seconds"]])
def test_refuses_non_strings(value: object) -> None:
    with pytest.raises(FrequencyError, match="must be a string") as caught:
        parse_frequency(value)  # type: ignore[arg-type]
    assert caught.value.text is value


def test_error_is_a_value_error_and_a_taskscheduler_error() -> None:
    with pytest.raises(FrequencyError) as caught:
        parse_frequency("every now and then")
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, TaskSchedulerError)
    assert caught.value.message == str(caught.value)


def test_str_is_canonical() -> None:
    assert str(parse_frequency("  EVERY 007 Minute ")) == "every 7 minutes"
    assert str(Frequency(count=1, unit=Unit.HOURS)) == "every 1 hours"


def test_interval_and_seconds() -> None:
    frequency = parse_frequency("every 90 minutes")
    assert frequency.seconds == 5400
    assert frequency.interval == timedelta(minutes=90)


def test_days_and_weeks_are_fixed_lengths_of_real_time() -> None:
    assert Unit.DAYS.value == 86400
    assert Unit.WEEKS.value == 604800
    assert parse_frequency("every 2 days").interval == timedelta(days=2)
    assert parse_frequency("every 1 week").interval == timedelta(weeks=1)
    assert str(parse_frequency(" every 01 Week ")) == "every 1 weeks"
    assert Frequency(count=52, unit=Unit.WEEKS).interval <= MAX_INTERVAL
    with pytest.raises(FrequencyError, match="366 days"):
        Frequency(count=53, unit=Unit.WEEKS)


def test_the_grammar_in_the_error_names_every_unit() -> None:
    with pytest.raises(FrequencyError, match=r"\(seconds\|minutes\|hours\|days\|weeks\)"):
        parse_frequency("every 30")


@pytest.mark.parametrize("count", [0, -1, True, 1.0, "1"])
def test_frequency_refuses_bad_counts(count: object) -> None:
    with pytest.raises(FrequencyError, match="integer >= 1"):
        Frequency(count=count, unit=Unit.SECONDS)  # type: ignore[arg-type]


def test_frequency_refuses_too_long_an_interval() -> None:
    assert Frequency(count=MAX_SECONDS // 3600, unit=Unit.HOURS).interval == MAX_INTERVAL
    with pytest.raises(FrequencyError, match="366 days"):
        Frequency(count=MAX_SECONDS // 3600 + 1, unit=Unit.HOURS)


def test_frequency_is_frozen_and_hashable() -> None:
    frequency = parse_frequency("every 5 seconds")
    assert {frequency, parse_frequency("every 05 second")} == {frequency}
    with pytest.raises(AttributeError):
        frequency.count = 6  # type: ignore[misc]


@settings(max_examples=100)
@given(frequencies())
def test_str_round_trips(frequency: Frequency) -> None:
    assert parse_frequency(str(frequency)) == frequency
    assert frequency.interval <= MAX_INTERVAL


@settings(max_examples=100)
@given(st.data())
def test_every_valid_spelling_parses(data: st.DataObject) -> None:
    frequency = data.draw(frequencies())
    text = data.draw(frequency_texts(frequency))
    assert parse_frequency(text) == frequency


def _frequency_like_texts() -> st.SearchStrategy[str]:
    """Texts close to the grammar, so that every branch of the parser is reached."""
    word = st.sampled_from(["every", "EVERY", "each", "", "évery"])
    count = st.one_of(
        st.integers().map(str),
        st.from_regex(r"[+-]?[0-9]{0,30}(\.[0-9]*)?", fullmatch=True),
        st.text(max_size=5),
    )
    unit = st.sampled_from(["second", "seconds", "MINUTE", "hours", "days", "", "ｓeconds"])
    unit = unit | st.text(max_size=8)
    space = st.text(alphabet=" \t\n\u00a0\u2003", max_size=3)
    return st.builds(
        lambda a, w, b, c, d, u, e: a + w + b + c + d + u + e,
        space,
        word,
        space,
        count,
        space,
        unit,
        space,
    )


@settings(max_examples=250)
@given(st.text(max_size=120) | _frequency_like_texts())
@example("every 1 seconds")
@example("every 31622400 seconds")
@example("every 31622401 seconds")
@example("every 9" * 20)
def test_any_text_parses_to_a_round_trip_or_raises_frequency_error(text: str) -> None:
    try:
        frequency = parse_frequency(text)
    except FrequencyError as caught:
        error = caught
    else:
        assert parse_frequency(str(frequency)) == frequency
        assert 1 <= frequency.seconds <= MAX_SECONDS
        return
    assert error.text == text
    assert str(error)
