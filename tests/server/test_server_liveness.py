"""Liveness: heartbeats, ``alive`` / ``lost`` in the store and the API, the watch that marks
silent agents lost (on trio's real clock, with short intervals), and runs that stop waiting
for lost agents."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote
from uuid import UUID, uuid4

import httpx
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskscheduler_core import (
    Agent,
    AgentStatus,
    Execution,
    ExecutionStatus,
    Task,
    parse_frequency,
    parse_time,
)
from taskscheduler_server import AsyncStore, Store, watch_liveness

pytestmark = pytest.mark.databases("sqlite", "postgresql")

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
ALIVE, LOST = AgentStatus.ALIVE, AgentStatus.LOST

WaitUntil = Callable[..., Awaitable[None]]


def agent_at(moment: datetime, agent_id: UUID | None = None) -> Agent:
    return Agent(id=agent_id or uuid4(), url="http://127.0.0.1:9", registered_at=moment)


def task_at(moment: datetime) -> Task:
    return Task(
        id=uuid4(),
        command="echo hi",
        frequency=parse_frequency("every 10 seconds"),
        anchor=moment,
        created_at=moment,
    )


def execution(task: Task, agent_id: UUID, scheduled_at: datetime) -> Execution:
    return Execution(
        task_id=task.id,
        agent_id=agent_id,
        scheduled_at=scheduled_at,
        started_at=scheduled_at,
        finished_at=scheduled_at + timedelta(seconds=1),
        status=ExecutionStatus.SUCCEEDED,
        exit_code=0,
    )


def status_of(store: Store, agent_id: UUID) -> AgentStatus:
    agent = store.get_agent(agent_id)
    assert agent is not None
    return agent.status


# --- the store ---------------------------------------------------------------------------------


def test_a_registered_agent_is_alive_and_heartbeats_keep_it_so(store: Store) -> None:
    agent = store.upsert_agent(agent_at(START))
    assert (agent.status, agent.last_seen_at) == (ALIVE, START)

    assert store.heartbeat(agent.id, START + timedelta(seconds=5)) is ALIVE
    seen = store.get_agent(agent.id)
    assert seen is not None
    assert (seen.status, seen.last_seen_at) == (ALIVE, START + timedelta(seconds=5))
    assert seen.registered_at == START


def test_a_heartbeat_of_an_unknown_agent_changes_nothing(store: Store) -> None:
    assert store.heartbeat(uuid4(), START) is None
    assert store.list_agents() == []


def test_silent_agents_are_marked_lost_and_come_back_on_any_contact(store: Store) -> None:
    quiet = store.upsert_agent(agent_at(START))
    chatty = store.upsert_agent(agent_at(START))
    store.heartbeat(chatty.id, START + timedelta(seconds=20))

    lost = store.mark_lost(START + timedelta(seconds=15))
    assert [agent.id for agent in lost] == [quiet.id]
    assert lost[0].status is LOST
    assert (status_of(store, quiet.id), status_of(store, chatty.id)) == (LOST, ALIVE)
    assert store.lost_agents() == {quiet.id}
    assert store.mark_lost(START + timedelta(seconds=15)) == []  # already lost: reported once
    assert [a.id for a in store.list_agents(LOST)] == [quiet.id]
    assert [a.id for a in store.list_agents(ALIVE)] == [chatty.id]

    # a heartbeat brings it back, and says it was lost
    assert store.heartbeat(quiet.id, START + timedelta(seconds=30)) is LOST
    assert status_of(store, quiet.id) is ALIVE

    # so does a registration
    store.mark_lost(START + timedelta(minutes=5))
    assert status_of(store, quiet.id) is LOST
    store.upsert_agent(agent_at(START + timedelta(minutes=6), quiet.id))
    assert status_of(store, quiet.id) is ALIVE


def test_a_report_is_a_sign_of_life_in_the_same_transaction(store: Store) -> None:
    agent = store.upsert_agent(agent_at(START))
    task = task_at(START)
    store.create_task(task)
    store.mark_lost(START + timedelta(seconds=15))

    arrived = START + timedelta(minutes=1)
    assert store.record_execution(execution(task, agent.id, START), seen_at=arrived)
    seen = store.get_agent(agent.id)
    assert seen is not None
    assert (seen.status, seen.last_seen_at) == (ALIVE, arrived)

    # a report from an agent that never registered does not make one up
    assert store.record_execution(execution(task, uuid4(), START), seen_at=arrived)
    assert [a.id for a in store.list_agents()] == [agent.id]
    # and a report without seen_at (the old call) touches no agent
    store.mark_lost(arrived)
    assert store.record_execution(execution(task, agent.id, START + timedelta(seconds=10)))
    assert status_of(store, agent.id) is LOST


def test_last_seen_never_moves_back(store: Store) -> None:
    agent = store.upsert_agent(agent_at(START))
    store.heartbeat(agent.id, START + timedelta(seconds=10))
    store.heartbeat(agent.id, START + timedelta(seconds=5))  # a late, slow request
    seen = store.get_agent(agent.id)
    assert seen is not None
    assert seen.last_seen_at == START + timedelta(seconds=10)


def test_oldest_alive_contact_is_the_next_to_be_lost(store: Store) -> None:
    assert store.oldest_alive_contact() is None
    first = store.upsert_agent(agent_at(START))
    store.upsert_agent(agent_at(START + timedelta(seconds=3)))
    assert store.oldest_alive_contact() == START
    store.heartbeat(first.id, START + timedelta(seconds=7))
    assert store.oldest_alive_contact() == START + timedelta(seconds=3)
    store.mark_lost(START + timedelta(seconds=5))
    assert store.oldest_alive_contact() == START + timedelta(seconds=7)


def test_expected_agents_exclude_lost_ones(store: Store) -> None:
    one = store.upsert_agent(agent_at(START))
    two = store.upsert_agent(agent_at(START))
    task = task_at(START)
    store.create_task(task)
    slot = START + timedelta(seconds=10)
    assert store.expected_agents(task.id, slot) == {one.id, two.id}
    store.heartbeat(one.id, START + timedelta(seconds=20))
    store.mark_lost(START + timedelta(seconds=15))
    assert store.expected_agents(task.id, slot) == {one.id}


# --- the API -----------------------------------------------------------------------------------


async def register(client: httpx.AsyncClient, agent_id: UUID) -> None:
    response = await client.post(
        "/api/v1/agents/register", json={"agent_id": str(agent_id), "url": "http://127.0.0.1:9"}
    )
    assert response.status_code == 200, response.text


async def heartbeat(client: httpx.AsyncClient, agent_id: UUID | str) -> httpx.Response:
    return await client.post(f"/api/v1/agents/{agent_id}/heartbeat", json={})


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "field"}
    assert error["code"] == code
    return dict(error)


async def test_heartbeat_answers_alive_and_updates_last_seen(
    client: httpx.AsyncClient, clock: Any
) -> None:
    agent_id = uuid4()
    await register(client, agent_id)
    clock.advance(seconds=4)
    response = await heartbeat(client, agent_id)
    assert response.status_code == 200
    assert response.json() == {"agent_id": str(agent_id), "status": "alive"}

    [listed] = (await client.get("/api/v1/agents")).json()["agents"]
    assert set(listed) == {"id", "url", "status", "registered_at", "last_seen_at", "labels"}
    assert listed["status"] == "alive"
    assert parse_time(listed["last_seen_at"]) == clock.now
    assert parse_time(listed["registered_at"]) == clock.now - timedelta(seconds=4)


async def test_heartbeat_of_an_unknown_agent_is_404_so_that_it_registers(
    client: httpx.AsyncClient, store: Store
) -> None:
    error = assert_error(await heartbeat(client, uuid4()), 404, "agent_not_found")
    assert error["field"] == "agent_id"
    error = assert_error(await heartbeat(client, "not-a-uuid"), 404, "agent_not_found")
    assert error["field"] == "agent_id"
    assert store.list_agents() == []


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"", 400, "invalid_json"),
        (b"{", 400, "invalid_json"),
        (b"[]", 422, "invalid_body"),
        (b'"alive"', 422, "invalid_body"),
    ],
)
async def test_heartbeat_body_must_be_a_json_object(
    client: httpx.AsyncClient, store: Store, content: bytes, status: int, code: str
) -> None:
    agent_id = uuid4()
    await register(client, agent_id)
    path = f"/api/v1/agents/{agent_id}/heartbeat"
    assert_error(await client.post(path, content=content), status, code)
    # fields are ignored: there may be some one day
    assert (await client.post(path, json={"load": 0.5})).status_code == 200
    assert_error(await client.get(path), 405, "method_not_allowed")


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.binary(max_size=40)
    | st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8)).map(
        lambda value: json.dumps(value).encode()
    ),
    agent=st.sampled_from(["known", "unknown"]) | st.text(min_size=1, max_size=20),
)
async def test_no_heartbeat_causes_a_server_error(
    client: httpx.AsyncClient, body: bytes, agent: str
) -> None:
    if agent == "known":
        agent_id = uuid4()
        await register(client, agent_id)
        agent = str(agent_id)
    elif agent == "unknown":
        agent = str(uuid4())
    response = await client.post(f"/api/v1/agents/{quote(agent, safe='')}/heartbeat", content=body)
    assert response.status_code < 500, response.text


async def test_a_run_stops_waiting_for_a_lost_agent_and_waits_again_when_it_is_back(
    client: httpx.AsyncClient, store: Store, clock: Any
) -> None:
    reporter, silent = uuid4(), uuid4()
    await register(client, reporter)
    await register(client, silent)
    created = await client.post(
        "/api/v1/tasks/create", json={"command": "echo hi", "frequency": "every 10 seconds"}
    )
    task_id = created.json()["command_id"]
    slot = parse_time(created.json()["anchor"]) + timedelta(seconds=10)
    clock.now = slot + timedelta(seconds=1)
    ack = await client.post(
        f"/api/v1/tasks/{task_id}/complete",
        json={"server_id": str(reporter), "stdout": "hi\n", "scheduled_at": slot.isoformat()},
    )
    assert ack.status_code == 200

    async def shown() -> list[Any]:
        answer = await client.get(f"/api/v1/tasks/{task_id}/latest_output")
        outputs: list[Any] = answer.json()["outputs"]
        return outputs

    assert await shown() == []  # waiting for `silent`, well before the report deadline
    store.mark_lost(clock.now - timedelta(seconds=0.5))  # silent's last contact is older
    assert status_of(store, silent) is LOST
    assert status_of(store, reporter) is ALIVE  # its report counted as contact
    assert await shown() == [{"agent_id": str(reporter), "stdout": "hi\n"}]

    assert (await heartbeat(client, silent)).status_code == 200
    assert await shown() == []  # alive again: the run waits for it again, until its deadline


async def test_a_heartbeat_of_a_lost_agent_asks_for_delivery_and_reconciliation(
    astore: AsyncStore, store: Store, clock: Any
) -> None:
    from taskscheduler_server import Dispatcher, Reconciler, create_app

    calls: list[tuple[str, UUID | None]] = []

    class DispatchRecorder(Dispatcher):
        def notify(self, agent_id: UUID | None = None) -> None:
            calls.append(("dispatch", agent_id))

    class ReconcileRecorder(Reconciler):
        def notify(self, agent_id: UUID) -> None:
            calls.append(("reconcile", agent_id))

    dispatcher = DispatchRecorder(astore)
    app = create_app(
        astore, dispatcher=dispatcher, reconciler=ReconcileRecorder(astore, dispatcher), clock=clock
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        agent_id = uuid4()
        await register(client, agent_id)
        assert calls == [("dispatch", agent_id), ("reconcile", agent_id)]
        calls.clear()
        await heartbeat(client, agent_id)
        assert calls == []  # alive all along: nothing to do
        store.mark_lost(clock.now)
        await heartbeat(client, agent_id)
        assert calls == [("dispatch", agent_id), ("reconcile", agent_id)]


# --- the watch, on the real clock --------------------------------------------------------------


async def test_watch_marks_silent_agents_lost_and_leaves_chatty_ones_alive(
    nursery: trio.Nursery, astore: AsyncStore, wait_until: WaitUntil
) -> None:
    lost_after = timedelta(seconds=0.3)
    now = datetime.now(UTC)
    chatty = await astore.call(Store.upsert_agent, agent_at(now))
    quiet = await astore.call(Store.upsert_agent, agent_at(now))
    await nursery.start(lambda **kw: watch_liveness(astore, lost_after=lost_after, **kw))

    async def keep_chatting() -> None:
        while True:
            await astore.call(Store.heartbeat, chatty.id, datetime.now(UTC))
            await trio.sleep(0.05)

    nursery.start_soon(keep_chatting)

    async def status(agent_id: UUID) -> AgentStatus:
        agent = await astore.call(Store.get_agent, agent_id)
        assert agent is not None
        return agent.status

    started = trio.current_time()
    await wait_until(lambda: _is(status(quiet.id), LOST), timeout=3)
    assert trio.current_time() - started >= 0.25  # not before lost_after (less our lag)
    assert await status(chatty.id) is ALIVE

    await astore.call(Store.heartbeat, quiet.id, datetime.now(UTC))
    assert await status(quiet.id) is ALIVE
    await wait_until(lambda: _is(status(quiet.id), LOST), timeout=3)  # and lost again
    assert await status(chatty.id) is ALIVE


async def test_a_starting_server_gives_every_agent_lost_after_from_its_start(
    nursery: trio.Nursery, astore: AsyncStore, wait_until: WaitUntil
) -> None:
    # Last heard of an hour ago, while this server was down: not its fault.
    old = await astore.call(Store.upsert_agent, agent_at(datetime.now(UTC) - timedelta(hours=1)))
    lost_after = timedelta(seconds=0.6)
    await nursery.start(lambda **kw: watch_liveness(astore, lost_after=lost_after, **kw))
    started = trio.current_time()

    async def status() -> AgentStatus:
        agent = await astore.call(Store.get_agent, old.id)
        assert agent is not None
        return agent.status

    assert await status() is ALIVE  # not lost at once for the server's own absence
    await wait_until(lambda: _is(status(), LOST), timeout=5)
    assert trio.current_time() - started >= 0.5  # but lost_after after the start


async def _is(status: Awaitable[AgentStatus], expected: AgentStatus) -> bool:
    return await status is expected
