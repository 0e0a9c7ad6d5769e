"""The lifecycle and history endpoints in-process (httpx.ASGITransport over a real SQLite store,
the clock moved by hand): create with options, list with filters and cursors, get, edit,
delete and purge, pause and resume, manual runs, runs and executions, the agents view, and
every bad query value or body refused with 4xx naming the field."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote
from uuid import UUID, uuid4

import httpx
import pytest

from taskscheduler_core import AgentStatus, parse_time
from taskscheduler_server import AsyncStore, Dispatcher, Store, create_app

pytestmark = pytest.mark.databases("sqlite", "postgresql")

TASKS = "/api/v1/tasks"


def assert_error(response: httpx.Response, status: int, code: str, field: str | None) -> str:
    """The response is our JSON error with ``status``, ``code`` and ``field``; its message."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert (error["code"], error["field"]) == (code, field), error
    assert error["message"]
    return str(error["message"])


async def create(client: httpx.AsyncClient, **fields: Any) -> dict[str, Any]:
    body = {"command": "echo hi", "frequency": "every 10 seconds"} | fields
    response = await client.post(TASKS, json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def register(client: httpx.AsyncClient, agent_id: UUID | None = None, **labels: str) -> UUID:
    agent_id = agent_id or uuid4()
    response = await client.post(
        "/api/v1/agents/register",
        json={"agent_id": str(agent_id), "url": "http://127.0.0.1:9", "labels": labels},
    )
    assert response.status_code == 200, response.text
    return agent_id


async def report(
    client: httpx.AsyncClient, task_id: str, agent_id: UUID, slot: datetime, **fields: Any
) -> None:
    body = {
        "server_id": str(agent_id),
        "scheduled_at": slot.isoformat(),
        "started_at": slot.isoformat(),
        "finished_at": (slot + timedelta(seconds=1)).isoformat(),
        "status": "succeeded",
        "exit_code": 0,
    } | fields
    response = await client.post(f"{TASKS}/{task_id}/complete", json=body)
    assert response.status_code == 200, response.text


async def walk(client: httpx.AsyncClient, path: str, key: str, **params: Any) -> list[Any]:
    """Every item of a paged listing, following ``next_cursor`` (bounded)."""
    items: list[Any] = []
    cursor = None
    for _ in range(100):
        query = params | ({"cursor": cursor} if cursor else {})
        response = await client.get(path, params=query)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page[key]) <= int(params.get("limit", 1000))
        items += page[key]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError("the cursor walk does not end")


# --- create with options -----------------------------------------------------------------------


async def test_create_takes_every_option_and_answers_the_whole_task(
    client: httpx.AsyncClient, clock: Any
) -> None:
    agent = await register(client)
    body = {
        "command": "backup.sh",
        "frequency": "30 2 * * 1-5",
        "name": "Nightly backup",
        "timezone": "Europe/Paris",
        "timeout": 600,
        "overlap": "replace",
        "starting_deadline": 30.5,
        "retries": 2,
        "retry_delay": 5,
        "env": {"TARGET": "/srv"},
        "max_output_bytes": 4096,
        "targets": {"agents": [str(agent)]},
    }
    response = await client.post(f"{TASKS}/create", json=body)
    assert response.status_code == 201, response.text
    task = response.json()
    assert task["command_id"] == task["id"]
    for name, value in body.items():
        if name != "targets":
            assert task[name] == value, name
    assert task["targets"] == {"agents": [str(agent)], "labels": None}
    assert (task["state"], task["paused"], task["deleted_at"]) == ("active", False, None)
    assert parse_time(task["updated_at"]) == parse_time(task["created_at"]) == clock.now
    # the same through POST /api/v1/tasks, with the defaults
    plain = await create(client)
    assert plain["targets"] == {"agents": None, "labels": None}
    assert (plain["timezone"], plain["overlap"], plain["retries"], plain["env"]) == (
        "UTC",
        "skip",
        0,
        {},
    )
    assert (await client.get(f"{TASKS}/{task['id']}")).json() == {
        key: value for key, value in task.items() if key != "command_id"
    }


