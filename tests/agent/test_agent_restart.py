"""Restarting an agent: schedules resume on the same fire times, what was missed is recorded.

One test drives two engines over one state file under ``MockClock`` (exact slots, the
``max_missed`` bound); the other restarts a real ``run_agent`` on the real clock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import trio
import trio.testing

from taskscheduler_agent import (
    STATE_FILE,
    AgentConfig,
    AgentStarted,
    AsyncAgentState,
    Engine,
    SqliteOutbox,
    WallClock,
    run_agent,
)
from taskscheduler_core import (
    DEFAULT_MAX_MISSED,
    TaskSpec,
    parse_frequency,
    parse_time,
)

START = datetime(2026, 11, 28, 3, 16, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)

Settle = Callable[..., Awaitable[None]]
WaitFor = Callable[..., Awaitable[None]]


def journal(data_dir: Path) -> list[tuple[datetime, str]]:
    """The agent's journal as ``(scheduled_at, status)``, oldest slot first."""
    with sqlite3.connect(data_dir / STATE_FILE) as connection:
        rows = connection.execute(
            "SELECT scheduled_at, status FROM journal ORDER BY scheduled_at"
        ).fetchall()
    return [(parse_time(moment), status) for moment, status in rows]


async def test_a_restarted_engine_resumes_the_same_slots_and_records_the_missed_ones(
    tmp_path: Path,
    mock_clock: trio.testing.MockClock,
    shell_env: dict[str, str],
    settle: Settle,
) -> None:
    clock = WallClock(start=START)
    task = TaskSpec(
        task_id=uuid4(),
        command="echo hi",
        frequency=parse_frequency("every 1 seconds"),
        anchor=START,
    )
    state = await AsyncAgentState.open(tmp_path / STATE_FILE)
    try:

        def engine() -> Engine:
            return Engine(
                agent_id=uuid4(),
                deliver=SqliteOutbox(state).put,
                clock=clock,
                env=shell_env,
                store=state,
            )

        first = engine()
        async with trio.open_nursery() as nursery:
            await nursery.start(first.run)
            assert await first.add_task(task)
            for k in (1, 2, 3):
                mock_clock.jump(1)
                await settle(lambda k=k: len(journal(tmp_path)) == k)
            await first.stop()

        mock_clock.jump(20)  # down across 20 fire times: START + 4 s … START + 23 s

        second = engine()
        for saved in await state.schedules():
            second.restore(saved.spec, after=saved.resume_after)
        assert second.tasks() == [task]
        async with trio.open_nursery() as nursery:
            await nursery.start(second.run)
            await settle(lambda: len(journal(tmp_path)) == 3 + DEFAULT_MAX_MISSED + 1)
            mock_clock.jump(1)
            await settle(lambda: len(journal(tmp_path)) == 3 + DEFAULT_MAX_MISSED + 2)
            await second.stop()
    finally:
        await state.aclose()

    recorded = journal(tmp_path)
    ran = [(START + k * SECOND, "succeeded") for k in (1, 2, 3)]
    # no burst: the slots older than the newest are recorded as missed (the newest ten of
    # them), the newest one (on time) runs, and the next one comes on time
    missed = [(START + k * SECOND, "missed") for k in range(23 - DEFAULT_MAX_MISSED, 23)]
    after = [(START + 23 * SECOND, "succeeded"), (START + 24 * SECOND, "succeeded")]
    assert recorded == ran + missed + after


def agent_config(tmp_path: Path, **options: Any) -> AgentConfig:
    fast = {"report_backoff_initial": 0.01, "report_backoff_max": 0.1, "register_backoff_max": 0.1}
    return AgentConfig(**({"data_dir": tmp_path / "agent", "port": 0} | fast | options))


async def test_a_restarted_agent_keeps_its_tasks_and_their_fire_times(
    tmp_path: Path, wait_for: WaitFor
) -> None:
    config = agent_config(tmp_path)
    kept, removed = str(uuid4()), str(uuid4())
    async with trio.open_nursery() as nursery:
        started: AgentStarted = await nursery.start(run_agent, config)
        async with httpx.AsyncClient(base_url=started.url) as http:
            for task_id, frequency in ((kept, "every 1 seconds"), (removed, "every 1 hours")):
                body = {"task_id": task_id, "command": "echo hi", "frequency": frequency}
                assert (await http.post("/api/v1/tasks/schedule", json=body)).status_code == 200
            deleted = await http.delete(f"/api/v1/tasks/{removed}")
            assert deleted.json() == {"task_id": removed, "removed": True}
            listed = (await http.get("/api/v1/tasks")).json()["tasks"]
        await wait_for(lambda: len(journal(config.data_dir)) >= 2)
        nursery.cancel_scope.cancel()
    before = journal(config.data_dir)

    await trio.sleep(2.5)  # down across two or three fire times

    async with trio.open_nursery() as nursery:
        # the same data directory, and no schedule request: the task comes back from disk
        started = await nursery.start(run_agent, config)
        async with httpx.AsyncClient(base_url=started.url) as http:
            assert (await http.get("/api/v1/tasks")).json()["tasks"] == listed
        await wait_for(
            lambda: (
                sum(status == "succeeded" for _, status in journal(config.data_dir))
                >= sum(status == "succeeded" for _, status in before) + 2
            )
        )
        nursery.cancel_scope.cancel()

    recorded = journal(config.data_dir)
    assert recorded[: len(before)] == before
    slots = [moment for moment, _ in recorded]
    # every slot from the first to the last, each exactly once, on the task's fire times
    assert slots == [slots[0] + k * SECOND for k in range(len(slots))]
    anchor = parse_time(listed[0]["anchor"])
    assert (slots[0] - anchor) % SECOND == timedelta(0)
    statuses = [status for _, status in recorded[len(before) :]]
    assert "missed" in statuses
    assert set(statuses) <= {"missed", "succeeded", "error"}, recorded
    assert len(listed) == 1
