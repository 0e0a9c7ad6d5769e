"""The server's REST API (v1) as a Starlette application.

Handlers are thin: parse the body with the core's wire converter (and the query string with
:mod:`.queries`), apply the core's rules (:mod:`taskscheduler_core.lifecycle`), call the store,
answer with the converter. Every refusal is a 4xx ``{"error": {"code", "message", "field"}}``;
the handlers installed here make sure that neither Starlette's HTML/plain-text pages nor a
traceback ever reach a client. A database that cannot be reached (the store raises
:class:`~.errors.DatabaseUnavailable`) is answered ``503 database_unavailable`` with
``Retry-After``: agents keep their reports and retry.

Beside the API: ``GET /healthz`` (the process answers; never touches the database),
``GET /readyz`` (the database answers, and the lease state) and ``GET /metrics`` (Prometheus;
:mod:`.metrics`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar
from uuid import UUID, uuid4

import attrs
import trio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from taskscheduler_core import (
    AUTHENTICATE_HEADERS,
    DEFAULT_REPORT_GRACE,
    Agent,
    AgentList,
    AgentStatus,
    BatchedReport,
    BatchItemResult,
    BatchResult,
    BodyReader,
    ExecutionList,
    ExecutionReport,
    ExecutionStatus,
    ItemError,
    RegisterAgent,
    RunList,
    RunStarted,
    RunStatus,
    Task,
    TaskCreated,
    TaskList,
    WireError,
    batch_items,
    client_disconnected,
    delete_task,
    edit_task,
    forbidden,
    format_time,
    http_error,
    keep_tail,
    new_task,
    parse_batch_item,
    parse_create,
    pause_task,
    resume_task,
    server_openapi,
    unstructure,
)
from taskscheduler_core import ApiError as CoreApiError
from taskscheduler_core.options import MAX_NAME_LENGTH

from .auth import Caller, Guard, Role
from .clock import utc_now
from .config import ServerConfig
from .dispatch import Dispatcher
from .errors import ApiError, DatabaseUnavailable, TaskNotFound
from .history import executions_of, runs_of
from .lease import Leadership
from .metrics import CONTENT_TYPE, ServerMetrics, count_agents
from .outputs import latest_output_of
from .queries import Query, encode_cursor, execution_cursor, run_cursor, task_cursor
from .reconcile import Reconciler
from .store import AsyncStore, Store, StoreSlot, to_micros

logger = logging.getLogger("taskscheduler.server.app")

T = TypeVar("T")
R = TypeVar("R", bound=ExecutionReport)

#: SQLite stores signed 64-bit integers; a larger number in a report is refused, not a crash.
_INT64 = range(-(2**63), 2**63)


#: The two answers of an acknowledged report, encoded once (as JSONResponse would).
_NEW = b'{"acknowledged":true,"duplicate":false}'
_DUPLICATE = b'{"acknowledged":true,"duplicate":true}'

#: How long ``/readyz`` and ``/metrics`` wait for the database before saying it did not answer.
DATABASE_PROBE_TIMEOUT = 2.0

#: ``Retry-After`` of a 503: agents wait at least this long (seconds) before the next attempt.
RETRY_AFTER_SECONDS = 2

#: The least time between two warnings about the database being unavailable (seconds): during
#: an outage every request fails, and one line now and then says as much as thousands.
UNAVAILABLE_LOG_INTERVAL = 10.0

#: Default page sizes of the listings.
TASKS_PAGE = 100
RUNS_PAGE = 50
EXECUTIONS_PAGE = 100


def report_body_limit(config: ServerConfig) -> int:
    """The largest report body accepted: room for two full streams of ``max_output_bytes`` in
    the worst JSON escaping (6 bytes a byte, ``\\u0001``) beside ``max_body_bytes``.

    A report over the plain body limit would be refused for good, and its execution lost, when
    all that is wrong is its output; so it is accepted and its streams cut to their tails.
    """
    return config.max_body_bytes + 2 * 6 * config.max_output_bytes


class _Api:
    """The route handlers and what they share."""

    def __init__(
        self,
        store: AsyncStore,
        dispatcher: Dispatcher | None,
        reconciler: Reconciler | None,
        *,
        limits: ServerConfig,
        report_grace: timedelta,
        clock: Callable[[], datetime],
        leadership: Leadership | None = None,
    ) -> None:
        self.store = store
        self.dispatcher = dispatcher
        self.reconciler = reconciler
        self.max_body_bytes = limits.max_body_bytes
        self.max_command_length = limits.max_command_length
        self.max_output_bytes = limits.max_output_bytes
        self.max_report_bytes = report_body_limit(limits)
        self.report_grace = report_grace
        self.clock = clock
        self.guard = Guard(store)  # open; create_app sets the configured one
        self.leadership = leadership
        self.metrics = ServerMetrics(leadership)
        #: When the last "database unavailable" warning was logged (trio time), and how many
        #: 503s were answered since.
        self._unavailable_logged_at = -math.inf
        self._unavailable_since_log = 0
        self._probes = StoreSlot(abandon_on_cancel=True)

    # -- reading requests ----------------------------------------------------------------

    async def read_body(self, request: Request, kind: type[T], limit: int | None = None) -> T:
        """The body as a ``kind``, refusing one over ``limit`` (default ``max_body_bytes``)
        before reading all of it."""
        reader = BodyReader(
            limit or self.max_body_bytes, content_length=request.headers.get("content-length")
        )
        try:
            async for chunk in request.stream():
                reader.feed(chunk)
        except ClientDisconnect:
            raise client_disconnected() from None
        return reader.decode(kind)

    @staticmethod
    def task_id(request: Request) -> UUID:
        text = request.path_params["task_id"]
        try:
            return UUID(text)
        except ValueError:
            # A path that names no task is "not found", whatever its shape.
            raise ApiError(
                404,
                "task_not_found",
                f"no task with id {text[:64]!r}: task ids are UUIDs",
                field="task_id",
            ) from None

    @staticmethod
    def no_task(task_id: UUID) -> ApiError:
        return ApiError(404, "task_not_found", f"no task with id {task_id}", field="task_id")

    @staticmethod
    def deleted(task: Task) -> ApiError:
        return ApiError(
            409,
            "task_deleted",
            f"task {task.id} was deleted at {format_time(task.deleted_at)}; "
            "its history stays readable"
            if task.deleted_at is not None
            else f"task {task.id} was deleted",
            field="task_id",
        )

    def check_command(self, task: Task) -> None:
        """The server may cap commands below the core's hard limit (``--max-command-length``)."""
        if len(task.command) > self.max_command_length:
            raise ApiError(
                422,
                "validation_error",
                f"is too long ({len(task.command)} characters, at most {self.max_command_length})",
                field="command",
            )

    def live(self, change: Callable[[Task], Task]) -> Callable[[Task], Task]:
        """``change``, refused with 409 for a deleted task (run inside the store's transaction,
        so that the check and the change see the same task)."""

        def checked(task: Task) -> Task:
            if task.deleted_at is not None:
                raise self.deleted(task)
            return change(task)

        return checked

    async def change(self, request: Request, change: Callable[[Task], Task]) -> Task:
        """Apply ``change`` to the task of the path; the agents are told what changed."""
        task_id = self.task_id(request)
        try:
            task = await self.store.call(Store.change_task, task_id, change, now=self.clock())
        except TaskNotFound:
            raise self.no_task(task_id) from None
        if self.dispatcher is not None:
            self.dispatcher.notify()  # never waits for agents
        return task

    @staticmethod
    def agent_id(request: Request) -> UUID:
        text = request.path_params["agent_id"]
        try:
            return UUID(text)
        except ValueError:
            raise ApiError(
                404,
                "agent_not_found",
                f"no agent with id {text[:64]!r}: agent ids are UUIDs",
                field="agent_id",
            ) from None

    def agent_is_back(self, agent_id: UUID) -> None:
        """``agent_id`` registered or returned from ``lost``: check and push its tasks now."""
        if self.dispatcher is not None:
            self.dispatcher.notify(agent_id)
        if self.reconciler is not None:
            self.reconciler.notify(agent_id)

    # -- routes --------------------------------------------------------------------------

    async def create_task(self, request: Request) -> Response:
        await self.guard.require_admin(request)
        data = await self.read_body(request, dict)
        body = _validated(parse_create, data)
        # The anchor is fixed here, once, so that every agent fires at the same instants.
        task = new_task(body, task_id=uuid4(), now=self.clock())
        self.check_command(task)
        await self.store.call(Store.create_task, task)
        if self.dispatcher is not None:
            self.dispatcher.notify()  # never waits for agents
        logger.info(
            "created task %s: %r %s",
            task.id,
            task.command[:200],
            task.frequency,
            extra={"task_id": str(task.id)},
        )
        return JSONResponse(
            unstructure(TaskCreated(command_id=task.id, task=task)), status_code=201
        )

    async def list_tasks(self, request: Request) -> Response:
        await self.guard.require_reader(request)
        query = Query(request.query_params)
        states = query.task_states("state")
        name = query.name_filter("name", MAX_NAME_LENGTH)
        agent_id = query.uuid("agent")
        limit = query.limit(TASKS_PAGE)
        after = task_cursor(query.cursor("tasks"))
        tasks = await self.store.call(
            Store.find_tasks,
            states=states,
            name=name,
            agent_id=agent_id,
            after=after,
            limit=limit + 1,
        )
        page = tasks[:limit]
        cursor = None
        if len(tasks) > limit:
            cursor = encode_cursor("tasks", to_micros(page[-1].created_at), str(page[-1].id))
        return JSONResponse(unstructure(TaskList(tasks=page, next_cursor=cursor)))

    async def get_task(self, request: Request) -> Response:
        await self.guard.require_reader(request)
        task_id = self.task_id(request)
        task = await self.store.call(Store.get_task, task_id)
        if task is None:
            raise self.no_task(task_id)
        return JSONResponse(unstructure(task))

    async def edit_task(self, request: Request) -> Response:
        await self.guard.require_admin(request)
        self.task_id(request)  # a bad id is refused before the body is read
        changes = await self.read_body(request, dict)
        now = self.clock()

        def edit(task: Task) -> Task:
            edited = _validated(lambda data: edit_task(task, data, now=now), changes)
            self.check_command(edited)
            return edited

        task = await self.change(request, self.live(edit))
        logger.info(
            "edited task %s: %s",
            task.id,
            ", ".join(sorted(changes)) or "nothing",
            extra={"task_id": str(task.id)},
        )
        return JSONResponse(unstructure(task))

    async def delete_task(self, request: Request) -> Response:
        await self.guard.require_admin(request)
        task_id = self.task_id(request)
        if Query(request.query_params).boolean("purge"):
            holders = await self.store.call(Store.purge_task, task_id)
            if holders is None:
                raise self.no_task(task_id)
            # No row is left to drive a removal: the reconciler finds the task on each agent
            # that may still hold it and removes it (and does so when an absent one returns).
            if self.reconciler is not None:
                for agent_id in holders:
                    self.reconciler.notify(agent_id)
            logger.info("purged task %s and its history", task_id, extra={"task_id": str(task_id)})
            return Response(status_code=204)
        now = self.clock()
        task = await self.change(request, lambda task: delete_task(task, now=now))
        logger.info("deleted task %s", task.id, extra={"task_id": str(task.id)})
        return JSONResponse(unstructure(task))

    async def pause_task(self, request: Request) -> Response:
        await self.guard.require_admin(request)
        now = self.clock()
        task = await self.change(request, self.live(lambda task: pause_task(task, now=now)))
        return JSONResponse(unstructure(task))

    async def resume_task(self, request: Request) -> Response:
        await self.guard.require_admin(request)
        now = self.clock()
        task = await self.change(request, self.live(lambda task: resume_task(task, now=now)))
        return JSONResponse(unstructure(task))

    async def run_task(self, request: Request) -> Response:
        await self.guard.require_admin(request)
        task_id = self.task_id(request)
        task = await self.store.call(Store.get_task, task_id)
        if task is None:
            raise self.no_task(task_id)
        if task.deleted_at is not None:
            raise self.deleted(task)
        # One time for every agent, chosen here: their executions group into one run.
        scheduled_at = self.clock()
        agents = [agent.id for agent in await self.store.call(Store.run_targets, task_id)]
        if self.dispatcher is not None:
            # Tried until the run's report deadline: after it, the run is over anyway.
            self.dispatcher.run_now(
                task_id, scheduled_at, agents, until=scheduled_at + self.report_grace
            )
        logger.info("manual run of task %s at %s on %d agents", task_id, scheduled_at, len(agents))
        started = RunStarted(task_id=task_id, scheduled_at=scheduled_at, agents=agents)
        return JSONResponse(unstructure(started), status_code=202)

    async def list_runs(self, request: Request) -> Response:
        await self.guard.require_reader(request)
        task_id = self.task_id(request)
        query = Query(request.query_params)
        status = query.choice("status", RunStatus)
        limit = query.limit(RUNS_PAGE)
        before = run_cursor(query.cursor("runs"))
        found = await self.store.call(
            runs_of,
            task_id,
            now=self.clock(),
            report_grace=self.report_grace,
            limit=limit,
            before=before,
            status=status,
        )
        if found is None:
            raise self.no_task(task_id)
        runs, last = found
        cursor = None if last is None else encode_cursor("runs", to_micros(last))
        return JSONResponse(unstructure(RunList(runs=runs, next_cursor=cursor)))

    async def list_executions(self, request: Request) -> Response:
        await self.guard.require_reader(request)
        task_id = self.task_id(request)
        query = Query(request.query_params)
        agent_id = query.uuid("agent")
        status = query.choice("status", ExecutionStatus)
        since = query.time("since")
        until = query.time("until")
        limit = query.limit(EXECUTIONS_PAGE)
        after = execution_cursor(task_id, query.cursor("executions"))
        found = await self.store.call(
            executions_of,
            task_id,
            limit=limit,
            after=after,
            agent_id=agent_id,
            status=status,
            since=since,
            until=until,
        )
        if found is None:
            raise self.no_task(task_id)
        executions, last = found
        cursor = None
        if last is not None:
            cursor = encode_cursor(
                "executions", to_micros(last.scheduled_at), str(last.agent_id), last.attempt
            )
        page = ExecutionList(executions=executions, next_cursor=cursor)
        return JSONResponse(unstructure(page))

    async def latest_output(self, request: Request) -> Response:
        await self.guard.require_reader(request)
        task_id = self.task_id(request)
        output = await self.store.call(
            latest_output_of, task_id, now=self.clock(), report_grace=self.report_grace
        )
        if output is None:
            raise self.no_task(task_id)
        return JSONResponse(unstructure(output))

    def checked_report(self, report: R) -> R:
        """``report`` with its numbers checked (422 naming the field) and its streams cut to
        their last ``max_output_bytes``."""
        for name in ("attempt", "exit_code", "stdout_dropped", "stderr_dropped"):
            value = getattr(report, name)
            if value is not None and value not in _INT64:
                raise ApiError(
                    422, "validation_error", "must fit in a signed 64-bit integer", field=name
                )
        # The agent caps each stream too, but the server does not take its word for it. A
        # character is at most 4 UTF-8 bytes: streams that short need no encoding to count.
        if 4 * max(len(report.stdout), len(report.stderr)) <= self.max_output_bytes:
            return report
        stdout, stdout_cut = keep_tail(report.stdout, self.max_output_bytes)
        stderr, stderr_cut = keep_tail(report.stderr, self.max_output_bytes)
        if stdout_cut or stderr_cut:
            report = attrs.evolve(
                report,
                stdout=stdout,
                stderr=stderr,
                stdout_dropped=min(report.stdout_dropped + stdout_cut, _INT64[-1]),
                stderr_dropped=min(report.stderr_dropped + stderr_cut, _INT64[-1]),
            )
        return report

    async def complete(self, request: Request) -> Response:
        arrived = trio.current_time()
        caller = await self.guard.agent_caller(request)
        task_id = self.task_id(request)
        report = await self.read_body(request, ExecutionReport, self.max_report_bytes)
        self.guard.check_speaks_for(caller, report.server_id)
        if caller is not None and caller.role is Role.AGENT:
            assigned = await self.store.call(Store.assignment_times, task_id)
            if report.server_id not in assigned:
                raise forbidden(f"task {task_id} is not assigned to agent {report.server_id}")
        report = self.checked_report(report)
        received_at = self.clock()
        execution = report.execution(task_id, received_at=received_at)
        try:
            # A report is also a sign of life of the agent that sends it. Committed together
            # with the reports that other requests are making at the same moment.
            new = await self.store.record_execution(execution, seen_at=received_at)
        except TaskNotFound:
            raise self.no_task(task_id) from None
        self.metrics.reported(trio.current_time() - arrived, ((execution.status, new),))
        # Answered only now, after the commit: the agent may forget the report when it sees 200.
        return Response(_NEW if new else _DUPLICATE, media_type="application/json")

    async def report_executions(self, request: Request) -> Response:
        """``POST /api/v1/executions``: many reports, one commit (:mod:`taskscheduler_core.batch`).

        Each item is checked as ``complete`` checks its one report; an item it would refuse is
        refused alone (its result carries the error, its ``field`` prefixed with
        ``executions.<index>``), and the others are stored. Only the caller's token, the
        envelope, the size and the JSON refuse the whole request.
        """
        arrived = trio.current_time()
        caller = await self.guard.agent_caller(request)
        data = await self.read_body(request, dict, self.max_report_bytes)
        items = _validated(batch_items, data)
        results: list[BatchItemResult | None] = [None] * len(items)
        reports: dict[int, BatchedReport] = {}
        for index, item in enumerate(items):
            try:
                report = parse_batch_item(item, index)
                self.guard.check_speaks_for(caller, report.server_id)
                reports[index] = self.checked_report(report)
            except WireError as error:
                results[index] = _refused("validation_error", error.message, error.field)
            except CoreApiError as error:
                field = "server_id" if error.code == "forbidden" else error.field
                results[index] = _refused(error.code, error.message, _item_field(index, field))
        if caller is not None and caller.role is Role.AGENT:
            await self.refuse_unassigned(caller, reports, results)
        received_at = self.clock()
        indexes = list(reports)
        executions = [
            reports[index].execution(reports[index].task_id, received_at=received_at)
            for index in indexes
        ]
        # One transaction for the whole batch (with those of concurrent requests); each agent
        # in it counts as heard from once. (Nothing to write if every report was refused.)
        outcomes = (
            await self.store.record_executions(executions, seen_at=received_at)
            if executions
            else []
        )
        for index, outcome in zip(indexes, outcomes, strict=True):
            if isinstance(outcome, TaskNotFound):
                message = f"no task with id {outcome.task_id}"
                results[index] = _refused("task_not_found", message, _item_field(index, "task_id"))
            else:
                results[index] = BatchItemResult(acknowledged=True, duplicate=not outcome)
        if executions:
            self.metrics.reported(
                trio.current_time() - arrived,
                (
                    (execution.status, outcome)
                    for execution, outcome in zip(executions, outcomes, strict=True)
                    if not isinstance(outcome, TaskNotFound)
                ),
            )
        # Answered only now, after the commit: the agent may forget what was acknowledged.
        return JSONResponse(unstructure(BatchResult(results=_settled(results))))

    async def refuse_unassigned(
        self,
        caller: Caller,
        reports: dict[int, BatchedReport],
        results: list[BatchItemResult | None],
    ) -> None:
        """Take out of ``reports`` (refused in ``results``) those of tasks not assigned to the
        reporting agent, as ``complete`` refuses them (403)."""
        task_ids = {report.task_id for report in reports.values()}

        def assignments(store: Store) -> dict[UUID, dict[UUID, datetime]]:
            return {task_id: store.assignment_times(task_id) for task_id in task_ids}

        assigned = await self.store.call(assignments)
        for index, report in list(reports.items()):
            if report.server_id not in assigned[report.task_id]:
                del reports[index]
                message = f"task {report.task_id} is not assigned to agent {report.server_id}"
                results[index] = _refused("forbidden", message, _item_field(index, "task_id"))

    async def register_agent(self, request: Request) -> Response:
        caller = await self.guard.registration_caller(request)
        body = await self.read_body(request, RegisterAgent)
        proposed = body.credentials
        store = await self.guard.check_registration(caller, body.agent_id, proposed)
        # Stored before the agent row is written: the first push to it already presents the
        # server's token. Should the write below fail (503), or the answer be lost, an agent
        # that proposed its credentials sends them again and is recognised.
        issued = await self.guard.issue(body.agent_id, proposed) if store else None
        agent = Agent(
            id=body.agent_id,
            url=body.url.rstrip("/"),
            registered_at=self.clock(),
            labels=body.labels,
        )
        record = await self.store.call(Store.upsert_agent, agent)
        self.agent_is_back(record.id)
        logger.info(
            "agent %s registered at %s",
            record.id,
            record.url,
            extra={"agent_id": str(record.id), "url": record.url},
        )
        answer: dict[str, object] = {"agent_id": str(record.id), "url": record.url}
        if proposed is not None:
            # Never sent back: the agent has them. A caller that got here with a token holds
            # them now; without one (open agent endpoints) the server takes none.
            answer["credentials_accepted"] = caller is not None
        elif issued is not None:
            answer["credentials"] = {
                "agent_token": issued.agent_token,
                "server_token": issued.server_token,
            }
        return JSONResponse(answer)

    async def heartbeat(self, request: Request) -> Response:
        caller = await self.guard.agent_caller(request)
        agent_id = self.agent_id(request)
        self.guard.check_speaks_for(caller, agent_id)
        await self.read_body(request, dict)  # a JSON object; no field is read yet
        before = await self.store.call(Store.heartbeat, agent_id, self.clock())
        if before is None:
            # The agent registers again on this answer, which tells us its URL.
            raise ApiError(
                404,
                "agent_not_found",
                f"no agent with id {agent_id}; register first",
                field="agent_id",
            )
        if before is AgentStatus.LOST:
            logger.info("agent %s is alive again", agent_id, extra={"agent_id": str(agent_id)})
            self.agent_is_back(agent_id)
        return JSONResponse({"agent_id": str(agent_id), "status": AgentStatus.ALIVE.value})

    async def list_agents(self, request: Request) -> Response:
        await self.guard.require_reader(request)
        wanted = Query(request.query_params).labels("label")
        agents = await self.store.call(Store.list_agents)
        selected = [agent for agent in agents if _has_labels(agent.labels, wanted)]
        return JSONResponse(unstructure(AgentList(agents=selected)))

    async def get_agent(self, request: Request) -> Response:
        await self.guard.require_reader(request)
        agent_id = self.agent_id(request)
        detail = await self.store.call(Store.agent_detail, agent_id)
        if detail is None:
            raise ApiError(404, "agent_not_found", f"no agent with id {agent_id}", field="agent_id")
        return JSONResponse(unstructure(detail))

    async def healthz(self, request: Request) -> Response:
        # Liveness only: the process answers. Never the database, or an orchestrator would
        # restart every replica when the database goes away (restarts fix nothing then).
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        """Ready: the database answers (within :data:`DATABASE_PROBE_TIMEOUT`); and the lease
        as this replica sees it. Not holding the lease is no reason to be unready: every
        replica serves the whole API."""
        leadership = self.leadership
        lease = {
            "replica": None if leadership is None else leadership.replica_id,
            "held": leadership is not None and leadership.held,
            "holder": None if leadership is None else leadership.holder,
        }
        problem = await self.database_problem()
        if problem is None:
            return JSONResponse({"status": "ready", "database": "ok", "lease": lease})
        self.metrics.database_unavailable.inc()
        self.note_unavailable(problem)
        return JSONResponse(
            {"status": "unready", "database": "unavailable", "reason": problem, "lease": lease},
            status_code=503,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    async def database_problem(self) -> str | None:
        """Why the database cannot be used now (``None``: it answered a trivial query)."""
        with trio.move_on_after(DATABASE_PROBE_TIMEOUT):
            try:
                await self.probe(Store.ping)
            except DatabaseUnavailable as error:
                return str(error) or "the database is unavailable"
            except Exception as error:  # whatever stops it answering makes us unready, not a 500
                return f"{type(error).__name__}: {error}"
            return None
        return f"the database did not answer within {DATABASE_PROBE_TIMEOUT:g} s"

    async def probe(self, method: Callable[[Store], T]) -> T:
        """``method(store)`` for a probe (``/readyz``, ``/metrics``), which its caller may give
        up on (a cancel scope's deadline) however long the database takes.

        A store that takes concurrent calls (PostgreSQL, pooled) runs it apart from the API's
        calls (:meth:`AsyncStore.call_apart`), abandoned on cancellation: a connection attempt
        to a partitioned database waits for its connect timeout, and the probe must answer
        sooner. One at a time, so that the abandoned ones of a long outage cannot pile up.
        SQLite's single connection must not be used beside the store's own calls; it does not
        wait on a network either.
        """
        return await self.store.call_apart(self._probes, method)

    async def metrics_page(self, request: Request) -> Response:
        """The Prometheus text: the counters kept in memory, the agents by status read now
        (left out if the database does not answer in time: a scrape must not fail with it)."""
        await self.guard.require_reader(request)
        agents = None
        with trio.move_on_after(DATABASE_PROBE_TIMEOUT):
            try:
                agents = await self.probe(count_agents)
            except Exception as error:  # reported by /readyz and the 503s; not fatal here
                logger.debug("metrics: could not count the agents: %r", error)
        return Response(self.metrics.render(agents), media_type=CONTENT_TYPE)

    def note_unavailable(self, reason: object) -> None:
        """Log that the database is unavailable: at once, then at most every
        :data:`UNAVAILABLE_LOG_INTERVAL` seconds, with how many requests failed meanwhile."""
        self._unavailable_since_log += 1
        now = trio.current_time()
        if now - self._unavailable_logged_at < UNAVAILABLE_LOG_INTERVAL:
            return
        logger.warning(
            "the database is unavailable (%s); answering 503 (%d request(s) since the last "
            "warning)",
            reason,
            self._unavailable_since_log,
            extra={"failed_requests": self._unavailable_since_log},
        )
        self._unavailable_logged_at = now
        self._unavailable_since_log = 0

    async def database_unavailable(self, request: Request, error: Exception) -> Response:
        """Any route whose store call found the database unreachable: 503, retry later."""
        assert isinstance(error, DatabaseUnavailable)
        self.metrics.database_unavailable.inc()
        self.note_unavailable(error)
        refusal = ApiError(
            503,
            "database_unavailable",
            f"the database is unavailable ({error}); retry in a few seconds",
        )
        return JSONResponse(
            refusal.body(),
            status_code=refusal.status,
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(server_openapi())


def _validated(parse: Callable[[dict[str, Any]], T], data: dict[str, Any]) -> T:
    """``parse(data)``, its :class:`WireError` answered as 422 naming the field."""
    try:
        return parse(data)
    except WireError as error:
        raise ApiError(422, "validation_error", error.message, field=error.field) from None


def _item_field(index: int, field: str | None) -> str:
    """The dotted path of ``field`` of item ``index`` of a batch."""
    return f"executions.{index}" + (f".{field}" if field else "")


def _refused(code: str, message: str, field: str | None) -> BatchItemResult:
    return BatchItemResult(
        acknowledged=False, error=ItemError(code=code, message=message, field=field)
    )


def _settled(results: list[BatchItemResult | None]) -> list[BatchItemResult]:
    """Every item's result, now that each has one."""
    settled = [result for result in results if result is not None]
    assert len(settled) == len(results), "every item of a batch gets a result"
    return settled


def _has_labels(labels: Mapping[str, str], wanted: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in wanted.items())


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, CoreApiError)
    headers = AUTHENTICATE_HEADERS if error.status == 401 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


async def _http_error(request: Request, error: Exception) -> Response:
    """Starlette's own refusals (no route, wrong method) in our error format."""
    assert isinstance(error, HTTPException)
    headers = error.headers or {}
    refusal = http_error(
        error.status_code,
        method=request.method,
        path=request.url.path,
        allowed=headers.get("Allow", ""),
        detail=error.detail,
    )
    return JSONResponse(refusal.body(), status_code=refusal.status, headers=error.headers)


async def _internal_error(request: Request, error: Exception) -> Response:
    # Every input is meant to be refused with a 4xx before it gets here: this is a bug.
    logger.error("internal error on %s %s", request.method, request.url.path, exc_info=error)
    bug = ApiError(500, "internal_error", "internal server error; see the server log")
    return JSONResponse(bug.body(), status_code=bug.status)


def create_app(
    store: AsyncStore,
    *,
    dispatcher: Dispatcher | None = None,
    reconciler: Reconciler | None = None,
    config: ServerConfig | None = None,
    clock: Callable[[], datetime] = utc_now,
    leadership: Leadership | None = None,
) -> Starlette:
    """The REST API over ``store``; new tasks and registrations are handed to ``dispatcher``,
    registrations and agents that come back to ``reconciler``.

    Without a dispatcher nothing is pushed to agents (handy in tests). ``config`` supplies
    the limits (``max_body_bytes``, ``max_command_length``, ``max_output_bytes``) and
    ``report_grace``; its other settings are for :func:`serve`. ``leadership`` is this
    replica's view of the lease, shown by ``/readyz`` and ``/metrics`` (without it: no lease,
    held false, holder null).
    """
    api = _Api(
        store,
        dispatcher,
        reconciler,
        limits=config or ServerConfig(database=":memory:"),
        report_grace=config.report_grace if config else DEFAULT_REPORT_GRACE,
        clock=clock,
        leadership=leadership,
    )
    api.guard = Guard(
        store,
        admin_token=config.admin_token if config else None,
        read_token=config.read_token if config else None,
        join_token=config.join_token if config else None,
    )
    # The dispatcher and the reconciler present each agent the token issued to it.
    if dispatcher is not None:
        dispatcher.agent_headers = api.guard.headers_for
    if reconciler is not None:
        reconciler.agent_headers = api.guard.headers_for
    task = "/api/v1/tasks/{task_id}"
    routes = [
        # The agents' reports first: they are most of the traffic, and Starlette tries the
        # routes in order (no two of these paths overlap, so the order changes nothing else).
        Route(f"{task}/complete", api.complete, methods=["POST"]),
        Route("/api/v1/executions", api.report_executions, methods=["POST"]),
        Route("/api/v1/tasks/create", api.create_task, methods=["POST"]),
        Route("/api/v1/tasks", api.create_task, methods=["POST"]),
        Route("/api/v1/tasks", api.list_tasks, methods=["GET"]),
        Route(task, api.get_task, methods=["GET"]),
        Route(task, api.edit_task, methods=["PATCH"]),
        Route(task, api.delete_task, methods=["DELETE"]),
        Route(f"{task}/pause", api.pause_task, methods=["POST"]),
        Route(f"{task}/resume", api.resume_task, methods=["POST"]),
        Route(f"{task}/run", api.run_task, methods=["POST"]),
        Route(f"{task}/runs", api.list_runs, methods=["GET"]),
        Route(f"{task}/executions", api.list_executions, methods=["GET"]),
        Route(f"{task}/latest_output", api.latest_output, methods=["GET"]),
        Route("/api/v1/agents/register", api.register_agent, methods=["POST"]),
        Route("/api/v1/agents/{agent_id}/heartbeat", api.heartbeat, methods=["POST"]),
        Route("/api/v1/agents", api.list_agents, methods=["GET"]),
        Route("/api/v1/agents/{agent_id}", api.get_agent, methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route("/metrics", api.metrics_page, methods=["GET"]),
        Route("/api/v1/openapi.json", api.openapi, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={
            CoreApiError: _api_error,
            DatabaseUnavailable: api.database_unavailable,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        # While served, the guard loads the agents' credentials and looks up those that other
        # replicas issue as the dispatcher needs them (Guard.keep_fresh).
        lifespan=api.guard.lifespan,
    )
