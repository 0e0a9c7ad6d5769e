"""The access matrix: every endpoint of the server and of an agent, called with every kind of
credential, against a real server and two real agents (hypercorn on 127.0.0.1, SQLite files).

Each row says which status each caller gets; a final check makes sure that every route of both
apps has a row, so a new endpoint cannot be added without deciding who may call it.
"""

from __future__ import annotations

import json
import stat
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import httpx
import trio
from starlette.routing import Route

from taskscheduler_agent import AgentConfig, run_agent
from taskscheduler_agent.app import create_app as create_agent_app
from taskscheduler_agent.engine import Engine
from taskscheduler_server import ServerConfig, serve
from taskscheduler_server.app import create_app as create_server_app
from taskscheduler_server.store import AsyncStore, Store

ADMIN, READ, JOIN = "admin-secret", "read-secret", "join-secret"

#: The callers of every row, in this order.
CALLERS = ("none", "wrong", "read", "admin", "join", "agent", "other_agent", "server")

Expect = dict[str, int]


def expect(default: int, **overrides: int) -> Expect:
    return {caller: overrides.get(caller, default) for caller in CALLERS}


#: No token or an unknown one: 401 everywhere but the public endpoints.
UNKNOWN = {"none": 401, "wrong": 401, "server": 401}


@attrs.frozen
class Row:
    target: str  # "server" or "agent"
    method: str
    route: str  # the route's path template, for the coverage check
    path: Callable[[Any], str]
    expected: Expect
    body: Callable[[Any], object] | None = None


@attrs.define
class World:
    server_url: str
    agent_url: str
    agent_id: uuid.UUID
    other_id: uuid.UUID
    task_id: str
    spec: dict[str, Any]
    tokens: dict[str, str | None]
    #: A task of its own for the rows that delete (the admin's call succeeds).
    doomed_id: str = ""


def report_of(agent_id: uuid.UUID) -> dict[str, Any]:
    return {"server_id": str(agent_id), "stdout": "reported by hand\n"}