BAD_OPTIONS: list[tuple[str, Any, str]] = [
    ("timeout", -1, "timeout"),
    ("timeout", "10", "timeout"),
    ("overlap", "sometimes", "overlap"),
    ("retries", 11, "retries"),
    ("retry_delay", 0, "retry_delay"),
    ("env", {"TSCHED_AGENT_ID": "x"}, "env"),
    ("env", {"A": 1}, "env.A"),
    ("targets", {"agents": [], "labels": None}, "targets.agents"),
    ("targets", {"agents": [str(uuid4())], "labels": {"a": "b"}}, "targets"),
    ("targets", {"labels": {"bad key!": "x"}}, "targets.labels"),
    ("targets", {"agents": ["not-a-uuid"]}, "targets.agents.0"),
    ("timezone", "Mars/Olympus", "timezone"),
    ("frequency", "61 * * * *", "frequency"),
    ("frequency", "* * * * * *", "frequency"),
    ("name", "", "name"),
    ("name", "x" * 201, "name"),
    ("max_output_bytes", 0, "max_output_bytes"),
    ("starting_deadline", "soon", "starting_deadline"),
    ("paused", True, "paused"),  # not a create field: pause it with POST …/pause
]


@pytest.mark.parametrize(("name", "value", "field"), BAD_OPTIONS)
async def test_create_refuses_a_bad_option_naming_it(
    client: httpx.AsyncClient, store: Store, name: str, value: Any, field: str
) -> None:
    body = {"command": "true", "frequency": "every 1 hours", name: value}
    response = await client.post(TASKS, json=body)
    assert_error(response, 422, "validation_error", field)
    assert store.list_tasks() == []


# --- GET /api/v1/tasks -------------------------------------------------------------------------


async def test_list_filters_by_state_name_and_agent(client: httpx.AsyncClient, clock: Any) -> None:
    web = await register(client, role="web")
    db = await register(client, role="db")
    summer = await create(client, name="Été report")
    clock.advance(seconds=1)
    paused = await create(client, name="paused one", targets={"labels": {"role": "web"}})
    clock.advance(seconds=1)
    deleted = await create(client, name="gone", targets={"agents": [str(db)]})
    clock.advance(seconds=1)
    unnamed = await create(client)
    assert (await client.post(f"{TASKS}/{paused['id']}/pause")).status_code == 200
    assert (await client.delete(f"{TASKS}/{deleted['id']}")).status_code == 200

    async def ids(**params: str) -> list[str]:
        response = await client.get(TASKS, params=params)
        assert response.status_code == 200, response.text
        assert response.json()["next_cursor"] is None
        return [task["id"] for task in response.json()["tasks"]]

    everything = [summer["id"], paused["id"], deleted["id"], unnamed["id"]]
    assert await ids() == [summer["id"], paused["id"], unnamed["id"]]
    assert await ids(state="all") == everything
    assert await ids(state="active") == [summer["id"], unnamed["id"]]
    assert await ids(state="paused") == [paused["id"]]
    assert await ids(state="deleted") == [deleted["id"]]
    # any letter case, beyond ASCII too; tasks without a name never match
    assert await ids(name="ÉTÉ") == [summer["id"]]
    assert await ids(name="e", state="all") == [summer["id"], paused["id"], deleted["id"]]
    assert await ids(name="%") == []  # no wildcards: the text as it is
    # assigned to an agent: targets decide (and a deleted task is assigned to nobody)
    assert await ids(agent=str(web)) == [summer["id"], paused["id"], unnamed["id"]]
    assert await ids(agent=str(db), state="all") == [summer["id"], unnamed["id"]]
    assert await ids(agent=str(uuid4())) == []
    listed = (await client.get(TASKS, params={"state": "paused"})).json()["tasks"][0]
    assert (listed["state"], listed["paused"]) == ("paused", True)


async def test_a_cursor_walk_returns_every_task_exactly_once_in_order(
    client: httpx.AsyncClient, clock: Any
) -> None:
    created = []
    for n in range(23):
        if n % 3 == 0:
            clock.advance(seconds=1)  # the others share a created_at: the id breaks the tie
        created.append(await create(client, name=f"task {n}"))
    expected = sorted(created, key=lambda t: (parse_time(t["created_at"]), UUID(t["id"])))

    for limit in (1, 5, 7, 23, 100):
        walked = await walk(client, TASKS, "tasks", limit=limit)
        assert [t["id"] for t in walked] == [t["id"] for t in expected], limit
    # filters hold on every page
    walked = await walk(client, TASKS, "tasks", limit=2, name="task 1")
    assert [t["id"] for t in walked] == [t["id"] for t in expected if "task 1" in t["name"]]
    assert len(walked) == 11
    # a page is at most the default of 100
    page = (await client.get(TASKS)).json()
    assert (len(page["tasks"]), page["next_cursor"]) == (23, None)


