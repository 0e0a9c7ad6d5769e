"""How the clients build requests and read answers the real server never gives.

A small Starlette app, run in-process through ``httpx.ASGITransport``, plays a server that is
broken, foreign or behind a proxy: 5xx pages, HTML 404s, bodies that are not JSON.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from taskscheduler_client import (
    ApiError,
    AsyncClient,
    InvalidRequest,
    ServerError,
    TaskNotFound,
    UnexpectedResponse,
)
from taskscheduler_core import Task, TaskCreated, parse_frequency, unstructure

TASK_ID = uuid4()
NOW = datetime(2026, 11, 28, 3, 16, 31, 123456, tzinfo=UTC)

ANSWERS: dict[str, Response] = {
    "down": PlainTextResponse("upstream   is\n down", status_code=503),
    "html404": Response("<html>Not Found</html>", status_code=404, media_type="text/html"),
    "not-json": PlainTextResponse("hello"),
    "wrong-shape": JSONResponse({"outputs": "none"}),
    "conflict": JSONResponse(
        {"error": {"code": "conflict", "message": "busy", "field": None}}, status_code=409
    ),
    "too-large": JSONResponse(
        {"error": {"code": "too_large", "message": "body too large"}}, status_code=413
    ),
    "odd-error": JSONResponse({"error": "nope"}, status_code=400),
    "empty-500": Response(b"", status_code=500),
}


async def latest_output(request: Request) -> Response:
    return ANSWERS[request.path_params["task_id"]]


async def create(request: Request) -> Response:
    body: Any = await request.json()
    # the client sends exactly the body of the original design, as JSON
    assert request.headers["content-type"] == "application/json"
    assert body == {"command": "echo hi", "frequency": "every 3 minutes"}
    task = Task(
        id=TASK_ID,
        command=body["command"],
        frequency=parse_frequency(body["frequency"]),
        anchor=NOW,
        created_at=NOW,
    )
    return JSONResponse(unstructure(TaskCreated(command_id=task.id, task=task)), status_code=201)


app = Starlette(
    routes=[
        Route("/api/v1/tasks/create", create, methods=["POST"]),
        Route("/api/v1/tasks/{task_id}/latest_output", latest_output),
    ]
)


@pytest.fixture
async def client() -> AsyncIterator[AsyncClient]:
    async with AsyncClient("http://test", transport=httpx.ASGITransport(app=app)) as client:
        yield client


async def test_create_sends_the_original_body_and_reads_task_created(client: AsyncClient) -> None:
    task = await client.create_task("echo hi", parse_frequency("EVERY 3 minute"))
    assert task.id == TASK_ID
    assert task.anchor == NOW


@pytest.mark.parametrize(
    ("answer", "kind", "status", "code", "message"),
    [
        ("down", ServerError, 503, "http_503", "HTTP 503 Service Unavailable: upstream is down"),
        ("html404", TaskNotFound, 404, "http_404", "HTTP 404 Not Found: <html>Not Found</html>"),
        ("conflict", ApiError, 409, "conflict", "busy"),
        ("too-large", InvalidRequest, 413, "too_large", "body too large"),
        ("odd-error", InvalidRequest, 400, "http_400", 'HTTP 400 Bad Request: {"error":"nope"}'),
        ("empty-500", ServerError, 500, "http_500", "HTTP 500 Internal Server Error"),
    ],
)
async def test_error_answers_map_to_the_exception_tree(
    client: AsyncClient, answer: str, kind: type[ApiError], status: int, code: str, message: str
) -> None:
    with pytest.raises(ApiError) as caught:
        await client.latest_output(answer)

    error = caught.value
    assert type(error) is kind
    assert (error.status, error.code, error.message, error.field) == (status, code, message, None)
    assert str(error) == message


@pytest.mark.parametrize(
    ("answer", "detail"),
    [("not-json", "not JSON"), ("wrong-shape", "does not fit the API")],
)
async def test_a_success_that_is_not_the_api_raises_unexpected_response(
    client: AsyncClient, answer: str, detail: str
) -> None:
    with pytest.raises(UnexpectedResponse, match=detail) as caught:
        await client.latest_output(answer)
    assert caught.value.status == 200
    assert answer in str(caught.value)
