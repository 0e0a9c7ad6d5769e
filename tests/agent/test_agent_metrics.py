"""The agent's ``GET /metrics`` and ``GET /readyz``: a real agent (``run_agent``, real commands,
real HTTP) reporting to a real stand-in server, scraped and parsed with prometheus-client's
parser while its reports are refused, then accepted."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import trio

from scraping import Key, scrape
from taskscheduler_agent import STATE_FILE, AgentConfig, AgentStarted, Engine, run_agent
from taskscheduler_agent.app import create_app
from taskscheduler_agent.metrics import AgentMetrics
from taskscheduler_core import Execution, ExecutionStatus, StartExecution, TaskSpec, Trigger

StartCollector = Callable[..., Awaitable[Any]]
WaitFor = Callable[..., Awaitable[None]]
ServeAsgi = Callable[..., Awaitable[str]]


def executions(samples: dict[Key, float], status: str) -> float:
    return samples[("tsched_agent_executions_total", (("status", status),))]


def agent_config(tmp_path: Path, **options: Any) -> AgentConfig:
    fast = {"report_backoff_initial": 0.01, "report_backoff_max": 0.1, "register_backoff_max": 0.1}
    return AgentConfig(**({"data_dir": tmp_path / "agent", "port": 0} | fast | options))


async def test_executions_lateness_queue_and_report_latency_move(
    tmp_path: Path, nursery: trio.Nursery, start_collector: StartCollector, wait_for: WaitFor
) -> None:
    succeeding, failing = str(uuid.uuid4()), str(uuid.uuid4())
    # The server refuses every report at first (503): they wait in the outbox.
    collector = await start_collector(status_for={succeeding: 503, failing: 503})
    started: AgentStarted = await nursery.start(
        run_agent, agent_config(tmp_path, server_url=collector.url)
    )
    async with httpx.AsyncClient(base_url=started.url, timeout=10) as http:
        empty = await scrape(http)
        assert empty[("tsched_agent_tasks", ())] == 0
        assert empty[("tsched_agent_reports_queued", ())] == 0
        assert empty[("tsched_agent_fire_lateness_seconds_count", ())] == 0
        for task_id, command in ((succeeding, "echo hi"), (failing, "exit 3")):
            scheduled = await http.post(
                "/api/v1/tasks/schedule",
                json={"task_id": task_id, "command": command, "frequency": "every 1 seconds"},
            )
            assert scheduled.status_code == 200

        # An execution of each task, refused at least once.
        async def both_ran() -> dict[Key, float] | None:
            samples = await scrape(http)
            ran = executions(samples, "succeeded") and executions(samples, "failed")
            return samples if ran and collector.attempts["complete"] >= 2 else None

        with trio.fail_after(10):
            while (refused := await both_ran()) is None:
                await trio.sleep(0.05)
        assert refused[("tsched_agent_tasks", ())] == 2
        assert executions(refused, "timed_out") == 0
        ran = executions(refused, "succeeded") + executions(refused, "failed")
        # Every execution counted by then is still queued (refused): none was acknowledged.
        later = await scrape(http)
        assert later[("tsched_agent_reports_queued", ())] >= ran
        assert later[("tsched_agent_report_latency_seconds_count", ())] == 0
        # Each was a fire time's first attempt: its lateness was observed, and small.
        lateness = refused[("tsched_agent_fire_lateness_seconds_count", ())]
        assert lateness >= ran
        assert refused[("tsched_agent_fire_lateness_seconds_sum", ())] < lateness * 0.5
        assert ("tsched_agent_fire_lateness_seconds_bucket", (("le", "0.001"),)) in refused

        for task_id in (succeeding, failing):  # nothing more is queued from now on
            assert (await http.delete(f"/api/v1/tasks/{task_id}")).json()["removed"]
        collector.status_for.clear()  # the server is back: the outbox drains
        await wait_for(lambda: len(collector.reports) >= ran)

        async def drained() -> bool:
            samples = await scrape(http)
            return (
                samples[("tsched_agent_reports_queued", ())] == 0
                and samples[("tsched_agent_report_latency_seconds_count", ())] >= ran
            )

        with trio.fail_after(10):
            while not await drained():
                await trio.sleep(0.05)
        delivered = await scrape(http)
    assert delivered[("tsched_agent_tasks", ())] == 0
    # They waited for the server: their latency counts that wait.
    assert delivered[("tsched_agent_report_latency_seconds_sum", ())] > 0
    count = delivered[("tsched_agent_report_latency_seconds_count", ())]
    assert delivered[("tsched_agent_report_latency_seconds_bucket", (("le", "+Inf"),))] == count


async def test_readyz_is_503_once_the_state_file_is_gone(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    config = agent_config(tmp_path)
    started: AgentStarted = await nursery.start(run_agent, config)
    async with httpx.AsyncClient(base_url=started.url, timeout=10) as http:
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready", "state": "ok", "reports_queued": 0}
        # The data directory wiped under the running agent: nothing it writes survives now.
        state = config.data_dir / STATE_FILE
        state.rename(tmp_path / "moved.sqlite3")
        unready = await http.get("/readyz")
        health = await http.get("/healthz")
        samples = await scrape(http)
    assert unready.status_code == 503
    body = unready.json()
    assert (body["status"], body["state"]) == ("unready", "unavailable")
    assert str(state) in body["reason"]
    assert health.status_code == 200
    # Unknown, so left out (not a stale number); the rest of the scrape still answers.
    assert ("tsched_agent_reports_queued", ()) not in samples
    assert ("tsched_agent_tasks", ()) in samples


async def deliver_nothing(execution: Execution) -> None:
    pass


async def test_an_app_without_a_state_file_counts_its_tasks_and_is_ready(
    serve_asgi: ServeAsgi,
) -> None:
    engine = Engine(agent_id=uuid.uuid4(), deliver=deliver_nothing)
    url = await serve_asgi(create_app(engine=engine, agent_id=engine.agent_id))
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        await http.post(
            "/api/v1/tasks/schedule",
            json={"task_id": str(uuid.uuid4()), "command": "true", "frequency": "every 1 hours"},
        )
        samples = await scrape(http)
        ready = await http.get("/readyz")
    assert samples[("tsched_agent_tasks", ())] == 1
    assert ("tsched_agent_reports_queued", ()) not in samples
    assert ready.json() == {"status": "ready", "state": "ok", "reports_queued": None}


def test_only_first_attempts_of_the_schedule_are_late() -> None:
    metrics = AgentMetrics()
    at = datetime(2026, 1, 1, tzinfo=UTC)
    spec = TaskSpec(task_id=uuid.uuid4(), command="true", frequency="every 1 hours", anchor=at)
    late = at + timedelta(milliseconds=3)
    metrics.started(StartExecution(task=spec, scheduled_at=at), late)
    # A retry waits on purpose; a manual run's time is when it was asked for: neither is late.
    metrics.started(StartExecution(task=spec, scheduled_at=at, attempt=2), at + timedelta(hours=1))
    metrics.started(
        StartExecution(task=spec, scheduled_at=at, trigger=Trigger.MANUAL), at + timedelta(hours=1)
    )
    histogram = metrics.fire_lateness.collect()[0].samples
    values = {(s.name, s.labels.get("le")): s.value for s in histogram}
    assert values[("tsched_agent_fire_lateness_seconds_count", None)] == 1
    assert values[("tsched_agent_fire_lateness_seconds_bucket", "0.001")] == 0
    assert values[("tsched_agent_fire_lateness_seconds_bucket", "0.005")] == 1


async def test_counting_counts_what_was_delivered_by_status() -> None:
    metrics = AgentMetrics()
    delivered: list[Execution] = []

    async def deliver(execution: Execution) -> None:
        delivered.append(execution)

    counted = metrics.counting(deliver)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    for status in (ExecutionStatus.MISSED, ExecutionStatus.MISSED, ExecutionStatus.ERROR):
        await counted(
            Execution(
                task_id=uuid.uuid4(),
                agent_id=uuid.uuid4(),
                scheduled_at=at,
                started_at=at,
                finished_at=at,
                status=status,
            )
        )
    text = (await metrics.render()).decode()
    assert len(delivered) == 3
    assert 'tsched_agent_executions_total{status="missed"} 2.0' in text
    assert 'tsched_agent_executions_total{status="error"} 1.0' in text
    assert 'tsched_agent_executions_total{status="succeeded"} 0.0' in text
