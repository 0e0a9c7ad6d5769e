"""The sans-IO scheduler, driven through hours of simulated time: nothing here sleeps."""

from __future__ import annotations

import heapq
import random
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from strategies import commands, frequencies
from taskscheduler_core import (
    DEFAULT_MAX_MISSED,
    DEFAULT_STARTING_DEADLINE,
    Action,
    ExecutionStatus,
    Frequency,
    Scheduler,
    SkipExecution,
    StartExecution,
    TaskSpec,
    Unit,
    next_slot_after,
    parse_frequency,
    slot,
    slot_index_after,
)

T0 = datetime(2026, 11, 28, 3, 16, 31, 123456, tzinfo=UTC)
SECOND = timedelta(seconds=1)
MICROSECOND = timedelta(microseconds=1)


def make_spec(frequency: str | Frequency = "every 30 seconds", anchor: datetime = T0) -> TaskSpec:
    if isinstance(frequency, str):
        frequency = parse_frequency(frequency)
    return TaskSpec(task_id=uuid4(), command="echo hello", frequency=frequency, anchor=anchor)


def statuses(actions: list[Action]) -> list[str]:
    return [
        "started" if isinstance(action, StartExecution) else action.status.value
        for action in actions
    ]


def drive(
    scheduler: Scheduler,
    *,
    start: datetime,
    until: datetime,
    duration: Callable[[StartExecution], timedelta] = lambda _: timedelta(0),
) -> list[tuple[datetime, Action]]:
    """Run the agent's loop on simulated time: jump to each deadline, finish what ended, poll.

    Returns every action with the time it was polled at.
    """
    now = start
    ends: list[tuple[datetime, int, UUID, datetime]] = []  # executions still running
    seen: list[tuple[datetime, Action]] = []
    counter = 0
    while True:
        deadline = scheduler.next_deadline()
        if deadline is None or deadline > until:
            return seen
        now = max(now, deadline)
        while ends and ends[0][0] <= now:
            _, _, task_id, scheduled_at = heapq.heappop(ends)
            scheduler.record_finished(task_id, scheduled_at)
        for action in scheduler.poll(now):
            seen.append((now, action))
            if isinstance(action, StartExecution):
                counter += 1
                end = now + duration(action)
                heapq.heappush(ends, (end, counter, action.task.task_id, action.scheduled_at))


# --- examples ------------------------------------------------------------------------------------


def test_nothing_is_due_before_the_first_slot() -> None:
    scheduler = Scheduler()
    spec = make_spec()
    assert scheduler.next_deadline() is None
    assert scheduler.poll(T0) == []
    assert scheduler.add_task(spec, after=T0) is True
    first = T0 + 30 * SECOND
    assert scheduler.next_deadline() == first
    assert scheduler.poll(first - MICROSECOND) == []
    assert scheduler.next_deadline() == first


def test_a_slot_starts_at_its_time_and_only_once() -> None:
    scheduler = Scheduler()
    spec = make_spec()
    scheduler.add_task(spec, after=T0)
    first = T0 + 30 * SECOND
    assert scheduler.poll(first) == [StartExecution(task=spec, scheduled_at=first)]
    assert scheduler.running(spec.task_id) == {first}
    assert scheduler.poll(first) == []
    assert scheduler.poll(first + 29 * SECOND) == []
    assert scheduler.next_deadline() == first + 30 * SECOND


def test_six_hours_every_30_seconds_fire_on_the_grid() -> None:
    scheduler = Scheduler()
    spec = make_spec()
    scheduler.add_task(spec, after=T0)
    seen = drive(scheduler, start=T0, until=T0 + timedelta(hours=6))
    assert len(seen) == 6 * 120
    for k, (polled_at, action) in enumerate(seen, start=1):
        assert isinstance(action, StartExecution)
        assert action.scheduled_at == polled_at == slot(T0, spec.frequency, k)


def test_overlapping_executions_are_skipped() -> None:
    # Every run lasts 45 s on a 30 s schedule: one slot in two comes while the last still runs.
    scheduler = Scheduler()
    spec = make_spec()
    scheduler.add_task(spec, after=T0)
    seen = drive(scheduler, start=T0, until=T0 + timedelta(hours=1), duration=lambda _: 45 * SECOND)
    assert statuses([action for _, action in seen]) == ["started", "skipped"] * 60
    skipped = seen[1][1]
    assert isinstance(skipped, SkipExecution)
    assert skipped.status is ExecutionStatus.SKIPPED
    assert "still running" in skipped.reason


