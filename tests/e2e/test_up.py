"""The README flow against ``tsched up``: create a task, read one output per agent, restart."""

from __future__ import annotations

import signal
import stat
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from processes import Tsched, agents, free_port, wait_healthy, wait_until

pytestmark = pytest.mark.e2e


def test_up_runs_the_original_flow_and_survives_a_restart(
    tsched: Callable[..., Tsched], tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data = tmp_path / "data"
    up = tsched("up", "--port", str(port), "--agents", "2", "--data-dir", str(data))
    wait_healthy(url, up)
    wait_until(lambda: len(agents(url)) == 2, timeout=20, what="2 agents registered")
    agent_ids = {agent["id"] for agent in agents(url)}

    created_at = time.monotonic()
    response = httpx.post(
        f"{url}/api/v1/tasks/create",
        json={"command": "echo hello world", "frequency": "every 1 seconds"},
    )
    assert response.status_code == 201, response.text
    task_id = response.json()["command_id"]
    assert uuid.UUID(task_id)

    def complete() -> dict[str, object] | None:
        body = httpx.get(f"{url}/api/v1/tasks/{task_id}/latest_output").json()
        return body if body["completion_time"] is not None else None

    latest = wait_until(complete, timeout=20, what="a complete run")
    print(f"create -> first complete run: {time.monotonic() - created_at:.2f} s")
    outputs = latest["outputs"]
    assert [output["stdout"] for output in outputs] == ["hello world\n", "hello world\n"]
    assert all("stderr" not in output for output in outputs)
    assert {output["agent_id"] for output in outputs} == agent_ids
    assert [output["agent_id"] for output in outputs] == sorted(agent_ids)

    assert up.stop(signal.SIGINT) == 0
    assert "Traceback" not in up.output()
    for path in (data / "server.sqlite3", data / "agents"):
        assert path.exists(), f"{path} should be in the data directory"
    # commands and their output are nobody else's business
    private = [data / "server.sqlite3", *data.glob("agents/*/agent.sqlite3")]
    assert len(private) == 3
    for path in private:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    for directory in (data, *data.glob("agents/*")):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory

    # Same data directory: same agents, and the task goes on without being created again.
    up_again = tsched("up", "--port", str(port), "--agents", "2", "--data-dir", str(data))
    wait_healthy(url, up_again)
    restarted_at = time.time()
    wait_until(lambda: len(agents(url)) == 2, timeout=20, what="agents back")
    assert {agent["id"] for agent in agents(url)} == agent_ids

    def newer() -> bool:
        body = complete()
        if body is None:
            return False
        finished = body["completion_time"]
        assert isinstance(finished, str)
        from taskscheduler_core import parse_time

        return parse_time(finished).timestamp() > restarted_at

    wait_until(newer, timeout=20, what="a run after the restart")
    assert up_again.stop(signal.SIGINT) == 0
