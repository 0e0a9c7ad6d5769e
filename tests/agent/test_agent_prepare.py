"""Slots marked taken ahead of their time: a prepared slot starts at its time, whatever the disk.

A store whose ``begin_slots`` takes 50 ms (of trio's mock clock) stands in for a slow disk:
without preparing, every command would start 50 ms late.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from uuid import UUID, uuid4

import pytest
import trio
import trio.testing

import taskscheduler_agent.engine as engine_module
from taskscheduler_agent import Engine, WallClock
from taskscheduler_agent.engine import PREPARE_AHEAD
from taskscheduler_core import (
    Execution,
    ExecutionStatus,
    StartExecution,
    TaskSpec,
    parse_frequency,
)

START = datetime(2026, 11, 28, 3, 16, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)
AGENT_ID = UUID("0b6d6c2e-8f1a-4a47-9c57-0c1f2b0f7a11")
DISK = 0.05  # what each begin_slots takes, in seconds of the mock clock

Settle = Callable[..., Awaitable[None]]
Slot = tuple[UUID, datetime]


class SlowStore:
    """A ScheduleStore that keeps nothing but what it was asked, and is slow to take slots."""

    def __init__(self) -> None:
        self.begun: list[Slot] = []
        self.released: list[Slot] = []

    async def save_schedule(self, spec: TaskSpec, *, since: datetime) -> None:
        pass

    async def remove_schedule(self, task_id: UUID) -> bool:
        return True

    async def begin_slots(
        self,
        last_slots: Mapping[UUID, datetime],
        starting: Sequence[StartExecution],
        *,
        started_at: datetime,
    ) -> None:
        await trio.sleep(DISK)
        self.begun.extend((start.task.task_id, start.scheduled_at) for start in starting)

    async def process_started(
        self, task_id: UUID, scheduled_at: datetime, pid: int, *, attempt: int = 1
    ) -> None:
        pass

    async def executed(self, task_id: UUID, scheduled_at: datetime) -> bool:
        return False

    async def release_slots(self, slots: Sequence[Slot]) -> None:
        self.released.extend(slots)


def spec() -> TaskSpec:
    return TaskSpec(
        task_id=uuid4(),
        command="echo prepared",
        frequency=parse_frequency("every 1 seconds"),
        anchor=START,
    )


async def _engine(
    nursery: trio.Nursery, store: SlowStore, delivered: list[Execution], env: dict[str, str]
) -> Engine:
    async def deliver(execution: Execution) -> None:
        delivered.append(execution)

    engine = Engine(
        agent_id=AGENT_ID, deliver=deliver, clock=WallClock(start=START), env=env, store=store
    )
    await nursery.start(engine.run)
    return engine


async def test_a_prepared_slot_starts_at_its_time_however_slow_the_disk(
    mock_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    shell_env: dict[str, str],
    settle: Settle,
) -> None:
    store, delivered = SlowStore(), list[Execution]()
    engine = await _engine(nursery, store, delivered, shell_env)
    task = spec()
    await engine.add_task(task)
    for k in (1, 2, 3):
        # Step to the fire time in small jumps, letting the preparer take the slot on the way.
        for _ in range(19):
            mock_clock.jump(0.05)
            await trio.testing.wait_all_tasks_blocked(cushion=0.01)
        mock_clock.jump(0.0501)  # a hair past: float steps must not fall just short of it
        await settle(lambda k=k: len(delivered) == k)
    slots = [START + k * SECOND for k in (1, 2, 3)]
    assert [e.scheduled_at for e in delivered] == slots
    # started at the instant of the slot (within the steps' float error): nothing waited for
    # the 50 ms "disk", which the slow path would have added
    assert all(e.started_at - e.scheduled_at < timedelta(milliseconds=1) for e in delivered)
    # and each slot was taken on disk before it came
    assert store.begun == [(task.task_id, slot) for slot in slots]
    assert store.released == []


async def test_the_prepared_slot_of_a_removed_task_is_released_and_not_run(
    mock_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    shell_env: dict[str, str],
) -> None:
    store, delivered = SlowStore(), list[Execution]()
    engine = await _engine(nursery, store, delivered, shell_env)
    task = spec()
    await engine.add_task(task)
    # up to just before the slot: it is prepared by now (it is within PREPARE_AHEAD)
    for _ in range(round((1 - PREPARE_AHEAD / 4) / 0.05)):
        mock_clock.jump(0.05)
        await trio.testing.wait_all_tasks_blocked(cushion=0.01)
    assert store.begun == [(task.task_id, START + SECOND)]
    await engine.remove_task(task.task_id)
    assert store.released == [(task.task_id, START + SECOND)]
    mock_clock.jump(2)
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    assert delivered == []


async def test_an_overloaded_agent_skips_what_it_cannot_start_instead_of_queueing_it(
    mock_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    shell_env: dict[str, str],
    settle: Settle,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One command may wait to start at a time: of two due at the same instant, the second
    # finds the agent overloaded.
    monkeypatch.setattr(engine_module, "MAX_STARTING", 1)
    store, delivered = SlowStore(), list[Execution]()
    engine = await _engine(nursery, store, delivered, shell_env)
    first, second = spec(), spec()
    await engine.add_task(first)
    await engine.add_task(second)
    for _ in range(19):
        mock_clock.jump(0.05)
        await trio.testing.wait_all_tasks_blocked(cushion=0.01)
    mock_clock.jump(0.0501)
    await settle(lambda: len(delivered) == 2)
    by_status = {execution.status: execution for execution in delivered}
    assert set(by_status) == {ExecutionStatus.SUCCEEDED, ExecutionStatus.SKIPPED}
    skipped = by_status[ExecutionStatus.SKIPPED]
    assert "the agent is overloaded" in skipped.stderr
    assert skipped.scheduled_at == START + SECOND
    # the skipped slot is let go: the task runs again at its next fire time
    assert engine.scheduler.running(skipped.task_id) == frozenset()
    assert engine._starting == 0


async def test_slots_prepared_when_the_agent_stops_are_recorded_as_missed(
    mock_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    shell_env: dict[str, str],
) -> None:
    store, delivered = SlowStore(), list[Execution]()
    engine = await _engine(nursery, store, delivered, shell_env)
    task = spec()
    await engine.add_task(task)
    for _ in range(19):  # the slot at 1 s is prepared by now
        mock_clock.jump(0.05)
        await trio.testing.wait_all_tasks_blocked(cushion=0.01)
    assert store.begun == [(task.task_id, START + SECOND)]
    await engine.stop()
    ((missed),) = delivered
    assert (missed.status, missed.scheduled_at) == (ExecutionStatus.MISSED, START + SECOND)
    assert "stopped before this fire time" in missed.stderr
