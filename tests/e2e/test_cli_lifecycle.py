"""Every ``tsched`` task-management command as a real process, against one real ``tsched up``.

One ``tsched up`` (a server and two agents) serves the whole module; each command is the
installed ``tsched`` entry point run as its own process, its table checked for the right rows
and its ``--json`` parsed.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest

from processes import TSCHED, Tsched, agents, free_port, wait_healthy, wait_until

pytestmark = pytest.mark.e2e

#: Bound for one command; they take well under a second.
COMMAND_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("cli-lifecycle")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    up = Tsched(["up", "--port", str(port), "--data-dir", str(data)], log=data / "up.log")
    try:
        wait_healthy(url, up)
        wait_until(lambda: len(agents(url)) == 2, timeout=20, what="two agents")
        yield url
    finally:
        up.stop()


@pytest.fixture(scope="module")
def agent_ids(url: str) -> list[str]:
    return sorted(agent["id"] for agent in agents(url))


class Command:
    """``tsched --url URL ARGS…`` started as a process; :meth:`result` waits for it.

    Commands that do not depend on each other are started together and then awaited, so that
    the module's dozens of processes (each mostly Python starting up) overlap.
    """

    def __init__(self, url: str, *args: str, status: int = 0) -> None:
        self.args = args
        self.status = status
        self.process = subprocess.Popen(
            [TSCHED, "--url", url, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )

    def result(self) -> subprocess.CompletedProcess[str]:
        """The finished process; its exit status must be the expected one."""
        try:
            stdout, stderr = self.process.communicate(timeout=COMMAND_TIMEOUT)
        finally:
            self.process.kill()
        shown = f"tsched {' '.join(self.args)}:\n{stdout}{stderr}"
        assert self.process.returncode == self.status, shown
        assert "Traceback" not in stderr, shown
        return subprocess.CompletedProcess(self.args, self.process.returncode, stdout, stderr)

    def json(self) -> Any:
        return json.loads(self.result().stdout)


def tsched(url: str, *args: str, status: int = 0) -> subprocess.CompletedProcess[str]:
    """Run ``tsched --url URL ARGS…`` to its end; its exit status must be ``status``."""
    return Command(url, *args, status=status).result()


def as_json(url: str, *args: str) -> Any:
    return Command(url, *args, "--json").json()


def rows(output: str) -> list[list[str]]:
    """A table's lines as cells (columns are at least two spaces apart)."""
    return [re.split(r" {2,}", line) for line in output.splitlines()]


def fields(output: str) -> dict[str, str]:
    """A ``show`` table as {field: value}."""
    return {row[0]: row[1] if len(row) > 1 else "" for row in rows(output) if row[0]}


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid4().hex[:8]}"


def test_create_show_list(url: str) -> None:
    name = unique("report")
    created = tsched(
        url,
        "create",
        "echo report",
        "-f",
        "every 1 hours",
        "--name",
        name,
        "--timeout",
        "30",
        "--overlap",
        "allow",
        "--retries",
        "1",
        "--env",
        "A=1",
        "--env",
        "B=x=y",
    ).stdout
    task_id = str(UUID(created.strip()))

    show, show_json, listing, listing_json, labelled = (
        Command(url, "show", task_id),
        Command(url, "show", task_id, "--json"),
        Command(url, "list", "--name", name),
        Command(url, "list", "--name", name, "--json"),
        Command(
            url,
            "create",
            "true",
            "-f",
            "@daily",
            "--timezone",
            "Europe/Paris",
            "--target-label",
            "role=db",
            "--json",
        ),
    )
    shown = fields(show.result().stdout)
    assert shown["id"] == task_id
    assert (shown["name"], shown["state"], shown["frequency"]) == (name, "active", "every 1 hours")
    assert (shown["timeout"], shown["overlap"], shown["retries"]) == ("30s", "allow", "1")
    assert shown["env"] == "A=1 B=x=y"
    task = show_json.json()
    assert (task["id"], task["state"], task["env"]) == (task_id, "active", {"A": "1", "B": "x=y"})

    assert rows(listing.result().stdout) == [
        ["ID", "NAME", "STATE", "FREQUENCY", "TARGETS", "COMMAND"],
        [task_id, name, "active", "every 1 hours", "all", "echo report"],
    ]
    page = listing_json.json()
    assert [t["id"] for t in page["tasks"]] == [task_id]
    assert page["next_cursor"] is None

    other = labelled.json()
    assert other["command_id"] == other["id"]
    assert (other["frequency"], other["timezone"]) == ("@daily", "Europe/Paris")
    assert other["targets"] == {"agents": None, "labels": {"role": "db"}}


