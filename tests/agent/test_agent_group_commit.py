"""The agent's state file commits writes in groups: one transaction for the writes that wait.

Each caller still returns only once its own write is committed, gets its own result or error,
and a cancelled caller's write is committed all the same.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import trio

from taskscheduler_agent import STATE_FILE, AgentState, AsyncAgentState
from taskscheduler_core import Execution, ExecutionStatus

START = datetime(2026, 11, 28, 3, 16, 1, tzinfo=UTC)
AGENT_ID = UUID("0b6d6c2e-8f1a-4a47-9c57-0c1f2b0f7a11")


def execution(task_id: UUID, k: int) -> Execution:
    moment = START + timedelta(seconds=k)
    return Execution(
        task_id=task_id,
        agent_id=AGENT_ID,
        scheduled_at=moment,
        started_at=moment,
        finished_at=moment,
        status=ExecutionStatus.SUCCEEDED,
        exit_code=0,
        stdout=f"run {k}\n",
    )


def count(path: Path, table: str) -> int:
    with sqlite3.connect(path) as connection:
        (n,) = connection.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(n)


class CountingState(AgentState):
    """An AgentState that counts its transactions of writes (its commits)."""

    commits = 0

    def apply(self, writes):  # type: ignore[no-untyped-def]
        self.commits += 1
        return super().apply(writes)


async def test_many_concurrent_writes_share_few_commits_and_all_land(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    state = CountingState(path)
    store = AsyncAgentState(state)
    task_id = uuid4()
    async with trio.open_nursery() as nursery:
        for k in range(200):
            nursery.start_soon(store.record, execution(task_id, k))
    assert count(path, "journal") == count(path, "outbox") == 200
    # grouped: far fewer commits than writes (the first goes alone, the rest wait together)
    assert state.commits < 20
    await store.acknowledge_many([execution(task_id, k).key for k in range(150)])
    assert count(path, "outbox") == 50
    await store.aclose()


async def test_a_failing_write_fails_alone(tmp_path: Path) -> None:
    store = AsyncAgentState(AgentState(tmp_path / STATE_FILE))
    task_id = uuid4()
    results: dict[str, object] = {}

    async def good(k: int) -> None:
        await store.record(execution(task_id, k))
        results[f"good {k}"] = "ok"

    async def bad() -> None:
        try:
            # not an ExecutionKey: fails inside its own savepoint, in the middle of the group
            await store.acknowledge_many([object()])  # type: ignore[list-item]
        except AttributeError as error:
            results["bad"] = error

    async with trio.open_nursery() as nursery:
        nursery.start_soon(good, 0)
        nursery.start_soon(bad)
        nursery.start_soon(good, 1)
    assert results["good 0"] == results["good 1"] == "ok"
    assert isinstance(results["bad"], AttributeError)
    assert count(tmp_path / STATE_FILE, "journal") == 2
    await store.aclose()


async def test_a_cancelled_caller_s_write_is_committed_all_the_same(tmp_path: Path) -> None:
    store = AsyncAgentState(AgentState(tmp_path / STATE_FILE))
    task_id = uuid4()
    with trio.CancelScope() as scope:
        scope.cancel()  # cancelled before it even starts: the write is queued, so it lands
        await store.record(execution(task_id, 1))
    assert scope.cancelled_caught is False  # the shielded write finished; nothing was raised
    assert count(tmp_path / STATE_FILE, "journal") == 1

    async with trio.open_nursery() as nursery:
        for k in range(2, 12):
            nursery.start_soon(store.record, execution(task_id, k))
        await trio.sleep(0)
        nursery.cancel_scope.cancel()  # the flusher and the waiters alike
    # every write queued before the cancellation landed, whole: journal and outbox alike
    assert count(tmp_path / STATE_FILE, "journal") == count(tmp_path / STATE_FILE, "outbox") == 11
    await store.acknowledge(execution(task_id, 1).key)  # and the store still writes
    assert count(tmp_path / STATE_FILE, "outbox") == 10
    await store.aclose()


class SlowCommits(AgentState):
    """Each commit takes a few milliseconds; who ran each one is noted."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.sizes: list[int] = []

    def apply(self, writes):  # type: ignore[no-untyped-def]
        time.sleep(0.003)
        self.sizes.append(len(writes))
        return super().apply(writes)


async def test_no_caller_is_kept_committing_others_writes(tmp_path: Path) -> None:
    state = SlowCommits(tmp_path / STATE_FILE)
    store = AsyncAgentState(state)
    task_id = uuid4()
    took: list[int] = []

    async def writer(first: int) -> None:
        for k in range(first, first + 5):
            commits = len(state.sizes)
            await store.record(execution(task_id, k))
            took.append(len(state.sizes) - commits)

    async with trio.open_nursery() as nursery:  # a steady stream of writes for a while
        for n in range(20):
            nursery.start_soon(writer, n * 10)
    assert count(tmp_path / STATE_FILE, "journal") == 100
    # A write waits for the commit under way and its own: never for a long run of commits
    # carrying other callers' writes (before, the first caller flushed until the stream ended).
    assert max(took) <= 2
    await store.aclose()
