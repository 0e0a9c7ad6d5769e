"""The server's REST API (v1) as a Starlette application.

Handlers are thin: parse the body with the core's wire converter, call the store, answer with
the converter. Every refusal is a 4xx ``{"error": {"code", "message", "field"}}``; the handlers
installed here make sure that neither Starlette's HTML/plain-text pages nor a traceback ever
reach a client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar
from uuid import UUID, uuid4

import attrs
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from taskscheduler_core import (
    AUTHENTICATE_HEADERS,
    DEFAULT_REPORT_GRACE,
    Agent,
    AgentStatus,
    BodyReader,
    CreateTask,
    ExecutionReport,
    RegisterAgent,
    Task,
    TaskCreated,
    client_disconnected,
    forbidden,
    http_error,
    keep_tail,
    server_openapi,
    unstructure,
)
from taskscheduler_core import ApiError as CoreApiError

from .auth import Guard, Role
from .clock import utc_now
from .config import ServerConfig
from .dispatch import Dispatcher
from .errors import ApiError, TaskNotFound
from .outputs import latest_output_of
from .reconcile import Reconciler
from .store import AsyncStore, Store

logger = logging.getLogger("taskscheduler.server.app")

T = TypeVar("T")

#: SQLite stores signed 64-bit integers; a larger number in a report is refused, not a crash.
_INT64 = range(-(2**63), 2**63)


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
        body = await self.read_body(request, CreateTask)
        if len(body.command) > self.max_command_length:
            raise ApiError(
                422,
                "validation_error",
                f"is too long ({len(body.command)} characters, at most {self.max_command_length})",
                field="command",
            )
        now = self.clock()
        # The anchor is fixed here, once, so that every agent fires at the same instants.
        task = Task(
            id=uuid4(), command=body.command, frequency=body.frequency, anchor=now, created_at=now
        )
        await self.store.call(Store.create_task, task)
        if self.dispatcher is not None:
            self.dispatcher.notify()  # never waits for agents
        logger.info("created task %s: %r %s", task.id, task.command[:200], task.frequency)
        return JSONResponse(
            unstructure(TaskCreated(command_id=task.id, task=task)), status_code=201
        )

    async def latest_output(self, request: Request) -> Response:
        await self.guard.require_reader(request)
        task_id = self.task_id(request)
        output = await self.store.call(
            latest_output_of, task_id, now=self.clock(), report_grace=self.report_grace
        )
        if output is None:
            raise self.no_task(task_id)
        return JSONResponse(unstructure(output))

    async def complete(self, request: Request) -> Response:
        caller = await self.guard.agent_caller(request)
        task_id = self.task_id(request)
        report = await self.read_body(request, ExecutionReport, self.max_report_bytes)
        self.guard.check_speaks_for(caller, report.server_id)
        if caller is not None and caller.role is Role.AGENT:
            assigned = await self.store.call(Store.assignment_times, task_id)
            if report.server_id not in assigned:
                raise forbidden(f"task {task_id} is not assigned to agent {report.server_id}")
        for name in ("exit_code", "stdout_dropped", "stderr_dropped"):
            value = getattr(report, name)
            if value is not None and value not in _INT64:
                raise ApiError(
                    422, "validation_error", "must fit in a signed 64-bit integer", field=name
                )
        # The agent caps each stream too, but the server does not take its word for it.
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
        received_at = self.clock()
        execution = report.execution(task_id, received_at=received_at)
        try:
            # A report is also a sign of life of the agent that sends it.
            new = await self.store.call(Store.record_execution, execution, seen_at=received_at)
        except TaskNotFound:
            raise self.no_task(task_id) from None
        # Answered only now, after the commit: the agent may forget the report when it sees 200.
        return JSONResponse({"acknowledged": True, "duplicate": not new})

    async def register_agent(self, request: Request) -> Response:
        caller = await self.guard.registration_caller(request)
        body = await self.read_body(request, RegisterAgent)
        issue = await self.guard.check_registration(caller, body.agent_id)
        # Issued before the agent row is written: the first push to it already presents the
        # server's token.
        issued = await self.guard.issue(body.agent_id) if issue else None
        agent = Agent(id=body.agent_id, url=body.url.rstrip("/"), registered_at=self.clock())
        record = await self.store.call(Store.upsert_agent, agent)
        self.agent_is_back(record.id)
        logger.info("agent %s registered at %s", record.id, record.url)
        answer: dict[str, object] = {"agent_id": str(record.id), "url": record.url}
        if issued is not None:
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
            logger.info("agent %s is alive again", agent_id)
            self.agent_is_back(agent_id)
        return JSONResponse({"agent_id": str(agent_id), "status": AgentStatus.ALIVE.value})

    async def list_agents(self, request: Request) -> Response:
        await self.guard.require_reader(request)
        agents = await self.store.call(Store.list_agents)
        return JSONResponse({"agents": unstructure(agents)})

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def openapi(self, request: Request) -> Response:
        return JSONResponse(server_openapi())


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
) -> Starlette:
    """The REST API over ``store``; new tasks and registrations are handed to ``dispatcher``,
    registrations and agents that come back to ``reconciler``.

    Without a dispatcher nothing is pushed to agents (handy in tests). ``config`` supplies
    the limits (``max_body_bytes``, ``max_command_length``, ``max_output_bytes``) and
    ``report_grace``; its other settings are for :func:`serve`.
    """
    api = _Api(
        store,
        dispatcher,
        reconciler,
        limits=config or ServerConfig(database=":memory:"),
        report_grace=config.report_grace if config else DEFAULT_REPORT_GRACE,
        clock=clock,
    )
    api.guard = Guard(
        store,
        admin_token=config.admin_token if config else None,
        read_token=config.read_token if config else None,
        join_token=config.join_token if config else None,
    )
    # The dispatcher and the reconciler present each agent the token issued to it.
    if dispatcher is not None:
        dispatcher.agent_headers = api.guard.agent_headers
    if reconciler is not None:
        reconciler.agent_headers = api.guard.agent_headers
    routes = [
        Route("/api/v1/tasks/create", api.create_task, methods=["POST"]),
        Route("/api/v1/tasks/{task_id}/latest_output", api.latest_output, methods=["GET"]),
        Route("/api/v1/tasks/{task_id}/complete", api.complete, methods=["POST"]),
        Route("/api/v1/agents/register", api.register_agent, methods=["POST"]),
        Route("/api/v1/agents/{agent_id}/heartbeat", api.heartbeat, methods=["POST"]),
        Route("/api/v1/agents", api.list_agents, methods=["GET"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/api/v1/openapi.json", api.openapi, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={
            CoreApiError: _api_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )
