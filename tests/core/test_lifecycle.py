"""Task options, create bodies, edits, pause / resume / delete, run summaries and retention."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskscheduler_core import (
    EDITABLE_FIELDS,
    Execution,
    ExecutionStatus,
    Overlap,
    RetentionPolicy,
    RunStatus,
    Targets,
    TaskState,
    Trigger,
    WireError,
    delete_task,
    edit_task,
    group_runs,
    new_task,
    parse_create,
    parse_label,
    pause_task,
    resume_task,
    structure,
    unstructure,
)
from taskscheduler_core.models import Task, TaskSpec

T0 = datetime(2026, 11, 28, 3, 0, tzinfo=UTC)
GRACE = timedelta(seconds=60)


def create(**fields: Any) -> Task:
    body = parse_create({"command": "echo hi", "frequency": "every 30 seconds"} | fields)
    return new_task(body, task_id=uuid4(), now=T0)


# --- create bodies and their defaults ---------------------------------------------------------


def test_a_minimal_body_gets_the_documented_defaults() -> None:
    task = create()
    assert (task.timezone, task.timeout, task.overlap, task.starting_deadline) == (
        "UTC",
        None,
        Overlap.SKIP,
        None,
    )
    assert (task.retries, task.retry_delay, task.env, task.max_output_bytes) == (0, 1.0, {}, None)
    assert task.targets.all
    assert task.name is None
    assert task.state is TaskState.ACTIVE
    assert task.anchor == task.created_at == task.updated_at == T0


def test_every_option_round_trips_through_the_wire() -> None:
    agent = uuid4()
    task = create(
        name="backup",
        frequency="0 3 * * *",
        timezone="Europe/Paris",
        timeout=90,
        overlap="replace",
        starting_deadline=2.5,
        retries=3,
        retry_delay=0.5,
        env={"MODE": "full"},
        max_output_bytes=4096,
        targets={"agents": [str(agent)]},
    )
    data = unstructure(task)
    assert data["state"] == "active"
    assert data["timeout"] == 90.0
    assert data["overlap"] == "replace"
    assert data["targets"] == {"agents": [str(agent)], "labels": None}
    assert structure(data, Task) == task
    spec = TaskSpec.of(task)
    assert (spec.timezone, spec.env, spec.retries, spec.paused) == (
        "Europe/Paris",
        {"MODE": "full"},
        3,
        False,
    )


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"tiemout": 5}, "tiemout"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": "5"}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"timeout": 10**9}, "timeout"),
        ({"overlap": "queue"}, "overlap"),
        ({"retries": 11}, "retries"),
        ({"retries": -1}, "retries"),
        ({"retry_delay": 0}, "retry_delay"),
        ({"starting_deadline": 0}, "starting_deadline"),
        ({"env": {"TSCHED_TASK_ID": "x"}}, "env"),
        ({"env": {"1BAD": "x"}}, "env"),
        ({"env": {"OK": 5}}, "env"),
        ({"env": {"OK": "a\x00b"}}, "env"),
        ({"max_output_bytes": 0}, "max_output_bytes"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"timezone": "../../etc/passwd"}, "timezone"),
        ({"name": ""}, "name"),
        ({"name": "a\nb"}, "name"),
        ({"targets": {"agents": []}}, "targets"),
        ({"targets": {"agents": ["nope"]}}, "targets"),
        ({"targets": {"labels": {}}}, "targets"),
        ({"targets": {"labels": {"role": "web"}, "agents": [str(uuid4())]}}, "targets"),
        ({"targets": {"labels": {"bad key": "x"}}}, "targets"),
        ({"frequency": "every 0 days"}, "frequency"),
        ({"frequency": "61 * * * *"}, "frequency"),
    ],
)
def test_a_bad_option_is_refused_naming_its_field(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(WireError) as caught:
        create(**fields)
    assert caught.value.field is not None
    assert caught.value.field.startswith(field)


def test_labels_parse_from_key_value_and_select_agents() -> None:
    assert parse_label("role=web") == ("role", "web")
    for bad in ("role", "=web", "a b=c", "role=w b"):
        with pytest.raises(WireError):
            parse_label(bad)
    web, db = uuid4(), uuid4()
    selector = Targets(labels={"role": "web", "zone": "a"})
    assert selector.matches(web, {"role": "web", "zone": "a", "extra": "x"})
    assert not selector.matches(db, {"role": "web"})
    assert Targets(agents=(web,)).matches(web, {})
    assert not Targets(agents=(web,)).matches(db, {})
    assert Targets().matches(db, {})
    assert str(Targets()) == "all"


# --- edits ------------------------------------------------------------------------------------


def test_an_edit_changes_only_what_it_names_and_keeps_the_anchor() -> None:
    task = create(timeout=5, env={"A": "1"})
    later = T0 + timedelta(minutes=5)
    edited = edit_task(task, {"command": "echo bye", "retries": 2}, now=later)
    assert (edited.command, edited.retries, edited.timeout, edited.env) == (
        "echo bye",
        2,
        5.0,
        {"A": "1"},
    )
    assert edited.anchor == task.anchor
    assert edited.updated_at == later
    assert (edited.id, edited.created_at) == (task.id, task.created_at)


def test_changing_the_frequency_or_zone_re_anchors_at_the_edit() -> None:
    task = create()
    later = T0 + timedelta(minutes=5, microseconds=7)
    assert edit_task(task, {"frequency": "every 10 minutes"}, now=later).anchor == later
    assert edit_task(task, {"timezone": "Asia/Tokyo"}, now=later).anchor == later
    assert edit_task(task, {"frequency": "EVERY 30 SECOND"}, now=later).anchor == task.anchor


def test_an_edit_can_clear_an_option_with_null() -> None:
    task = create(timeout=5, name="x")
    edited = edit_task(task, {"timeout": None, "name": None}, now=T0)
    assert edited.timeout is None
    assert edited.name is None


@pytest.mark.parametrize(
    "changes",
    [{"id": str(uuid4())}, {"anchor": "2026-01-01T00:00:00Z"}, {"paused": True}, {"timeout": -3}],
)
def test_a_bad_edit_is_refused_whole(changes: dict[str, Any]) -> None:
    task = create()
    with pytest.raises(WireError) as caught:
        edit_task(task, {"command": "echo changed"} | changes, now=T0)
    assert caught.value.field == next(iter(changes))


def test_editable_fields_are_the_create_fields() -> None:
    assert {"command", "frequency", "name", "targets", "timeout", "env"} <= set(EDITABLE_FIELDS)
    assert not {"id", "anchor", "paused", "deleted_at", "created_at"} & set(EDITABLE_FIELDS)


def test_pause_resume_and_delete_are_idempotent_and_set_the_state() -> None:
    task = create()
    later = T0 + timedelta(seconds=1)
    paused = pause_task(task, now=later)
    assert paused.state is TaskState.PAUSED
    assert pause_task(paused, now=T0 + timedelta(1)) == paused
    resumed = resume_task(paused, now=later)
    assert resumed.state is TaskState.ACTIVE
    assert resume_task(resumed, now=T0) == resumed
    deleted = delete_task(resumed, now=later)
    assert deleted.state is TaskState.DELETED
    assert delete_task(deleted, now=T0) == deleted
    assert TaskSpec.of(paused).paused


# --- run summaries ----------------------------------------------------------------------------


def execution(
    agent: UUID,
    status: ExecutionStatus,
    *,
    attempt: int = 1,
    final: bool = True,
    at: datetime = T0,
    task: UUID | None = None,
) -> Execution:
    return Execution(
        task_id=task or TASK,
        agent_id=agent,
        scheduled_at=at,
        started_at=at + timedelta(seconds=attempt),
        finished_at=at + timedelta(seconds=attempt + 1),
        status=status,
        exit_code=0 if status is ExecutionStatus.SUCCEEDED else 1,
        attempt=attempt,
        final=final,
    )


TASK = uuid4()
A, B = sorted([uuid4(), uuid4()], key=str)
S, F = ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED


@pytest.mark.parametrize(
    ("executions", "status"),
    [
        ([execution(A, S), execution(B, S)], RunStatus.SUCCEEDED),
        ([execution(A, F), execution(B, ExecutionStatus.TIMED_OUT)], RunStatus.FAILED),
        ([execution(A, S), execution(B, F)], RunStatus.PARTIALLY_FAILED),
        ([execution(A, S)], RunStatus.RUNNING),
        ([execution(A, S), execution(B, F, final=False)], RunStatus.RUNNING),
        (
            [execution(A, S), execution(B, F, final=False), execution(B, S, attempt=2)],
            RunStatus.SUCCEEDED,
        ),
        (
            [execution(A, ExecutionStatus.MISSED), execution(B, ExecutionStatus.SKIPPED)],
            RunStatus.MISSED,
        ),
        ([execution(A, ExecutionStatus.SKIPPED), execution(B, S)], RunStatus.SUCCEEDED),
    ],
)
def test_a_run_aggregates_the_last_attempt_of_each_agent(
    executions: list[Execution], status: RunStatus
) -> None:
    (run,) = group_runs(executions)
    summary = run.summary(expected={A, B}, now=T0 + timedelta(seconds=10), report_grace=GRACE)
    assert summary.status is status
    assert [o.agent_id for o in summary.outcomes] == sorted(
        {e.agent_id for e in executions}, key=str
    )
    if status is RunStatus.RUNNING:
        assert summary.finished_at is None
    else:
        assert summary.finished_at == max(e.finished_at for e in executions)


def test_a_run_stops_running_at_its_report_deadline_and_counts_attempts() -> None:
    (run,) = group_runs([execution(A, F, final=False), execution(A, F, attempt=2, final=False)])
    late = run.summary(expected={A, B}, now=T0 + GRACE, report_grace=GRACE)
    assert late.status is RunStatus.FAILED
    assert late.outcomes[0].attempts == 2
    assert late.outcomes[0].status is F
    assert late.trigger is Trigger.SCHEDULE


def test_latest_output_shows_the_last_attempt_of_each_agent() -> None:
    first = attrs.evolve(execution(A, F, final=False), stdout="first try")
    second = attrs.evolve(execution(A, S, attempt=2), stdout="second try")
    (run,) = group_runs([second, first])
    assert [o.stdout for o in run.output().outputs] == ["second try"]


# --- retention --------------------------------------------------------------------------------


def runs_every_minute(count: int) -> list[datetime]:
    return [T0 - timedelta(minutes=k) for k in range(count)]  # newest first


def test_retention_keeps_the_newest_runs_and_the_recent_days_as_caps() -> None:
    now = T0
    policy = RetentionPolicy(keep_runs=100, keep_days=None)
    assert policy.cutoff(runs_every_minute(100), now=now) is None
    assert policy.cutoff(runs_every_minute(150), now=now) == T0 - timedelta(minutes=99)
    by_age = RetentionPolicy(keep_runs=None, keep_days=1)
    assert by_age.cutoff(runs_every_minute(5), now=now) == now - timedelta(days=1)
    both = RetentionPolicy(keep_runs=10, keep_days=1)
    assert both.cutoff(runs_every_minute(50), now=now) == T0 - timedelta(minutes=9)
    assert (
        RetentionPolicy(keep_runs=None, keep_days=None).cutoff(runs_every_minute(9), now=now)
        is None
    )


@given(keep=st.integers(min_value=1, max_value=60), count=st.integers(min_value=0, max_value=120))
def test_retention_by_count_keeps_exactly_the_newest_runs(keep: int, count: int) -> None:
    times = runs_every_minute(count)
    cutoff = RetentionPolicy(keep_runs=keep, keep_days=None).cutoff(times, now=T0)
    kept = [moment for moment in times if cutoff is None or moment >= cutoff]
    assert kept == times[:keep]


def test_retention_always_keeps_the_newest_run() -> None:
    yearly = [T0 - timedelta(days=365 * k) for k in range(1, 4)]  # newest first, all old
    cutoff = RetentionPolicy(keep_runs=1000, keep_days=30).cutoff(yearly, now=T0)
    assert cutoff == yearly[0]  # runs before the newest go, the newest stays
    assert RetentionPolicy(keep_days=30).cutoff([], now=T0) is None


def test_retention_refuses_nonsense() -> None:
    for bad in ({"keep_runs": 0}, {"keep_days": -1}, {"keep_runs": True}):
        with pytest.raises(WireError):
            RetentionPolicy(**bad)  # type: ignore[arg-type]
