"""Opening a database written by an older server upgrades it in place, with nothing lost; a
database from a newer server is refused, not misread."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest

from taskscheduler_core import AgentStatus, ExecutionStatus
from taskscheduler_server import ServerError, Store
from taskscheduler_server.store import SCHEMA_VERSION, to_micros

#: The schema of issue 2 (user_version 1), exactly as its server created it.
ISSUE_2_SCHEMA = """
CREATE TABLE "agents" ("id" TEXT NOT NULL PRIMARY KEY, "url" TEXT NOT NULL,
    "registered_at" INTEGER NOT NULL, "last_seen_at" INTEGER NOT NULL);
CREATE TABLE "tasks" ("id" TEXT NOT NULL PRIMARY KEY, "command" TEXT NOT NULL,
    "frequency" TEXT NOT NULL, "anchor" INTEGER NOT NULL, "created_at" INTEGER NOT NULL);
CREATE INDEX "taskrow_created_at" ON "tasks" ("created_at");
CREATE TABLE "assignments" ("id" INTEGER NOT NULL PRIMARY KEY, "task_id" TEXT NOT NULL,
    "agent_id" TEXT NOT NULL, "assigned_at" INTEGER NOT NULL, "delivered_at" INTEGER,
    "revision" INTEGER NOT NULL,
    FOREIGN KEY ("task_id") REFERENCES "tasks" ("id") ON DELETE CASCADE,
    FOREIGN KEY ("agent_id") REFERENCES "agents" ("id") ON DELETE CASCADE);
CREATE INDEX "assignmentrow_task_id" ON "assignments" ("task_id");
CREATE INDEX "assignmentrow_agent_id" ON "assignments" ("agent_id");
CREATE UNIQUE INDEX "assignmentrow_task_id_agent_id" ON "assignments" ("task_id", "agent_id");
CREATE INDEX "assignmentrow_agent_id_delivered_at" ON "assignments" ("agent_id", "delivered_at");
CREATE TABLE "executions" ("id" INTEGER NOT NULL PRIMARY KEY, "task_id" TEXT NOT NULL,
    "agent_id" TEXT NOT NULL, "scheduled_at" INTEGER NOT NULL, "started_at" INTEGER NOT NULL,
    "finished_at" INTEGER NOT NULL, "status" TEXT NOT NULL, "exit_code" INTEGER,
    "stdout" TEXT NOT NULL, "stderr" TEXT NOT NULL, "stdout_dropped" INTEGER NOT NULL,
    "stderr_dropped" INTEGER NOT NULL,
    FOREIGN KEY ("task_id") REFERENCES "tasks" ("id") ON DELETE CASCADE);
CREATE INDEX "executionrow_task_id" ON "executions" ("task_id");
CREATE UNIQUE INDEX "executionrow_task_id_agent_id_scheduled_at"
    ON "executions" ("task_id", "agent_id", "scheduled_at");
CREATE INDEX "executionrow_task_id_scheduled_at" ON "executions" ("task_id", "scheduled_at");
PRAGMA user_version = 1;
"""

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def issue_2_database(path: Path) -> dict[str, object]:
    """A database file as the issue-2 server left it: one task, agent, delivery and report."""
    task_id, agent_id = uuid4(), uuid4()
    start, slot = to_micros(START), to_micros(START + timedelta(seconds=10))
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode = wal")
    connection.executescript(ISSUE_2_SCHEMA)
    with connection:
        connection.execute(
            "INSERT INTO tasks VALUES (?, 'echo old', 'every 10 seconds', ?, ?)",
            (task_id.hex, start, start),
        )
        connection.execute(
            "INSERT INTO agents VALUES (?, 'http://127.0.0.1:9', ?, ?)",
            (agent_id.hex, start, start),
        )
        connection.execute(
            "INSERT INTO assignments (task_id, agent_id, assigned_at, delivered_at, revision)"
            " VALUES (?, ?, ?, ?, 0)",
            (task_id.hex, agent_id.hex, start, start),
        )
        connection.execute(
            "INSERT INTO executions (task_id, agent_id, scheduled_at, started_at, finished_at,"
            " status, exit_code, stdout, stderr, stdout_dropped, stderr_dropped)"
            " VALUES (?, ?, ?, ?, ?, 'succeeded', 0, 'old\n', '', 0, 0)",
            (task_id.hex, agent_id.hex, slot, slot, slot),
        )
    connection.close()
    return {"task_id": task_id, "agent_id": agent_id}


def user_version(path: Path) -> int:
    connection = sqlite3.connect(path)
    try:
        version: int = connection.execute("PRAGMA user_version").fetchone()[0]
        return version
    finally:
        connection.close()


def test_an_issue_2_database_is_upgraded_on_open_with_nothing_lost(tmp_path: Path) -> None:
    path = tmp_path / "server.sqlite3"
    ids = issue_2_database(path)
    task_id, agent_id = ids["task_id"], ids["agent_id"]

    with Store(path) as store:
        assert user_version(path) == SCHEMA_VERSION == 3
        [agent] = store.list_agents()
        assert (agent.id, agent.status, agent.last_seen_at) == (agent_id, AgentStatus.ALIVE, START)
        [task] = store.list_tasks()
        assert (task.id, task.command, str(task.frequency)) == (
            task_id,
            "echo old",
            "every 10 seconds",
        )
        [execution] = store.executions(task.id)
        assert (execution.agent_id, execution.status, execution.stdout) == (
            agent_id,
            ExecutionStatus.SUCCEEDED,
            "old\n",
        )
        assert store.undelivered() == []
        # the new column is in use at once
        assert store.mark_lost(START) == [store.list_agents()[0]]
        assert store.lost_agents() == {agent_id}
        assert store.heartbeat(agent.id, START + timedelta(hours=1)) is AgentStatus.LOST

    # opening it again is not an upgrade again
    with Store(path) as store:
        assert [agent.status for agent in store.list_agents()] == [AgentStatus.ALIVE]
        assert len(store.executions(task.id)) == 1
    assert user_version(path) == SCHEMA_VERSION


def test_a_database_from_a_newer_server_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "server.sqlite3"
    with Store(path):
        pass
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.close()

    with pytest.raises(ServerError, match="upgrade the server"):
        Store(path)
    assert user_version(path) == SCHEMA_VERSION + 1
