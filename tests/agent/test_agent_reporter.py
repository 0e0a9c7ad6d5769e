"""The reporter against a real peer: a tiny ASGI "server" served by hypercorn on 127.0.0.1."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import attrs
import pytest
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from processes import free_port
from taskscheduler_agent import Backoff, MemoryOutbox, Reporter
from taskscheduler_core import (
    Execution,
    ExecutionReport,
    ExecutionStatus,
    Trigger,
    structure,
    unstructure,
)

START = datetime(2026, 11, 28, 3, 16, 1, tzinfo=UTC)
AGENT_ID = UUID("0b6d6c2e-8f1a-4a47-9c57-0c1f2b0f7a11")
FAST = Backoff(initial=0.01, maximum=0.05)

StartCollector = Callable[..., Awaitable[Any]]
WaitFor = Callable[..., Awaitable[None]]


def execution(task_id: UUID | None = None, k: int = 1, stdout: str = "hello world\n") -> Execution:
    scheduled_at = START + k * timedelta(seconds=1)
    return Execution(
        task_id=task_id or uuid4(),
        agent_id=AGENT_ID,
        scheduled_at=scheduled_at,
        started_at=scheduled_at,
        finished_at=scheduled_at + timedelta(milliseconds=3),
        status=ExecutionStatus.SUCCEEDED,
        exit_code=0,
        stdout=stdout,
        stdout_dropped=7,
    )


async def test_retries_until_the_server_accepts(
    nursery: trio.Nursery, start_collector: StartCollector, wait_for: WaitFor
) -> None:
    collector = await start_collector(fail_first=3)
    outbox = MemoryOutbox()
    reporter = Reporter(server_url=collector.url, outbox=outbox, backoff=FAST)
    await nursery.start(reporter.run)
    sent = execution()
    await reporter.submit(sent)

    await wait_for(lambda: collector.reports)
    assert collector.attempts["complete"] == 4
    ((task_id, body),) = collector.reports
    assert task_id == str(sent.task_id)
    assert body == unstructure(ExecutionReport.of(sent))
    assert structure(body, ExecutionReport).execution(sent.task_id, START) == sent
    await wait_for(lambda: len(outbox) == 0)


async def test_a_permanent_refusal_is_dropped_and_the_rest_delivered(
    nursery: trio.Nursery,
    start_collector: StartCollector,
    wait_for: WaitFor,
    caplog: pytest.LogCaptureFixture,
) -> None:
    refused = uuid4()
    collector = await start_collector(status_for={str(refused): 404})
    outbox = MemoryOutbox()
    reporter = Reporter(server_url=collector.url, outbox=outbox, backoff=FAST)
    await nursery.start(reporter.run)
    await reporter.submit(execution(refused))
    good = execution()
    await reporter.submit(good)

    await wait_for(lambda: collector.reports and not len(outbox))
    assert collector.reports_for(good.task_id)
    assert collector.attempts["complete"] == 2  # a refusal is not retried
    assert any("refused the report" in record.message for record in caplog.records)


# 413 and 400 with a code that is not one of our permanent refusals (a proxy, a body limit
# lower than the report) are retried: dropping the report would lose the execution.
@pytest.mark.parametrize("status", [500, 503, 408, 429, 413, 400])
async def test_a_report_the_server_keeps_failing_does_not_stall_the_others(
    status: int, nursery: trio.Nursery, start_collector: StartCollector, wait_for: WaitFor
) -> None:
    broken = uuid4()
    collector = await start_collector(status_for={str(broken): status})
    outbox = MemoryOutbox()
    reporter = Reporter(server_url=collector.url, outbox=outbox, backoff=FAST)
    await nursery.start(reporter.run)
    await reporter.submit(execution(broken))  # first in the queue
    good = [execution(k=k) for k in range(1, 6)]
    for each in good:
        await reporter.submit(each)

    await wait_for(lambda: len(collector.reports) == len(good))
    assert {task_id for task_id, _ in collector.reports} == {str(e.task_id) for e in good}
    # still retried, and still waiting in the outbox once the others are acknowledged
    await wait_for(lambda: collector.attempts["complete"] >= len(good) + 3)
    await wait_for(lambda: len(outbox) == 1)
    assert [e.task_id for e in await outbox.pending()] == [broken]


async def test_reports_wait_for_a_server_that_is_down(
    nursery: trio.Nursery, start_collector: StartCollector, wait_for: WaitFor
) -> None:
    port = free_port()  # nothing listens there yet: every attempt is refused
    outbox = MemoryOutbox()
    reporter = Reporter(server_url=f"http://127.0.0.1:{port}", outbox=outbox, backoff=FAST)
    await nursery.start(reporter.run)
    sent = [execution(k=k) for k in range(1, 4)]
    for each in sent:
        await reporter.submit(each)
    await trio.sleep(0.2)
    assert await outbox.pending() == sent

    collector = await start_collector(port=port)  # the server comes up
    await wait_for(lambda: len(collector.reports) == 3)
    assert {task_id for task_id, _ in collector.reports} == {str(e.task_id) for e in sent}
    await wait_for(lambda: len(outbox) == 0)  # acknowledged once the answers are read


async def test_a_failing_server_gets_probes_not_the_whole_backlog(
    nursery: trio.Nursery, start_collector: StartCollector
) -> None:
    collector = await start_collector(fail_first=10**9)  # every answer is a 503
    outbox = MemoryOutbox()
    backoff = Backoff(initial=0.05, maximum=0.2)
    reporter = Reporter(server_url=collector.url, outbox=outbox, backoff=backoff)
    await nursery.start(reporter.run)
    for k in range(1, 101):
        await reporter.submit(execution(k=k))
    await trio.sleep(0.6)
    # The gate allows one attempt per period (25-50 ms, 50-100, then 100-200 ms, ...): about
    # eight in 0.6 s, where retrying each report on its own schedule would make hundreds.
    assert 3 <= collector.attempts["complete"] <= 15
    assert len(outbox) == 100


async def test_without_a_server_executions_are_kept_and_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="taskscheduler_agent.reporter")
    outbox = MemoryOutbox()
    reporter = Reporter(server_url=None, outbox=outbox)
    kept = execution()
    async with trio.open_nursery() as nursery:
        await nursery.start(reporter.run)
        await reporter.submit(kept)
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    assert await outbox.pending() == [kept]
    assert any(str(kept.task_id) in record.getMessage() for record in caplog.records)


async def test_retry_after_is_honoured_up_to_the_maximum_backoff(
    nursery: trio.Nursery, serve_asgi: Callable[..., Awaitable[str]], wait_for: WaitFor
) -> None:
    attempts: list[float] = []

    async def complete(request: Request) -> Response:
        attempts.append(trio.current_time())
        if len(attempts) == 1:
            return JSONResponse({}, status_code=503, headers={"Retry-After": "3600"})
        return JSONResponse({})

    app = Starlette(routes=[Route("/api/v1/tasks/{task_id}/complete", complete, methods=["POST"])])
    url = await serve_asgi(app)
    reporter = Reporter(server_url=url, backoff=Backoff(initial=0.01, maximum=0.3))
    await nursery.start(reporter.run)
    await reporter.submit(execution())
    await wait_for(lambda: len(attempts) == 2)
    # without Retry-After the retry would come within 10 ms; with it, after the 0.3 s cap
    assert 0.3 <= attempts[1] - attempts[0] < 5


async def test_memory_outbox_replaces_same_key_and_drops_oldest_when_full() -> None:
    outbox = MemoryOutbox(limit=3)
    task_id = uuid4()
    first = execution(task_id, k=1, stdout="first\n")
    await outbox.put(first)
    await outbox.put(execution(task_id, k=1, stdout="again\n"))
    assert [e.stdout for e in await outbox.pending()] == ["again\n"]
    for k in range(2, 6):
        await outbox.put(execution(task_id, k=k))
    assert [e.scheduled_at for e in await outbox.pending()] == [
        START + k * timedelta(seconds=1) for k in (3, 4, 5)
    ]
    assert outbox.dropped == 2
    await outbox.acknowledge(execution(task_id, k=4).key)
    await outbox.acknowledge(execution(task_id, k=99).key)  # unknown: nothing happens
    assert len(outbox) == 2


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    backoff = Backoff(initial=0.2, maximum=30.0)
    for failures, full in [(1, 0.2), (2, 0.4), (3, 0.8), (8, 25.6), (9, 30.0), (10_000, 30.0)]:
        for _ in range(20):
            assert full / 2 <= backoff.delay(failures) <= full
    assert 0.1 <= backoff.delay(0) <= 0.2


@pytest.mark.parametrize("status", [503, 404])
async def test_the_outbox_is_read_a_page_at_a_time_and_delivered_whole(
    status: int, nursery: trio.Nursery, start_collector: StartCollector, wait_for: WaitFor
) -> None:
    # a failing report fills the first page (of 1): the pages behind it are still delivered
    broken = uuid4()
    collector = await start_collector(status_for={str(broken): status})
    outbox = MemoryOutbox()
    reporter = Reporter(server_url=collector.url, outbox=outbox, backoff=FAST, page_size=1)
    await reporter.submit(execution(broken))
    good = [execution(k=k) for k in range(1, 8)]
    for each in good:
        await reporter.submit(each)
    await nursery.start(reporter.run)
    await wait_for(lambda: len(collector.reports) == len(good))
    assert {task_id for task_id, _ in collector.reports} == {str(e.task_id) for e in good}
    if status == 503:  # still retried, each with its own backoff
        await wait_for(lambda: len(outbox) == 1)
    else:  # refused for good: dropped
        await wait_for(lambda: len(outbox) == 0)


async def test_each_attempt_is_a_report_of_its_own(
    nursery: trio.Nursery, start_collector: StartCollector, wait_for: WaitFor
) -> None:
    collector = await start_collector()
    outbox = MemoryOutbox()
    reporter = Reporter(server_url=collector.url, outbox=outbox, backoff=FAST)
    task_id = uuid4()
    first = attrs.evolve(execution(task_id), status=ExecutionStatus.FAILED, final=False)
    second = attrs.evolve(execution(task_id), attempt=2, trigger=Trigger.MANUAL)
    await reporter.submit(first)
    await reporter.submit(second)
    assert await outbox.pending() == [first, second]
    await nursery.start(reporter.run)
    await wait_for(lambda: len(collector.reports) == 2)
    sent = [(b["attempt"], b["trigger"], b["final"]) for b in collector.reports_for(task_id)]
    assert sent == [(1, "schedule", False), (2, "manual", True)]
