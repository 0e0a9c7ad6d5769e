"""The agent's durable state: ``DATA_DIR/agent.sqlite3``, through peewee.

Every line of peewee in the agent lives in this module. :class:`AgentState` is synchronous;
trio reaches it only through :class:`AsyncAgentState`, which runs each call in a worker thread
behind one ``CapacityLimiter(1)`` (SQLite has one writer, and the one connection must never be
used by two threads at once).

The tables (other programs, such as the fault tests, read them with ``sqlite3``):

``schedules``
    one row per task scheduled here: its whole spec as JSON (``spec``: command, frequency,
    anchor, every option, ``paused``), the main fields again as columns for people reading the
    file (``task_id``, ``command``, ``frequency``, ``anchor``), ``since`` (when this spec was
    scheduled) and ``last_slot`` (the newest fire time acted on). A restart resumes each task
    after ``max(since, last_slot)``.
``running``
    executions started and not yet recorded (``task_id``, ``scheduled_at``, ``attempt``,
    ``trigger``), with the process group (``pgid``) and what identifies its leader
    (``start_ticks``, ``boot_id``; see :mod:`.leftovers`). A row left here by a crash is an
    interrupted execution.
``outbox``
    executions not yet acknowledged by the server (``body`` is the execution as JSON), in the
    order they were recorded; unique on ``(task_id, agent_id, scheduled_at, attempt)``.
``journal``
    one row per execution this agent ran or recorded (skipped and missed ones too), kept when
    the report is delivered: ``task_id``, ``agent_id``, ``scheduled_at``, ``attempt``,
    ``trigger``, ``final``, ``status``, ``exit_code``, ``started_at``, ``finished_at``; unique on
    ``(task_id, scheduled_at, attempt)``. Rows older than :data:`JOURNAL_RETENTION` are pruned.

Schema versions (``PRAGMA user_version``): 1 kept only the three original fields of a spec and
one attempt per fire time; 2 (issue 5) adds the ``spec`` JSON and the attempt columns. A version
1 file is upgraded in place, in the transaction that reads its version (:func:`_upgrade_from_1`).

Ids are canonical lowercase UUID strings and times RFC 3339 strings (:func:`format_time`), as on
the wire; with their fixed width, ordering the strings orders the times.

Durability: WAL with ``synchronous=FULL``, so every commit is fsynced before the call returns.
An execution's journal row, its outbox row and the removal of its ``running`` row are one
transaction (:meth:`AgentState.record`), and so are a poll's last slots and the ``running`` rows
of what it starts (:meth:`AgentState.begin_slots`): whatever the moment of a crash, an execution
is either running, or recorded, never both and never neither.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, ParamSpec, TypeVar
from uuid import UUID

import attrs
import peewee
import trio

from taskscheduler_core import (
    Execution,
    ExecutionKey,
    StartExecution,
    TaskSpec,
    Trigger,
    format_time,
    parse_recurrence,
    parse_time,
    structure,
    unstructure,
)

from .errors import StateError
from .leftovers import ProcessIdentity, identify

P = ParamSpec("P")
T = TypeVar("T")

#: The state file, inside the data directory.
STATE_FILE = "agent.sqlite3"

#: Bumped whenever the tables change shape; a newer file is refused rather than misread, an
#: older one upgraded.
SCHEMA_VERSION = 2

#: Journal rows whose execution finished longer ago than this (before the newest one recorded)
#: are deleted; the journal is a record for checks and forensics, not an archive.
JOURNAL_RETENTION = timedelta(days=7)

#: The journal is pruned once every this many recorded executions.
_PRUNE_EVERY = 1000

_PRAGMAS = {
    "journal_mode": "wal",
    # FULL fsyncs the WAL at every commit. NORMAL would survive a SIGKILL of the agent but not
    # an OS crash or a power cut, and "recorded" must mean "on disk": a schedule request is
    # answered, and a slot is marked taken before its command starts, only once it is.
    "synchronous": "full",
    "busy_timeout": 5000,
}


class _UuidField(peewee.TextField):
    """A UUID kept as its canonical lowercase string."""

    def db_value(self, value: UUID | None) -> str | None:
        return None if value is None else str(value)

    def python_value(self, value: str | None) -> UUID | None:
        return None if value is None else UUID(value)


class _TimeField(peewee.TextField):
    """A UTC datetime kept as its RFC 3339 wire form (fixed width, so it sorts as time does)."""

    def db_value(self, value: datetime | None) -> str | None:
        return None if value is None else format_time(value)

    def python_value(self, value: str | None) -> datetime | None:
        return None if value is None else parse_time(value)


class _Model(peewee.Model):
    pass


@attrs.frozen
class _Tables:
    """The model classes of one open file, made per :class:`AgentState` (two agents in one
    process, as ``tsched up`` runs them, must never share a binding)."""

    schedule: Any
    running: Any
    outbox: Any
    journal: Any

    def all(self) -> list[Any]:
        return [self.schedule, self.running, self.outbox, self.journal]


def _make_tables(database: peewee.SqliteDatabase) -> _Tables:
    class ScheduleRow(_Model):
        task_id = _UuidField(primary_key=True)
        command = peewee.TextField()
        frequency = peewee.TextField()
        anchor = _TimeField()
        since = _TimeField()
        last_slot = _TimeField(null=True)
        # The whole TaskSpec as JSON; NULL only in rows written by schema version 1.
        spec = peewee.TextField(null=True)

        class Meta:
            table_name = "schedules"

    class RunningRow(_Model):
        task_id = _UuidField()
        scheduled_at = _TimeField()
        started_at = _TimeField()
        pgid = peewee.IntegerField(null=True)
        start_ticks = peewee.BigIntegerField(null=True)
        boot_id = peewee.TextField(null=True)
        attempt = peewee.IntegerField(default=1)
        trigger = peewee.TextField(default=Trigger.SCHEDULE.value)

        class Meta:
            table_name = "running"
            # attempt too: a retry may start before the report of the attempt before it is
            # written (which ends that attempt's row)
            indexes = ((("task_id", "scheduled_at", "attempt"), True),)

    class OutboxRow(_Model):
        task_id = _UuidField()
        agent_id = _UuidField()
        scheduled_at = _TimeField()
        attempt = peewee.IntegerField(default=1)
        body = peewee.TextField()

        class Meta:
            table_name = "outbox"
            indexes = ((("task_id", "agent_id", "scheduled_at", "attempt"), True),)

    class JournalRow(_Model):
        task_id = _UuidField()
        scheduled_at = _TimeField()
        agent_id = _UuidField()
        status = peewee.TextField()
        exit_code = peewee.IntegerField(null=True)
        started_at = _TimeField()
        finished_at = _TimeField(index=True)
        attempt = peewee.IntegerField(default=1)
        trigger = peewee.TextField(default=Trigger.SCHEDULE.value)
        final = peewee.BooleanField(default=True)

        class Meta:
            table_name = "journal"
            indexes = ((("task_id", "scheduled_at", "attempt"), True),)

    tables = _Tables(ScheduleRow, RunningRow, OutboxRow, JournalRow)
    database.bind(tables.all(), bind_refs=False, bind_backrefs=False)
    return tables


@attrs.frozen(kw_only=True)
class SavedSchedule:
    """A task as the state file keeps it: resume it after ``resume_after``."""

    spec: TaskSpec
    resume_after: datetime


@attrs.frozen(kw_only=True)
class RunningExecution:
    """An execution started and not recorded; after a restart, one that was interrupted."""

    task_id: UUID
    scheduled_at: datetime
    started_at: datetime
    #: The command's process group, ``None`` if the agent stopped before it was saved.
    process: ProcessIdentity | None
    attempt: int = 1
    trigger: Trigger = Trigger.SCHEDULE


def _create_private(path: Path) -> None:
    """Create the database file readable by its owner only, if it does not exist yet.

    It holds commands and what they printed. SQLite gives its -wal and -shm files the
    permissions of the database file, so they are private too; an existing file is left as is.
    """
    if str(path) != ":memory:":
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))


#: Schema version 1 → 2, as SQL: new columns (with the defaults every old row had: one
#: attempt, a scheduled one, final), and the unique indexes that now include the attempt (the
#: new ones are made by ``create_tables`` right after). Old ``schedules`` rows keep ``spec``
#: NULL and are read from their three columns.
_UPGRADE_FROM_1 = (
    "ALTER TABLE schedules ADD COLUMN spec TEXT",
    "ALTER TABLE running ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1",
    "ALTER TABLE running ADD COLUMN \"trigger\" TEXT NOT NULL DEFAULT 'schedule'",
    "ALTER TABLE outbox ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1",
    "ALTER TABLE journal ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1",
    "ALTER TABLE journal ADD COLUMN \"trigger\" TEXT NOT NULL DEFAULT 'schedule'",
    "ALTER TABLE journal ADD COLUMN final INTEGER NOT NULL DEFAULT 1",
    "DROP INDEX runningrow_task_id_scheduled_at",
    "DROP INDEX outboxrow_task_id_agent_id_scheduled_at",
    "DROP INDEX journalrow_task_id_scheduled_at",
)


def _upgrade_from_1(database: peewee.SqliteDatabase) -> None:
    """Upgrade a version 1 file in place; the caller's transaction makes it all or nothing."""
    for statement in _UPGRADE_FROM_1:
        database.execute_sql(statement)  # type: ignore[no-untyped-call]


