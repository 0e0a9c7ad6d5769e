"""Fire times: ``anchor + k × interval`` in exact microsecond arithmetic, and cron recurrences."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import (
    aware_datetimes,
    cron_expressions,
    cron_texts,
    frequencies,
    frequency_texts,
    moments_near_dst,
    timezone_names,
    utc_datetimes,
)
from taskscheduler_core import (
    Cron,
    Frequency,
    FrequencyError,
    Recurrence,
    TimezoneError,
    WireError,
    fires_between,
    next_fire_after,
    next_slot_after,
    parse_cron,
    parse_frequency,
    parse_recurrence,
    require_utc,
    slot,
    slot_index_after,
    structure,
    unstructure,
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


# --- recurrences: intervals and cron expressions -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("every 30 seconds", parse_frequency("every 30 seconds")),
        ("  EVERY 2 Days ", parse_frequency("every 2 days")),
        ("every 1 week", parse_frequency("every 1 weeks")),
        ("*/5 * * * *", parse_cron("*/5 * * * *")),
        (" 0  9 * * 1-5 ", parse_cron("0 9 * * 1-5")),
        ("@Daily", parse_cron("@daily")),
    ],
)
def test_parse_recurrence_tells_the_two_kinds_apart(text: str, expected: Recurrence) -> None:
    assert parse_recurrence(text) == expected


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (
            "xyz",
            "invalid frequency 'xyz': expected 'every <integer> "
            "(seconds|minutes|hours|days|weeks)' or a cron expression such as '*/5 * * * *' "
            "or '@daily'",
        ),
        ("", "or a cron expression"),
        ("30 seconds", "or a cron expression"),
        ("everyday", "or a cron expression"),
        ("every 10 fortnights", "unknown unit 'fortnights'"),
        ("every 53 weeks", "366 days"),
        ("61 * * * *", "invalid cron expression '61 * * * *': bad minute"),
        ("0 0 * * * *", "seconds are not supported"),
        ("@often", "unknown alias"),
        ("x" * 101, "too long"),
    ],
)
def test_parse_recurrence_refuses_and_names_the_problem(text: str, names: str) -> None:
    with pytest.raises(FrequencyError) as caught:
        parse_recurrence(text)
    assert names in str(caught.value)
    assert caught.value.text == text


def test_parse_recurrence_refuses_non_strings() -> None:
    with pytest.raises(FrequencyError, match="must be a string"):
        parse_recurrence(None)  # type: ignore[arg-type]


@settings(max_examples=100)
@given(st.data())
def test_parse_recurrence_round_trips_both_kinds(data: st.DataObject) -> None:
    recurrence: Recurrence = data.draw(frequencies() | cron_expressions())
    assert parse_recurrence(str(recurrence)) == recurrence
    if isinstance(recurrence, Frequency):
        text = data.draw(frequency_texts(recurrence))
    else:
        text = data.draw(cron_texts(recurrence))
    assert parse_recurrence(text) == recurrence


@settings(max_examples=200)
@given(st.text(max_size=40))
def test_parse_recurrence_of_garbage_is_a_frequency_error(text: str) -> None:
    try:
        recurrence = parse_recurrence(text)
    except FrequencyError as caught:
        error = caught
    else:
        assert parse_recurrence(str(recurrence)) == recurrence
        return
    assert error.text == text


def test_an_interval_is_real_time_whatever_the_zone() -> None:
    # every 1 days across New York's spring-forward: 24 h of real time, 25 h on the wall clock
    anchor = datetime(2024, 3, 9, 12, tzinfo=UTC)
    daily = parse_frequency("every 1 days")
    fired = next_fire_after(daily, anchor=anchor, timezone="America/New_York", moment=anchor)
    assert fired == anchor + timedelta(days=1)
    assert fired == next_slot_after(anchor, daily, anchor)


def test_next_fire_after_starts_after_the_anchor() -> None:
    anchor = datetime(2026, 1, 1, 0, 30, tzinfo=UTC)
    before = anchor - timedelta(days=10)
    hourly = parse_cron("@hourly")
    assert next_fire_after(hourly, anchor=anchor, timezone="UTC", moment=before) == datetime(
        2026, 1, 1, 1, tzinfo=UTC
    )
    every_hour = parse_frequency("every 1 hours")
    assert next_fire_after(every_hour, anchor=anchor, timezone="UTC", moment=before) == (
        anchor + timedelta(hours=1)
    )
    later = datetime(2026, 1, 1, 5, 15, tzinfo=UTC)
    assert next_fire_after(hourly, anchor=anchor, timezone="UTC", moment=later) == datetime(
        2026, 1, 1, 6, tzinfo=UTC
    )


def test_cron_follows_its_zone() -> None:
    nine = parse_cron("0 9 * * *")
    moment = datetime(2026, 1, 14, 20, tzinfo=UTC)  # 05:00 in Tokyo, 15:00 in New York
    assert next_fire_after(nine, anchor=moment, timezone="Asia/Tokyo", moment=moment) == (
        datetime(2026, 1, 15, 0, tzinfo=UTC)
    )
    assert next_fire_after(nine, anchor=moment, timezone="America/New_York", moment=moment) == (
        datetime(2026, 1, 15, 14, tzinfo=UTC)
    )


def test_recurrence_functions_refuse_unknown_zones_and_naive_times() -> None:
    moment = datetime(2026, 1, 1, tzinfo=UTC)
    for recurrence in (parse_frequency("every 5 minutes"), parse_cron("*/5 * * * *")):
        with pytest.raises(TimezoneError, match="Mars/Olympus"):
            next_fire_after(recurrence, anchor=moment, timezone="Mars/Olympus", moment=moment)
        with pytest.raises(TimezoneError):
            fires_between(
                recurrence, anchor=moment, timezone="", after=moment, until=moment, limit=1
            )
        with pytest.raises(ValueError, match="timezone-aware"):
            next_fire_after(
                recurrence, anchor=moment, timezone="UTC", moment=moment.replace(tzinfo=None)
            )


def test_fires_between_intervals() -> None:
    every_30s = parse_frequency("every 30 seconds")

    def between(after: datetime, until: datetime, limit: int) -> list[datetime]:
        return fires_between(
            every_30s, anchor=ANCHOR, timezone="UTC", after=after, until=until, limit=limit
        )

    until = ANCHOR + timedelta(minutes=10)
    assert between(ANCHOR, until, 3) == [
        until - timedelta(seconds=60),
        until - timedelta(seconds=30),
        until,
    ]
    # (after, until]: a fire time at ``after`` is out, one at ``until`` is in
    first = ANCHOR + timedelta(seconds=30)
    assert between(first, first, 5) == []
    assert between(ANCHOR - timedelta(days=1), first, 5) == [first]
    assert between(ANCHOR, until, 0) == []
    assert between(until, ANCHOR, 5) == []


def _tail(
    recurrence: Recurrence,
    anchor: datetime,
    zone: str,
    after: datetime,
    until: datetime,
    limit: int,
) -> list[datetime]:
    fires: list[datetime] = []
    moment = after
    while (moment := next_fire_after(recurrence, anchor=anchor, timezone=zone, moment=moment)) <= (
        until
    ):
        fires.append(moment)
    return fires[-limit:] if limit > 0 else []


@settings(max_examples=100)
@given(
    frequency=frequencies(max_seconds=7 * 86400),
    anchor=utc_datetimes(),
    data=st.data(),
)
def test_interval_fires_between_is_the_tail_of_next_fire_after(
    frequency: Frequency, anchor: datetime, data: st.DataObject
) -> None:
    interval = frequency.interval
    after = anchor + data.draw(st.integers(min_value=-50, max_value=50), label="k") * interval
    after += data.draw(st.timedeltas(min_value=-interval, max_value=interval), label="jitter")
    until = after + data.draw(st.integers(min_value=0, max_value=60), label="n") * interval
    until += data.draw(st.timedeltas(min_value=-interval, max_value=interval), label="jitter2")
    limit = data.draw(st.integers(min_value=0, max_value=10), label="limit")
    fires = fires_between(
        frequency, anchor=anchor, timezone="UTC", after=after, until=until, limit=limit
    )
    assert fires == _tail(frequency, anchor, "UTC", after, until, limit)


@settings(max_examples=30, deadline=None)
@given(cron=cron_expressions(), zone=timezone_names(), data=st.data())
def test_cron_fires_between_is_the_tail_of_next_fire_after(
    cron: Cron, zone: str, data: st.DataObject
) -> None:
    after = data.draw(moments_near_dst(zone), label="after")
    anchor = after + data.draw(st.timedeltas(timedelta(hours=-6), timedelta(hours=6)))
    until = after + data.draw(st.timedeltas(timedelta(0), timedelta(hours=12)), label="span")
    limit = data.draw(st.integers(min_value=0, max_value=12), label="limit")
    fires = fires_between(cron, anchor=anchor, timezone=zone, after=after, until=until, limit=limit)
    assert fires == _tail(cron, anchor, zone, after, until, limit)


@attrs.frozen(kw_only=True)
class _Scheduled:
    """A stand-in for the models: a field annotated with the union, as a string annotation."""

    frequency: Recurrence
    cron: Cron


@pytest.mark.parametrize("text", ["every 30 seconds", "*/5 * * * *", "@daily", "0 9 * * MON"])
def test_the_wire_reads_and_writes_recurrences_as_text(text: str) -> None:
    data = {"frequency": text, "cron": "@hourly"}
    scheduled = structure(data, _Scheduled)
    assert scheduled.frequency == parse_recurrence(text)
    assert scheduled.cron == parse_cron("@hourly")
    assert unstructure(scheduled) == data


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (30, "frequency must be a string like 'every 30 seconds' or '0 * * * *', got an integer"),
        (None, "got null"),
        ("every 1 fortnight", "unknown unit"),
        ("0 0 30 2 *", "day-of-month"),
        ("sometimes", "or a cron expression"),
    ],
)
def test_the_wire_refuses_bad_recurrences_naming_the_field(value: object, says: str) -> None:
    with pytest.raises(WireError) as caught:
        structure({"frequency": value, "cron": "@daily"}, _Scheduled)
    assert caught.value.field == "frequency"
    assert says in caught.value.message