def test_edit_pause_resume(url: str) -> None:
    name = unique("edited")
    task_id = tsched(url, "create", "true", "-f", "every 1 hours", "--env", "A=1").stdout.strip()

    edited = fields(tsched(url, "edit", task_id, "--name", name, "--env", "B=2").stdout)
    assert (edited["name"], edited["env"]) == (name, "A=1 B=2")
    changed = as_json(url, "edit", task_id, "--clear-env", "--timeout", "5", "-f", "every 2 hours")
    assert (changed["env"], changed["timeout"], changed["frequency"]) == ({}, 5.0, "every 2 hours")

    assert tsched(url, "pause", task_id).stdout == f"task {task_id}: paused\n"
    listing = rows(tsched(url, "list", "--state", "paused", "--name", name).stdout)
    assert [row[:3] for row in listing[1:]] == [[task_id, name, "paused"]]

    # resuming is idempotent: two at once both answer "active"
    resumed, resumed_json = (
        Command(url, "resume", task_id),
        Command(url, "resume", task_id, "--json"),
    )
    assert resumed.result().stdout == f"task {task_id}: active\n"
    assert resumed_json.json()["state"] == "active"


def test_run_runs_history(url: str, agent_ids: list[str]) -> None:
    task_id = tsched(url, "create", "echo manual", "-f", "every 1 hours").stdout.strip()

    started = tsched(url, "run", task_id).stdout
    assert re.fullmatch(rf"task {task_id}: manual run at \S+Z on 2 agents\n", started), started

    def finished() -> bool:
        answer = httpx.get(f"{url}/api/v1/tasks/{task_id}/runs", timeout=5).json()
        return bool(answer["runs"]) and answer["runs"][0]["status"] != "running"

    wait_until(finished, timeout=20, what="the manual run to finish")
    runs_json, runs, history, one, limited = (
        Command(url, "runs", task_id, "--json"),
        Command(url, "runs", task_id),
        Command(url, "history", task_id),
        Command(url, "history", task_id, "--agent", agent_ids[0], "--json"),
        Command(url, "history", task_id, "--limit", "1"),
    )
    assert [run["status"] for run in runs_json.json()["runs"]] == ["succeeded"]
    table = rows(runs.result().stdout)
    assert table[0] == ["SCHEDULED AT", "TRIGGER", "STATUS", "AGENTS", "OUTCOMES", "FINISHED AT"]
    assert [row[1:5] for row in table[1:]] == [["manual", "succeeded", "2", "2 succeeded"]]

    executions = rows(history.result().stdout)
    assert executions[0][:5] == ["SCHEDULED AT", "AGENT", "ATTEMPT", "TRIGGER", "STATUS"]
    assert sorted(row[1] for row in executions[1:]) == agent_ids
    assert {tuple(row[2:6]) for row in executions[1:]} == {("1", "manual", "succeeded", "0")}
    assert [(e["agent_id"], e["stdout"]) for e in one.json()["executions"]] == [
        (agent_ids[0], "manual\n")
    ]
    assert len(rows(limited.result().stdout)) == 2
    assert limited.result().stderr.startswith(f"more: tsched history {task_id} --cursor ")