class AgentState:
    """The agent's SQLite file, opened (and created or checked) on construction.

    Not thread-safe on its own: one caller at a time (:class:`AsyncAgentState` sees to it).
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        _create_private(self.path)
        self._db = peewee.SqliteDatabase(
            str(self.path),
            pragmas=_PRAGMAS,
            # One connection, used by whichever worker thread runs the call.
            thread_safe=False,
            check_same_thread=False,
            autoconnect=False,
        )
        self._tables = _make_tables(self._db)
        self._recorded = 0
        try:
            self._db.connect()
            self._create_schema()
        except peewee.PeeweeException as error:  # not a database, unwritable, locked, …
            self.close()
            raise StateError(f"cannot open {self.path}: {error}", path=self.path) from error
        except BaseException:
            self.close()
            raise

    def _create_schema(self) -> None:
        with self._db.atomic():
            version = self._db.pragma("user_version")
            if version > SCHEMA_VERSION:
                raise StateError(
                    f"{self.path} has schema version {version}; this agent knows up to "
                    f"{SCHEMA_VERSION}: upgrade the agent",
                    path=self.path,
                )
            if version == 1:
                _upgrade_from_1(self._db)
            self._db.create_tables(self._tables.all(), safe=True)
            self._db.pragma("user_version", SCHEMA_VERSION)

    def _cursor(self) -> sqlite3.Cursor:
        """A cursor of the one connection, for the plain SQL of the hot paths."""
        cursor: sqlite3.Cursor = self._db.cursor()  # type: ignore[no-untyped-call]
        return cursor

    def close(self) -> None:
        if not self._db.is_closed():
            self._db.close()

    def __enter__(self) -> AgentState:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- schedules -----------------------------------------------------------------------

    def save_schedule(self, spec: TaskSpec, *, since: datetime) -> None:
        """Keep ``spec``, scheduled from ``since`` on (replacing an older spec of that task)."""
        t = self._tables
        row = {
            "task_id": spec.task_id,
            "command": spec.command,
            "frequency": str(spec.frequency),
            "anchor": spec.anchor,
            "since": since,
            "last_slot": None,
            "spec": json.dumps(unstructure(spec), ensure_ascii=False),
        }
        with self._db.atomic():
            t.schedule.insert(**row).on_conflict(
                conflict_target=[t.schedule.task_id],
                preserve=[
                    t.schedule.command,
                    t.schedule.frequency,
                    t.schedule.anchor,
                    t.schedule.since,
                    t.schedule.last_slot,
                    t.schedule.spec,
                ],
            ).execute()

    def remove_schedule(self, task_id: UUID) -> bool:
        """Forget the task; whether it was kept."""
        t = self._tables
        with self._db.atomic():
            removed: int = t.schedule.delete().where(t.schedule.task_id == task_id).execute()
        return removed > 0

    def schedules(self) -> list[SavedSchedule]:
        """Every task kept, by id."""
        t = self._tables
        saved = []
        for row in t.schedule.select().order_by(t.schedule.task_id):
            if row.spec is not None:
                spec = structure(json.loads(row.spec), TaskSpec)
            else:  # a row of schema version 1: the three fields, every option at its default
                spec = TaskSpec(
                    task_id=row.task_id,
                    command=row.command,
                    frequency=parse_recurrence(row.frequency),
                    anchor=row.anchor,
                )
            resume_after = row.since if row.last_slot is None else max(row.since, row.last_slot)
            saved.append(SavedSchedule(spec=spec, resume_after=resume_after))
        return saved

    # -- slots and running executions ----------------------------------------------------

    def begin_slots(
        self,
        last_slots: Mapping[UUID, datetime],
        starting: Sequence[StartExecution],
        *,
        started_at: datetime,
    ) -> None:
        """In one transaction: the newest slot acted on per task, and a ``running`` row for each
        execution about to start.

        ``last_slot`` only moves forward: a retry or a manual run is for a time at or before it.
        """
        # Plain SQL on this path and the others run for every execution (process_started,
        # record, acknowledge_many): building each statement with peewee cost more CPU than
        # SQLite spends running it, and an agent runs up to about a thousand commands a second.
        with self._db.atomic():
            cursor = self._cursor()
            cursor.executemany(
                "UPDATE schedules SET last_slot = MAX(COALESCE(last_slot, ?1), ?1)"
                " WHERE task_id = ?2",
                [(format_time(slot), str(task_id)) for task_id, slot in last_slots.items()],
            )
            started = format_time(started_at)
            cursor.executemany(
                'INSERT OR IGNORE INTO running (task_id, scheduled_at, attempt, "trigger",'
                " started_at) VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        str(start.task.task_id),
                        format_time(start.scheduled_at),
                        start.attempt,
                        start.trigger.value,
                        started,
                    )
                    for start in starting
                ],
            )

    def process_started(
        self, task_id: UUID, scheduled_at: datetime, pid: int, *, attempt: int = 1
    ) -> None:
        """Note the process group of a running execution: ``pid`` leads it (see
        :mod:`.leftovers` for why more than the pid is kept)."""
        process = identify(pid)
        with self._db.atomic():
            self._cursor().execute(
                "UPDATE running SET pgid = ?, start_ticks = ?, boot_id = ?"
                " WHERE task_id = ? AND scheduled_at = ? AND attempt = ?",
                (
                    process.pid,
                    process.start_ticks,
                    process.boot_id,
                    str(task_id),
                    format_time(scheduled_at),
                    attempt,
                ),
            )

    def release_slots(self, slots: Sequence[tuple[UUID, datetime]]) -> None:
        """End the ``running`` rows of slots marked taken ahead and not started after all (a
        first attempt whose process was never noted)."""
        with self._db.atomic():
            self._cursor().executemany(
                "DELETE FROM running WHERE task_id = ? AND scheduled_at = ? AND attempt = 1"
                " AND pgid IS NULL",
                [(str(task_id), format_time(when)) for task_id, when in slots],
            )

    def running(self) -> list[RunningExecution]:
        """Every execution started and not recorded, oldest first."""
        t = self._tables
        query = t.running.select().order_by(
            t.running.scheduled_at, t.running.task_id, t.running.attempt
        )
        return [
            RunningExecution(
                task_id=row.task_id,
                scheduled_at=row.scheduled_at,
                started_at=row.started_at,
                process=None
                if row.pgid is None
                else ProcessIdentity(
                    pid=row.pgid, start_ticks=row.start_ticks, boot_id=row.boot_id
                ),
                attempt=row.attempt,
                trigger=Trigger(row.trigger),
            )
            for row in query
        ]

    def executed(self, task_id: UUID, scheduled_at: datetime) -> bool:
        """Whether an execution of ``task_id`` for ``scheduled_at`` runs or was recorded (and
        not pruned since): what makes a manual run for one time idempotent across restarts."""
        t = self._tables
        for table in (t.running, t.journal):
            query = table.select().where(
                (table.task_id == task_id) & (table.scheduled_at == scheduled_at)
            )
            if query.exists():
                return True
        return False

    # -- recorded executions: journal and outbox -----------------------------------------

    def record(self, execution: Execution) -> None:
        """In one transaction: journal ``execution``, queue its report, end its ``running``
        row. Recording the same execution again replaces it (in place, in the outbox)."""
        body = json.dumps(unstructure(execution), ensure_ascii=False)
        task_id, agent_id = str(execution.task_id), str(execution.agent_id)
        scheduled_at = format_time(execution.scheduled_at)
        with self._db.atomic():
            cursor = self._cursor()
            cursor.execute(
                "INSERT INTO journal (task_id, scheduled_at, attempt, agent_id, status,"
                ' exit_code, started_at, finished_at, "trigger", final)'
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (task_id, scheduled_at, attempt) DO UPDATE SET"
                " agent_id = excluded.agent_id, status = excluded.status,"
                " exit_code = excluded.exit_code, started_at = excluded.started_at,"
                ' finished_at = excluded.finished_at, "trigger" = excluded."trigger",'
                " final = excluded.final",
                (
                    task_id,
                    scheduled_at,
                    execution.attempt,
                    agent_id,
                    execution.status.value,
                    execution.exit_code,
                    format_time(execution.started_at),
                    format_time(execution.finished_at),
                    execution.trigger.value,
                    execution.final,
                ),
            )
            cursor.execute(
                "INSERT INTO outbox (task_id, agent_id, scheduled_at, attempt, body)"
                " VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (task_id, agent_id, scheduled_at, attempt) DO UPDATE SET"
                " body = excluded.body",
                (task_id, agent_id, scheduled_at, execution.attempt, body),
            )
            cursor.execute(
                "DELETE FROM running WHERE task_id = ? AND scheduled_at = ? AND attempt = ?",
                (task_id, scheduled_at, execution.attempt),
            )
            self._recorded += 1
            # The first record after each start prunes too: an agent restarted more often than
            # every _PRUNE_EVERY executions must still keep its journal to the retention.
            if self._recorded % _PRUNE_EVERY == 1:
                oldest = execution.finished_at - JOURNAL_RETENTION
                cursor.execute("DELETE FROM journal WHERE finished_at < ?", (format_time(oldest),))

    def pending(self) -> list[Execution]:
        """The executions in the outbox, oldest first."""
        return [execution for _, execution in self.pending_page(after=0, limit=None)]

    def pending_page(
        self, *, after: int, limit: int | None, max_bytes: int | None = None
    ) -> list[tuple[int, Execution]]:
        """Up to ``limit`` executions of the outbox queued after position ``after``, oldest
        first, each with its position (pass the last one as ``after`` for the next page).

        With ``max_bytes``, the page ends with the report that takes the bodies read to that
        many bytes or more (so it always holds one): a page of reports with large outputs
        stays a bounded amount of memory.
        """
        t = self._tables
        query = (
            t.outbox.select(t.outbox.id, t.outbox.body)
            .where(t.outbox.id > after)
            .order_by(t.outbox.id)
        )
        if limit is not None:
            query = query.limit(limit)
        page = []
        size = 0
        # .iterator(): rows come from SQLite one at a time, so what is past the byte budget is
        # never read.
        for position, body in query.tuples().iterator():
            page.append((position, structure(json.loads(body), Execution)))
            size += len(body)
            if max_bytes is not None and size >= max_bytes:
                break
        return page

    def acknowledge(self, key: ExecutionKey) -> None:
        """Drop the execution with ``key`` from the outbox (the journal keeps it)."""
        self.acknowledge_many([key])

    def acknowledge_many(self, keys: Sequence[ExecutionKey]) -> None:
        """Drop the executions with ``keys`` from the outbox, in one transaction."""
        with self._db.atomic():
            self._cursor().executemany(
                "DELETE FROM outbox"
                " WHERE task_id = ? AND agent_id = ? AND scheduled_at = ? AND attempt = ?",
                [
                    (
                        str(key.task_id),
                        str(key.agent_id),
                        format_time(key.scheduled_at),
                        key.attempt,
                    )
                    for key in keys
                ],
            )

    # -- many writes, one commit ---------------------------------------------------------

    def apply(
        self, writes: Sequence[Callable[[], object]]
    ) -> list[tuple[object, Exception | None]]:
        """Carry out ``writes`` (calls of this object's write methods) in ONE transaction, so
        one fsync: each in a savepoint of its own, so that one that fails (its outcome is the
        error) leaves the others. Their outcomes, in order. Nothing is committed if the
        commit itself fails: then this raises."""
        outcomes: list[tuple[object, Exception | None]] = []
        with self._db.atomic():
            for write in writes:
                # Every write method works inside its own ``atomic()``, which is a savepoint
                # here: one that fails has rolled itself back when its error arrives.
                try:
                    outcomes.append((write(), None))
                except Exception as error:
                    outcomes.append((None, error))
        return outcomes


@attrs.define(eq=False)
class _Write:
    """One write waiting for the next commit, and how it went."""

    call: Callable[[], object]
    #: Set once the write is settled, or when its caller is asked to flush next.
    done: trio.Event = attrs.field(factory=trio.Event)
    settled: bool = False
    value: object = None
    error: BaseException | None = None

    def settle(self, value: object = None, error: BaseException | None = None) -> None:
        self.value, self.error, self.settled = value, error, True
        self.done.set()


class AsyncAgentState:
    """The one door from trio to an :class:`AgentState`: a worker thread per call, one at a
    time.

    Writes are committed in groups: the writes that arrive while a commit is under way wait
    and go together in the next transaction (:meth:`AgentState.apply`). Each caller still
    returns only once its own write is on disk, but an agent running hundreds of commands a
    second pays for a few fsyncs a second instead of three per command (the slot, the process
    group, the report), which is what bounded it before.

    A call is not abandoned on cancellation: a write that was queued is committed before its
    caller sees ``Cancelled``.
    """

    def __init__(self, state: AgentState) -> None:
        self.state = state
        self._limiter = trio.CapacityLimiter(1)
        self._writes: list[_Write] = []
        self._flushing = False

    @classmethod
    async def open(cls, path: Path) -> AsyncAgentState:
        """Open (creating if need be) the state file at ``path``."""
        return cls(await trio.to_thread.run_sync(AgentState, path))

    async def aclose(self) -> None:
        await self._call(self.state.close)

    async def _call(self, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await trio.to_thread.run_sync(
                functools.partial(method, *args, **kwargs), limiter=self._limiter
            )
        except (peewee.PeeweeException, sqlite3.Error) as error:  # plain SQL raises sqlite3's
            path = self.state.path
            raise StateError(f"cannot use {path}: {error}", path=path) from error

    async def _write(self, method: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Queue a write for the next commit and wait for it (see the class docstring).

        The caller that finds no commit under way commits the queue; the others wait. When a
        commit ends with writes queued meanwhile, the first of them is asked to commit those:
        each caller commits at most once, so none is kept committing others' writes under a
        steady stream of them.
        """
        write = _Write(functools.partial(method, *args, **kwargs))
        self._writes.append(write)
        # Shielded: the write is queued, so it is committed; the caller learns of its
        # cancellation after that, and a flusher's cancellation never strands the others.
        with trio.CancelScope(shield=True):
            if self._flushing:
                await write.done.wait()
            else:
                self._flushing = True
            if not write.settled:  # no commit under way, or asked to commit the next one
                await self._flush()
        if write.error is not None:
            if isinstance(write.error, peewee.PeeweeException | sqlite3.Error):
                path = self.state.path
                raise StateError(f"cannot use {path}: {write.error}", path=path) from write.error
            raise write.error
        return write.value  # type: ignore[return-value]

    async def _flush(self) -> None:
        batch, self._writes = self._writes, []
        try:
            outcomes = await trio.to_thread.run_sync(
                self.state.apply, [write.call for write in batch], limiter=self._limiter
            )
        except BaseException as error:  # the commit failed: none of them is written
            for write in batch:
                write.settle(error=error)
            if not isinstance(error, Exception):
                raise
        else:
            for write, (value, failure) in zip(batch, outcomes, strict=True):
                write.settle(value, failure)
        finally:
            if self._writes:
                self._writes[0].done.set()  # its caller commits what queued meanwhile
            else:
                self._flushing = False

    async def save_schedule(self, spec: TaskSpec, *, since: datetime) -> None:
        await self._write(self.state.save_schedule, spec, since=since)

    async def remove_schedule(self, task_id: UUID) -> bool:
        return await self._write(self.state.remove_schedule, task_id)

    async def schedules(self) -> list[SavedSchedule]:
        return await self._call(self.state.schedules)

    async def begin_slots(
        self,
        last_slots: Mapping[UUID, datetime],
        starting: Sequence[StartExecution],
        *,
        started_at: datetime,
    ) -> None:
        await self._write(self.state.begin_slots, last_slots, starting, started_at=started_at)

    async def process_started(
        self, task_id: UUID, scheduled_at: datetime, pid: int, *, attempt: int = 1
    ) -> None:
        await self._write(self.state.process_started, task_id, scheduled_at, pid, attempt=attempt)

    async def release_slots(self, slots: Sequence[tuple[UUID, datetime]]) -> None:
        await self._write(self.state.release_slots, slots)

    async def running(self) -> list[RunningExecution]:
        return await self._call(self.state.running)

    async def executed(self, task_id: UUID, scheduled_at: datetime) -> bool:
        return await self._call(self.state.executed, task_id, scheduled_at)

    async def record(self, execution: Execution) -> None:
        await self._write(self.state.record, execution)

    async def pending(self) -> list[Execution]:
        return await self._call(self.state.pending)

    async def pending_page(
        self, *, after: int, limit: int | None, max_bytes: int | None = None
    ) -> list[tuple[int, Execution]]:
        return await self._call(
            self.state.pending_page, after=after, limit=limit, max_bytes=max_bytes
        )

    async def acknowledge(self, key: ExecutionKey) -> None:
        await self._write(self.state.acknowledge, key)

    async def acknowledge_many(self, keys: Sequence[ExecutionKey]) -> None:
        await self._write(self.state.acknowledge_many, keys)
