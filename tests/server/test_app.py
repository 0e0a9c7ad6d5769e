"""The REST API in-process (httpx.ASGITransport over a real SQLite store): every endpoint and
every bad input, and that a refused request leaves nothing behind."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskscheduler_core import parse_time
from taskscheduler_server import AsyncStore, Store, create_app

MiB = 1024 * 1024


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response is our JSON error shape with ``status`` (and ``code``)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"code", "message", "field"}
    assert isinstance(error["message"], str)
    assert error["message"]
    if code is not None:
        assert error["code"] == code
    return dict(error)


async def create(
    client: httpx.AsyncClient, command: str = "echo hi", every: str = "every 10 seconds"
) -> UUID:
    response = await client.post(
        "/api/v1/tasks/create", json={"command": command, "frequency": every}
    )
    assert response.status_code == 201, response.text
    return UUID(response.json()["command_id"])


async def report(
    client: httpx.AsyncClient, task_id: UUID, agent_id: UUID, **fields: Any
) -> httpx.Response:
    body = {"server_id": str(agent_id), **fields}
    return await client.post(f"/api/v1/tasks/{task_id}/complete", json=body)


async def test_healthz(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


# --- POST /api/v1/tasks/create ---------------------------------------------------------------


async def test_create_answers_201_with_the_task(
    client: httpx.AsyncClient, store: Store, clock: Any
) -> None:
    response = await client.post(
        "/api/v1/tasks/create",
        content=b'{"command": "echo hello world", "frequency": "every 30 seconds"}',
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 201
    body = response.json()
    task_id = UUID(body["command_id"])
    assert body["id"] == str(task_id)
    assert body["command"] == "echo hello world"
    assert body["frequency"] == "every 30 seconds"
    assert parse_time(body["anchor"]) == parse_time(body["created_at"]) == clock.now
    assert body["created_at"].endswith("Z")

    stored = store.get_task(task_id)
    assert stored is not None
    assert (stored.command, str(stored.frequency), stored.anchor) == (
        "echo hello world",
        "every 30 seconds",
        clock.now,
    )


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("Every 1 Second", "every 1 seconds"),
        ("EVERY 2 HOURS", "every 2 hours"),
        ("every 5 minute", "every 5 minutes"),
    ],
)
async def test_create_accepts_singular_units_and_any_case(
    client: httpx.AsyncClient, text: str, canonical: str
) -> None:
    response = await client.post(
        "/api/v1/tasks/create", json={"command": "true", "frequency": text}
    )
    assert response.status_code == 201
    assert response.json()["frequency"] == canonical


async def test_create_refuses_unknown_fields(client: httpx.AsyncClient, store: Store) -> None:
    # a typo of an option ("timout") must not silently create a task without it
    response = await client.post(
        "/api/v1/tasks/create",
        json={"command": "true", "frequency": "every 1 hours", "timout": 5},
    )
    error = assert_error(response, 422, "validation_error")
    assert error["field"] == "timout"
    assert store.list_tasks() == []


async def test_create_assigns_the_task_to_registered_agents(
    client: httpx.AsyncClient, store: Store
) -> None:
    agent_id = uuid4()
    response = await client.post(
        "/api/v1/agents/register", json={"agent_id": str(agent_id), "url": "http://127.0.0.1:9"}
    )
    assert response.status_code == 200
    task_id = await create(client)
    [assignment] = store.undelivered(agent_id)
    assert assignment.task.id == task_id


def task_body(command: str = '"echo hi"', frequency: str = '"every 1 seconds"') -> bytes:
    """A create body from raw JSON fragments (so that invalid JSON can be written too)."""
    return f'{{"command": {command}, "frequency": {frequency}}}'.encode()


def bad_frequency(text: str) -> tuple[str, bytes, int, str, str]:
    return (text, task_body(frequency=json.dumps(text)), 422, "validation_error", "frequency")


def bad_command(name: str, command: str) -> tuple[str, bytes, int, str, str]:
    return (name, task_body(command=command), 422, "validation_error", "command")


BAD_CREATE_BODIES: list[tuple[str, bytes, int, str, str | None]] = [
    ("no body", b"", 400, "invalid_json", None),
    ("whitespace body", b"  \n", 400, "invalid_json", None),
    ("not JSON", b"command=echo&frequency=every+1+seconds", 400, "invalid_json", None),
    ("truncated JSON", task_body()[:-5], 400, "invalid_json", None),
    ("not UTF-8", task_body().replace(b"echo", b"\xff\xfe"), 400, "invalid_json", None),
    ("deeply nested", b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json", None),
    ("JSON array", b"[" + task_body() + b"]", 422, "invalid_body", None),
    ("JSON string", b'"echo hi"', 422, "invalid_body", None),
    ("JSON null", b"null", 422, "invalid_body", None),
    ("JSON number", b"42", 422, "invalid_body", None),
    ("huge integer", task_body(frequency="9" * 5000), 400, "invalid_json", None),
    ("missing command", b'{"frequency": "every 1 seconds"}', 422, "validation_error", "command"),
    bad_command("empty command", '""'),
    bad_command("blank command", '"  \\t"'),
    bad_command("numeric command", "5"),
    bad_command("null command", "null"),
    bad_command("list command", '["ls"]'),
    bad_command("NUL in command", '"a\\u0000b"'),
    ("lone surrogate", task_body(command='"echo \\ud800"'), 422, "invalid_string", "command"),
    ("missing frequency", b'{"command": "echo hi"}', 422, "validation_error", "frequency"),
    ("null frequency", task_body(frequency="null"), 422, "validation_error", "frequency"),
    ("numeric frequency", task_body(frequency="30"), 422, "validation_error", "frequency"),
    bad_frequency("every 0 seconds"),
    bad_frequency("every -3 minutes"),
    bad_frequency("every 1.5 hours"),
    bad_frequency("every five minutes"),
    bad_frequency("every 10 fortnights"),
    bad_frequency("30 seconds"),
    bad_frequency(""),
    bad_frequency("every 99999999999999999999 hours"),
]


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [case[1:] for case in BAD_CREATE_BODIES],
    ids=[case[0] for case in BAD_CREATE_BODIES],
)
async def test_create_refuses_bad_input_and_creates_nothing(
    client: httpx.AsyncClient,
    store: Store,
    body: bytes,
    status: int,
    code: str,
    field: str | None,
) -> None:
    response = await client.post(
        "/api/v1/tasks/create", content=body, headers={"content-type": "application/json"}
    )
    error = assert_error(response, status, code)
    assert error["field"] == field
    assert store.list_tasks() == []


async def test_create_refuses_a_body_over_the_limit_by_its_length(
    client: httpx.AsyncClient, store: Store
) -> None:
    body = json.dumps({"command": "x" * (MiB + 10), "frequency": "every 1 seconds"}).encode()
    response = await client.post("/api/v1/tasks/create", content=body)
    assert_error(response, 413, "body_too_large")
    assert store.list_tasks() == []


async def test_create_refuses_a_streamed_body_over_the_limit(
    client: httpx.AsyncClient, store: Store
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length: the size is only known by counting.
        yield b'{"command": "'
        for _ in range(20):
            yield b"x" * (64 * 1024)
        yield b'", "frequency": "every 1 seconds"}'

    response = await client.post("/api/v1/tasks/create", content=chunks())
    assert_error(response, 413, "body_too_large")
    assert store.list_tasks() == []


async def test_the_body_limit_is_configurable(astore: AsyncStore, tmp_path: Any) -> None:
    from taskscheduler_server import ServerConfig

    config = ServerConfig(database=tmp_path / "unused.sqlite", max_body_bytes=64)
    app = create_app(astore, config=config)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        small = await client.post(
            "/api/v1/tasks/create", json={"command": "ls", "frequency": "every 1 hours"}
        )
        assert small.status_code == 201
        big = await client.post(
            "/api/v1/tasks/create", json={"command": "x" * 64, "frequency": "every 1 hours"}
        )
        assert_error(big, 413, "body_too_large")


# --- routing errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/", "/api", "/api/v1/task", "/api/v2/tasks/create", "/nope.html", "/api/v1/tasks/a/b"]
)
async def test_unknown_routes_are_json_404(client: httpx.AsyncClient, path: str) -> None:
    assert_error(await client.get(path), 404, "not_found")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/api/v1/tasks/create"),
        ("PUT", "/api/v1/tasks"),
        ("POST", f"/api/v1/tasks/{uuid4()}"),
        ("DELETE", f"/api/v1/tasks/{uuid4()}/latest_output"),
        ("GET", f"/api/v1/tasks/{uuid4()}/complete"),
        ("GET", f"/api/v1/tasks/{uuid4()}/run"),
        ("POST", f"/api/v1/tasks/{uuid4()}/runs"),
        ("DELETE", f"/api/v1/tasks/{uuid4()}/pause"),
        ("PUT", "/api/v1/agents/register"),
        ("POST", "/api/v1/agents"),
        ("DELETE", f"/api/v1/agents/{uuid4()}"),
        ("POST", "/healthz"),
    ],
)
async def test_wrong_methods_are_json_405(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    response = await client.request(method, path)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"]


# --- GET /api/v1/tasks/{id}/latest_output ------------------------------------------------------


async def test_latest_output_of_an_unknown_task_is_404(client: httpx.AsyncClient) -> None:
    error = assert_error(
        await client.get(f"/api/v1/tasks/{uuid4()}/latest_output"), 404, "task_not_found"
    )
    assert error["field"] == "task_id"


@pytest.mark.parametrize(
    "task_id", ["nope", "123", "322f0be6-d276-489f-89eb", "%00", "..%2F..%2Fetc"]
)
async def test_latest_output_of_a_non_uuid_is_404(client: httpx.AsyncClient, task_id: str) -> None:
    response = await client.get(f"/api/v1/tasks/{task_id}/latest_output")
    assert 400 <= response.status_code < 500
    assert_error(response, response.status_code)


async def test_latest_output_before_any_run(client: httpx.AsyncClient) -> None:
    task_id = await create(client)
    response = await client.get(f"/api/v1/tasks/{task_id}/latest_output")
    assert response.status_code == 200
    body = response.json()
    assert body["completion_time"] is None
    assert body["outputs"] == []


async def register(
    client: httpx.AsyncClient, agent_id: UUID, url: str = "http://127.0.0.1:9"
) -> None:
    response = await client.post(
        "/api/v1/agents/register", json={"agent_id": str(agent_id), "url": url}
    )
    assert response.status_code == 200, response.text


async def test_latest_output_waits_for_every_expected_agent(
    client: httpx.AsyncClient, clock: Any
) -> None:
    first, second = sorted([uuid4(), uuid4()], key=str)
    await register(client, first)
    await register(client, second)
    task_id = await create(client)
    anchor = clock.now
    slot_1, slot_2 = anchor + timedelta(seconds=10), anchor + timedelta(seconds=20)

    def times(slot: Any, took: float) -> dict[str, str]:
        return {
            "scheduled_at": slot.isoformat(),
            "started_at": slot.isoformat(),
            "finished_at": (slot + timedelta(seconds=took)).isoformat(),
        }

    clock.advance(seconds=21)
    assert (
        await report(client, task_id, second, stdout="two\n", **times(slot_1, 2))
    ).status_code == 200
    assert (
        await report(client, task_id, first, stdout="one\n", stderr="warn\n", **times(slot_1, 1))
    ).status_code == 200
    assert (
        await report(client, task_id, first, stdout="newer\n", **times(slot_2, 1))
    ).status_code == 200

    # slot_2 still waits for `second`; slot_1 is complete: its output is shown, sorted by agent.
    body = (await client.get(f"/api/v1/tasks/{task_id}/latest_output")).json()
    assert parse_time(body["completion_time"]) == slot_1 + timedelta(seconds=2)
    assert body["outputs"] == [
        {"agent_id": str(first), "stdout": "one\n", "stderr": "warn\n"},
        {"agent_id": str(second), "stdout": "two\n"},
    ]

    # Once the report grace has passed, slot_2 counts as complete without `second`.
    clock.advance(seconds=61)
    body = (await client.get(f"/api/v1/tasks/{task_id}/latest_output")).json()
    assert parse_time(body["completion_time"]) == slot_2 + timedelta(seconds=1)
    assert body["outputs"] == [{"agent_id": str(first), "stdout": "newer\n"}]


async def test_latest_output_omits_empty_streams(client: httpx.AsyncClient, clock: Any) -> None:
    agent_id = uuid4()
    await register(client, agent_id)
    task_id = await create(client)
    slot = clock.now + timedelta(seconds=10)
    clock.advance(seconds=11)
    await report(client, task_id, agent_id, scheduled_at=slot.isoformat())
    body = (await client.get(f"/api/v1/tasks/{task_id}/latest_output")).json()
    assert body["outputs"] == [{"agent_id": str(agent_id)}]


async def test_latest_output_looks_past_many_incomplete_runs(
    client: httpx.AsyncClient, clock: Any
) -> None:
    present, absent = sorted([uuid4(), uuid4()], key=str)
    await register(client, present)
    await register(client, absent)
    task_id = await create(client, every="every 1 seconds")
    anchor = clock.now
    clock.advance(seconds=200)
    # One complete run long ago, then more than a page of runs inside the report grace
    # (60 s), each still waiting for `absent`.
    old = anchor + timedelta(seconds=100)
    await report(client, task_id, present, stdout="old", scheduled_at=old.isoformat())
    await report(client, task_id, absent, stdout="old too", scheduled_at=old.isoformat())
    for k in range(141, 201):
        slot = anchor + timedelta(seconds=k)
        await report(client, task_id, present, stdout=str(k), scheduled_at=slot.isoformat())
    body = (await client.get(f"/api/v1/tasks/{task_id}/latest_output")).json()
    assert body["outputs"] == [
        {"agent_id": str(present), "stdout": "old"},
        {"agent_id": str(absent), "stdout": "old too"},
    ]


# --- POST /api/v1/tasks/{id}/complete ----------------------------------------------------------


async def test_complete_with_the_original_three_fields(
    client: httpx.AsyncClient, store: Store, clock: Any
) -> None:
    task_id = await create(client)
    agent_id = uuid4()  # never registered: callers of the original design may not register
    clock.advance(seconds=12)
    response = await report(client, task_id, agent_id, stdout="hello world\n", stderr="")
    assert response.status_code == 200
    assert response.json() == {"acknowledged": True, "duplicate": False}

    [execution] = store.executions(task_id)
    assert execution.agent_id == agent_id
    assert execution.stdout == "hello world\n"
    assert execution.scheduled_at == execution.finished_at == clock.now
    # Nobody else is expected: that single report is the latest output.
    body = (await client.get(f"/api/v1/tasks/{task_id}/latest_output")).json()
    assert body["outputs"] == [{"agent_id": str(agent_id), "stdout": "hello world\n"}]


async def test_complete_with_only_server_id(client: httpx.AsyncClient) -> None:
    task_id = await create(client)
    response = await report(client, task_id, uuid4())
    assert response.json() == {"acknowledged": True, "duplicate": False}


async def test_a_repeated_report_is_acknowledged_as_a_duplicate(
    client: httpx.AsyncClient, store: Store, clock: Any
) -> None:
    task_id = await create(client)
    agent_id = uuid4()
    full = {
        "stdout": "out",
        "stderr": "err",
        "scheduled_at": (clock.now + timedelta(seconds=10)).isoformat(),
        "started_at": (clock.now + timedelta(seconds=10, milliseconds=3)).isoformat(),
        "finished_at": (clock.now + timedelta(seconds=11)).isoformat(),
        "status": "failed",
        "exit_code": 3,
        "stdout_dropped": 10,
        "stderr_dropped": 0,
    }
    first = await report(client, task_id, agent_id, **full)
    second = await report(client, task_id, agent_id, **(full | {"stdout": "changed"}))
    assert first.json() == {"acknowledged": True, "duplicate": False}
    assert second.json() == {"acknowledged": True, "duplicate": True}
    [execution] = store.executions(task_id)
    assert (execution.stdout, execution.status.value, execution.exit_code) == ("out", "failed", 3)


async def test_complete_for_an_unknown_task_is_404(client: httpx.AsyncClient) -> None:
    assert_error(await report(client, uuid4(), uuid4(), stdout="x"), 404, "task_not_found")
    assert_error(
        await client.post("/api/v1/tasks/not-a-uuid/complete", json={"server_id": str(uuid4())}),
        404,
        "task_not_found",
    )


BAD_REPORTS: list[tuple[str, bytes, int, str | None]] = [
    ("no body", b"", 400, None),
    ("not JSON", b"server_id=1", 400, None),
    ("array", b"[]", 422, None),
    ("missing server_id", b'{"stdout": "x"}', 422, "server_id"),
    ("server_id not a UUID", b'{"server_id": "agent-1"}', 422, "server_id"),
    ("server_id a number", b'{"server_id": 7}', 422, "server_id"),
    ("stdout a number", b'{"server_id": "%s", "stdout": 5}', 422, "stdout"),
    ("bad time", b'{"server_id": "%s", "scheduled_at": "yesterday"}', 422, "scheduled_at"),
    (
        "naive time",
        b'{"server_id": "%s", "scheduled_at": "2026-01-01T00:00:00"}',
        422,
        "scheduled_at",
    ),
    ("bad status", b'{"server_id": "%s", "status": "great"}', 422, "status"),
    ("exit code a string", b'{"server_id": "%s", "exit_code": "0"}', 422, "exit_code"),
    (
        "exit code beyond int64",
        b'{"server_id": "%s", "exit_code": 99999999999999999999}',
        422,
        "exit_code",
    ),
    ("negative dropped", b'{"server_id": "%s", "stdout_dropped": -1}', 422, "stdout_dropped"),
    (
        "dropped beyond int64",
        b'{"server_id": "%s", "stderr_dropped": 18446744073709551616}',
        422,
        "stderr_dropped",
    ),
    ("exit code 2**63", b'{"server_id": "%s", "exit_code": 9223372036854775808}', 422, "exit_code"),
    ("attempt 2**63", b'{"server_id": "%s", "attempt": 9223372036854775808}', 422, "attempt"),
    ("dropped a float", b'{"server_id": "%s", "stderr_dropped": 1e400}', 422, "stderr_dropped"),
    (
        "year 0 after UTC",
        b'{"server_id": "%s", "finished_at": "0001-01-01T00:00+01:00"}',
        422,
        "finished_at",
    ),
    ("lone surrogate", b'{"server_id": "%s", "stderr": "\\udfff"}', 422, "stderr"),
    ("surrogate in a key", b'{"server_id": "%s", "\\ud800": 1}', 422, None),
]


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [case[1:] for case in BAD_REPORTS],
    ids=[case[0] for case in BAD_REPORTS],
)
async def test_complete_refuses_bad_reports_and_stores_nothing(
    client: httpx.AsyncClient, store: Store, body: bytes, status: int, field: str | None
) -> None:
    task_id = await create(client)
    if b"%s" in body:
        body = body % str(uuid4()).encode()
    response = await client.post(f"/api/v1/tasks/{task_id}/complete", content=body)
    error = assert_error(response, status)
    assert error["field"] == field
    assert store.executions(task_id) == []


# --- agents ------------------------------------------------------------------------------------


async def test_register_and_list_agents(client: httpx.AsyncClient, clock: Any) -> None:
    agent_id = uuid4()
    response = await client.post(
        "/api/v1/agents/register", json={"agent_id": str(agent_id), "url": "http://127.0.0.1:8001/"}
    )
    assert response.status_code == 200
    assert response.json() == {"agent_id": str(agent_id), "url": "http://127.0.0.1:8001"}
    first_seen = clock.now

    clock.advance(minutes=3)
    response = await client.post(
        "/api/v1/agents/register", json={"agent_id": str(agent_id), "url": "http://127.0.0.2:8002"}
    )
    assert response.json()["url"] == "http://127.0.0.2:8002"

    [agent] = (await client.get("/api/v1/agents")).json()["agents"]
    assert agent["id"] == str(agent_id)
    assert agent["url"] == "http://127.0.0.2:8002"
    assert parse_time(agent["registered_at"]) == first_seen
    assert parse_time(agent["last_seen_at"]) == clock.now


async def test_no_agents_yet(client: httpx.AsyncClient) -> None:
    assert (await client.get("/api/v1/agents")).json() == {"agents": []}


AGENT = "00000000-0000-0000-0000-000000000001"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"url": "http://127.0.0.1:1"}, "agent_id"),
        ({"agent_id": "x", "url": "http://127.0.0.1:1"}, "agent_id"),
        ({"agent_id": AGENT}, "url"),
        ({"agent_id": AGENT, "url": "ftp://host"}, "url"),
        ({"agent_id": AGENT, "url": 80}, "url"),
        ({"agent_id": AGENT, "url": "http://" + "a" * 5000}, "url"),
        # hosts no HTTP client can dial: stored, they would be retried forever
        ({"agent_id": AGENT, "url": "http://a..b:8081"}, "url"),
        ({"agent_id": AGENT, "url": "http://" + "a" * 64 + ".example:8081"}, "url"),
        ({"agent_id": AGENT, "url": "http://127.0.0.1:99999"}, "url"),
    ],
)
async def test_register_refuses_bad_bodies(
    client: httpx.AsyncClient, store: Store, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/api/v1/agents/register", json=body)
    error = assert_error(response, 422, "validation_error")
    assert error["field"] == field
    assert store.list_agents() == []


# --- nothing a client sends is a 500 -----------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = ["command", "frequency", "server_id", "stdout", "scheduled_at", "finished_at", "status"]
FIELDS += ["exit_code", "stdout_dropped", "agent_id", "url"]
PLAUSIBLE = ["every 1 seconds", "every 0 hours", str(uuid4()), "2026-01-01T00:00:00Z", "failed"]
PLAUSIBLE += ["http://127.0.0.1:1", "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"]
bodies = st.one_of(
    json_values.map(lambda value: json.dumps(value).encode()),
    st.dictionaries(
        st.sampled_from(FIELDS), st.one_of(json_values, st.sampled_from(PLAUSIBLE))
    ).map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=50),
)
PATHS = ["/api/v1/tasks/create", "/api/v1/agents/register", "COMPLETE", "/api/v1/tasks/%s/complete"]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=bodies, path=st.sampled_from(PATHS))
async def test_no_input_causes_a_server_error(
    client: httpx.AsyncClient, store: Store, body: bytes, path: str
) -> None:
    tasks = store.list_tasks()
    if tasks:
        task_id = tasks[0].id
    else:
        task_id = await create(client)
    if path == "COMPLETE":
        path = f"/api/v1/tasks/{task_id}/complete"
    elif "%s" in path:
        path = path % uuid4()
    response = await client.post(path, content=body)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert_error(response, response.status_code)


async def test_an_unexpected_failure_is_a_json_500_not_a_traceback(
    store: Store, tmp_path: Any
) -> None:
    broken = Store(tmp_path / "broken.sqlite")
    broken.close()  # every query now fails: a bug-like condition, not an input
    app = create_app(AsyncStore(broken))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/api/v1/agents")
    assert_error(response, 500, "internal_error")
    assert "Traceback" not in response.text


async def test_registration_wakes_the_dispatcher_and_creation_never_waits(
    store: Store, astore: AsyncStore
) -> None:
    from taskscheduler_server import Dispatcher

    class Recorder(Dispatcher):
        def __init__(self) -> None:
            super().__init__(astore)
            self.calls: list[UUID | None] = []

        def notify(self, agent_id: UUID | None = None) -> None:
            self.calls.append(agent_id)

    dispatcher = Recorder()  # never run: creating a task must not need it to be
    app = create_app(astore, dispatcher=dispatcher)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        agent_id = uuid4()
        await register(client, agent_id)
        await create(client)
    assert dispatcher.calls == [agent_id, None]
