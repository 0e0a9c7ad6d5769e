"""Retention: the store's bounded pruning, one pass of the policy over a store filled directly,
the background loop on trio's mock clock, and its settings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import attrs
import pytest
import trio

from taskscheduler_core import (
    Execution,
    ExecutionStatus,
    RetentionPolicy,
    Task,
    Trigger,
    parse_recurrence,
)
from taskscheduler_server import ServerConfig, Store, retention
from taskscheduler_server.retention import prune_history, prune_once
from taskscheduler_server.store import AsyncStore

pytestmark = pytest.mark.databases("sqlite", "postgresql")

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
AGENTS = (UUID(int=1), UUID(int=2))


def make_task(store: Store, at: datetime = START) -> Task:
    task = Task(
        id=uuid4(),
        command="echo hi",
        frequency=parse_recurrence("every 1 hours"),
        anchor=at,
        created_at=at,
    )
    store.create_task(task)
    return task


def fill(store: Store, task: Task, slots: list[datetime], *, attempts: int = 1) -> None:
    """Every agent reports every slot (with ``attempts`` attempts each)."""
    for slot in slots:
        for agent_id in AGENTS:
            for attempt in range(1, attempts + 1):
                store.record_execution(
                    Execution(
                        task_id=task.id,
                        agent_id=agent_id,
                        scheduled_at=slot,
                        started_at=slot,
                        finished_at=slot + timedelta(seconds=1),
                        status=ExecutionStatus.SUCCEEDED,
                        attempt=attempt,
                        trigger=Trigger.SCHEDULE,
                        final=attempt == attempts,
                    )
                )


def hours(count: int, *, before: datetime) -> list[datetime]:
    """``count`` hourly slots, the newest one hour before ``before``."""
    return [before - timedelta(hours=k) for k in range(count, 0, -1)]


def test_prune_executions_deletes_in_bounded_batches(store: Store) -> None:
    task, other = make_task(store), make_task(store)
    slots = hours(6, before=START + timedelta(days=1))
    fill(store, task, slots, attempts=2)  # 6 slots x 2 agents x 2 attempts
    fill(store, other, slots)
    cutoff = slots[4]

    assert store.prune_executions(task.id, before=cutoff, limit=7) == 7
    assert store.prune_executions(task.id, before=cutoff, limit=7) == 7
    assert store.prune_executions(task.id, before=cutoff, limit=7) == 2
    assert store.prune_executions(task.id, before=cutoff, limit=7) == 0
    assert {e.scheduled_at for e in store.executions(task.id)} == {slots[4], slots[5]}
    assert len(store.executions(task.id)) == 8
    assert len(store.executions(other.id)) == 12  # another task's history is not touched
    assert store.run_times(task.id, limit=5) == [slots[5], slots[4]]
    assert store.oldest_run_time(task.id) == slots[4]
    assert store.oldest_run_time(uuid4()) is None


def test_forget_deleted_tasks_only_once_empty_and_told(store: Store) -> None:
    from taskscheduler_core import Agent

    kept, empty, pending = make_task(store), make_task(store), make_task(store)
    live = make_task(store)
    fill(store, kept, [START])
    store.upsert_agent(Agent(id=AGENTS[0], url="http://127.0.0.1:9", registered_at=START))
    for assignment in store.undelivered():
        if assignment.task.id != pending.id:
            store.mark_delivered(assignment, START)
    later = START + timedelta(minutes=1)
    for task in (kept, empty, pending):
        store.change_task(task.id, lambda t: attrs.evolve(t, deleted_at=later), now=later)
    for assignment in store.undelivered():
        if assignment.task.id != pending.id:
            store.mark_delivered(assignment, later)  # the agent dropped them

    # with history, or with a removal still to deliver to an alive agent: kept
    assert store.forget_deleted_tasks() == [empty.id]
    assert store.get_task(empty.id) is None
    assert {t.id for t in store.list_tasks()} == {kept.id, pending.id, live.id}
    # once the agent is lost nobody is waiting for that removal (reconcile cleans up later)
    store.mark_lost(later)
    assert store.forget_deleted_tasks() == [pending.id]


async def test_one_pass_applies_both_rules_and_forgets_emptied_deleted_tasks(
    store: Store,
) -> None:
    now = START + timedelta(days=10)
    busy, old, doomed = make_task(store), make_task(store), make_task(store)
    fill(store, busy, hours(30, before=now))  # 30 recent runs: the count rule keeps 10
    fill(store, old, hours(5, before=now - timedelta(days=3)))  # all older than 2 days
    fill(store, doomed, hours(3, before=now - timedelta(days=5)))
    later = now - timedelta(days=1)
    store.change_task(doomed.id, lambda t: attrs.evolve(t, deleted_at=later), now=later)
    astore = AsyncStore(store)
    policy = RetentionPolicy(keep_runs=10, keep_days=2)

    pruned = await prune_once(astore, policy=policy, now=now)

    assert store.run_times(busy.id, limit=100) == hours(30, before=now)[::-1][:10]
    # all older than the age rule, but a live task keeps its newest run (its latest output)
    assert store.run_times(old.id, limit=100) == [max(hours(5, before=now - timedelta(days=3)))]
    assert store.get_task(doomed.id) is None  # deleted and emptied: forgotten
    assert pruned.executions == 2 * (20 + 4 + 3)
    assert pruned.forgotten == (doomed.id,)
    again = await prune_once(astore, policy=policy, now=now)
    assert (again.executions, again.forgotten) == (0, ())

    # each rule alone, and none
    fill(store, old, hours(3, before=now))
    assert (
        await prune_once(astore, policy=RetentionPolicy(keep_runs=1, keep_days=None), now=now)
    ).executions == 2 * (9 + 3)
    keep_all = RetentionPolicy(keep_runs=None, keep_days=None)
    assert (
        await prune_once(astore, policy=keep_all, now=now + timedelta(days=999))
    ).executions == 0
    age_only = RetentionPolicy(keep_runs=None, keep_days=0.5)
    fill(store, busy, hours(2, before=now - timedelta(days=1)))  # two old runs, pruned by age
    assert (await prune_once(astore, policy=age_only, now=now + timedelta(days=1))).executions == 4


async def test_a_history_longer_than_a_batch_is_pruned_whole(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(retention, "PRUNE_BATCH", 3)  # tasks are paged by it too
    tasks = [make_task(store) for _ in range(7)]
    now = START + timedelta(days=100)
    for task in tasks:
        fill(store, task, hours(4, before=now - timedelta(days=40)))  # 8 rows each
    pruned = await prune_once(AsyncStore(store), policy=RetentionPolicy(), now=now)
    assert pruned.executions == 7 * 6  # all but each task's newest run (2 agents)
    assert all(len(store.executions(task.id)) == 2 for task in tasks)


class Clock:
    """A wall clock that follows trio's (mock) clock."""

    def __init__(self, start: datetime) -> None:
        self.start = start
        self.origin = trio.current_time()

    def __call__(self) -> datetime:
        return self.start + timedelta(seconds=trio.current_time() - self.origin)