def cursor(*key: object) -> str:
    """A well-formed cursor carrying ``key`` (to test the values in it)."""
    text = json.dumps(list(key), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(text).decode("ascii").rstrip("=")


BAD_QUERIES: list[tuple[str, str, str]] = [
    (TASKS, "limit=0", "limit"),
    (TASKS, "limit=1001", "limit"),
    (TASKS, "limit=ten", "limit"),
    (TASKS, "limit=-1", "limit"),
    (TASKS, "limit=%205", "limit"),
    (TASKS, "limit=1&limit=2", "limit"),
    (TASKS, "state=gone", "state"),
    (TASKS, "state=", "state"),
    (TASKS, "agent=web-1", "agent"),
    (TASKS, "name=", "name"),
    (TASKS, "name=" + "x" * 201, "name"),
    (TASKS, "cursor=garbage", "cursor"),
    (TASKS, "cursor=WyJydW5zIiwxXQ", "cursor"),  # a runs cursor
    (TASKS, "cursor=WyJ0YXNrcyIsMV0", "cursor"),  # a tasks cursor without its id
    (TASKS, "cursor=" + "A" * 2000, "cursor"),
    ("RUNS", "status=great", "status"),
    ("RUNS", "limit=0", "limit"),
    ("RUNS", "cursor=WyJ0YXNrcyIsMCwieCJd", "cursor"),
    ("RUNS", "cursor=WyJydW5zIiwieCJd", "cursor"),  # ["runs","x"]
    ("EXECUTIONS", "agent=x", "agent"),
    ("EXECUTIONS", "status=running", "status"),
    ("EXECUTIONS", "since=yesterday", "since"),
    ("EXECUTIONS", "until=2026-01-01T00:00:00", "until"),  # no offset
    ("EXECUTIONS", "since=0001-01-01T00:00:00%2B01:00", "since"),
    ("EXECUTIONS", "limit=1e3", "limit"),
    ("EXECUTIONS", "cursor=WyJleGVjdXRpb25zIiwxLCJ4IiwxXQ", "cursor"),  # agent "x"
    # attempt 2**64: beyond what SQLite compares
    ("EXECUTIONS", "cursor=" + cursor("executions", 1, "0" * 32, 2**64), "cursor"),
    ("/api/v1/agents", "label=role", "label"),
    ("/api/v1/agents", "label=role=web&label=role=db", "label"),
    ("/api/v1/agents", "label=bad%20key=x", "label"),
    ("DELETE", "purge=yes", "purge"),
]


@pytest.mark.parametrize(("path", "query", "field"), BAD_QUERIES)
async def test_a_bad_query_value_is_422_naming_the_parameter(
    client: httpx.AsyncClient, store: Store, path: str, query: str, field: str
) -> None:
    task = await create(client)
    method = "GET"
    if path == "RUNS":
        path = f"{TASKS}/{task['id']}/runs"
    elif path == "EXECUTIONS":
        path = f"{TASKS}/{task['id']}/executions"
    elif path == "DELETE":
        method, path = "DELETE", f"{TASKS}/{task['id']}"
    response = await client.request(method, f"{path}?{query}")
    assert_error(response, 422, "validation_error", field)
    [stored] = store.list_tasks()
    assert stored.deleted_at is None  # a refused delete deletes nothing


# --- GET / PATCH /api/v1/tasks/{id} -------------------------------------------------------------


async def test_get_a_task_and_unknown_ids(client: httpx.AsyncClient) -> None:
    task = await create(client, name="one")
    got = (await client.get(f"{TASKS}/{task['id']}")).json()
    assert got["name"] == "one"
    assert "command_id" not in got
    assert_error(await client.get(f"{TASKS}/{uuid4()}"), 404, "task_not_found", "task_id")
    assert_error(await client.get(f"{TASKS}/nope"), 404, "task_not_found", "task_id")


async def test_edit_changes_the_task_and_pushes_the_spec_again(
    client: httpx.AsyncClient, store: Store, clock: Any
) -> None:
    agent = await register(client)
    task = await create(client, timeout=5)
    [pending] = store.undelivered(agent)
    assert store.mark_delivered(pending, clock.now)
    created_at = clock.now

    clock.advance(minutes=1)
    response = await client.patch(
        f"{TASKS}/{task['id']}", json={"command": "echo edited", "timeout": None, "retries": 3}
    )
    assert response.status_code == 200, response.text
    edited = response.json()
    assert (edited["command"], edited["timeout"], edited["retries"]) == ("echo edited", None, 3)
    # the same schedule: the anchor stays, so no slot moves
    assert parse_time(edited["anchor"]) == created_at
    assert parse_time(edited["updated_at"]) == clock.now
    [again] = store.undelivered(agent)
    assert again.task.command == "echo edited"
    assert again.revision == pending.revision + 1
    assert store.mark_delivered(again, clock.now)

    # a new frequency (or time zone) re-anchors at the edit: nothing fires retroactively
    clock.advance(minutes=1)
    edited = (await client.patch(f"{TASKS}/{task['id']}", json={"frequency": "@hourly"})).json()
    assert (edited["frequency"], parse_time(edited["anchor"])) == ("@hourly", clock.now)
    clock.advance(minutes=1)
    edited = (await client.patch(f"{TASKS}/{task['id']}", json={"timezone": "Asia/Tokyo"})).json()
    assert parse_time(edited["anchor"]) == clock.now
    [pushed] = store.undelivered(agent)
    assert store.mark_delivered(pushed, clock.now)

    # a change agents do not see (the name) is not pushed
    renamed = (await client.patch(f"{TASKS}/{task['id']}", json={"name": "renamed"})).json()
    assert renamed["name"] == "renamed"
    assert store.undelivered(agent) == []
    assert (await client.get(f"{TASKS}/{task['id']}")).json() == renamed


async def test_edit_of_targets_moves_the_task_between_agents(
    client: httpx.AsyncClient, store: Store, clock: Any
) -> None:
    web = await register(client, role="web")
    db = await register(client, role="db")
    task = await create(client, targets={"labels": {"role": "web"}})
    [assignment] = store.undelivered()
    assert assignment.agent_id == web
    store.mark_delivered(assignment, clock.now)

    clock.advance(seconds=5)
    response = await client.patch(f"{TASKS}/{task['id']}", json={"targets": {"agents": [str(db)]}})
    assert response.json()["targets"] == {"agents": [str(db)], "labels": None}
    work = {a.agent_id: a for a in store.undelivered()}
    assert work[db].removing is False  # db gets it
    assert work[web].removing is True  # web is told to drop it
    assert work[web].unassigned_at == clock.now
    assert (await client.get(f"/api/v1/agents/{web}")).json()["tasks"] == []
    assert (await client.get(f"/api/v1/agents/{db}")).json()["tasks"] == [task["id"]]
    # back to every agent: web is assigned again from now
    clock.advance(seconds=5)
    await client.patch(f"{TASKS}/{task['id']}", json={"targets": {}})
    assert {a.agent_id: a.removing for a in store.undelivered()} == {web: False, db: False}
    assert store.assignment_times(UUID(task["id"]))[web] == clock.now


BAD_EDITS: list[tuple[bytes, int, str, str | None]] = [
    (b'{"owner": "me"}', 422, "validation_error", "owner"),
    (b'{"command": ""}', 422, "validation_error", "command"),
    (b'{"command": null}', 422, "validation_error", "command"),
    (b'{"frequency": "every 0 seconds"}', 422, "validation_error", "frequency"),
    (b'{"retries": -1}', 422, "validation_error", "retries"),
    (b'{"targets": {"agents": [1]}}', 422, "validation_error", "targets.agents.0"),
    (b'{"targets": {"labels": {}}}', 422, "validation_error", "targets.labels"),
    (b'{"env": {"1X": "y"}}', 422, "validation_error", "env"),
    (b"[]", 422, "invalid_body", None),
    (b"not json", 400, "invalid_json", None),
    (b'{"command": "x\\u0000"}', 422, "validation_error", "command"),
]


@pytest.mark.parametrize(("body", "status", "code", "field"), BAD_EDITS)
async def test_a_bad_edit_is_refused_and_changes_nothing(
    client: httpx.AsyncClient,
    store: Store,
    body: bytes,
    status: int,
    code: str,
    field: str | None,
) -> None:
    task = await create(client)
    before = store.get_task(UUID(task["id"]))
    response = await client.patch(f"{TASKS}/{task['id']}", content=body)
    assert_error(response, status, code, field)
    assert store.get_task(UUID(task["id"])) == before


async def test_edit_of_unknown_or_deleted_tasks(client: httpx.AsyncClient) -> None:
    assert_error(
        await client.patch(f"{TASKS}/{uuid4()}", json={"name": "x"}),
        404,
        "task_not_found",
        "task_id",
    )
    task = await create(client)
    await client.delete(f"{TASKS}/{task['id']}")
    for request in (
        client.patch(f"{TASKS}/{task['id']}", json={"name": "x"}),
        client.post(f"{TASKS}/{task['id']}/pause"),
        client.post(f"{TASKS}/{task['id']}/resume"),
        client.post(f"{TASKS}/{task['id']}/run"),
    ):
        assert_error(await request, 409, "task_deleted", "task_id")


async def test_the_command_length_limit_holds_for_edits(store: Store, tmp_path: Any) -> None:
    from taskscheduler_server import ServerConfig

    config = ServerConfig(database=tmp_path / "unused.sqlite", max_command_length=10)
    app = create_app(AsyncStore(store), config=config)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        task = await create(client, command="short")
        response = await client.patch(f"{TASKS}/{task['id']}", json={"command": "x" * 11})
        assert_error(response, 422, "validation_error", "command")
        assert_error(
            await client.post(TASKS, json={"command": "y" * 11, "frequency": "@daily"}),
            422,
            "validation_error",
            "command",
        )


# --- pause, resume, delete, purge --------------------------------------------------------------


async def test_pause_and_resume_are_idempotent_and_pushed(
    client: httpx.AsyncClient, store: Store, clock: Any
) -> None:
    agent = await register(client)
    task = await create(client)
    store.mark_delivered(store.undelivered(agent)[0], clock.now)

    clock.advance(seconds=1)
    paused = (await client.post(f"{TASKS}/{task['id']}/pause")).json()
    assert (paused["state"], paused["paused"]) == ("paused", True)
    [push] = store.undelivered(agent)
    assert push.task.paused is True
    store.mark_delivered(push, clock.now)
    clock.advance(seconds=1)
    again = (await client.post(f"{TASKS}/{task['id']}/pause")).json()
    assert again == paused  # nothing changed, not even updated_at
    assert store.undelivered(agent) == []

    resumed = (await client.post(f"{TASKS}/{task['id']}/resume")).json()
    assert (resumed["state"], parse_time(resumed["updated_at"])) == ("active", clock.now)
    assert resumed["anchor"] == task["anchor"]  # the agents fire from the next slot on
    [push] = store.undelivered(agent)
    assert push.task.paused is False
    assert (await client.post(f"{TASKS}/{task['id']}/resume")).json() == resumed
    for action in ("pause", "resume"):
        assert_error(
            await client.post(f"{TASKS}/{uuid4()}/{action}"), 404, "task_not_found", "task_id"
        )


async def test_delete_keeps_history_readable_and_purge_removes_everything(
    client: httpx.AsyncClient, store: Store, clock: Any
) -> None:
    agent = await register(client)
    task = await create(client)
    task_id = task["id"]
    store.mark_delivered(store.undelivered(agent)[0], clock.now)
    slot = clock.now + timedelta(seconds=10)
    clock.advance(seconds=12)
    await report(client, task_id, agent, slot, stdout="before\n")

    deleted = (await client.delete(f"{TASKS}/{task_id}")).json()
    assert (deleted["state"], parse_time(deleted["deleted_at"])) == ("deleted", clock.now)
    [removal] = store.undelivered(agent)
    assert removal.removing
    clock.advance(seconds=1)
    assert (await client.delete(f"{TASKS}/{task_id}")).json() == deleted  # repeatable
    assert (await client.get(f"{TASKS}/{task_id}")).json()["state"] == "deleted"
    assert (await client.get(TASKS)).json()["tasks"] == []
    # the history stays readable, and a late report of the agent is still taken
    await report(client, task_id, agent, slot + timedelta(seconds=10), stdout="late\n")
    history = (await client.get(f"{TASKS}/{task_id}/executions")).json()["executions"]
    assert [e["stdout"] for e in history] == ["late\n", "before\n"]
    assert len((await client.get(f"{TASKS}/{task_id}/runs")).json()["runs"]) == 2
    clock.advance(minutes=5)
    output = (await client.get(f"{TASKS}/{task_id}/latest_output")).json()
    assert output["outputs"] == [{"agent_id": str(agent), "stdout": "late\n"}]

    purged = await client.delete(f"{TASKS}/{task_id}", params={"purge": "true"})
    assert (purged.status_code, purged.content) == (204, b"")
    for path in ("", "/executions", "/runs", "/latest_output"):
        assert_error(await client.get(f"{TASKS}/{task_id}{path}"), 404, "task_not_found", "task_id")
    assert store.executions(UUID(task_id)) == []
    assert store.undelivered() == []
    assert_error(
        await client.delete(f"{TASKS}/{task_id}", params={"purge": "true"}),
        404,
        "task_not_found",
        "task_id",
    )
    # purge=false is a plain delete
    other = await create(client)
    kept = await client.delete(f"{TASKS}/{other['id']}", params={"purge": "false"})
    assert kept.json()["state"] == "deleted"


# --- POST /api/v1/tasks/{id}/run ---------------------------------------------------------------


class RunRecorder(Dispatcher):
    """A dispatcher that is never run: it records the manual runs it is handed."""

    def __init__(self, store: AsyncStore) -> None:
        super().__init__(store)
        self.runs: list[tuple[UUID, datetime, list[UUID], datetime]] = []

    def run_now(
        self, task_id: UUID, scheduled_at: datetime, agent_ids: list[UUID], *, until: datetime
    ) -> None:
        self.runs.append((task_id, scheduled_at, agent_ids, until))


@pytest.fixture
async def recorded(
    astore: AsyncStore, clock: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, RunRecorder]]:
    dispatcher = RunRecorder(astore)
    app = create_app(astore, dispatcher=dispatcher, clock=clock)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        yield client, dispatcher


