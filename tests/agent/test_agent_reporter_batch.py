"""The reporter sends the reports it has queued in one request, ``POST /api/v1/executions``.

Against a real stand-in server (Starlette on hypercorn, loopback) that answers batches the way
ours does: one result per item.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from taskscheduler_agent import Backoff, MemoryOutbox, Reporter
from taskscheduler_core import (
    BatchedReport,
    Execution,
    ExecutionStatus,
    batch_items,
    parse_batch_item,
)

START = datetime(2026, 11, 28, 3, 16, 1, tzinfo=UTC)
AGENT_ID = UUID("0b6d6c2e-8f1a-4a47-9c57-0c1f2b0f7a11")
FAST = Backoff(initial=0.01, maximum=0.05)

ServeAsgi = Callable[..., Awaitable[str]]
WaitFor = Callable[..., Awaitable[None]]


def execution(task_id: UUID | None = None, k: int = 1) -> Execution:
    moment = START + k * timedelta(seconds=1)
    return Execution(
        task_id=task_id or uuid4(),
        agent_id=AGENT_ID,
        scheduled_at=moment,
        started_at=moment,
        finished_at=moment,
        status=ExecutionStatus.SUCCEEDED,
        exit_code=0,
        stdout=f"run {k}\n",
    )


class BatchServer:
    """Stores what it acknowledges. ``refuse`` maps a task id to the error code its items get
    (``task_not_found`` is for good; any other code is worth retrying); ``batch_status``
    answers whole batches with that status instead (while it is set)."""

    def __init__(self) -> None:
        self.refuse: dict[str, str] = {}
        self.batch_status: int | None = None
        self.batches: list[list[BatchedReport]] = []
        self.singles: list[str] = []
        self.stored: set[tuple[str, str]] = set()
        self.app = Starlette(
            routes=[
                Route("/api/v1/executions", self._batch, methods=["POST"]),
                Route("/api/v1/tasks/{task_id}/complete", self._complete, methods=["POST"]),
            ]
        )

    async def _batch(self, request: Request) -> Response:
        if self.batch_status is not None:
            return JSONResponse({"error": {"code": "nope"}}, status_code=self.batch_status)
        items = [
            parse_batch_item(item, index)
            for index, item in enumerate(batch_items(json.loads(await request.body())))
        ]
        self.batches.append(items)
        results: list[dict[str, Any]] = []
        for item in items:
            code = self.refuse.get(str(item.task_id))
            if code is not None:
                error = {"code": code, "message": "refused", "field": None}
                results.append({"acknowledged": False, "duplicate": False, "error": error})
                continue
            key = (str(item.task_id), str(item.scheduled_at))
            results.append({"acknowledged": True, "duplicate": key in self.stored})
            self.stored.add(key)
        return JSONResponse({"results": results})

    async def _complete(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        self.singles.append(task_id)
        code = self.refuse.get(task_id)
        if code is not None:  # as a single report: a 404 for good, a 503 for "not now"
            status = 404 if code == "task_not_found" else 503
            return JSONResponse({"error": {"code": code}}, status_code=status)
        body = json.loads(await request.body())
        self.stored.add((task_id, str(datetime.fromisoformat(body["scheduled_at"]))))
        return JSONResponse({"acknowledged": True, "duplicate": False})


@pytest.fixture
async def server(serve_asgi: ServeAsgi) -> tuple[BatchServer, str]:
    batch_server = BatchServer()
    return batch_server, await serve_asgi(batch_server.app)


async def _reporter(
    nursery: trio.Nursery, url: str, queued: list[Execution], **options: Any
) -> tuple[Reporter, MemoryOutbox]:
    outbox = MemoryOutbox()
    reporter = Reporter(server_url=url, outbox=outbox, backoff=FAST, **options)
    for each in queued:  # queued before it runs, as after an outage
        await reporter.submit(each)
    await nursery.start(reporter.run)
    return reporter, outbox


async def test_queued_reports_go_in_one_batch(
    nursery: trio.Nursery, server: tuple[BatchServer, str], wait_for: WaitFor
) -> None:
    batch_server, url = server
    queued = [execution(k=k) for k in range(1, 8)]
    _, outbox = await _reporter(nursery, url, queued)
    await wait_for(lambda: len(outbox) == 0)
    assert len(batch_server.batches) == 1
    assert [item.task_id for item in batch_server.batches[0]] == [e.task_id for e in queued]
    assert batch_server.batches[0][0] == BatchedReport.of(queued[0])
    assert batch_server.singles == []


async def test_a_batch_is_cut_by_the_page_size(
    nursery: trio.Nursery, server: tuple[BatchServer, str], wait_for: WaitFor
) -> None:
    batch_server, url = server
    queued = [execution(k=k) for k in range(1, 8)]
    _, outbox = await _reporter(nursery, url, queued, page_size=3)
    await wait_for(lambda: len(outbox) == 0)
    assert [len(batch) for batch in batch_server.batches] == [3, 3]
    assert len(batch_server.singles) == 1  # the last one was alone on its page


async def test_each_item_is_acknowledged_dropped_or_retried_by_its_own_result(
    nursery: trio.Nursery, server: tuple[BatchServer, str], wait_for: WaitFor
) -> None:
    batch_server, url = server
    gone, busy = uuid4(), uuid4()
    batch_server.refuse = {str(gone): "task_not_found", str(busy): "unavailable"}
    queued = [execution(gone), execution(k=2), execution(busy), execution(k=4)]
    _, outbox = await _reporter(nursery, url, queued)
    # the good ones are stored, the refusal for good is dropped, the other one waits
    await wait_for(lambda: len(outbox) == 1)
    assert [e.task_id for e in await outbox.pending()] == [busy]
    await trio.sleep(0.1)
    assert len(outbox) == 1  # retried, refused again, still kept
    del batch_server.refuse[str(busy)]  # the server can take it now
    await wait_for(lambda: len(outbox) == 0)
    assert (str(busy), str(queued[2].scheduled_at)) in batch_server.stored
    assert (str(gone), str(queued[0].scheduled_at)) not in batch_server.stored


async def test_a_server_without_the_batch_endpoint_gets_one_request_per_report(
    nursery: trio.Nursery, server: tuple[BatchServer, str], wait_for: WaitFor
) -> None:
    batch_server, url = server
    batch_server.batch_status = 404  # an older server
    queued = [execution(k=k) for k in range(1, 5)]
    reporter, outbox = await _reporter(nursery, url, queued)
    await wait_for(lambda: len(outbox) == 0)
    assert sorted(batch_server.singles) == sorted(str(e.task_id) for e in queued)
    assert reporter.batches is False  # and it does not ask again


async def test_a_failing_batch_waits_and_is_sent_again_whole(
    nursery: trio.Nursery, server: tuple[BatchServer, str], wait_for: WaitFor
) -> None:
    batch_server, url = server
    batch_server.batch_status = 503
    queued = [execution(k=k) for k in range(1, 5)]
    _, outbox = await _reporter(nursery, url, queued)
    await trio.sleep(0.2)
    assert len(outbox) == 4
    assert batch_server.singles == []  # nothing was sent one by one
    batch_server.batch_status = None
    await wait_for(lambda: len(outbox) == 0)
    assert [len(batch) for batch in batch_server.batches] == [4]
