"""The agent's state file: what it keeps, across reopening, and the outbox's delivery rule."""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import attrs
import pytest
import trio

import taskscheduler_agent.state as state_module
from taskscheduler_agent import (
    JOURNAL_RETENTION,
    STATE_FILE,
    AgentState,
    AsyncAgentState,
    Backoff,
    Reporter,
    SqliteOutbox,
    StateError,
)
from taskscheduler_core import (
    Execution,
    ExecutionStatus,
    Overlap,
    StartExecution,
    TaskSpec,
    Trigger,
    format_time,
    parse_frequency,
)

START = datetime(2026, 11, 28, 3, 16, 1, tzinfo=UTC)
SECOND = timedelta(seconds=1)
AGENT_ID = UUID("0b6d6c2e-8f1a-4a47-9c57-0c1f2b0f7a11")

StartCollector = Callable[..., Awaitable[Any]]
WaitFor = Callable[..., Awaitable[None]]


def spec(command: str = "echo hi", frequency: str = "every 1 seconds") -> TaskSpec:
    return TaskSpec(
        task_id=uuid4(), command=command, frequency=parse_frequency(frequency), anchor=START
    )


def execution(
    task_id: UUID, k: int, status: ExecutionStatus = ExecutionStatus.SUCCEEDED
) -> Execution:
    moment = START + k * SECOND
    return Execution(
        task_id=task_id,
        agent_id=AGENT_ID,
        scheduled_at=moment,
        started_at=moment,
        finished_at=moment + SECOND / 2,
        status=status,
        exit_code=0 if status is ExecutionStatus.SUCCEEDED else None,
        stdout="hello ✓\n",
    )


def starting(task: TaskSpec, k: int) -> StartExecution:
    return StartExecution(task=task, scheduled_at=START + k * SECOND)


def rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """What another program reading the file with ``sqlite3`` sees."""
    with sqlite3.connect(path) as connection:
        return connection.execute(sql).fetchall()


def test_everything_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    kept, removed = spec("echo kept"), spec("echo removed", "every 2 hours")
    with AgentState(path) as state:
        state.save_schedule(kept, since=START)
        state.save_schedule(removed, since=START)
        assert state.remove_schedule(removed.task_id)
        assert not state.remove_schedule(removed.task_id)
        state.begin_slots({kept.task_id: START + 3 * SECOND}, [], started_at=START + 3 * SECOND)
        state.begin_slots(
            {kept.task_id: START + 4 * SECOND},
            [starting(kept, 4)],
            started_at=START + 4 * SECOND,
        )
        state.record(execution(kept.task_id, 3))

    with AgentState(path) as state:
        (saved,) = state.schedules()
        assert (saved.spec, saved.resume_after) == (kept, START + 4 * SECOND)
        (running,) = state.running()
        assert (running.task_id, running.scheduled_at) == (kept.task_id, START + 4 * SECOND)
        assert running.process is None
        assert state.pending() == [execution(kept.task_id, 3)]

    assert rows(path, "PRAGMA journal_mode") == [("wal",)]
    assert rows(path, "SELECT task_id, scheduled_at, status, exit_code FROM journal") == [
        (str(kept.task_id), format_time(START + 3 * SECOND), "succeeded", 0)
    ]


def test_a_changed_spec_resumes_from_when_it_changed(tmp_path: Path) -> None:
    task = spec()
    with AgentState(tmp_path / STATE_FILE) as state:
        state.save_schedule(task, since=START)
        state.begin_slots({task.task_id: START + 9 * SECOND}, [], started_at=START + 9 * SECOND)
        changed = TaskSpec(
            task_id=task.task_id, command="echo new", frequency=task.frequency, anchor=START
        )
        state.save_schedule(changed, since=START + 9.5 * SECOND)
        (saved,) = state.schedules()
    assert (saved.spec, saved.resume_after) == (changed, START + 9.5 * SECOND)


def test_recording_ends_the_running_row_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    task = spec()
    with AgentState(path) as state:
        state.begin_slots({}, [starting(task, 1)], started_at=START + SECOND)
        state.process_started(task.task_id, START + SECOND, pid=1)
        (running,) = state.running()
        assert running.process is not None
        assert running.process.pid == 1
        assert running.process.start_ticks is not None  # read from /proc/1/stat
        first = execution(task.task_id, 1)
        state.record(first)
        assert state.running() == []
        again = execution(task.task_id, 1, ExecutionStatus.FAILED)
        state.record(again)  # the same key again replaces, in place
        state.record(execution(task.task_id, 2))
        assert state.pending() == [again, execution(task.task_id, 2)]
    assert rows(path, "SELECT scheduled_at, status FROM journal ORDER BY scheduled_at") == [
        (format_time(START + SECOND), "failed"),
        (format_time(START + 2 * SECOND), "succeeded"),
    ]