async def test_run_now_picks_the_time_and_the_alive_targets(
    recorded: tuple[httpx.AsyncClient, RunRecorder], store: Store, clock: Any
) -> None:
    client, dispatcher = recorded
    web, other = sorted([await register(client, role="web"), await register(client, role="web")])
    lost = await register(client, role="web")
    await register(client, role="db")
    store.mark_lost(clock.now + timedelta(seconds=1))
    await register(client, web, role="web")
    await register(client, other, role="web")
    assert lost in {a.id for a in store.list_agents(AgentStatus.LOST)}
    task = await create(client, targets={"labels": {"role": "web"}})
    await client.post(f"{TASKS}/{task['id']}/pause")  # a paused task runs by hand too

    clock.advance(seconds=3)
    response = await client.post(f"{TASKS}/{task['id']}/run")
    assert response.status_code == 202, response.text
    started = response.json()
    assert started == {
        "task_id": task["id"],
        "scheduled_at": started["scheduled_at"],
        "agents": [str(web), str(other)],
    }
    assert parse_time(started["scheduled_at"]) == clock.now
    assert dispatcher.runs == [
        (UUID(task["id"]), clock.now, [web, other], clock.now + timedelta(seconds=60))
    ]
    assert_error(await client.post(f"{TASKS}/{uuid4()}/run"), 404, "task_not_found", "task_id")


