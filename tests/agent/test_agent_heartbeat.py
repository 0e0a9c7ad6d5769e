"""Heartbeats against a tiny real server on 127.0.0.1: sent on time, and a server that does not
know the agent (404 ``agent_not_found``) gets a registration again."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from taskscheduler_agent import AgentConfig, AgentStarted, run_agent

ServeAsgi = Callable[..., Awaitable[str]]
WaitFor = Callable[..., Awaitable[None]]


class LivenessServer:
    """Knows the agents that registered, until told to forget them."""

    def __init__(self, *, with_heartbeats: bool = True) -> None:
        self.known: set[str] = set()
        self.registrations: list[dict[str, Any]] = []
        self.heartbeats: list[tuple[str, Any]] = []
        routes = [Route("/api/v1/agents/register", self.register, methods=["POST"])]
        if with_heartbeats:
            routes.append(
                Route("/api/v1/agents/{agent_id}/heartbeat", self.heartbeat, methods=["POST"])
            )
        self.app = Starlette(routes=routes)

    async def register(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.registrations.append(body)
        self.known.add(body["agent_id"])
        return JSONResponse({"id": body["agent_id"], "url": body["url"], "status": "alive"})

    async def heartbeat(self, request: Request) -> Response:
        agent_id = request.path_params["agent_id"]
        self.heartbeats.append((agent_id, json.loads(await request.body())))
        if agent_id not in self.known:
            error = {"code": "agent_not_found", "message": "who?", "field": "agent_id"}
            return JSONResponse({"error": error}, status_code=404)
        return JSONResponse({"agent_id": agent_id, "status": "alive"})


def agent_config(tmp_path: Path, server_url: str) -> AgentConfig:
    return AgentConfig(
        data_dir=tmp_path / "agent",
        port=0,
        server_url=server_url,
        heartbeat_interval=0.05,
        report_backoff_initial=0.01,
        register_backoff_max=0.1,
    )


async def test_heartbeats_follow_the_registration_at_the_interval(
    tmp_path: Path, nursery: trio.Nursery, serve_asgi: ServeAsgi, wait_for: WaitFor
) -> None:
    server = LivenessServer()
    url = await serve_asgi(server.app)
    started: AgentStarted = await nursery.start(run_agent, agent_config(tmp_path, url))
    begun = trio.current_time()
    await wait_for(lambda: len(server.heartbeats) >= 5)
    took = trio.current_time() - begun
    assert 0.2 <= took < 5
    assert server.heartbeats[:5] == [(str(started.agent_id), {})] * 5
    assert len(server.registrations) == 1


async def test_an_agent_the_server_forgot_registers_again(
    tmp_path: Path, nursery: trio.Nursery, serve_asgi: ServeAsgi, wait_for: WaitFor
) -> None:
    server = LivenessServer()
    url = await serve_asgi(server.app)
    started: AgentStarted = await nursery.start(run_agent, agent_config(tmp_path, url))
    await wait_for(lambda: len(server.heartbeats) >= 2)
    server.known.clear()  # its database was replaced, say
    await wait_for(lambda: len(server.registrations) == 2)
    assert server.registrations[1] == {
        "agent_id": str(started.agent_id),
        "url": started.url,
        "labels": {},
    }
    count = len(server.heartbeats)
    await wait_for(lambda: len(server.heartbeats) >= count + 2)  # and it goes on
    assert len(server.registrations) == 2


async def test_a_server_without_heartbeats_is_not_flooded_with_registrations(
    tmp_path: Path, nursery: trio.Nursery, serve_asgi: ServeAsgi, wait_for: WaitFor
) -> None:
    server = LivenessServer(with_heartbeats=False)
    url = await serve_asgi(server.app)
    await nursery.start(run_agent, agent_config(tmp_path, url))
    await wait_for(lambda: server.registrations)
    await trio.sleep(0.5)  # some ten heartbeats, each answered a plain 404 by the router
    assert len(server.registrations) == 1
