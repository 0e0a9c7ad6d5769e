"""Runs: grouping executions by fire time, completeness, and what latest_output shows."""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from strategies import executions
from taskscheduler_core import (
    DEFAULT_REPORT_GRACE,
    AgentOutput,
    Execution,
    ExecutionStatus,
    LatestOutput,
    Run,
    group_runs,
    latest_complete_run,
    latest_output,
)

T0 = datetime(2026, 11, 28, 3, 16, 30, tzinfo=UTC)
SECOND = timedelta(seconds=1)
TASK = UUID("11111111-1111-1111-1111-111111111111")
A, B, C = (UUID(f"{digit * 8}-0000-0000-0000-000000000000") for digit in "abc")
GRACE = timedelta(seconds=60)


def execution(
    agent: UUID,
    scheduled_at: datetime,
    *,
    took: timedelta = SECOND,
    stdout: str = "",
    stderr: str = "",
    task: UUID = TASK,
    status: ExecutionStatus = ExecutionStatus.SUCCEEDED,
) -> Execution:
    return Execution(
        task_id=task,
        agent_id=agent,
        scheduled_at=scheduled_at,
        started_at=scheduled_at,
        finished_at=scheduled_at + took,
        status=status,
        exit_code=0 if status is ExecutionStatus.SUCCEEDED else None,
        stdout=stdout,
        stderr=stderr,
    )


Expected = Callable[[datetime], Collection[UUID]]


def expect(*agents: UUID) -> Expected:
    """The same agents are expected for every run."""
    expected = frozenset(agents)
    return lambda scheduled_at: expected


def test_grouping_by_task_and_fire_time_newest_first() -> None:
    other_task = uuid4()
    first, second = T0, T0 + 30 * SECOND
    runs = group_runs(
        [
            execution(B, first),
            execution(A, second),
            execution(A, first),
            execution(B, second),
            execution(C, second, task=other_task),
        ]
    )
    assert [run.scheduled_at for run in runs] == [second, second, first]
    by_key = {(run.task_id, run.scheduled_at): run for run in runs}
    assert set(by_key) == {(TASK, first), (TASK, second), (other_task, second)}
    assert by_key[TASK, first].agent_ids == {A, B}
    assert by_key[other_task, second].agent_ids == {C}


def test_executions_of_a_run_are_sorted_by_agent_id() -> None:
    run = Run(
        task_id=TASK,
        scheduled_at=T0,
        executions=(execution(C, T0), execution(A, T0), execution(B, T0)),
    )
    assert [e.agent_id for e in run.executions] == [A, B, C]


def test_completion_time_is_the_last_finish() -> None:
    run = Run(
        task_id=TASK,
        scheduled_at=T0,
        executions=(execution(A, T0, took=3 * SECOND), execution(B, T0, took=7 * SECOND)),
    )
    assert run.completion_time == T0 + 7 * SECOND
    assert Run(task_id=TASK, scheduled_at=T0, executions=()).completion_time is None


def test_complete_when_every_expected_agent_reported() -> None:
    run = Run(task_id=TASK, scheduled_at=T0, executions=(execution(A, T0), execution(B, T0)))
    soon = T0 + 2 * SECOND
    assert run.is_complete(expected={A, B}, now=soon, report_grace=GRACE)
    assert run.is_complete(expected={A}, now=soon, report_grace=GRACE)
    assert not run.is_complete(expected={A, B, C}, now=soon, report_grace=GRACE)


def test_complete_once_the_report_deadline_passed() -> None:
    run = Run(task_id=TASK, scheduled_at=T0, executions=(execution(A, T0),))
    assert not run.is_complete(expected={A, B}, now=T0 + GRACE - SECOND, report_grace=GRACE)
    assert run.is_complete(expected={A, B}, now=T0 + GRACE, report_grace=GRACE)


def test_a_run_without_executions_is_never_complete() -> None:
    run = Run(task_id=TASK, scheduled_at=T0, executions=())
    assert not run.is_complete(expected=set(), now=T0 + timedelta(days=1), report_grace=GRACE)


def test_latest_output_is_the_newest_complete_run() -> None:
    first, second, third = T0, T0 + 30 * SECOND, T0 + 60 * SECOND
    runs = group_runs(
        [
            execution(A, first, stdout="one a"),
            execution(B, first, stdout="one b"),
            execution(B, second, stdout="two b", stderr="warn", took=2 * SECOND),
            execution(A, second, stdout="two a"),
            execution(A, third, stdout="three a"),  # B has not reported yet
        ]
    )
    now = third + 5 * SECOND
    output = latest_output(runs, expected=expect(A, B), now=now, report_grace=GRACE)
    assert output == LatestOutput(
        completion_time=second + 2 * SECOND,
        scheduled_at=second,
        outputs=(
            AgentOutput(agent_id=A, stdout="two a"),
            AgentOutput(agent_id=B, stdout="two b", stderr="warn"),
        ),
    )
    assert output.complete
    # Once the third run's deadline passes, it is shown with what it has.
    later = latest_output(runs, expected=expect(A, B), now=third + GRACE, report_grace=GRACE)
    assert later.scheduled_at == third
    assert later.outputs == (AgentOutput(agent_id=A, stdout="three a"),)


