"""Cron expressions, IANA time zones, and cron fire times across daylight-saving changes."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from cronsim import CronSim
from hypothesis import example, given, settings
from hypothesis import strategies as st

from strategies import (
    DST_ZONES,
    cron_expressions,
    cron_texts,
    dst_transitions,
    moments_near_dst,
    timezone_names,
    utc_datetimes,
    wall_clock_crons,
)
from taskscheduler_core import (
    Cron,
    FrequencyError,
    TaskSchedulerError,
    TimezoneError,
    check_timezone,
    parse_cron,
)
from taskscheduler_core.cron import cron_fires_between, cron_next_after

NEW_YORK = "America/New_York"
MINUTE = timedelta(minutes=1)


def _utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def _local(instant: datetime, zone: str) -> str:
    """``instant`` on the wall clock of ``zone``, with its offset: ``2024-11-03 01:30-04:00``."""
    return instant.astimezone(ZoneInfo(zone)).isoformat(sep=" ", timespec="minutes")


def _iterate(cron: Cron, zone: str, moment: datetime, count: int) -> list[datetime]:
    fires: list[datetime] = []
    for _ in range(count):
        moment = cron_next_after(cron, zone, moment)
        fires.append(moment)
    return fires


def _fires_until(cron: Cron, zone: str, after: datetime, until: datetime) -> list[datetime]:
    fires: list[datetime] = []
    while (after := cron_next_after(cron, zone, after)) <= until:
        fires.append(after)
    return fires


# --- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canonical", "fields"),
    [
        ("*/5 * * * *", "*/5 * * * *", "*/5 * * * *"),
        ("  0   9\t* *  1-5 ", "0 9 * * 1-5", "0 9 * * 1-5"),
        ("0 9 * * mon-fri", "0 9 * * mon-fri", "0 9 * * mon-fri"),
        ("0 0 L * *", "0 0 L * *", "0 0 L * *"),
        ("0 12 * * 5L", "0 12 * * 5L", "0 12 * * 5L"),
        ("0 0 * * MON#2", "0 0 * * MON#2", "0 0 * * MON#2"),
        ("0 0 29 2 *", "0 0 29 2 *", "0 0 29 2 *"),
        ("@hourly", "@hourly", "0 * * * *"),
        ("@DAILY", "@daily", "0 0 * * *"),
        (" @Midnight ", "@midnight", "0 0 * * *"),
        ("@weekly", "@weekly", "0 0 * * 0"),
        ("@monthly", "@monthly", "0 0 1 * *"),
        ("@yearly", "@yearly", "0 0 1 1 *"),
        ("@annually", "@annually", "0 0 1 1 *"),
    ],
)
def test_accepts(text: str, canonical: str, fields: str) -> None:
    cron = parse_cron(text)
    assert str(cron) == cron.expression == canonical
    assert cron.fields == fields
    assert parse_cron(str(cron)) == cron


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("", "expected 5 fields"),
        ("* * * *", "expected 5 fields"),
        ("0 * * * * * *", "expected 5 fields"),
        ("0 */5 * * * *", "seconds are not supported"),
        ("60 * * * *", "bad minute"),
        ("* 24 * * *", "bad hour"),
        ("* * 0 * *", "bad day-of-month"),
        ("* * * 13 *", "bad month"),
        ("* * * * 8", "bad day-of-week"),
        ("*/0 * * * *", "bad minute"),
        ("5-1 * * * *", "bad minute"),
        ("? * * * *", "unexpected character"),
        ("0 0 * * ſun", "unexpected character"),  # "ſun".upper() == "SUN"
        ("0 0 ５ * *", "unexpected character"),
        ("0 0 30 2 *", "day-of-month"),
        ("0 0 31 4,6,9,11 *", "day-of-month"),
        ("0 0 */20 * 1#5", "never fires"),  # the 1st or the 21st is never a 5th Monday
        ("@often", "unknown alias '@often'"),
        ("@daily 0", "expected 5 fields"),
        ("0 " * 60, "too long"),
    ],
)
def test_refuses_and_names_the_problem(text: str, names: str) -> None:
    with pytest.raises(FrequencyError) as caught:
        parse_cron(text)
    assert names in str(caught.value)
    assert caught.value.text == text


def test_refuses_non_strings() -> None:
    with pytest.raises(FrequencyError, match="must be a string"):
        parse_cron(5)  # type: ignore[arg-type]


def test_cron_refuses_a_text_that_is_not_canonical() -> None:
    assert Cron("@daily") == parse_cron("@Daily")
    for text in ("@Daily", " 0 0 * * *", "0  0 * * *", "nonsense"):
        with pytest.raises(FrequencyError):
            Cron(text)


def test_cron_is_frozen_and_hashable() -> None:
    cron = parse_cron("0 * * * *")
    assert {cron, parse_cron("0  *  * * *")} == {cron}
    assert cron != parse_cron("@hourly")  # the same times, written differently
    with pytest.raises(AttributeError):
        cron.expression = "@daily"  # type: ignore[misc]


def test_describe_explains_in_english() -> None:
    assert parse_cron("0 9 * * 1-5").describe() == "At 09:00 on Monday through Friday"
    assert parse_cron("@daily").describe() == "At 00:00 every day"


@pytest.mark.parametrize(
    ("text", "fixed"),
    [
        ("30 2 * * *", True),
        ("0 9 * * 1-5", True),
        ("0 0-23 * * *", True),
        ("@daily", True),
        ("@weekly", True),
        ("*/15 * * * *", False),
        ("0 * * * *", False),
        ("0 */2 * * *", False),
        ("* 3 * * *", False),
        ("@hourly", False),
    ],
)
def test_fixed_time_is_cronsims_rule(text: str, fixed: bool) -> None:
    assert parse_cron(text).fixed_time is fixed


@settings(max_examples=50)
@given(st.data())
def test_every_spelling_parses_to_its_canonical_form(data: st.DataObject) -> None:
    cron = data.draw(cron_expressions())
    assert parse_cron(data.draw(cron_texts(cron))) == cron
    assert parse_cron(str(cron)) == cron


def _cron_like_texts() -> st.SearchStrategy[str]:
    field = st.text(alphabet="0123456789*/,-#LW?MONJAFEBSU@ ", max_size=6)
    return st.lists(field, min_size=0, max_size=7).map(" ".join)


@settings(max_examples=300)
@given(st.text(max_size=40) | _cron_like_texts())
@example("@")
@example("0 0 L/2 * *")
@example("0 0 * * 1L/2")
@example("0 0 * * L")
@example("0 0 LW 2 *")
def test_any_text_parses_or_raises_frequency_error(text: str) -> None:
    try:
        cron = parse_cron(text)
    except FrequencyError as caught:
        error = caught
    else:
        assert parse_cron(str(cron)) == cron
        assert cron.describe()
        return
    assert error.text == text
    assert str(error)


# --- time zones ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["UTC", "Europe/Paris", "America/Argentina/Buenos_Aires", "Etc/GMT+5", "EST5EDT"]
)
def test_accepts_iana_names(name: str) -> None:
    zone = check_timezone(name)
    assert str(zone) == name
    assert check_timezone(name) is zone  # cached


@pytest.mark.parametrize(
    "name",
    [
        "Mars/Olympus",
        "utc",  # IANA names are case-sensitive
        "europe/paris",
        "Europe/Paris/",
        "/etc/localtime",
        "../../etc/passwd",
        "Europe/../UTC",
        "localtime",
        "posixrules",
        "right/UTC",
        "posix/Europe/Paris",
        "America",
        "Europe/Paris\x00",
        "+05:00",
    ],
)
def test_refuses_what_is_not_an_iana_name(name: str) -> None:
    with pytest.raises(TimezoneError) as caught:
        check_timezone(name)
    assert caught.value.name == name
    assert str(caught.value) == (
        f"unknown time zone {name!r}; use an IANA name such as 'Europe/Paris'"
    )
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, TaskSchedulerError)


@pytest.mark.parametrize(("name", "says"), [("", "must not be empty"), ("A" * 65, "too long")])
def test_refuses_empty_and_long_names(name: str, says: str) -> None:
    with pytest.raises(TimezoneError, match=says):
        check_timezone(name)


@settings(max_examples=200)
@given(st.text(max_size=70) | st.from_regex(r"[A-Za-z_/.+-]{1,30}", fullmatch=True))
def test_any_name_is_a_zone_or_a_timezone_error(name: str) -> None:
    try:
        zone = check_timezone(name)
    except TimezoneError as caught:
        error = caught
    else:
        assert str(zone) == name
        return
    assert error.name == name


def test_cron_fire_times_refuse_unknown_zones_and_naive_moments() -> None:
    cron = parse_cron("@hourly")
    with pytest.raises(TimezoneError, match="Mars/Olympus"):
        cron_next_after(cron, "Mars/Olympus", _utc(2026, 1, 1))
    with pytest.raises(TimezoneError):
        cron_fires_between(cron, "", _utc(2026, 1, 1), _utc(2026, 1, 2), 5)
    with pytest.raises(ValueError, match="timezone-aware"):
        cron_next_after(cron, "UTC", datetime(2026, 1, 1))


# --- fire times: examples ------------------------------------------------------------------------


def test_utc_hourly() -> None:
    cron = parse_cron("@hourly")
    moment = datetime(2026, 11, 28, 3, 16, 31, 123456, tzinfo=UTC)
    assert _iterate(cron, "UTC", moment, 2) == [_utc(2026, 11, 28, 4), _utc(2026, 11, 28, 5)]
    # strictly after: a fire time is not its own successor
    assert cron_next_after(cron, "UTC", _utc(2026, 11, 28, 4)) == _utc(2026, 11, 28, 5)
    assert cron_next_after(cron, "UTC", _utc(2026, 11, 28, 4) - timedelta(microseconds=1)) == (
        _utc(2026, 11, 28, 4)
    )


def test_matches_the_wall_clock_of_the_zone() -> None:
    cron = parse_cron("0 9 * * 1-5")  # 09:00 in Paris on weekdays
    fires = _iterate(cron, "Europe/Paris", _utc(2026, 7, 3), 3)  # a Friday in summer (UTC+2)
    assert fires == [_utc(2026, 7, 3, 7), _utc(2026, 7, 6, 7), _utc(2026, 7, 7, 7)]
    assert all(fire.tzinfo is UTC and fire.microsecond == 0 for fire in fires)
    winter = cron_next_after(cron, "Europe/Paris", _utc(2026, 12, 1))
    assert winter == _utc(2026, 12, 1, 8)  # UTC+1
    assert cron_next_after(cron, "Asia/Kolkata", _utc(2026, 12, 1)) == _utc(2026, 12, 1, 3, 30)


def test_fixed_time_in_a_spring_forward_gap_runs_at_the_first_minute_after_it() -> None:
    # New York, 2024-03-10: 02:00 EST jumps to 03:00 EDT, so 02:30 does not exist that day.
    fires = _iterate(parse_cron("30 2 * * *"), NEW_YORK, _utc(2024, 3, 9, 12), 3)
    assert [_local(fire, NEW_YORK) for fire in fires] == [
        "2024-03-10 03:00-04:00",
        "2024-03-11 02:30-04:00",
        "2024-03-12 02:30-04:00",
    ]


def test_two_fixed_times_in_one_gap_run_once() -> None:
    fires = _iterate(parse_cron("0,30 2,3 * * *"), NEW_YORK, _utc(2024, 3, 10, 6), 3)
    assert [_local(fire, NEW_YORK) for fire in fires] == [
        "2024-03-10 03:00-04:00",  # 02:00 and 02:30 and 03:00 all land here: one run
        "2024-03-10 03:30-04:00",
        "2024-03-11 02:00-04:00",
    ]


def test_fixed_time_in_a_fall_back_overlap_runs_once_at_the_first_occurrence() -> None:
    # New York, 2024-11-03: 02:00 EDT falls back to 01:00 EST, so 01:30 happens twice.
    cron = parse_cron("30 1 * * *")
    fires = _iterate(cron, NEW_YORK, _utc(2024, 11, 2, 12), 3)
    assert [_local(fire, NEW_YORK) for fire in fires] == [
        "2024-11-03 01:30-04:00",
        "2024-11-04 01:30-05:00",
        "2024-11-05 01:30-05:00",
    ]
    # Asked from inside the second pass (01:10 EST), today's run is over: the next is tomorrow.
    assert _local(cron_next_after(cron, NEW_YORK, _utc(2024, 11, 3, 6, 10)), NEW_YORK) == (
        "2024-11-04 01:30-05:00"
    )


def test_wall_clock_expression_fires_twice_in_a_repeated_hour() -> None:
    fires = _iterate(parse_cron("*/30 * * * *"), NEW_YORK, _utc(2024, 11, 3, 4), 7)
    assert [_local(fire, NEW_YORK) for fire in fires] == [
        "2024-11-03 00:30-04:00",
        "2024-11-03 01:00-04:00",
        "2024-11-03 01:30-04:00",
        "2024-11-03 01:00-05:00",
        "2024-11-03 01:30-05:00",
        "2024-11-03 02:00-05:00",
        "2024-11-03 02:30-05:00",
    ]
    assert [fire - previous for previous, fire in itertools.pairwise(fires)] == [
        timedelta(minutes=30)
    ] * 6


def test_wall_clock_expression_does_not_fire_in_a_gap() -> None:
    fires = _iterate(parse_cron("*/30 * * * *"), NEW_YORK, _utc(2024, 3, 10, 6), 4)
    assert [_local(fire, NEW_YORK) for fire in fires] == [
        "2024-03-10 01:30-05:00",
        "2024-03-10 03:00-04:00",
        "2024-03-10 03:30-04:00",
        "2024-03-10 04:00-04:00",
    ]


def test_wall_clock_expression_from_inside_the_first_pass_keeps_the_second() -> None:
    # At 01:40 EDT, first pass: 01:45 EDT comes next, then 01:00 EST ... the second pass.
    cron = parse_cron("*/15 1 * * *")
    fires = _iterate(cron, NEW_YORK, _utc(2024, 11, 3, 5, 40), 5)
    assert [_local(fire, NEW_YORK) for fire in fires] == [
        "2024-11-03 01:45-04:00",
        "2024-11-03 01:00-05:00",
        "2024-11-03 01:15-05:00",
        "2024-11-03 01:30-05:00",
        "2024-11-03 01:45-05:00",
    ]


def test_lord_howe_shifts_by_half_an_hour() -> None:
    zone = "Australia/Lord_Howe"
    # 2024-04-07 02:00 +11 falls back to 01:30 +10:30
    fires = _iterate(parse_cron("*/15 * * * *"), zone, _utc(2024, 4, 6, 14), 6)
    assert [_local(fire, zone)[11:] for fire in fires] == [
        "01:15+11:00",
        "01:30+11:00",
        "01:45+11:00",
        "01:30+10:30",
        "01:45+10:30",
        "02:00+10:30",
    ]
    # 2024-10-06 02:00 +10:30 springs forward to 02:30 +11
    assert _local(cron_next_after(parse_cron("15 2 * * *"), zone, _utc(2024, 10, 5)), zone) == (
        "2024-10-06 02:30+11:00"
    )


def test_fires_between_is_cheap_over_a_year() -> None:
    cron = parse_cron("* * * * *")
    fires = cron_fires_between(cron, "Europe/Paris", _utc(2025, 1, 1), _utc(2026, 1, 1), 3)
    assert fires == [_utc(2025, 12, 31, 23, 58), _utc(2025, 12, 31, 23, 59), _utc(2026, 1, 1)]
    yearly = parse_cron("@yearly")
    fires = cron_fires_between(yearly, "UTC", _utc(2000, 1, 1), _utc(2026, 6, 1), 100)
    assert fires == [_utc(year, 1, 1) for year in range(2001, 2027)]


def test_fires_between_edges() -> None:
    cron = parse_cron("@hourly")
    start = _utc(2026, 1, 1)
    assert cron_fires_between(cron, "UTC", start, start + timedelta(hours=2), 0) == []
    assert cron_fires_between(cron, "UTC", start, start, 5) == []
    assert cron_fires_between(cron, "UTC", start, start - MINUTE, 5) == []
    # (after, until]: the start is out, the end is in
    assert cron_fires_between(cron, "UTC", start, start + timedelta(hours=2), 5) == [
        start + timedelta(hours=1),
        start + timedelta(hours=2),
    ]


# --- fire times: properties ----------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    cron=cron_expressions(),
    zone=timezone_names(),
    count=st.integers(min_value=50, max_value=200),
    data=st.data(),
)
def test_fire_times_strictly_increase(
    cron: Cron, zone: str, count: int, data: st.DataObject
) -> None:
    moment = data.draw(moments_near_dst(zone), label="moment")
    previous = moment
    for fire in _iterate(cron, zone, moment, count):
        assert fire > previous
        assert fire.tzinfo is UTC
        assert fire.microsecond == 0
        assert fire.second == 0
        previous = fire


@settings(max_examples=75)
@given(cron=cron_expressions(), moment=utc_datetimes())
def test_in_utc_it_agrees_with_cronsim(cron: Cron, moment: datetime) -> None:
    assert cron_next_after(cron, "UTC", moment) == next(CronSim(cron.fields, moment))


@settings(max_examples=15, deadline=None)
@given(
    minute=st.integers(min_value=0, max_value=59),
    hour=st.integers(min_value=0, max_value=23),
    zone=timezone_names(DST_ZONES),
    year=st.integers(min_value=2020, max_value=2030),
)
def test_a_daily_job_fires_once_on_every_local_date(
    minute: int, hour: int, zone: str, year: int
) -> None:
    tz = ZoneInfo(zone)
    start = datetime(year, 1, 1, tzinfo=tz)
    end = datetime(year + 1, 1, 1, tzinfo=tz) - timedelta(microseconds=1)
    before_start = start - timedelta(microseconds=1)
    fires = _fires_until(parse_cron(f"{minute} {hour} * * *"), zone, before_start, end)
    dates = [fire.astimezone(tz).date() for fire in fires]
    days = (date(year + 1, 1, 1) - date(year, 1, 1)).days
    # once per date: never twice in a fall-back, never skipped in a spring-forward
    assert dates == [date(year, 1, 1) + timedelta(days=n) for n in range(days)]
    for fire in fires:
        local = fire.astimezone(tz)
        wanted = local.replace(hour=hour, minute=minute)
        if (local.hour, local.minute) != (hour, minute):
            # only where that wall time does not exist, and then at the first minute after it
            assert wanted.astimezone(UTC).astimezone(tz).replace(tzinfo=None) != wanted.replace(
                tzinfo=None
            )
            before = (fire - MINUTE).astimezone(tz)
            assert (
                before.replace(tzinfo=None)
                < wanted.replace(tzinfo=None)
                < local.replace(tzinfo=None)
            )


def _matches(cron: Cron, wall: datetime) -> bool:
    """Independent of cronsim: does ``wall`` match an expression of :func:`wall_clock_crons`?"""
    minute, hour = cron.fields.split()[:2]
    return wall.minute in _field_values(minute, 0, 59) and wall.hour in _field_values(hour, 0, 23)


def _field_values(field: str, low: int, high: int) -> set[int]:
    values: set[int] = set()
    for part in field.split(","):
        term, _, step = part.partition("/")
        if term == "*":
            first, last = low, high
        elif "-" in term:
            first, last = (int(bound) for bound in term.split("-"))
        else:
            first = int(term)
            last = high if step else first
        values.update(range(first, last + 1, int(step or 1)))
    return values


@settings(max_examples=12, deadline=None)
@given(cron=wall_clock_crons(), zone=timezone_names(DST_ZONES), data=st.data())
def test_wall_clock_fires_are_exactly_the_matching_instants(
    cron: Cron, zone: str, data: st.DataObject
) -> None:
    year = data.draw(st.integers(min_value=2020, max_value=2030), label="year")
    change = data.draw(st.sampled_from(dst_transitions(zone, year)), label="change")
    start = change - timedelta(days=1)
    end = change + timedelta(days=1)
    tz = ZoneInfo(zone)
    # brute force: every minute of real time in the window, matched on its own wall clock
    minutes = int((end - start) / MINUTE)
    instants = [start + n * MINUTE for n in range(1, minutes + 1)]
    expected = [instant for instant in instants if _matches(cron, instant.astimezone(tz))]
    assert _fires_until(cron, zone, start, end) == expected
    assert cron_fires_between(cron, zone, start, end, len(expected) + 1) == expected


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("* 0-0/1 * * *", "* 0 * * *"),
        ("5-5/2,7 05-5/1 * * *", "5,7 05 * * *"),
        ("* * * * MON-mon/2", "* * * * MON"),
        ("* 5-6/1 * * *", "* 5-6/1 * * *"),
    ],
)
def test_a_range_of_one_value_with_a_step_is_that_value(text: str, canonical: str) -> None:
    # cron reads 0-0/1 as hour 0 alone; cronsim 2.x as 0/1, every hour (found by Hypothesis)
    cron = parse_cron(text)
    assert cron.expression == canonical
    hours = set()
    moment = datetime(2026, 3, 1, tzinfo=UTC)  # a Sunday; the Monday after it is in range
    while moment < datetime(2026, 3, 3, tzinfo=UTC):
        moment = cron_next_after(cron, "UTC", moment)
        hours.add(moment.hour)
    hour_field = canonical.split()[1].replace("05", "5")
    assert hours == _field_values(hour_field, 0, 23)