# --- runs and executions -----------------------------------------------------------------------


async def test_runs_aggregate_each_fire_time(client: httpx.AsyncClient, clock: Any) -> None:
    first, second = sorted([await register(client), await register(client)], key=str)
    task = await create(client, retries=1)
    task_id = task["id"]
    start = clock.now
    slots = [start + timedelta(seconds=10 * k) for k in range(1, 7)]
    clock.advance(seconds=65)
    # 1: both succeed; 2: one fails; 3: both fail; 4: both missed
    await report(client, task_id, first, slots[0])
    await report(client, task_id, second, slots[0])
    await report(client, task_id, first, slots[1])
    await report(client, task_id, second, slots[1], status="failed", exit_code=1)
    await report(client, task_id, first, slots[2], status="timed_out", exit_code=None)
    await report(client, task_id, second, slots[2], status="failed", exit_code=2)
    await report(client, task_id, first, slots[3], status="missed", exit_code=None)
    await report(client, task_id, second, slots[3], status="missed", exit_code=None)
    # 5: a retry: attempt 1 failed (not final), attempt 2 succeeded; second succeeded at once
    await report(client, task_id, first, slots[4], status="failed", exit_code=1, final=False)
    await report(client, task_id, first, slots[4], attempt=2)
    await report(client, task_id, second, slots[4])
    # 6: only one agent so far, and its first attempt will be retried: still running
    await report(client, task_id, first, slots[5], status="failed", exit_code=1, final=False)
    clock.now = slots[5] + timedelta(seconds=5)

    runs = (await client.get(f"{TASKS}/{task_id}/runs")).json()
    assert runs["next_cursor"] is None
    summary = [(parse_time(r["scheduled_at"]), r["status"]) for r in runs["runs"]]
    assert summary == [
        (slots[5], "running"),
        (slots[4], "succeeded"),
        (slots[3], "missed"),
        (slots[2], "failed"),
        (slots[1], "partially_failed"),
        (slots[0], "succeeded"),
    ]
    retried = runs["runs"][1]
    assert retried["trigger"] == "schedule"
    assert [(o["agent_id"], o["attempts"], o["status"]) for o in retried["outcomes"]] == [
        (str(first), 2, "succeeded"),
        (str(second), 1, "succeeded"),
    ]
    assert runs["runs"][0]["finished_at"] is None
    assert parse_time(retried["finished_at"]) == slots[4] + timedelta(seconds=1)

    # filtered by status, and a page at a time
    partial = (await client.get(f"{TASKS}/{task_id}/runs", params={"status": "failed"})).json()
    assert [parse_time(r["scheduled_at"]) for r in partial["runs"]] == [slots[2]]
    walked = await walk(client, f"{TASKS}/{task_id}/runs", "runs", limit=4)
    assert [parse_time(r["scheduled_at"]) for r in walked] == slots[::-1]
    walked = await walk(client, f"{TASKS}/{task_id}/runs", "runs", limit=1, status="succeeded")
    assert [parse_time(r["scheduled_at"]) for r in walked] == [slots[4], slots[0]]
    # after the report grace the last one is complete too: failed, as its last attempt
    clock.now = slots[5] + timedelta(seconds=61)
    runs = (await client.get(f"{TASKS}/{task_id}/runs", params={"limit": 1})).json()
    assert runs["runs"][0]["status"] == "failed"
    assert runs["next_cursor"] is not None


