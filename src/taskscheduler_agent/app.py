"""The agent's HTTP API, a Starlette app.

- ``POST /api/v1/tasks/schedule`` — body :class:`~taskscheduler_core.ScheduleTask`; answers
  ``200 {"task_id": ..., "changed": bool}``. Idempotent: the same task twice is one schedule,
  a changed one replaces it.
- ``GET /api/v1/tasks`` — ``{"tasks": [...]}``, the task specs scheduled here, by id (an
  object, like the server's listings, so that fields can be added beside the list).
- ``GET /api/v1/agent`` — :class:`~taskscheduler_core.AgentIdentity`.
- ``GET /healthz`` — ``{"status": "ok"}`` while the agent serves.

Every refusal is ``{"error": {"code", "message", "field"}}`` with a 4xx status and the codes
of the server's API (docs/api.md): ``invalid_json`` and ``client_disconnected`` (400),
``not_found`` (404), ``method_not_allowed`` (405), ``body_too_large`` (413), ``invalid_body``
(422, not an object), ``invalid_string`` (422, a lone surrogate) and ``validation_error`` (422,
with the field at fault).
"""

from __future__ import annotations

import json
import logging
from typing import Any
from uuid import UUID

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from taskscheduler_core import AgentIdentity, ScheduleTask, WireError, structure, unstructure
from taskscheduler_core import __version__ as core_version

from .engine import Engine
from .errors import ApiError, TaskRejected

logger = logging.getLogger(__name__)

#: Request bodies larger than this are refused with 413: a task spec is a few hundred bytes.
MAX_BODY_BYTES = 1024 * 1024

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}


def create_app(*, engine: Engine, agent_id: UUID, version: str = core_version) -> Starlette:
    """The agent's ASGI app, scheduling into ``engine``."""

    async def schedule(request: Request) -> Response:
        data = await _json_body(request)
        try:
            body = structure(data, ScheduleTask)
            spec, changed = engine.schedule(body)
        except (WireError, TaskRejected) as error:
            raise ApiError(422, "validation_error", error.message, field=error.field) from None
        return JSONResponse({"task_id": str(spec.task_id), "changed": changed})

    async def list_tasks(request: Request) -> Response:
        return JSONResponse({"tasks": unstructure(engine.tasks())})

    async def identity(request: Request) -> Response:
        return JSONResponse(unstructure(AgentIdentity(agent_id=agent_id, version=version)))

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/api/v1/tasks/schedule", schedule, methods=["POST"]),
            Route("/api/v1/tasks", list_tasks, methods=["GET"]),
            Route("/api/v1/agent", identity, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        exception_handlers={
            ApiError: _api_error,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )


async def _json_body(request: Request) -> dict[str, Any]:
    """The body as a JSON object, refusing more than :data:`MAX_BODY_BYTES` before reading it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    body = bytearray()
    try:
        # Content-Length may be absent (chunked) or wrong: count what actually arrives.
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise _too_large()
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client went away mid-body") from None
    if not body.strip():
        raise ApiError(400, "invalid_json", "the request body is empty; send a JSON object")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as error:
        # ValueError covers bad UTF-8 as well as bad JSON; RecursionError a hostile nesting
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ApiError(
            422, "invalid_body", f"the body must be a JSON object, got {_json_kind(data)}"
        )
    where = _lone_surrogate_at(data)
    if where is not None:
        # Valid JSON ("\ud800"), but not Unicode: such a command could not be run, listed or
        # reported, so it is refused here.
        raise ApiError(
            422,
            "invalid_string",
            "strings must be valid Unicode (no lone surrogates)",
            field=where or None,
        )
    return data


def _json_kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    kinds = {list: "an array", str: "a string", int: "a number", float: "a number"}
    return kinds.get(type(value), "null")


def _lone_surrogate_at(data: object) -> str | None:
    """The dotted path of a string holding a lone UTF-16 surrogate, or ``None``.

    Iterative: a document that parsed may still nest deeper than recursion allows.
    """
    stack: list[tuple[object, str]] = [(data, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return path
        elif isinstance(value, dict):
            for key, item in value.items():
                stack.append((key, path))
                stack.append((item, f"{path}.{key}" if path else str(key)))
        elif isinstance(value, list):
            stack.extend(
                (item, f"{path}.{index}" if path else str(index))
                for index, item in enumerate(value)
            )
    return None


def _too_large() -> ApiError:
    return ApiError(413, "body_too_large", f"the body must be at most {MAX_BODY_BYTES} bytes")


async def _api_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return JSONResponse(error.body(), status_code=error.status)


async def _http_error(request: Request, error: Exception) -> Response:
    # Starlette's own refusals (no such route, wrong method) in our error shape.
    assert isinstance(error, HTTPException)
    status = error.status_code
    body = ApiError(status, _HTTP_CODES.get(status, f"http_{status}"), error.detail).body()
    return JSONResponse(body, status_code=status, headers=error.headers)


async def _internal_error(request: Request, error: Exception) -> Response:
    logger.error("internal error answering %s %s", request.method, request.url.path)
    body = ApiError(500, "internal_error", "internal error; see the agent's log").body()
    return JSONResponse(body, status_code=500)
