"""Stopping an agent gracefully: nothing new starts, running commands get the grace, then are
killed and recorded; a second signal stops it at once."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import trio

from processes import Tsched, free_port, wait_healthy, wait_until
from taskscheduler_agent import (
    KILLED_ON_SHUTDOWN,
    STATE_FILE,
    AgentConfig,
    AgentStarted,
    run_agent,
)

ReadPids = Callable[[Path, int], Awaitable[list[int]]]
LiveGroupMembers = Callable[[int], list[int]]
WaitFor = Callable[..., Awaitable[None]]


def recorded(data_dir: Path) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """The journal as ``(scheduled_at, status)`` and the outbox's executions."""
    with sqlite3.connect(data_dir / STATE_FILE) as connection:
        journal = connection.execute(
            "SELECT scheduled_at, status FROM journal ORDER BY scheduled_at"
        ).fetchall()
        outbox = [json.loads(body) for (body,) in connection.execute("SELECT body FROM outbox")]
        running = connection.execute("SELECT * FROM running").fetchall()
    assert running == []
    return journal, outbox


def agent_config(tmp_path: Path, **options: Any) -> AgentConfig:
    return AgentConfig(**({"data_dir": tmp_path / "agent", "port": 0} | options))


async def schedule(url: str, command: str, frequency: str = "every 1 seconds") -> str:
    task_id = str(uuid4())
    body = {"task_id": task_id, "command": command, "frequency": frequency}
    async with httpx.AsyncClient() as http:
        response = await http.post(f"{url}/api/v1/tasks/schedule", json=body)
    assert response.status_code == 200, response.text
    return task_id


async def test_commands_still_running_after_the_grace_are_killed_and_recorded(
    tmp_path: Path, read_pids: ReadPids, live_group_members: LiveGroupMembers, wait_for: WaitFor
) -> None:
    config = agent_config(tmp_path, kill_grace=0.3)
    pids = tmp_path / "pids"
    shutdown = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            started: AgentStarted = await nursery.start(
                lambda task_status: run_agent(config, shutdown=shutdown, task_status=task_status)
            )
            await schedule(started.url, f"echo started; echo $$ >> {pids}; sleep 30")
            (shell,) = await read_pids(pids, 1)
            asked = trio.current_time()
            shutdown.set()  # run_agent returns on its own: the nursery ends with it
        took = trio.current_time() - asked
    assert 0.3 <= took < 3
    await wait_for(lambda: not live_group_members(shell), timeout=5)
    assert len(pids.read_text().split()) == 1  # nothing started after the stop was asked

    journal, outbox = recorded(config.data_dir)
    assert [status for _, status in journal] == ["error"]
    (execution,) = outbox
    assert execution["status"] == "error"
    assert execution["stdout"] == "started\n"  # what it printed before it was killed
    assert execution["stderr"] == KILLED_ON_SHUTDOWN


async def test_commands_that_end_within_the_grace_are_recorded_as_they_ended(
    tmp_path: Path, read_pids: ReadPids
) -> None:
    config = agent_config(tmp_path, kill_grace=10)
    pids = tmp_path / "pids"
    shutdown = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            started: AgentStarted = await nursery.start(
                lambda task_status: run_agent(config, shutdown=shutdown, task_status=task_status)
            )
            await schedule(started.url, f"echo $$ >> {pids}; sleep 0.5; echo done")
            await read_pids(pids, 1)
            asked = trio.current_time()
            shutdown.set()
        took = trio.current_time() - asked
    assert took < 2  # it waited for the command, not for the whole grace
    journal, outbox = recorded(config.data_dir)
    assert [status for _, status in journal] == ["succeeded"]
    assert [(e["stdout"], e["stderr"]) for e in outbox] == [("done\n", "")]


def test_sigterm_kills_a_long_command_after_the_grace_and_keeps_its_report(
    tmp_path: Path, live_group_members: LiveGroupMembers
) -> None:
    data_dir, pids = tmp_path / "agent", tmp_path / "pids"
    url = f"http://127.0.0.1:{free_port()}"
    agent = Tsched(
        [
            "agent",
            "--port",
            url.rsplit(":", 1)[1],
            "--data-dir",
            str(data_dir),
            "--kill-grace",
            "1",
        ],
        log=tmp_path / "agent.log",
    )
    try:
        wait_healthy(url, agent)
        body = {
            "task_id": str(uuid4()),
            "command": f"echo $$ >> {pids}; sleep 30",
            "frequency": "every 1 seconds",
        }
        assert httpx.post(f"{url}/api/v1/tasks/schedule", json=body).status_code == 200
        wait_until(lambda: pids.exists() and pids.read_text().strip(), timeout=10, what="a run")
        (shell,) = map(int, pids.read_text().split())
        asked = time.monotonic()
        assert agent.stop(signal.SIGTERM) == 0, agent.output()
        took = time.monotonic() - asked
    finally:
        agent.kill()
    assert 1 <= took < 8, agent.output()
    wait_until(lambda: not live_group_members(shell), timeout=5, what="the group to die")
    journal, outbox = recorded(data_dir)
    assert [status for _, status in journal] == ["error"], agent.output()
    (execution,) = outbox  # no server: the report waits on disk for the next start
    assert execution["status"] == "error"
    assert execution["stderr"] == KILLED_ON_SHUTDOWN


def test_a_second_ctrl_c_stops_at_once(
    tmp_path: Path, live_group_members: LiveGroupMembers
) -> None:
    data_dir, pids = tmp_path / "agent", tmp_path / "pids"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    agent = Tsched(
        ["agent", "--port", str(port), "--data-dir", str(data_dir), "--kill-grace", "60"],
        log=tmp_path / "agent.log",
    )
    try:
        wait_healthy(url, agent)
        body = {
            "task_id": str(uuid4()),
            "command": f"echo $$ >> {pids}; sleep 30",
            "frequency": "every 1 seconds",
        }
        assert httpx.post(f"{url}/api/v1/tasks/schedule", json=body).status_code == 200
        wait_until(lambda: pids.exists() and pids.read_text().strip(), timeout=10, what="a run")
        (shell,) = map(int, pids.read_text().split())
        agent.process.send_signal(signal.SIGINT)
        time.sleep(0.3)
        assert agent.process.poll() is None  # the first one waits for the command…
        asked = time.monotonic()
        assert agent.stop(signal.SIGINT) == 0, agent.output()  # …the second does not
        took = time.monotonic() - asked
    finally:
        agent.kill()
    assert took < 5, agent.output()
    wait_until(lambda: not live_group_members(shell), timeout=5, what="the group to die")
