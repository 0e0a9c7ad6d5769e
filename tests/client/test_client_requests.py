"""What the clients send for each API operation, and how they read the answers.

A small Starlette app, run in-process through ``httpx.ASGITransport``, records every request and
answers what the API would; the real server is exercised by ``test_client_lifecycle.py``. Here
the exact bodies and query strings are checked: options left out are not sent, ``None`` on an
edit is sent as ``null``, times go out as RFC 3339 in UTC.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from uuid import UUID, uuid4

import attrs
import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from taskscheduler_client import AgentNotFound, AsyncClient, TaskDeleted, TaskNotFound
from taskscheduler_client._base import OutputFollow
from taskscheduler_core import (
    AgentDetail,
    AgentOutput,
    ExecutionStatus,
    LatestOutput,
    Overlap,
    RunStarted,
    Targets,
    Task,
    TaskCreated,
    TaskState,
    parse_frequency,
    unstructure,
)

NOW = datetime(2026, 11, 28, 3, 16, 31, 123456, tzinfo=UTC)
TASK = Task(
    id=UUID(int=7),
    command="echo hi",
    frequency=parse_frequency("every 1 hours"),
    anchor=NOW,
    created_at=NOW,
)
AGENT_ID = UUID(int=9)


@attrs.define
class Seen:
    method: str
    path: str
    query: list[tuple[str, str]]
    body: Any


class FakeServer:
    """Records requests; answers by path, with the API's shapes."""

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self.outputs: list[LatestOutput] = []

    async def handle(self, request: Request) -> Response:
        raw = await request.body()
        body = None if not raw else await request.json()
        path = request.url.path
        self.seen.append(Seen(request.method, path, list(request.query_params.multi_items()), body))
        return self.answer(request.method, path, dict(request.query_params), body)

    def answer(self, method: str, path: str, query: dict[str, str], body: Any) -> Response:
        task = unstructure(TASK)
        if path == "/api/v1/tasks/create":
            return JSONResponse(unstructure(TaskCreated(command_id=TASK.id, task=TASK)), 201)
        if path == "/api/v1/tasks":
            # three pages of one task each: the cursor is the page number
            page = int(query.get("cursor", "0"))
            next_cursor = str(page + 1) if page < 2 else None
            return JSONResponse({"tasks": [task], "next_cursor": next_cursor})
        if "/tasks/gone" in path:
            error = {"code": "task_deleted", "message": "task is deleted", "field": None}
            return JSONResponse({"error": error}, 409)
        if path.startswith("/api/v1/agents/"):
            if path.endswith(str(AGENT_ID)):
                detail = AgentDetail(
                    id=AGENT_ID, url="http://127.0.0.1:1", registered_at=NOW, tasks=[TASK.id]
                )
                return JSONResponse(unstructure(detail))
            if path.endswith("/html"):
                return Response("<html>Not Found</html>", 404, media_type="text/html")
            error = {"code": "agent_not_found", "message": "no such agent", "field": "agent_id"}
            return JSONResponse({"error": error}, 404)
        if path == "/api/v1/agents":
            return JSONResponse({"agents": []})
        if path.endswith("/latest_output"):
            output = self.outputs.pop(0) if len(self.outputs) > 1 else self.outputs[0]
            return JSONResponse(unstructure(output))
        if path.endswith("/run"):
            started = RunStarted(task_id=TASK.id, scheduled_at=NOW, agents=[AGENT_ID])
            return JSONResponse(unstructure(started), 202)
        if path.endswith("/runs"):
            return JSONResponse({"runs": [], "next_cursor": None})
        if path.endswith("/executions"):
            return JSONResponse({"executions": [], "next_cursor": None})
        if method == "DELETE" and query.get("purge") == "true":
            return Response(status_code=204)
        return JSONResponse(task)


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
async def client(server: FakeServer) -> AsyncIterator[AsyncClient]:
    app = Starlette(
        routes=[Route("/{path:path}", server.handle, methods=["GET", "POST", "PATCH", "DELETE"])]
    )
    async with AsyncClient("http://test", transport=httpx.ASGITransport(app=app)) as client:
        yield client


