"""A real ``tsched agent`` killed after the server registered it, before it heard so, still works
when started again (docs/security.md, "Agent identity").

Before agents proposed their own credentials, the server's answer carried them once: an agent
that missed it was refused (403 "already has a credential") at every later registration. Here
the real programs run as processes on loopback; the proxy of tests/lossy_http.py loses every
registration answer of the agent's first life after the server committed it, and the agent is
``SIGKILL``ed as soon as one was lost.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import httpx

from lossy_http import AnswerDroppingProxy
from processes import Tsched, free_port, wait_healthy, wait_until

ADMIN = "admin-" + "a" * 40
JOIN = "join-" + "j" * 40
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}


def credentials(data_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((data_dir / "credentials.json").read_text())
    return data


def test_an_agent_killed_before_it_heard_its_registration_works_after_a_restart(
    tmp_path: Path,
) -> None:
    server_port, agent_port = free_port(), free_port()
    server_url = f"http://127.0.0.1:{server_port}"
    server = Tsched(
        [
            "server",
            *("--port", str(server_port), "--data-dir", str(tmp_path / "server")),
            *("--admin-token", ADMIN, "--join-token", JOIN),
        ],
        log=tmp_path / "server.log",
    )
    data_dir = tmp_path / "agent"
    agent_args = ["agent", "--port", str(agent_port), "--data-dir", str(data_dir)]
    agent_args += ["--join-token", JOIN, "--heartbeat-interval", "0.2"]
    lives: list[Tsched] = []
    try:
        wait_healthy(server_url, server)
        with AnswerDroppingProxy(server_url, "/api/v1/agents/register", drop=1000) as proxy:
            first = Tsched([*agent_args, "--server", proxy.url], log=tmp_path / "agent0.log")
            lives.append(first)
            wait_until(lambda: proxy.dropped, timeout=20, what="a registration answer lost")
            first.process.send_signal(signal.SIGKILL)
            first.process.wait(10)
        assert proxy.dropped[0][0] == 200
        # The server has the agent and its credential; the agent only its unanswered proposal.
        listed = httpx.get(f"{server_url}/api/v1/agents", headers=ADMIN_HEADERS).json()
        [agent] = listed["agents"]
        assert credentials(data_dir)["accepted"] is False
        proposed = credentials(data_dir)["agent_token"]

        second = Tsched([*agent_args, "--server", server_url], log=tmp_path / "agent1.log")
        lives.append(second)
        wait_until(
            lambda: credentials(data_dir)["accepted"],
            timeout=20,
            what="the agent to hear that the server holds its credentials",
        )
        assert credentials(data_dir)["agent_token"] == proposed

        def seen() -> str:
            shown = httpx.get(f"{server_url}/api/v1/agents/{agent['id']}", headers=ADMIN_HEADERS)
            return str(shown.json()["last_seen_at"])

        before = seen()
        wait_until(lambda: seen() != before, timeout=20, what="heartbeats")
        created = httpx.post(
            f"{server_url}/api/v1/tasks",
            json={"command": "echo after the lost answer", "frequency": "every 1 seconds"},
            headers=ADMIN_HEADERS,
        )
        assert created.status_code == 201, created.text
        task_id = created.json()["command_id"]

        def output() -> list[str]:
            latest = httpx.get(
                f"{server_url}/api/v1/tasks/{task_id}/latest_output", headers=ADMIN_HEADERS
            ).json()
            return [o.get("stdout", "") for o in latest["outputs"]]

        assert wait_until(output, timeout=20, what="the agent's report") == [
            "after the lost answer\n"
        ]
        assert second.stop() == 0
        assert "403" not in second.output(), second.output()
    finally:
        for life in lives:
            life.kill()
        server.stop()
