"""Fixtures of the agent tests: real peers on 127.0.0.1 and bounded waits.

``serve_asgi`` serves any ASGI app with hypercorn's trio worker on a free loopback port for the
length of a test; ``start_collector`` starts a tiny real "server" that records registrations and
reports (and can be told to fail first), so the agent's HTTP clients talk to a real peer. The
helpers are fixtures because test modules cannot import each other (``--import-mode=importlib``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

#: Generous bound for anything that should take a second or two; only reached on failure.
WAIT = 15.0

ServeAsgi = Callable[..., Awaitable[str]]


@pytest.fixture
def serve_asgi(nursery: trio.Nursery) -> ServeAsgi:
    """Serve an ASGI app on ``127.0.0.1:<port>`` (any free one by default) until the test ends;
    returns its base URL."""

    async def start(app: Any, *, port: int = 0) -> str:
        config = HypercornConfig()
        config.bind = [f"127.0.0.1:{port}"]
        config.accesslog = None
        binds: list[str] = await nursery.start(partial(serve, cast(ASGIFramework, app), config))
        return binds[0]

    return start


async def _wait_for(condition: Callable[[], object], *, timeout: float = WAIT) -> None:
    """Poll ``condition`` on the real clock until it is truthy; fail after ``timeout`` s."""
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(0.01)
        return
    pytest.fail(f"timed out after {timeout} s waiting for {condition}")


async def _settle(condition: Callable[[], object], *, timeout: float = WAIT) -> None:
    """Like :func:`_wait_for` under a ``MockClock`` that only moves when told to.

    The mock clock stands still, so the bound is real time (read from the OS, which only the
    test does), and each poll lets other tasks and subprocess I/O run for up to 10 ms.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {condition}")
        await trio.testing.wait_all_tasks_blocked(cushion=0.01)


def _live_group_members(group: int) -> list[int]:
    """The pids of processes in process group ``group`` that are not zombies."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
        fields = stat[stat.rindex(")") + 2 :].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp == group and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in ("Z", "X")


async def _read_pids(path: Path, count: int) -> list[int]:
    """Wait until ``path`` holds ``count`` pids, one per line, and return them."""

    def ready() -> bool:
        return path.exists() and len(path.read_text().split()) >= count

    await _wait_for(ready)
    return [int(word) for word in path.read_text().split()[:count]]


class Collector:
    """A real stand-in server: records ``register`` and ``complete`` bodies.

    ``fail_first`` answers that many requests of each kind with 503 first; ``status_for`` maps a
    task id to the status its reports always get (e.g. 422 for refused, 500 for a broken one).
    """

    def __init__(self, *, fail_first: int = 0, status_for: dict[str, int] | None = None) -> None:
        self.url = ""
        self.fail_first = fail_first
        self.status_for = status_for or {}
        self.registrations: list[dict[str, Any]] = []
        self.reports: list[tuple[str, dict[str, Any]]] = []
        self.attempts: dict[str, int] = {"register": 0, "complete": 0}
        self.app = Starlette(
            routes=[
                Route("/api/v1/agents/register", self._register, methods=["POST"]),
                Route("/api/v1/tasks/{task_id}/complete", self._complete, methods=["POST"]),
            ]
        )

    def reports_for(self, task_id: object) -> list[dict[str, Any]]:
        return [body for tid, body in self.reports if tid == str(task_id)]

    async def _register(self, request: Request) -> Response:
        self.attempts["register"] += 1
        if self.attempts["register"] <= self.fail_first:
            return JSONResponse({"error": "not yet"}, status_code=503)
        self.registrations.append(json.loads(await request.body()))
        return JSONResponse({"ok": True})

    async def _complete(self, request: Request) -> Response:
        self.attempts["complete"] += 1
        task_id = request.path_params["task_id"]
        status = self.status_for.get(task_id)
        if status is None and self.attempts["complete"] <= self.fail_first:
            status = 503
        if status is not None and status >= 300:
            # our server's codes for the refusals it means for good; any other code is not one
            code = {404: "task_not_found", 422: "validation_error"}.get(status, "nope")
            return JSONResponse({"error": {"code": code}}, status_code=status)
        self.reports.append((task_id, json.loads(await request.body())))
        return JSONResponse({"ok": True})


@pytest.fixture
def start_collector(serve_asgi: ServeAsgi) -> Callable[..., Awaitable[Collector]]:
    """Start a :class:`Collector` on a free loopback port; ``collector.url`` is its base URL."""

    async def start(*, port: int = 0, **options: Any) -> Collector:
        collector = Collector(**options)
        collector.url = await serve_asgi(collector.app, port=port)
        return collector

    return start


@pytest.fixture
def wait_for() -> Callable[..., Awaitable[None]]:
    return _wait_for


@pytest.fixture
def settle() -> Callable[..., Awaitable[None]]:
    return _settle


@pytest.fixture
def read_pids() -> Callable[[Path, int], Awaitable[list[int]]]:
    return _read_pids


@pytest.fixture
def live_group_members() -> Callable[[int], list[int]]:
    return _live_group_members


@pytest.fixture
def pid_alive() -> Callable[[int], bool]:
    return _pid_alive


@pytest.fixture
def shell_env() -> dict[str, str]:
    """A small, explicit environment for commands: just enough PATH to find ``sleep``."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