async def test_create_sends_only_the_options_given(client: AsyncClient, server: FakeServer) -> None:
    await client.create_task(
        "echo hi",
        "0 3 * * *",
        name="nightly",
        timezone="Europe/Paris",
        timeout=timedelta(minutes=2),
        overlap=Overlap.ALLOW,
        target_labels={"role": "web"},
        retries=2,
        env={"A": "1"},
    )

    assert server.seen[-1].body == {
        "command": "echo hi",
        "frequency": "0 3 * * *",
        "name": "nightly",
        "timezone": "Europe/Paris",
        "timeout": 120.0,
        "overlap": "allow",
        "targets": {"labels": {"role": "web"}},
        "retries": 2,
        "env": {"A": "1"},
    }


async def test_create_targets_in_each_form(client: AsyncClient, server: FakeServer) -> None:
    await client.create_task("true", "every 1 hours", target_agents=[AGENT_ID, str(AGENT_ID)])
    assert server.seen[-1].body["targets"] == {"agents": [str(AGENT_ID), str(AGENT_ID)]}

    await client.create_task("true", "every 1 hours", targets=Targets(agents=(AGENT_ID,)))
    assert server.seen[-1].body["targets"] == {"agents": [str(AGENT_ID)], "labels": None}

    with pytest.raises(ValueError, match="only one of"):
        await client.create_task(
            "true", "every 1 hours", target_agents=[AGENT_ID], target_labels={"a": "b"}
        )
    assert len(server.seen) == 2, "nothing is sent for a call refused locally"


async def test_edit_sends_a_patch_where_none_resets(
    client: AsyncClient, server: FakeServer
) -> None:
    task = await client.edit_task(TASK.id, name=None, timeout=30, frequency="every 2 hours")

    assert task == TASK
    seen = server.seen[-1]
    assert (seen.method, seen.path) == ("PATCH", f"/api/v1/tasks/{TASK.id}")
    assert seen.body == {"name": None, "timeout": 30, "frequency": "every 2 hours"}


@pytest.mark.parametrize(
    ("call", "method", "suffix"),
    [
        ("get_task", "GET", ""),
        ("pause_task", "POST", "/pause"),
        ("resume_task", "POST", "/resume"),
        ("delete_task", "DELETE", ""),
    ],
)
async def test_task_calls(
    client: AsyncClient, server: FakeServer, call: str, method: str, suffix: str
) -> None:
    task = await getattr(client, call)(str(TASK.id))

    assert task == TASK
    seen = server.seen[-1]
    assert (seen.method, seen.path, seen.query, seen.body) == (
        method,
        f"/api/v1/tasks/{TASK.id}{suffix}",
        [],
        None,
    )


async def test_purge_answers_none(client: AsyncClient, server: FakeServer) -> None:
    assert await client.delete_task(TASK.id, purge=True) is None
    assert server.seen[-1].query == [("purge", "true")]


async def test_run_task_reads_run_started(client: AsyncClient, server: FakeServer) -> None:
    started = await client.run_task(TASK.id)
    assert started == RunStarted(task_id=TASK.id, scheduled_at=NOW, agents=(AGENT_ID,))
    assert server.seen[-1].method == "POST"


async def test_list_query(client: AsyncClient, server: FakeServer) -> None:
    agent = uuid4()
    page = await client.list_tasks(
        state=TaskState.PAUSED, name="Back up", agent=agent, limit=5, cursor="2"
    )

    assert page.tasks == (TASK,)
    assert page.next_cursor is None
    assert server.seen[-1].query == [
        ("state", "paused"),
        ("name", "Back up"),
        ("agent", str(agent)),
        ("limit", "5"),
        ("cursor", "2"),
    ]