def test_finishing_lets_the_next_slot_start() -> None:
    scheduler = Scheduler()
    spec = make_spec()
    scheduler.add_task(spec, after=T0)
    first, second, third = (slot(T0, spec.frequency, k) for k in (1, 2, 3))
    assert statuses(scheduler.poll(first)) == ["started"]
    assert statuses(scheduler.poll(second)) == ["skipped"]
    scheduler.record_finished(spec.task_id, first)
    assert scheduler.running(spec.task_id) == frozenset()
    assert statuses(scheduler.poll(third)) == ["started"]
    # Finishing something that is not running is harmless (a replayed report, say).
    scheduler.record_finished(spec.task_id, first)
    scheduler.record_finished(uuid4(), first)
    assert scheduler.running(spec.task_id) == {third}


def test_a_late_poll_starts_only_the_newest_slot() -> None:
    scheduler = Scheduler()
    spec = make_spec()
    scheduler.add_task(spec, after=T0)
    newest = slot(T0, spec.frequency, 5)
    actions = scheduler.poll(newest + 2 * SECOND)
    assert statuses(actions) == ["missed"] * 4 + ["started"]
    assert [a.scheduled_at for a in actions] == [slot(T0, spec.frequency, k) for k in range(1, 6)]
    assert all("down or stalled" in a.reason for a in actions if isinstance(a, SkipExecution))


def test_a_long_outage_records_at_most_max_missed() -> None:
    scheduler = Scheduler(max_missed=3)
    spec = make_spec()
    scheduler.add_task(spec, after=T0)
    newest = slot(T0, spec.frequency, 1000)
    actions = scheduler.poll(newest)
    assert statuses(actions) == ["missed"] * 3 + ["started"]
    assert [a.scheduled_at for a in actions] == [
        slot(T0, spec.frequency, k) for k in (997, 998, 999, 1000)
    ]
    assert scheduler.next_deadline() == slot(T0, spec.frequency, 1001)


def test_max_missed_zero_records_no_older_slot() -> None:
    scheduler = Scheduler(max_missed=0)
    spec = make_spec()
    scheduler.add_task(spec, after=T0)
    assert statuses(scheduler.poll(T0 + timedelta(hours=1))) == ["started"]


def test_the_starting_deadline_is_inclusive() -> None:
    for late, expected in ((5 * SECOND, "started"), (5 * SECOND + MICROSECOND, "missed")):
        scheduler = Scheduler(starting_deadline=5 * SECOND)
        spec = make_spec()
        scheduler.add_task(spec, after=T0)
        actions = scheduler.poll(slot(T0, spec.frequency, 1) + late)
        assert statuses(actions) == [expected]
    assert isinstance(actions[0], SkipExecution)
    assert "past the starting deadline" in actions[0].reason
    assert scheduler.running(spec.task_id) == frozenset()


def test_defaults() -> None:
    scheduler = Scheduler()
    assert scheduler.starting_deadline == DEFAULT_STARTING_DEADLINE
    assert scheduler.max_missed == DEFAULT_MAX_MISSED


def test_add_task_is_idempotent_for_an_equal_spec() -> None:
    scheduler = Scheduler()
    spec = make_spec()
    assert scheduler.add_task(spec, after=T0) is True
    first = slot(T0, spec.frequency, 1)
    assert statuses(scheduler.poll(first)) == ["started"]
    # The same task again, even later and as an equal but distinct object: one schedule.
    assert scheduler.add_task(attrs.evolve(spec), after=first + 10 * SECOND) is False
    assert scheduler.add_task(spec, after=T0) is False
    assert scheduler.tasks == {spec.task_id: spec}
    assert scheduler.poll(first) == []
    assert scheduler.next_deadline() == slot(T0, spec.frequency, 2)


def test_a_changed_spec_replaces_the_old_one_and_does_not_fire_retroactively() -> None:
    scheduler = Scheduler()
    spec = make_spec()
    scheduler.add_task(spec, after=T0)
    # Three slots pass unpolled, then the task changes: none of them may fire for the new spec.
    changed_at = slot(T0, spec.frequency, 3) + SECOND
    changed = attrs.evolve(spec, command="echo changed")
    assert scheduler.add_task(changed, after=changed_at) is True
    assert scheduler.tasks == {spec.task_id: changed}
    assert scheduler.poll(changed_at) == []
    fourth = slot(T0, spec.frequency, 4)
    assert scheduler.next_deadline() == fourth
    assert scheduler.poll(fourth) == [StartExecution(task=changed, scheduled_at=fourth)]


