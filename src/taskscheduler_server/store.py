"""The server's database: tasks, agents, assignments and executions in SQLite, through peewee.

Every line of peewee in the server lives in this module. :class:`Store` is synchronous and
returns core models (and the server's assignments); the async side reaches it only through
:class:`AsyncStore`, which runs each call in a worker thread behind a ``CapacityLimiter(1)``:
SQLite has one writer, and peewee's single shared connection must never be used by two
threads at once.

Times are stored as integer microseconds since the epoch, so ordering and equality are exact
(an execution's identity includes its ``scheduled_at``). A task's run policy and targets, and an
agent's labels, are JSON written by the core's converter; what queries filter on (``paused``,
``deleted_at``, ``name``, ``created_at``) has a column of its own.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar
from uuid import UUID

import attrs
import peewee
import trio

from taskscheduler_core import (
    Agent,
    AgentDetail,
    AgentStatus,
    Execution,
    ExecutionKey,
    ExecutionStatus,
    Recurrence,
    Run,
    RunPolicy,
    Targets,
    Task,
    TaskSpec,
    TaskState,
    Trigger,
    group_runs,
    parse_recurrence,
    structure,
    unstructure,
)

from .errors import ServerError, TaskNotFound
from .records import AgentCredential, Assignment

P = ParamSpec("P")
T = TypeVar("T")

#: Bumped whenever the tables change shape; a newer database is refused rather than misread,
#: an older one is upgraded when it is opened (:data:`_UPGRADES`).
SCHEMA_VERSION = 4

#: The statements that take a database from version ``n`` to ``n + 1``, run in the transaction
#: that opens it. Version 1 is the schema of the first release (issue 2).
_UPGRADES: dict[int, tuple[str, ...]] = {
    1: ("ALTER TABLE agents ADD COLUMN status TEXT NOT NULL DEFAULT 'alive'",),
    # Version 3 adds the agent_credentials table, which create_tables makes.
    2: (),
    # Version 4 (issue 5): task options and lifecycle, agent labels, ended assignments, and
    # attempts of executions (the executions table is rebuilt: see _rebuild_executions).
    3: (
        "ALTER TABLE tasks ADD COLUMN updated_at INTEGER",
        "ALTER TABLE tasks ADD COLUMN name TEXT",
        "ALTER TABLE tasks ADD COLUMN policy TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE tasks ADD COLUMN targets TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE tasks ADD COLUMN paused INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE tasks ADD COLUMN deleted_at INTEGER",
        "ALTER TABLE agents ADD COLUMN labels TEXT NOT NULL DEFAULT '{}'",
        "ALTER TABLE assignments ADD COLUMN unassigned_at INTEGER",
    ),
}

#: The columns an execution had before version 4, copied as they are when the table is rebuilt.
_V3_EXECUTION_COLUMNS = (
    "id, task_id, agent_id, scheduled_at, started_at, finished_at, status, exit_code, "
    "stdout, stderr, stdout_dropped, stderr_dropped"
)

#: Rows per INSERT when many are written at once (well under SQLite's bound-variable limit).
_BATCH = 500

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_PRAGMAS = {
    "journal_mode": "wal",
    # In WAL mode a commit with synchronous=NORMAL already survives the process being killed
    # (the WAL is in the OS page cache when COMMIT returns), but not an OS crash or a power
    # cut. FULL fsyncs the WAL on every commit, so a report we acknowledged is on disk: the
    # agent deletes its copy once we say 200, and nothing else would keep it.
    "synchronous": "full",
    # Other processes (a backup, the sqlite3 shell) may hold the lock briefly; wait, not fail.
    "busy_timeout": 5000,
    "foreign_keys": 1,
}


def to_micros(moment: datetime) -> int:
    """A timezone-aware time as integer microseconds since the Unix epoch."""
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment.isoformat()} cannot be stored; use UTC")
    return (moment - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


class _Model(peewee.Model):
    pass


class _TimeField(peewee.BigIntegerField):
    """A UTC datetime kept as integer microseconds: exact, and sorted as the times are."""

    def db_value(self, value: datetime | None) -> int | None:
        return None if value is None else to_micros(value)

    def python_value(self, value: int | None) -> datetime | None:
        return None if value is None else from_micros(value)


@attrs.frozen
class _Tables:
    """The model classes of one open database.

    They are made per :class:`Store` rather than once per module, so that two stores (two
    servers in one test process, a store reopened) never share a binding.
    """

    task: Any
    agent: Any
    assignment: Any
    execution: Any
    credential: Any

    def all(self) -> list[Any]:
        return [self.task, self.agent, self.assignment, self.execution, self.credential]


def _make_tables(database: peewee.SqliteDatabase) -> _Tables:
    class TaskRow(_Model):
        id = peewee.UUIDField(primary_key=True)
        command = peewee.TextField()
        frequency = peewee.TextField()
        anchor = _TimeField()
        created_at = _TimeField(index=True)
        updated_at = _TimeField(null=True)
        name = peewee.TextField(null=True)
        #: The run policy (timeout, overlap, retries, env, …) as the wire format writes it.
        policy = peewee.TextField(default="{}")
        #: The targets as the wire format writes them; ``{}`` is every agent.
        targets = peewee.TextField(default="{}")
        paused = peewee.BooleanField(default=False)
        deleted_at = _TimeField(null=True)

        class Meta:
            table_name = "tasks"

    class AgentRow(_Model):
        id = peewee.UUIDField(primary_key=True)
        url = peewee.TextField()
        registered_at = _TimeField()
        last_seen_at = _TimeField()
        status = peewee.TextField(default=AgentStatus.ALIVE.value)
        labels = peewee.TextField(default="{}")

        class Meta:
            table_name = "agents"

    class AssignmentRow(_Model):
        task = peewee.ForeignKeyField(TaskRow, column_name="task_id", on_delete="CASCADE")
        agent = peewee.ForeignKeyField(AgentRow, column_name="agent_id", on_delete="CASCADE")
        assigned_at = _TimeField()
        delivered_at = _TimeField(null=True)
        revision = peewee.IntegerField(default=0)
        #: Set when the assignment ended: the agent must drop the task (see Assignment).
        unassigned_at = _TimeField(null=True)

        class Meta:
            table_name = "assignments"
            indexes = (
                (("task", "agent"), True),
                (("agent", "delivered_at"), False),
            )

    class ExecutionRow(_Model):
        task = peewee.ForeignKeyField(TaskRow, column_name="task_id", on_delete="CASCADE")
        # Not a foreign key: reports from agents the server never saw register are accepted
        # (callers of the original design do not register).
        agent_id = peewee.UUIDField()
        scheduled_at = _TimeField()
        started_at = _TimeField()
        finished_at = _TimeField()
        status = peewee.TextField()
        exit_code = peewee.IntegerField(null=True)
        stdout = peewee.TextField(default="")
        stderr = peewee.TextField(default="")
        stdout_dropped = peewee.BigIntegerField(default=0)
        stderr_dropped = peewee.BigIntegerField(default=0)
        attempt = peewee.IntegerField(default=1)
        trigger = peewee.TextField(default=Trigger.SCHEDULE.value)
        final = peewee.BooleanField(default=True)

        class Meta:
            table_name = "executions"
            indexes = (
                (("task", "agent_id", "scheduled_at", "attempt"), True),
                (("task", "scheduled_at"), False),
            )

    class CredentialRow(_Model):
        # Not a foreign key: credentials are issued before the agent row is written.
        agent_id = peewee.UUIDField(primary_key=True)
        #: SHA-256 of the token the agent presents; the token itself is never stored.
        token_sha256 = peewee.TextField(unique=True)
        #: The token the server presents to the agent (it must be able to send it).
        server_token = peewee.TextField()

        class Meta:
            table_name = "agent_credentials"

    tables = _Tables(TaskRow, AgentRow, AssignmentRow, ExecutionRow, CredentialRow)
    database.bind(tables.all(), bind_refs=False, bind_backrefs=False)
    return tables


def _batches(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    for start in range(0, len(rows), _BATCH):
        yield rows[start : start + _BATCH]


def _create_private(path: Path) -> None:
    """Create the database file readable by its owner only, if it does not exist yet.

    It holds commands and what they printed. SQLite gives its -wal and -shm files the
    permissions of the database file, so they are private too; an existing file is left as is.
    """
    if str(path) != ":memory:":
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))


def _casefold(text: str | None) -> str | None:
    """SQLite's ``lower`` folds ASCII only; names are searched the way Python folds them."""
    return None if text is None else text.casefold()


def _state_condition(task: Any, state: TaskState) -> Any:
    """The SQL condition on the tasks table of a task being in ``state``."""
    if state is TaskState.DELETED:
        return task.deleted_at.is_null(False)
    paused = task.paused == (state is TaskState.PAUSED)
    return task.deleted_at.is_null() & paused


class Store:
    """The server's SQLite database; the schema is created when the file is opened.

    Not thread-safe on its own: one caller at a time (:class:`AsyncStore` sees to it).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        _create_private(self.path)
        self._db = peewee.SqliteDatabase(
            str(self.path),
            pragmas=_PRAGMAS,
            # One connection shared by whichever worker thread runs the call: AsyncStore's
            # limiter serialises them, and a per-thread connection would defeat "one writer".
            thread_safe=False,
            check_same_thread=False,
            # Open from __init__ to close(); a call after close() is a bug, not a reconnect.
            autoconnect=False,
        )
        self._db.register_function(_casefold, "tsched_casefold", 1, deterministic=True)
        self._tables = _make_tables(self._db)
        try:
            self._db.connect()
            self._create_schema()
        except peewee.DatabaseError as error:  # not a database, locked, unwritable, …
            self.close()
            raise ServerError(f"cannot open the database {self.path}: {error}") from error
        except BaseException:
            self.close()
            raise

    def _create_schema(self) -> None:
        """Create the tables of a new file, or upgrade an older one, in one transaction."""
        with self._db.atomic():
            version = self._db.pragma("user_version")
            if version > SCHEMA_VERSION:
                raise ServerError(
                    f"{self.path} has schema version {version}; this server knows up to "
                    f"{SCHEMA_VERSION}: upgrade the server"
                )
            # Version 0 is a new file: create_tables makes the current schema at once.
            if version:
                for step in range(version, SCHEMA_VERSION):
                    for statement in _UPGRADES[step]:
                        self._db.execute_sql(statement)  # type: ignore[no-untyped-call]
                if version < 4:
                    self._rebuild_executions()
            self._db.create_tables(self._tables.all(), safe=True)
            self._db.pragma("user_version", SCHEMA_VERSION)

    def _rebuild_executions(self) -> None:
        """Version 4 keys executions by attempt too. SQLite cannot change a UNIQUE index in
        place, so the table is made anew and the rows copied (as first, final, scheduled
        attempts), inside the opening transaction: an upgrade is all or nothing."""
        execute = self._db.execute_sql
        execute("ALTER TABLE executions RENAME TO executions_v3")  # type: ignore[no-untyped-call]
        # The old indexes keep their names on the renamed table; the new table's have the same
        # names, so they go first.
        indexes = execute(  # type: ignore[no-untyped-call]
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'executions_v3'"
            " AND sql IS NOT NULL"
        ).fetchall()
        for (name,) in indexes:
            execute(f'DROP INDEX "{name}"')  # type: ignore[no-untyped-call]
        self._tables.execution.create_table(safe=False)
        execute(  # type: ignore[no-untyped-call]
            f"INSERT INTO executions ({_V3_EXECUTION_COLUMNS}, attempt, trigger, final) "
            f"SELECT {_V3_EXECUTION_COLUMNS}, 1, '{Trigger.SCHEDULE.value}', 1 FROM executions_v3"
        )
        execute("DROP TABLE executions_v3")  # type: ignore[no-untyped-call]

    def close(self) -> None:
        if not self._db.is_closed():
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- tasks ---------------------------------------------------------------------------

    def create_task(self, task: Task) -> list[Assignment]:
        """Store a new task and assign it to every agent its targets pick; returns those
        assignments (none for a task created deleted)."""
        t = self._tables
        with self._db.atomic():
            t.task.insert(id=task.id, **_task_columns(task)).execute()
            self._sync_task(task, task.created_at, push=False)
            query = (
                t.assignment.select(t.assignment, t.agent)
                .join_from(t.assignment, t.agent)
                .where(t.assignment.task == task.id)
                .order_by(t.agent.id)
            )
            return [
                Assignment(
                    task=task,
                    agent_id=row.agent.id,
                    agent_url=row.agent.url,
                    assigned_at=row.assigned_at,
                )
                for row in query
            ]

    def get_task(self, task_id: UUID) -> Task | None:
        row = self._tables.task.get_or_none(self._tables.task.id == task_id)
        return None if row is None else _task(row)

    def list_tasks(self) -> list[Task]:
        """Every task, deleted ones too, oldest first."""
        t = self._tables
        return [_task(row) for row in t.task.select().order_by(t.task.created_at, t.task.id)]

    def find_tasks(
        self,
        *,
        states: Collection[TaskState] = (TaskState.ACTIVE, TaskState.PAUSED),
        name: str | None = None,
        agent_id: UUID | None = None,
        after: tuple[datetime, UUID] | None = None,
        limit: int = 100,
    ) -> list[Task]:
        """A page of tasks, oldest first (by ``created_at``, then id): those in ``states``,
        whose name holds ``name`` (any case), assigned to ``agent_id``, and after the task
        ``after`` (its ``(created_at, id)``, from the previous page)."""
        t = self._tables
        condition: Any = peewee.Value(0)
        for state in states:
            condition |= _state_condition(t.task, state)
        if name is not None:
            condition &= peewee.fn.instr(peewee.fn.tsched_casefold(t.task.name), name.casefold())
        if agent_id is not None:
            assigned = t.assignment.select(t.assignment.task).where(
                (t.assignment.agent == agent_id) & t.assignment.unassigned_at.is_null()
            )
            condition &= t.task.id.in_(assigned)
        if after is not None:
            created_at, task_id = after
            condition &= (t.task.created_at > created_at) | (
                (t.task.created_at == created_at) & (t.task.id > task_id)
            )
        query = t.task.select().where(condition).order_by(t.task.created_at, t.task.id).limit(limit)
        return [_task(row) for row in query]

    def change_task(self, task_id: UUID, change: Callable[[Task], Task], *, now: datetime) -> Task:
        """Apply ``change`` to the stored task and store the result, in one transaction.

        ``change`` gets the task as stored and returns it changed (an edit, a pause, a
        deletion…); if it raises, nothing is written. The agents the task's targets now pick
        get the new spec, and those they no longer pick (all of them, for a deleted task) are
        to drop it: the dispatcher delivers both. Raises :class:`TaskNotFound`.
        """
        t = self._tables
        with self._db.atomic():
            row = t.task.get_or_none(t.task.id == task_id)
            if row is None:
                raise TaskNotFound(task_id)
            before = _task(row)
            after = change(before)
            if after == before:
                return before
            t.task.update(**_task_columns(after)).where(t.task.id == task_id).execute()
            self._sync_task(after, now, push=TaskSpec.of(after) != TaskSpec.of(before))
            return after

    def purge_task(self, task_id: UUID) -> list[UUID] | None:
        """Delete ``task_id`` with its executions and assignments; ``None`` if unknown.

        Returns the agents that may still hold it (not yet told to drop it), for the
        reconciler to clean up: no row is left to drive a removal.
        """
        t = self._tables
        with self._db.atomic():
            if not t.task.select().where(t.task.id == task_id).exists():
                return None
            holding = t.assignment.select(t.assignment.agent).where(
                (t.assignment.task == task_id)
                & (t.assignment.unassigned_at.is_null() | t.assignment.delivered_at.is_null())
            )
            agents = sorted({row.agent_id for row in holding}, key=str)
            # The cascades of the foreign keys remove its executions and assignments.
            t.task.delete().where(t.task.id == task_id).execute()
        return agents

    def _sync_task(self, task: Task, now: datetime, *, push: bool) -> None:
        """Make the assignments of ``task`` match its targets (none once it is deleted).

        Newly picked agents get an assignment from ``now``; agents no longer picked have theirs
        ended at ``now`` (to drop the task); with ``push`` the others get the spec again.
        """
        t = self._tables
        if task.deleted_at is not None:
            wanted: set[UUID] = set()
        else:
            agents = t.agent.select(t.agent.id, t.agent.labels).tuples()
            wanted = {
                agent_id
                for agent_id, labels in agents
                if task.targets.all or task.targets.matches(agent_id, _labels(labels))
            }
        rows = {
            row.agent_id: row.unassigned_at
            for row in t.assignment.select(t.assignment.agent, t.assignment.unassigned_at).where(
                t.assignment.task == task.id
            )
        }
        self._apply(
            scope=t.assignment.task == task.id,
            key=t.assignment.agent,
            fixed={"task": task.id},
            varying="agent",
            current=rows,
            wanted=wanted,
            now=now,
            push=push,
        )

    def _sync_agent(self, agent_id: UUID, labels: Mapping[str, str], now: datetime) -> None:
        """Make the assignments of ``agent_id`` match the targets of every live task."""
        t = self._tables
        tasks = t.task.select(t.task.id, t.task.targets).where(t.task.deleted_at.is_null())
        wanted = {
            task_id
            for task_id, targets in tasks.tuples()
            if _targets(targets).matches(agent_id, labels)
        }
        rows = {
            row.task_id: row.unassigned_at
            for row in t.assignment.select(t.assignment.task, t.assignment.unassigned_at).where(
                t.assignment.agent == agent_id
            )
        }
        self._apply(
            scope=t.assignment.agent == agent_id,
            key=t.assignment.task,
            fixed={"agent": agent_id},
            varying="task",
            current=rows,
            wanted=wanted,
            now=now,
            push=False,
        )

    def _apply(
        self,
        *,
        scope: Any,
        key: Any,
        fixed: dict[str, UUID],
        varying: str,
        current: Mapping[UUID, datetime | None],
        wanted: set[UUID],
        now: datetime,
        push: bool,
    ) -> None:
        """Turn the assignments in ``scope`` (those of one task, or of one agent: ``fixed``)
        into ``wanted``. ``current`` maps the other side's id (``key``, the ``varying`` column)
        of each existing assignment to its ``unassigned_at``."""
        t = self._tables
        new = [
            {**fixed, varying: other, "assigned_at": now}
            for other in sorted(wanted - current.keys(), key=str)
        ]
        for batch in _batches(new):
            t.assignment.insert_many(batch).execute()
        back = [other for other in wanted & current.keys() if current[other] is not None]
        kept = [other for other in wanted & current.keys() if current[other] is None]
        ended = [other for other in current.keys() - wanted if current[other] is None]
        again = {"delivered_at": None, "revision": t.assignment.revision + 1}
        for ids, changes in (
            (back, again | {"assigned_at": now, "unassigned_at": None}),
            (ended, again | {"unassigned_at": now}),
            (kept if push else [], again),
        ):
            for start in range(0, len(ids), _BATCH):
                t.assignment.update(**changes).where(
                    scope & key.in_(ids[start : start + _BATCH])
                ).execute()

    # -- agents --------------------------------------------------------------------------

    def upsert_agent(self, agent: Agent) -> Agent:
        """Register ``agent`` (its ``registered_at`` is when it was heard from); the agent as
        stored, ``alive``, with the first ``registered_at`` and this one as ``last_seen_at``.

        The agent is assigned every live task whose targets pick it (with its ``labels``, which
        replace those it had: tasks no longer picking it are to be dropped). Every
        registration, new or not, marks all the agent's assignments undelivered: an agent that
        registers again has probably restarted and lost the schedules it kept in memory, and
        pushing twice is harmless (scheduling is idempotent on the agent).
        """
        t = self._tables
        labels = _labels_text(agent.labels)
        with self._db.atomic():
            row = t.agent.get_or_none(t.agent.id == agent.id)
            if row is None:
                t.agent.insert(
                    id=agent.id,
                    url=agent.url,
                    registered_at=agent.registered_at,
                    last_seen_at=agent.registered_at,
                    status=AgentStatus.ALIVE.value,
                    labels=labels,
                ).execute()
            else:
                t.agent.update(
                    url=agent.url,
                    last_seen_at=agent.registered_at,
                    status=AgentStatus.ALIVE.value,
                    labels=labels,
                ).where(t.agent.id == agent.id).execute()
                t.assignment.update(delivered_at=None, revision=t.assignment.revision + 1).where(
                    (t.assignment.agent == agent.id) & t.assignment.unassigned_at.is_null()
                ).execute()
            self._sync_agent(agent.id, agent.labels, agent.registered_at)
            return _agent(t.agent.get(t.agent.id == agent.id))

    def update_agent_labels(
        self, agent_id: UUID, labels: Mapping[str, str], *, now: datetime
    ) -> bool:
        """Record that ``agent_id`` now declares ``labels`` (an agent of ``AVAILABLE_SERVERS``
        restarted with others); its assignments follow. ``True`` if they changed."""
        t = self._tables
        text = _labels_text(labels)
        with self._db.atomic():
            changed = (
                t.agent.update(labels=text)
                .where((t.agent.id == agent_id) & (t.agent.labels != text))
                .execute()
            )
            if changed:
                self._sync_agent(agent_id, labels, now)
        return bool(changed)

    def set_agent_credential(self, credential: AgentCredential) -> None:
        """Store (or replace) the credential of ``credential.agent_id``."""
        t = self._tables
        with self._db.atomic():
            t.credential.replace(
                agent_id=credential.agent_id,
                token_sha256=credential.token_sha256,
                server_token=credential.server_token,
            ).execute()

    def agent_credentials(self) -> list[AgentCredential]:
        """Every agent credential issued."""
        return [
            AgentCredential(
                agent_id=row.agent_id,
                token_sha256=row.token_sha256,
                server_token=row.server_token,
            )
            for row in self._tables.credential.select()
        ]

    def get_agent(self, agent_id: UUID) -> Agent | None:
        row = self._tables.agent.get_or_none(self._tables.agent.id == agent_id)
        return None if row is None else _agent(row)

    def agent_detail(self, agent_id: UUID) -> AgentDetail | None:
        """``agent_id`` with the ids of the live tasks assigned to it, oldest task first."""
        t = self._tables
        with self._db.atomic():
            row = t.agent.get_or_none(t.agent.id == agent_id)
            if row is None:
                return None
            tasks = (
                t.assignment.select(t.assignment.task)
                .join_from(t.assignment, t.task)
                .where(
                    (t.assignment.agent == agent_id)
                    & t.assignment.unassigned_at.is_null()
                    & t.task.deleted_at.is_null()
                )
                .order_by(t.task.created_at, t.task.id)
            )
            agent = _agent(row)
            return AgentDetail(
                **{field.name: getattr(agent, field.name) for field in attrs.fields(Agent)},
                tasks=[assignment.task_id for assignment in tasks],
            )

    def list_agents(self, status: AgentStatus | None = None) -> list[Agent]:
        """Every known agent (or those with ``status``), in order of first registration."""
        t = self._tables
        query = t.agent.select().order_by(t.agent.registered_at, t.agent.id)
        if status is not None:
            query = query.where(t.agent.status == status.value)
        return [_agent(row) for row in query]

    # -- liveness ------------------------------------------------------------------------

    def heartbeat(self, agent_id: UUID, seen_at: datetime) -> AgentStatus | None:
        """Record that ``agent_id`` was heard from at ``seen_at``: it is ``alive``.

        Returns its status before (``LOST`` means it just came back), or ``None`` for an agent
        this server does not know, which is left unknown: it must register.
        """
        t = self._tables
        with self._db.atomic():
            row = t.agent.get_or_none(t.agent.id == agent_id)
            if row is None:
                return None
            self._seen(agent_id, seen_at)
            return AgentStatus(row.status)

    def _seen(self, agent_id: UUID, seen_at: datetime) -> None:
        # A late request carrying an earlier time (a slow report) never moves last_seen back.
        t = self._tables
        t.agent.update(status=AgentStatus.ALIVE.value).where(t.agent.id == agent_id).execute()
        t.agent.update(last_seen_at=seen_at).where(
            (t.agent.id == agent_id) & (t.agent.last_seen_at < seen_at)
        ).execute()

    def mark_lost(self, silent_since: datetime) -> list[Agent]:
        """Mark ``lost`` every alive agent not heard from after ``silent_since``; returns them."""
        t = self._tables
        condition = (t.agent.status == AgentStatus.ALIVE.value) & (
            t.agent.last_seen_at <= silent_since
        )
        with self._db.atomic():
            lost = [_agent(row) for row in t.agent.select().where(condition)]
            if lost:
                t.agent.update(status=AgentStatus.LOST.value).where(
                    t.agent.id.in_([agent.id for agent in lost])
                ).execute()
        return [attrs.evolve(agent, status=AgentStatus.LOST) for agent in lost]

    def oldest_alive_contact(self) -> datetime | None:
        """The earliest ``last_seen_at`` of the alive agents: the next one to become lost."""
        t = self._tables
        # peewee converts the aggregate of a time column with that column's field
        oldest: datetime | None = (
            t.agent.select(peewee.fn.MIN(t.agent.last_seen_at))
            .where(t.agent.status == AgentStatus.ALIVE.value)
            .scalar()
        )
        return oldest

    def lost_agents(self) -> frozenset[UUID]:
        t = self._tables
        query = t.agent.select(t.agent.id).where(t.agent.status == AgentStatus.LOST.value)
        return frozenset(row.id for row in query)

    # -- assignments ---------------------------------------------------------------------

    def assignment_times(self, task_id: UUID) -> dict[UUID, datetime]:
        """When each agent that was ever assigned ``task_id`` was (last) assigned it.

        Agents whose assignment ended are in too: their late reports are still theirs to send.
        """
        return {agent: span[0] for agent, span in self.assignment_spans(task_id).items()}

    def assignment_spans(self, task_id: UUID) -> dict[UUID, tuple[datetime, datetime | None]]:
        """For each agent ever assigned ``task_id``: since when, and until when (``None``:
        still assigned)."""
        t = self._tables
        query = t.assignment.select(
            t.assignment.agent, t.assignment.assigned_at, t.assignment.unassigned_at
        ).where(t.assignment.task == task_id)
        return {row.agent_id: (row.assigned_at, row.unassigned_at) for row in query}

    def expected_agents(self, task_id: UUID, scheduled_at: datetime) -> frozenset[UUID]:
        """The agents that should report for the run of ``task_id`` at ``scheduled_at``.

        Those assigned the task before that fire time and not unassigned by then (an agent
        added later, or removed earlier, is not waited for) and not ``lost`` now (a silent
        agent is not waited for either).
        """
        t = self._tables
        query = (
            t.assignment.select(t.assignment.agent)
            .join_from(t.assignment, t.agent)
            .where(
                (t.assignment.task == task_id)
                & (t.assignment.assigned_at < scheduled_at)
                & (
                    t.assignment.unassigned_at.is_null()
                    | (t.assignment.unassigned_at > scheduled_at)
                )
                & (t.agent.status != AgentStatus.LOST.value)
            )
        )
        return frozenset(row.agent_id for row in query)

    def run_targets(self, task_id: UUID) -> list[Agent]:
        """The alive agents ``task_id`` is assigned to now: where a manual run is sent."""
        t = self._tables
        query = (
            t.agent.select()
            .join_from(t.agent, t.assignment)
            .where(
                (t.assignment.task == task_id)
                & t.assignment.unassigned_at.is_null()
                & (t.agent.status == AgentStatus.ALIVE.value)
            )
            .order_by(t.agent.id)
        )
        return [_agent(row) for row in query]

    def undelivered(self, agent_id: UUID | None = None) -> list[Assignment]:
        """Assignments (and removals) not yet acknowledged by their agent (of one agent, or
        all), oldest first."""
        t = self._tables
        condition = t.assignment.delivered_at.is_null()
        if agent_id is not None:
            condition &= t.assignment.agent == agent_id
        query = (
            t.assignment.select(t.assignment, t.task, t.agent)
            .join_from(t.assignment, t.task)
            .join_from(t.assignment, t.agent)
            .where(condition)
            .order_by(t.assignment.assigned_at, t.assignment.task)
        )
        return [_assignment(row) for row in query]

    def assignments_of(self, agent_id: UUID) -> list[Assignment]:
        """Every task assigned to ``agent_id`` now, delivered or not, oldest first."""
        t = self._tables
        query = (
            t.assignment.select(t.assignment, t.task, t.agent)
            .join_from(t.assignment, t.task)
            .join_from(t.assignment, t.agent)
            .where((t.assignment.agent == agent_id) & t.assignment.unassigned_at.is_null())
            .order_by(t.assignment.assigned_at, t.assignment.task)
        )
        return [_assignment(row) for row in query]

    def redeliver(
        self, agent_id: UUID, task_ids: Iterable[UUID], *, delivered_before: datetime
    ) -> list[UUID]:
        """Mark undelivered the assignments of ``task_ids`` to ``agent_id`` that were delivered
        before ``delivered_before``: the agent has lost them (or holds another version).

        Undelivered ones are left alone (the dispatcher is on them already), and so are those
        delivered since: the agent's listing may predate that delivery. Ended assignments are
        not pushed again. Returns the ids of the tasks marked.
        """
        t = self._tables
        ids = list(task_ids)
        marked: list[UUID] = []
        with self._db.atomic():
            for start in range(0, len(ids), _BATCH):
                condition = (
                    (t.assignment.agent == agent_id)
                    & t.assignment.task.in_(ids[start : start + _BATCH])
                    & (t.assignment.delivered_at < delivered_before)
                    & t.assignment.unassigned_at.is_null()
                )
                batch = [
                    row.task_id for row in t.assignment.select(t.assignment.task).where(condition)
                ]
                t.assignment.update(delivered_at=None, revision=t.assignment.revision + 1).where(
                    condition
                ).execute()
                marked += batch
        return marked

    def agents_awaiting_delivery(self) -> set[UUID]:
        """The agents that have at least one undelivered assignment."""
        t = self._tables
        query = (
            t.assignment.select(t.assignment.agent)
            .where(t.assignment.delivered_at.is_null())
            .distinct()
        )
        return {row.agent_id for row in query}

    def mark_delivered(self, assignment: Assignment, delivered_at: datetime) -> bool:
        """Record that the agent acknowledged ``assignment`` (the push, or the removal).

        Does nothing (returns ``False``) if the assignment was marked undelivered again since it
        was read, since the push that succeeded may have reached the agent's previous life (or
        carried the task's previous version).
        """
        t = self._tables
        with self._db.atomic():
            changed = (
                t.assignment.update(delivered_at=delivered_at)
                .where(
                    (t.assignment.task == assignment.task.id)
                    & (t.assignment.agent == assignment.agent_id)
                    & (t.assignment.revision == assignment.revision)
                    & t.assignment.delivered_at.is_null()
                )
                .execute()
            )
        return bool(changed)

    # -- executions ----------------------------------------------------------------------

    def record_execution(self, execution: Execution, *, seen_at: datetime | None = None) -> bool:
        """Store ``execution`` once; returns ``True`` if it is new, ``False`` for a repeat.

        Idempotent on ``(task_id, agent_id, scheduled_at, attempt)``: a repeated report changes
        nothing. Raises :class:`TaskNotFound` for an unknown (or purged) task; a deleted one
        still takes reports of what ran before its agents dropped it. When this returns, it is
        committed. With ``seen_at`` (when the report arrived), the reporting agent, if known,
        counts as heard from then, in the same transaction.
        """
        t = self._tables
        with self._db.atomic():
            if not t.task.select().where(t.task.id == execution.task_id).exists():
                raise TaskNotFound(execution.task_id)
            if seen_at is not None:
                self._seen(execution.agent_id, seen_at)
            inserted = (
                t.execution.insert(
                    task=execution.task_id,
                    agent_id=execution.agent_id,
                    scheduled_at=execution.scheduled_at,
                    started_at=execution.started_at,
                    finished_at=execution.finished_at,
                    status=execution.status.value,
                    exit_code=execution.exit_code,
                    stdout=execution.stdout,
                    stderr=execution.stderr,
                    stdout_dropped=execution.stdout_dropped,
                    stderr_dropped=execution.stderr_dropped,
                    attempt=execution.attempt,
                    trigger=execution.trigger.value,
                    final=execution.final,
                )
                .on_conflict(
                    action="nothing",
                    conflict_target=[
                        t.execution.task,
                        t.execution.agent_id,
                        t.execution.scheduled_at,
                        t.execution.attempt,
                    ],
                )
                .as_rowcount()
                .execute()
            )
        return bool(inserted)

    def recent_runs(
        self,
        task_id: UUID,
        *,
        limit: int,
        before: datetime | None = None,
        with_output: bool = True,
        ran_only: bool = False,
    ) -> list[Run]:
        """The newest ``limit`` runs of ``task_id`` (only those before ``before``), newest first.

        ``with_output=False`` leaves ``stdout`` / ``stderr`` empty, to decide which run to show
        without reading megabytes of output for runs that will not be shown. ``ran_only`` keeps
        only runs in which some execution ran (not every one skipped or missed): filtered here,
        in SQL, since a command that hangs can leave any number of skipped runs behind it.
        """
        e = self._tables.execution
        condition = e.task == task_id
        if before is not None:
            condition &= e.scheduled_at < before
        slot_condition = condition
        if ran_only:
            skipped = [status.value for status in ExecutionStatus if not status.ran]
            slot_condition &= e.status.not_in(skipped)
        with self._db.atomic():
            slots = (
                e.select(e.scheduled_at)
                .where(slot_condition)
                .distinct()
                .order_by(e.scheduled_at.desc())
                .limit(limit)
            )
            times = [row.scheduled_at for row in slots]
            if not times:
                return []
            query = e.select(*self._execution_columns(with_output)).where(
                condition & e.scheduled_at.in_(times)
            )
            return group_runs(_execution(row) for row in query)

    def run(self, task_id: UUID, scheduled_at: datetime) -> Run | None:
        """The run of ``task_id`` at ``scheduled_at``, with its output; ``None`` if no report."""
        e = self._tables.execution
        query = e.select().where((e.task == task_id) & (e.scheduled_at == scheduled_at))
        runs = group_runs(_execution(row) for row in query)
        return runs[0] if runs else None

    def executions(self, task_id: UUID) -> list[Execution]:
        """Every execution of ``task_id``, oldest fire time first."""
        e = self._tables.execution
        query = e.select().where(e.task == task_id).order_by(e.scheduled_at, e.agent_id, e.attempt)
        return [_execution(row) for row in query]

    def find_executions(
        self,
        task_id: UUID,
        *,
        agent_id: UUID | None = None,
        status: ExecutionStatus | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        after: ExecutionKey | None = None,
        limit: int = 100,
    ) -> list[Execution]:
        """A page of the executions of ``task_id``, newest first (by ``scheduled_at``, then
        agent id, then the latest attempt first).

        Filtered by agent, status and fire time (``since`` inclusive, ``until`` exclusive);
        ``after`` is the last execution of the previous page.
        """
        e = self._tables.execution
        condition = e.task == task_id
        if agent_id is not None:
            condition &= e.agent_id == agent_id
        if status is not None:
            condition &= e.status == status.value
        if since is not None:
            condition &= e.scheduled_at >= since
        if until is not None:
            condition &= e.scheduled_at < until
        if after is not None:
            condition &= (e.scheduled_at < after.scheduled_at) | (
                (e.scheduled_at == after.scheduled_at)
                & (
                    (e.agent_id > after.agent_id)
                    | ((e.agent_id == after.agent_id) & (e.attempt < after.attempt))
                )
            )
        query = (
            e.select()
            .where(condition)
            .order_by(e.scheduled_at.desc(), e.agent_id, e.attempt.desc())
            .limit(limit)
        )
        return [_execution(row) for row in query]

    # -- retention -----------------------------------------------------------------------

    def task_ids(self, *, after: UUID | None = None, limit: int = _BATCH) -> list[UUID]:
        """A page of the ids of every task, deleted ones too, in id order."""
        t = self._tables
        query = t.task.select(t.task.id).order_by(t.task.id).limit(limit)
        if after is not None:
            query = query.where(t.task.id > after)
        return [row.id for row in query]

    def run_times(self, task_id: UUID, *, limit: int) -> list[datetime]:
        """The fire times of the newest ``limit`` runs of ``task_id``, newest first."""
        e = self._tables.execution
        query = (
            e.select(e.scheduled_at)
            .where(e.task == task_id)
            .distinct()
            .order_by(e.scheduled_at.desc())
            .limit(limit)
        )
        return [row.scheduled_at for row in query]

    def oldest_run_time(self, task_id: UUID) -> datetime | None:
        """The fire time of the oldest run of ``task_id`` stored, if any."""
        e = self._tables.execution
        oldest: datetime | None = (
            e.select(peewee.fn.MIN(e.scheduled_at)).where(e.task == task_id).scalar()
        )
        return oldest

    def prune_executions(self, task_id: UUID, *, before: datetime, limit: int = _BATCH) -> int:
        """Delete up to ``limit`` executions of ``task_id`` scheduled before ``before``; returns
        how many. Bounded, so that pruning a long history never holds the database for long:
        call again until it returns less than ``limit``."""
        e = self._tables.execution
        with self._db.atomic():
            doomed = (
                e.select(e.id)
                .where((e.task == task_id) & (e.scheduled_at < before))
                .order_by(e.scheduled_at)
                .limit(limit)
            )
            deleted: int = e.delete().where(e.id.in_(doomed)).execute()
        return deleted

    def forget_deleted_tasks(self) -> list[UUID]:
        """Delete the deleted tasks that have no history left, and no removal still to deliver
        to an alive agent; returns their ids."""
        t = self._tables
        e = self._tables.execution
        history = e.select(e.id).where(e.task == t.task.id)
        pending = (
            t.assignment.select(t.assignment.id)
            .join_from(t.assignment, t.agent)
            .where(
                (t.assignment.task == t.task.id)
                & t.assignment.delivered_at.is_null()
                & (t.agent.status == AgentStatus.ALIVE.value)
            )
        )
        with self._db.atomic():
            forgotten = [
                row.id
                for row in t.task.select(t.task.id).where(
                    t.task.deleted_at.is_null(False)
                    & ~peewee.fn.EXISTS(history)
                    & ~peewee.fn.EXISTS(pending)
                )
            ]
            for start in range(0, len(forgotten), _BATCH):
                t.task.delete().where(t.task.id.in_(forgotten[start : start + _BATCH])).execute()
        return forgotten

    def _execution_columns(self, with_output: bool) -> Iterable[Any]:
        e = self._tables.execution
        if with_output:
            return [e]
        return [field for field in e._meta.sorted_fields if field.name not in ("stdout", "stderr")]


def _task_columns(task: Task) -> dict[str, Any]:
    """The columns of a task's row (all but its id)."""
    return {
        "command": task.command,
        "frequency": str(task.frequency),
        "anchor": task.anchor,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "name": task.name,
        "policy": json.dumps(unstructure(task.policy()), sort_keys=True),
        "targets": json.dumps(unstructure(task.targets), sort_keys=True),
        "paused": task.paused,
        "deleted_at": task.deleted_at,
    }


