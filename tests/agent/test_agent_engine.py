"""The scheduling loop, with trio's ``MockClock`` driving real (quick) commands.

Under ``mock_clock`` time moves only when a test jumps it, so each slot's command runs to the
end before the next slot comes: the results are exact. Under ``autojump_clock`` the clock leaps
to the next deadline whenever every task waits, including while a command runs, so there the
tests check invariants that hold however far it leaps.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest
import trio
import trio.testing

from taskscheduler_agent import Engine, TaskRejected, WallClock
from taskscheduler_core import (
    Execution,
    ExecutionStatus,
    ScheduleTask,
    TaskSpec,
    format_time,
    parse_frequency,
)

START = datetime(2026, 11, 28, 3, 16, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)
AGENT_ID = UUID("0b6d6c2e-8f1a-4a47-9c57-0c1f2b0f7a11")

Settle = Callable[..., Awaitable[None]]


def spec(command: str, frequency: str = "every 1 seconds", anchor: datetime = START) -> TaskSpec:
    return TaskSpec(
        task_id=uuid4(), command=command, frequency=parse_frequency(frequency), anchor=anchor
    )


class Delivered(list[Execution]):
    """The ``deliver`` callback of the engines under test: keeps what they hand over."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = trio.Event()

    async def __call__(self, execution: Execution) -> None:
        self.append(execution)
        self._changed.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Wait for deliveries until ``condition`` holds; unlike polling, lets autojump leap."""
        while not condition():
            self._changed = trio.Event()
            await self._changed.wait()

    def with_status(self, status: ExecutionStatus) -> list[Execution]:
        return [execution for execution in self if execution.status is status]


async def start_engine(
    nursery: trio.Nursery, delivered: Delivered, shell_env: dict[str, str]
) -> Engine:
    engine = Engine(
        agent_id=AGENT_ID, deliver=delivered, clock=WallClock(start=START), env=shell_env
    )
    await nursery.start(engine.run)
    return engine


async def test_runs_each_slot_and_reports_what_it_printed(
    mock_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    shell_env: dict[str, str],
    settle: Settle,
) -> None:
    delivered = Delivered()
    engine = await start_engine(nursery, delivered, shell_env)
    task = spec('echo "hello world"; echo "$TSCHED_TASK_ID $TSCHED_AGENT_ID $TSCHED_SCHEDULED_AT"')
    assert await engine.add_task(task)

    for k in range(1, 4):
        mock_clock.jump(1)
        await settle(lambda k=k: len(delivered) == k)
    slots = [START + k * SECOND for k in (1, 2, 3)]
    assert delivered == [
        Execution(
            task_id=task.task_id,
            agent_id=AGENT_ID,
            scheduled_at=slot,
            started_at=slot,  # the mock clock stands still while the command runs
            finished_at=slot,
            status=ExecutionStatus.SUCCEEDED,
            exit_code=0,
            stdout=f"hello world\n{task.task_id} {AGENT_ID} {format_time(slot)}\n",
        )
        for slot in slots
    ]


async def test_nothing_fires_before_its_time(
    mock_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    shell_env: dict[str, str],
    settle: Settle,
) -> None:
    delivered = Delivered()
    engine = await start_engine(nursery, delivered, shell_env)
    await engine.add_task(spec("echo hi", "every 10 seconds"))
    mock_clock.jump(9.999999)
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    assert delivered == []
    mock_clock.jump(0.000001)
    await settle(lambda: len(delivered) == 1)
    assert delivered[0].scheduled_at == START + 10 * SECOND


async def test_a_slot_that_comes_while_the_last_run_is_still_going_is_skipped(
    tmp_path: Path,
    mock_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    shell_env: dict[str, str],
    settle: Settle,
) -> None:
    delivered = Delivered()
    engine = await start_engine(nursery, delivered, shell_env)
    gate = tmp_path / "go"
    task = spec(f"while [ ! -e {gate} ]; do sleep 0.01; done; echo done")
    await engine.add_task(task)

    mock_clock.jump(1)  # slot 1 starts and waits for the gate
    await settle(lambda: engine.scheduler.running(task.task_id))
    mock_clock.jump(1)  # slot 2: slot 1 still runs
    await settle(lambda: len(delivered) == 1)
    (skipped,) = delivered
    assert (skipped.scheduled_at, skipped.status) == (START + 2 * SECOND, ExecutionStatus.SKIPPED)
    assert (skipped.started_at, skipped.finished_at, skipped.exit_code) == (
        START + 2 * SECOND,
        START + 2 * SECOND,
        None,
    )

    gate.touch()
    await settle(lambda: len(delivered) == 2)
    assert (delivered[1].scheduled_at, delivered[1].stdout) == (START + SECOND, "done\n")
    assert delivered[1].finished_at == START + 2 * SECOND

    mock_clock.jump(1)  # slot 3 runs again
    await settle(lambda: len(delivered) == 3)
    assert (delivered[2].scheduled_at, delivered[2].status) == (
        START + 3 * SECOND,
        ExecutionStatus.SUCCEEDED,
    )


async def test_hours_of_schedule_in_moments(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, shell_env: dict[str, str]
) -> None:
    delivered = Delivered()
    engine = await start_engine(nursery, delivered, shell_env)
    task = spec("echo tick", "every 1 hours")
    await engine.add_task(task)
    # The bound is in simulated time, which leaps a slot ahead whenever all tasks wait, also
    # while a command runs: a slow machine skips thousands of hourly slots per real second.
    with trio.fail_after(timedelta(days=3650).total_seconds()):
        await delivered.until(lambda: len(delivered.with_status(ExecutionStatus.SUCCEEDED)) >= 3)
    await engine.remove_task(task.task_id)

    # Every slot is acted on exactly once, from the first one on; runs never overlap (a slot
    # that comes while one runs is skipped), and each run printed its output.
    slots = [execution.scheduled_at for execution in delivered]
    assert sorted(slots) == [START + k * timedelta(hours=1) for k in range(1, len(slots) + 1)]
    runs = delivered.with_status(ExecutionStatus.SUCCEEDED)
    assert {(run.stdout, run.exit_code) for run in runs} == {("tick\n", 0)}
    assert all(run.finished_at <= later.started_at for run, later in itertools.pairwise(runs))
    assert {e.status for e in delivered} <= {ExecutionStatus.SUCCEEDED, ExecutionStatus.SKIPPED}
    assert engine.clock.now() >= START + 3 * timedelta(hours=1)


async def test_a_new_task_wakes_the_sleeping_loop(
    mock_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    shell_env: dict[str, str],
    settle: Settle,
) -> None:
    delivered = Delivered()
    engine = await start_engine(nursery, delivered, shell_env)
    await engine.add_task(spec("echo slow", "every 1 hours"))
    await trio.testing.wait_all_tasks_blocked()  # the loop now sleeps for an hour
    fast = spec("echo fast", "every 2 seconds")
    await engine.add_task(fast)
    mock_clock.jump(2)
    await settle(lambda: len(delivered) == 1)
    assert (delivered[0].task_id, delivered[0].stdout) == (fast.task_id, "fast\n")


async def test_a_changed_task_replaces_the_old_one(
    mock_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    shell_env: dict[str, str],
    settle: Settle,
) -> None:
    delivered = Delivered()
    engine = await start_engine(nursery, delivered, shell_env)
    old = spec("echo old", "every 1 seconds")
    await engine.add_task(old)
    new = TaskSpec(
        task_id=old.task_id, command="echo new", frequency=old.frequency, anchor=old.anchor
    )
    assert await engine.add_task(new)
    assert not await engine.add_task(new)
    assert engine.tasks() == [new]
    mock_clock.jump(1)
    await settle(lambda: len(delivered) == 1)
    assert delivered[0].stdout == "new\n"


async def test_schedule_without_an_anchor_is_anchored_once(
    mock_clock: trio.testing.MockClock, shell_env: dict[str, str]
) -> None:
    engine = Engine(
        agent_id=AGENT_ID, deliver=Delivered(), clock=WallClock(start=START), env=shell_env
    )
    task_id = uuid4()
    request = ScheduleTask(
        task_id=task_id, command="echo hi", frequency=parse_frequency("every 5 seconds")
    )
    first, changed = await engine.schedule(request)
    assert changed
    assert first.anchor == START  # anchored at receipt

    mock_clock.jump(3)
    assert await engine.schedule(request) == (first, False)  # the same task again: same schedule

    every_6 = parse_frequency("every 6 seconds")
    other = ScheduleTask(task_id=task_id, command="echo hi", frequency=every_6)
    moved, changed = await engine.schedule(other)
    assert changed
    assert moved.anchor == START + 3 * SECOND

    anchored = ScheduleTask.of(moved)
    assert await engine.schedule(anchored) == (moved, False)
    assert engine.tasks() == [moved]


async def test_fire_times_past_the_calendar_are_rejected(shell_env: dict[str, str]) -> None:
    engine = Engine(
        agent_id=AGENT_ID, deliver=Delivered(), clock=WallClock(start=START), env=shell_env
    )
    end_of_time = datetime(9999, 12, 31, 23, 0, tzinfo=UTC)
    with pytest.raises(TaskRejected) as raised:
        await engine.add_task(spec("echo hi", "every 2 hours", anchor=end_of_time))
    assert raised.value.field == "anchor"
    assert engine.tasks() == []


async def test_cancelling_the_engine_kills_running_commands(
    tmp_path: Path,
    shell_env: dict[str, str],
    read_pids: Callable[[Path, int], Awaitable[list[int]]],
    live_group_members: Callable[[int], list[int]],
    wait_for: Callable[..., Awaitable[None]],
) -> None:
    delivered = Delivered()
    engine = Engine(agent_id=AGENT_ID, deliver=delivered, env=shell_env)
    pids = tmp_path / "pids"
    soon = engine.clock.now() - timedelta(seconds=0.95)  # the first slot is 50 ms away
    await engine.add_task(spec(f"echo $$ >> {pids}; sleep 30", "every 1 seconds", anchor=soon))
    async with trio.open_nursery() as inner:
        inner.start_soon(engine.run)
        (shell,) = await read_pids(pids, 1)
        inner.cancel_scope.cancel()
    await wait_for(lambda: not live_group_members(shell), timeout=5)
    assert delivered == []


async def test_a_task_removed_between_poll_and_start_is_not_started(
    mock_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    shell_env: dict[str, str],
) -> None:
    delivered = Delivered()
    engine = Engine(
        agent_id=AGENT_ID, deliver=delivered, clock=WallClock(start=START), env=shell_env
    )
    task = spec("echo should not run")
    await engine.add_task(task)
    actions = engine.scheduler.poll(START + SECOND)  # the loop polled ...
    assert actions
    await engine.remove_task(task.task_id)  # ... then a DELETE came in before it acted
    await engine._act(nursery, actions, START + SECOND)
    await trio.testing.wait_all_tasks_blocked()
    assert delivered == []
    assert engine.scheduler.running(task.task_id) == frozenset()