def test_a_changed_frequency_moves_the_grid() -> None:
    scheduler = Scheduler()
    spec = make_spec("every 30 seconds")
    scheduler.add_task(spec, after=T0)
    faster = attrs.evolve(spec, frequency=parse_frequency("every 10 seconds"))
    scheduler.add_task(faster, after=T0 + 25 * SECOND)
    assert scheduler.next_deadline() == T0 + 30 * SECOND
    seen = drive(scheduler, start=T0 + 25 * SECOND, until=T0 + 60 * SECOND)
    assert [a.scheduled_at for _, a in seen] == [T0 + s * SECOND for s in (30, 40, 50, 60)]
    assert all(a.task == faster for _, a in seen)


def test_remove_task_stops_it() -> None:
    scheduler = Scheduler()
    kept, removed = make_spec("every 20 seconds"), make_spec("every 15 seconds")
    scheduler.add_task(kept, after=T0)
    scheduler.add_task(removed, after=T0)
    assert scheduler.next_deadline() == T0 + 15 * SECOND
    assert scheduler.remove_task(removed.task_id) is True
    assert scheduler.remove_task(removed.task_id) is False
    assert scheduler.remove_task(uuid4()) is False
    assert scheduler.tasks == {kept.task_id: kept}
    assert scheduler.next_deadline() == T0 + 20 * SECOND
    seen = drive(scheduler, start=T0, until=T0 + timedelta(hours=1))
    assert {a.task.task_id for _, a in seen} == {kept.task_id}
    scheduler.remove_task(kept.task_id)
    assert scheduler.next_deadline() is None
    assert scheduler.poll(T0 + timedelta(days=1)) == []


def test_removing_keeps_the_running_execution_until_finished() -> None:
    scheduler = Scheduler()
    spec = make_spec()
    scheduler.add_task(spec, after=T0)
    first = slot(T0, spec.frequency, 1)
    scheduler.poll(first)
    scheduler.remove_task(spec.task_id)
    assert scheduler.running(spec.task_id) == {first}
    scheduler.record_finished(spec.task_id, first)
    assert scheduler.running(spec.task_id) == frozenset()


def test_resuming_reports_the_slots_since_the_last_one_acted_on() -> None:
    # An agent restarts: it passes the last slot it acted on, and learns what it missed.
    spec = make_spec()
    last_acted = slot(T0, spec.frequency, 2)
    restarted_at = slot(T0, spec.frequency, 6) + 3 * SECOND
    scheduler = Scheduler()
    scheduler.add_task(spec, after=last_acted)
    assert scheduler.next_deadline() == slot(T0, spec.frequency, 3)
    actions = scheduler.poll(restarted_at)
    assert statuses(actions) == ["missed", "missed", "missed", "started"]
    assert [a.scheduled_at for a in actions] == [slot(T0, spec.frequency, k) for k in range(3, 7)]


def test_an_anchor_in_the_future_fires_one_interval_after_it() -> None:
    scheduler = Scheduler()
    spec = make_spec("every 1 hour", anchor=T0 + timedelta(days=2))
    scheduler.add_task(spec, after=T0)
    assert scheduler.next_deadline() == T0 + timedelta(days=2, hours=1)
    assert scheduler.poll(T0 + timedelta(days=2)) == []


def test_actions_of_several_tasks_come_oldest_first() -> None:
    scheduler = Scheduler()
    slow, fast = make_spec("every 1 minute"), make_spec("every 7 seconds")
    scheduler.add_task(slow, after=T0)
    scheduler.add_task(fast, after=T0)
    actions = scheduler.poll(T0 + 61 * SECOND)
    assert [a.scheduled_at for a in actions] == sorted(a.scheduled_at for a in actions)
    assert Counter(a.task.task_id for a in actions) == {slow.task_id: 1, fast.task_id: 8}


def test_naive_times_are_refused() -> None:
    scheduler = Scheduler()
    naive = datetime(2026, 11, 28, 3, 16, 31)
    with pytest.raises(ValueError, match="timezone-aware"):
        scheduler.add_task(make_spec(), after=naive)
    with pytest.raises(ValueError, match="timezone-aware"):
        scheduler.poll(naive)


