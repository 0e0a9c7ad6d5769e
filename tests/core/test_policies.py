"""Task policies of the sans-IO scheduler, driven through hours of simulated time.

A small simulator plays the agent: it sleeps (in simulated time) to the next deadline, polls,
"runs" each started execution for a duration the test chooses, kills what the scheduler stops,
and feeds every end back with ``record_finished``. Nothing sleeps for real.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4
from zoneinfo import ZoneInfo

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskscheduler_core import (
    ExecutionStatus,
    Overlap,
    Scheduler,
    SkipExecution,
    StartExecution,
    StopExecution,
    TaskSpec,
    Trigger,
)
from taskscheduler_core.firetimes import parse_recurrence

T0 = datetime(2026, 11, 28, 3, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
SECOND = timedelta(seconds=1)

#: (scheduled_at, attempt) -> (duration, status when it ends by itself)
Behaviour = Callable[[datetime, int], tuple[timedelta, ExecutionStatus]]


def spec(frequency: str = "every 1 minutes", **options: object) -> TaskSpec:
    return TaskSpec(
        task_id=uuid4(),
        command="true",
        frequency=parse_recurrence(frequency),
        anchor=T0,
        **options,  # type: ignore[arg-type]
    )


@attrs.define
class Record:
    scheduled_at: datetime
    status: ExecutionStatus
    attempt: int
    trigger: Trigger
    started_at: datetime | None
    finished_at: datetime
    final: bool


@attrs.define
class Simulation:
    """Plays an agent for ``scheduler``; ``records`` is what it would report."""

    scheduler: Scheduler
    behaviour: Behaviour
    now: datetime = T0
    records: list[Record] = attrs.Factory(list)
    #: running executions: (task, scheduled_at) -> (start, attempt, trigger, natural end, status)
    running: dict[
        tuple[UUID, datetime], tuple[datetime, int, Trigger, datetime, ExecutionStatus]
    ] = attrs.Factory(dict)
    max_concurrent: int = 0

    def run_until(self, end: datetime) -> None:
        for _ in range(1_000_000):  # bounded: a scheduler that never advances fails the test
            deadline = self.scheduler.next_deadline()
            ends = [item[3] for item in self.running.values()]
            upcoming = min(
                [moment for moment in (deadline, *ends) if moment is not None], default=None
            )
            if upcoming is None or upcoming > end:
                self.now = end
                return
            self.now = max(self.now, upcoming)
            self._finish_natural_ends()
            self.act(self.scheduler.poll(self.now))
        raise AssertionError("the simulation did not reach its end")

    def act(self, actions: list[StartExecution | SkipExecution | StopExecution]) -> None:
        for action in actions:
            if isinstance(action, StopExecution):
                self._end((action.task_id, action.scheduled_at), action.status)
            elif isinstance(action, StartExecution):
                duration, status = self.behaviour(action.scheduled_at, action.attempt)
                key = (action.task.task_id, action.scheduled_at)
                assert key not in self.running, "an execution was started twice"
                self.running[key] = (
                    self.now,
                    action.attempt,
                    action.trigger,
                    self.now + duration,
                    status,
                )
                self.max_concurrent = max(self.max_concurrent, len(self.running))
            else:
                self.records.append(
                    Record(
                        scheduled_at=action.scheduled_at,
                        status=action.status,
                        attempt=1,
                        trigger=action.trigger,
                        started_at=None,
                        finished_at=self.now,
                        final=True,
                    )
                )

    def _finish_natural_ends(self) -> None:
        for key, (_, _, _, natural_end, status) in list(self.running.items()):
            if natural_end <= self.now:
                self._end(key, status)

    def _end(self, key: tuple[UUID, datetime], status: ExecutionStatus) -> None:
        started, attempt, trigger, _, _ = self.running.pop(key)
        final = self.scheduler.record_finished(key[0], key[1], status, now=self.now)
        self.records.append(
            Record(
                scheduled_at=key[1],
                status=status,
                attempt=attempt,
                trigger=trigger,
                started_at=started,
                finished_at=self.now,
                final=final,
            )
        )

    def by_status(self, status: ExecutionStatus) -> list[Record]:
        return [record for record in self.records if record.status is status]


def quick(_: datetime, __: int) -> tuple[timedelta, ExecutionStatus]:
    return SECOND, ExecutionStatus.SUCCEEDED


def simulate(task: TaskSpec, behaviour: Behaviour, hours: float = 3) -> Simulation:
    """Run ``task`` for ``hours``, then remove it and let what still runs end (or be stopped)."""
    scheduler = Scheduler()
    scheduler.add_task(task, after=T0)
    simulation = Simulation(scheduler=scheduler, behaviour=behaviour)
    simulation.run_until(T0 + hours * HOUR)
    scheduler.remove_task(task.task_id)
    simulation.run_until(T0 + hours * HOUR + timedelta(days=1))
    assert not simulation.running
    return simulation


# --- overlap -----------------------------------------------------------------------------------


def long(_: datetime, __: int) -> tuple[timedelta, ExecutionStatus]:
    """Each execution runs 150 s: two and a half slots of a one-minute task."""
    return timedelta(seconds=150), ExecutionStatus.SUCCEEDED


def test_overlap_skip_never_runs_two_at_once_and_skips_the_slots_in_between() -> None:
    simulation = simulate(spec(overlap=Overlap.SKIP), long)
    assert simulation.max_concurrent == 1
    started = [r for r in simulation.records if r.started_at is not None]
    skipped = simulation.by_status(ExecutionStatus.SKIPPED)
    # a 150 s command on a 60 s grid: it starts on every third slot, the two between are skipped
    assert len(started) == 60
    assert len(skipped) == 120
    assert all(r.status is ExecutionStatus.SUCCEEDED for r in started)
    accounted = sorted(r.scheduled_at for r in simulation.records)
    assert accounted == sorted(set(accounted)), "every slot is accounted for exactly once"


def test_overlap_allow_starts_every_slot_and_runs_them_side_by_side() -> None:
    simulation = simulate(spec(overlap=Overlap.ALLOW), long)
    assert simulation.max_concurrent == 3
    assert not simulation.by_status(ExecutionStatus.SKIPPED)
    assert len(simulation.by_status(ExecutionStatus.SUCCEEDED)) == 3 * 60


def test_overlap_replace_cancels_the_running_execution_at_each_new_slot() -> None:
    simulation = simulate(spec(overlap=Overlap.REPLACE), long)
    assert simulation.max_concurrent == 1
    cancelled = simulation.by_status(ExecutionStatus.CANCELLED)
    assert len(cancelled) == 3 * 60 - 1  # every execution but the last one
    for record in cancelled:  # each one was killed by the next slot, a minute after its own
        assert record.finished_at - record.scheduled_at == timedelta(minutes=1)
        assert record.final, "a cancelled execution is never retried"


# --- timeouts ----------------------------------------------------------------------------------


def test_a_timeout_stops_the_execution_at_the_timeout_and_the_next_slot_runs() -> None:
    simulation = simulate(spec(timeout=20), long)
    timed_out = simulation.by_status(ExecutionStatus.TIMED_OUT)
    assert len(timed_out) == 3 * 60
    for record in timed_out:
        assert record.started_at is not None
        assert record.finished_at - record.started_at == timedelta(seconds=20)
    assert not simulation.by_status(ExecutionStatus.SKIPPED)


def test_a_command_faster_than_its_timeout_is_not_stopped() -> None:
    simulation = simulate(spec(timeout=5), quick, hours=1)
    assert len(simulation.by_status(ExecutionStatus.SUCCEEDED)) == 60
    assert not simulation.by_status(ExecutionStatus.TIMED_OUT)


# --- retries -----------------------------------------------------------------------------------


def test_a_failing_command_is_retried_with_doubling_delays_then_given_up() -> None:
    def fails(_: datetime, __: int) -> tuple[timedelta, ExecutionStatus]:
        return SECOND, ExecutionStatus.FAILED

    simulation = simulate(spec("every 1 hours", retries=3, retry_delay=2), fails, hours=1.5)
    first_run = [r for r in simulation.records if r.scheduled_at == T0 + HOUR]
    assert [r.attempt for r in first_run] == [1, 2, 3, 4]
    assert [r.final for r in first_run] == [False, False, False, True]
    starts = [r.started_at for r in first_run]
    gaps = [b - a - SECOND for a, b in itertools.pairwise(starts)]  # type: ignore[operator]
    assert gaps == [timedelta(seconds=2), timedelta(seconds=4), timedelta(seconds=8)]


def test_a_retry_that_succeeds_ends_the_retries() -> None:
    def flaky(_: datetime, attempt: int) -> tuple[timedelta, ExecutionStatus]:
        return SECOND, ExecutionStatus.SUCCEEDED if attempt == 2 else ExecutionStatus.FAILED

    simulation = simulate(spec("every 10 minutes", retries=5), flaky, hours=2)
    # the last slot's first attempt ends after the task was removed: removed tasks do not retry
    for slot in sorted({r.scheduled_at for r in simulation.records})[:-1]:
        attempts = [r for r in simulation.records if r.scheduled_at == slot]
        assert [(r.attempt, r.status, r.final) for r in attempts] == [
            (1, ExecutionStatus.FAILED, False),
            (2, ExecutionStatus.SUCCEEDED, True),
        ]


def test_timed_out_attempts_are_retried_too() -> None:
    simulation = simulate(spec("every 1 hours", timeout=10, retries=1), long, hours=1.2)
    first_run = [r for r in simulation.records if r.scheduled_at == T0 + HOUR]
    assert [(r.attempt, r.status, r.final) for r in first_run] == [
        (1, ExecutionStatus.TIMED_OUT, False),
        (2, ExecutionStatus.TIMED_OUT, True),
    ]


def test_a_slot_waiting_for_a_retry_counts_as_running_for_overlap_skip() -> None:
    def fails(_: datetime, __: int) -> tuple[timedelta, ExecutionStatus]:
        return SECOND, ExecutionStatus.FAILED

    # retries at +2 s, +4 s, …, +64 s: the task is busy past its next slot a minute later
    simulation = simulate(spec("every 1 minutes", retries=6, retry_delay=2), fails, hours=1)
    assert simulation.by_status(ExecutionStatus.SKIPPED)
    assert simulation.max_concurrent == 1


# --- starting deadline -------------------------------------------------------------------------


def test_the_starting_deadline_of_the_task_decides_between_start_and_missed() -> None:
    scheduler = Scheduler()
    lenient, strict = spec(starting_deadline=30), spec(starting_deadline=2)
    scheduler.add_task(lenient, after=T0)
    scheduler.add_task(strict, after=T0)
    actions = scheduler.poll(T0 + timedelta(minutes=1, seconds=5))  # both 5 s late
    outcome = {
        action.task.task_id: "started" if isinstance(action, StartExecution) else action.status
        for action in actions
        if not isinstance(action, StopExecution)
    }
    assert outcome == {lenient.task_id: "started", strict.task_id: ExecutionStatus.MISSED}


@pytest.mark.parametrize(("late", "started"), [(9.999, True), (10, True), (10.001, False)])
def test_without_a_starting_deadline_a_slot_may_start_10_seconds_late(
    late: float, started: bool
) -> None:
    scheduler = Scheduler()
    task = spec("every 1 hours")
    scheduler.add_task(task, after=T0)
    (action,) = scheduler.poll(T0 + HOUR + timedelta(seconds=late))
    assert isinstance(action, StartExecution) is started


# --- pause / resume ----------------------------------------------------------------------------


def test_a_paused_task_fires_nothing_and_resuming_does_not_burst() -> None:
    scheduler = Scheduler()
    task = spec("every 1 minutes")
    scheduler.add_task(task, after=T0)
    simulation = Simulation(scheduler=scheduler, behaviour=quick)
    simulation.run_until(T0 + HOUR + 30 * SECOND)
    assert len(simulation.records) == 60
    scheduler.add_task(attrs.evolve(task, paused=True), after=simulation.now)
    simulation.run_until(T0 + 3 * HOUR)
    assert len(simulation.records) == 60, "a paused task fired"
    assert scheduler.next_deadline() is None
    resumed_at = simulation.now + timedelta(seconds=30)
    simulation.now = resumed_at
    scheduler.add_task(task, after=resumed_at)
    simulation.run_until(T0 + 4 * HOUR)
    after_resume = simulation.records[60:]
    assert len(after_resume) == 59  # the slots after the resume, none of the paused two hours
    assert all(r.status is ExecutionStatus.SUCCEEDED for r in after_resume)
    assert min(r.scheduled_at for r in after_resume) > resumed_at


def test_pausing_drops_pending_retries_but_lets_running_executions_finish() -> None:
    def fails(_: datetime, __: int) -> tuple[timedelta, ExecutionStatus]:
        return SECOND, ExecutionStatus.FAILED

    scheduler = Scheduler()
    task = spec("every 1 hours", retries=3, retry_delay=60)
    scheduler.add_task(task, after=T0)
    simulation = Simulation(scheduler=scheduler, behaviour=fails)
    simulation.run_until(T0 + HOUR + 10 * SECOND)  # attempt 1 failed, retry due at +61 s
    assert scheduler.pending_retries(task.task_id)
    scheduler.add_task(attrs.evolve(task, paused=True), after=simulation.now)
    assert not scheduler.pending_retries(task.task_id)
    simulation.run_until(T0 + 3 * HOUR)
    assert len(simulation.records) == 1


# --- manual runs -------------------------------------------------------------------------------


def test_a_manual_run_starts_at_once_marked_manual_and_only_once() -> None:
    scheduler = Scheduler()
    task = spec("every 1 hours")
    scheduler.add_task(task, after=T0)
    at = T0 + timedelta(minutes=10)
    actions = scheduler.run_now(task.task_id, at, now=at)
    assert len(actions) == 1
    assert isinstance(actions[0], StartExecution)
    assert actions[0].trigger is Trigger.MANUAL
    assert actions[0].scheduled_at == at
    assert scheduler.run_now(task.task_id, at, now=at) == []  # repeated request
    assert scheduler.run_now(uuid4(), at, now=at) == []  # unknown task


def test_a_manual_run_follows_the_overlap_rule_and_works_on_a_paused_task() -> None:
    scheduler = Scheduler()
    task = spec("every 1 hours", paused=True)
    scheduler.add_task(task, after=T0)
    first = scheduler.run_now(task.task_id, T0 + SECOND, now=T0 + SECOND)
    assert isinstance(first[0], StartExecution)
    second = scheduler.run_now(task.task_id, T0 + 2 * SECOND, now=T0 + 2 * SECOND)
    assert isinstance(second[0], SkipExecution)
    assert second[0].status is ExecutionStatus.SKIPPED
    assert second[0].trigger is Trigger.MANUAL


# --- cron and daylight saving time -------------------------------------------------------------


def test_a_daily_cron_task_fires_once_per_local_day_across_both_dst_changes() -> None:
    zone = "America/New_York"
    task = TaskSpec(
        task_id=uuid4(),
        command="true",
        frequency=parse_recurrence("30 2 * * *"),  # 02:30 does not exist on the spring-forward day
        anchor=datetime(2026, 3, 1, tzinfo=UTC),
        timezone=zone,
    )
    scheduler = Scheduler()
    scheduler.add_task(task, after=task.anchor)
    simulation = Simulation(scheduler=scheduler, behaviour=quick, now=task.anchor)
    simulation.run_until(datetime(2026, 11, 30, tzinfo=UTC))
    local = [r.scheduled_at.astimezone(ZoneInfo(zone)) for r in simulation.records]
    days = [moment.date() for moment in local]
    assert len(days) == len(set(days)), "a local day fired twice"
    assert len(days) == (datetime(2026, 11, 29) - datetime(2026, 3, 1)).days + 1
    assert all(r.status is ExecutionStatus.SUCCEEDED for r in simulation.records)
    spring = [m for m in local if m.date().isoformat() == "2026-03-08"]
    assert [m.strftime("%H:%M") for m in spring] == ["03:00"]  # first valid minute after the gap


@settings(max_examples=25, deadline=None)
@given(
    zone=st.sampled_from(["UTC", "Europe/Paris", "America/New_York", "Australia/Lord_Howe"]),
    expression=st.sampled_from(["*/15 * * * *", "0 * * * *", "5 4 * * *", "0 9 * * 1-5"]),
    start_day=st.integers(min_value=0, max_value=360),
)
def test_cron_tasks_start_every_fire_time_once_in_increasing_order(
    zone: str, expression: str, start_day: int
) -> None:
    anchor = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=start_day)
    task = TaskSpec(
        task_id=uuid4(),
        command="true",
        frequency=parse_recurrence(expression),
        anchor=anchor,
        timezone=zone,
    )
    scheduler = Scheduler()
    scheduler.add_task(task, after=anchor)
    simulation = Simulation(scheduler=scheduler, behaviour=quick, now=anchor)
    simulation.run_until(anchor + timedelta(days=3))
    times = [r.scheduled_at for r in simulation.records]
    assert times == sorted(set(times))
    assert all(r.status is ExecutionStatus.SUCCEEDED for r in simulation.records)
    assert all(anchor < moment <= anchor + timedelta(days=3) for moment in times)


@pytest.mark.parametrize("overlap", list(Overlap))
def test_each_overlap_policy_accounts_for_every_slot_over_six_hours(overlap: Overlap) -> None:
    simulation = simulate(spec("every 20 seconds", overlap=overlap), long, hours=6)
    slots = {r.scheduled_at for r in simulation.records if r.attempt == 1}
    expected = {T0 + k * timedelta(seconds=20) for k in range(1, 6 * 180 + 1)}
    still_running = {key[1] for key in simulation.running}
    assert slots | still_running == expected
