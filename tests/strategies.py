"""Hypothesis strategies for every type of the core, shared by all of taskscheduler's tests.

Import them as ``from strategies import ...`` (``tests`` is on pytest's ``pythonpath``).

Times are aware datetimes between 1970 and 2200 unless a test asks for more: that is the range
our services live in, and it keeps ``anchor + k × interval`` far from ``datetime``'s limits.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from taskscheduler_core import (
    MAX_INTERVAL,
    Agent,
    AgentIdentity,
    AgentOutput,
    AgentStatus,
    CreateTask,
    Execution,
    ExecutionKey,
    ExecutionReport,
    ExecutionStatus,
    Frequency,
    LatestOutput,
    RegisterAgent,
    ScheduleTask,
    Task,
    TaskCreated,
    TaskSpec,
    Unit,
    format_time,
    unstructure,
)

__all__ = [
    "agent_identities",
    "agent_outputs",
    "agent_urls",
    "agents",
    "aware_datetimes",
    "bodies_like",
    "commands",
    "create_tasks",
    "execution_keys",
    "execution_reports",
    "execution_statuses",
    "executions",
    "frequencies",
    "frequency_texts",
    "json_values",
    "latest_outputs",
    "outputs_text",
    "register_agents",
    "schedule_tasks",
    "task_createds",
    "task_specs",
    "tasks",
    "time_texts",
    "units",
    "utc_datetimes",
]

_MIN_TIME = datetime(1970, 1, 1)
_MAX_TIME = datetime(2200, 1, 1)


# --- scalars -------------------------------------------------------------------------------------


def utc_datetimes(
    min_value: datetime = _MIN_TIME, max_value: datetime = _MAX_TIME
) -> st.SearchStrategy[datetime]:
    """Aware datetimes in UTC (with microseconds)."""
    return st.datetimes(min_value=min_value, max_value=max_value, timezones=st.just(UTC))


def _offsets() -> st.SearchStrategy[timezone]:
    # RFC 3339 offsets are whole minutes; datetime allows up to ±23:59.
    minutes = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59)
    return minutes.map(lambda m: timezone(timedelta(minutes=m)))


def aware_datetimes(
    min_value: datetime = _MIN_TIME, max_value: datetime = _MAX_TIME
) -> st.SearchStrategy[datetime]:
    """Aware datetimes in UTC or any fixed offset: the same instants, written other ways."""
    return st.datetimes(
        min_value=min_value, max_value=max_value, timezones=st.just(UTC) | _offsets()
    )


def time_texts() -> st.SearchStrategy[str]:
    """RFC 3339 texts: the canonical ``...Z`` form or an explicit offset."""
    canonical = utc_datetimes().map(format_time)
    with_offset = aware_datetimes().map(lambda moment: moment.isoformat())
    return canonical | with_offset


def units() -> st.SearchStrategy[Unit]:
    return st.sampled_from(Unit)


def frequencies(max_seconds: int | None = None) -> st.SearchStrategy[Frequency]:
    """Every valid frequency (interval of 1 s to 366 days), or only those up to ``max_seconds``."""
    limit = int(MAX_INTERVAL.total_seconds()) if max_seconds is None else max_seconds

    def in_unit(unit: Unit) -> st.SearchStrategy[Frequency]:
        counts = st.integers(min_value=1, max_value=max(1, limit // unit.value))
        return counts.map(lambda count: Frequency(count=count, unit=unit))

    usable = [unit for unit in Unit if unit.value <= limit]
    return st.sampled_from(usable).flatmap(in_unit)


def _random_case(draw: st.DrawFn, word: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return "".join(c.upper() if flip else c for c, flip in zip(word, flips, strict=True))


@st.composite
def frequency_texts(draw: st.DrawFn, frequency: Frequency | None = None) -> str:
    """A valid spelling of ``frequency`` (or of any frequency): any case, singular or plural,
    leading zeros, ASCII whitespace around and between the words."""
    if frequency is None:
        frequency = draw(frequencies())
    space = st.text(alphabet=" \t\n\r\f\v", max_size=3)
    gap = st.text(alphabet=" \t", min_size=1, max_size=3)
    unit = frequency.unit.plural
    if draw(st.booleans()):
        unit = unit[:-1]
    zeros = "0" * draw(st.integers(min_value=0, max_value=3))
    return "".join(
        [
            draw(space),
            _random_case(draw, "every"),
            draw(gap),
            f"{zeros}{frequency.count}",
            draw(gap),
            _random_case(draw, unit),
            draw(space),
        ]
    )


def commands(max_size: int = 200) -> st.SearchStrategy[str]:
    """Valid commands: not blank, no NUL, any other text."""
    # the utf-8 codec rules out lone surrogates, which no JSON text carries
    alphabet = st.characters(codec="utf-8", exclude_characters="\x00")
    return st.text(alphabet=alphabet, min_size=1, max_size=max_size).filter(str.strip)


def outputs_text(max_size: int = 200) -> st.SearchStrategy[str]:
    """What a stream may have printed once decoded: any text, often empty."""
    return st.just("") | st.text(max_size=max_size)


def execution_statuses() -> st.SearchStrategy[ExecutionStatus]:
    return st.sampled_from(ExecutionStatus)


def agent_urls() -> st.SearchStrategy[str]:
    hosts = st.sampled_from(["127.0.0.1", "127.0.0.2", "localhost", "agent-1.internal"])
    ports = st.integers(min_value=1, max_value=65535)
    schemes = st.sampled_from(["http", "https"])
    return st.builds(lambda s, h, p: f"{s}://{h}:{p}", schemes, hosts, ports)


def json_values(max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Any JSON document, as ``json.loads`` would return it."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=30)
    )
    return st.recursive(
        scalars,
        lambda children: (
            st.lists(children, max_size=5)
            | st.dictionaries(st.text(max_size=10), children, max_size=5)
        ),
        max_leaves=max_leaves,
    )


# --- models --------------------------------------------------------------------------------------


def tasks() -> st.SearchStrategy[Task]:
    return st.builds(
        Task,
        id=st.uuids(),
        command=commands(),
        frequency=frequencies(),
        anchor=aware_datetimes(),
        created_at=aware_datetimes(),
    )


def task_specs(max_seconds: int | None = None) -> st.SearchStrategy[TaskSpec]:
    return st.builds(
        TaskSpec,
        task_id=st.uuids(),
        command=commands(),
        frequency=frequencies(max_seconds),
        anchor=aware_datetimes(),
    )


def execution_keys() -> st.SearchStrategy[ExecutionKey]:
    return st.builds(
        ExecutionKey, task_id=st.uuids(), agent_id=st.uuids(), scheduled_at=aware_datetimes()
    )


def executions() -> st.SearchStrategy[Execution]:
    return st.builds(
        Execution,
        task_id=st.uuids(),
        agent_id=st.uuids(),
        scheduled_at=aware_datetimes(),
        started_at=aware_datetimes(),
        finished_at=aware_datetimes(),
        status=execution_statuses(),
        exit_code=st.none() | st.integers(min_value=-255, max_value=255),
        stdout=outputs_text(),
        stderr=outputs_text(),
        stdout_dropped=st.integers(min_value=0, max_value=2**40),
        stderr_dropped=st.integers(min_value=0, max_value=2**40),
    )


def agents() -> st.SearchStrategy[Agent]:
    return st.builds(
        Agent,
        id=st.uuids(),
        url=agent_urls(),
        registered_at=aware_datetimes(),
        last_seen_at=st.none() | aware_datetimes(),
        status=st.sampled_from(AgentStatus),
    )


def agent_outputs() -> st.SearchStrategy[AgentOutput]:
    return st.builds(AgentOutput, agent_id=st.uuids(), stdout=outputs_text(), stderr=outputs_text())


def latest_outputs() -> st.SearchStrategy[LatestOutput]:
    return st.builds(
        LatestOutput,
        completion_time=st.none() | aware_datetimes(),
        outputs=st.lists(agent_outputs(), max_size=4).map(tuple),
        scheduled_at=st.none() | aware_datetimes(),
    )


# --- messages ------------------------------------------------------------------------------------


def create_tasks() -> st.SearchStrategy[CreateTask]:
    return st.builds(CreateTask, command=commands(), frequency=frequencies())


def task_createds() -> st.SearchStrategy[TaskCreated]:
    return tasks().map(lambda task: TaskCreated(command_id=task.id, task=task))


def schedule_tasks() -> st.SearchStrategy[ScheduleTask]:
    return st.builds(
        ScheduleTask,
        task_id=st.uuids(),
        command=commands(),
        frequency=frequencies(),
        anchor=st.none() | aware_datetimes(),
    )


def execution_reports() -> st.SearchStrategy[ExecutionReport]:
    return st.builds(
        ExecutionReport,
        server_id=st.uuids(),
        stdout=outputs_text(),
        stderr=outputs_text(),
        scheduled_at=st.none() | aware_datetimes(),
        started_at=st.none() | aware_datetimes(),
        finished_at=st.none() | aware_datetimes(),
        status=execution_statuses(),
        exit_code=st.none() | st.integers(min_value=-255, max_value=255),
        stdout_dropped=st.integers(min_value=0, max_value=2**40),
        stderr_dropped=st.integers(min_value=0, max_value=2**40),
    )


def register_agents() -> st.SearchStrategy[RegisterAgent]:
    return st.builds(RegisterAgent, agent_id=st.uuids(), url=agent_urls())


def agent_identities() -> st.SearchStrategy[AgentIdentity]:
    return st.builds(AgentIdentity, agent_id=st.uuids(), version=st.text(min_size=1, max_size=20))


# --- near-miss JSON bodies -----------------------------------------------------------------------


def _plausible_wire_values() -> st.SearchStrategy[Any]:
    """Values of the right *kind* for some field, so fuzzing gets past the first check."""
    return st.one_of(
        st.uuids().map(str),
        time_texts(),
        frequency_texts(),
        st.sampled_from([status.value for status in ExecutionStatus]),
        agent_urls(),
        commands(max_size=20),
        st.integers(min_value=-3, max_value=3),
        st.sampled_from(["", " ", "\x00", "every 0 seconds", "2026-01-01T00:00:00", "5"]),
    )


_VALID: dict[type, Callable[[], st.SearchStrategy[Any]]] = {
    Task: tasks,
    TaskSpec: task_specs,
    ExecutionKey: execution_keys,
    Execution: executions,
    Agent: agents,
    AgentOutput: agent_outputs,
    LatestOutput: latest_outputs,
    CreateTask: create_tasks,
    TaskCreated: task_createds,
    ScheduleTask: schedule_tasks,
    ExecutionReport: execution_reports,
    RegisterAgent: register_agents,
    AgentIdentity: agent_identities,
}


def bodies_like(kind: type) -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects near a valid ``kind``: a valid body with a few fields replaced, dropped or
    added, so that fuzzing reaches every field and not only the first one checked."""
    valid = _VALID[kind]()
    wrong = _plausible_wire_values() | json_values(max_leaves=5)

    @st.composite
    def bodies(draw: st.DrawFn) -> dict[str, Any]:
        body: dict[str, Any] = unstructure(draw(valid))
        names = sorted(body) or [""]
        for _ in range(draw(st.integers(min_value=0, max_value=3))):
            name = draw(st.sampled_from(names) | st.text(max_size=8))
            if draw(st.booleans()):
                body[name] = draw(wrong)
            else:
                body.pop(name, None)
        return body

    return bodies()


