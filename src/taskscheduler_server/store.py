"""The server's database: tasks, agents, assignments and executions, in SQLite or PostgreSQL,
through peewee.

Every line of peewee in the server lives in this module (how to connect to each database is
in database.py). :class:`Store` is synchronous and returns core models (and the server's
assignments); the async side reaches it only through :class:`AsyncStore`, which runs each call
in a worker thread: one at a time on SQLite (one writer, and peewee's single shared connection
must never be used by two threads at once), several at once on PostgreSQL (a pooled connection
per call).

Times are stored as integer microseconds since the epoch, so ordering and equality are exact
(an execution's identity includes its ``scheduled_at``). A task's run policy and targets, and an
agent's labels, are JSON written by the core's converter; what queries filter on (``paused``,
``deleted_at``, ``name``, ``created_at``) has a column of its own. PostgreSQL gets the same
representation (UUIDs as 32 hex digits, times as microseconds), so one hand-written SQL text
serves both; only command output differs (``BYTEA`` there: PostgreSQL's ``TEXT`` cannot hold
NUL). docs/database.md tells why.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, TypeVar
from uuid import UUID

import attrs
import peewee
import psycopg2.extensions
import trio
from playhouse.pool import MaxConnectionsExceeded

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

from .database import (
    POSTGRES_CONCURRENCY,
    connection_failure,
    database_location,
    describe_database,
    first_line,
    open_postgresql,
    open_sqlite,
)
from .errors import DatabaseUnavailable, ServerError, TaskNotFound
from .records import AgentCredential, Assignment

logger = logging.getLogger("taskscheduler.server.store")

P = ParamSpec("P")
T = TypeVar("T")

#: Bumped whenever the tables change shape; a newer database is refused rather than misread,
#: an older one is upgraded when it is opened (:data:`_UPGRADES`, :data:`_POSTGRES_UPGRADES`).
SCHEMA_VERSION = 6

#: The statements that take a SQLite database from version ``n`` to ``n + 1``, run in the
#: transaction that opens it. Version 1 is the schema of the first release (issue 2).
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
    # Version 5 (issue 7) adds the leases table, which create_tables makes.
    4: (),
    # Version 6 (issue 7): the name as searched (casefolded by Python, the same on both
    # databases), filled in with the function the store registers on its SQLite connection.
    5: (
        "ALTER TABLE tasks ADD COLUMN name_folded TEXT",
        "UPDATE tasks SET name_folded = tsched_casefold(name)",
    ),
}

#: The first schema version a PostgreSQL database has had: it is created at the current one.
_POSTGRES_FIRST_VERSION = 6
#: As :data:`_UPGRADES`, for PostgreSQL (from :data:`_POSTGRES_FIRST_VERSION` on). Its version
#: is the one row of ``tsched_schema_version`` (PostgreSQL has no ``user_version``).
_POSTGRES_UPGRADES: dict[int, tuple[str, ...]] = {}

#: The first key of the advisory locks the store takes on PostgreSQL (the second is the hash
#: of the schema, so that databases in two schemas do not wait for each other): one for the
#: creation or upgrade of the schema, so that two servers starting at once on an empty
#: database do not both create it; one for the writes that decide assignments (see
#: Store._serialise_assignments).
_SCHEMA_LOCK = 747_301
_ASSIGNMENTS_LOCK = 747_302
_ADVISORY_LOCK_SQL = "SELECT pg_advisory_xact_lock(?, hashtext(coalesce(current_schema(), '')))"

#: How many times a PostgreSQL transaction aborted by a deadlock or a serialization failure is
#: run again before the error is let through.
_TRANSACTION_TRIES = 5

#: The columns an execution had before version 4, copied as they are when the table is rebuilt.
_V3_EXECUTION_COLUMNS = (
    "id, task_id, agent_id, scheduled_at, started_at, finished_at, status, exit_code, "
    "stdout, stderr, stdout_dropped, stderr_dropped"
)

#: Rows per INSERT when many are written at once (well under SQLite's bound-variable limit).
_BATCH = 500

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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


class _OutputBytesField(peewee.BlobField):
    """Command output as its UTF-8 bytes (``BYTEA``), on PostgreSQL: its ``TEXT`` cannot hold
    the NUL character, which a command may well print."""

    def db_value(self, value: str | None) -> Any:
        return None if value is None else super().db_value(value.encode())  # type: ignore[no-untyped-call]

    def python_value(self, value: Any) -> str | None:
        return None if value is None else _output_text(value)


def _output_text(value: str | bytes | memoryview) -> str:
    """An output column as read: text from SQLite, UTF-8 bytes from PostgreSQL."""
    return value if isinstance(value, str) else bytes(value).decode()


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
    lease: Any

    def all(self) -> list[Any]:
        return [
            self.task,
            self.agent,
            self.assignment,
            self.execution,
            self.credential,
            self.lease,
        ]


def _make_tables(database: peewee.Database, output_field: type[peewee.Field]) -> _Tables:
    class TaskRow(_Model):
        id = peewee.UUIDField(primary_key=True)
        command = peewee.TextField()
        frequency = peewee.TextField()
        anchor = _TimeField()
        created_at = _TimeField(index=True)
        updated_at = _TimeField(null=True)
        name = peewee.TextField(null=True)
        #: The name casefolded, as searched (find_tasks): Python's folding, on both databases.
        name_folded = peewee.TextField(null=True)
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
        stdout = output_field(default="")
        stderr = output_field(default="")
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

    class LeaseRow(_Model):
        """Who does the work that must happen once (dispatch, reconciliation, liveness,
        pruning) among the servers sharing this database, and until when (see lease.py)."""

        name = peewee.TextField(primary_key=True)
        holder = peewee.TextField()
        expires_at = _TimeField()

        class Meta:
            table_name = "leases"

    tables = _Tables(TaskRow, AgentRow, AssignmentRow, ExecutionRow, CredentialRow, LeaseRow)
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
    """A name as searched: SQLite's ``lower`` folds ASCII only, PostgreSQL's depends on the
    database's locale; names are searched the way Python folds them (``name_folded``)."""
    return None if text is None else text.casefold()


def _state_condition(task: Any, state: TaskState) -> Any:
    """The SQL condition on the tasks table of a task being in ``state``."""
    if state is TaskState.DELETED:
        return task.deleted_at.is_null(False)
    paused = task.paused == (state is TaskState.PAUSED)
    return task.deleted_at.is_null() & paused