def test_a_thousand_tasks_poll_correctly() -> None:
    rng = random.Random(1234)
    scheduler = Scheduler()
    specs = [
        make_spec(
            Frequency(count=rng.randint(5, 600), unit=Unit.SECONDS),
            anchor=T0 + timedelta(microseconds=rng.randrange(-(10**9), 10**9)),
        )
        for _ in range(1000)
    ]
    for spec in specs:
        assert scheduler.add_task(spec, after=T0)
    until = T0 + timedelta(minutes=30)
    seen = drive(scheduler, start=T0, until=until, duration=lambda _: SECOND)
    by_task: dict[UUID, list[datetime]] = {}
    for polled_at, action in seen:
        assert isinstance(action, StartExecution)
        assert action.scheduled_at == polled_at
        by_task.setdefault(action.task.task_id, []).append(action.scheduled_at)
    for spec in specs:
        expected, moment = [], T0
        while (moment := next_slot_after(spec.anchor, spec.frequency, moment)) <= until:
            expected.append(moment)
        assert by_task.get(spec.task_id, []) == expected
    assert scheduler.next_deadline() == min(
        next_slot_after(spec.anchor, spec.frequency, until) for spec in specs
    )


# --- properties ----------------------------------------------------------------------------------


@settings(max_examples=100, deadline=None)
@given(
    frequency=frequencies(max_seconds=600),
    anchor_offset=st.integers(min_value=-(10**10), max_value=10**10),
    gaps=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=150),
    runs_for=st.lists(st.integers(min_value=0, max_value=3), min_size=1, max_size=10),
    starting_deadline=st.integers(min_value=0, max_value=20),
)
def test_polled_every_interval_every_slot_is_accounted_for_once(
    frequency: Frequency,
    anchor_offset: int,
    gaps: list[float],
    runs_for: list[int],
    starting_deadline: int,
) -> None:
    """Polled at least once per interval, each slot gets exactly one action, at or after it."""
    spec = make_spec(frequency, anchor=T0 + timedelta(microseconds=anchor_offset))
    scheduler = Scheduler(starting_deadline=timedelta(seconds=starting_deadline))
    scheduler.add_task(spec, after=T0)
    interval = frequency.interval // MICROSECOND
    now = T0
    acted: list[datetime] = []
    running: dict[datetime, int] = {}  # started slot -> polls left before it finishes
    for i, gap in enumerate(gaps):
        now += timedelta(microseconds=max(1, round(gap * interval)))
        for started, left in list(running.items()):
            if left == 0:
                scheduler.record_finished(spec.task_id, started)
                del running[started]
            else:
                running[started] = left - 1
        for action in scheduler.poll(now):
            assert action.scheduled_at <= now
            assert action.task == spec
            acted.append(action.scheduled_at)
            if isinstance(action, StartExecution):
                running[action.scheduled_at] = runs_for[i % len(runs_for)]
            elif action.status is ExecutionStatus.SKIPPED:
                assert running
            else:
                assert action.status is ExecutionStatus.MISSED
                assert now - action.scheduled_at > timedelta(seconds=starting_deadline)
    expected, moment = [], T0
    while (moment := next_slot_after(spec.anchor, frequency, moment)) <= now:
        expected.append(moment)
    assert acted == expected
    assert scheduler.running(spec.task_id) == set(running)


@settings(max_examples=120, deadline=None)
@given(
    frequency=frequencies(max_seconds=7200),
    slots_late=st.integers(min_value=1, max_value=500),
    lateness=st.floats(min_value=0.0, max_value=0.999),
    max_missed=st.integers(min_value=0, max_value=20),
    starting_deadline=st.integers(min_value=0, max_value=120),
)
def test_polled_late_only_the_newest_may_start(
    frequency: Frequency, slots_late: int, lateness: float, max_missed: int, starting_deadline: int
) -> None:
    scheduler = Scheduler(
        starting_deadline=timedelta(seconds=starting_deadline), max_missed=max_missed
    )
    spec = make_spec(frequency)
    scheduler.add_task(spec, after=T0)
    newest = slot(T0, frequency, slots_late)
    now = newest + lateness * frequency.interval
    actions = scheduler.poll(now)
    *older, last = actions
    assert last.scheduled_at == newest
    if now - newest <= min(timedelta(seconds=starting_deadline), frequency.interval):
        assert isinstance(last, StartExecution)
    else:
        assert isinstance(last, SkipExecution)
        assert last.status is ExecutionStatus.MISSED
    # The older slots are all missed: the newest of them, as many as max_missed allows.
    assert all(isinstance(a, SkipExecution) and a.status is ExecutionStatus.MISSED for a in older)
    count = min(slots_late - 1, max_missed)
    assert [a.scheduled_at for a in older] == [
        slot(T0, frequency, k) for k in range(slots_late - count, slots_late)
    ]
    assert scheduler.poll(now) == []
    assert scheduler.next_deadline() == slot(T0, frequency, slots_late + 1)