# --- cron expressions and time zones -------------------------------------------------------------
# (the imports are here rather than at the top so that this section stands on its own)

import functools  # noqa: E402

from taskscheduler_core import Cron, check_timezone, parse_cron  # noqa: E402

__all__ += [
    "CRON_ZONES",
    "DST_ZONES",
    "cron_expressions",
    "cron_texts",
    "dst_transitions",
    "moments_near_dst",
    "timezone_names",
    "wall_clock_crons",
]

#: Zones with daylight saving time, among them one with a 30-minute shift (Lord Howe), one in the
#: southern hemisphere (Sydney) and one whose summer is 2 hours ahead (Troll).
DST_ZONES = (
    "America/New_York",
    "Europe/London",
    "Europe/Paris",
    "Australia/Lord_Howe",
    "Australia/Sydney",
    "Antarctica/Troll",
)
#: Every zone the cron tests use: the DST zones plus fixed ones (Kolkata is UTC+05:30).
CRON_ZONES = ("UTC", "Asia/Kolkata", *DST_ZONES)


def timezone_names(zones: tuple[str, ...] = CRON_ZONES) -> st.SearchStrategy[str]:
    return st.sampled_from(zones)


@functools.cache
def dst_transitions(name: str, year: int) -> tuple[datetime, ...]:
    """The instants (UTC) at which ``name`` changes its UTC offset during ``year``."""
    zone = check_timezone(name)

    def offset(moment: datetime) -> timedelta | None:
        return moment.astimezone(zone).utcoffset()

    found: list[datetime] = []
    moment = datetime(year, 1, 1, tzinfo=UTC)
    end = datetime(year + 1, 1, 1, tzinfo=UTC)
    step = timedelta(hours=6)
    while moment < end:
        if offset(moment) != offset(moment + step):
            low, high = moment, moment + step
            # bisect down to the minute: every offset change since 1970 is on a whole minute
            while high - low > timedelta(minutes=1):
                middle = low + (high - low) / 2
                middle = middle.replace(second=0, microsecond=0)
                if offset(middle) == offset(low):
                    low = middle
                else:
                    high = middle
            found.append(high)
        moment += step
    return tuple(found)