def test_expected_agents_may_change_over_time() -> None:
    # C joined after the first run: it is not waited for there.
    first, second = T0, T0 + 30 * SECOND
    runs = group_runs([execution(A, first), execution(A, second)])

    def expected(scheduled_at: datetime) -> Collection[UUID]:
        return {A} if scheduled_at < second else {A, C}

    run = latest_complete_run(runs, expected=expected, now=second + SECOND, report_grace=GRACE)
    assert run is not None
    assert run.scheduled_at == first


def test_skipped_and_missed_executions_count_as_reports() -> None:
    runs = group_runs(
        [execution(A, T0, stdout="ran"), execution(B, T0, status=ExecutionStatus.MISSED)]
    )
    output = latest_output(runs, expected=expect(A, B), now=T0 + 2 * SECOND)
    assert [o.agent_id for o in output.outputs] == [A, B]


def test_nothing_complete_gives_no_completion_time() -> None:
    empty = latest_output([], expected=expect(A), now=T0)
    assert empty == LatestOutput(completion_time=None, outputs=())
    assert not empty.complete
    assert empty.scheduled_at is None
    pending = group_runs([execution(A, T0)])
    output = latest_output(pending, expected=expect(A, B), now=T0 + 2 * SECOND)
    assert output.completion_time is None
    assert output.outputs == ()


def test_default_grace() -> None:
    runs = group_runs([execution(A, T0)])
    before = latest_output(runs, expected=expect(A, B), now=T0 + DEFAULT_REPORT_GRACE - SECOND)
    after = latest_output(runs, expected=expect(A, B), now=T0 + DEFAULT_REPORT_GRACE)
    assert before.completion_time is None
    assert after.completion_time == T0 + SECOND


@settings(max_examples=50, deadline=None)
@given(
    st.lists(executions(), max_size=12),
    st.lists(st.sampled_from(range(4)), max_size=12),
)
def test_grouping_keeps_every_execution_once(found: list[Execution], slots: list[int]) -> None:
    # Put many executions on a few shared fire times so that groups really form.
    shared = [T0 + k * 30 * SECOND for k in range(4)]
    found = [
        attrs.evolve(e, task_id=TASK, scheduled_at=shared[slots[i]]) if i < len(slots) else e
        for i, e in enumerate(found)
    ]
    runs = group_runs(found)
    regrouped = [e for run in runs for e in run.executions]
    assert sorted(regrouped, key=id) == sorted(found, key=id)
    assert len({(run.task_id, run.scheduled_at) for run in runs}) == len(runs)
    for run in runs:
        assert all(
            (e.task_id, e.scheduled_at) == (run.task_id, run.scheduled_at) for e in run.executions
        )
        assert [str(e.agent_id) for e in run.executions] == sorted(
            str(e.agent_id) for e in run.executions
        )
    assert [r.scheduled_at for r in runs] == sorted((r.scheduled_at for r in runs), reverse=True)


@settings(max_examples=100, deadline=None)
@given(
    reports=st.sets(st.tuples(st.sampled_from([A, B, C]), st.integers(0, 5)), max_size=18),
    expected_by_slot=st.lists(st.frozensets(st.sampled_from([A, B, C])), min_size=6, max_size=6),
    took=st.lists(st.integers(0, 120), min_size=18, max_size=18),
    elapsed=st.integers(0, 400),
)
def test_latest_output_shows_the_newest_complete_run(
    reports: set[tuple[UUID, int]],
    expected_by_slot: list[frozenset[UUID]],
    took: list[int],
    elapsed: int,
) -> None:
    slots = [T0 + k * 30 * SECOND for k in range(6)]
    found = [
        execution(agent, slots[k], took=took[i] * SECOND, stdout=f"{agent} at {k}")
        for i, (agent, k) in enumerate(sorted(reports))
    ]
    now = T0 + elapsed * SECOND

    def expected(scheduled_at: datetime) -> Collection[UUID]:
        return expected_by_slot[slots.index(scheduled_at)]

    complete = [
        k
        for k in range(6)
        if (reporters := {agent for agent, slot in reports if slot == k})
        and (reporters >= expected_by_slot[k] or now >= slots[k] + GRACE)
    ]
    output = latest_output(group_runs(found), expected=expected, now=now, report_grace=GRACE)
    if not complete:
        assert output == LatestOutput(completion_time=None, outputs=())
        return
    newest = max(complete)
    shown = [e for e in found if e.scheduled_at == slots[newest]]
    assert output.scheduled_at == slots[newest]
    assert output.completion_time == max(e.finished_at for e in shown)
    assert [o.agent_id for o in output.outputs] == sorted(e.agent_id for e in shown)
    assert all(o.stdout == f"{o.agent_id} at {newest}" for o in output.outputs)


def test_a_run_in_which_nothing_ran_is_passed_over() -> None:
    ran = execution(A, T0, stdout="long output\n")
    skipped = attrs.evolve(
        execution(A, T0 + SECOND), status=ExecutionStatus.SKIPPED, exit_code=None
    )
    missed = attrs.evolve(execution(A, T0 + 2 * SECOND), status=ExecutionStatus.MISSED)
    runs = group_runs([ran, skipped, missed])
    assert [run.ran for run in runs] == [False, False, True]
    shown = latest_output(runs, expected=lambda _: {A}, now=T0 + 3 * SECOND, report_grace=GRACE)
    assert shown.scheduled_at == T0
    assert [output.stdout for output in shown.outputs] == ["long output\n"]
    only_skipped = group_runs([skipped])
    assert latest_complete_run(only_skipped, expected=lambda _: {A}, now=T0 + GRACE * 2) is None
