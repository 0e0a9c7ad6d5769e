"""Opening a database written by an older server upgrades it in place, with nothing lost; a
database from a newer server is refused, not misread."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import attrs
import pytest

from taskscheduler_core import (
    AgentStatus,
    ExecutionStatus,
    Overlap,
    RunPolicy,
    Targets,
    Task,
    TaskState,
    Trigger,
    parse_frequency,
)
from taskscheduler_server import ServerError, Store, latest_output_of
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
        assert user_version(path) == SCHEMA_VERSION == 6
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


#: The schema of issues 3 and 4 (user_version 3), exactly as its server created it.
ISSUE_4_SCHEMA = """
CREATE TABLE "agents" ("id" TEXT NOT NULL PRIMARY KEY, "url" TEXT NOT NULL,
    "registered_at" INTEGER NOT NULL, "last_seen_at" INTEGER NOT NULL, "status" TEXT NOT NULL);
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
CREATE TABLE "agent_credentials" ("agent_id" TEXT NOT NULL PRIMARY KEY,
    "token_sha256" TEXT NOT NULL, "server_token" TEXT NOT NULL);
CREATE UNIQUE INDEX "credentialrow_token_sha256" ON "agent_credentials" ("token_sha256");
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
PRAGMA user_version = 3;
"""


def issue_4_database(path: Path, *, slots: int = 3) -> dict[str, object]:
    """A database file as the issue-4 server left it: a task run ``slots`` times by two agents
    (one of which has a credential), delivered to both."""
    task_id, first, second = uuid4(), uuid4(), uuid4()
    start = to_micros(START)
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA journal_mode = wal")
    connection.executescript(ISSUE_4_SCHEMA)
    with connection:
        connection.execute(
            "INSERT INTO tasks VALUES (?, 'echo old', 'every 10 seconds', ?, ?)",
            (task_id.hex, start, start),
        )
        for n, agent_id in enumerate((first, second)):
            connection.execute(
                "INSERT INTO agents VALUES (?, ?, ?, ?, 'alive')",
                (agent_id.hex, f"http://127.0.0.1:{9 + n}", start, start),
            )
            connection.execute(
                "INSERT INTO assignments (task_id, agent_id, assigned_at, delivered_at, revision)"
                " VALUES (?, ?, ?, ?, 0)",
                (task_id.hex, agent_id.hex, start, start),
            )
            for k in range(1, slots + 1):
                slot = to_micros(START + timedelta(seconds=10 * k))
                connection.execute(
                    "INSERT INTO executions (task_id, agent_id, scheduled_at, started_at,"
                    " finished_at, status, exit_code, stdout, stderr, stdout_dropped,"
                    " stderr_dropped) VALUES (?, ?, ?, ?, ?, 'succeeded', 0, ?, '', 0, 0)",
                    (task_id.hex, agent_id.hex, slot, slot, slot + 1000, f"run {k}\n"),
                )
        connection.execute(
            "INSERT INTO agent_credentials VALUES (?, 'digest', 'server-token')", (first.hex,)
        )
    connection.close()
    return {"task_id": task_id, "agents": sorted([first, second], key=str)}


def schema_objects(path: Path) -> dict[str, str]:
    """Every table and index of the file, by name, with its SQL."""
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL")
        return {name: sql for name, sql in rows}
    finally:
        connection.close()


def test_an_issue_4_database_is_upgraded_to_options_labels_and_attempts(tmp_path: Path) -> None:
    path = tmp_path / "server.sqlite3"
    ids = issue_4_database(path)
    task_id = ids["task_id"]
    first, second = ids["agents"]  # type: ignore[misc]

    with Store(path) as store:
        assert user_version(path) == SCHEMA_VERSION == 6
        # the task has every option at its default, and is active
        [task] = store.list_tasks()
        assert (task.id, task.command, str(task.frequency)) == (
            task_id,
            "echo old",
            "every 10 seconds",
        )
        assert task.policy() == RunPolicy()
        assert (task.name, task.targets, task.state, task.updated_at) == (
            None,
            Targets(),
            TaskState.ACTIVE,
            None,
        )
        assert [a.labels for a in store.list_agents()] == [{}, {}]
        assert store.agent_credentials()[0].server_token == "server-token"
        # every execution kept, as the first, final, scheduled attempt
        executions = store.executions(task_id)  # type: ignore[arg-type]
        assert len(executions) == 6
        assert {(e.attempt, e.trigger, e.final) for e in executions} == {
            (1, Trigger.SCHEDULE, True)
        }
        assert [e.stdout for e in executions if e.agent_id == first] == [
            "run 1\n",
            "run 2\n",
            "run 3\n",
        ]
        output = latest_output_of(
            store, task_id, now=START + timedelta(hours=1), report_grace=timedelta(seconds=60)
        )
        assert output is not None
        assert [o.stdout for o in output.outputs] == ["run 3\n", "run 3\n"]
        # the new key: a second attempt of a slot is a new execution, a repeat is not
        slot = START + timedelta(seconds=30)
        retry = attrs.evolve(executions[-1], attempt=2, stdout="retried\n")
        assert store.record_execution(retry) is True
        assert store.record_execution(attrs.evolve(executions[-1], stdout="again")) is False
        assert len(store.run(task_id, slot).executions) == 3  # type: ignore[arg-type,union-attr]
        # the new columns are in use
        edited = store.change_task(
            task_id,  # type: ignore[arg-type]
            lambda t: attrs.evolve(t, name="renamed", overlap=Overlap.ALLOW, paused=True),
            now=START + timedelta(hours=1),
        )
        assert store.get_task(task_id) == edited  # type: ignore[arg-type]
        assert [t.name for t in store.find_tasks(states=[TaskState.PAUSED])] == ["renamed"]
        # the rebuilt table still cascades from its task
        assert store.purge_task(task_id) == [first, second]  # type: ignore[arg-type]
        assert store.executions(task_id) == []  # type: ignore[arg-type]

    objects = schema_objects(path)
    assert "executions_v3" not in objects
    assert "executionrow_task_id_agent_id_scheduled_at" not in objects
    assert '"attempt"' in objects["executionrow_task_id_agent_id_scheduled_at_attempt"]
    assert "executionrow_task_id_scheduled_at" in objects
    # opening it again is not an upgrade again
    with Store(path) as store:
        assert store.list_tasks() == []
    assert user_version(path) == SCHEMA_VERSION


def test_a_failed_upgrade_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "server.sqlite3"
    ids = issue_4_database(path, slots=1)
    # a table in the way of the rebuild: the upgrade fails half-way, after its ALTERs
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE executions_v3 (x INTEGER)")
    connection.close()
    before = schema_objects(path)

    with pytest.raises(ServerError, match="cannot open the database"):
        Store(path)

    assert user_version(path) == 3
    assert schema_objects(path) == before
    connection = sqlite3.connect(path)
    try:
        count = connection.execute("SELECT COUNT(*) FROM executions").fetchone()[0]
        task = connection.execute("SELECT * FROM tasks").fetchone()
    finally:
        connection.close()
    assert count == 2
    assert task[0] == ids["task_id"].hex  # type: ignore[attr-defined]
    assert len(task) == 5  # no column added


def test_a_version_4_database_gains_the_leases_table(tmp_path: Path) -> None:
    path = tmp_path / "server.sqlite3"
    with Store(path) as store:
        store.acquire_lease("work", "a", now=START, expires_at=START + timedelta(seconds=10))
    connection = sqlite3.connect(path)
    connection.execute("DROP TABLE leases")
    connection.execute("ALTER TABLE tasks DROP COLUMN name_folded")  # added by version 6
    connection.execute("PRAGMA user_version = 4")
    connection.commit()
    connection.close()
    with Store(path) as store:
        assert user_version(path) == SCHEMA_VERSION == 6
        assert store.lease_holder("work", now=START) is None
        assert store.acquire_lease("work", "b", now=START, expires_at=START + timedelta(seconds=1))
        assert store.lease_holder("work", now=START) == ("b", START + timedelta(seconds=1))


def test_a_version_5_database_gains_the_folded_names_it_searches(tmp_path: Path) -> None:
    path = tmp_path / "server.sqlite3"
    with Store(path) as store:
        for name in ("Straße nightly", "plain", None):
            task = Task(
                id=uuid4(),
                command="true",
                frequency=parse_frequency("every 10 seconds"),
                anchor=START,
                created_at=START,
                name=name,
            )
            store.create_task(task)
    connection = sqlite3.connect(path)
    connection.execute("ALTER TABLE tasks DROP COLUMN name_folded")
    connection.execute("PRAGMA user_version = 5")
    connection.commit()
    connection.close()
    with Store(path) as store:
        assert user_version(path) == SCHEMA_VERSION == 6
        # Python's folding: ß is ss, so STRASSE finds it
        assert [t.name for t in store.find_tasks(name="STRASSE")] == ["Straße nightly"]
        assert sorted(t.name or "" for t in store.find_tasks(name="a")) == [
            "Straße nightly",
            "plain",
        ]
