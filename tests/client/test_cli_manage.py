"""The task-management commands: their command lines, tables, completion, and the corners of
their answers against the session's live server.

Every flag is checked before a request is sent, so a bad one is exit status 2 on one line naming
the flag even when no server runs. Each command also runs as a real process against a real
``tsched up`` in ``tests/e2e/test_cli_lifecycle.py``; here, in-process, the variants that would
make that module slow.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
from click.testing import CliRunner, Result

from processes import TSCHED
from taskscheduler_client import tables
from taskscheduler_client.cli import tsched
from taskscheduler_client.manage import COMMANDS
from taskscheduler_core import (
    AgentDetail,
    AgentOutcome,
    AgentStatus,
    Execution,
    ExecutionStatus,
    RunStarted,
    RunStatus,
    RunSummary,
    Targets,
    Task,
    Trigger,
    parse_frequency,
)

NOW = datetime(2026, 11, 28, 3, 16, 31, 123456, tzinfo=UTC)
TASK_ID = "322f0be6-d276-489f-89eb-7662c4517885"
AGENT_A, AGENT_B = UUID(int=1), UUID(int=2)


def columns(line: str) -> list[str]:
    """The cells of a table row: columns are at least two spaces apart."""
    return re.split(r" {2,}", line)


def run(*args: str, url: str = "http://127.0.0.1:9", status: int | None = None) -> Result:
    # port 9 (discard): nothing answers there, and no test below gets that far
    result = CliRunner().invoke(tsched, ["--url", url, *args], prog_name="tsched")
    if status is not None:
        assert result.exit_code == status, result.output
    return result


def run_json(url: str, *args: str) -> Any:
    return json.loads(run(*args, "--json", url=url, status=0).stdout)


# --- usage errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["list", "--state", "gone"], "--state"),
        (["list", "--limit", "0"], "--limit"),
        (["list", "--agent", "nobody"], "--agent"),
        (["show"], "TASK_ID"),
        (["runs", TASK_ID, "--status", "weird"], "--status"),
        (["history", TASK_ID, "--since", "yesterday"], "--since"),
        (["history", TASK_ID, "--until", "2026-11-28T03:00:00"], "--until"),
        (["history", TASK_ID, "--since", "0001-01-01T00:00:00+01:00"], "--since"),
        (["history", TASK_ID, "--status", "succeded"], "--status"),
        (["history", TASK_ID, "--limit", "1001"], "--limit"),
        (["edit", TASK_ID], "nothing to change"),
        (["edit", TASK_ID, "--timeout", "-1"], "--timeout"),
        (["edit", TASK_ID, "--timeout", "soon"], "--timeout"),
        (["edit", TASK_ID, "--overlap", "sometimes"], "--overlap"),
        (["edit", TASK_ID, "--retries", "11"], "--retries"),
        (["edit", TASK_ID, "--retry-delay", "7200"], "--retry-delay"),
        (["edit", TASK_ID, "--starting-deadline", "nan"], "--starting-deadline"),
        (["edit", TASK_ID, "--env", "NOVALUE"], "--env"),
        (["edit", TASK_ID, "--max-output-bytes", "0"], "--max-output-bytes"),
        (["edit", TASK_ID, "--target-agent", "web-1"], "--target-agent"),
        (["edit", TASK_ID, "--target-label", "role"], "--target-label"),
        (["edit", TASK_ID, "--target-label", "bad key=x"], "--target-label"),
        (
            ["edit", TASK_ID, "--target-agent", str(AGENT_A), "--all-agents"],
            "--target-agent, --all-agents",
        ),
        (["create", "true", "-f", "every 1 hours", "--timeout", "none"], "--timeout"),
        (["create", "true", "-f", "every 1 hours", "--clear-env"], "--clear-env"),
        (["output", TASK_ID, "--follow", "--wait", "5"], "--wait or --follow"),
        (["output", TASK_ID, "--count", "2"], "--count"),
        (["output", TASK_ID, "--follow", "--count", "0"], "--count"),
        (["delete", TASK_ID, "--purge=yes"], "--purge"),
        (["agents", "not-a-uuid"], "AGENT_ID"),
        (["agents", "--label", "role"], "--label"),
        (["agents", str(AGENT_A), "--label", "role=web"], "--label"),
    ],
)
def test_bad_flags_are_one_line_with_exit_status_2(args: list[str], mentions: str) -> None:
    result = run(*args)

    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert mentions in lines[0]


def test_a_server_that_is_not_running_is_one_line(closed_port_url: str) -> None:
    for args in (["list"], ["show", TASK_ID], ["pause", TASK_ID], ["agents"]):
        result = run(*args, url=closed_port_url)
        assert result.exit_code == 1, result.output
        assert result.stderr.startswith("error: cannot connect to ")
        assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize("command", [command.name for command in COMMANDS])
def test_every_command_has_help_and_json(command: str) -> None:
    result = CliRunner().invoke(tsched, [command, "--help"], prog_name="tsched")
    assert result.exit_code == 0
    assert f"Usage: tsched {command}" in result.stdout
    assert "--json" in result.stdout


# --- against the live server --------------------------------------------------------------------


def test_edit_resets_options_with_none(server_url: str) -> None:
    task_id = run_json(
        server_url,
        "create",
        "true",
        "-f",
        "every 1 hours",
        "--timeout",
        "9",
        "--starting-deadline",
        "3",
        "--max-output-bytes",
        "100",
        "--target-agent",
        str(AGENT_A),
    )["id"]

    edited = run_json(
        server_url,
        "edit",
        task_id,
        "--timeout",
        "none",
        "--starting-deadline",
        "NONE",
        "--max-output-bytes",
        "none",
        "--all-agents",
    )

    assert (edited["timeout"], edited["starting_deadline"], edited["max_output_bytes"]) == (
        None,
        None,
        None,
    )
    assert edited["targets"] == {"agents": None, "labels": None}
    labelled = run_json(
        server_url, "edit", task_id, "--target-label", "role=web", "--target-label", "zone=a"
    )
    assert labelled["targets"]["labels"] == {"role": "web", "zone": "a"}


def test_a_refusal_by_the_server_is_one_line_naming_the_field(server_url: str) -> None:
    task_id = run_json(server_url, "create", "true", "-f", "every 1 hours")["id"]
    for args, prefix in (
        (["edit", task_id, "--timezone", "Mars/Olympus_Mons"], "error: timezone: "),
        (["edit", task_id, "--env", "TSCHED_X=1"], "error: env: "),
        (["create", "true", "-f", "every 1 fortnights"], "error: frequency: "),
        (["show", str(UUID(int=5))], "error: "),
        (["runs", "not-a-uuid"], "error: "),
    ):
        result = run(*args, url=server_url, status=1)
        assert result.stdout == ""
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert result.stderr.startswith(prefix), result.stderr


def test_pages_and_filters(server_url: str) -> None:
    name = f"paged-{uuid4().hex[:8]}"
    ids = [
        run_json(server_url, "create", "true", "-f", "every 1 hours", "--name", name)["id"]
        for _ in range(2)
    ]

    first = run("list", "--name", name, "--limit", "1", url=server_url, status=0)
    assert [row[0] for row in map(columns, first.stdout.splitlines()[1:])] == ids[:1]
    more = first.stderr.strip()
    assert more.startswith("more: tsched list --cursor ")
    cursor = more.rsplit(" ", 1)[1]
    rest = run_json(server_url, "list", "--name", name, "--limit", "1", "--cursor", cursor)
    assert [task["id"] for task in rest["tasks"]] == ids[1:]

    run("delete", ids[0], url=server_url, status=0)
    assert run_json(server_url, "delete", ids[0])["state"] == "deleted"  # again: the same
    assert [t["id"] for t in run_json(server_url, "list", "--name", name)["tasks"]] == ids[1:]
    deleted = run_json(server_url, "list", "--name", name, "--state", "deleted")
    assert [t["id"] for t in deleted["tasks"]] == ids[:1]

    for args in (
        ["history", ids[1], "--status", "failed"],
        ["history", ids[1], "--since", "2999-01-01T00:00:00Z", "--until", "2999-01-02T00:00:00Z"],
        ["runs", ids[1], "--status", "missed", "--limit", "5"],
    ):
        answer = run_json(server_url, *args)
        assert next(iter(answer.values())) == []
    assert run_json(server_url, "agents", "--label", "role=web") == {"agents": []}


# --- completion ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("bash", "complete -o nosort -F _tsched_completion tsched"),
        ("zsh", "#compdef tsched"),
        ("fish", "complete --no-files --command tsched"),
    ],
)
def test_the_completion_script_is_produced(shell: str, marker: str) -> None:
    result = subprocess.run(
        [TSCHED],
        env={**os.environ, "_TSCHED_COMPLETE": f"{shell}_source"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert marker in result.stdout


def test_completion_offers_the_commands() -> None:
    result = subprocess.run(
        [TSCHED],
        env={
            **os.environ,
            "_TSCHED_COMPLETE": "bash_complete",
            "COMP_WORDS": "tsched hi",
            "COMP_CWORD": "1",
        },
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "plain,history" in result.stdout.splitlines()


# --- tables --------------------------------------------------------------------------------------


def _task(**changes: object) -> Task:
    fields: dict[str, object] = {
        "id": UUID(TASK_ID),
        "command": "echo hello world",
        "frequency": parse_frequency("every 30 seconds"),
        "anchor": NOW,
        "created_at": NOW,
    }
    return Task(**(fields | changes))  # type: ignore[arg-type]


def test_task_table() -> None:
    long = "x" * 100
    text = tables.render(
        tables.task_table(
            [
                _task(name="greet"),
                _task(
                    command=f"{long}\nmore",
                    paused=True,
                    targets=Targets(labels={"role": "db"}),
                    timezone="Europe/Paris",
                ),
            ]
        ),
        color=False,
    )
    header, first, second = text.splitlines()
    assert header.split() == ["ID", "NAME", "STATE", "FREQUENCY", "TARGETS", "COMMAND"]
    assert columns(first) == [
        TASK_ID,
        "greet",
        "active",
        "every 30 seconds",
        "all",
        "echo hello world",
    ]
    assert "(Europe/Paris)" in second
    assert "role=db" in second
    assert second.endswith("x" * (tables.MAX_CELL - 1) + "…")
    assert not any(line.endswith(" ") for line in text.splitlines())
    assert "\x1b" not in text


def test_task_detail_names_every_field_as_in_json() -> None:
    text = tables.render(
        tables.task_detail(_task(timeout=90.0, env={"B": "2", "A": "1"})), color=False
    )
    fields = dict(line.split(None, 1) for line in text.splitlines())
    assert fields["timeout"] == "1m30s"
    assert fields["env"] == "A=1 B=2"
    assert fields["state"] == "active"
    assert fields["starting_deadline"] == "default"
    assert fields["deleted_at"] == "-"
    assert fields["created_at"] == "2026-11-28T03:16:31Z"


def test_run_and_execution_tables() -> None:
    outcome = {"exit_code": 0, "attempts": 1, "started_at": NOW, "finished_at": NOW}
    run_summary = RunSummary(
        task_id=UUID(TASK_ID),
        scheduled_at=NOW,
        trigger=Trigger.MANUAL,
        status=RunStatus.PARTIALLY_FAILED,
        started_at=NOW,
        finished_at=NOW + timedelta(seconds=2),
        outcomes=[
            AgentOutcome(agent_id=AGENT_A, status=ExecutionStatus.SUCCEEDED, final=True, **outcome),
            AgentOutcome(agent_id=AGENT_B, status=ExecutionStatus.FAILED, final=True, **outcome),
        ],
    )
    runs = tables.render(tables.run_table([run_summary]), color=False).splitlines()
    assert columns(runs[1]) == [
        "2026-11-28T03:16:31Z",
        "manual",
        "partially_failed",
        "2",
        "1 failed, 1 succeeded",
        "2026-11-28T03:16:33Z",
    ]

    execution = Execution(
        task_id=UUID(TASK_ID),
        agent_id=AGENT_A,
        scheduled_at=NOW,
        started_at=NOW,
        finished_at=NOW + timedelta(seconds=75),
        status=ExecutionStatus.TIMED_OUT,
        attempt=2,
        final=False,
    )
    rows = tables.render(tables.execution_table([execution]), color=False).splitlines()
    assert rows[1].split() == [
        "2026-11-28T03:16:31Z",
        str(AGENT_A),
        "2+",
        "schedule",
        "timed_out",
        "-",
        "2026-11-28T03:16:31Z",
        "1m15s",
    ]


def test_agent_tables_and_run_started() -> None:
    agent = AgentDetail(
        id=AGENT_A,
        url="http://127.0.0.1:8081",
        registered_at=NOW,
        status=AgentStatus.LOST,
        labels={"zone": "a", "role": "web"},
        tasks=[UUID(TASK_ID), UUID(int=3)],
    )
    listing = tables.render(tables.agent_table([agent]), color=False).splitlines()
    assert columns(listing[0])[:3] == ["ID", "STATUS", "URL"]
    assert listing[1].split() == [str(AGENT_A), "lost", agent.url, "role=web,zone=a", "-"]

    detail = tables.render(tables.agent_detail(agent), color=False).splitlines()
    assert detail[-2:] == [f"tasks          {TASK_ID}", f"               {UUID(int=3)}"]

    started = RunStarted(task_id=UUID(TASK_ID), scheduled_at=NOW, agents=[AGENT_A, AGENT_B])
    assert tables.run_started_text(started) == (
        f"task {TASK_ID}: manual run at 2026-11-28T03:16:31Z on 2 agents"
    )


def test_colour_only_when_asked() -> None:
    table = tables.task_table([_task()])
    assert "\x1b[" in tables.render(table, color=True)
    assert "\x1b[" not in tables.render(table, color=False)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0512, "0.05s"), (1.0, "1s"), (9.999, "10s"), (12.4, "12s"), (65, "1m05s"), (7380, "2h03m")],
)
def test_durations(seconds: float, text: str) -> None:
    assert tables.duration_text(seconds) == text