async def test_a_manual_run_groups_as_one_run(client: httpx.AsyncClient, clock: Any) -> None:
    first, second = await register(client), await register(client)
    task = await create(client, frequency="@yearly")
    moment = clock.advance(seconds=30)
    await report(client, task["id"], first, moment, trigger="manual")
    await report(client, task["id"], second, moment, trigger="manual", status="failed")
    [run] = (await client.get(f"{TASKS}/{task['id']}/runs")).json()["runs"]
    assert (run["trigger"], run["status"]) == ("manual", "partially_failed")


async def test_executions_filter_order_and_pages(client: httpx.AsyncClient, clock: Any) -> None:
    first, second = sorted([uuid4(), uuid4()], key=str)
    task = await create(client, retries=2)
    task_id = task["id"]
    slots = [clock.now + timedelta(seconds=10 * k) for k in range(1, 5)]
    clock.advance(seconds=60)
    for slot in slots:
        await report(client, task_id, first, slot, status="failed", final=False)
        await report(client, task_id, first, slot, attempt=2, stdout="second try")
        await report(client, task_id, second, slot, status="skipped", exit_code=None)

    everything = await walk(client, f"{TASKS}/{task_id}/executions", "executions")
    keys = [(parse_time(e["scheduled_at"]), e["agent_id"], e["attempt"]) for e in everything]
    # newest fire time first; per fire time by agent, the latest attempt first
    assert keys == [
        key
        for slot in reversed(slots)
        for key in ((slot, str(first), 2), (slot, str(first), 1), (slot, str(second), 1))
    ]
    for limit in (1, 4, 5, 12):
        walked = await walk(client, f"{TASKS}/{task_id}/executions", "executions", limit=limit)
        assert walked == everything
    assert {(e["trigger"], e["final"]) for e in everything if e["attempt"] == 2} == {
        ("schedule", True)
    }

    async def listed(**params: str) -> list[tuple[datetime, str, int]]:
        found = await walk(client, f"{TASKS}/{task_id}/executions", "executions", **params)
        return [(parse_time(e["scheduled_at"]), e["agent_id"], e["attempt"]) for e in found]

    assert await listed(agent=str(second)) == [(s, str(second), 1) for s in reversed(slots)]
    assert await listed(status="failed", limit="2") == [(s, str(first), 1) for s in slots[::-1]]
    # since is inclusive, until exclusive
    window = await listed(since=slots[1].isoformat(), until=slots[3].isoformat())
    assert {key[0] for key in window} == {slots[1], slots[2]}
    assert await listed(agent=str(uuid4())) == []
    assert_error(
        await client.get(f"{TASKS}/{uuid4()}/executions"), 404, "task_not_found", "task_id"
    )
    assert_error(await client.get(f"{TASKS}/{uuid4()}/runs"), 404, "task_not_found", "task_id")


