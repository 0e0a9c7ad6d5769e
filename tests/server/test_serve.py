"""``serve()`` for real: hypercorn on 127.0.0.1:0, a SQLite file, an agent peer, a restart."""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

import taskscheduler_server
from taskscheduler_server import ServerConfig, parse_available_servers, serve

WaitUntil = Callable[..., Awaitable[None]]


def config_for(tmp_path: Path, **options: Any) -> ServerConfig:
    defaults: dict[str, Any] = {
        "database": tmp_path / "data" / "server.sqlite",
        "port": 0,
        "backoff_initial": timedelta(milliseconds=20),
        "backoff_max": timedelta(milliseconds=100),
        "graceful_timeout": timedelta(seconds=1),
    }
    return ServerConfig(**(defaults | options))


async def test_serve_end_to_end_and_restart(
    tmp_path: Path, serve_asgi: Any, fake_agent: Any, wait_until: WaitUntil
) -> None:
    agent = fake_agent()
    agent_url, _ = await serve_asgi(agent.app)
    config = config_for(tmp_path)
    expected = [{"agent_id": str(agent.agent_id), "stdout": "hello world\n"}]

    async with trio.open_nursery() as nursery:
        base_url = await nursery.start(serve, config)
        assert base_url.startswith("http://127.0.0.1:")
        assert not base_url.endswith(":0")
        async with httpx.AsyncClient(base_url=base_url) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            registered = await client.post(
                "/api/v1/agents/register",
                json={"agent_id": str(agent.agent_id), "url": agent_url},
            )
            assert registered.status_code == 200
            created = await client.post(
                "/api/v1/tasks/create",
                json={"command": "echo hello world", "frequency": "every 30 seconds"},
            )
            assert created.status_code == 201
            task_id = created.json()["command_id"]
            await wait_until(lambda: agent.task_ids == {task_id})

            ack = await client.post(
                f"/api/v1/tasks/{task_id}/complete",
                json={"server_id": str(agent.agent_id), "stdout": "hello world\n"},
            )
            assert ack.json() == {"acknowledged": True, "duplicate": False}
            output = (await client.get(f"/api/v1/tasks/{task_id}/latest_output")).json()
            assert output["outputs"] == expected
            missing = await client.get("/api/v1/tasks/create/latest_output")
            assert missing.status_code == 404
            assert missing.json()["error"]["code"] == "task_not_found"
        nursery.cancel_scope.cancel()

    # Same file, new process life: what was acknowledged is still there.
    async with trio.open_nursery() as nursery:
        base_url = await nursery.start(serve, config)
        async with httpx.AsyncClient(base_url=base_url) as client:
            output = (await client.get(f"/api/v1/tasks/{task_id}/latest_output")).json()
            assert output["outputs"] == expected
            [listed] = (await client.get("/api/v1/agents")).json()["agents"]
            assert listed["url"] == agent_url
        nursery.cancel_scope.cancel()


async def test_serve_resolves_available_servers(
    tmp_path: Path, serve_asgi: Any, fake_agent: Any, wait_until: WaitUntil
) -> None:
    agent = fake_agent()
    agent_url, _ = await serve_asgi(agent.app)
    config = config_for(tmp_path, available_agents=parse_available_servers(f" {agent_url}, "))

    async with trio.open_nursery() as nursery:
        base_url = await nursery.start(serve, config)
        async with httpx.AsyncClient(base_url=base_url) as client:

            async def agent_known() -> bool:
                agents = (await client.get("/api/v1/agents")).json()["agents"]
                return [a["id"] for a in agents] == [str(agent.agent_id)]

            await wait_until(agent_known)
            created = await client.post(
                "/api/v1/tasks/create", json={"command": "date", "frequency": "every 1 minutes"}
            )
            task_id = created.json()["command_id"]
            await wait_until(lambda: agent.task_ids == {task_id})
        nursery.cancel_scope.cancel()


async def test_cancelling_serve_lets_an_open_request_finish(
    tmp_path: Path, nursery: trio.Nursery, wait_until: WaitUntil
) -> None:
    server_scope = trio.CancelScope()

    async def run_server(*, task_status: trio.TaskStatus[str]) -> None:
        with server_scope:
            await serve(config_for(tmp_path), task_status=task_status)

    base_url = await nursery.start(run_server)
    answers: list[httpx.Response] = []

    async def slow_body() -> AsyncIterator[bytes]:
        yield b'{"command": "echo slow", '
        await trio.sleep(0.3)
        yield b'"frequency": "every 1 hours"}'

    async with httpx.AsyncClient(base_url=base_url) as client:

        async def send() -> None:
            answers.append(await client.post("/api/v1/tasks/create", content=slow_body()))

        nursery.start_soon(send)
        await trio.sleep(0.1)
        server_scope.cancel()  # while the upload is still in flight
        await wait_until(lambda: answers, timeout=5)
    assert [answer.status_code for answer in answers] == [201]
    # And the server is gone.
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient(base_url=base_url) as client:
            await client.get("/healthz")


async def test_serve_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "junk.sqlite"
    path.write_bytes(b"\x00junk" * 1000)
    with pytest.raises(taskscheduler_server.ServerError):
        await serve(config_for(tmp_path, database=path))


def test_server_config_defaults_and_checks(tmp_path: Path) -> None:
    config = ServerConfig(database=str(tmp_path / "x.sqlite"))  # type: ignore[arg-type]
    assert (config.host, config.port, config.available_agents) == ("127.0.0.1", 8080, ())
    assert config.database == tmp_path / "x.sqlite"
    assert config.max_body_bytes == 1024 * 1024
    assert config.report_grace == timedelta(seconds=60)
    with pytest.raises(ValueError, match="port"):
        ServerConfig(database=tmp_path, port=70000)
    with pytest.raises(ValueError, match="backoff_max"):
        ServerConfig(
            database=tmp_path,
            backoff_initial=timedelta(seconds=5),
            backoff_max=timedelta(seconds=1),
        )
    with pytest.raises(ValueError, match="ftp"):
        ServerConfig(database=tmp_path, available_agents=("ftp://host",))


def test_available_servers_parsing() -> None:
    assert parse_available_servers("") == ()
    assert parse_available_servers("http://a:1/, https://b:2 ,,agent3:8081") == (
        "http://a:1",
        "https://b:2",
        "http://agent3:8081",
    )


def test_public_api_is_sorted_and_complete() -> None:
    names = taskscheduler_server.__all__
    assert names == sorted(names)
    for name in names:
        assert getattr(taskscheduler_server, name) is not None
    assert issubclass(taskscheduler_server.TaskNotFound, taskscheduler_server.ServerError)
    assert issubclass(taskscheduler_server.ApiError, taskscheduler_server.ServerError)


def test_logging_is_quiet_and_lives_under_taskscheduler_server() -> None:
    for name in ("app", "dispatch", "serve"):
        module = importlib.import_module(f"taskscheduler_server.{name}")
        assert module.logger.name.startswith("taskscheduler.server")
    http = importlib.import_module("taskscheduler_server.serve").hypercorn_config(
        ServerConfig(database=Path("x"), port=0)
    )
    assert http.accesslog is None
    assert isinstance(http.errorlog, logging.Logger)
    assert http.errorlog.name == "taskscheduler.server.http"
