"""``--log-format json`` on real ``tsched server`` and ``tsched agent`` processes: every line they
write to stderr, from start to stop, is one JSON object with the documented fields."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from processes import TSCHED, free_port, wait_until

pytestmark = pytest.mark.e2e

_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class Process:
    """A ``tsched`` process whose stdout and stderr go to files of their own."""

    def __init__(self, tmp_path: Path, name: str, args: list[str], env: dict[str, str]) -> None:
        self.stdout = tmp_path / f"{name}.out"
        self.stderr = tmp_path / f"{name}.err"
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [TSCHED, *args],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            )

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                return self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                pytest.fail(f"{self.process.args} did not stop:\n{self.stderr.read_text()}")
        return self.process.returncode

    def json_lines(self) -> list[dict[str, Any]]:
        """Every line of stderr, each of which must be a JSON object with the fields."""
        lines = []
        for line in self.stderr.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                pytest.fail(f"not JSON: {line!r}")
            assert isinstance(entry, dict), line
            assert {"time", "level", "logger", "message"} <= set(entry), line
            assert _TIME.match(entry["time"]), line
            assert entry["level"] in ("debug", "info", "warning", "error", "critical"), line
            lines.append(entry)
        return lines


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[Process]]:
    processes: list[Process] = []
    yield processes
    for process in reversed(processes):
        if process.process.poll() is None:
            process.process.kill()
            process.process.wait()


def test_server_and_agent_log_one_json_object_per_line(
    tmp_path: Path, started: list[Process]
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = Process(
        tmp_path,
        "server",
        ["server", "--port", str(port), "--data-dir", str(tmp_path / "s"), "--log-format", "json"],
        env={},
    )
    started.append(server)
    wait_until(lambda: httpx.get(f"{url}/readyz", timeout=1).status_code == 200, timeout=20)
    # The environment variables do as the flags do; debug shows the reporter's lines too.
    agent = Process(
        tmp_path,
        "agent",
        ["agent", "--port", str(free_port()), "--data-dir", str(tmp_path / "a"), "--server", url],
        env={"TSCHED_LOG_FORMAT": "json", "TSCHED_LOG_LEVEL": "debug"},
    )
    started.append(agent)
    wait_until(lambda: httpx.get(f"{url}/api/v1/agents").json()["agents"], timeout=20)
    created = httpx.post(
        f"{url}/api/v1/tasks/create",
        json={"command": "echo logged", "frequency": "every 1 seconds"},
    )
    task_id = created.json()["command_id"]

    def ran() -> bool:
        latest = httpx.get(f"{url}/api/v1/tasks/{task_id}/latest_output").json()
        return bool(latest["outputs"])

    wait_until(ran, timeout=20, what="an output")
    assert agent.stop() == 0
    assert server.stop() == 0

    server_lines = server.json_lines()
    creation = [line for line in server_lines if line["message"].startswith("created task")]
    assert [line["task_id"] for line in creation] == [task_id]  # an extra= field
    assert {line["logger"] for line in server_lines} >= {
        "taskscheduler.server",
        "taskscheduler.cli",
    }
    assert server_lines[-1]["message"] == "stopped"
    assert server.stdout.read_text().startswith("server listening on ")

    agent_lines = agent.json_lines()
    assert any(line["level"] == "debug" for line in agent_lines)
    assert any(task_id in line["message"] for line in agent_lines)
    assert agent_lines[-1]["message"] == "stopped"


@pytest.mark.parametrize(
    ("args", "env", "flag"),
    [
        (["server", "--log-format", "xml"], {}, "--log-format"),
        (["agent"], {"TSCHED_LOG_FORMAT": "yaml"}, "--log-format"),
        (["up", "--log-level", "loud"], {}, "--log-level"),
        (["server"], {"TSCHED_LOG_LEVEL": "verbose"}, "--log-level"),
    ],
)
def test_a_bad_log_option_is_one_line_naming_it_and_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str], flag: str
) -> None:
    result = subprocess.run(
        [TSCHED, *args, "--port", "0", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"error: Invalid value for '{flag}'")
    assert not any(tmp_path.iterdir())  # refused before anything started