ROWS = [
    Row("server", "GET", "/healthz", lambda w: "/healthz", expect(200)),
    Row("server", "GET", "/api/v1/openapi.json", lambda w: "/api/v1/openapi.json", expect(200)),
    # Readiness is for orchestrators' probes, which present no token; it tells whether the
    # database answers and who holds the lease, nothing about tasks or outputs.
    Row("server", "GET", "/readyz", lambda w: "/readyz", expect(200)),
    # The metrics say how much runs and fails across the fleet: for readers, like the listings.
    Row(
        "server",
        "GET",
        "/metrics",
        lambda w: "/metrics",
        expect(403, read=200, admin=200, **UNKNOWN),
    ),
    Row(
        "server",
        "POST",
        "/api/v1/tasks/create",
        lambda w: "/api/v1/tasks/create",
        expect(403, admin=201, **UNKNOWN),
        body=lambda w: {"command": "true", "frequency": "every 1 hour"},
    ),
    Row(
        "server",
        "GET",
        "/api/v1/tasks/{task_id}/latest_output",
        lambda w: f"/api/v1/tasks/{w.task_id}/latest_output",
        expect(403, read=200, admin=200, **UNKNOWN),
    ),
    Row(
        "server",
        "GET",
        "/api/v1/agents",
        lambda w: "/api/v1/agents",
        expect(403, read=200, admin=200, **UNKNOWN),
    ),
    Row(
        "server",
        "POST",
        "/api/v1/tasks/{task_id}/complete",
        lambda w: f"/api/v1/tasks/{w.task_id}/complete",
        expect(403, admin=200, agent=200, **UNKNOWN),
        body=lambda w: report_of(w.agent_id),
    ),
    # A report for a task that is not assigned to the agent: refused even with its own id.
    Row(
        "server",
        "POST",
        "/api/v1/tasks/{task_id}/complete",
        lambda w: f"/api/v1/tasks/{uuid.UUID(int=1)}/complete",
        expect(403, admin=404, **UNKNOWN),
        body=lambda w: report_of(w.agent_id),
    ),
    # A batch: another agent's request is answered 200, each of its reports refused inside the
    # answer (``forbidden``: not its to make), as tests/server/test_batch_reports.py checks.
    Row(
        "server",
        "POST",
        "/api/v1/executions",
        lambda w: "/api/v1/executions",
        expect(403, admin=200, agent=200, other_agent=200, **UNKNOWN),
        body=lambda w: {"executions": [{"task_id": w.task_id, **report_of(w.agent_id)}]},
    ),
    Row(
        "server",
        "POST",
        "/api/v1/agents/{agent_id}/heartbeat",
        lambda w: f"/api/v1/agents/{w.agent_id}/heartbeat",
        expect(403, admin=200, agent=200, **UNKNOWN),
        body=lambda w: {},
    ),
    # Registering the agent again: only with its own credential (no take-over of its id).
    Row(
        "server",
        "POST",
        "/api/v1/agents/register",
        lambda w: "/api/v1/agents/register",
        expect(403, agent=200, **UNKNOWN),
        body=lambda w: {"agent_id": str(w.agent_id), "url": w.agent_url},
    ),
    Row(
        "server",
        "POST",
        "/api/v1/tasks",
        lambda w: "/api/v1/tasks",
        expect(403, admin=201, **UNKNOWN),
        body=lambda w: {"command": "true", "frequency": "@daily", "name": "matrix"},
    ),
    Row(
        "server",
        "GET",
        "/api/v1/tasks",
        lambda w: "/api/v1/tasks?state=all&limit=5",
        expect(403, read=200, admin=200, **UNKNOWN),
    ),
    Row(
        "server",
        "GET",
        "/api/v1/tasks/{task_id}",
        lambda w: f"/api/v1/tasks/{w.task_id}",
        expect(403, read=200, admin=200, **UNKNOWN),
    ),
    Row(
        "server",
        "PATCH",
        "/api/v1/tasks/{task_id}",
        lambda w: f"/api/v1/tasks/{w.task_id}",
        expect(403, admin=200, **UNKNOWN),
        body=lambda w: {"name": "renamed by the admin"},
    ),
    Row(
        "server",
        "POST",
        "/api/v1/tasks/{task_id}/pause",
        lambda w: f"/api/v1/tasks/{w.task_id}/pause",
        expect(403, admin=200, **UNKNOWN),
    ),
    Row(
        "server",
        "POST",
        "/api/v1/tasks/{task_id}/resume",
        lambda w: f"/api/v1/tasks/{w.task_id}/resume",
        expect(403, admin=200, **UNKNOWN),
    ),
    Row(
        "server",
        "POST",
        "/api/v1/tasks/{task_id}/run",
        lambda w: f"/api/v1/tasks/{w.task_id}/run",
        expect(403, admin=202, **UNKNOWN),
    ),
    Row(
        "server",
        "GET",
        "/api/v1/tasks/{task_id}/runs",
        lambda w: f"/api/v1/tasks/{w.task_id}/runs",
        expect(403, read=200, admin=200, **UNKNOWN),
    ),
    Row(
        "server",
        "GET",
        "/api/v1/tasks/{task_id}/executions",
        lambda w: f"/api/v1/tasks/{w.task_id}/executions?limit=3",
        expect(403, read=200, admin=200, **UNKNOWN),
    ),
    Row(
        "server",
        "DELETE",
        "/api/v1/tasks/{task_id}",
        lambda w: f"/api/v1/tasks/{w.doomed_id}",
        expect(403, admin=200, **UNKNOWN),
    ),
    Row(
        "server",
        "DELETE",
        "/api/v1/tasks/{task_id}",
        lambda w: f"/api/v1/tasks/{w.doomed_id}?purge=true",
        expect(403, admin=204, **UNKNOWN),
    ),
    Row(
        "server",
        "GET",
        "/api/v1/agents/{agent_id}",
        lambda w: f"/api/v1/agents/{w.agent_id}",
        expect(403, read=200, admin=200, **UNKNOWN),
    ),
    # A new agent joins with the join token (or the admin's); agents cannot mint others.
    Row(
        "server",
        "POST",
        "/api/v1/agents/register",
        lambda w: "/api/v1/agents/register",
        expect(403, join=200, admin=200, **UNKNOWN),
        body=lambda w: {"agent_id": str(uuid.uuid4()), "url": "http://127.0.0.1:9"},
    ),
    Row("agent", "GET", "/healthz", lambda w: "/healthz", expect(200)),
    Row("agent", "GET", "/api/v1/agent", lambda w: "/api/v1/agent", expect(200)),
    Row("agent", "GET", "/api/v1/openapi.json", lambda w: "/api/v1/openapi.json", expect(200)),
    # An agent's readiness and metrics are counts and timings of its own (no command, output or
    # task id), and the server's token is not the scraper's to hold: public, like /healthz.
    Row("agent", "GET", "/readyz", lambda w: "/readyz", expect(200)),
    Row("agent", "GET", "/metrics", lambda w: "/metrics", expect(200)),
    Row(
        "agent",
        "POST",
        "/api/v1/tasks/schedule",
        lambda w: "/api/v1/tasks/schedule",
        expect(401, server=200),
        body=lambda w: w.spec,
    ),
    Row("agent", "GET", "/api/v1/tasks", lambda w: "/api/v1/tasks", expect(401, server=200)),
    Row(
        "agent",
        "DELETE",
        "/api/v1/tasks/{task_id}",
        lambda w: f"/api/v1/tasks/{uuid.UUID(int=2)}",
        expect(401, server=200),
    ),
    Row(
        "agent",
        "POST",
        "/api/v1/tasks/{task_id}/run",
        lambda w: f"/api/v1/tasks/{w.task_id}/run",
        expect(401, server=202),
        body=lambda w: {"scheduled_at": "2026-01-01T00:00:00Z"},
    ),
]