async def test_iter_tasks_walks_every_page(client: AsyncClient, server: FakeServer) -> None:
    tasks = [task async for task in client.iter_tasks(state="all", page_size=1)]

    assert tasks == [TASK] * 3
    assert [seen.query for seen in server.seen] == [
        [("state", "all"), ("limit", "1")],
        [("state", "all"), ("limit", "1"), ("cursor", "1")],
        [("state", "all"), ("limit", "1"), ("cursor", "2")],
    ]


async def test_history_queries(client: AsyncClient, server: FakeServer) -> None:
    paris = timezone(timedelta(hours=1))
    await client.executions(
        TASK.id,
        agent=AGENT_ID,
        status=ExecutionStatus.TIMED_OUT,
        since=datetime(2026, 11, 28, 4, 0, tzinfo=paris),
        until=NOW,
        limit=10,
    )
    assert server.seen[-1].query == [
        ("agent", str(AGENT_ID)),
        ("status", "timed_out"),
        ("since", "2026-11-28T03:00:00.000000Z"),
        ("until", "2026-11-28T03:16:31.123456Z"),
        ("limit", "10"),
    ]

    await client.runs(TASK.id, status="failed", cursor="abc")
    assert server.seen[-1].path == f"/api/v1/tasks/{TASK.id}/runs"
    assert server.seen[-1].query == [("status", "failed"), ("cursor", "abc")]

    with pytest.raises(ValueError, match="since"):
        await client.executions(TASK.id, since=datetime(2026, 1, 1))


async def test_agents_by_label_and_one_agent(client: AsyncClient, server: FakeServer) -> None:
    assert await client.agents(labels={"role": "web", "zone": "a"}) == []
    assert server.seen[-1].query == [("label", "role=web"), ("label", "zone=a")]

    detail = await client.agent(AGENT_ID)
    assert detail.tasks == (TASK.id,)


async def test_not_found_and_deleted_errors(client: AsyncClient) -> None:
    with pytest.raises(AgentNotFound) as caught:
        await client.agent(uuid4())
    assert (caught.value.status, caught.value.code) == (404, "agent_not_found")
    # a 404 that is not ours is still about what the call looked up
    with pytest.raises(AgentNotFound):
        await client.agent("html")
    with pytest.raises(TaskDeleted) as deleted:
        await client.pause_task("gone")
    assert deleted.value.status == 409
    assert not isinstance(deleted.value, TaskNotFound)


def _output(second: int) -> LatestOutput:
    at = NOW + timedelta(seconds=second)
    return LatestOutput(
        completion_time=at + timedelta(milliseconds=50),
        scheduled_at=at,
        outputs=[AgentOutput(agent_id=AGENT_ID, stdout=f"{second}\n")],
    )


async def test_follow_output_gives_each_new_run_once(
    client: AsyncClient, server: FakeServer
) -> None:
    server.outputs = [_output(0), _output(0), _output(1), _output(1), _output(3), _output(4)]

    followed = []
    async for output in client.follow_output(TASK.id, poll_interval=0.001):
        followed.append(output)
        if len(followed) == 3:
            break

    # the run complete at the start is not new; runs 1, 3, 4 are, once each
    assert [o.outputs[0].stdout for o in followed] == ["1\n", "3\n", "4\n"]


def test_follow_rules() -> None:
    none = LatestOutput(completion_time=None, outputs=())
    follow = OutputFollow(poll_interval=1.0)
    assert [follow.is_new(o) for o in (none, _output(1), _output(1), _output(0), _output(2))] == [
        False,
        True,
        False,
        False,  # an older run (never expected) is not given out of order
        True,
    ]
    latest = OutputFollow(poll_interval=1.0, include_latest=True)
    assert latest.is_new(_output(5))
    with pytest.raises(ValueError, match="poll_interval"):
        OutputFollow(poll_interval=0)
