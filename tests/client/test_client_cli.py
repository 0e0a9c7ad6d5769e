"""``tsched create`` / ``tsched output`` against a live server, and the CLI's error discipline."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID, uuid4

import click
import pytest
from click.testing import CliRunner, Result

from taskscheduler_client.cli import default_data_dir, format_latest_output, http_url, tsched
from taskscheduler_client.services import LocalStack
from taskscheduler_core import AgentOutput, LatestOutput, __version__

UUID_LINE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\n")


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner(env=env).invoke(tsched, list(args), prog_name="tsched")


def assert_one_line_error(result: Result, exit_code: int) -> str:
    """The failure is one ``error:`` line on stderr, nothing on stdout, and no traceback."""
    assert result.exit_code == exit_code, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.output
    return lines[0]


def create(url: str, command: str, frequency: str) -> UUID:
    result = run("--url", url, "create", command, "--frequency", frequency)
    assert result.exit_code == 0, result.output
    assert UUID_LINE.fullmatch(result.stdout)
    return UUID(result.stdout.strip())


# --- against a live server ------------------------------------------------------------------------


def test_create_prints_the_task_id(server_url: str) -> None:
    task_id = create(server_url, "echo hello world", "every 30 seconds")
    assert run("--url", server_url, "output", str(task_id)).exit_code == 0


def test_create_json_prints_the_created_task(server_url: str) -> None:
    result = run("--url", server_url, "create", "echo hi", "-f", "Every 2 Minute", "--json")

    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout)
    assert created["command_id"] == created["id"]
    assert created["command"] == "echo hi"
    assert created["frequency"] == "every 2 minutes"


def test_the_server_url_comes_from_tsched_url(server_url: str) -> None:
    result = run("create", "true", "-f", "every 1 hours", env={"TSCHED_URL": server_url})
    assert result.exit_code == 0, result.output
    assert UUID_LINE.fullmatch(result.stdout)


def test_output_waits_for_a_run_and_prints_every_agent(server_url: str, stack: LocalStack) -> None:
    task_id = create(server_url, "echo hello; echo world; echo oops >&2", "every 1 seconds")

    result = run("--url", server_url, "output", str(task_id), "--wait", "20")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("completed at 20")
    assert lines[1].startswith("scheduled at 20")
    for started in stack.agents:
        at = lines.index(f"agent {started.agent_id}")
        assert lines[at + 1 : at + 6] == [
            "  stdout:",
            "    hello",
            "    world",
            "  stderr:",
            "    oops",
        ]


def test_output_json(server_url: str, stack: LocalStack) -> None:
    task_id = create(server_url, "echo json", "every 1 seconds")

    result = run("--url", server_url, "output", str(task_id), "--wait", "20", "--json")

    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["completion_time"].endswith("Z")
    assert {o["agent_id"] for o in answer["outputs"]} == {str(a.agent_id) for a in stack.agents}
    assert all(o == {"agent_id": o["agent_id"], "stdout": "json\n"} for o in answer["outputs"])


def test_output_before_any_run(server_url: str) -> None:
    task_id = create(server_url, "echo later", "every 1 hours")

    result = run("--url", server_url, "output", str(task_id))
    assert result.exit_code == 0, result.output
    assert result.stdout == "no complete run yet\n"

    as_json = run("--url", server_url, "output", str(task_id), "--json")
    assert json.loads(as_json.stdout) == {
        "completion_time": None,
        "outputs": [],
        "scheduled_at": None,
    }


def test_output_wait_that_times_out(server_url: str) -> None:
    task_id = create(server_url, "echo later", "every 1 hours")

    result = run("--url", server_url, "output", str(task_id), "--wait", "0.2")

    line = assert_one_line_error(result, 1)
    assert line == f"error: no complete run of task {task_id} within 0.2 seconds"


def test_an_invalid_frequency_is_one_line(server_url: str) -> None:
    result = run("--url", server_url, "create", "echo hi", "--frequency", "every 0 seconds")

    line = assert_one_line_error(result, 1)
    assert line.startswith("error: frequency: ")
    assert "every 0 seconds" in line


def test_an_unknown_task_is_one_line(server_url: str) -> None:
    assert_one_line_error(run("--url", server_url, "output", str(uuid4())), 1)
    assert_one_line_error(run("--url", server_url, "output", "no-such-id"), 1)


def test_a_server_that_is_not_running_is_one_line_with_a_hint(closed_port_url: str) -> None:
    result = run("--url", closed_port_url, "create", "echo hi", "-f", "every 1 seconds")

    line = assert_one_line_error(result, 1)
    assert closed_port_url in line
    assert "is the server running? try 'tsched up'" in line


def test_a_server_that_does_not_answer_is_one_line(silent_url: str) -> None:
    result = run("--url", silent_url, "--timeout", "0.2", "output", str(uuid4()))
    assert "no answer" in assert_one_line_error(result, 1)


# --- usage ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["create", "echo hi"], "--frequency"),
        (["create"], "COMMAND"),
        (["output"], "TASK_ID"),
        (["output", "x", "--wait", "0"], "--wait"),
        (["output", "x", "--wait", "soon"], "--wait"),
        (["launch"], "launch"),
        (["--url", "ftp://example", "output", "x"], "--url"),
        (["--timeout", "-1", "output", "x"], "--timeout"),
        (["server", "--database", "a.sqlite3", "--data-dir", "b"], "--database"),
        (["server", "--port", "70000"], "--port"),
        (["server", "--available-servers", "ftp://agent"], "--available-servers"),
        (["agent", "--server", "ftp://server"], "--server"),
        (["agent", "--max-output-bytes", "-5"], "--max-output-bytes"),
        (["up", "--agents", "0"], "--agents"),
    ],
)
def test_usage_errors_are_one_line_with_exit_status_2(args: list[str], mentions: str) -> None:
    line = assert_one_line_error(run(*args), 2)
    assert mentions in line
    assert "--help' " in line or line.endswith("--help')")


def test_without_a_command_it_shows_the_help() -> None:
    result = run()
    assert "Usage: tsched" in result.output
    assert "create" in result.output


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout == f"tsched, version {__version__}\n"


@pytest.mark.parametrize("command", ["create", "output", "server", "agent", "up"])
def test_every_command_has_help(command: str) -> None:
    result = run(command, "--help")
    assert result.exit_code == 0
    assert f"Usage: tsched {command}" in result.stdout


# --- pieces ---------------------------------------------------------------------------------------


def test_format_latest_output() -> None:
    agent_a, agent_b = UUID(int=1), UUID(int=2)
    latest = LatestOutput(
        completion_time=datetime(2026, 11, 28, 3, 16, 31, 123456, tzinfo=UTC),
        scheduled_at=datetime(2026, 11, 28, 3, 16, 30, tzinfo=UTC),
        outputs=[
            AgentOutput(agent_id=agent_a, stdout="one\ntwo\n"),
            AgentOutput(agent_id=agent_b, stderr="boom"),
        ],
    )

    assert format_latest_output(latest) == (
        "completed at 2026-11-28T03:16:31.123456Z\n"
        "scheduled at 2026-11-28T03:16:30.000000Z\n"
        f"agent {agent_a}\n"
        "  stdout:\n"
        "    one\n"
        "    two\n"
        "  stderr: (empty)\n"
        f"agent {agent_b}\n"
        "  stdout: (empty)\n"
        "  stderr:\n"
        "    boom\n"
    )


def test_default_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / "taskscheduler"
    # the XDG spec: relative paths are ignored
    monkeypatch.setenv("XDG_DATA_HOME", "relative/dir")
    assert default_data_dir() == Path.home() / ".local" / "share" / "taskscheduler"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_data_dir() == Path.home() / ".local" / "share" / "taskscheduler"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080"),
        ("https://tasks.example/", "https://tasks.example"),
        ("agent1:8081", "http://agent1:8081"),
        (" localhost:8080/ ", "http://localhost:8080"),
    ],
)
def test_http_url(given: str, expected: str) -> None:
    assert http_url(given) == expected


@pytest.mark.parametrize("given", ["ftp://host", "http://", "://nohost"])
def test_http_url_refuses(given: str) -> None:
    with pytest.raises(click.BadParameter):
        http_url(given)