def credentials(data_dir: Path) -> dict[str, str]:
    path = data_dir / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data: dict[str, str] = json.loads(path.read_text())
    return data


async def wait_for(check: Callable[[], Any], what: str, timeout: float = 15.0) -> None:
    with trio.move_on_after(timeout):
        while not await check():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out waiting for {what}")


def agent_config(tmp_path: Path, name: str, server_url: str) -> AgentConfig:
    return AgentConfig(
        data_dir=tmp_path / name,
        port=0,
        server_url=server_url,
        join_token=JOIN,
        heartbeat_interval=0.2,
        report_backoff_initial=0.05,
        register_backoff_max=0.2,
    )


async def test_every_endpoint_answers_every_caller_as_the_matrix_says(tmp_path: Path) -> None:
    config = ServerConfig(
        database=tmp_path / "server.sqlite",
        port=0,
        admin_token=ADMIN,
        read_token=READ,
        join_token=JOIN,
        backoff_initial=timedelta(milliseconds=20),
        backoff_max=timedelta(milliseconds=200),
    )
    async with trio.open_nursery() as nursery:
        server_url = await nursery.start(serve, config)
        first = await nursery.start(run_agent, agent_config(tmp_path, "a", server_url))
        second = await nursery.start(run_agent, agent_config(tmp_path, "b", server_url))
        for name in ("a", "b"):
            await wait_for(
                lambda name=name: trio.to_thread.run_sync(
                    (tmp_path / name / "credentials.json").exists
                ),
                f"agent {name}'s credentials",
            )
        mine, theirs = credentials(tmp_path / "a"), credentials(tmp_path / "b")
        tokens: dict[str, str | None] = {
            "none": None,
            "wrong": "not-a-token",
            "read": READ,
            "admin": ADMIN,
            "join": JOIN,
            "agent": mine["agent_token"],
            "other_agent": theirs["agent_token"],
            "server": mine["server_token"],
        }
        async with httpx.AsyncClient(timeout=10) as http:
            admin = {"Authorization": f"Bearer {ADMIN}"}
            created = await http.post(
                f"{server_url}/api/v1/tasks/create",
                json={"command": "echo from an agent", "frequency": "every 1 second"},
                headers=admin,
            )
            assert created.status_code == 201, created.text
            task_id = created.json()["command_id"]

            # The agents got the task (the server presented its token), ran it, and reported
            # with their own credentials.
            async def both_reported() -> bool:
                answer = await http.get(
                    f"{server_url}/api/v1/tasks/{task_id}/latest_output", headers=admin
                )
                outputs = answer.json().get("outputs", []) if answer.is_success else []
                return {o["agent_id"] for o in outputs if o.get("stdout")} == {
                    str(first.agent_id),
                    str(second.agent_id),
                }

            await wait_for(both_reported, "both agents' reports")
            server_headers = {"Authorization": f"Bearer {mine['server_token']}"}
            listing = await http.get(f"{first.url}/api/v1/tasks", headers=server_headers)
            doomed = await http.post(
                f"{server_url}/api/v1/tasks",
                json={"command": "true", "frequency": "every 1 hour"},
                headers=admin,
            )
            assert doomed.status_code == 201, doomed.text
            world = World(
                server_url=server_url,
                agent_url=first.url,
                agent_id=first.agent_id,
                other_id=second.agent_id,
                task_id=task_id,
                spec=listing.json()["tasks"][0],
                tokens=tokens,
                doomed_id=doomed.json()["id"],
            )

            failures = []
            for row in ROWS:
                base = world.server_url if row.target == "server" else world.agent_url
                for caller in CALLERS:
                    token = tokens[caller]
                    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
                    body = None if row.body is None else row.body(world)
                    response = await http.request(
                        row.method, base + row.path(world), json=body, headers=headers
                    )
                    status = response.status_code
                    if status != row.expected[caller]:
                        failures.append(
                            f"{row.target} {row.method} {row.route} as {caller}: {status} "
                            f"(expected {row.expected[caller]}): {response.text[:200]}"
                        )
                    if status >= 400:
                        error = response.json()["error"]
                        assert set(error) == {"code", "message", "field"}
                        if status == 401:
                            assert error["code"] == "unauthorized"
                            assert response.headers["www-authenticate"].startswith("Bearer")
                        if status == 403:
                            assert error["code"] == "forbidden"
            assert not failures, "\n".join(failures)
        nursery.cancel_scope.cancel()


