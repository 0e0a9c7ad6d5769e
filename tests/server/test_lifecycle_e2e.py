"""The lifecycle end to end: a real server (``serve()``, hypercorn on 127.0.0.1, SQLite) and real
agents (``run_agent()``: their own HTTP endpoints, state and processes), checked on what each
agent holds (its ``GET /api/v1/tasks``) and what it reported.

Edits, pauses and resumes reach the agents' specs and a resume fires no missed slot; a deleted
task leaves its agents and keeps its history until purged; a manual run executes on every
target as one run (partially failed when one agent fails); targets follow labels (declared at
registration, or read from an ``AVAILABLE_SERVERS`` agent's identity); the history is pruned by
the running server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
import trio

from taskscheduler_agent import AgentConfig, run_agent
from taskscheduler_core import parse_time
from taskscheduler_server import ServerConfig, serve

pytestmark = pytest.mark.e2e

TASKS = "/api/v1/tasks"


@attrs.define
class Stack:
    """A running server, its agents, and a client of the server."""

    http: httpx.AsyncClient
    agents: list[Any]  # AgentStarted, in the order of their labels

    async def ok(self, method: str, path: str, status: int = 200, **kwargs: Any) -> Any:
        response = await self.http.request(method, path, **kwargs)
        assert response.status_code == status, response.text
        return response.json() if response.content else None

    async def create(self, command: str, frequency: str, **options: Any) -> dict[str, Any]:
        body = {"command": command, "frequency": frequency} | options
        created: dict[str, Any] = await self.ok("POST", TASKS, 201, json=body)
        return created

    async def specs(self, agent: Any) -> dict[str, dict[str, Any]]:
        """What ``agent`` holds: its task specs by task id."""
        response = await self.http.get(f"{agent.url}{TASKS}")
        assert response.status_code == 200, response.text
        return {spec["task_id"]: spec for spec in response.json()["tasks"]}

    async def executions(self, task_id: str, **params: Any) -> list[dict[str, Any]]:
        page = await self.ok("GET", f"{TASKS}/{task_id}/executions", params=params)
        executions: list[dict[str, Any]] = page["executions"]
        return executions


async def eventually(
    check: Callable[[], Awaitable[object]], what: str, timeout: float = 10.0
) -> Any:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    with trio.move_on_after(timeout):
        while not (result := await check()):
            await trio.sleep(0.05)
        return result
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@asynccontextmanager
async def running(
    tmp_path: Path,
    *labels: dict[str, str],
    registered: bool = True,
    **server_options: Any,
) -> AsyncIterator[Stack]:
    """A server and one agent per ``labels``; agents register themselves, or (``registered``
    false) are given to the server as ``AVAILABLE_SERVERS``."""
    async with trio.open_nursery() as nursery:
        agents = []
        for n, agent_labels in enumerate(labels):
            if not registered:
                agents.append(
                    await nursery.start(run_agent, agent_config(tmp_path, n, None, agent_labels))
                )
        config = ServerConfig(
            database=tmp_path / "server.sqlite3",
            port=0,
            available_agents=tuple(agent.url for agent in agents),
            backoff_initial=timedelta(milliseconds=20),
            backoff_max=timedelta(milliseconds=200),
            graceful_timeout=timedelta(seconds=1),
            **server_options,
        )
        server_url = await nursery.start(serve, config)
        if registered:
            for n, agent_labels in enumerate(labels):
                agents.append(
                    await nursery.start(
                        run_agent, agent_config(tmp_path, n, server_url, agent_labels)
                    )
                )
        async with httpx.AsyncClient(base_url=server_url, timeout=10) as http:
            stack = Stack(http=http, agents=agents)

            async def all_known() -> bool:
                listed = (await http.get("/api/v1/agents")).json()["agents"]
                return {a["id"] for a in listed} == {str(a.agent_id) for a in agents}

            await eventually(all_known, "every agent known to the server")
            yield stack
        nursery.cancel_scope.cancel()


def agent_config(
    tmp_path: Path, n: int, server_url: str | None, labels: dict[str, str]
) -> AgentConfig:
    return AgentConfig(
        data_dir=tmp_path / f"agent-{n}",
        port=0,
        server_url=server_url,
        labels=labels,
        heartbeat_interval=0.2,
        report_backoff_initial=0.05,
        report_backoff_max=0.5,
        register_backoff_max=0.2,
        kill_grace=1,
    )


async def test_edit_pause_and_resume_reach_the_agents_and_a_resume_fires_no_missed_slot(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, {}, {}) as stack:
        task = await stack.create('echo "v1"', "every 1 seconds")
        task_id = task["id"]

        async def every_agent(check: Callable[[dict[str, Any] | None], bool]) -> bool:
            return all([check((await stack.specs(a)).get(task_id)) for a in stack.agents])

        await eventually(lambda: every_agent(lambda spec: spec is not None), "the task pushed")

        edited = await stack.ok(
            "PATCH",
            f"{TASKS}/{task_id}",
            json={"command": 'echo "v2 $GREETING"', "timeout": 30, "env": {"GREETING": "hi"}},
        )
        assert edited["anchor"] == task["anchor"]
        await eventually(
            lambda: every_agent(
                lambda spec: (
                    spec is not None
                    and (spec["command"], spec["timeout"], spec["env"])
                    == ('echo "v2 $GREETING"', 30.0, {"GREETING": "hi"})
                )
            ),
            "the edited spec on every agent",
        )

        async def new_output() -> bool:
            output = await stack.ok("GET", f"{TASKS}/{task_id}/latest_output")
            return [o.get("stdout") for o in output["outputs"]] == ["v2 hi\n", "v2 hi\n"]

        await eventually(new_output, "the edited command's output from both agents")

        await stack.ok("POST", f"{TASKS}/{task_id}/pause")
        await eventually(
            lambda: every_agent(lambda spec: spec is not None and spec["paused"]),
            "the paused spec on every agent",
        )
        paused_everywhere = datetime.now(UTC)
        await trio.sleep(2.2)  # two slots pass while it is paused
        resumed = await stack.ok("POST", f"{TASKS}/{task_id}/resume")
        resumed_at = parse_time(resumed["updated_at"])
        await eventually(
            lambda: every_agent(lambda spec: spec is not None and not spec["paused"]),
            "the resumed spec on every agent",
        )

        async def ran_after_resume() -> bool:
            executions = await stack.executions(task_id, since=resumed_at.isoformat())
            return {e["agent_id"] for e in executions} == {str(a.agent_id) for a in stack.agents}

        await eventually(ran_after_resume, "a run after the resume on both agents")
        # no burst: nothing was run, skipped or missed for the slots of the pause
        during = await stack.executions(
            task_id, since=paused_everywhere.isoformat(), until=resumed_at.isoformat()
        )
        assert during == []


async def test_delete_stops_the_agents_keeps_the_history_and_purge_removes_it(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, {}, {}) as stack:
        task_id = (await stack.create("echo hi", "every 1 seconds"))["id"]

        async def reported() -> bool:
            executions = await stack.executions(task_id)
            return len({e["agent_id"] for e in executions}) == 2

        await eventually(reported, "a report from each agent")

        deleted = await stack.ok("DELETE", f"{TASKS}/{task_id}")
        assert deleted["state"] == "deleted"

        async def dropped_everywhere() -> bool:
            return all([task_id not in await stack.specs(agent) for agent in stack.agents])

        await eventually(dropped_everywhere, "every agent dropping the task")
        dropped = datetime.now(UTC)
        await trio.sleep(1.2)  # a slot passes: nobody runs it any more
        history = await stack.executions(task_id)
        assert history
        assert all(parse_time(e["scheduled_at"]) <= dropped for e in history)
        assert (await stack.ok("GET", f"{TASKS}/{task_id}"))["state"] == "deleted"
        assert (await stack.ok("GET", f"{TASKS}/{task_id}/runs"))["runs"]
        output = await stack.ok("GET", f"{TASKS}/{task_id}/latest_output")
        assert output["outputs"]
        assert await stack.ok("GET", TASKS) == {"tasks": [], "next_cursor": None}

        await stack.ok("DELETE", f"{TASKS}/{task_id}", 204, params={"purge": "true"})
        for path in ("", "/executions", "/runs", "/latest_output"):
            response = await stack.http.get(f"{TASKS}/{task_id}{path}")
            assert (response.status_code, response.json()["error"]["code"]) == (
                404,
                "task_not_found",
            )


async def test_a_manual_run_runs_on_every_target_as_one_run(tmp_path: Path) -> None:
    async with running(tmp_path, {}, {}) as stack:
        web, db = stack.agents
        # succeeds on one agent only; yearly and paused: no scheduled run gets in the way
        command = f'test "$TSCHED_AGENT_ID" = {web.agent_id}'
        task_id = (await stack.create(command, "@yearly"))["id"]
        await stack.ok("POST", f"{TASKS}/{task_id}/pause")
        # at once: an agent that has not got the task yet is sent it before the run
        started = await stack.ok("POST", f"{TASKS}/{task_id}/run", 202)
        assert started["task_id"] == task_id
        assert sorted(started["agents"]) == sorted([str(web.agent_id), str(db.agent_id)])

        async def complete_run() -> list[dict[str, Any]] | None:
            runs = (await stack.ok("GET", f"{TASKS}/{task_id}/runs"))["runs"]
            return runs if runs and runs[0]["status"] != "running" else None

        [run] = await eventually(complete_run, "the manual run to complete")
        assert run["scheduled_at"] == started["scheduled_at"]
        assert (run["trigger"], run["status"]) == ("manual", "partially_failed")
        outcomes = {o["agent_id"]: (o["status"], o["exit_code"]) for o in run["outcomes"]}
        assert outcomes == {str(web.agent_id): ("succeeded", 0), str(db.agent_id): ("failed", 1)}
        executions = await stack.executions(task_id)
        assert {(e["trigger"], e["scheduled_at"]) for e in executions} == {
            ("manual", started["scheduled_at"])
        }
        failed = await stack.ok("GET", f"{TASKS}/{task_id}/runs", params={"status": "failed"})
        assert failed["runs"] == []


async def test_targets_follow_labels_and_edits(tmp_path: Path) -> None:
    async with running(tmp_path, {"role": "web"}, {"role": "db"}) as stack:
        web, db = stack.agents
        task_id = (
            await stack.create("echo hi", "every 1 hours", targets={"labels": {"role": "web"}})
        )["id"]

        async def held_by(agent: Any) -> bool:
            return task_id in await stack.specs(agent)

        await eventually(lambda: held_by(web), "the web agent getting the task")
        await trio.sleep(0.3)
        assert not await held_by(db)
        selected = await stack.ok("GET", "/api/v1/agents", params={"label": "role=web"})
        assert [a["id"] for a in selected["agents"]] == [str(web.agent_id)]
        detail = await stack.ok("GET", f"/api/v1/agents/{web.agent_id}")
        assert (detail["labels"], detail["tasks"], detail["status"]) == (
            {"role": "web"},
            [task_id],
            "alive",
        )
        listed = await stack.ok("GET", TASKS, params={"agent": str(db.agent_id)})
        assert listed["tasks"] == []

        await stack.ok(
            "PATCH", f"{TASKS}/{task_id}", json={"targets": {"agents": [str(db.agent_id)]}}
        )

        async def moved() -> bool:
            return await held_by(db) and not await held_by(web)

        await eventually(moved, "the task moving from the web agent to the db agent")
        listed = await stack.ok("GET", TASKS, params={"agent": str(db.agent_id)})
        assert [t["id"] for t in listed["tasks"]] == [task_id]


async def test_labels_of_an_available_servers_agent_come_from_its_identity(
    tmp_path: Path,
) -> None:
    async with running(tmp_path, {"role": "batch"}, {}, registered=False) as stack:
        batch, other = stack.agents
        detail = await stack.ok("GET", f"/api/v1/agents/{batch.agent_id}")
        assert detail["labels"] == {"role": "batch"}
        task_id = (
            await stack.create("echo hi", "every 1 hours", targets={"labels": {"role": "batch"}})
        )["id"]

        async def delivered() -> bool:
            return task_id in await stack.specs(batch)

        await eventually(delivered, "the batch agent getting the task")
        assert task_id not in await stack.specs(other)


async def test_the_running_server_prunes_history_and_forgets_emptied_deleted_tasks(
    tmp_path: Path,
) -> None:
    async with running(
        tmp_path, keep_runs=2, keep_days=1, prune_interval=timedelta(seconds=0.2)
    ) as stack:
        now = datetime.now(UTC)
        kept = (await stack.create("echo hi", "every 1 hours"))["id"]
        gone = (await stack.create("echo old", "every 1 hours"))["id"]
        reporter = "00000000-0000-0000-0000-00000000000a"  # reports need no registration
        for task_id, ages in ((kept, range(1, 6)), (gone, (49, 50))):
            for hours in ages:
                slot = (now - timedelta(hours=hours)).isoformat()
                await stack.ok(
                    "POST",
                    f"{TASKS}/{task_id}/complete",
                    json={"server_id": reporter, "scheduled_at": slot, "status": "succeeded"},
                )
        await stack.ok("DELETE", f"{TASKS}/{gone}")

        async def pruned() -> bool:
            runs = (await stack.ok("GET", f"{TASKS}/{kept}/runs"))["runs"]
            return len(runs) == 2

        async def forgotten() -> bool:
            return (await stack.http.get(f"{TASKS}/{gone}")).status_code == 404

        await eventually(pruned, "the history pruned to 2 runs")
        await eventually(forgotten, "the deleted task forgotten once its history is gone")
        runs = (await stack.ok("GET", f"{TASKS}/{kept}/runs"))["runs"]
        ages = [round((now - parse_time(r["scheduled_at"])) / timedelta(hours=1)) for r in runs]
        assert ages == [1, 2]
