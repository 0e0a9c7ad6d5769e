"""An agent is SIGKILLed in the middle of a long command and started again."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from processes import Cluster, free_port, micros, process_group_alive, wait_until

pytestmark = pytest.mark.faults


def started_commands(pids: Path) -> list[tuple[int, str]]:
    """(process group, scheduled_at) of every command started, from the file they append to."""
    if not pids.exists():
        return []
    lines = [line.split() for line in pids.read_text().splitlines()]
    return [(int(group), scheduled_at) for group, scheduled_at in lines]


@pytest.fixture
def pids(tmp_path: Path) -> Iterator[Path]:
    """The file the test's commands append to; their groups are killed after the test."""
    path = tmp_path / "pids"
    yield path
    for group, _ in started_commands(path):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)


def test_agent_killed_mid_command_resumes_and_finishes_the_interrupted_execution(
    cluster: Cluster, pids: Path
) -> None:
    agent = cluster.agent("agent")
    server = cluster.start(agent)
    # $$ is the shell, the leader of the command's own process group; exec keeps that pid.
    task = server.create(
        f"echo $$ $TSCHED_SCHEDULED_AT >> {shlex.quote(str(pids))}; exec sleep 30",
        "every 1 seconds",
    )
    (group, scheduled_at), *_ = wait_until(
        lambda: started_commands(pids), timeout=10, what="the long command to start"
    )
    # While it runs, the next slots are skipped (the previous execution is still running).
    wait_until(
        lambda: [e for e in agent.journal() if e.status == "skipped"],
        timeout=5,
        what="a skipped slot",
    )
    agent.kill()
    assert process_group_alive(group), "a SIGKILL of the agent does not stop its commands"

    # Started again with no server to be seen: it can only resume from its own disk.
    agent.start_with(f"http://127.0.0.1:{free_port()}")
    wait_until(lambda: agent.tasks() == {task}, timeout=5, what="the schedule resumed from disk")
    wait_until(lambda: not process_group_alive(group), timeout=5, what="the leftover group killed")
    interrupted = (task, agent.agent_id, micros(scheduled_at))
    entries = wait_until(
        lambda: [e for e in agent.journal() if e.key == interrupted],
        timeout=5,
        what="the interrupted execution journaled",
    )
    assert [e.status for e in entries] == ["error"]
    # The schedule goes on at the same fire times: a new command starts, for a later slot.
    wait_until(lambda: len(started_commands(pids)) >= 2, timeout=5, what="the next command")
    assert agent.stop() == 0  # SIGTERM: the new `sleep 30` is killed after --kill-grace

    agent.start_with(server.url)
    cluster.settle(agent)
    result = cluster.account(
        "agent SIGKILLed mid `sleep 30` (`every 1 seconds`), restarted",
        agent,
        note="the interrupted one ends `error`, once; its process group was killed",
    )
    stored = {e.key: e for e in server.executions()}
    assert stored[interrupted].status == "error"
    assert "interrupt" in stored[interrupted].stderr.lower(), stored[interrupted].stderr
    # Each slot's command started at most once, and every start is a journaled execution.
    starts = [scheduled for _, scheduled in started_commands(pids)]
    assert len(starts) == len(set(starts)), starts
    ran = {e.key[2] for e in agent.journal() if e.status not in ("skipped", "missed")}
    assert {micros(s) for s in starts} <= ran
    statuses = sorted({e.status for e in agent.journal()})
    assert "missed" in statuses or "skipped" in statuses, statuses
    assert result.run >= 4