async def test_latest_output_shows_each_agents_last_attempt(
    client: httpx.AsyncClient, clock: Any
) -> None:
    agent = await register(client)
    task = await create(client, retries=1)
    slot = clock.now + timedelta(seconds=10)
    clock.advance(seconds=12)
    await report(client, task["id"], agent, slot, status="failed", stdout="1st\n", final=False)
    path = f"{TASKS}/{task['id']}/latest_output"
    # a retry is to come: the run is not complete yet
    assert (await client.get(path)).json()["outputs"] == []
    await report(client, task["id"], agent, slot, attempt=2, stdout="2nd\n")
    assert (await client.get(path)).json()["outputs"] == [
        {"agent_id": str(agent), "stdout": "2nd\n"}
    ]


# --- agents ------------------------------------------------------------------------------------


async def test_agents_have_labels_a_label_filter_and_a_detail_view(
    client: httpx.AsyncClient, store: Store, clock: Any
) -> None:
    web = await register(client, role="web", zone="eu")
    web_seen = clock.now
    clock.advance(seconds=1)
    db = await register(client, role="db", zone="eu")
    clock.advance(seconds=1)
    bare = await register(client)
    web_task = await create(client, targets={"labels": {"role": "web"}})
    clock.advance(seconds=1)
    everywhere = await create(client)
    gone = await create(client)
    await client.delete(f"{TASKS}/{gone['id']}")

    async def selected(*labels: str) -> list[str]:
        query = "&".join(f"label={quote(label)}" for label in labels)
        response = await client.get(f"/api/v1/agents?{query}")
        assert response.status_code == 200, response.text
        return [agent["id"] for agent in response.json()["agents"]]

    assert await selected() == [str(web), str(db), str(bare)]
    assert await selected("zone=eu") == [str(web), str(db)]
    assert await selected("zone=eu", "role=web") == [str(web)]
    assert await selected("role=web", "role=web") == [str(web)]
    assert await selected("role=cache") == []

    detail = (await client.get(f"/api/v1/agents/{web}")).json()
    assert detail["labels"] == {"role": "web", "zone": "eu"}
    assert (detail["status"], parse_time(detail["last_seen_at"])) == ("alive", web_seen)
    assert detail["tasks"] == [web_task["id"], everywhere["id"]]
    assert (await client.get(f"/api/v1/agents/{db}")).json()["tasks"] == [everywhere["id"]]
    assert_error(await client.get(f"/api/v1/agents/{uuid4()}"), 404, "agent_not_found", "agent_id")
    assert_error(await client.get("/api/v1/agents/nope"), 404, "agent_not_found", "agent_id")

    # registering again with other labels moves the agent's tasks
    await register(client, db, role="web")
    assert (await client.get(f"/api/v1/agents/{db}")).json()["tasks"] == [
        web_task["id"],
        everywhere["id"],
    ]
    await register(client, web)  # no labels any more
    assert (await client.get(f"/api/v1/agents/{web}")).json()["tasks"] == [everywhere["id"]]
    removals = {a.task.id for a in store.undelivered(web) if a.removing}
    assert removals == {UUID(web_task["id"]), UUID(gone["id"])}


@pytest.mark.parametrize(
    ("labels", "field"),
    [({"bad key": "x"}, "labels"), ({"role": "a b"}, "labels"), ([], "labels")],
)
async def test_registration_refuses_bad_labels(
    client: httpx.AsyncClient, store: Store, labels: Any, field: str
) -> None:
    response = await client.post(
        "/api/v1/agents/register",
        json={"agent_id": str(uuid4()), "url": "http://127.0.0.1:9", "labels": labels},
    )
    assert_error(response, 422, "validation_error", field)
    assert store.list_agents() == []
