"""The agent's HTTP API, a Starlette app.

- ``POST /api/v1/tasks/schedule`` — body :class:`~taskscheduler_core.ScheduleTask`; answers
  ``200 {"task_id": ..., "changed": bool}``. Idempotent: the same task twice is one schedule,
  a changed one replaces it.
- ``GET /api/v1/tasks`` — ``{"tasks": [...]}``, the task specs scheduled here, by id (an
  object, like the server's listings, so that fields can be added beside the list).
- ``DELETE /api/v1/tasks/{task_id}`` — ``200 {"task_id": ..., "removed": bool}``: stop
  scheduling the task (a running execution finishes and is reported). Idempotent: an unknown id
  is ``removed: false``; an id that is not a UUID is 422 ``validation_error``.
- ``POST /api/v1/tasks/{task_id}/run`` — body :class:`~taskscheduler_core.RunTaskNow`; answers
  ``202 {}`` once the manual run is under way (its execution is reported as usual, with trigger
  ``manual``). Idempotent: the same ``scheduled_at`` twice is one execution. A task not
  scheduled here is 404 ``task_not_found``.
- ``GET /api/v1/agent`` — :class:`~taskscheduler_core.AgentIdentity`, with the agent's labels.
- ``GET /healthz`` — ``{"status": "ok"}`` while the agent serves (liveness only).
- ``GET /readyz`` — ``200 {"status": "ready", "state": "ok", "reports_queued": n}`` when the
  state file (``DATA_DIR/agent.sqlite3``) can be read, else ``503 {"status": "unready",
  "state": "unavailable", "reason": …}``: without it the agent can keep neither a schedule nor
  a report.
- ``GET /metrics`` — the agent's Prometheus metrics (:mod:`.metrics`; public, like the health
  endpoints: counts and timings, no command or output).
- ``GET /api/v1/openapi.json`` — the OpenAPI 3.1 document of this API (public).

With a join token (or once it holds credentials) the task endpoints answer only the server:
``Authorization: Bearer <the server's token>``, else 401 ``unauthorized`` (docs/security.md).

Every refusal is ``{"error": {"code", "message", "field"}}`` with a 4xx status and the codes
of the server's API (docs/api.md): ``invalid_json`` and ``client_disconnected`` (400),
``not_found`` and ``task_not_found`` (404), ``method_not_allowed`` (405), ``body_too_large``
(413), ``invalid_body`` (422, not an object), ``invalid_string`` (422, a lone surrogate) and
``validation_error`` (422, with the field at fault).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TypeVar
from uuid import UUID

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from taskscheduler_core import (
    AUTHENTICATE_HEADERS,
    AgentIdentity,
    BodyReader,
    RunTaskNow,
    ScheduleTask,
    agent_openapi,
    client_disconnected,
    http_error,
    unstructure,
)
from taskscheduler_core import ApiError as CoreApiError
from taskscheduler_core import __version__ as core_version

from .credentials import AgentKeys
from .engine import Engine
from .errors import ApiError, TaskRejected
from .metrics import CONTENT_TYPE, AgentMetrics

logger = logging.getLogger(__name__)

#: Request bodies larger than this are refused with 413: a task spec is a few hundred bytes.
MAX_BODY_BYTES = 1024 * 1024

T = TypeVar("T")


def create_app(
    *,
    engine: Engine,
    agent_id: UUID,
    version: str = core_version,
    keys: AgentKeys | None = None,
    labels: Mapping[str, str] | None = None,
    metrics: AgentMetrics | None = None,
) -> Starlette:
    """The agent's ASGI app, scheduling into ``engine``; ``labels`` are the agent's own.

    With ``keys`` that hold (or expect) credentials, the scheduling endpoints accept only the
    server's token (401 ``unauthorized`` otherwise); the identity, health, readiness and
    metrics stay public. ``metrics`` are the agent's (:func:`run_agent` passes them, with its
    state file); without them the app counts only its tasks and is always ready.
    """
    if metrics is None:
        metrics = AgentMetrics()
        metrics.watch(engine)

    def from_server(request: Request) -> None:
        if keys is not None:
            keys.check_server(request.headers)

    async def schedule(request: Request) -> Response:
        from_server(request)
        body = await _read_body(request, ScheduleTask)
        try:
            spec, changed = await engine.schedule(body)
        except TaskRejected as error:
            raise ApiError(422, "validation_error", error.message, field=error.field) from None
        return JSONResponse({"task_id": str(spec.task_id), "changed": changed})

    async def list_tasks(request: Request) -> Response:
        from_server(request)
        return JSONResponse({"tasks": unstructure(engine.tasks())})

    async def remove_task(request: Request) -> Response:
        from_server(request)
        task_id = _task_id(request)
        removed = await engine.remove_task(task_id)
        return JSONResponse({"task_id": str(task_id), "removed": removed})

    async def run_task(request: Request) -> Response:
        from_server(request)
        task_id = _task_id(request)
        body = await _read_body(request, RunTaskNow)
        if not await engine.run_now(task_id, body.scheduled_at):
            raise ApiError(
                404, "task_not_found", f"task {task_id} is not scheduled here", field="task_id"
            )
        return JSONResponse({}, status_code=202)

    identity_body = unstructure(
        AgentIdentity(agent_id=agent_id, version=version, labels=labels or {})
    )

    async def identity(request: Request) -> Response:
        return JSONResponse(identity_body)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    # Probes come every few seconds: the log says when readiness changes, not at each probe.
    unready = False

    async def readyz(request: Request) -> Response:
        nonlocal unready
        queued, problem = await metrics.state_problem()
        if problem is None:
            if unready:
                logger.info("ready again: the state file can be read")
                unready = False
            return JSONResponse({"status": "ready", "state": "ok", "reports_queued": queued})
        if not unready:
            logger.warning("not ready: %s", problem)
            unready = True
        return JSONResponse(
            {"status": "unready", "state": "unavailable", "reason": problem}, status_code=503
        )

    async def metrics_page(request: Request) -> Response:
        return Response(await metrics.render(), media_type=CONTENT_TYPE)

    async def openapi(request: Request) -> Response:
        return JSONResponse(agent_openapi())

    return Starlette(
        routes=[
            Route("/api/v1/tasks/schedule", schedule, methods=["POST"]),
            Route("/api/v1/tasks", list_tasks, methods=["GET"]),
            Route("/api/v1/tasks/{task_id}", remove_task, methods=["DELETE"]),
            Route("/api/v1/tasks/{task_id}/run", run_task, methods=["POST"]),
            Route("/api/v1/agent", identity, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_page, methods=["GET"]),
            Route("/api/v1/openapi.json", openapi, methods=["GET"]),
        ],
        exception_handlers={
            CoreApiError: _api_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )


def _task_id(request: Request) -> UUID:
    text = request.path_params["task_id"]
    try:
        return UUID(text)
    except ValueError:
        raise ApiError(
            422, "validation_error", f"invalid UUID {text[:64]!r}", field="task_id"
        ) from None


async def _read_body(request: Request, kind: type[T]) -> T:
    """The body as a ``kind``, refusing more than :data:`MAX_BODY_BYTES` before reading it."""
    reader = BodyReader(MAX_BODY_BYTES, content_length=request.headers.get("content-length"))
    try:
        async for chunk in request.stream():
            reader.feed(chunk)
    except ClientDisconnect:
        raise client_disconnected() from None
    return reader.decode(kind)


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, CoreApiError)
    headers = AUTHENTICATE_HEADERS if error.status == 401 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


async def _http_error(request: Request, error: Exception) -> Response:
    # Starlette's own refusals (no such route, wrong method) in our error shape.
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
    logger.error("internal error answering %s %s", request.method, request.url.path, exc_info=error)
    bug = ApiError(500, "internal_error", "internal error; see the agent's log")
    return JSONResponse(bug.body(), status_code=bug.status)
