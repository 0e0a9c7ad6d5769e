"""The server's database: tasks, agents, assignments and executions in SQLite, through peewee.

Every line of peewee in the server lives in this module. :class:`Store` is synchronous and
returns core models (and the server's assignments); the async side reaches it only through
:class:`AsyncStore`, which runs each call in a worker thread behind a ``CapacityLimiter(1)``:
SQLite has one writer, and peewee's single shared connection must never be used by two
threads at once.

Times are stored as integer microseconds since the epoch, so ordering and equality are exact
(an execution's identity includes its ``scheduled_at``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator
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
    AgentStatus,
    Execution,
    ExecutionStatus,
    Run,
    Task,
    group_runs,
    parse_frequency,
)

from .errors import ServerError, TaskNotFound
from .records import AgentCredential, Assignment

P = ParamSpec("P")
T = TypeVar("T")

#: Bumped whenever the tables change shape; a newer database is refused rather than misread,
#: an older one is upgraded when it is opened (:data:`_UPGRADES`).
SCHEMA_VERSION = 3

#: The statements that take a database from version ``n`` to ``n + 1``, run in the transaction
#: that opens it. Version 1 is the schema of the first release (issue 2).
_UPGRADES: dict[int, tuple[str, ...]] = {
    1: ("ALTER TABLE agents ADD COLUMN status TEXT NOT NULL DEFAULT 'alive'",),
    # Version 3 adds the agent_credentials table, which create_tables makes.
    2: (),
}

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

        class Meta:
            table_name = "tasks"

    class AgentRow(_Model):
        id = peewee.UUIDField(primary_key=True)
        url = peewee.TextField()
        registered_at = _TimeField()
        last_seen_at = _TimeField()
        status = peewee.TextField(default=AgentStatus.ALIVE.value)

        class Meta:
            table_name = "agents"

    class AssignmentRow(_Model):
        task = peewee.ForeignKeyField(TaskRow, column_name="task_id", on_delete="CASCADE")
        agent = peewee.ForeignKeyField(AgentRow, column_name="agent_id", on_delete="CASCADE")
        assigned_at = _TimeField()
        delivered_at = _TimeField(null=True)
        revision = peewee.IntegerField(default=0)

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

        class Meta:
            table_name = "executions"
            indexes = (
                (("task", "agent_id", "scheduled_at"), True),
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
            self._db.create_tables(self._tables.all(), safe=True)
            self._db.pragma("user_version", SCHEMA_VERSION)

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
        """Store a new task and assign it to every known agent; returns those assignments."""
        t = self._tables
        with self._db.atomic():
            t.task.insert(
                id=task.id,
                command=task.command,
                frequency=str(task.frequency),
                anchor=task.anchor,
                created_at=task.created_at,
            ).execute()
            agents = list(t.agent.select().order_by(t.agent.id))
            rows = [
                {"task": task.id, "agent": agent.id, "assigned_at": task.created_at}
                for agent in agents
            ]
            for batch in _batches(rows):
                t.assignment.insert_many(batch).execute()
        return [
            Assignment(
                task=task, agent_id=agent.id, agent_url=agent.url, assigned_at=task.created_at
            )
            for agent in agents
        ]

    def get_task(self, task_id: UUID) -> Task | None:
        row = self._tables.task.get_or_none(self._tables.task.id == task_id)
        return None if row is None else _task(row)

    def list_tasks(self) -> list[Task]:
        """Every task, oldest first."""
        t = self._tables
        return [_task(row) for row in t.task.select().order_by(t.task.created_at, t.task.id)]

    # -- agents --------------------------------------------------------------------------

    def upsert_agent(self, agent: Agent) -> Agent:
        """Register ``agent`` (its ``registered_at`` is when it was heard from); the agent as
        stored, ``alive``, with the first ``registered_at`` and this one as ``last_seen_at``.

        A new agent is assigned every existing task. Every registration, new or not, marks all
        the agent's assignments undelivered: an agent that registers again has probably
        restarted and lost the schedules it kept in memory, and pushing twice is harmless
        (scheduling is idempotent on the agent).
        """
        t = self._tables
        with self._db.atomic():
            row = t.agent.get_or_none(t.agent.id == agent.id)
            if row is None:
                t.agent.insert(
                    id=agent.id,
                    url=agent.url,
                    registered_at=agent.registered_at,
                    last_seen_at=agent.registered_at,
                    status=AgentStatus.ALIVE.value,
                ).execute()
                rows = [
                    {"task": task_id, "agent": agent.id, "assigned_at": agent.registered_at}
                    for (task_id,) in t.task.select(t.task.id).tuples()
                ]
                for batch in _batches(rows):
                    t.assignment.insert_many(batch).execute()
            else:
                t.agent.update(
                    url=agent.url,
                    last_seen_at=agent.registered_at,
                    status=AgentStatus.ALIVE.value,
                ).where(t.agent.id == agent.id).execute()
                t.assignment.update(delivered_at=None, revision=t.assignment.revision + 1).where(
                    t.assignment.agent == agent.id
                ).execute()
            return _agent(t.agent.get(t.agent.id == agent.id))

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
        """When each agent of ``task_id`` was assigned it."""
        t = self._tables
        query = t.assignment.select(t.assignment.agent, t.assignment.assigned_at).where(
            t.assignment.task == task_id
        )
        return {row.agent_id: row.assigned_at for row in query}

    def expected_agents(self, task_id: UUID, scheduled_at: datetime) -> frozenset[UUID]:
        """The agents that should report for the run of ``task_id`` at ``scheduled_at``.

        Those assigned the task before that fire time (an agent added later is not waited for)
        and not ``lost`` now (a silent agent is not waited for either).
        """
        t = self._tables
        query = (
            t.assignment.select(t.assignment.agent)
            .join_from(t.assignment, t.agent)
            .where(
                (t.assignment.task == task_id)
                & (t.assignment.assigned_at < scheduled_at)
                & (t.agent.status != AgentStatus.LOST.value)
            )
        )
        return frozenset(row.agent_id for row in query)

    def undelivered(self, agent_id: UUID | None = None) -> list[Assignment]:
        """Assignments not yet acknowledged by their agent (of one agent, or all), oldest first."""
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
        """Every task assigned to ``agent_id``, delivered or not, oldest first."""
        t = self._tables
        query = (
            t.assignment.select(t.assignment, t.task, t.agent)
            .join_from(t.assignment, t.task)
            .join_from(t.assignment, t.agent)
            .where(t.assignment.agent == agent_id)
            .order_by(t.assignment.assigned_at, t.assignment.task)
        )
        return [_assignment(row) for row in query]

    def redeliver(
        self, agent_id: UUID, task_ids: Iterable[UUID], *, delivered_before: datetime
    ) -> list[UUID]:
        """Mark undelivered the assignments of ``task_ids`` to ``agent_id`` that were delivered
        before ``delivered_before``: the agent has lost them (or holds another version).

        Undelivered ones are left alone (the dispatcher is on them already), and so are those
        delivered since: the agent's listing may predate that delivery. Returns the ids of the
        tasks marked.
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
        """Record that the agent acknowledged ``assignment``.

        Does nothing (returns ``False``) if the assignment was marked undelivered again since it
        was read, since the push that succeeded may have reached the agent's previous life.
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

        Idempotent on ``(task_id, agent_id, scheduled_at)``: a repeated report changes nothing.
        Raises :class:`TaskNotFound` for an unknown task. When this returns, it is committed.
        With ``seen_at`` (when the report arrived), the reporting agent, if known, counts as
        heard from then, in the same transaction.
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
                )
                .on_conflict(
                    action="nothing",
                    conflict_target=[
                        t.execution.task,
                        t.execution.agent_id,
                        t.execution.scheduled_at,
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
        query = e.select().where(e.task == task_id).order_by(e.scheduled_at, e.agent_id)
        return [_execution(row) for row in query]

    def _execution_columns(self, with_output: bool) -> Iterable[Any]:
        e = self._tables.execution
        if with_output:
            return [e]
        return [field for field in e._meta.sorted_fields if field.name not in ("stdout", "stderr")]


def _task(row: Any) -> Task:
    return Task(
        id=row.id,
        command=row.command,
        frequency=parse_frequency(row.frequency),
        anchor=row.anchor,
        created_at=row.created_at,
    )


def _agent(row: Any) -> Agent:
    return Agent(
        id=row.id,
        url=row.url,
        registered_at=row.registered_at,
        last_seen_at=row.last_seen_at,
        status=AgentStatus(row.status),
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
