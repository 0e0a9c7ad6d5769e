"""Agents that were down when a task was created, or lost their disk, get their tasks back."""

from __future__ import annotations

import shutil
import time
import uuid

import httpx
import pytest

from processes import Cluster, JournalEntry, wait_until

pytestmark = pytest.mark.faults


def reporting_agents(url: str, task: uuid.UUID) -> list[str]:
    """The agents in the latest complete run of ``task``."""
    body = httpx.get(f"{url}/api/v1/tasks/{task}/latest_output", timeout=2.0).json()
    return [output["agent_id"] for output in body["outputs"]]


def test_agent_down_when_the_task_is_created_runs_it_once_back(cluster: Cluster) -> None:
    up, down = cluster.agent("up"), cluster.agent("down")
    server = cluster.start(up, down)
    assert down.stop() == 0

    task = server.create("echo $TSCHED_AGENT_ID", "every 1 seconds")
    created_at = time.monotonic()
    wait_until(
        lambda: server.agent_status()[str(down.agent_id)] == "lost",
        timeout=10,
        what="the stopped agent marked lost",
    )
    # A run does not wait for a lost agent: the one that is up makes runs complete.
    latest = wait_until(
        lambda: reporting_agents(server.url, task),
        timeout=10,
        what="a complete run without the lost agent",
    )
    assert latest == [str(up.agent_id)]
    assert down.journal() == []

    time.sleep(max(0.0, 10 - (time.monotonic() - created_at)))
    down.start_with(server.url)
    cluster.wait_alive(down)
    wait_until(
        lambda: len([e for e in down.journal() if e.status == "succeeded"]) >= 3,
        timeout=10,
        what="the late agent to run the task (3 times)",
    )
    assert down.tasks() == {task}
    both = sorted([str(up.agent_id), str(down.agent_id)])
    wait_until(
        lambda: reporting_agents(server.url, task) == both,
        timeout=5,
        what="a run with both agents' output",
    )
    cluster.settle(up, down)
    cluster.account("agent down when the task is created, started 10 s later", up, down)


def test_agent_whose_disk_was_wiped_gets_all_its_tasks_back(cluster: Cluster) -> None:
    agent = cluster.agent("agent")
    server = cluster.start(agent)
    tasks = {
        server.create("echo every second", "every 1 seconds"),
        server.create("echo every other second", "every 2 seconds"),
    }

    def runs_all() -> bool:
        return {e.key[0] for e in agent.journal() if e.status == "succeeded"} == tasks

    wait_until(runs_all, timeout=10, what="the agent to run both tasks")
    cluster.settle(agent)
    assert agent.stop() == 0
    earlier: list[JournalEntry] = agent.journal()
    # What was not delivered before the disk went is lost with it (docs/reliability.md).
    lost_with_disk = agent.outbox()
    first_id = agent.agent_id

    # 1. The whole data directory: the agent comes back as a new agent, which registers.
    shutil.rmtree(agent.data_dir)
    agent.start_with(server.url)
    assert agent.agent_id != first_id
    wait_until(lambda: agent.tasks() == tasks, timeout=10, what="both tasks back (new id)")
    wait_until(runs_all, timeout=10, what="the new agent to run both tasks")
    cluster.settle(agent)
    assert agent.stop() == 0
    earlier += agent.journal()
    lost_with_disk |= agent.outbox()

    # 2. Only the state database: same id, the server's reconcile restores its tasks.
    for name in ("agent.sqlite3", "agent.sqlite3-wal", "agent.sqlite3-shm"):
        (agent.data_dir / name).unlink(missing_ok=True)
    second_id = agent.agent_id
    agent.start_with(server.url)
    assert agent.agent_id == second_id
    wait_until(lambda: agent.tasks() == tasks, timeout=10, what="both tasks back (same id)")
    wait_until(runs_all, timeout=10, what="the agent to run both tasks again")
    cluster.settle(agent)

    # Undelivered reports of a wiped disk cannot be stored: they are left out of the count.
    kept = [entry for entry in earlier if entry.key not in lost_with_disk]
    note = f"whole data dir, then only agent.sqlite3; {len(lost_with_disk)} undelivered at wipe"
    cluster.account(
        "agent data directory deleted while stopped, restarted", agent, earlier=kept, note=note
    )
