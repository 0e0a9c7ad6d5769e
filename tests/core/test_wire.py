"""The JSON wire format: round trips, time format, strictness, and no exception but WireError."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import (
    agent_identities,
    agent_outputs,
    agents,
    aware_datetimes,
    bodies_like,
    create_tasks,
    execution_keys,
    execution_reports,
    executions,
    json_values,
    latest_outputs,
    register_agents,
    schedule_tasks,
    task_createds,
    task_specs,
    tasks,
)
from taskscheduler_core import (
    Agent,
    AgentIdentity,
    AgentOutput,
    CreateTask,
    Execution,
    ExecutionKey,
    ExecutionReport,
    ExecutionStatus,
    LatestOutput,
    RegisterAgent,
    ScheduleTask,
    Task,
    TaskCreated,
    TaskSchedulerError,
    TaskSpec,
    WireError,
    format_time,
    make_converter,
    parse_frequency,
    parse_time,
    structure,
    unstructure,
)

TIME = datetime(2026, 11, 28, 3, 16, 31, 123456, tzinfo=UTC)
TIME_TEXT = "2026-11-28T03:16:31.123456Z"
WIRE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")
AGENT = UUID("322f0be6-d276-489f-89eb-7662c4517885")

ALL_TYPES: list[tuple[type, st.SearchStrategy[Any]]] = [
    (Task, tasks()),
    (TaskSpec, task_specs()),
    (ExecutionKey, execution_keys()),
    (Execution, executions()),
    (Agent, agents()),
    (AgentOutput, agent_outputs()),
    (LatestOutput, latest_outputs()),
    (CreateTask, create_tasks()),
    (TaskCreated, task_createds()),
    (ScheduleTask, schedule_tasks()),
    (ExecutionReport, execution_reports()),
    (RegisterAgent, register_agents()),
    (AgentIdentity, agent_identities()),
]


def _through_json(data: Any) -> Any:
    """What the other side of a socket would get: proves the data is JSON-ready, too."""
    return json.loads(json.dumps(data))


def _times_in(data: Any) -> list[str]:
    if isinstance(data, dict):
        return [t for value in data.values() for t in _times_in(value)]
    if isinstance(data, list):
        return [t for value in data for t in _times_in(value)]
    if isinstance(data, str) and re.match(r"\d{4}-\d\d-\d\dT", data):
        return [data]
    return []


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "values"), ALL_TYPES, ids=[kind.__name__ for kind, _ in ALL_TYPES]
)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_round_trip(kind: type, values: st.SearchStrategy[Any], data: st.DataObject) -> None:
    value = data.draw(values)
    wire = _through_json(unstructure(value))
    assert isinstance(wire, dict)
    assert structure(wire, kind) == value
    for text in _times_in(wire):
        assert WIRE_TIME.fullmatch(text), text


@settings(max_examples=100)
@given(st.datetimes(timezones=st.just(UTC)))
def test_every_utc_time_round_trips(moment: datetime) -> None:
    text = format_time(moment)
    assert WIRE_TIME.fullmatch(text), text
    assert parse_time(text) == moment


@settings(max_examples=100)
@given(aware_datetimes())
def test_any_offset_is_read_as_the_same_instant(moment: datetime) -> None:
    parsed = parse_time(moment.isoformat())
    assert parsed == moment
    assert parsed.tzinfo is UTC


def test_time_format() -> None:
    assert format_time(TIME) == TIME_TEXT
    assert format_time(TIME.replace(microsecond=0)) == "2026-11-28T03:16:31.000000Z"
    paris = timezone(timedelta(hours=1))
    assert format_time(TIME.astimezone(paris)) == TIME_TEXT
    assert parse_time(TIME_TEXT) == TIME
    assert parse_time("2026-11-28T04:16:31.123456+01:00") == TIME
    assert parse_time("2026-11-28T03:16:31Z") == TIME.replace(microsecond=0)
    with pytest.raises(ValueError, match="naive"):
        format_time(datetime(2026, 11, 28))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("2026-11-28T03:16:31", "no UTC offset"),
        ("2026-11-28", "no UTC offset"),
        ("yesterday", "invalid RFC 3339 time"),
        ("2026-13-01T00:00:00Z", "invalid RFC 3339 time"),
        ("", "invalid RFC 3339 time"),
        (1764299791, "expected an RFC 3339 time string"),
        (None, "expected an RFC 3339 time string"),
    ],
)
def test_bad_times_are_refused(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_time(value)


def test_times_with_offsets_are_stored_in_utc() -> None:
    report = structure(
        {"server_id": str(AGENT), "finished_at": "2026-11-28T05:16:31.123456+02:00"},
        ExecutionReport,
    )
    assert report.finished_at == TIME
    assert report.finished_at is not None
    assert report.finished_at.tzinfo is UTC


def test_execution_on_the_wire() -> None:
    execution = Execution(
        task_id=AGENT,
        agent_id=AGENT,
        scheduled_at=TIME,
        started_at=TIME,
        finished_at=TIME,
        status=ExecutionStatus.TIMED_OUT,
        exit_code=None,
        stdout="out",
    )
    assert unstructure(execution) == {
        "task_id": str(AGENT),
        "agent_id": str(AGENT),
        "scheduled_at": TIME_TEXT,
        "started_at": TIME_TEXT,
        "finished_at": TIME_TEXT,
        "status": "timed_out",
        "exit_code": None,
        "stdout": "out",
        "stderr": "",
        "stdout_dropped": 0,
        "stderr_dropped": 0,
        "attempt": 1,
        "trigger": "schedule",
        "final": True,
    }


def test_task_created_is_flat_with_command_id() -> None:
    task = Task(
        id=AGENT,
        command="echo hello world",
        frequency=parse_frequency("every 30 seconds"),
        anchor=TIME,
        created_at=TIME,
    )
    wire = unstructure(TaskCreated(command_id=task.id, task=task))
    assert wire == {
        "command_id": str(AGENT),
        "id": str(AGENT),
        "command": "echo hello world",
        "frequency": "every 30 seconds",
        "anchor": TIME_TEXT,
        "created_at": TIME_TEXT,
        "updated_at": None,
        "name": None,
        "state": "active",
        "paused": False,
        "deleted_at": None,
        "targets": {"agents": None, "labels": None},
        "timezone": "UTC",
        "timeout": None,
        "overlap": "skip",
        "starting_deadline": None,
        "retries": 0,
        "retry_delay": 1.0,
        "env": {},
        "max_output_bytes": None,
    }
    assert structure(wire, TaskCreated).task == task


# --- the bodies of the original design -----------------------------------------------------------


def test_agent_output_omits_empty_streams() -> None:
    assert unstructure(AgentOutput(agent_id=AGENT)) == {"agent_id": str(AGENT)}
    assert unstructure(AgentOutput(agent_id=AGENT, stdout="hi\n")) == {
        "agent_id": str(AGENT),
        "stdout": "hi\n",
    }
    assert unstructure(AgentOutput(agent_id=AGENT, stderr="oops")) == {
        "agent_id": str(AGENT),
        "stderr": "oops",
    }
    # Whitespace is output, not emptiness.
    assert unstructure(AgentOutput(agent_id=AGENT, stdout=" ")) == {
        "agent_id": str(AGENT),
        "stdout": " ",
    }
    assert structure({"agent_id": str(AGENT)}, AgentOutput) == AgentOutput(agent_id=AGENT)


def test_latest_output_without_a_run() -> None:
    wire = unstructure(LatestOutput(completion_time=None, outputs=()))
    assert wire["completion_time"] is None
    assert wire["outputs"] == []


def test_create_task_of_the_original_design() -> None:
    body = {"command": "echo hello world", "frequency": "every 30 seconds"}
    assert structure(body, CreateTask) == CreateTask(
        command="echo hello world", frequency=parse_frequency("every 30 seconds")
    )


def test_complete_with_the_three_original_fields() -> None:
    body = {"server_id": str(AGENT), "stdout": "hello world\n", "stderr": ""}
    report = structure(body, ExecutionReport)
    assert report == ExecutionReport(server_id=AGENT, stdout="hello world\n")
    assert report.status is ExecutionStatus.SUCCEEDED
    execution = report.execution(uuid4(), received_at=TIME)
    assert execution.scheduled_at == execution.started_at == execution.finished_at == TIME
    assert structure({"server_id": str(AGENT)}, ExecutionReport).stdout == ""


def test_schedule_of_the_original_design() -> None:
    task_id = uuid4()
    body = {"task_id": str(task_id), "command": "uptime", "frequency": "every 1 minute"}
    schedule = structure(body, ScheduleTask)
    assert schedule.anchor is None
    assert schedule.spec(received_at=TIME).anchor == TIME


def test_unknown_keys_are_ignored() -> None:
    # Newer peers may send more; the original design's bodies may carry anything extra.
    body = {"command": "true", "frequency": "every 1 hour", "owner": "ops"}
    assert structure(body, CreateTask).command == "true"


# --- strictness ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "body", "field", "message"),
    [
        (CreateTask, {"command": 5, "frequency": "every 1 second"}, "command", "a string"),
        (CreateTask, {"command": True, "frequency": "every 1 second"}, "command", "a string"),
        (CreateTask, {"command": ["ls"], "frequency": "every 1 second"}, "command", "a string"),
        (CreateTask, {"command": "", "frequency": "every 1 second"}, "command", "empty"),
        (CreateTask, {"command": "  \n", "frequency": "every 1 second"}, "command", "empty"),
        (CreateTask, {"command": "a\x00b", "frequency": "every 1 second"}, "command", "NUL"),
        (CreateTask, {"command": "x" * 70_000, "frequency": "every 1 second"}, "command", "long"),
        (CreateTask, {"frequency": "every 1 second"}, "command", "required"),
        (CreateTask, {"command": "ls"}, "frequency", "required"),
        (CreateTask, {"command": "ls", "frequency": 30}, "frequency", "must be a string"),
        (CreateTask, {"command": "ls", "frequency": None}, "frequency", "must be a string"),
        (CreateTask, {"command": "ls", "frequency": "every 0 seconds"}, "frequency", ">= 1"),
        (CreateTask, {"command": "ls", "frequency": "often"}, "frequency", "every <integer>"),
        (ExecutionReport, {}, "server_id", "required"),
        (ExecutionReport, {"server_id": 5}, "server_id", "UUID"),
        (ExecutionReport, {"server_id": "host-1"}, "server_id", "invalid UUID"),
        (ExecutionReport, {"server_id": str(AGENT), "stdout": 5}, "stdout", "a string"),
        (ExecutionReport, {"server_id": str(AGENT), "stderr": None}, "stderr", "a string"),
        (ExecutionReport, {"server_id": str(AGENT), "exit_code": "5"}, "exit_code", "integer"),
        (ExecutionReport, {"server_id": str(AGENT), "exit_code": True}, "exit_code", "integer"),
        (ExecutionReport, {"server_id": str(AGENT), "exit_code": 1.0}, "exit_code", "integer"),
        (ExecutionReport, {"server_id": str(AGENT), "stdout_dropped": -1}, "stdout_dropped", ">="),
        (ExecutionReport, {"server_id": str(AGENT), "stderr_dropped": "0"}, "stderr_dropped", ""),
        (ExecutionReport, {"server_id": str(AGENT), "status": "done"}, "status", "done"),
        (ExecutionReport, {"server_id": str(AGENT), "status": 1}, "status", ""),
        (ExecutionReport, {"server_id": str(AGENT), "started_at": 0}, "started_at", "RFC 3339"),
        (ExecutionReport, {"server_id": str(AGENT), "finished_at": "now"}, "finished_at", "RFC"),
        (
            ExecutionReport,
            {"server_id": str(AGENT), "scheduled_at": "2026-11-28T03:16:31"},
            "scheduled_at",
            "no UTC offset",
        ),
        (RegisterAgent, {"agent_id": str(AGENT), "url": "ftp://x"}, "url", "http"),
        (RegisterAgent, {"agent_id": str(AGENT), "url": 8080}, "url", "a string"),
        # No HTTP client dials a URL with a control character, and PostgreSQL stores no NUL.
        (RegisterAgent, {"agent_id": str(AGENT), "url": "http://x\x00y:1"}, "url", "control"),
        (RegisterAgent, {"agent_id": str(AGENT), "url": "http://x:1/\x00"}, "url", "control"),
        (RegisterAgent, {"agent_id": str(AGENT), "url": "http://x:1/a\tb"}, "url", "control"),
        (RegisterAgent, {"agent_id": str(AGENT), "url": "http://x:1/\x7f"}, "url", "control"),
        (
            LatestOutput,
            {"completion_time": None, "outputs": [{"agent_id": str(AGENT), "stdout": 1}]},
            "outputs.0.stdout",
            "a string",
        ),
        (ScheduleTask, {"command": "ls", "frequency": "every 1 hour"}, "task_id", "required"),
        (TaskCreated, {"command_id": "nope"}, None, "UUID"),
    ],
)
def test_wrong_types_are_refused_naming_the_field(
    kind: type, body: dict[str, Any], field: str | None, message: str
) -> None:
    with pytest.raises(WireError) as caught:
        structure(body, kind)
    assert caught.value.field == field
    assert message in caught.value.message
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, TaskSchedulerError)


@pytest.mark.parametrize("body", [None, [], ["command"], "command", 5, 1.5, True])
@pytest.mark.parametrize("kind", [CreateTask, ExecutionReport, ScheduleTask, RegisterAgent])
def test_non_object_bodies_are_refused(kind: type, body: object) -> None:
    with pytest.raises(WireError, match="must be a JSON object") as caught:
        structure(body, kind)
    assert caught.value.field is None


def test_make_converter_gives_an_independent_equal_converter() -> None:
    converter = make_converter()
    report = ExecutionReport(server_id=AGENT, finished_at=TIME)
    assert converter.unstructure(report) == unstructure(report)


# --- arbitrary JSON ------------------------------------------------------------------------------


FUZZED_TYPES = [CreateTask, ExecutionReport, ScheduleTask, RegisterAgent, TaskCreated, LatestOutput]
# built once: a strategy built afresh in every example costs more than the example
_ANY_JSON = json_values()
FUZZED = [(kind, _ANY_JSON | bodies_like(kind)) for kind in FUZZED_TYPES]


@pytest.mark.parametrize(("kind", "documents"), FUZZED, ids=[k.__name__ for k in FUZZED_TYPES])
@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_arbitrary_json_gives_a_value_or_a_wire_error(
    kind: type, documents: st.SearchStrategy[Any], data: st.DataObject
) -> None:
    document = data.draw(documents, label="document")
    try:
        value: object = structure(document, kind)
    except WireError as caught:
        error = caught
    else:
        assert isinstance(value, kind)
        # What was accepted is a value we can send on, unchanged.
        assert structure(_through_json(unstructure(value)), kind) == value
        return
    assert error.message


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=40) | st.from_regex(r"\d{4}-\d\d-\d\dT\d\d:\d\d(:\d\d)?\S{0,12}"))
def test_arbitrary_time_text_gives_a_time_or_a_wire_error(text: str) -> None:
    try:
        report = structure({"server_id": str(AGENT), "finished_at": text}, ExecutionReport)
    except WireError as caught:
        error = caught
    else:
        assert report.finished_at is not None
        assert report.finished_at.tzinfo is UTC
        return
    assert error.field == "finished_at"