def _guard_calls(cls: type[Store]) -> type[Store]:
    """Make every public method of ``cls`` one call on the database, through
    :meth:`Store._guarded` (a pooled connection and :class:`DatabaseUnavailable` on
    PostgreSQL). Done here rather than method by method so that a method added later cannot
    forget it (a test checks them all)."""
    for name, member in list(vars(cls).items()):
        if name.startswith("_") or name in _UNGUARDED or not inspect.isfunction(member):
            continue
        setattr(cls, name, _guard(member))
    return cls


#: The public methods that are not calls on the database.
_UNGUARDED = frozenset({"close"})


def _guard(method: Callable[Concatenate[Store, P], T]) -> Callable[Concatenate[Store, P], T]:
    def guarded(self: Store, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._guarded(method, *args, **kwargs)

    functools.update_wrapper(guarded, method)
    return guarded


@_guard_calls
class Store:
    """The server's database, SQLite or PostgreSQL; the schema is created (or upgraded) when
    it is opened.

    ``location`` is a SQLite file (a path, or ``sqlite:///path``) or a PostgreSQL URL
    (``postgresql://…``): see :func:`~taskscheduler_server.database.database_location`.

    On SQLite, not thread-safe on its own: one caller at a time (:class:`AsyncStore` sees to
    it). On PostgreSQL, any number of threads may call at once: every public method checks a
    pooled connection out for its call and back in after it, raises
    :class:`DatabaseUnavailable` when the database cannot be reached (the next call tries
    again, on a new connection), and runs again a transaction aborted by a deadlock or a
    serialization failure (see :meth:`_guarded`).
    """

    def __init__(self, location: Path | str) -> None:
        self.location: Path | str = database_location(location)
        #: The SQLite file, or ``None`` on PostgreSQL.
        self.path: Path | None = None
        self._postgres = isinstance(self.location, str)
        #: ``"sqlite"`` or ``"postgresql"``.
        self.backend = "postgresql" if self._postgres else "sqlite"
        #: How many calls may run at once (AsyncStore's limiter).
        self.concurrency = POSTGRES_CONCURRENCY if self._postgres else 1
        self._db: Any
        if isinstance(self.location, str):
            self._db = open_postgresql(self.location)
            self._tables = _make_tables(self._db, _OutputBytesField)
            self._open_postgres()
        else:
            self.path = self.location
            self._open_sqlite(self.location)

    def _open_sqlite(self, path: Path) -> None:
        _create_private(path)
        self._db = open_sqlite(path)
        self._db.register_function(_casefold, "tsched_casefold", 1, deterministic=True)
        self._tables = _make_tables(self._db, peewee.TextField)
        try:
            self._db.connect()
            self._create_schema()
        except peewee.DatabaseError as error:  # not a database, locked, unwritable, …
            self.close()
            raise ServerError(f"cannot open the database {path}: {error}") from error
        except BaseException:
            self.close()
            raise

    def _open_postgres(self) -> None:
        where = describe_database(self.location)
        try:
            self._guarded(Store._create_postgres_schema)
        except DatabaseUnavailable as error:
            self.close()
            raise DatabaseUnavailable(f"cannot reach the database {where}: {error}") from None
        except peewee.PeeweeException as error:  # no such database, no right to create, …
            self.close()
            raise ServerError(f"cannot open the database {where}: {first_line(error)}") from None
        except BaseException:
            self.close()
            raise

    def _create_schema(self) -> None:
        """Create the tables of a new SQLite file, or upgrade an older one, in one transaction."""
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
                        self._db.execute_sql(statement)
                if version < 4:
                    self._rebuild_executions()
            self._db.create_tables(self._tables.all(), safe=True)
            self._db.pragma("user_version", SCHEMA_VERSION)

    def _create_postgres_schema(self) -> None:
        """Create the tables in an empty PostgreSQL schema, or upgrade older ones, in one
        transaction; the version is the one row of ``tsched_schema_version``.

        The transaction first takes an advisory lock (on this schema): of two servers starting
        at once on an empty database, the second waits, then finds the schema made.
        """
        where = describe_database(self.location)
        with self._db.atomic():
            self._execute(_ADVISORY_LOCK_SQL, (_SCHEMA_LOCK,))
            self._execute('CREATE TABLE IF NOT EXISTS "tsched_schema_version" ("version" BIGINT)')
            versions = self._execute('SELECT max("version") FROM "tsched_schema_version"')
            (version,) = versions.fetchone()
            if version is not None and version > SCHEMA_VERSION:
                raise ServerError(
                    f"the database {where} has schema version {version}; this server knows up "
                    f"to {SCHEMA_VERSION}: upgrade the server"
                )
            if version is not None and version < _POSTGRES_FIRST_VERSION:
                raise ServerError(
                    f"the database {where} has schema version {version}, which no taskscheduler "
                    "server writes on PostgreSQL"
                )
            for step in range(version or SCHEMA_VERSION, SCHEMA_VERSION):
                for statement in _POSTGRES_UPGRADES[step]:
                    self._execute(statement)
            self._db.create_tables(self._tables.all(), safe=True)
            if version is None:
                self._execute('INSERT INTO "tsched_schema_version" VALUES (?)', (SCHEMA_VERSION,))
            else:
                self._execute('UPDATE "tsched_schema_version" SET "version" = ?', (SCHEMA_VERSION,))

    def _rebuild_executions(self) -> None:
        """Version 4 keys executions by attempt too. SQLite cannot change a UNIQUE index in
        place, so the table is made anew and the rows copied (as first, final, scheduled
        attempts), inside the opening transaction: an upgrade is all or nothing. (SQLite only:
        PostgreSQL databases start at version 6.)"""
        execute = self._db.execute_sql
        execute("ALTER TABLE executions RENAME TO executions_v3")
        # The old indexes keep their names on the renamed table; the new table's have the same
        # names, so they go first.
        indexes = execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'executions_v3'"
            " AND sql IS NOT NULL"
        ).fetchall()
        for (name,) in indexes:
            execute(f'DROP INDEX "{name}"')
        self._tables.execution.create_table(safe=False)
        execute(
            f"INSERT INTO executions ({_V3_EXECUTION_COLUMNS}, attempt, trigger, final) "
            f"SELECT {_V3_EXECUTION_COLUMNS}, 1, '{Trigger.SCHEDULE.value}', 1 FROM executions_v3"
        )
        execute("DROP TABLE executions_v3")

    def close(self) -> None:
        if self._postgres:
            self._db.close_all()  # every pooled connection, idle or (a bug) still checked out
        elif not self._db.is_closed():
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

    def _guarded(
        self, method: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run ``method`` as one call on the database (every public method goes through here).

        SQLite: just the call (its one connection is open from ``__init__`` to ``close``); a
        file it cannot use now (locked by another process past the busy timeout, a failing or
        full disk) becomes :class:`DatabaseUnavailable` too.
        PostgreSQL: with a connection checked out of the pool for this thread (a call within a
        call uses the one it has); a failure to reach the database becomes
        :class:`DatabaseUnavailable` (the broken connection is discarded on check-in, so the
        next call gets a new one); a transaction PostgreSQL aborted to break a deadlock or a
        serialization conflict is run again, since nothing of it was committed.
        """
        if not self._postgres:
            try:
                return method(self, *args, **kwargs)
            except peewee.OperationalError as error:
                if _sqlite_unavailable(error):
                    raise DatabaseUnavailable(first_line(error)) from error
                raise
        if not self._db.is_closed():
            return method(self, *args, **kwargs)
        for attempt in itertools.count(1):
            try:
                self._db.connect()
            except (peewee.PeeweeException, MaxConnectionsExceeded) as error:
                if connection_failure(error, self._db):
                    raise DatabaseUnavailable(first_line(error)) from error
                raise
            try:
                return method(self, *args, **kwargs)
            except (peewee.PeeweeException, MaxConnectionsExceeded) as error:
                if connection_failure(error, self._db):
                    raise DatabaseUnavailable(first_line(error)) from error
                if attempt < _TRANSACTION_TRIES and _transaction_conflict(error):
                    logger.info("transaction aborted (%s); running it again", first_line(error))
                    continue
                raise
            finally:
                self._check_in()
        raise AssertionError("unreachable")

    def _check_in(self) -> None:
        """Give this thread's connection back to the pool (which throws a broken one away).

        If even that fails, the connection is closed and forgotten, and this thread's state
        cleared, so that its next call checks out a connection afresh.
        """
        try:
            self._db.close()
        except Exception:
            logger.warning("could not return a database connection to the pool", exc_info=True)
            connection = self._db._state.conn
            self._db._state.reset()
            if connection is not None:
                self._db._close(connection, close_conn=True)

    def _execute(self, sql: str, parameters: Sequence[Any] = ()) -> Any:
        """Run hand-written ``sql`` (``?`` placeholders) on this database; its cursor."""
        if self._postgres:
            sql = _postgres_sql(sql)
        return self._db.execute_sql(sql, parameters)

    def _serialise_assignments(self) -> None:
        """On PostgreSQL, wait for the other transactions that decide assignments (a task
        created, changed or removed; an agent registered or relabelled) to finish first.

        Each reads one side (the agents, or the tasks) and writes the assignments of the
        other: two at once on two servers would each miss the other's uncommitted row (a task
        created while an agent registers would be assigned to it by neither). SQLite has one
        writer at a time anyway. Called first thing in the transaction.
        """
        if self._postgres:
            self._execute(_ADVISORY_LOCK_SQL, (_ASSIGNMENTS_LOCK,))

    # -- tasks ---------------------------------------------------------------------------

    def create_task(self, task: Task) -> list[Assignment]:
        """Store a new task and assign it to every agent its targets pick; returns those
        assignments (none for a task created deleted)."""
        t = self._tables
        with self._db.atomic():
            self._serialise_assignments()
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
        rows = self._select(_TASK_SQL, (task_id.hex,))
        return _stored_task(rows[0]) if rows else None

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
        condition: Any = peewee.Value(False)
        for state in states:
            condition |= _state_condition(t.task, state)
        if name is not None:
            position = peewee.fn.strpos if self._postgres else peewee.fn.instr
            condition &= position(t.task.name_folded, name.casefold()) > 0
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
            self._serialise_assignments()
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
            self._serialise_assignments()
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
            self._serialise_assignments()
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
            self._serialise_assignments()
            changed = (
                t.agent.update(labels=text)
                .where((t.agent.id == agent_id) & (t.agent.labels != text))
                .execute()
            )
            if changed:
                self._sync_agent(agent_id, labels, now)
        return bool(changed)

    def add_agent_credential(self, credential: AgentCredential) -> bool:
        """Store the credential of ``credential.agent_id`` unless that agent has one already;
        ``True`` if stored.

        Never replaces one: a credential is issued once per agent id, and of two servers
        issuing one for the same id at once (two replicas), exactly one stores it (the other's
        insert waits for the first to commit, then finds the id taken).
        """
        t = self._tables
        with self._db.atomic():
            inserted = (
                t.credential.insert(
                    agent_id=credential.agent_id,
                    token_sha256=credential.token_sha256,
                    server_token=credential.server_token,
                )
                .on_conflict_ignore()
                .as_rowcount()
                .execute()
            )
        return bool(inserted)

    def agent_credentials(self, agent_ids: Collection[UUID] | None = None) -> list[AgentCredential]:
        """Every agent credential issued, or those of ``agent_ids`` only."""
        table = self._tables.credential
        if agent_ids is None:
            return [_credential(row) for row in table.select()]
        ids = list(agent_ids)
        return [
            _credential(row)
            for start in range(0, len(ids), _BATCH)
            for row in table.select().where(table.agent_id.in_(ids[start : start + _BATCH]))
        ]

    def credential_by_digest(self, token_sha256: str) -> AgentCredential | None:
        """The credential whose agent token has this SHA-256 (hex), if any."""
        table = self._tables.credential
        row = table.get_or_none(table.token_sha256 == token_sha256)
        return None if row is None else _credential(row)

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

    def last_seen(self, agent_ids: Collection[UUID]) -> dict[UUID, datetime]:
        """When each of ``agent_ids`` was last heard from (registration, heartbeat or report,
        through any replica); unknown agents are left out. One query on the primary key (per
        :data:`_BATCH` agents): the lease holder's dispatcher asks it every poll while some of
        its lanes back off."""
        t = self._tables
        ids = sorted(set(agent_ids), key=str)
        seen: dict[UUID, datetime] = {}
        # No transaction: each agent's time stands on its own.
        for start in range(0, len(ids), _BATCH):
            query = t.agent.select(t.agent.id, t.agent.last_seen_at).where(
                t.agent.id.in_(ids[start : start + _BATCH])
            )
            seen.update((row.id, row.last_seen_at) for row in query)
        return seen

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
                # The condition again: on PostgreSQL a heartbeat committed by another replica
                # after the SELECT must keep its agent alive (the UPDATE sees it, and waits
                # for one still in flight).
                t.agent.update(status=AgentStatus.LOST.value).where(
                    t.agent.id.in_([agent.id for agent in lost]) & condition
                ).execute()
                still = {
                    row.id
                    for row in t.agent.select(t.agent.id).where(
                        t.agent.id.in_([agent.id for agent in lost])
                        & (t.agent.status == AgentStatus.LOST.value)
                    )
                }
                lost = [agent for agent in lost if agent.id in still]
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
        rows = self._select(_LOST_AGENTS_SQL, (AgentStatus.LOST.value,))
        return frozenset(_stored_uuid(agent_id) for (agent_id,) in rows)

    # -- assignments ---------------------------------------------------------------------

    def assignment_times(self, task_id: UUID) -> dict[UUID, datetime]:
        """When each agent that was ever assigned ``task_id`` was (last) assigned it.

        Agents whose assignment ended are in too: their late reports are still theirs to send.
        """
        return {agent: span[0] for agent, span in self.assignment_spans(task_id).items()}

    def assignment_spans(self, task_id: UUID) -> dict[UUID, tuple[datetime, datetime | None]]:
        """For each agent ever assigned ``task_id``: since when, and until when (``None``:
        still assigned)."""
        rows = self._select(_ASSIGNMENT_SPANS_SQL, (task_id.hex,))
        return {
            _stored_uuid(agent_id): (from_micros(since), _optional_time(until))
            for agent_id, since, until in rows
        }

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

    def undelivered_by_agent(self, agent_ids: Collection[UUID]) -> dict[UUID, list[Assignment]]:
        """:meth:`undelivered` of each of ``agent_ids`` at once (an agent with none maps to
        ``[]``): what the dispatcher's idle lanes need when a task is created, read in one call
        rather than one per agent."""
        t = self._tables
        found: dict[UUID, list[Assignment]] = {agent_id: [] for agent_id in agent_ids}
        ids = sorted(found, key=str)
        with self._db.atomic():
            for start in range(0, len(ids), _BATCH):
                query = (
                    t.assignment.select(t.assignment, t.task, t.agent)
                    .join_from(t.assignment, t.task)
                    .join_from(t.assignment, t.agent)
                    .where(
                        t.assignment.delivered_at.is_null()
                        & t.assignment.agent.in_(ids[start : start + _BATCH])
                    )
                    .order_by(t.assignment.assigned_at, t.assignment.task)
                )
                for row in query:
                    found[row.agent.id].append(_assignment(row))
        return found

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
        [result] = self.record_executions([execution], seen_at=seen_at)
        if isinstance(result, TaskNotFound):
            raise result
        return result

    def record_executions(
        self,
        executions: Sequence[Execution],
        *,
        seen_at: datetime | Sequence[datetime | None] | None = None,
    ) -> list[bool | TaskNotFound]:
        """Store each of ``executions`` once, all in one transaction; one result each, in order.

        ``True``: stored now; ``False``: a repeat of one stored before, or of one earlier in
        ``executions`` (the first of two with the same key is the one stored); a
        :class:`TaskNotFound`, returned rather than raised so that the others are still stored,
        for an unknown (or purged) task. When this returns, every new one is committed.

        ``seen_at`` is when the reports arrived, one time for all or one per execution: each
        agent that reported on a known task counts as heard from at the latest of its times,
        once (as :meth:`record_execution` does for one).

        This is the server's hottest write, so it is written by hand, in few statements:
        peewee builds an insert in ~80 µs a row, ten times what SQLite takes to store it, and
        every statement (every row a statement returns, too) releases and takes back the GIL
        from the event loop, which, busy parsing the next requests, may keep it for up to the
        interpreter's switch interval each time. So: one ``SELECT`` for the known tasks, one
        multi-row ``INSERT … ON CONFLICT DO NOTHING`` per :data:`_BATCH` rows, one ``UPDATE``
        for the agents seen. New vs duplicate stays exact per row, even with several servers
        on one PostgreSQL database reporting the same executions at once (see
        :meth:`_insert_sqlite` and :meth:`_insert_postgres`).
        """
        times = list(seen_at) if isinstance(seen_at, Sequence) else [seen_at] * len(executions)
        if len(times) != len(executions):
            raise ValueError(f"{len(times)} seen_at times for {len(executions)} executions")
        if not executions:
            return []
        to_row = _postgres_execution_row if self._postgres else _execution_row
        rows = [(to_row(execution), execution) for execution in executions]
        with self._db.atomic():
            known = self._known_task_keys({row[0] for row, _ in rows})
            # In key order: consecutive inserts then land in neighbouring index pages, which
            # saves SQLite a fifth of its work on a batch spread over many tasks and agents;
            # and two PostgreSQL transactions inserting the same keys wait for each other in
            # the same order, never in a cycle (a deadlock).
            # (The sort is stable: of two reports with one key, the first is still stored.)
            accepted = sorted((row for row, _ in rows if row[0] in known), key=_execution_key)
            if self._postgres:
                inserted: set[tuple[Any, ...]] | None = self._insert_postgres(accepted)
            else:
                inserted = self._insert_sqlite(accepted)
            self._seen_many(rows, times, known)
        results: list[bool | TaskNotFound] = []
        for row, execution in rows:
            if row[0] not in known:
                results.append(TaskNotFound(execution.task_id))
            elif inserted is None:
                results.append(True)
            elif (key := _execution_key(row)) in inserted:
                inserted.discard(key)  # a second report with this key is its duplicate
                results.append(True)
            else:
                results.append(False)
        return results

    def _insert_sqlite(self, accepted: list[tuple[Any, ...]]) -> set[tuple[Any, ...]] | None:
        """Insert ``accepted`` (rows of known tasks, in key order), skipping stored keys; the
        keys inserted, or ``None`` if every row was.

        Only when fewer rows were inserted than given (some were repeats, the rare case) are
        the keys inserted read back: those of the rows whose ``id`` is past the largest before
        this transaction (the transaction holds the database's one write lock, so no one else
        inserts meanwhile).
        """
        execute: Callable[..., Any] = self._db.execute_sql
        (newest,) = execute('SELECT max("id") FROM "executions"').fetchone()
        written = 0
        for start in range(0, len(accepted), _BATCH):
            chunk = accepted[start : start + _BATCH]
            values = [value for row in chunk for value in row]
            written += execute(_insert_executions_sql(len(chunk), False), values).rowcount
        if written == len(accepted):
            return None
        return set(execute(_INSERTED_SQL, [newest or 0]).fetchall())

    def _insert_postgres(self, accepted: list[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
        """:meth:`_insert_sqlite` on PostgreSQL, where other servers insert at the same time:
        the ``INSERT`` returns the keys it inserted itself.

        Two transactions inserting one key: the second waits on the unique index until the
        first ends, then skips the row (first committed) or inserts it (first rolled back), so
        exactly one of them is told the execution is new.
        """
        execute: Callable[..., Any] = self._db.execute_sql
        inserted: set[tuple[Any, ...]] = set()
        for start in range(0, len(accepted), _BATCH):
            chunk = accepted[start : start + _BATCH]
            values = [value for row in chunk for value in row]
            inserted.update(execute(_insert_executions_sql(len(chunk), True), values).fetchall())
        return inserted

    def _seen_many(
        self,
        rows: list[tuple[tuple[Any, ...], Execution]],
        times: list[datetime | None],
        known: set[str],
    ) -> None:
        """Each agent with a report on a known task is heard from at the latest of its times."""
        seen: dict[str, datetime] = {}
        for (row, _), moment in zip(rows, times, strict=True):
            if moment is not None and row[0] in known:
                agent = row[1]
                seen[agent] = max(moment, seen.get(agent, moment))
        for start in range(0, len(seen), _BATCH):
            chunk = list(seen.items())[start : start + _BATCH]
            values = [value for agent, moment in chunk for value in (agent, _micros(moment))]
            execute: Callable[..., Any] = self._db.execute_sql
            execute(_seen_sql(len(chunk), self._postgres), [*values, AgentStatus.ALIVE.value])

    def _known_task_keys(self, keys: Collection[str]) -> set[str]:
        """Which of ``keys`` (task ids as stored: 32 hex digits) name a stored task.

        On PostgreSQL the tasks found are locked against deletion (``FOR KEY SHARE``: other
        reports are not held up) until the transaction ends, so that a task purged by another
        server meanwhile cannot fail the insert of its executions.
        """
        known: set[str] = set()
        ordered = sorted(keys)
        for start in range(0, len(ordered), _BATCH):
            chunk = ordered[start : start + _BATCH]
            marks = ", ".join("?" * len(chunk))
            if self._postgres:
                sql = f'SELECT "id" FROM "tasks" WHERE "id" IN ({marks}) FOR KEY SHARE'
                known.update(found for (found,) in self._execute(sql, chunk).fetchall())
                continue
            # One row (one step of SQLite, see record_executions), not one per task.
            sql = f'SELECT group_concat("id", \',\') FROM "tasks" WHERE "id" IN ({marks})'
            (found,) = self._execute(sql, chunk).fetchone()
            known.update(found.split(",") if found else ())
        return known

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
        # One statement: the fire times of the page (from the (task, scheduled_at) index), and
        # the executions of those times.
        conditions = ['"task_id" = ?']
        parameters: list[Any] = [task_id.hex]
        if before is not None:
            conditions.append('"scheduled_at" < ?')
            parameters.append(to_micros(before))
        if ran_only:
            conditions.append(f'"status" NOT IN ({", ".join("?" * len(_NOT_RAN))})')
            parameters.extend(_NOT_RAN)
        sql = (
            f'SELECT {_read_columns(with_output)} FROM "executions" WHERE "task_id" = ? AND'
            ' "scheduled_at" IN (SELECT DISTINCT "scheduled_at" FROM "executions" WHERE'
            f' {" AND ".join(conditions)} ORDER BY "scheduled_at" DESC LIMIT ?)'
        )
        rows = self._select(sql, (task_id.hex, *parameters, limit))
        return group_runs(_stored_execution(task_id, row) for row in rows)

    def run(self, task_id: UUID, scheduled_at: datetime) -> Run | None:
        """The run of ``task_id`` at ``scheduled_at``, with its output; ``None`` if no report."""
        sql = (
            f'SELECT {_read_columns(with_output=True)} FROM "executions"'
            ' WHERE "task_id" = ? AND "scheduled_at" = ?'
        )
        rows = self._select(sql, (task_id.hex, to_micros(scheduled_at)))
        runs = group_runs(_stored_execution(task_id, row) for row in rows)
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
        conditions = ['"task_id" = ?']
        parameters: list[Any] = [task_id.hex]
        if agent_id is not None:
            conditions.append('"agent_id" = ?')
            parameters.append(agent_id.hex)
        if status is not None:
            conditions.append('"status" = ?')
            parameters.append(status.value)
        if since is not None:
            conditions.append('"scheduled_at" >= ?')
            parameters.append(to_micros(since))
        if until is not None:
            conditions.append('"scheduled_at" < ?')
            parameters.append(to_micros(until))
        if after is not None:
            conditions.append(
                '("scheduled_at" < ? OR ("scheduled_at" = ? AND'
                ' ("agent_id" > ? OR ("agent_id" = ? AND "attempt" < ?))))'
            )
            moment, agent = to_micros(after.scheduled_at), after.agent_id.hex
            parameters.extend((moment, moment, agent, agent, after.attempt))
        sql = (
            f'SELECT {_read_columns(with_output=True)} FROM "executions"'
            f" WHERE {' AND '.join(conditions)}"
            ' ORDER BY "scheduled_at" DESC, "agent_id", "attempt" DESC LIMIT ?'
        )
        rows = self._select(sql, (*parameters, limit))
        return [_stored_execution(task_id, row) for row in rows]

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
        rows = self._select(_RUN_TIMES_SQL, (task_id.hex, limit))
        return [from_micros(moment) for (moment,) in rows]

    def oldest_run_time(self, task_id: UUID) -> datetime | None:
        """The fire time of the oldest run of ``task_id`` stored, if any."""
        [(oldest,)] = self._select(_OLDEST_RUN_TIME_SQL, (task_id.hex,))
        return _optional_time(oldest)

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
            self._serialise_assignments()
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

    # -- leases --------------------------------------------------------------------------

    def acquire_lease(self, name: str, holder: str, *, now: datetime, expires_at: datetime) -> bool:
        """Take or renew the lease ``name`` for ``holder`` until ``expires_at``; ``True`` if
        ``holder`` holds it now.

        It is taken if no one holds it, if ``holder`` does already (a renewal), or if its
        holder's time ran out (``expires_at`` not after ``now``); otherwise nothing changes. One
        statement, so of two servers trying at once exactly one gets it.
        """
        # One statement: on PostgreSQL, of two servers inserting at once the second waits on
        # the unique name, then finds the row and checks the condition on it as committed.
        parameters = (name, holder, to_micros(expires_at), to_micros(now))
        changed: int = self._execute(_ACQUIRE_LEASE_SQL, parameters).rowcount
        return changed == 1

    def release_lease(self, name: str, holder: str) -> bool:
        """Give up the lease ``name`` if ``holder`` holds it (a graceful stop), so that another
        server takes it at once rather than when it expires; ``True`` if it was held."""
        t = self._tables
        with self._db.atomic():
            deleted = t.lease.delete().where((t.lease.name == name) & (t.lease.holder == holder))
            return bool(deleted.execute())

    def lease_holder(self, name: str, *, now: datetime) -> tuple[str, datetime] | None:
        """Who holds the lease ``name``, and until when; ``None`` if no one (or it expired)."""
        t = self._tables
        row = t.lease.get_or_none((t.lease.name == name) & (t.lease.expires_at > now))
        return None if row is None else (row.holder, row.expires_at)

    def ping(self) -> None:
        """Reach the database (one trivial query): raises if it cannot be reached."""
        self._execute("SELECT 1").fetchone()

    def _select(self, sql: str, parameters: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows of the hand-written ``sql`` (see :data:`_TASK_SQL` for why by hand)."""
        rows: list[tuple[Any, ...]] = self._execute(sql, parameters).fetchall()
        return rows