def test_acknowledged_reports_leave_the_outbox_but_not_the_journal(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    task = spec()
    with AgentState(path) as state:
        for k in (1, 2, 3):
            state.record(execution(task.task_id, k))
        state.acknowledge(execution(task.task_id, 2).key)
        state.acknowledge(execution(task.task_id, 2).key)  # twice is harmless
        assert [e.scheduled_at for e in state.pending()] == [START + SECOND, START + 3 * SECOND]
    assert len(rows(path, "SELECT * FROM journal")) == 3
    assert len(rows(path, "SELECT * FROM outbox")) == 2


def test_a_file_that_is_not_a_database_is_a_state_error(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    path.write_bytes(b"this is not sqlite " * 100)
    with pytest.raises(StateError) as raised:
        AgentState(path)
    assert raised.value.path == path


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA user_version = 99")
    with pytest.raises(StateError, match="schema version 99"):
        AgentState(path)


async def test_the_outbox_is_drained_only_by_acknowledgements(
    tmp_path: Path, start_collector: StartCollector, wait_for: WaitFor
) -> None:
    task, refused = spec(), spec()
    collector = await start_collector(fail_first=6, status_for={str(refused.task_id): 422})
    state = await AsyncAgentState.open(tmp_path / STATE_FILE)
    outbox = SqliteOutbox(state)
    reporter = Reporter(
        server_url=collector.url,
        outbox=outbox,
        backoff=Backoff(initial=0.01, maximum=0.05),
    )
    try:
        for k in (1, 2):
            await reporter.submit(execution(task.task_id, k))
        # nothing delivers yet: the outbox holds both, on disk
        assert len(rows(tmp_path / STATE_FILE, "SELECT * FROM outbox")) == 2
        async with trio.open_nursery() as nursery:
            await nursery.start(reporter.run)
            await wait_for(lambda: collector.attempts["complete"] >= 2)
            # the first six attempts get 503: both are still pending
            assert len(await outbox.pending()) == 2
            await wait_for(lambda: len(collector.reports_for(task.task_id)) == 2)
            await wait_for(lambda: not rows(tmp_path / STATE_FILE, "SELECT * FROM outbox"))
            # a report refused for good (422) leaves too: retrying would repeat the refusal
            await reporter.submit(execution(refused.task_id, 1))
            await wait_for(lambda: not rows(tmp_path / STATE_FILE, "SELECT * FROM outbox"))
            nursery.cancel_scope.cancel()
    finally:
        await state.aclose()
    assert len(rows(tmp_path / STATE_FILE, "SELECT * FROM journal")) == 3


async def test_undelivered_reports_wait_on_disk_for_the_next_start(
    tmp_path: Path, start_collector: StartCollector, wait_for: WaitFor
) -> None:
    task = spec()
    state = await AsyncAgentState.open(tmp_path / STATE_FILE)
    await SqliteOutbox(state).put(execution(task.task_id, 1))
    await state.aclose()  # the agent stops before the server could be reached

    collector = await start_collector()
    state = await AsyncAgentState.open(tmp_path / STATE_FILE)
    reporter = Reporter(server_url=collector.url, outbox=SqliteOutbox(state))
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(reporter.run)
            await wait_for(lambda: collector.reports_for(task.task_id))
            await wait_for(lambda: not rows(tmp_path / STATE_FILE, "SELECT * FROM outbox"))
            nursery.cancel_scope.cancel()
    finally:
        await state.aclose()
    (report,) = collector.reports_for(task.task_id)
    assert (report["stdout"], report["scheduled_at"]) == ("hello ✓\n", format_time(START + SECOND))


def test_old_journal_rows_are_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module, "_PRUNE_EVERY", 3)
    path = tmp_path / STATE_FILE
    task = spec()
    week = JOURNAL_RETENTION // SECOND
    with AgentState(path) as state:
        # records 1, 4, 7, … prune; the fourth prunes what finished over a week before it:
        # slot 1, not slot 2
        for k in (1, 2, 3, week + 2):
            state.record(execution(task.task_id, k))
    kept = rows(path, "SELECT scheduled_at FROM journal ORDER BY scheduled_at")
    assert kept == [(format_time(START + k * SECOND),) for k in (2, 3, week + 2)]
    with AgentState(path) as state:
        # the first record after a restart prunes as well
        state.record(execution(task.task_id, week + 4))
    kept = rows(path, "SELECT scheduled_at FROM journal ORDER BY scheduled_at")
    assert kept == [(format_time(START + k * SECOND),) for k in (week + 2, week + 4)]


#: A state file as schema version 1 (before issue 5) made it, as ``sqlite3 .schema`` shows it.
SCHEMA_1 = """
CREATE TABLE "journal" ("id" INTEGER NOT NULL PRIMARY KEY, "task_id" TEXT NOT NULL,
    "scheduled_at" TEXT NOT NULL, "agent_id" TEXT NOT NULL, "status" TEXT NOT NULL,
    "exit_code" INTEGER, "started_at" TEXT NOT NULL, "finished_at" TEXT NOT NULL);
CREATE INDEX "journalrow_finished_at" ON "journal" ("finished_at");
CREATE UNIQUE INDEX "journalrow_task_id_scheduled_at" ON "journal" ("task_id", "scheduled_at");
CREATE TABLE "outbox" ("id" INTEGER NOT NULL PRIMARY KEY, "task_id" TEXT NOT NULL,
    "agent_id" TEXT NOT NULL, "scheduled_at" TEXT NOT NULL, "body" TEXT NOT NULL);
CREATE UNIQUE INDEX "outboxrow_task_id_agent_id_scheduled_at"
    ON "outbox" ("task_id", "agent_id", "scheduled_at");
CREATE TABLE "running" ("id" INTEGER NOT NULL PRIMARY KEY, "task_id" TEXT NOT NULL,
    "scheduled_at" TEXT NOT NULL, "started_at" TEXT NOT NULL, "pgid" INTEGER,
    "start_ticks" INTEGER, "boot_id" TEXT);
CREATE UNIQUE INDEX "runningrow_task_id_scheduled_at" ON "running" ("task_id", "scheduled_at");
CREATE TABLE "schedules" ("task_id" TEXT NOT NULL PRIMARY KEY, "command" TEXT NOT NULL,
    "frequency" TEXT NOT NULL, "anchor" TEXT NOT NULL, "since" TEXT NOT NULL, "last_slot" TEXT);
PRAGMA user_version = 1;
"""


def test_a_version_1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / STATE_FILE
    task_id, other = uuid4(), uuid4()
    slot = format_time(START + 3 * SECOND)
    old_body = (
        f'{{"task_id": "{task_id}", "agent_id": "{AGENT_ID}", "scheduled_at": "{slot}", '
        f'"started_at": "{slot}", "finished_at": "{slot}", "status": "failed", "exit_code": 1, '
        '"stdout": "", "stderr": "boom\\n", "stdout_dropped": 0, "stderr_dropped": 0}'
    )
    with sqlite3.connect(path) as connection:
        connection.executescript(SCHEMA_1)
        connection.execute(
            "INSERT INTO schedules VALUES (?, 'echo old', 'every 2 seconds', ?, ?, ?)",
            (str(task_id), format_time(START), format_time(START), slot),
        )
        connection.execute(
            "INSERT INTO running (task_id, scheduled_at, started_at) VALUES (?, ?, ?)",
            (str(other), slot, slot),
        )
        connection.execute(
            "INSERT INTO outbox (task_id, agent_id, scheduled_at, body) VALUES (?, ?, ?, ?)",
            (str(task_id), str(AGENT_ID), slot, old_body),
        )
        connection.execute(
            "INSERT INTO journal (task_id, scheduled_at, agent_id, status, exit_code, "
            "started_at, finished_at) VALUES (?, ?, ?, 'failed', 1, ?, ?)",
            (str(task_id), slot, str(AGENT_ID), slot, slot),
        )
    connection.close()

    with AgentState(path) as state:
        (saved,) = state.schedules()
        # the three fields it had, every option at its default, not paused
        assert saved.spec == TaskSpec(
            task_id=task_id,
            command="echo old",
            frequency=parse_frequency("every 2 seconds"),
            anchor=START,
        )
        assert saved.resume_after == START + 3 * SECOND
        (running,) = state.running()
        assert (running.task_id, running.attempt, running.trigger.value) == (other, 1, "schedule")
        (pending,) = state.pending()
        assert (pending.attempt, pending.trigger.value, pending.final) == (1, "schedule", True)
        assert pending.stderr == "boom\n"
        assert state.executed(task_id, START + 3 * SECOND)
        # the new unique keys: a second attempt of the same slot is a record of its own
        retry = attrs.evolve(pending, attempt=2, status=ExecutionStatus.SUCCEEDED, exit_code=0)
        state.record(retry)
        assert state.pending() == [pending, retry]
        state.acknowledge(pending.key)
        assert state.pending() == [retry]
    assert rows(path, "PRAGMA user_version") == [(2,)]
    assert rows(path, "SELECT attempt, final FROM journal ORDER BY attempt") == [(1, 1), (2, 1)]
    # and it opens again as it is
    with AgentState(path) as state:
        assert [s.spec.task_id for s in state.schedules()] == [task_id]


def test_the_whole_spec_is_kept_with_its_options(tmp_path: Path) -> None:
    task = TaskSpec(
        task_id=uuid4(),
        command="echo hi",
        frequency=parse_frequency("every 1 seconds"),
        anchor=START,
        paused=True,
        timeout=5.0,
        overlap=Overlap.ALLOW,
        retries=3,
        retry_delay=0.25,
        env={"A": "b"},
        max_output_bytes=10,
        timezone="Asia/Tokyo",
    )
    with AgentState(tmp_path / STATE_FILE) as state:
        state.save_schedule(task, since=START)
    with AgentState(tmp_path / STATE_FILE) as state:
        (saved,) = state.schedules()
    assert saved.spec == task
    assert rows(tmp_path / STATE_FILE, "SELECT command, frequency FROM schedules") == [
        ("echo hi", "every 1 seconds")
    ]


def test_attempts_and_manual_runs_never_move_the_last_slot_back(tmp_path: Path) -> None:
    task = spec()
    path = tmp_path / STATE_FILE
    with AgentState(path) as state:
        state.save_schedule(task, since=START)
        state.begin_slots({task.task_id: START + 5 * SECOND}, [], started_at=START + 5 * SECOND)
        retry = StartExecution(task=task, scheduled_at=START + 5 * SECOND, attempt=2)
        manual = StartExecution(task=task, scheduled_at=START + 2 * SECOND, trigger=Trigger.MANUAL)
        assert not state.executed(task.task_id, START + 2 * SECOND)
        # a retry may start while the report of the attempt before it is not written yet
        first = StartExecution(task=task, scheduled_at=START + 5 * SECOND)
        state.begin_slots(
            {task.task_id: START + 2 * SECOND},
            [first, retry, manual],
            started_at=START + 6 * SECOND,
        )
        assert [(r.scheduled_at, r.attempt, r.trigger) for r in state.running()] == [
            (START + 2 * SECOND, 1, Trigger.MANUAL),
            (START + 5 * SECOND, 1, Trigger.SCHEDULE),
            (START + 5 * SECOND, 2, Trigger.SCHEDULE),
        ]
        # a manual run for that time is known from now on, across restarts
        assert state.executed(task.task_id, START + 2 * SECOND)
        # recording attempt 1 ends its own row only
        state.record(attrs.evolve(execution(task.task_id, 5), final=False))
        assert [(r.scheduled_at, r.attempt) for r in state.running()] == [
            (START + 2 * SECOND, 1),
            (START + 5 * SECOND, 2),
        ]
        (saved,) = state.schedules()
    assert saved.resume_after == START + 5 * SECOND


def test_the_outbox_is_read_a_page_at_a_time(tmp_path: Path) -> None:
    task = spec()
    with AgentState(tmp_path / STATE_FILE) as state:
        for k in range(1, 6):
            state.record(execution(task.task_id, k))
        state.acknowledge(execution(task.task_id, 2).key)
        first = state.pending_page(after=0, limit=2)
        assert [e.scheduled_at for _, e in first] == [START + SECOND, START + 3 * SECOND]
        rest = state.pending_page(after=first[-1][0], limit=2)
        assert [e.scheduled_at for _, e in rest] == [START + 4 * SECOND, START + 5 * SECOND]
        assert state.pending_page(after=rest[-1][0], limit=2) == []
