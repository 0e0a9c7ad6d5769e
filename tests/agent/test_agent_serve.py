"""``run_agent`` as a whole: real HTTP on 127.0.0.1, a real collector as the server."""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
import trio

from taskscheduler_agent import (
    SECRET_VARIABLES,
    AgentConfig,
    AgentStarted,
    load_or_create_agent_id,
    run_agent,
)
from taskscheduler_core import parse_time

StartCollector = Callable[..., Awaitable[Any]]
WaitFor = Callable[..., Awaitable[None]]


def agent_config(tmp_path: Path, **options: Any) -> AgentConfig:
    fast = {"report_backoff_initial": 0.01, "report_backoff_max": 0.1, "register_backoff_max": 0.1}
    return AgentConfig(**({"data_dir": tmp_path / "agent", "port": 0} | fast | options))


async def test_registers_runs_a_scheduled_task_and_reports_it(
    tmp_path: Path, nursery: trio.Nursery, start_collector: StartCollector, wait_for: WaitFor
) -> None:
    collector = await start_collector(fail_first=2)  # registration succeeds on the 3rd try
    config = agent_config(tmp_path, server_url=collector.url)
    started: AgentStarted = await nursery.start(run_agent, config)
    assert started.url == started.bound_url
    assert started.url.startswith("http://127.0.0.1:")
    assert started.agent_id == load_or_create_agent_id(config.data_dir)

    await wait_for(lambda: collector.registrations)
    assert collector.registrations == [
        {"agent_id": str(started.agent_id), "url": started.url, "labels": {}}
    ]

    task_id = str(uuid4())
    async with httpx.AsyncClient(base_url=started.url) as http:
        identity = (await http.get("/api/v1/agent")).json()
        assert identity["agent_id"] == str(started.agent_id)
        response = await http.post(
            "/api/v1/tasks/schedule",
            json={
                "task_id": task_id,
                "command": "echo hello world",
                "frequency": "every 1 seconds",
            },
        )
        assert response.json() == {"task_id": task_id, "changed": True}

    await wait_for(lambda: len(collector.reports_for(task_id)) >= 2)
    first, second = collector.reports_for(task_id)[:2]
    for report in (first, second):
        assert report["server_id"] == str(started.agent_id)
        assert (report["stdout"], report["stderr"]) == ("hello world\n", "")
        assert (report["status"], report["exit_code"]) == ("succeeded", 0)
    gap = parse_time(second["scheduled_at"]) - parse_time(first["scheduled_at"])
    assert gap == timedelta(seconds=1)


async def test_advertise_url_is_what_the_server_is_told(
    tmp_path: Path, nursery: trio.Nursery, start_collector: StartCollector, wait_for: WaitFor
) -> None:
    collector = await start_collector()
    advertised = "http://agent-7.internal:9000"
    config = agent_config(tmp_path, server_url=f"{collector.url}/", advertise_url=advertised)
    started: AgentStarted = await nursery.start(run_agent, config)
    assert (started.url, started.bound_url.startswith("http://127.0.0.1:")) == (advertised, True)
    await wait_for(lambda: collector.registrations)
    assert collector.registrations[0]["url"] == advertised


async def test_without_a_server_the_agent_still_serves(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        started: AgentStarted = await nursery.start(run_agent, agent_config(tmp_path))
        async with httpx.AsyncClient(base_url=started.url) as http:
            assert (await http.get("/healthz")).status_code == 200
            missing = await http.get("/api/v1/nope")
        assert missing.json()["error"]["code"] == "not_found"
        nursery.cancel_scope.cancel()


async def test_the_id_survives_a_restart(tmp_path: Path) -> None:
    ids: list[UUID] = []
    for _ in range(2):
        async with trio.open_nursery() as nursery:
            started: AgentStarted = await nursery.start(run_agent, agent_config(tmp_path))
            ids.append(started.agent_id)
            nursery.cancel_scope.cancel()
    assert ids[0] == ids[1]


async def test_stopping_the_agent_kills_running_commands(
    tmp_path: Path,
    read_pids: Callable[[Path, int], Awaitable[list[int]]],
    live_group_members: Callable[[int], list[int]],
    wait_for: WaitFor,
) -> None:
    pids = tmp_path / "pids"
    body = {
        "task_id": str(uuid4()),
        "command": f"echo $$ >> {pids}; sleep 30 & sleep 30",
        "frequency": "every 1 seconds",
    }
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            started: AgentStarted = await nursery.start(
                run_agent, agent_config(tmp_path, kill_grace=0.1)
            )
            async with httpx.AsyncClient() as http:
                await http.post(f"{started.url}/api/v1/tasks/schedule", json=body)
            (shell,) = await read_pids(pids, 1)
            nursery.cancel_scope.cancel()
    await wait_for(lambda: not live_group_members(shell), timeout=5)


async def test_a_port_in_use_fails_the_start(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = agent_config(tmp_path, port=taken.getsockname()[1])
        # the OSError comes out of the nurseries that own the listener, wrapped in their groups
        with pytest.RaisesGroup(OSError, flatten_subgroups=True, allow_unwrapped=True):
            async with trio.open_nursery() as nursery:
                await nursery.start(partial(run_agent, config))


async def test_commands_do_not_inherit_the_tokens_given_to_tsched(
    tmp_path: Path,
    nursery: trio.Nursery,
    start_collector: StartCollector,
    wait_for: WaitFor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As a shared env file or `tsched up` would give them: a task printing its environment
    # must not put them in an output every reader of the API can see.
    for name in SECRET_VARIABLES:
        monkeypatch.setenv(name, f"secret-{name}")
    monkeypatch.setenv("TSCHED_NOT_A_SECRET", "kept")
    collector = await start_collector()
    started: AgentStarted = await nursery.start(
        run_agent, agent_config(tmp_path, server_url=collector.url)
    )
    task_id = str(uuid4())
    async with httpx.AsyncClient(base_url=started.url) as http:
        response = await http.post(
            "/api/v1/tasks/schedule",
            json={"task_id": task_id, "command": "env", "frequency": "every 1 seconds"},
        )
        assert response.status_code == 200, response.text
    await wait_for(lambda: collector.reports_for(task_id))
    printed = collector.reports_for(task_id)[0]["stdout"]
    assert "TSCHED_NOT_A_SECRET=kept" in printed
    assert "secret-" not in printed
    assert {
        "TSCHED_ADMIN_TOKEN",
        "TSCHED_DATABASE",
        "TSCHED_JOIN_TOKEN",
        "TSCHED_READ_TOKEN",
        "TSCHED_TOKEN",
    } == SECRET_VARIABLES
