"""The task options as the engine carries them out, on real commands under trio's ``MockClock``.

Timeouts and ``overlap: replace`` come from the core scheduler as ``StopExecution``; the engine
kills the execution's process group and reports it with the scheduler's status. Retries, pauses
and manual runs go through the scheduler too; ``env`` and ``max_output_bytes`` are the engine's.
Time moves only when a test jumps it, so every start time is exact.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import attrs
import pytest
import trio
import trio.testing

from taskscheduler_agent import Engine, WallClock
from taskscheduler_core import (
    Execution,
    ExecutionStatus,
    Overlap,
    TaskSpec,
    Trigger,
    WireError,
    format_time,
    parse_recurrence,
)

START = datetime(2026, 11, 28, 3, 16, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)
AGENT_ID = UUID("0b6d6c2e-8f1a-4a47-9c57-0c1f2b0f7a11")

Settle = Callable[..., Awaitable[None]]


def spec(command: str, frequency: str = "every 1 seconds", **options: Any) -> TaskSpec:
    return TaskSpec(
        task_id=uuid4(),
        command=command,
        frequency=parse_recurrence(frequency),
        anchor=START,
        **options,
    )


class Delivered(list[Execution]):
    async def __call__(self, execution: Execution) -> None:
        self.append(execution)

    def summary(self) -> list[tuple[datetime, int, ExecutionStatus, bool]]:
        return [(e.scheduled_at, e.attempt, e.status, e.final) for e in self]


async def start_engine(
    nursery: trio.Nursery, delivered: Delivered, env: dict[str, str], **options: Any
) -> Engine:
    engine = Engine(
        agent_id=AGENT_ID, deliver=delivered, clock=WallClock(start=START), env=env, **options
    )
    await nursery.start(engine.run)
    return engine


async def test_a_timeout_kills_the_process_group_and_reports_timed_out(
    tmp_path: Path,
    mock_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    shell_env: dict[str, str],
    settle: Settle,
    pid_alive: Callable[[int], bool],
) -> None:
    delivered = Delivered()
    engine = await start_engine(nursery, delivered, shell_env)
    child = tmp_path / "child"
    task = spec(
        f"echo started; sleep 30 & echo $! > {child}; wait",
        "every 1 hours",
        timeout=2.5,
    )
    await engine.add_task(task)
    mock_clock.jump(3600)
    # (settle, not read_pids: that one sleeps, and this clock only moves when jumped)
    await settle(lambda: child.exists() and child.read_text().strip())
    sleeper = int(child.read_text())
    mock_clock.jump(2.4)
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    assert delivered == []  # not yet past its timeout
    mock_clock.jump(0.1)
    await settle(lambda: delivered)
    (timed_out,) = delivered
    assert timed_out.status is ExecutionStatus.TIMED_OUT
    assert timed_out.exit_code == -9  # the shell got SIGKILL
    assert timed_out.stdout == "started\n"  # what it printed before is kept
    assert timed_out.stderr.endswith("killed: ran longer than its timeout of 2.5 s\n")
    assert (timed_out.started_at, timed_out.finished_at) == (
        START + 3600 * SECOND,
        START + 3602.5 * SECOND,
    )
    assert timed_out.final  # no retries asked for
    # the background child was in the group: it died with the shell
    await settle(lambda: not pid_alive(sleeper))
    assert engine.running() == []


async def test_failed_attempts_are_retried_with_backoff_each_its_own_record(
    tmp_path: Path,
    mock_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    shell_env: dict[str, str],
    settle: Settle,
) -> None:
    delivered = Delivered()
    engine = await start_engine(nursery, delivered, shell_env)
    counter = tmp_path / "count"
    # fails twice, then succeeds
    task = spec(
        f"n=$(($(cat {counter} 2>/dev/null || echo 0) + 1)); echo $n > {counter}; "
        f'echo "attempt $n at $TSCHED_SCHEDULED_AT"; [ $n -ge 3 ]',
        "every 1 hours",
        retries=4,
        retry_delay=1.0,
    )
    await engine.add_task(task)
    slot = START + 3600 * SECOND
    mock_clock.jump(3600)
    await settle(lambda: len(delivered) == 1)
    mock_clock.jump(0.999)
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    assert len(delivered) == 1  # the first retry waits retry_delay
    mock_clock.jump(0.001)
    await settle(lambda: len(delivered) == 2)
    mock_clock.jump(2)  # the delay doubles
    await settle(lambda: len(delivered) == 3)

    failed, succeeded = ExecutionStatus.FAILED, ExecutionStatus.SUCCEEDED
    assert delivered.summary() == [
        (slot, 1, failed, False),
        (slot, 2, failed, False),
        (slot, 3, succeeded, True),
    ]
    assert [e.started_at for e in delivered] == [slot, slot + SECOND, slot + 3 * SECOND]
    assert [e.stdout for e in delivered] == [
        f"attempt {n} at {format_time(slot)}\n" for n in (1, 2, 3)
    ]
    assert {e.trigger for e in delivered} == {Trigger.SCHEDULE}
    mock_clock.jump(60)  # succeeded: nothing more
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    assert len(delivered) == 3


async def test_retries_run_out(
    mock_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    shell_env: dict[str, str],
    settle: Settle,
) -> None:
    delivered = Delivered()
    engine = await start_engine(nursery, delivered, shell_env)
    await engine.add_task(spec("exit 3", "every 1 hours", retries=1, retry_delay=5.0))
    mock_clock.jump(3600)
    await settle(lambda: len(delivered) == 1)
    mock_clock.jump(5)
    await settle(lambda: len(delivered) == 2)
    mock_clock.jump(600)
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    assert [(e.attempt, e.exit_code, e.final) for e in delivered] == [(1, 3, False), (2, 3, True)]


@pytest.mark.parametrize("overlap", list(Overlap))
async def test_a_slot_that_comes_while_the_last_one_runs_follows_the_overlap_policy(
    overlap: Overlap,
    tmp_path: Path,
    mock_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    shell_env: dict[str, str],
    settle: Settle,
) -> None:
    delivered = Delivered()
    engine = await start_engine(nursery, delivered, shell_env)
    gate = tmp_path / "go"
    task = spec(
        f"echo $TSCHED_SCHEDULED_AT; while [ ! -e {gate} ]; do sleep 0.01; done", overlap=overlap
    )
    await engine.add_task(task)
    first, second = START + SECOND, START + 2 * SECOND

    mock_clock.jump(1)  # slot 1 starts and waits for the gate
    await settle(lambda: [s.scheduled_at for s in engine.running()] == [first])
    mock_clock.jump(1)  # slot 2 comes while slot 1 runs
    if overlap is Overlap.SKIP:
        await settle(lambda: len(delivered) == 1)
        assert delivered.summary() == [(second, 1, ExecutionStatus.SKIPPED, True)]
        running = [first]
    elif overlap is Overlap.ALLOW:
        await settle(lambda: len(engine.running()) == 2)
        assert delivered == []
        running = [first, second]
    else:  # replace: slot 1 is killed, reported cancelled, and slot 2 runs
        await settle(lambda: len(delivered) == 1)
        (cancelled,) = delivered
        assert (cancelled.scheduled_at, cancelled.status) == (first, ExecutionStatus.CANCELLED)
        assert cancelled.stdout == f"{format_time(first)}\n"
        assert "replaced by the run for" in cancelled.stderr
        await settle(lambda: [s.scheduled_at for s in engine.running()] == [second])
        running = [second]
    assert [s.scheduled_at for s in engine.running()] == running

    gate.touch()
    await settle(lambda: not engine.running())
    succeeded = [e for e in delivered if e.status is ExecutionStatus.SUCCEEDED]
    assert sorted(e.scheduled_at for e in succeeded) == running
    assert {e.stdout for e in succeeded} == {f"{format_time(when)}\n" for when in running}


async def test_a_task_env_reaches_the_command_and_cannot_override_tsched_variables(
    mock_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    shell_env: dict[str, str],
    settle: Settle,
) -> None:
    delivered = Delivered()
    # the agent's own environment holds a TSCHED_ variable and one the task overrides
    agent_env = shell_env | {"GREETING": "from the agent", "TSCHED_TASK_ID": "the agent's"}
    engine = await start_engine(nursery, delivered, agent_env)
    task = spec(
        'echo "$GREETING|$EXTRA|$TSCHED_TASK_ID|$TSCHED_AGENT_ID"',
        env={"GREETING": "from the task", "EXTRA": "a b  c=d"},
    )
    await engine.add_task(task)
    mock_clock.jump(1)
    await settle(lambda: delivered)
    assert delivered[0].stdout == f"from the task|a b  c=d|{task.task_id}|{AGENT_ID}\n"
    # a task cannot even name one: the core refuses it, whatever the case
    for name in ("TSCHED_TASK_ID", "tsched_agent_id"):
        with pytest.raises(WireError) as refused:
            spec("true", env={name: "x"})
        assert refused.value.field == "env"


async def test_max_output_bytes_caps_each_stream_else_the_agents_cap_applies(
    mock_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    shell_env: dict[str, str],
    settle: Settle,
) -> None:
    delivered = Delivered()
    engine = await start_engine(nursery, delivered, shell_env, max_output_bytes=8)
    printing = "printf 0123456789; printf abcdefghij >&2"
    capped = spec(printing, "every 2 seconds", max_output_bytes=3)
    default = spec(printing, "every 2 seconds")
    greedy = spec(printing, "every 2 seconds", max_output_bytes=1_000_000)
    await engine.add_task(capped)
    await engine.add_task(default)
    await engine.add_task(greedy)
    mock_clock.jump(2)
    await settle(lambda: len(delivered) == 3)
    by_task = {e.task_id: e for e in delivered}
    mine, agents = by_task[capped.task_id], by_task[default.task_id]
    # a task may lower the agent's cap, never raise it: that is the operator's memory bound
    assert by_task[greedy.task_id].stdout == "23456789"
    assert (mine.stdout, mine.stdout_dropped, mine.stderr, mine.stderr_dropped) == (
        "789",
        7,
        "hij",
        7,
    )
    assert (agents.stdout, agents.stdout_dropped, agents.stderr) == ("23456789", 2, "cdefghij")


async def test_a_paused_task_fires_nothing_and_resumes_at_its_next_slot(
    mock_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    shell_env: dict[str, str],
    settle: Settle,
) -> None:
    delivered = Delivered()
    engine = await start_engine(nursery, delivered, shell_env)
    task = spec("echo tick", paused=True)
    assert await engine.add_task(task)
    assert engine.tasks() == [task]  # kept, listed as paused
    for _ in range(5):
        mock_clock.jump(1)
        await trio.testing.wait_all_tasks_blocked(cushion=0.02)
    assert delivered == []
    assert engine.scheduler.next_deadline() is None

    mock_clock.jump(0.5)
    assert await engine.add_task(attrs.evolve(task, paused=False))
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    assert delivered == []  # no burst of the slots that passed while paused, no "missed"
    mock_clock.jump(0.5)
    await settle(lambda: len(delivered) == 1)
    assert delivered.summary() == [(START + 6 * SECOND, 1, ExecutionStatus.SUCCEEDED, True)]


async def test_a_manual_run_starts_at_once_once_per_time_even_when_paused(
    mock_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    shell_env: dict[str, str],
    settle: Settle,
) -> None:
    delivered = Delivered()
    engine = await start_engine(nursery, delivered, shell_env)
    task = spec("echo by hand $TSCHED_SCHEDULED_AT", "every 1 hours", paused=True)
    await engine.add_task(task)
    mock_clock.jump(10)
    asked = START + 9.5 * SECOND  # the server's choice: what the run is grouped under
    assert await engine.run_now(task.task_id, asked)
    await settle(lambda: delivered)
    assert await engine.run_now(task.task_id, asked)  # a repeated request
    assert not await engine.run_now(uuid4(), asked)  # not scheduled here
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    (manual,) = delivered
    assert (manual.scheduled_at, manual.started_at) == (asked, START + 10 * SECOND)
    assert (manual.trigger, manual.status, manual.attempt, manual.final) == (
        Trigger.MANUAL,
        ExecutionStatus.SUCCEEDED,
        1,
        True,
    )
    assert manual.stdout == f"by hand {format_time(asked)}\n"
    # another time is another run
    assert await engine.run_now(task.task_id, asked + SECOND)
    await settle(lambda: len(delivered) == 2)