# --- a stateful model ----------------------------------------------------------------------------


@attrs.define
class _Model:
    spec: TaskSpec
    cursor: datetime  # every slot after this one is still to be acted on

    @property
    def pending(self) -> datetime:
        return next_slot_after(self.spec.anchor, self.spec.frequency, self.cursor)


_TASK_IDS = [UUID(int=n) for n in range(1, 6)]


class SchedulerMachine(RuleBasedStateMachine):
    """Random adds, changes, removals, finishes and polls, checked against a plain model.

    The model recomputes every poll from the rules in the scheduler's docstring, and the
    invariants hold whatever the order: nothing before its time, nothing twice, all on the grid.
    """

    specs = Bundle("specs")

    @initialize(
        starting_deadline=st.integers(min_value=0, max_value=60),
        max_missed=st.integers(min_value=0, max_value=12),
    )
    def start(self, starting_deadline: int, max_missed: int) -> None:
        self.scheduler = Scheduler(
            starting_deadline=timedelta(seconds=starting_deadline), max_missed=max_missed
        )
        self.now = T0
        self.model: dict[UUID, _Model] = {}
        self.running: dict[UUID, set[datetime]] = {}
        self.acted: dict[UUID, set[datetime]] = {}

    def _expected_poll(self, now: datetime) -> list[Action]:
        expected: list[Action] = []
        deadline = self.scheduler.starting_deadline
        for task_id, model in self.model.items():
            spec = model.spec
            first = slot_index_after(spec.anchor, spec.frequency, model.cursor)
            last = slot_index_after(spec.anchor, spec.frequency, now) - 1
            if last < first:
                continue
            older = list(range(first, last))
            kept = older[max(0, len(older) - self.scheduler.max_missed) :]
            for k in kept:
                expected.append(
                    SkipExecution(
                        task=spec,
                        scheduled_at=slot(spec.anchor, spec.frequency, k),
                        status=ExecutionStatus.MISSED,
                        reason="",
                    )
                )
            newest = slot(spec.anchor, spec.frequency, last)
            if now - newest > min(deadline, spec.frequency.interval):
                status: ExecutionStatus | None = ExecutionStatus.MISSED
            elif self.running.get(task_id):
                status = ExecutionStatus.SKIPPED
            else:
                status = None
            if status is None:
                expected.append(StartExecution(task=spec, scheduled_at=newest))
            else:
                expected.append(
                    SkipExecution(task=spec, scheduled_at=newest, status=status, reason="")
                )
            model.cursor = now
        return expected

    def _poll(self, now: datetime) -> None:
        assert now >= self.now
        self.now = now
        actions = self.scheduler.poll(now)
        expected = self._expected_poll(now)
        assert [a.scheduled_at for a in actions] == sorted(a.scheduled_at for a in actions)

        def key(action: Action) -> tuple[datetime, UUID]:
            return (action.scheduled_at, action.task.task_id)

        def plain(action: Action) -> Action:
            return attrs.evolve(action, reason="") if isinstance(action, SkipExecution) else action

        assert sorted(map(plain, actions), key=key) == sorted(expected, key=key)
        for action in actions:
            task_id = action.task.task_id
            spec = action.task
            assert action.scheduled_at <= now
            assert action.scheduled_at not in self.acted.setdefault(task_id, set())
            self.acted[task_id].add(action.scheduled_at)
            assert action.scheduled_at == slot(
                spec.anchor,
                spec.frequency,
                slot_index_after(spec.anchor, spec.frequency, action.scheduled_at) - 1,
            )
            if isinstance(action, SkipExecution):
                assert action.reason
            else:
                self.running.setdefault(task_id, set()).add(action.scheduled_at)

    @rule(
        target=specs,
        task_id=st.sampled_from(_TASK_IDS),
        command=st.sampled_from(["echo a", "echo b"]) | commands(max_size=10),
        frequency=frequencies(max_seconds=2 * 3600),
        anchor_offset=st.integers(min_value=-(7200 * 10**6), max_value=7200 * 10**6),
    )
    def add_task(
        self, task_id: UUID, command: str, frequency: Frequency, anchor_offset: int
    ) -> TaskSpec:
        anchor = self.now + timedelta(microseconds=anchor_offset)
        spec = TaskSpec(task_id=task_id, command=command, frequency=frequency, anchor=anchor)
        current = self.model.get(task_id)
        changed = current is None or current.spec != spec
        assert self.scheduler.add_task(spec, after=self.now) is changed
        if changed:
            self.model[task_id] = _Model(spec=spec, cursor=self.now)
        return spec

    @rule(spec=specs)
    def add_again(self, spec: TaskSpec) -> None:
        """Re-sending a spec: nothing changes if it is the current one."""
        current = self.model.get(spec.task_id)
        changed = current is None or current.spec != spec
        if not changed:
            assert self.scheduler.add_task(spec, after=self.now) is False

    @rule(task_id=st.sampled_from(_TASK_IDS))
    def remove_task(self, task_id: UUID) -> None:
        assert self.scheduler.remove_task(task_id) is (task_id in self.model)
        self.model.pop(task_id, None)

    @precondition(lambda self: any(self.running.values()))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        started = sorted((t, s) for t, slots in self.running.items() for s in slots)
        task_id, scheduled_at = data.draw(st.sampled_from(started))
        self.scheduler.record_finished(task_id, scheduled_at)
        self.running[task_id].discard(scheduled_at)

    @rule(micros=st.integers(min_value=0, max_value=3_000_000))
    def poll_soon(self, micros: int) -> None:
        self._poll(self.now + timedelta(microseconds=micros))

    @rule(jitter=st.integers(min_value=0, max_value=30_000_000))
    def poll_at_next_deadline(self, jitter: int) -> None:
        deadline = self.scheduler.next_deadline()
        if deadline is not None:
            self._poll(max(self.now, deadline) + timedelta(microseconds=jitter))

    @rule(hours=st.integers(min_value=1, max_value=12), micros=st.integers(0, 3_600_000_000))
    def poll_after_an_outage(self, hours: int, micros: int) -> None:
        self._poll(self.now + timedelta(hours=hours, microseconds=micros))

    @invariant()
    def next_deadline_is_the_earliest_pending_slot(self) -> None:
        pending = [model.pending for model in self.model.values()]
        assert self.scheduler.next_deadline() == (min(pending) if pending else None)

    @invariant()
    def tasks_and_running_match(self) -> None:
        assert self.scheduler.tasks == {t: model.spec for t, model in self.model.items()}
        for task_id in _TASK_IDS:
            assert self.scheduler.running(task_id) == self.running.get(task_id, set())


SchedulerMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=35,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_scheduler_machine = SchedulerMachine.TestCase


@given(
    seconds=st.lists(st.integers(min_value=1, max_value=120), min_size=1, max_size=40),
    offsets=st.lists(st.integers(min_value=0, max_value=10**6), min_size=40, max_size=40),
    paused=st.sets(st.integers(min_value=0, max_value=39), max_size=10),
    removed=st.sets(st.integers(min_value=0, max_value=39), max_size=10),
    polled=st.integers(min_value=0, max_value=300),
    horizon=st.integers(min_value=0, max_value=200_000),
)
def test_upcoming_lists_each_task_s_next_slot_up_to_the_horizon_and_changes_nothing(
    seconds: list[int],
    offsets: list[int],
    paused: set[int],
    removed: set[int],
    polled: int,
    horizon: int,
) -> None:
    scheduler = Scheduler()
    specs = []
    for index, interval in enumerate(seconds):
        spec = make_spec(f"every {interval} seconds", T0 + offsets[index] * MICROSECOND)
        specs.append(spec)
        scheduler.add_task(spec, after=T0)
    for index in paused & set(range(len(specs))):
        scheduler.add_task(attrs.evolve(specs[index], paused=True), after=T0)
    for index in removed & set(range(len(specs))):
        scheduler.remove_task(specs[index].task_id)
    now = T0 + polled * SECOND
    scheduler.poll(now)
    until = now + horizon * MICROSECOND * 10
    deadline = scheduler.next_deadline()

    upcoming = scheduler.upcoming(until)

    expected = []
    for index, spec in enumerate(specs):
        if index in paused or index in removed:
            continue
        when = next_slot_after(spec.anchor, spec.frequency, now)
        if when <= until:
            expected.append((spec.task_id, when))
    assert sorted((spec.task_id, when) for spec, when in upcoming) == sorted(expected)
    assert [when for _, when in upcoming] == sorted(when for _, when in upcoming)
    assert scheduler.next_deadline() == deadline  # a look, not an act