def _task_columns(task: Task) -> dict[str, Any]:
    """The columns of a task's row (all but its id)."""
    return {
        "command": task.command,
        "frequency": str(task.frequency),
        "anchor": task.anchor,
        "created_at": task.created_at,
        "updated_at": task.updated_at,
        "name": task.name,
        "name_folded": _casefold(task.name),
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


def _credential(row: Any) -> AgentCredential:
    return AgentCredential(
        agent_id=row.agent_id, token_sha256=row.token_sha256, server_token=row.server_token
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


# -- the reads behind latest_output, runs and executions ----------------------------------
#
# Written as SQL by hand, like the executions' writes: peewee takes a few hundred microseconds
# to build each statement and tens to turn each row into a model, while SQLite answers these
# from its indexes in tens of microseconds (latest_output's reads, on a file of a million
# executions: ~4 ms through peewee, ~0.3 ms so). The rows are read as stored (UUIDs as 32 hex
# digits, times as microseconds: see _TimeField) and turned into core models here.

#: The columns of a task, in the order :func:`_stored_task` takes them.
_TASK_SQL = (
    'SELECT "id", "command", "frequency", "anchor", "created_at", "updated_at", "name",'
    ' "policy", "targets", "paused", "deleted_at" FROM "tasks" WHERE "id" = ?'
)
_LOST_AGENTS_SQL = 'SELECT "id" FROM "agents" WHERE "status" = ?'
_ASSIGNMENT_SPANS_SQL = (
    'SELECT "agent_id", "assigned_at", "unassigned_at" FROM "assignments" WHERE "task_id" = ?'
)
_RUN_TIMES_SQL = (
    'SELECT DISTINCT "scheduled_at" FROM "executions" WHERE "task_id" = ?'
    ' ORDER BY "scheduled_at" DESC LIMIT ?'
)
_OLDEST_RUN_TIME_SQL = 'SELECT min("scheduled_at") FROM "executions" WHERE "task_id" = ?'

#: The statuses of executions that started no process: a run of only these printed nothing.
_NOT_RAN = tuple(status.value for status in ExecutionStatus if not status.ran)

#: The columns of an execution read back, in the order :func:`_stored_execution` takes them
#: (its task is known: every read is of one task's); the output last, read only when shown.
_READ_COLUMNS = (
    '"agent_id", "scheduled_at", "started_at", "finished_at", "status", "exit_code",'
    ' "stdout_dropped", "stderr_dropped", "attempt", "trigger", "final"'
)


def _read_columns(with_output: bool) -> str:
    return f'{_READ_COLUMNS}, "stdout", "stderr"' if with_output else _READ_COLUMNS


# Every read names the same few agents over and over.
@functools.lru_cache(maxsize=4096)
def _stored_uuid(text: str) -> UUID:
    return UUID(text)


def _optional_time(value: int | None) -> datetime | None:
    return None if value is None else from_micros(value)


def _stored_task(values: Sequence[Any]) -> Task:
    """A task from the columns of :data:`_TASK_SQL` (what :func:`_task` makes of a model)."""
    (
        task_id,
        command,
        frequency,
        anchor,
        created_at,
        updated_at,
        name,
        policy,
        targets,
        paused,
        deleted_at,
    ) = values
    return Task(
        id=_stored_uuid(task_id),
        command=command,
        frequency=_recurrence(frequency),
        anchor=from_micros(anchor),
        created_at=from_micros(created_at),
        updated_at=_optional_time(updated_at),
        name=name,
        targets=_targets(targets),
        paused=bool(paused),
        deleted_at=_optional_time(deleted_at),
        **_policy(policy).policy_fields(),
    )


def _stored_execution(task_id: UUID, values: Sequence[Any]) -> Execution:
    """An execution of ``task_id`` from the columns of :func:`_read_columns`."""
    agent_id, scheduled_at, started_at, finished_at, status, exit_code = values[:6]
    stdout_dropped, stderr_dropped, attempt, trigger, final = values[6:11]
    stdout, stderr = values[11:] or ("", "")
    return Execution(
        task_id=task_id,
        agent_id=_stored_uuid(agent_id),
        scheduled_at=from_micros(scheduled_at),
        started_at=from_micros(started_at),
        finished_at=from_micros(finished_at),
        status=ExecutionStatus(status),
        exit_code=exit_code,
        stdout=_output_text(stdout) if stdout else "",
        stderr=_output_text(stderr) if stderr else "",
        stdout_dropped=stdout_dropped,
        stderr_dropped=stderr_dropped,
        attempt=attempt,
        trigger=Trigger(trigger),
        final=bool(final),
    )


#: The columns :meth:`Store.record_executions` writes, in the order of :func:`_execution_row`
#: (every column of the executions table but its ``id``; a test keeps the two in step).
_EXECUTION_COLUMNS = (
    "task_id",
    "agent_id",
    "scheduled_at",
    "started_at",
    "finished_at",
    "status",
    "exit_code",
    "stdout",
    "stderr",
    "stdout_dropped",
    "stderr_dropped",
    "attempt",
    "trigger",
    "final",
)
#: The unique key of an execution, and where its parts are in a row.
_EXECUTION_KEY = ("task_id", "agent_id", "scheduled_at", "attempt")
_KEY_INDEXES = tuple(_EXECUTION_COLUMNS.index(column) for column in _EXECUTION_KEY)


def _quoted(columns: Iterable[str]) -> str:
    return ", ".join(f'"{column}"' for column in columns)


#: The keys of the executions inserted after the one with the given ``id``.
_INSERTED_SQL = f'SELECT {_quoted(_EXECUTION_KEY)} FROM "executions" WHERE "id" > ?'

#: Take the lease (parameters: name, holder, expires_at, now) if it is free, held by this
#: holder, or expired: one row changed if so, none if another holds it.
_ACQUIRE_LEASE_SQL = (
    'INSERT INTO "leases" ("name", "holder", "expires_at") VALUES (?, ?, ?) '
    'ON CONFLICT ("name") DO UPDATE SET "holder" = excluded."holder", '
    '"expires_at" = excluded."expires_at" '
    'WHERE "leases"."holder" = excluded."holder" OR "leases"."expires_at" <= ?'
)


@functools.lru_cache(maxsize=4096)
def _postgres_sql(sql: str) -> str:
    """Hand-written SQL for psycopg2: its placeholder is ``%s`` (and ``%`` is escaped)."""
    return sql.replace("%", "%%").replace("?", "%s")


@functools.lru_cache(maxsize=128)
def _seen_sql(agents: int, postgres: bool) -> str:
    """``Store._seen`` for ``agents`` agents in one statement (parameters: agent id, time,
    …, then the status ``alive``): each is ``alive``, its ``last_seen_at`` never moved back
    by a late report carrying an earlier time. (The larger of two values is SQLite's scalar
    ``max``, PostgreSQL's ``GREATEST``; the time is cast, as PostgreSQL cannot tell the type
    of a bare parameter in ``VALUES``.)"""
    pairs = ", ".join(["(?, CAST(? AS BIGINT))"] * agents)
    greatest = "GREATEST" if postgres else "max"
    sql = (
        f'WITH "seen"("id", "at") AS (VALUES {pairs}) UPDATE "agents" SET "status" = ?, '
        f'"last_seen_at" = {greatest}("last_seen_at", '
        '(SELECT "at" FROM "seen" WHERE "seen"."id" = "agents"."id")) '
        'WHERE "id" IN (SELECT "id" FROM "seen")'
    )
    return _postgres_sql(sql) if postgres else sql


@functools.lru_cache(maxsize=128)
def _insert_executions_sql(rows: int, postgres: bool) -> str:
    """``INSERT`` of ``rows`` executions, skipping keys already stored; on PostgreSQL it
    returns the keys it inserted (see Store._insert_postgres)."""
    one = "(" + ", ".join("?" * len(_EXECUTION_COLUMNS)) + ")"
    sql = (
        f'INSERT INTO "executions" ({_quoted(_EXECUTION_COLUMNS)}) VALUES '
        f"{', '.join([one] * rows)} ON CONFLICT ({_quoted(_EXECUTION_KEY)}) DO NOTHING"
    )
    if not postgres:
        return sql
    return _postgres_sql(f"{sql} RETURNING {_quoted(_EXECUTION_KEY)}")


def _execution_row(execution: Execution) -> tuple[Any, ...]:
    """The values of ``execution``'s row as SQLite stores them (what peewee's fields write:
    UUIDs as 32 hex digits, times as microseconds, booleans as 0 / 1)."""
    return (
        execution.task_id.hex,
        execution.agent_id.hex,
        _micros(execution.scheduled_at),
        _micros(execution.started_at),
        _micros(execution.finished_at),
        execution.status.value,
        execution.exit_code,
        execution.stdout,
        execution.stderr,
        execution.stdout_dropped,
        execution.stderr_dropped,
        execution.attempt,
        execution.trigger.value,
        int(execution.final),
    )


def _postgres_execution_row(execution: Execution) -> tuple[Any, ...]:
    """:func:`_execution_row` as PostgreSQL stores it: the output as UTF-8 bytes (``BYTEA``),
    ``final`` a boolean."""
    row = list(_execution_row(execution))
    row[_STDOUT], row[_STDERR] = execution.stdout.encode(), execution.stderr.encode()
    row[_FINAL] = execution.final
    return tuple(row)


#: Where :func:`_postgres_execution_row` differs from :func:`_execution_row`.
_STDOUT, _STDERR, _FINAL = (_EXECUTION_COLUMNS.index(c) for c in ("stdout", "stderr", "final"))


#: SQLite's primary result codes of a file it cannot use now (another process holds the lock
#: past the busy timeout, the disk is failing or full, the file cannot be opened), rather than
#: a bad statement or value: answered 503, like PostgreSQL's.
_SQLITE_UNAVAILABLE = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
    }
)