def route_keys(routes: list[Any]) -> set[tuple[str, str]]:
    keys = set()
    for route in routes:
        assert isinstance(route, Route)
        for method in route.methods or ():
            if method != "HEAD":
                keys.add((method, route.path))
    return keys


async def test_the_matrix_covers_every_route(tmp_path: Path) -> None:
    store = Store(tmp_path / "server.sqlite")
    try:
        server_app = create_server_app(AsyncStore(store))
    finally:
        store.close()

    async def deliver(execution: object) -> None:
        pass

    agent_app = create_agent_app(
        engine=Engine(agent_id=uuid.uuid4(), deliver=deliver), agent_id=uuid.uuid4()
    )
    for target, app in (("server", server_app), ("agent", agent_app)):
        covered = {(row.method, row.route) for row in ROWS if row.target == target}
        assert route_keys(app.routes) == covered, target


def test_tokens_never_appear_in_a_configuration_repr(tmp_path: Path) -> None:
    server = ServerConfig(
        database=tmp_path / "s.sqlite", admin_token=ADMIN, read_token=READ, join_token=JOIN
    )
    agent = AgentConfig(data_dir=tmp_path, join_token=JOIN)
    for text in (repr(server), repr(agent)):
        assert ADMIN not in text
        assert READ not in text
        assert JOIN not in text
