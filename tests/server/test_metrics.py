"""``GET /metrics``, ``GET /readyz`` and the 503 of an unreachable database, over real HTTP.

The server runs for real (``serve``: hypercorn on 127.0.0.1, a SQLite file, the lease loop);
the metrics are scraped and parsed with prometheus-client's own parser, before and after real
reports. The database is made unreachable for real: a SQLite store whose connection is closed,
and (with ``TSCHED_TEST_DATABASE_URL``; the ``database_url`` fixture of tests/conftest.py gives
each test a schema of its own) a PostgreSQL reached through a TCP proxy that is cut.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import trio

from scraping import Key, scrape
from taskscheduler_agent import Reporter
from taskscheduler_core import Execution, ExecutionStatus
from taskscheduler_server import AsyncStore, ServerConfig, Store, create_app, serve
from taskscheduler_server.lease import Leadership
from taskscheduler_server.metrics import ServerMetrics
from tcp_proxy import TcpProxy

WaitUntil = Callable[..., Awaitable[None]]
ServeAsgi = Callable[..., Awaitable[tuple[str, trio.CancelScope]]]


def stored(samples: dict[Key, float], status: str) -> float:
    return samples[("tsched_executions_total", (("status", status),))]


def report(agent_id: uuid.UUID, at: datetime, **fields: Any) -> dict[str, Any]:
    return {
        "server_id": str(agent_id),
        "scheduled_at": at.isoformat(),
        "started_at": at.isoformat(),
        "finished_at": at.isoformat(),
        "stdout": "out\n",
        **fields,
    }


def server_config(tmp_path: Path, **options: Any) -> ServerConfig:
    return ServerConfig(
        database=tmp_path / "server.sqlite3", port=0, replica_id="replica-a", **options
    )


async def test_reports_move_the_counters_and_the_histogram(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    url = await nursery.start(serve, server_config(tmp_path))
    agent_id = uuid.uuid4()
    at = datetime(2026, 1, 1, 12, tzinfo=UTC)
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        created = await http.post(
            "/api/v1/tasks/create", json={"command": "true", "frequency": "every 1 hours"}
        )
        task_id = created.json()["command_id"]
        registered = await http.post(
            "/api/v1/agents/register",
            json={"agent_id": str(agent_id), "url": "http://127.0.0.1:9"},
        )
        assert registered.status_code == 200
        before = await scrape(http)
        assert stored(before, "succeeded") == stored(before, "failed") == 0
        assert before[("tsched_report_duplicates_total", ())] == 0
        assert before[("tsched_report_seconds_count", ())] == 0
        assert before[("tsched_agents", (("status", "alive"),))] == 1
        assert before[("tsched_agents", (("status", "lost"),))] == 0
        # A single SQLite server holds the lease from its start.
        assert before[("tsched_lease_held", ())] == 1
        assert before[("tsched_lease_holder", (("replica", "replica-a"),))] == 1

        complete = f"/api/v1/tasks/{task_id}/complete"
        first = await http.post(complete, json=report(agent_id, at))
        again = await http.post(complete, json=report(agent_id, at))
        assert (first.json()["duplicate"], again.json()["duplicate"]) == (False, True)
        batch = await http.post(
            "/api/v1/executions",
            json={
                "executions": [
                    {"task_id": task_id, **report(agent_id, at)},  # a duplicate
                    {
                        "task_id": task_id,
                        **report(agent_id, at + timedelta(hours=1), status="failed", exit_code=3),
                    },
                    {"task_id": str(uuid.uuid4()), **report(agent_id, at)},  # no such task
                ]
            },
        )
        assert [result["acknowledged"] for result in batch.json()["results"]] == [
            True,
            True,
            False,
        ]
        after = await scrape(http)

    assert stored(after, "succeeded") == 1
    assert stored(after, "failed") == 1
    assert stored(after, "timed_out") == 0
    assert after[("tsched_report_duplicates_total", ())] == 2
    # One observation per request that committed: two single reports and the batch.
    assert after[("tsched_report_seconds_count", ())] == 3
    assert 0 < after[("tsched_report_seconds_sum", ())] < 10
    buckets = sorted(
        (float(dict(labels)["le"]), value)
        for (name, labels), value in after.items()
        if name == "tsched_report_seconds_bucket"
    )
    assert buckets[0][0] == 0.001
    assert [value for _, value in buckets] == sorted(value for _, value in buckets)
    assert buckets[-1] == (float("inf"), 3)


async def test_the_agents_gauge_is_read_from_the_store_at_each_scrape(
    tmp_path: Path, nursery: trio.Nursery, wait_until: WaitUntil
) -> None:
    config = server_config(tmp_path, lost_after=timedelta(seconds=0.2))
    url = await nursery.start(serve, config)
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        for _ in range(2):
            await http.post(
                "/api/v1/agents/register",
                json={"agent_id": str(uuid.uuid4()), "url": "http://127.0.0.1:9"},
            )
        assert (await scrape(http))[("tsched_agents", (("status", "alive"),))] == 2

        async def both_lost() -> bool:
            samples = await scrape(http)
            return (
                samples[("tsched_agents", (("status", "lost"),))] == 2
                and samples[("tsched_agents", (("status", "alive"),))] == 0
            )

        await wait_until(both_lost)


async def test_readyz_reports_the_database_and_the_lease(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    url = await nursery.start(serve, server_config(tmp_path))
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        ready = await http.get("/readyz")
        health = await http.get("/healthz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "database": "ok",
        "lease": {"replica": "replica-a", "held": True, "holder": "replica-a"},
    }
    assert health.json() == {"status": "ok"}


async def test_the_lease_gauges_follow_the_leadership_object(
    store: Store, serve_asgi: ServeAsgi
) -> None:
    leadership = Leadership(replica_id="replica-b")
    url, _ = await serve_asgi(create_app(AsyncStore(store), leadership=leadership))
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        nobody = await scrape(http)
        leadership.holder = "replica-a"  # as the lease loop sets it: another replica holds it
        other = await scrape(http)
        ready = (await http.get("/readyz")).json()
        leadership.held, leadership.holder = True, "replica-b"
        mine = await scrape(http)
    holders = [
        {dict(labels)["replica"] for (name, labels) in samples if name == "tsched_lease_holder"}
        for samples in (nobody, other, mine)
    ]
    assert holders == [set(), {"replica-a"}, {"replica-b"}]
    assert [s[("tsched_lease_held", ())] for s in (nobody, other, mine)] == [0, 0, 1]
    assert ready["lease"] == {"replica": "replica-b", "held": False, "holder": "replica-a"}


async def test_without_a_leadership_the_lease_is_not_used(
    store: Store, serve_asgi: ServeAsgi
) -> None:
    url, _ = await serve_asgi(create_app(AsyncStore(store)))
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        ready = await http.get("/readyz")
    assert ready.json()["lease"] == {"replica": None, "held": False, "holder": None}


async def test_a_closed_database_makes_readyz_503_but_not_healthz_or_metrics(
    tmp_path: Path, serve_asgi: ServeAsgi
) -> None:
    store = Store(tmp_path / "server.sqlite3")
    url, _ = await serve_asgi(create_app(AsyncStore(store)))
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        assert (await http.get("/readyz")).status_code == 200
        store.close()  # the connection is gone: every query fails
        unready = await http.get("/readyz")
        health = await http.get("/healthz")
        samples = await scrape(http)
    assert unready.status_code == 503
    body = unready.json()
    assert (body["status"], body["database"]) == ("unready", "unavailable")
    assert "not opened" in body["reason"]
    assert unready.headers["retry-after"] == "2"
    assert health.status_code == 200
    # The agents could not be counted: left out rather than reported stale or zero.
    assert not [name for name, _ in samples if name == "tsched_agents"]
    assert ("tsched_executions_total", (("status", "succeeded"),)) in samples


def test_the_report_path_does_not_touch_the_store() -> None:
    # ServerMetrics takes no store at all: what it counts on the hot path is in memory; only
    # render() is given the agents' counts, read once per scrape.
    metrics = ServerMetrics()
    metrics.reported(0.003, [(ExecutionStatus.SUCCEEDED, True), (ExecutionStatus.MISSED, False)])
    text = metrics.render(None).decode()
    assert 'tsched_executions_total{status="succeeded"} 1.0' in text
    assert "tsched_report_duplicates_total 1.0" in text
    assert 'tsched_report_seconds_bucket{le="0.005"} 1.0' in text
    assert "tsched_agents{" not in text


# --- a PostgreSQL that goes away: 503, the agents keep their reports -----------------------


def through(proxy: TcpProxy, url: str) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    user = f"{user}@" if user else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.url_port}"))


async def test_an_unreachable_postgresql_is_503_with_retry_after_and_reports_wait(
    database_url: str, serve_asgi: ServeAsgi, wait_until: WaitUntil
) -> None:
    target = urlsplit(database_url)
    with TcpProxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        store = await trio.to_thread.run_sync(Store, through(proxy, database_url))
        astore = AsyncStore(store)
        try:
            url, _ = await serve_asgi(create_app(astore))
            agent_id = uuid.uuid4()
            async with httpx.AsyncClient(base_url=url, timeout=10) as http:
                created = await http.post(
                    "/api/v1/tasks/create", json={"command": "true", "frequency": "every 1 hours"}
                )
                task_id = uuid.UUID(created.json()["command_id"])
                assert (await http.get("/readyz")).status_code == 200

                await trio.to_thread.run_sync(proxy.cut)
                at = datetime(2026, 1, 1, 12, tzinfo=UTC)
                answers = [
                    await http.post(f"/api/v1/tasks/{task_id}/complete", json=report(agent_id, at)),
                    await http.get("/api/v1/tasks"),
                    await http.get(f"/api/v1/tasks/{task_id}/latest_output"),
                ]
                for answer in answers:
                    assert answer.status_code == 503, answer.text
                    assert answer.json()["error"]["code"] == "database_unavailable"
                    assert answer.json()["error"]["field"] is None
                    assert answer.headers["retry-after"] == "2"
                unready = await http.get("/readyz")
                assert (unready.status_code, unready.json()["status"]) == (503, "unready")
                assert (await http.get("/healthz")).status_code == 200
                refused = (await scrape(http))[("tsched_database_unavailable_total", ())]
                assert refused >= 3

                async def refused_again() -> bool:
                    samples = await scrape(http)
                    return samples[("tsched_database_unavailable_total", ())] > refused

                # A real reporter: it keeps the report through the 503s, delivers it after.
                reporter = Reporter(server_url=url, linger=0.01)
                execution = Execution(
                    task_id=task_id,
                    agent_id=agent_id,
                    scheduled_at=at,
                    started_at=at,
                    finished_at=at,
                    status=ExecutionStatus.SUCCEEDED,
                )
                async with trio.open_nursery() as nursery:
                    await nursery.start(reporter.run)
                    await reporter.submit(execution)
                    await wait_until(refused_again, timeout=10)  # the report got a 503
                    assert await reporter.outbox.pending() == [execution]
                    await trio.to_thread.run_sync(proxy.restore)

                    async def delivered() -> bool:
                        return not await reporter.outbox.pending()

                    await wait_until(delivered, timeout=15)
                    nursery.cancel_scope.cancel()
                assert (await http.get("/readyz")).status_code == 200
                executions = await astore.call(Store.executions, task_id)
                assert [e.agent_id for e in executions] == [agent_id]
        finally:
            await astore.aclose()


async def test_readyz_answers_in_time_when_the_database_hangs(
    database_url: str, serve_asgi: ServeAsgi, wait_until: WaitUntil
) -> None:
    target = urlsplit(database_url)
    with TcpProxy(target.hostname or "127.0.0.1", target.port or 5432) as proxy:
        store = await trio.to_thread.run_sync(Store, through(proxy, database_url))
        astore = AsyncStore(store)
        try:
            url, _ = await serve_asgi(create_app(astore))
            async with httpx.AsyncClient(base_url=url, timeout=30) as http:
                assert (await http.get("/readyz")).status_code == 200
                # A partition: connections are cut, new ones wait unanswered (a connect would
                # wait for its 10 s connect timeout).
                await trio.to_thread.run_sync(lambda: proxy.cut(hold=True))
                began = trio.current_time()
                unready = await http.get("/readyz")
                scraped = await http.get("/metrics")
                took = trio.current_time() - began
                assert unready.status_code == 503
                assert "did not answer within 2 s" in unready.json()["reason"]
                assert scraped.status_code == 200
                assert took < 6, took  # two probes of 2 s, not two connect timeouts
                await trio.to_thread.run_sync(proxy.restore)

                async def ready() -> bool:
                    return (await http.get("/readyz")).status_code == 200

                await wait_until(ready, timeout=15)
        finally:
            await astore.aclose()