# The JSON columns repeat the same few texts over and over: each is parsed once.
@functools.lru_cache(maxsize=1024)
def _policy(text: str) -> RunPolicy:
    return structure(json.loads(text), RunPolicy)


@functools.lru_cache(maxsize=1024)
def _targets(text: str) -> Targets:
    return structure(json.loads(text), Targets)


@functools.lru_cache(maxsize=1024)
def _recurrence(text: str) -> Recurrence:
    return parse_recurrence(text)


def _labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = json.loads(text)
    return labels


def _labels_text(labels: Mapping[str, str]) -> str:
    return json.dumps(dict(labels), sort_keys=True)


def _task(row: Any) -> Task:
    policy = _policy(row.policy)
    return Task(
        id=row.id,
        command=row.command,
        frequency=_recurrence(row.frequency),
        anchor=row.anchor,
        created_at=row.created_at,
        updated_at=row.updated_at,
        name=row.name,
        targets=_targets(row.targets),
        paused=bool(row.paused),
        deleted_at=row.deleted_at,
        **policy.policy_fields(),
    )


def _agent(row: Any) -> Agent:
    return Agent(
        id=row.id,
        url=row.url,
        registered_at=row.registered_at,
        last_seen_at=row.last_seen_at,
        status=AgentStatus(row.status),
        labels=_labels(row.labels),
    )


