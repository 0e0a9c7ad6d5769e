"""The agent's HTTP API, in-process through ``httpx.ASGITransport``."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from strategies import bodies_like, json_values
from taskscheduler_agent import MAX_BODY_BYTES, Engine, WallClock, create_app
from taskscheduler_core import Execution, ScheduleTask, __version__

START = datetime(2026, 11, 28, 3, 16, 1, tzinfo=UTC)
AGENT_ID = UUID("0b6d6c2e-8f1a-4a47-9c57-0c1f2b0f7a11")
TASK_ID = "322f0be6-d276-489f-89eb-7662c4517885"
ORIGINAL_BODY = {"task_id": TASK_ID, "command": "echo hello world", "frequency": "every 30 seconds"}


async def _ignore(execution: Execution) -> None:
    pass


def make_client() -> tuple[httpx.AsyncClient, Engine]:
    engine = Engine(agent_id=AGENT_ID, deliver=_ignore, clock=WallClock(start=START))
    transport = httpx.ASGITransport(app=create_app(engine=engine, agent_id=AGENT_ID))
    return httpx.AsyncClient(transport=transport, base_url="http://agent"), engine


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with make_client()[0] as client:
        yield client


def assert_error(response: httpx.Response, status: int, code: str, field: str | None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert (error["code"], error["field"]) == (code, field)
    assert isinstance(error["message"], str)
    assert error["message"]


async def test_the_original_three_fields_schedule_a_task_anchored_at_receipt(
    mock_clock: trio.testing.MockClock,
) -> None:
    http, engine = make_client()
    async with http:
        mock_clock.jump(2.5)
        response = await http.post("/api/v1/tasks/schedule", json=ORIGINAL_BODY)
        assert response.status_code == 200
        assert response.json() == {"task_id": TASK_ID, "changed": True}
        listed = (await http.get("/api/v1/tasks")).json()["tasks"]
    # every option at its default (docs/api.md), the task not paused
    assert listed == [
        {
            "task_id": TASK_ID,
            "command": "echo hello world",
            "frequency": "every 30 seconds",
            "anchor": "2026-11-28T03:16:03.500000Z",
            "paused": False,
            "timezone": "UTC",
            "timeout": None,
            "overlap": "skip",
            "starting_deadline": None,
            "retries": 0,
            "retry_delay": 1.0,
            "env": {},
            "max_output_bytes": None,
        }
    ]
    assert engine.scheduler.next_deadline() == START + timedelta(seconds=32.5)


async def test_scheduling_is_idempotent_and_a_changed_task_replaces_the_old_one(
    mock_clock: trio.testing.MockClock, client: httpx.AsyncClient
) -> None:
    first = await client.post("/api/v1/tasks/schedule", json=ORIGINAL_BODY)
    mock_clock.jump(7)
    again = await client.post("/api/v1/tasks/schedule", json=ORIGINAL_BODY)
    assert (first.json()["changed"], again.json()["changed"]) == (True, False)
    listed = (await client.get("/api/v1/tasks")).json()["tasks"]
    assert [task["anchor"] for task in listed] == ["2026-11-28T03:16:01.000000Z"]

    changed = ORIGINAL_BODY | {"command": "echo changed"}
    assert (await client.post("/api/v1/tasks/schedule", json=changed)).json()["changed"]
    listed = (await client.get("/api/v1/tasks")).json()["tasks"]
    assert [task["command"] for task in listed] == ["echo changed"]


async def test_the_servers_anchor_is_kept(client: httpx.AsyncClient) -> None:
    body = ORIGINAL_BODY | {"anchor": "2026-11-28T04:16:01.25+01:00", "extra": "ignored"}
    response = await client.post("/api/v1/tasks/schedule", json=body)
    assert response.json() == {"task_id": TASK_ID, "changed": True}
    again = await client.post("/api/v1/tasks/schedule", json=body)
    assert again.json()["changed"] is False
    (task,) = (await client.get("/api/v1/tasks")).json()["tasks"]
    assert task["anchor"] == "2026-11-28T03:16:01.250000Z"


async def test_tasks_are_listed_by_id(client: httpx.AsyncClient) -> None:
    ids = [str(uuid4()) for _ in range(5)]
    for task_id in ids:
        await client.post("/api/v1/tasks/schedule", json=ORIGINAL_BODY | {"task_id": task_id})
    listed = (await client.get("/api/v1/tasks")).json()["tasks"]
    assert [task["task_id"] for task in listed] == sorted(ids)


async def test_identity_and_health(client: httpx.AsyncClient) -> None:
    identity = await client.get("/api/v1/agent")
    assert identity.json() == {"agent_id": str(AGENT_ID), "version": __version__, "labels": {}}
    health = await client.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"command": "echo", "frequency": "every 1 seconds"}, "task_id"),
        (ORIGINAL_BODY | {"task_id": "not-a-uuid"}, "task_id"),
        (ORIGINAL_BODY | {"task_id": 5}, "task_id"),
        ({"task_id": TASK_ID, "frequency": "every 1 seconds"}, "command"),
        (ORIGINAL_BODY | {"command": "   "}, "command"),
        (ORIGINAL_BODY | {"command": 42}, "command"),
        (ORIGINAL_BODY | {"command": "echo \x00"}, "command"),
        (ORIGINAL_BODY | {"frequency": "every 0 seconds"}, "frequency"),
        (ORIGINAL_BODY | {"frequency": "every 30 fortnights"}, "frequency"),
        (ORIGINAL_BODY | {"frequency": 30}, "frequency"),
        (ORIGINAL_BODY | {"anchor": "2026-11-28T03:16:01"}, "anchor"),
        (ORIGINAL_BODY | {"anchor": "yesterday"}, "anchor"),
        (ORIGINAL_BODY | {"anchor": "9999-12-31T23:59:59Z"}, "anchor"),
    ],
)
async def test_an_invalid_body_is_422_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/api/v1/tasks/schedule", json=body)
    assert_error(response, 422, "validation_error", field)
    assert (await client.get("/api/v1/tasks")).json()["tasks"] == []


@pytest.mark.parametrize("content", [b"[]", b'"a string"', b"5", b"null", b"NaN"])
async def test_a_body_that_is_not_an_object_is_422(
    client: httpx.AsyncClient, content: bytes
) -> None:
    response = await client.post("/api/v1/tasks/schedule", content=content)
    assert_error(response, 422, "invalid_body", None)


@pytest.mark.parametrize(
    ("content", "field"),
    [
        (
            b'{"task_id": "%s", "command": "echo \\ud800", "frequency": "every 1 seconds"}',
            "command",
        ),
        (b'{"\\udfff": 1}', None),
        (b'{"a": [1, {"b": "\\udc80x"}]}', "a.1.b"),
    ],
)
async def test_a_lone_surrogate_is_422(
    client: httpx.AsyncClient, content: bytes, field: str | None
) -> None:
    body = content.replace(b"%s", TASK_ID.encode())
    response = await client.post("/api/v1/tasks/schedule", content=body)
    assert_error(response, 422, "invalid_string", field)
    assert (await client.get("/api/v1/tasks")).json()["tasks"] == []


@pytest.mark.parametrize(
    "content", [b"", b"  \n", b"{", b'{"task_id": }', b"\xff\xfe{}", b"[" * 100_000]
)
async def test_a_body_that_is_not_json_is_400(client: httpx.AsyncClient, content: bytes) -> None:
    response = await client.post("/api/v1/tasks/schedule", content=content)
    assert_error(response, 400, "invalid_json", None)


async def test_a_client_that_goes_away_mid_body_is_400() -> None:
    engine = Engine(agent_id=AGENT_ID, deliver=_ignore, clock=WallClock(start=START))
    app = create_app(engine=engine, agent_id=AGENT_ID)
    incoming: list[dict[str, Any]] = [
        {"type": "http.request", "body": b'{"task_id": ', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/v1/tasks/schedule",
        "raw_path": b"/api/v1/tasks/schedule",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8081),
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["error"]["code"] == "client_disconnected"


async def test_a_body_over_1_mib_is_413(client: httpx.AsyncClient) -> None:
    big = json.dumps(ORIGINAL_BODY | {"padding": "x" * MAX_BODY_BYTES}).encode()
    response = await client.post("/api/v1/tasks/schedule", content=big)
    assert_error(response, 413, "body_too_large", None)

    async def chunks() -> AsyncIterator[bytes]:
        # streamed without a Content-Length: the limit is enforced while reading
        for _ in range(20):
            yield b" " * 65536

    response = await client.post("/api/v1/tasks/schedule", content=chunks())
    assert_error(response, 413, "body_too_large", None)


async def test_a_body_of_exactly_1_mib_is_read(client: httpx.AsyncClient) -> None:
    body = json.dumps(ORIGINAL_BODY).encode()
    padded = body + b" " * (MAX_BODY_BYTES - len(body))
    response = await client.post("/api/v1/tasks/schedule", content=padded)
    assert response.status_code == 200


async def test_unknown_paths_and_methods_are_json_errors(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/api/v1/nothing"), 404, "not_found", None)
    response = await client.get("/api/v1/tasks/schedule")
    assert_error(response, 405, "method_not_allowed", None)
    assert response.headers["allow"] == "POST"
    assert_error(await client.delete("/api/v1/tasks"), 405, "method_not_allowed", None)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies_like(ScheduleTask) | json_values())
async def test_no_body_makes_a_5xx(body: Any) -> None:
    async with make_client()[0] as http:
        response = await http.post("/api/v1/tasks/schedule", json=body)
        # whatever was accepted can be listed again
        assert (await http.get("/api/v1/tasks")).status_code == 200
    assert response.status_code in (200, 400, 422), response.text
    if response.status_code != 200:
        assert set(response.json()["error"]) == {"code", "message", "field"}


@settings(max_examples=30, deadline=None)
@given(content=st.binary(max_size=200))
async def test_no_bytes_make_a_5xx(content: bytes) -> None:
    async with make_client()[0] as http:
        response = await http.post("/api/v1/tasks/schedule", content=content)
    assert response.status_code in (200, 400, 422), response.text


async def test_delete_removes_a_task_and_is_idempotent(client: httpx.AsyncClient) -> None:
    await client.post("/api/v1/tasks/schedule", json=ORIGINAL_BODY)
    first = await client.delete(f"/api/v1/tasks/{TASK_ID}")
    assert (first.status_code, first.json()) == (200, {"task_id": TASK_ID, "removed": True})
    assert (await client.get("/api/v1/tasks")).json()["tasks"] == []
    again = await client.delete(f"/api/v1/tasks/{TASK_ID.upper()}")
    assert (again.status_code, again.json()) == (200, {"task_id": TASK_ID, "removed": False})
    unknown = str(uuid4())
    response = await client.delete(f"/api/v1/tasks/{unknown}")
    assert response.json() == {"task_id": unknown, "removed": False}


@pytest.mark.parametrize("task_id", ["nope", "schedule", "322f0be6", "%00"])
async def test_delete_of_a_task_id_that_is_not_a_uuid_is_422(
    client: httpx.AsyncClient, task_id: str
) -> None:
    response = await client.delete(f"/api/v1/tasks/{task_id}")
    assert_error(response, 422, "validation_error", "task_id")


async def test_a_spec_with_every_option_is_kept_whole(client: httpx.AsyncClient) -> None:
    options = {
        "anchor": "2026-11-28T03:16:01.000000Z",
        "paused": True,
        "timezone": "Europe/Paris",
        "timeout": 30.0,
        "overlap": "replace",
        "starting_deadline": 5.0,
        "retries": 2,
        "retry_delay": 0.5,
        "env": {"GREETING": "hi"},
        "max_output_bytes": 100,
    }
    body = ORIGINAL_BODY | {"frequency": "30 2 * * *"} | options
    response = await client.post("/api/v1/tasks/schedule", json=body)
    assert response.json() == {"task_id": TASK_ID, "changed": True}
    (listed,) = (await client.get("/api/v1/tasks")).json()["tasks"]
    assert listed == body
    again = await client.post("/api/v1/tasks/schedule", json=body)
    assert again.json()["changed"] is False
    resumed = await client.post("/api/v1/tasks/schedule", json=body | {"paused": False})
    assert resumed.json()["changed"] is True


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("env", {"TSCHED_TASK_ID": "mine"}),
        ("overlap", "sometimes"),
        ("timeout", 0),
        ("retries", 11),
        ("timezone", "Mars/Olympus_Mons"),
        ("max_output_bytes", 0),
    ],
)
async def test_a_bad_option_is_422_naming_it(
    client: httpx.AsyncClient, option: str, value: object
) -> None:
    response = await client.post("/api/v1/tasks/schedule", json=ORIGINAL_BODY | {option: value})
    assert_error(response, 422, "validation_error", option)
    assert (await client.get("/api/v1/tasks")).json()["tasks"] == []


async def test_run_now_starts_a_manual_execution_once(
    mock_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    settle: Callable[..., Awaitable[None]],
) -> None:
    delivered: list[Execution] = []

    async def deliver(execution: Execution) -> None:
        delivered.append(execution)

    engine = Engine(agent_id=AGENT_ID, deliver=deliver, clock=WallClock(start=START))
    await nursery.start(engine.run)
    app = create_app(engine=engine, agent_id=AGENT_ID)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://agent"
    ) as http:
        await http.post("/api/v1/tasks/schedule", json=ORIGINAL_BODY | {"paused": True})
        body = {"scheduled_at": "2026-11-28T03:16:05.5Z"}
        first = await http.post(f"/api/v1/tasks/{TASK_ID}/run", json=body)
        assert (first.status_code, first.json()) == (202, {})
        again = await http.post(f"/api/v1/tasks/{TASK_ID}/run", json=body)
        assert (again.status_code, again.json()) == (202, {})

        unknown = await http.post(f"/api/v1/tasks/{uuid4()}/run", json=body)
        assert_error(unknown, 404, "task_not_found", "task_id")
        not_a_uuid = await http.post("/api/v1/tasks/nope/run", json=body)
        assert_error(not_a_uuid, 422, "validation_error", "task_id")
        for bad in ({}, {"scheduled_at": "soon"}, {"scheduled_at": "2026-11-28T03:16:05"}):
            response = await http.post(f"/api/v1/tasks/{TASK_ID}/run", json=bad)
            assert_error(response, 422, "validation_error", "scheduled_at")
        wrong_method = await http.get(f"/api/v1/tasks/{TASK_ID}/run")
        assert_error(wrong_method, 405, "method_not_allowed", None)

        await settle(lambda: delivered)
    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
    (manual,) = delivered
    assert (manual.trigger.value, manual.status.value, manual.stdout) == (
        "manual",
        "succeeded",
        "hello world\n",
    )
    assert manual.scheduled_at == START + timedelta(seconds=4.5)


async def test_the_identity_shows_the_agents_labels() -> None:
    engine = Engine(agent_id=AGENT_ID, deliver=_ignore, clock=WallClock(start=START))
    app = create_app(engine=engine, agent_id=AGENT_ID, labels={"role": "web", "zone": "eu-1"})
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://agent"
    ) as http:
        identity = (await http.get("/api/v1/agent")).json()
    assert identity["labels"] == {"role": "web", "zone": "eu-1"}