@st.composite
def moments_near_dst(draw: st.DrawFn, name: str, within: timedelta = timedelta(days=2)) -> datetime:
    """An instant (UTC, with microseconds) within ``within`` of one of ``name``'s offset changes
    in 2020-2030, or anywhere in those years for a zone without any."""
    year = draw(st.integers(min_value=2020, max_value=2030))
    transitions = dst_transitions(name, year)
    if not transitions:
        return draw(utc_datetimes(datetime(year, 1, 1), datetime(year, 12, 31)))
    change = draw(st.sampled_from(transitions))
    micros = int(within / timedelta(microseconds=1))
    return change + timedelta(microseconds=draw(st.integers(min_value=-micros, max_value=micros)))


def _values(low: int, high: int) -> st.SearchStrategy[str]:
    """One cron field over ``low..high``: a value, a range, a list, a step, or a star."""
    value = st.integers(min_value=low, max_value=high)
    ranges = st.tuples(value, value).map(sorted).map(lambda pair: f"{pair[0]}-{pair[1]}")
    steps = st.integers(min_value=1, max_value=high - low + 1)
    lists = st.lists(value, min_size=2, max_size=4, unique=True).map(
        lambda items: ",".join(map(str, items))
    )
    return st.one_of(
        value.map(str),
        ranges,
        lists,
        st.tuples(ranges, steps).map(lambda pair: f"{pair[0]}/{pair[1]}"),
        st.just("*"),
        steps.map(lambda step: f"*/{step}"),
    )