async def test_the_loop_prunes_every_interval(store: Store, mock_clock: Any) -> None:
    # The store works in a thread, which trio counts as blocked: the clock jumps only after a
    # pause of real time far longer than any store call, so that no jump overtakes one.
    mock_clock.autojump_threshold = 0.2
    task = make_task(store)
    clock = Clock(START)
    fill(store, task, hours(3, before=START))
    policy = RetentionPolicy(keep_runs=2, keep_days=None)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: prune_history(
                AsyncStore(store),
                policy=policy,
                interval=timedelta(minutes=5),
                clock=clock,
                task_status=task_status,
            )
        )
        await trio.sleep(1)
        assert len(store.run_times(task.id, limit=10)) == 2  # pruned at once
        fill(store, task, [clock()])
        await trio.sleep(60)
        assert len(store.run_times(task.id, limit=10)) == 3  # not yet: every 5 minutes
        await trio.sleep(5 * 60)
        assert len(store.run_times(task.id, limit=10)) == 2
        nursery.cancel_scope.cancel()


def test_retention_settings_and_their_checks(tmp_path: Path) -> None:
    config = ServerConfig(database=tmp_path / "x.sqlite")
    assert (config.keep_runs, config.keep_days) == (1000, 30.0)
    assert config.prune_interval == timedelta(seconds=60)
    assert config.retention == RetentionPolicy(keep_runs=1000, keep_days=30.0)
    unlimited = ServerConfig(database=tmp_path / "x.sqlite", keep_runs=0, keep_days=0)
    assert unlimited.retention.keeps_everything
    for options, flag in [
        ({"keep_runs": -1}, "--keep-runs"),
        ({"keep_runs": 1.5}, "--keep-runs"),
        ({"keep_runs": 2**63}, "--keep-runs"),  # the prune loop's LIMIT would overflow
        ({"keep_days": -0.1}, "--keep-days"),
        ({"keep_days": float("nan")}, "--keep-days"),
        ({"keep_days": 10**9}, "--keep-days"),
        ({"prune_interval": timedelta(0)}, "--prune-interval"),
    ]:
        with pytest.raises(ValueError, match=flag):
            ServerConfig(database=tmp_path / "x.sqlite", **options)  # type: ignore[arg-type]
