"""A real ``tsched server`` process: SIGTERM lets a request in flight finish, and the liveness
and reconcile flags (and their environment variables) reach the running server."""

from __future__ import annotations

import signal
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
import trio
from click.testing import CliRunner

from processes import Tsched, free_port, wait_healthy
from taskscheduler_client.cli import tsched
from taskscheduler_core import parse_time

pytestmark = pytest.mark.e2e

WaitUntil = Callable[..., Awaitable[None]]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., tuple[Tsched, str]]]:
    started: list[Tsched] = []

    def start(*flags: str, env: dict[str, str] | None = None) -> tuple[Tsched, str]:
        port = free_port()
        args = ["server", "--port", str(port), "--data-dir", str(tmp_path / "data"), *flags]
        process = Tsched(args, log=tmp_path / f"server-{len(started)}.log", env=env)
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process)
        return process, url

    yield start
    for process in started:
        process.kill()


async def exit_status(process: Tsched, timeout: float = 10.0) -> int:
    with trio.fail_after(timeout):
        while (status := process.process.poll()) is None:
            await trio.sleep(0.05)
    return status


async def test_sigterm_lets_a_request_in_flight_finish_and_exits_0(
    tmp_path: Path, start_server: Any
) -> None:
    server, url = start_server()
    request_sent = trio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b'{"command": "echo slow", '
        request_sent.set()
        await trio.sleep(0.5)  # SIGTERM arrives now, mid-body
        yield b'"frequency": "every 1 hours"}'

    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        answers: list[httpx.Response] = []

        async def send() -> None:
            answers.append(await client.post("/api/v1/tasks/create", content=slow_body()))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            await request_sent.wait()
            await trio.sleep(0.1)
            server.process.send_signal(signal.SIGTERM)
    [answer] = answers
    assert answer.status_code == 201, answer.text
    assert await exit_status(server) == 0, server.output()
    assert "Traceback" not in server.output()

    # and what it answered 201 for is in the database
    connection = sqlite3.connect(tmp_path / "data" / "server.sqlite3")
    try:
        ids = [UUID(row[0]) for row in connection.execute("SELECT id FROM tasks")]
    finally:
        connection.close()
    assert ids == [UUID(answer.json()["command_id"])]


async def test_liveness_and_reconcile_flags_reach_the_server(
    start_server: Any, serve_asgi: Any, fake_agent: Any, wait_until: WaitUntil
) -> None:
    agent = fake_agent()
    agent_url, _ = await serve_asgi(agent.app)
    _, url = start_server("--lost-after", "0.5", env={"TSCHED_RECONCILE_INTERVAL": "0.3"})

    async with httpx.AsyncClient(base_url=url, timeout=5) as client:

        async def status() -> str:
            [listed] = (await client.get("/api/v1/agents")).json()["agents"]
            return str(listed["status"])

        async def heartbeat() -> httpx.Response:
            return await client.post(f"/api/v1/agents/{agent.agent_id}/heartbeat", json={})

        await client.post(
            "/api/v1/agents/register", json={"agent_id": str(agent.agent_id), "url": agent_url}
        )
        # silent for 0.5 s: lost (this agent sends no heartbeats); a heartbeat brings it back
        await wait_until(lambda: _equals(status(), "lost"), timeout=5)
        beat = await heartbeat()
        assert beat.json() == {"agent_id": str(agent.agent_id), "status": "alive"}
        assert await status() == "alive"

        async with trio.open_nursery() as nursery:

            async def keep_alive() -> None:
                while True:
                    await heartbeat()
                    await trio.sleep(0.1)

            nursery.start_soon(keep_alive)
            created = await client.post(
                "/api/v1/tasks/create", json={"command": "date", "frequency": "every 1 hours"}
            )
            task_id = created.json()["command_id"]
            await wait_until(lambda: agent.tasks.keys() == {task_id})
            # reconciled every 0.3 s: a wiped schedule comes back with no registration
            agent.tasks.clear()
            await wait_until(lambda: agent.tasks.keys() == {task_id}, timeout=5)
            assert await status() == "alive"
            nursery.cancel_scope.cancel()