def test_agents(url: str, agent_ids: list[str]) -> None:
    task_id = tsched(url, "create", "true", "-f", "every 1 hours").stdout.strip()

    listing, listing_json, detail, detail_json, missing = (
        Command(url, "agents"),
        Command(url, "agents", "--json"),
        Command(url, "agents", agent_ids[0]),
        Command(url, "agents", agent_ids[0], "--json"),
        Command(url, "agents", str(uuid4()), status=1),
    )
    table = rows(listing.result().stdout)
    assert table[0] == ["ID", "STATUS", "URL", "LABELS", "LAST SEEN"]
    assert sorted(row[0] for row in table[1:]) == agent_ids
    assert {row[1] for row in table[1:]} == {"alive"}
    assert sorted(agent["id"] for agent in listing_json.json()["agents"]) == agent_ids

    shown = detail.result().stdout
    assert fields(shown)["id"] == agent_ids[0]
    assert task_id in shown
    assert task_id in detail_json.json()["tasks"]
    assert one_line_error(missing.result()).startswith("error: ")


def test_delete_and_purge(url: str) -> None:
    name = unique("doomed")
    first, second = (
        Command(url, "create", "true", "-f", "every 1 hours", "--name", name),
        Command(url, "create", "true", "-f", "every 1 hours"),
    )
    task_id, other = first.result().stdout.strip(), second.result().stdout.strip()

    assert tsched(url, "delete", task_id).stdout == f"task {task_id}: deleted\n"
    show, deleted, pause = (
        Command(url, "show", task_id),
        Command(url, "list", "--state", "all", "--name", name, "--json"),
        Command(url, "pause", task_id, status=1),
    )
    assert fields(show.result().stdout)["state"] == "deleted"
    assert [(t["id"], t["state"]) for t in deleted.json()["tasks"]] == [(task_id, "deleted")]
    assert "deleted" in one_line_error(pause.result())

    purged, purged_other = (
        Command(url, "delete", task_id, "--purge", "--json"),
        Command(url, "delete", other, "--purge"),
    )
    assert purged.json() == {"id": task_id, "purged": True}
    assert purged_other.result().stdout == f"task {other}: purged\n"
    assert one_line_error(tsched(url, "show", task_id, status=1)).startswith("error: ")


def test_output_follow(url: str, agent_ids: list[str], tmp_path: Path) -> None:
    task_id = tsched(url, "create", "echo tick", "-f", "every 1 seconds").stdout.strip()

    # without --count it follows until Ctrl-C, which is a normal end: exit status 0
    log = tmp_path / "follow.out"
    with log.open("w") as out:
        endless = subprocess.Popen(
            [TSCHED, "--url", url, "output", task_id, "--follow", "--json"],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
        )
    try:
        counted = Command(url, "output", task_id, "--follow", "--count", "2", "--json")
        human = Command(url, "output", task_id, "--follow", "--count", "1")

        first, second = (json.loads(line) for line in counted.result().stdout.splitlines())
        assert second["scheduled_at"] > first["scheduled_at"]
        for run in (first, second):
            assert [o["agent_id"] for o in run["outputs"]] == agent_ids
            assert {o["stdout"] for o in run["outputs"]} == {"tick\n"}
        text = human.result().stdout
        assert text.startswith("completed at ")
        assert text.count("    tick") == 2

        wait_until(lambda: log.read_text().count("\n") >= 1, timeout=20, what="a followed run")
        endless.send_signal(signal.SIGINT)
        assert endless.wait(timeout=COMMAND_TIMEOUT) == 0
    finally:
        endless.kill()
        _, stderr = endless.communicate()
    assert stderr == ""
    assert all(json.loads(line)["outputs"] for line in log.read_text().splitlines())
    httpx.delete(f"{url}/api/v1/tasks/{task_id}", params={"purge": "true"}, timeout=5)


def test_bad_flags_exit_2_naming_the_flag(url: str) -> None:
    cases = {
        "--timeout": Command(url, "edit", "x", "--timeout", "-5", status=2),
        "--target-label": Command(
            url, "create", "true", "-f", "every 1 hours", "--target-label", "role", status=2
        ),
    }
    for flag, command in cases.items():
        assert flag in one_line_error(command.result())
