"""``tsched server`` and ``tsched agent`` run on their own, as separate processes."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from processes import Tsched, agents, free_port, wait_healthy, wait_until

pytestmark = pytest.mark.e2e


def create(url: str, command: str, frequency: str = "every 1 seconds") -> str:
    response = httpx.post(
        f"{url}/api/v1/tasks/create",
        json={"command": command, "frequency": frequency},
        timeout=10.0,
    )
    assert response.status_code == 201, response.text
    task_id: str = response.json()["command_id"]
    return task_id


def outputs(url: str, task_id: str) -> list[dict[str, str]] | None:
    body = httpx.get(f"{url}/api/v1/tasks/{task_id}/latest_output", timeout=2.0).json()
    if body["completion_time"] is None:
        return None
    found: list[dict[str, str]] = body["outputs"]
    return found


def test_agent_listed_in_available_servers_gets_tasks_created_while_it_was_down(
    tsched: Callable[..., Tsched], tmp_path: Path
) -> None:
    server_port, agent_port = free_port(), free_port()
    url = f"http://127.0.0.1:{server_port}"
    agent_url = f"http://127.0.0.1:{agent_port}"
    server = tsched(
        "server",
        "--port",
        str(server_port),
        "--data-dir",
        str(tmp_path / "server"),
        env={"AVAILABLE_SERVERS": agent_url},
    )
    wait_healthy(url, server)
    task_id = create(url, "echo from $TSCHED_AGENT_ID")

    agent = tsched(
        "agent",
        "--port",
        str(agent_port),
        "--data-dir",
        str(tmp_path / "agent"),
        env={"TSCHED_SERVER": url},
    )
    wait_healthy(agent_url, agent)
    agent_id = httpx.get(f"{agent_url}/api/v1/agent").json()["agent_id"]
    found = wait_until(lambda: outputs(url, task_id), timeout=30, what="the late agent's output")
    assert found == [{"agent_id": agent_id, "stdout": f"from {agent_id}\n"}]

    # The agent keeps its id in its data directory across restarts.
    agent.stop()
    again = tsched(
        "agent",
        "--port",
        str(agent_port),
        "--data-dir",
        str(tmp_path / "agent"),
        env={"TSCHED_SERVER": url},
    )
    wait_healthy(agent_url, again)
    assert httpx.get(f"{agent_url}/api/v1/agent").json()["agent_id"] == agent_id


def test_agent_started_with_server_registers_itself(
    tsched: Callable[..., Tsched], tmp_path: Path
) -> None:
    server_port, agent_port = free_port(), free_port()
    url = f"http://127.0.0.1:{server_port}"
    server = tsched("server", "--port", str(server_port), "--database", str(tmp_path / "db"))
    wait_healthy(url, server)
    task_id = create(url, "printf out; printf err >&2")

    agent = tsched(
        "agent", "--port", str(agent_port), "--data-dir", str(tmp_path / "agent"), "--server", url
    )
    wait_healthy(f"http://127.0.0.1:{agent_port}", agent)
    found = wait_until(lambda: outputs(url, task_id), timeout=30, what="an output")
    assert [(entry["stdout"], entry["stderr"]) for entry in found] == [("out", "err")]
    listed = agents(url)
    assert [agent["url"] for agent in listed] == [f"http://127.0.0.1:{agent_port}"]


def test_create_does_not_wait_on_a_stuck_agent(
    tsched: Callable[..., Tsched], tmp_path: Path
) -> None:
    # A peer that accepts connections and never answers: pushes to it can only time out.
    with socket.socket() as stuck:
        stuck.bind(("127.0.0.1", 0))
        stuck.listen()
        server_port = free_port()
        url = f"http://127.0.0.1:{server_port}"
        server = tsched("server", "--port", str(server_port), "--database", str(tmp_path / "db"))
        wait_healthy(url, server)
        registered = httpx.post(
            f"{url}/api/v1/agents/register",
            json={
                "agent_id": "6f1b0f4e-3c59-4a55-9d43-2f0b3c3f9a10",
                "url": f"http://127.0.0.1:{stuck.getsockname()[1]}",
            },
        )
        assert registered.status_code == 200, registered.text

        for _ in range(3):
            started = time.monotonic()
            create(url, "echo hi")
            assert time.monotonic() - started < 2.0, "create waited on the stuck agent"