@st.composite
def cron_expressions(draw: st.DrawFn, *, days: bool = True) -> Cron:
    """Valid cron expressions: aliases and 5 fields mixing every syntax cronsim reads.

    Days of the month stop at 28 so that every expression fires; ``days=False`` leaves the three
    day fields at ``*`` (every day), which keeps year-long iterations short.
    """
    if days and draw(st.integers(min_value=0, max_value=9)) == 0:
        return parse_cron(draw(st.sampled_from(["@hourly", "@daily", "@weekly", "@monthly"])))
    minute = draw(_values(0, 59))
    hour = draw(_values(0, 23))
    if not days:
        return parse_cron(f"{minute} {hour} * * *")
    day = draw(st.sampled_from(["*", "L"]) | _values(1, 28))
    month = draw(st.sampled_from(["*", "JAN-JUN", "*/3"]) | _values(1, 12))
    weekday = draw(st.sampled_from(["*", "MON-FRI", "SUN", "5L", "1#2"]) | _values(0, 7))
    if day.startswith("*") and ("#" in weekday or weekday.endswith("L")):
        # A star day field means "and": "*/14 and 2nd Monday" never happens.
        day = "*"
    return parse_cron(f"{minute} {hour} {day} {month} {weekday}")


def wall_clock_crons() -> st.SearchStrategy[Cron]:
    """Expressions that fire on every matching instant (minute or hour field starts with ``*``),
    with every day allowed."""
    return cron_expressions(days=False).filter(lambda cron: not cron.fixed_time)


@st.composite
def cron_texts(draw: st.DrawFn, cron: Cron | None = None) -> str:
    """A spelling of ``cron`` (or of any expression) that parses back to it: any whitespace
    around and between the fields, any case for an alias."""
    if cron is None:
        cron = draw(cron_expressions())
    space = st.text(alphabet=" \t\n", max_size=3)
    gap = st.text(alphabet=" \t", min_size=1, max_size=3)
    if cron.expression.startswith("@"):
        return draw(space) + _random_case(draw, cron.expression) + draw(space)
    fields = cron.expression.split()
    return draw(space) + "".join(field + draw(gap) for field in fields[:-1]) + fields[-1]
