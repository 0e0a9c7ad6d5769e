"""The server's limits (body, command, output per stream), its JSON-only answers, and its
OpenAPI document: served without a token, in sync with the routes of both apps."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import attrs
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.routing import Route

from processes import TSCHED, ServerService, free_port
from strategies import cron_expressions, cron_texts, frequencies, frequency_texts
from taskscheduler_agent import create_app as create_agent_app
from taskscheduler_core import (
    MAX_COMMAND_LENGTH,
    AgentIdentity,
    CreateTask,
    ExecutionReport,
    FrequencyError,
    RegisterAgent,
    ScheduleTask,
    agent_openapi,
    keep_tail,
    parse_frequency,
    server_openapi,
)
from taskscheduler_core.openapi import model_schema
from taskscheduler_server import AsyncStore, ServerConfig, Store, create_app


def routes_of(app: Any) -> set[tuple[str, str]]:
    """Every ``(path, method)`` the Starlette ``app`` routes (HEAD is implied by GET)."""
    pairs = set()
    for route in app.routes:
        assert isinstance(route, Route)
        for method in route.methods or ():
            if method != "HEAD":
                pairs.add((route.path, method.lower()))
    return pairs


def documented(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(path, method) for path, item in document["paths"].items() for method in item}


def refs_in(value: Any) -> set[str]:
    if isinstance(value, dict):
        found = {value["$ref"]} if "$ref" in value else set()
        return found.union(*(refs_in(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(refs_in(item) for item in value))
    return set()


def limited_app(store: Store, **limits: Any) -> httpx.AsyncClient:
    # The app reads only its limits from the config; the database is the one of ``store``.
    config = ServerConfig(database="unused.sqlite3", **limits)
    app = create_app(AsyncStore(store), config=config)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.fixture
async def small(store: Store) -> AsyncIterator[httpx.AsyncClient]:
    async with limited_app(
        store, max_body_bytes=4096, max_command_length=20, max_output_bytes=10
    ) as client:
        yield client


def assert_json_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"code", "message", "field"}
    assert error["code"] == code
    return dict(error)


# --- the document --------------------------------------------------------------------------


def test_every_server_route_is_documented_and_nothing_else(store: Store) -> None:
    app = create_app(AsyncStore(store))
    assert routes_of(app) == documented(server_openapi())


def test_every_agent_route_is_documented_and_nothing_else(tmp_path: Path) -> None:
    # The agent's app is only read for its routes here; nothing is scheduled.
    app = create_agent_app(engine=None, agent_id=uuid4())  # type: ignore[arg-type]
    assert routes_of(app) == documented(agent_openapi())


@pytest.mark.parametrize("document", [server_openapi(), agent_openapi()])
def test_the_document_is_openapi_3_1_with_errors_and_bearer_auth(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    components = document["components"]
    assert components["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": components["securitySchemes"]["bearerAuth"]["description"],
    }
    schemas = components["schemas"]
    assert set(schemas["Error"]["properties"]["error"]["required"]) == {"code", "message", "field"}
    # Every reference resolves; every operation documents its errors and its security.
    assert {ref.removeprefix("#/components/schemas/") for ref in refs_in(document)} <= set(schemas)
    for path, item in document["paths"].items():
        for method, operation in item.items():
            codes = set(operation["responses"])
            assert "500" in codes, (path, method)
            assert "security" in operation, (path, method)
            if operation["security"]:
                assert {"401", "403"} <= codes, (path, method)
            if "requestBody" in operation:
                assert {"400", "413", "422"} <= codes, (path, method)
            for status, response in operation["responses"].items():
                if status == "204":  # no content (a purge)
                    assert "content" not in response
                elif (path, status) == ("/metrics", "200"):  # Prometheus' text format
                    assert set(response["content"]) == {"text/plain"}
                else:
                    assert set(response["content"]) == {"application/json"}
            if (
                path not in ("/healthz", "/api/v1/openapi.json")
                and "agent" not in document["info"]["title"]
            ):
                # Anything that may touch the server's database may find it unreachable.
                assert "503" in codes, (path, method)
    json.dumps(document)  # plain data


def test_public_and_protected_operations() -> None:
    paths = server_openapi()["paths"]
    assert paths["/healthz"]["get"]["security"] == []
    assert paths["/api/v1/openapi.json"]["get"]["security"] == []
    assert paths["/api/v1/tasks/create"]["post"]["security"] == [{"bearerAuth": ["admin"]}]
    assert {"bearerAuth": ["read"]} in paths["/api/v1/agents"]["get"]["security"]
    complete = paths["/api/v1/tasks/{task_id}/complete"]["post"]
    assert complete["security"] == [{"bearerAuth": ["agent"]}, {"bearerAuth": ["admin"]}]


@pytest.mark.parametrize(
    "model", [CreateTask, ExecutionReport, RegisterAgent, ScheduleTask, AgentIdentity]
)
def test_body_schemas_are_derived_from_the_models(model: type[Any]) -> None:
    schema = model_schema(model)
    fields = attrs.fields(model)
    assert set(schema["properties"]) == {field.name for field in fields}
    assert set(schema["required"]) == {f.name for f in fields if f.default is attrs.NOTHING}


async def test_the_document_is_served_without_a_token_as_json(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == json.loads(json.dumps(server_openapi()))


async def test_the_agent_serves_its_document_without_a_token_as_json() -> None:
    app = create_agent_app(engine=None, agent_id=uuid4())  # type: ignore[arg-type]
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
        response = await client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == json.loads(json.dumps(agent_openapi()))


FREQUENCY, CRON = server_openapi()["components"]["schemas"]["CreateTask"]["properties"][
    "frequency"
]["anyOf"]


@settings(max_examples=200)
@given(st.from_regex(FREQUENCY["pattern"]))
def test_a_frequency_matching_the_documented_pattern_parses_unless_too_long(text: str) -> None:
    try:
        parse_frequency(text)
    except FrequencyError as caught:
        message = str(caught)
    else:
        return
    assert "366 days" in message or len(text) > FREQUENCY["maxLength"], text


@given(st.data())
def test_every_frequency_text_matches_the_documented_pattern(data: st.DataObject) -> None:
    frequency = data.draw(frequencies())
    assert re.search(FREQUENCY["pattern"], str(frequency))
    assert re.search(FREQUENCY["pattern"], data.draw(frequency_texts(frequency)))
    assert not re.search(CRON["pattern"], str(frequency))


@given(st.data())
def test_every_cron_text_matches_the_documented_pattern(data: st.DataObject) -> None:
    cron = data.draw(cron_expressions())
    for text in (str(cron), data.draw(cron_texts(cron))):
        assert re.search(CRON["pattern"], text), text
        assert len(text) <= CRON["maxLength"]
        assert not re.search(FREQUENCY["pattern"], text)


# --- limits --------------------------------------------------------------------------------


def test_default_limits() -> None:
    config = ServerConfig(database="x.sqlite3")
    assert config.max_body_bytes == 1024 * 1024
    assert config.max_command_length == MAX_COMMAND_LENGTH
    assert config.max_output_bytes == 1024 * 1024


@pytest.mark.parametrize(
    "limits",
    [{"max_command_length": 0}, {"max_command_length": MAX_COMMAND_LENGTH + 1}],
)
def test_limits_are_checked(limits: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="max_command_length"):
        ServerConfig(database="x.sqlite3", **limits)
    with pytest.raises(ValueError, match="max_output_bytes"):
        ServerConfig(database="x.sqlite3", max_output_bytes=-1)


@pytest.mark.parametrize("url", ["http://", "https:///path", "http://[::1", "http://:80"])
async def test_an_agent_url_must_name_a_host(client: httpx.AsyncClient, url: str) -> None:
    # Found by the fuzzer: "http://" was stored as "http:" and dialled forever.
    body = {"agent_id": str(uuid4()), "url": url}
    response = await client.post("/api/v1/agents/register", json=body)
    assert assert_json_error(response, 422, "validation_error")["field"] == "url"


async def test_a_body_over_the_configured_limit_is_413(small: httpx.AsyncClient) -> None:
    body = {"command": "echo hi", "frequency": "every 1 seconds", "pad": "x" * 5000}
    response = await small.post("/api/v1/tasks/create", json=body)
    assert_json_error(response, 413, "body_too_large")


async def test_a_command_over_the_configured_length_is_422(small: httpx.AsyncClient) -> None:
    body = {"command": "echo " + "x" * 16, "frequency": "every 1 seconds"}
    response = await small.post("/api/v1/tasks/create", json=body)
    assert assert_json_error(response, 422, "validation_error")["field"] == "command"
    body["command"] = "echo " + "x" * 15  # exactly 20
    assert (await small.post("/api/v1/tasks/create", json=body)).status_code == 201


async def test_reported_output_is_cut_to_its_tail_and_the_cut_counted(
    small: httpx.AsyncClient, store: Store
) -> None:
    agent_id = uuid4()
    registered = await small.post(
        "/api/v1/agents/register", json={"agent_id": str(agent_id), "url": "http://127.0.0.1:9"}
    )
    assert registered.status_code == 200
    created = await small.post(
        "/api/v1/tasks/create", json={"command": "echo hi", "frequency": "every 1 seconds"}
    )
    task_id = UUID(created.json()["command_id"])
    now = datetime.now(UTC).isoformat()
    report = {
        "server_id": str(agent_id),
        "stdout": "0123456789abcdef",
        "stderr": "é" * 6,  # 12 bytes; a cut between the bytes of an é drops it whole
        "stdout_dropped": 100,
        "scheduled_at": now,
        "status": "succeeded",
        "exit_code": 0,
    }
    response = await small.post(f"/api/v1/tasks/{task_id}/complete", json=report)
    assert response.status_code == 200, response.text
    [execution] = store.executions(task_id)
    assert (execution.stdout, execution.stdout_dropped) == ("6789abcdef", 106)
    assert (execution.stderr, execution.stderr_dropped) == ("é" * 5, 2)


async def test_a_report_may_exceed_the_body_limit_by_its_streams(store: Store) -> None:
    # Refusing it would lose the execution for good (a 413 is not retried): its streams are cut.
    async with limited_app(store, max_body_bytes=1000, max_output_bytes=500) as client:
        agent_id = uuid4()
        await client.post(
            "/api/v1/agents/register", json={"agent_id": str(agent_id), "url": "http://a:9"}
        )
        created = await client.post(
            "/api/v1/tasks/create", json={"command": "yes", "frequency": "every 1 seconds"}
        )
        task_id = UUID(created.json()["command_id"])
        report = {"server_id": str(agent_id), "stdout": "y" * 3000, "stderr": "\x01" * 600}
        response = await client.post(f"/api/v1/tasks/{task_id}/complete", json=report)
        assert response.status_code == 200, response.text
        [execution] = store.executions(task_id)
        assert (len(execution.stdout), execution.stdout_dropped) == (500, 2500)
        assert (len(execution.stderr), execution.stderr_dropped) == (500, 100)
        # 1000 + 2 × 6 × 500 bytes is the most a report may be.
        report["stdout"] = "y" * 7000
        response = await client.post(f"/api/v1/tasks/{task_id}/complete", json=report)
        assert_json_error(response, 413, "body_too_large")
        response = await client.post(
            "/api/v1/tasks/create", json={"command": "y" * 1000, "frequency": "every 1 seconds"}
        )
        assert_json_error(response, 413, "body_too_large")


def test_the_limits_are_flags_and_environment_variables_of_tsched_server(tmp_path: Path) -> None:
    server = ServerService(
        "server",
        port=free_port(),
        data_dir=tmp_path / "data",
        logs=tmp_path,
        flags=["--max-command-length", "10", "--max-body-bytes", "2000"],
    )
    server.start()
    try:
        url = f"{server.url}/api/v1/tasks/create"
        long = httpx.post(url, json={"command": "x" * 11, "frequency": "every 1 hours"})
        assert assert_json_error(long, 422, "validation_error")["field"] == "command"
        big = httpx.post(url, json={"command": "x", "frequency": "every 1 hours", "p": "x" * 2000})
        assert_json_error(big, 413, "body_too_large")
    finally:
        server.stop()
    refused = subprocess.run(
        [TSCHED, "server", "--max-command-length", "0"],
        env={**os.environ, "TSCHED_MAX_OUTPUT_BYTES": "-1"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode == 2
    assert "--max-" in refused.stderr


@given(text=st.text(max_size=40), limit=st.integers(min_value=0, max_value=50))
def test_keep_tail_keeps_a_suffix_within_the_limit(text: str, limit: int) -> None:
    kept, dropped = keep_tail(text, limit)
    assert text.endswith(kept)
    assert len(kept.encode()) <= limit
    assert dropped == len(text.encode()) - len(kept.encode())
    assert dropped < 4 or len(kept.encode()) > limit - 4  # at most one character lost to a cut


# --- nothing but JSON ----------------------------------------------------------------------

HTML = "<script>alert(1)</script><html>"


async def test_every_answer_is_json_even_for_html_output(client: httpx.AsyncClient) -> None:
    agent_id = uuid4()
    created = await client.post(
        "/api/v1/tasks/create", json={"command": f"echo '{HTML}'", "frequency": "every 1 hours"}
    )
    task_id = created.json()["command_id"]
    await client.post(
        "/api/v1/agents/register", json={"agent_id": str(agent_id), "url": "http://127.0.0.1:9"}
    )
    answers = [
        created,
        await client.post(
            f"/api/v1/tasks/{task_id}/complete",
            json={"server_id": str(agent_id), "stdout": HTML, "stderr": HTML},
        ),
        await client.get(f"/api/v1/tasks/{task_id}/latest_output"),
        await client.get(f"/api/v1/tasks/{uuid4()}/latest_output"),
        await client.get("/api/v1/tasks/<b>x</b>/latest_output"),
        await client.post(f"/api/v1/agents/{agent_id}/heartbeat", json={}),
        await client.get("/api/v1/agents"),
        await client.get("/healthz"),
        await client.get("/api/v1/openapi.json"),
        await client.get("/no/such/<page>"),
        await client.put("/api/v1/tasks/create", content=HTML),
        await client.post("/api/v1/tasks/create", content=HTML),
        await client.post("/api/v1/tasks/create", content=b"\xff" * 10),
    ]
    for response in answers:
        assert response.headers["content-type"] == "application/json", response.request.url
        response.json()
    latest = answers[2].json()
    assert latest["outputs"][0]["stdout"] == HTML  # as data, in a JSON string


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(command=st.text(max_size=80), frequency=st.text(max_size=40))
async def test_arbitrary_strings_at_create_are_201_or_a_json_422(
    client: httpx.AsyncClient, command: str, frequency: str
) -> None:
    response = await client.post(
        "/api/v1/tasks/create", json={"command": command, "frequency": frequency}
    )
    assert response.headers["content-type"] == "application/json"
    if response.status_code == 201:
        assert response.json()["command"] == command
    else:
        assert response.status_code == 422, response.text
        assert response.json()["error"]["field"] in {"command", "frequency", None}
