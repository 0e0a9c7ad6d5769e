"""Fixtures of the server tests: a real database, the app in-process, real HTTP peers.

``store`` is a real SQLite file, or, in a module marked
``pytestmark = pytest.mark.databases("sqlite", "postgresql")``, each of those in turn (a fresh
PostgreSQL schema per test: tests/databases.py; skipped without ``TSCHED_TEST_DATABASE_URL``).

Helpers are handed out as fixtures because test modules cannot import each other
(``--import-mode=importlib``): ``serve_asgi`` serves any ASGI app with hypercorn on a free
127.0.0.1 port for the length of a test, ``fake_agent`` makes a tiny real agent peer, and
``wait_until`` polls a condition with a bound.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import hypercorn.config
import hypercorn.trio
import pytest
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from databases import KINDS, postgres_schema
from processes import free_port
from taskscheduler_server import AsyncStore, Store, create_app

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    """A wall clock the test moves by hand (the app reads "now" only through it)."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


async def start_http(
    nursery: trio.Nursery, app: Any, port: int = 0
) -> tuple[str, trio.CancelScope]:
    """Serve ``app`` with hypercorn on 127.0.0.1; returns its URL and a scope that stops it."""
    config = hypercorn.config.Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.graceful_timeout = 0.1
    scope = trio.CancelScope()

    async def run(*, task_status: trio.TaskStatus[list[str]]) -> None:
        with scope:
            await hypercorn.trio.serve(app, config, task_status=task_status)

    binds: list[str] = await nursery.start(run)
    return binds[0], scope


class FakeAgent:
    """A tiny agent peer: keeps what it is told to schedule, lists it, removes it on ``DELETE``,
    takes manual runs of what it holds, and says who it is (with its ``labels``).

    It is a real HTTP server (served by :func:`start_http`), not a mock of one. ``tasks`` is
    what it holds now (a test may change it, as a wiped disk would); ``scheduled``, ``deleted``
    and ``runs`` are every request it got, in order (``events`` all three, interleaved).
    """

    def __init__(
        self,
        agent_id: UUID | None = None,
        *,
        refuse: int = 0,
        labels: dict[str, str] | None = None,
    ) -> None:
        self.agent_id = agent_id or uuid4()
        self.labels = labels or {}
        self.scheduled: list[dict[str, Any]] = []
        self.tasks: dict[str, dict[str, Any]] = {}
        self.deleted: list[str] = []
        self.runs: list[tuple[str, str]] = []  # (task id, scheduled_at) of each run taken
        self.events: list[tuple[str, str]] = []  # ("schedule" | "delete" | "run", task id)
        self.listings = 0
        self.identity_requests = 0
        self.refuse = refuse  # answer this many schedule requests with 503 first
        self.app = Starlette(
            routes=[
                Route("/api/v1/tasks/schedule", self._schedule, methods=["POST"]),
                Route("/api/v1/tasks", self._list, methods=["GET"]),
                Route("/api/v1/tasks/{task_id}", self._delete, methods=["DELETE"]),
                Route("/api/v1/tasks/{task_id}/run", self._run, methods=["POST"]),
                Route("/api/v1/agent", self._identity, methods=["GET"]),
            ]
        )

    @property
    def task_ids(self) -> set[str]:
        return {body["task_id"] for body in self.scheduled}

    async def _schedule(self, request: Request) -> Response:
        if self.refuse > 0:
            self.refuse -= 1
            return JSONResponse({"error": {"code": "busy", "message": "later"}}, status_code=503)
        body = await request.json()
        self.scheduled.append(body)
        self.events.append(("schedule", body["task_id"]))
        self.tasks[body["task_id"]] = body
        return JSONResponse({"task_id": body["task_id"], "changed": True})

    async def _list(self, request: Request) -> Response:
        self.listings += 1
        return JSONResponse({"tasks": list(self.tasks.values())})

    async def _delete(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        self.deleted.append(task_id)
        self.events.append(("delete", task_id))
        removed = self.tasks.pop(task_id, None) is not None
        return JSONResponse({"task_id": task_id, "removed": removed})

    async def _run(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        if task_id not in self.tasks:
            error = {"code": "task_not_found", "message": "not here", "field": "task_id"}
            return JSONResponse({"error": error}, status_code=404)
        body = await request.json()
        self.runs.append((task_id, body["scheduled_at"]))
        self.events.append(("run", task_id))
        return JSONResponse({}, status_code=202)

    async def _identity(self, request: Request) -> Response:
        self.identity_requests += 1
        return JSONResponse(
            {"agent_id": str(self.agent_id), "version": "test", "labels": self.labels}
        )


async def wait_until(
    condition: Callable[[], object | Awaitable[object]], *, timeout: float = 5.0
) -> None:
    """Poll ``condition`` (sync or async) until it is truthy; fail after ``timeout`` seconds."""
    with trio.fail_after(timeout):
        while True:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await trio.sleep(0.01)


ServeAsgi = Callable[..., Awaitable[tuple[str, trio.CancelScope]]]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run a test on each database its ``databases`` marker names (module-wide with
    ``pytestmark``, or on the test itself, which wins); without one, on SQLite only."""
    marker = metafunc.definition.get_closest_marker("databases")
    if marker is not None and "database_kind" in metafunc.fixturenames:
        unknown = set(marker.args) - set(KINDS)
        if unknown:
            raise pytest.UsageError(f"unknown databases {sorted(unknown)}: known are {KINDS}")
        metafunc.parametrize("database_kind", marker.args, indirect=True)


@pytest.fixture
def database_kind(request: pytest.FixtureRequest) -> str:
    kind: str = getattr(request, "param", "sqlite")
    return kind


@pytest.fixture
def database_location(database_kind: str, tmp_path: Path) -> Iterator[Path | str]:
    """Where this test's store lives: a SQLite file, or a fresh PostgreSQL schema's URL."""
    if database_kind == "postgresql":
        with postgres_schema() as url:
            yield url
    else:
        yield tmp_path / "server.sqlite"


@pytest.fixture
def store(database_location: Path | str) -> Iterator[Store]:
    with Store(database_location) as opened:
        yield opened


@pytest.fixture
def astore(store: Store) -> AsyncStore:
    return AsyncStore(store)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def client(astore: AsyncStore, clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(astore, clock=clock)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as http:
        yield http


@pytest.fixture
def serve_asgi(nursery: trio.Nursery) -> ServeAsgi:
    """``await serve_asgi(app, port=0)`` -> (base URL, scope to stop it); stops with the test."""

    async def serve(app: Any, port: int = 0) -> tuple[str, trio.CancelScope]:
        return await start_http(nursery, app, port)

    return serve


@pytest.fixture
def fake_agent() -> type[FakeAgent]:
    return FakeAgent


@pytest.fixture(name="wait_until")
def wait_until_fixture() -> Callable[..., Awaitable[None]]:
    return wait_until


@pytest.fixture(name="free_port")
def free_port_fixture() -> Callable[[], int]:
    return free_port