def _sqlite_unavailable(error: BaseException) -> bool:
    """Whether ``error`` (peewee's, wrapping sqlite3's) says the file cannot be used now."""
    cause = error.args[0] if error.args else None
    if not isinstance(cause, sqlite3.Error):
        cause = error.__context__
    code = getattr(cause, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _SQLITE_UNAVAILABLE


def _transaction_conflict(error: BaseException) -> bool:
    """A PostgreSQL transaction aborted to break a deadlock or a serialization conflict
    (peewee wraps the driver's error, its first argument): running it again is safe."""
    cause = error.args[0] if error.args else None
    return isinstance(cause, psycopg2.extensions.TransactionRollbackError)


def _micros(moment: datetime) -> int:
    """:func:`to_micros` of a time known to be aware (an execution's), in integer arithmetic:
    a quarter of the time of its floor division of timedeltas, on the hottest write."""
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _execution_key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(row[index] for index in _KEY_INDEXES)


@attrs.define(eq=False)
class _QueuedWrite:
    """One caller's executions in :class:`AsyncStore`'s queue of writes, and their outcome."""

    executions: Sequence[Execution]
    seen_at: datetime | None
    #: Set once the write is done, or when its caller is to flush the queue next.
    wake: trio.Event = attrs.field(factory=trio.Event)
    done: bool = False
    results: list[bool | TaskNotFound] = attrs.field(factory=list)
    error: BaseException | None = None

    def settle(
        self, results: list[bool | TaskNotFound] | None = None, error: BaseException | None = None
    ) -> None:
        self.results, self.error, self.done = results or [], error, True
        self.wake.set()

    def outcome(self) -> list[bool | TaskNotFound]:
        """One result per execution; raises what the write raised."""
        if self.error is not None:
            raise self.error
        return self.results


def _timed_record(
    store: Store, executions: list[Execution], seen_at: list[datetime | None]
) -> tuple[list[bool | TaskNotFound], float]:
    """:meth:`Store.record_executions`, and the seconds it took (in its worker thread: not
    counting the wait for the store, which a long read may hold)."""
    began = time.perf_counter()
    results = store.record_executions(executions, seen_at=seen_at)
    return results, time.perf_counter() - began


class StoreSlot:
    """A place in line of its own for some calls to the store (see :meth:`AsyncStore.call_apart`):
    one call at a time, beside the calls of :meth:`AsyncStore.call` on PostgreSQL.

    ``abandon_on_cancel``: a cancelled caller does not wait for its call to end (the thread
    goes on, and holds the slot until it does): for a probe that must answer in time however
    long the database takes to connect.
    """

    def __init__(self, *, abandon_on_cancel: bool = False) -> None:
        self.limiter = trio.CapacityLimiter(1)
        self.abandon_on_cancel = abandon_on_cancel


class AsyncStore:
    """The one door from trio to the :class:`Store`: a worker thread per call, one at a time on
    SQLite, up to :attr:`Store.concurrency` at once on PostgreSQL (a pooled connection each).

    ``await store.call(Store.get_task, task_id)`` runs ``Store.get_task(store, task_id)`` in a
    thread. Calls are not abandoned on cancellation: a write that started is finished (and
    committed) before the caller sees ``Cancelled``.

    Reports of executions take :meth:`record_execution` and :meth:`record_executions`
    instead, which commit the reports of concurrent requests in one transaction (group
    commit): with ``synchronous=FULL`` every commit is an fsync, and one thread hop and one
    fsync for many requests is what lets the server keep up with many agents reporting at once.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._limiter = trio.CapacityLimiter(store.concurrency)
        #: Writes waiting for the next flush, and whether some caller is flushing (or has been
        #: asked to flush next).
        self._queue: list[_QueuedWrite] = []
        self._flushing = False
        #: How many writes the last flush carried, and how long it took (see _gather).
        self._last_size = 0
        self._last_seconds = 0.0
        #: Set when the queue holds ``_wanted`` writes, while a flush waits for them.
        self._gathered: trio.Event | None = None
        self._wanted = 0

    async def call(
        self, method: Callable[Concatenate[Store, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        return await trio.to_thread.run_sync(
            functools.partial(method, self.store, *args, **kwargs), limiter=self._limiter
        )

    async def call_apart(
        self,
        slot: StoreSlot,
        method: Callable[Concatenate[Store, P], T],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """:meth:`call`, but in ``slot``'s line rather than behind the calls of :meth:`call`.

        For the calls that must not wait for the API's: the lease's renewals (API calls queued
        on a lock must not starve them until the lease is lost) and the readiness probes. On
        PostgreSQL each slot runs one call at a time beside the :attr:`Store.concurrency`
        calls of :meth:`call`, on a pooled connection of its own (the pool holds more than
        those). On SQLite it is just :meth:`call`: one shared connection, one call at a time.
        """
        if self.store.concurrency == 1:
            return await self.call(method, *args, **kwargs)
        return await trio.to_thread.run_sync(
            functools.partial(method, self.store, *args, **kwargs),
            limiter=slot.limiter,
            abandon_on_cancel=slot.abandon_on_cancel,
        )

    async def record_execution(
        self, execution: Execution, *, seen_at: datetime | None = None
    ) -> bool:
        """:meth:`Store.record_execution` through :meth:`record_executions`' group commit:
        ``True`` if new, ``False`` for a repeat; raises :class:`TaskNotFound`."""
        [result] = await self.record_executions([execution], seen_at=seen_at)
        if isinstance(result, TaskNotFound):
            raise result
        return result

    async def record_executions(
        self, executions: Sequence[Execution], *, seen_at: datetime | None = None
    ) -> list[bool | TaskNotFound]:
        """:meth:`Store.record_executions`, committed together with the writes of concurrent
        callers (one result per execution, in order).

        The caller queues its write; if no flush is running it flushes the queue itself (one
        :meth:`Store.record_executions` for every write queued), else it waits until a flush
        has taken and committed its write, or until it is asked to flush what queued
        meanwhile. Each caller flushes at most one batch, the one holding its own write, so
        none waits behind an endless stream of others' writes. It returns only after its own
        write is committed, with its own results: a write that fails fails alone (the batch
        is then written again, one caller's write at a time).

        Cancellation: a caller cancelled before its write is queued stores nothing; once it
        is queued, the write is committed before the caller sees ``Cancelled`` (a caller that
        is flushing finishes first and returns its results), and a flush under way finishes,
        so that no one else's write is stranded either.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        write = _QueuedWrite(executions, seen_at)
        self._queue.append(write)
        if self._gathered is not None and len(self._queue) >= self._wanted:
            self._gathered.set()
        if self._flushing:
            try:
                await write.wake.wait()
            except trio.Cancelled:
                # Queued, so committed all the same: wait for that (flushing, if this caller
                # is asked to) before letting the cancellation through. Only now is a cancel
                # scope paid for, on the rare cancelled wait; a flush pays one per batch.
                with trio.CancelScope(shield=True):
                    await write.wake.wait()
                    if not write.done:
                        await self._flush()
                raise
        else:
            self._flushing = True
        if not write.done:
            with trio.CancelScope(shield=True):
                await self._flush()
        return write.outcome()

    async def _flush(self) -> None:
        """Write every queued execution in one transaction; then hand the flushing on."""
        await self._gather()
        batch, self._queue = self._queue, []
        try:
            await self._write(batch)
            self._last_size = len(batch)
        except BaseException as error:  # not an error of a write: _write settles those
            for write in batch:
                if not write.done:
                    write.settle(error=error)
            raise
        finally:
            if self._queue:
                self._queue[0].wake.set()  # its caller flushes what came in meanwhile
            else:
                self._flushing = False

    async def _gather(self) -> None:
        """Wait a little for the writes that are about to queue, when some surely are.

        Under a steady load of many reporters, the first report after a flush would otherwise
        be flushed alone while the others queue behind it: flushes then alternate between one
        write and all the others, and the event loop idles through the lone one's fsync. So
        when the last flush carried several writes, wait until half as many are queued, or
        for as long as that flush took in the database, whichever comes first. With one
        reporter at a time (the last flush carried one write) nothing waits.
        """
        await trio.sleep(0)  # the requests ready to run queue their writes first
        wanted = self._last_size // 2
        if len(self._queue) >= wanted:
            return
        self._gathered, self._wanted = trio.Event(), wanted
        try:
            with trio.move_on_after(self._last_seconds):
                await self._gathered.wait()
        finally:
            self._gathered = None

    async def _write(self, batch: list[_QueuedWrite]) -> None:
        executions = [execution for write in batch for execution in write.executions]
        seen_at = [write.seen_at for write in batch for _ in write.executions]
        try:
            results, self._last_seconds = await self.call(_timed_record, executions, seen_at)
        except Exception as error:
            if len(batch) == 1 or isinstance(error, DatabaseUnavailable):
                # (A database out of reach fails every write alike: no use trying each.)
                for write in batch:
                    write.settle(error=error)
                return
            # One bad write must not fail the others: each again in a transaction of its own,
            # so that each caller gets its own outcome.
            logger.warning(
                "storing %d reports together failed (%r); storing each request's on its own",
                len(batch),
                error,
                exc_info=error,
            )
            for write in batch:
                await self._write([write])
            return
        start = 0
        for write in batch:
            end = start + len(write.executions)
            write.settle(results[start:end])
            start = end

    async def aclose(self) -> None:
        await self.call(Store.close)