def _assignment(row: Any) -> Assignment:
    """An assignment row read with its task and agent joined."""
    return Assignment(
        task=_task(row.task),
        agent_id=row.agent.id,
        agent_url=row.agent.url,
        assigned_at=row.assigned_at,
        delivered_at=row.delivered_at,
        revision=row.revision,
        unassigned_at=row.unassigned_at,
    )


def _execution(row: Any) -> Execution:
    return Execution(
        task_id=row.task_id,
        agent_id=row.agent_id,
        scheduled_at=row.scheduled_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        status=ExecutionStatus(row.status),
        exit_code=row.exit_code,
        stdout=row.stdout or "",
        stderr=row.stderr or "",
        stdout_dropped=row.stdout_dropped,
        stderr_dropped=row.stderr_dropped,
        attempt=row.attempt,
        trigger=Trigger(row.trigger),
        final=bool(row.final),
    )


class AsyncStore:
    """The one door from trio to the :class:`Store`: a worker thread per call, one at a time.

    ``await store.call(Store.get_task, task_id)`` runs ``Store.get_task(store, task_id)`` in a
    thread. Calls are not abandoned on cancellation: a write that started is finished (and
    committed) before the caller sees ``Cancelled``.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._limiter = trio.CapacityLimiter(1)

    async def call(
        self, method: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        return await trio.to_thread.run_sync(
            functools.partial(method, self.store, *args, **kwargs), limiter=self._limiter
        )

    async def aclose(self) -> None:
        await self.call(Store.close)
