"""Text that a database cannot take, or an agent cannot be dialled with, at every door of the API.

PostgreSQL refuses a NUL in a text column (psycopg2 raises before the query is sent), which made
some requests a 500 there and not on SQLite. Every string a caller sends is therefore either
refused with 422 naming its field, on both databases, or stored and read back unchanged (outputs
are bytes, BYTEA on PostgreSQL: a NUL is fine there).
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import httpx
import pytest

pytestmark = pytest.mark.databases("sqlite", "postgresql")

AGENT = uuid4()
TASK = {"command": "echo", "frequency": "every 30 seconds"}


async def created_task(client: httpx.AsyncClient) -> str:
    response = await client.post("/api/v1/tasks", json=TASK)
    assert response.status_code == 201, response.text
    task_id: str = response.json()["command_id"]
    return task_id


def refused(response: httpx.Response, field: str) -> str:
    """The message of a 422 whose field is ``field``."""
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == ("validation_error", field), error
    message: str = error["message"]
    return message


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**TASK, "command": "echo \x00"}, "command"),
        ({**TASK, "name": "a\x00b"}, "name"),
        ({**TASK, "name": "a\x01b"}, "name"),
        ({**TASK, "frequency": "every 30 seconds\x00"}, "frequency"),
        ({**TASK, "frequency": "cron * * * * *\x00"}, "frequency"),
        ({**TASK, "timezone": "UTC\x00"}, "timezone"),
        ({**TASK, "env": {"A\x00": "x"}}, "env"),
        ({**TASK, "env": {"A": "x\x00"}}, "env"),
        ({**TASK, "targets": {"labels": {"role": "web\x00"}}}, "targets.labels"),
        ({**TASK, "targets": {"labels": {"role\x00": "web"}}}, "targets.labels"),
    ],
)
async def test_a_task_with_a_nul_in_any_text_is_refused_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, Any], field: str
) -> None:
    refused(await client.post("/api/v1/tasks", json=body), field)
    refused(await client.post("/api/v1/tasks/create", json=body), field)
    listing = await client.get("/api/v1/tasks", params={"state": "all"})
    assert listing.json()["tasks"] == []  # nothing was created


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"command": "echo \x00"}, "command"),
        ({"name": "x\x00"}, "name"),
        ({"frequency": "every 1 minute\x00"}, "frequency"),
        ({"env": {"A": "\x00"}}, "env"),
        ({"targets": {"labels": {"a": "\x00"}}}, "targets.labels"),
    ],
)
async def test_an_edit_with_a_nul_is_refused_naming_the_field(
    client: httpx.AsyncClient, change: dict[str, Any], field: str
) -> None:
    task_id = await created_task(client)
    refused(await client.patch(f"/api/v1/tasks/{task_id}", json=change), field)
    task = (await client.get(f"/api/v1/tasks/{task_id}")).json()
    assert (task["command"], task["name"], task["env"]) == ("echo", None, {})


@pytest.mark.parametrize(
    ("url", "labels", "field"),
    [
        ("http://x\x00y:1", {}, "url"),
        ("http://127.0.0.1:1/\x00", {}, "url"),
        ("http://127.0.0.1:1/\x01", {}, "url"),  # no HTTP client dials it
        ("http://127.0.0.1:1/a\nb", {}, "url"),
        ("http://127.0.0.1:1", {"role\x00": "web"}, "labels"),
        ("http://127.0.0.1:1", {"role": "web\x00"}, "labels"),
    ],
)
async def test_an_agent_with_a_control_character_in_its_url_or_labels_is_refused(
    client: httpx.AsyncClient, url: str, labels: dict[str, str], field: str
) -> None:
    body = {"agent_id": str(AGENT), "url": url, "labels": labels}
    message = refused(await client.post("/api/v1/agents/register", json=body), field)
    if field == "url":
        assert message == "must not contain control characters"
    assert (await client.get("/api/v1/agents")).json()["agents"] == []


@pytest.mark.parametrize(
    ("path", "field"),
    [
        ("/api/v1/tasks?name=a%00", "name"),
        ("/api/v1/tasks?name=%00", "name"),
        ("/api/v1/tasks?name=a%01b", "name"),  # no name holds one: it could match nothing
        ("/api/v1/tasks?state=active%00", "state"),
        ("/api/v1/tasks?agent=%00", "agent"),
        ("/api/v1/tasks?limit=1%00", "limit"),
        ("/api/v1/tasks?cursor=%00", "cursor"),
        ("/api/v1/agents?label=role%3Dweb%00", "label"),
        ("/api/v1/agents?label=role%00%3Dweb", "label"),
        ("/api/v1/tasks/{task}/executions?agent=%00", "agent"),
        ("/api/v1/tasks/{task}/executions?status=failed%00", "status"),
        ("/api/v1/tasks/{task}/executions?since=%00", "since"),
        ("/api/v1/tasks/{task}/executions?until=2026-01-01T00:00:00Z%00", "until"),
        ("/api/v1/tasks/{task}/executions?cursor=%00", "cursor"),
        ("/api/v1/tasks/{task}/runs?status=complete%00", "status"),
        ("/api/v1/tasks/{task}/runs?cursor=%00", "cursor"),
    ],
)
async def test_a_query_parameter_with_a_nul_is_refused_naming_it(
    client: httpx.AsyncClient, path: str, field: str
) -> None:
    task_id = await created_task(client)
    refused(await client.get(path.format(task=task_id)), field)


async def test_a_nul_in_a_path_is_not_an_id(client: httpx.AsyncClient) -> None:
    for response in [
        await client.get("/api/v1/tasks/%00"),
        await client.get("/api/v1/agents/%00"),
        await client.post("/api/v1/agents/%00/heartbeat", json={}),
        await client.delete("/api/v1/tasks/%00"),
    ]:
        assert 400 <= response.status_code < 500, response.text


async def test_a_report_with_a_nul_in_its_status_is_refused(client: httpx.AsyncClient) -> None:
    task_id = await created_task(client)
    report = {"server_id": str(AGENT), "status": "succeeded\x00"}
    refused(await client.post(f"/api/v1/tasks/{task_id}/complete", json=report), "status")
    batch = {"executions": [{**report, "task_id": task_id}]}
    answer = await client.post("/api/v1/executions", json=batch)
    assert answer.status_code == 200, answer.text
    [result] = answer.json()["results"]
    assert result["error"]["field"] == "executions.0.status"


async def test_other_control_characters_and_nul_outputs_are_stored_as_sent(
    client: httpx.AsyncClient,
) -> None:
    """What a database can hold is not refused: a command or an environment value may hold a
    control character (a shell takes them), and an output any character (bytes)."""
    created = await client.post(
        "/api/v1/tasks",
        json={**TASK, "command": "printf 'a\x01b\x1b[0m'", "env": {"SEP": "\x1f\t\x7f"}},
    )
    assert created.status_code == 201, created.text
    task_id = created.json()["command_id"]
    task = (await client.get(f"/api/v1/tasks/{task_id}")).json()
    assert (task["command"], task["env"]) == ("printf 'a\x01b\x1b[0m'", {"SEP": "\x1f\t\x7f"})

    report = {"server_id": str(AGENT), "stdout": "a\x00b\x01", "stderr": "\x00"}
    answer = await client.post(f"/api/v1/tasks/{task_id}/complete", json=report)
    assert answer.status_code == 200, answer.text
    [execution] = (await client.get(f"/api/v1/tasks/{task_id}/executions")).json()["executions"]
    assert (execution["stdout"], execution["stderr"]) == ("a\x00b\x01", "\x00")