async def _equals(value: Awaitable[str], expected: str) -> bool:
    return await value == expected


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--lost-after", "0"], {}, "'--lost-after': 0.0 is not in the range x>0"),
        (["--reconcile-interval", "inf"], {}, "'--reconcile-interval': inf is not a usable"),
        (["--reconcile-interval", "nan"], {}, "'--reconcile-interval': nan is not a usable"),
        ([], {"TSCHED_LOST_AFTER": "soon"}, "'--lost-after': 'soon' is not a valid float"),
        (["--lost-after", "1e300"], {}, "1e+300 is not a usable number of seconds"),
        (["--keep-runs", "-1"], {}, "'--keep-runs': -1 is not in the range x>=0"),
        (["--keep-runs", "1.5"], {}, "'--keep-runs': '1.5' is not a valid integer"),
        ([], {"TSCHED_KEEP_DAYS": "forever"}, "'--keep-days': 'forever' is not a valid float"),
        (["--keep-days", "1e9"], {}, "'--keep-days': 1000000000.0 is not in the range"),
        (["--prune-interval", "0"], {}, "'--prune-interval': 0.0 is not in the range x>0"),
        (["--prune-interval", "inf"], {}, "'--prune-interval': inf is not a usable"),
    ],
)
def test_bad_durations_are_one_line_usage_errors(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    # in-process: the command line is refused before anything is started
    unset = ("LOST_AFTER", "RECONCILE_INTERVAL", "KEEP_RUNS", "KEEP_DAYS", "PRUNE_INTERVAL")
    runner = CliRunner(env={**{f"TSCHED_{name}": None for name in unset}, **env})
    result = runner.invoke(
        tsched, ["server", "--port", "0", "--data-dir", str(tmp_path), *args], prog_name="tsched"
    )
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("error: ")
    assert message in line
    assert not (tmp_path / "server.sqlite3").exists()


def test_cli_defaults_are_the_server_defaults() -> None:
    from taskscheduler_client import cli
    from taskscheduler_server import ServerConfig

    config = ServerConfig(database=Path("x"))
    assert config.lost_after.total_seconds() == cli.DEFAULT_LOST_AFTER
    assert config.reconcile_interval.total_seconds() == cli.DEFAULT_RECONCILE_INTERVAL
    assert (config.keep_runs, config.keep_days) == (cli.DEFAULT_KEEP_RUNS, cli.DEFAULT_KEEP_DAYS)
    assert config.prune_interval.total_seconds() == cli.DEFAULT_PRUNE_INTERVAL
    from taskscheduler_server.config import MAX_KEEP_DAYS

    assert cli.MAX_KEEP_DAYS == MAX_KEEP_DAYS


async def test_retention_flags_and_environment_reach_the_server(
    start_server: Any, wait_until: WaitUntil
) -> None:
    _, url = start_server(
        "--keep-runs", "2", env={"TSCHED_KEEP_DAYS": "1", "TSCHED_PRUNE_INTERVAL": "0.2"}
    )
    now = datetime.now(UTC)
    agent = "00000000-0000-0000-0000-00000000000a"
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        created = await client.post(
            "/api/v1/tasks", json={"command": "date", "frequency": "every 1 hours"}
        )
        task_id = created.json()["id"]
        # the count rule keeps the newest 2 (dropping the 3-day-old run), the age rule drops
        # the 2-day-old one of those: only both flags leave the newest alone
        for age in (timedelta(minutes=1), timedelta(days=2), timedelta(days=3)):
            report = {"server_id": agent, "scheduled_at": (now - age).isoformat()}
            assert (await client.post(f"/api/v1/tasks/{task_id}/complete", json=report)).is_success

        async def runs() -> list[datetime]:
            page = (await client.get(f"/api/v1/tasks/{task_id}/runs")).json()
            return [parse_time(run["scheduled_at"]) for run in page["runs"]]

        async def pruned() -> bool:
            return len(await runs()) == 1

        await wait_until(pruned, timeout=10)
        assert await runs() == [now - timedelta(minutes=1)]
