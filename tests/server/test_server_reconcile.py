"""Reconciliation against real agent peers (hypercorn on 127.0.0.1:0) on trio's real clock:
what an agent lacks is pushed again, what it should not have is removed, on registration and
periodically, and nothing is done to an agent that is not the one we think."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import attrs
import httpx
import trio

from taskscheduler_core import Agent, Task, parse_frequency
from taskscheduler_server import (
    AsyncStore,
    Dispatcher,
    Reconciler,
    Reconciliation,
    ServerConfig,
    Store,
    serve,
)

WaitUntil = Callable[..., Awaitable[None]]

FAST = {
    "backoff_initial": timedelta(milliseconds=20),
    "backoff_max": timedelta(milliseconds=100),
    "agent_request_timeout": timedelta(seconds=2),
}
START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def new_task(command: str = "echo hi") -> Task:
    now = datetime.now(UTC)
    return Task(
        id=uuid4(),
        command=command,
        frequency=parse_frequency("every 30 seconds"),
        anchor=now,
        created_at=now,
    )


def spec_body(task_id: UUID | None = None, command: str = "echo stray") -> dict[str, str]:
    return {
        "task_id": str(task_id or uuid4()),
        "command": command,
        "frequency": "every 5 seconds",
        "anchor": "2026-01-01T00:00:00.000000Z",
    }


class Peers:
    """A store, a running dispatcher and reconciler, and helpers to reach them."""

    def __init__(self, astore: AsyncStore, dispatcher: Dispatcher, reconciler: Reconciler):
        self.astore = astore
        self.dispatcher = dispatcher
        self.reconciler = reconciler

    async def register(self, agent: Any, url: str) -> None:
        record = Agent(id=agent.agent_id, url=url, registered_at=datetime.now(UTC))
        await self.astore.call(Store.upsert_agent, record)
        self.dispatcher.notify(agent.agent_id)

    async def create(self, task: Task) -> None:
        await self.astore.call(Store.create_task, task)
        self.dispatcher.notify()

    async def all_delivered(self) -> bool:
        return not await self.astore.call(Store.undelivered)


async def start_peers(
    nursery: trio.Nursery, astore: AsyncStore, interval: timedelta = timedelta(hours=1)
) -> Peers:
    dispatcher = Dispatcher(astore, **FAST)
    reconciler = Reconciler(
        astore, dispatcher, interval=interval, agent_request_timeout=timedelta(seconds=2)
    )
    await nursery.start(dispatcher.run)
    await nursery.start(reconciler.run)
    return Peers(astore, dispatcher, reconciler)


async def agent_with_tasks(
    peers: Peers, serve_asgi: Any, fake_agent: Any, wait_until: WaitUntil, tasks: int = 2
) -> tuple[Any, list[Task]]:
    """A fake agent, registered, that has been delivered ``tasks`` tasks."""
    agent = fake_agent()
    url, _ = await serve_asgi(agent.app)
    await peers.register(agent, url)
    created = [new_task(f"echo {n}") for n in range(tasks)]
    for task in created:
        await peers.create(task)
    await wait_until(peers.all_delivered)
    assert agent.tasks.keys() == {str(task.id) for task in created}
    return agent, created


async def test_an_agent_that_has_everything_is_left_alone(
    nursery: trio.Nursery, astore: AsyncStore, serve_asgi: Any, fake_agent: Any, wait_until: Any
) -> None:
    peers = await start_peers(nursery, astore)
    agent, _ = await agent_with_tasks(peers, serve_asgi, fake_agent, wait_until)
    pushes = len(agent.scheduled)

    result = await peers.reconciler.reconcile(agent.agent_id)
    assert result == Reconciliation(agent_id=agent.agent_id)
    assert not result.changed
    assert agent.listings == 1
    assert (len(agent.scheduled), agent.deleted) == (pushes, [])


async def test_tasks_an_agent_lost_are_pushed_again(
    nursery: trio.Nursery, astore: AsyncStore, serve_asgi: Any, fake_agent: Any, wait_until: Any
) -> None:
    peers = await start_peers(nursery, astore)
    agent, tasks = await agent_with_tasks(peers, serve_asgi, fake_agent, wait_until)
    agent.tasks.clear()  # its disk was wiped, its id kept

    result = await peers.reconciler.reconcile(agent.agent_id)
    assert result is not None
    assert set(result.pushed) == {task.id for task in tasks}
    assert result.removed == ()
    await wait_until(lambda: agent.tasks.keys() == {str(task.id) for task in tasks})
    await wait_until(peers.all_delivered)
    # each with its anchor, as the first time
    by_id = {str(task.id): task for task in tasks}
    for task_id, body in agent.tasks.items():
        assert body["command"] == by_id[task_id].command


async def test_a_task_held_in_another_version_is_pushed_again(
    nursery: trio.Nursery, astore: AsyncStore, serve_asgi: Any, fake_agent: Any, wait_until: Any
) -> None:
    peers = await start_peers(nursery, astore)
    agent, [task, _] = await agent_with_tasks(peers, serve_asgi, fake_agent, wait_until)
    agent.tasks[str(task.id)] = spec_body(task.id, command="echo tampered")

    result = await peers.reconciler.reconcile(agent.agent_id)
    assert result is not None
    assert result.pushed == (task.id,)
    await wait_until(lambda: agent.tasks[str(task.id)]["command"] == task.command)


async def test_tasks_an_agent_should_not_have_are_removed(
    nursery: trio.Nursery, astore: AsyncStore, serve_asgi: Any, fake_agent: Any, wait_until: Any
) -> None:
    peers = await start_peers(nursery, astore)
    agent, tasks = await agent_with_tasks(peers, serve_asgi, fake_agent, wait_until)
    stray = spec_body()
    agent.tasks[stray["task_id"]] = stray

    result = await peers.reconciler.reconcile(agent.agent_id)
    assert result is not None
    assert result.removed == (UUID(stray["task_id"]),)
    assert result.pushed == ()
    assert agent.deleted == [stray["task_id"]]
    assert agent.tasks.keys() == {str(task.id) for task in tasks}


async def test_an_agent_of_another_identity_at_that_url_is_left_alone(
    nursery: trio.Nursery, astore: AsyncStore, serve_asgi: Any, fake_agent: Any, wait_until: Any
) -> None:
    peers = await start_peers(nursery, astore)
    agent, _ = await agent_with_tasks(peers, serve_asgi, fake_agent, wait_until)
    known_as = agent.agent_id
    agent.agent_id = uuid4()  # a new agent now listens at that URL
    agent.tasks.clear()
    stray = spec_body()
    agent.tasks[stray["task_id"]] = stray

    assert await peers.reconciler.reconcile(known_as) is None
    assert (agent.listings, agent.deleted) == (0, [])
    assert await peers.all_delivered()


async def test_unreachable_unknown_lost_and_confused_agents_are_skipped(
    nursery: trio.Nursery,
    astore: AsyncStore,
    serve_asgi: Any,
    fake_agent: Any,
    wait_until: Any,
    free_port: Callable[[], int],
) -> None:
    peers = await start_peers(nursery, astore)
    agent, _ = await agent_with_tasks(peers, serve_asgi, fake_agent, wait_until)
    assert await peers.reconciler.reconcile(uuid4()) is None  # unknown

    down = fake_agent()
    await peers.register(down, f"http://127.0.0.1:{free_port()}")
    assert await peers.reconciler.reconcile(down.agent_id) is None  # nothing listens there

    agent.tasks["junk"] = {"task_id": "junk"}
    assert await peers.reconciler.reconcile(agent.agent_id) is None  # a listing we cannot read
    del agent.tasks["junk"]

    await astore.call(Store.mark_lost, datetime.now(UTC))
    listings = agent.listings
    assert await peers.reconciler.reconcile(agent.agent_id) is None  # lost
    assert agent.listings == listings


def test_redeliver_marks_only_what_was_delivered_before_the_listing(store: Store) -> None:
    agent = store.upsert_agent(Agent(id=uuid4(), url="http://127.0.0.1:9", registered_at=START))
    delivered, pending = new_task(), new_task()
    for task in (delivered, pending):
        store.create_task(task)
    [assignment] = [a for a in store.undelivered(agent.id) if a.task.id == delivered.id]
    store.mark_delivered(assignment, START + timedelta(seconds=10))
    ids = [delivered.id, pending.id]

    # the listing was asked for before the delivery: it proves nothing
    assert store.redeliver(agent.id, ids, delivered_before=START + timedelta(seconds=5)) == []
    assert store.redeliver(agent.id, ids, delivered_before=START + timedelta(seconds=15)) == [
        delivered.id
    ]
    again = {a.task.id: a for a in store.undelivered(agent.id)}
    assert again.keys() == {delivered.id, pending.id}
    # a push already in flight for the older revision cannot mark it delivered
    assert not store.mark_delivered(assignment, START + timedelta(seconds=20))
    assert store.mark_delivered(again[delivered.id], START + timedelta(seconds=20))
    assert {a.task.id for a in store.assignments_of(agent.id)} == {delivered.id, pending.id}


# --- when it runs ------------------------------------------------------------------------------


async def test_the_interval_reconciles_with_no_registration(
    nursery: trio.Nursery, astore: AsyncStore, serve_asgi: Any, fake_agent: Any, wait_until: Any
) -> None:
    peers = await start_peers(nursery, astore, interval=timedelta(seconds=0.3))
    agent, tasks = await agent_with_tasks(peers, serve_asgi, fake_agent, wait_until)
    wanted = {str(task.id) for task in tasks}

    # periodically, with no registration: a wiped schedule comes back, a stray one goes
    agent.tasks.clear()
    stray = spec_body()
    agent.tasks[stray["task_id"]] = stray
    await wait_until(lambda: agent.tasks.keys() == wanted, timeout=5)
    assert agent.deleted == [stray["task_id"]]


async def test_notify_reconciles_at_once(
    nursery: trio.Nursery, astore: AsyncStore, serve_asgi: Any, fake_agent: Any, wait_until: Any
) -> None:
    peers = await start_peers(nursery, astore)  # the interval is an hour
    agent, _ = await agent_with_tasks(peers, serve_asgi, fake_agent, wait_until)
    stray = spec_body()
    agent.tasks[stray["task_id"]] = stray
    for _ in range(3):  # asked thrice in a row: one reconciliation, two at most
        peers.reconciler.notify(agent.agent_id)
    await wait_until(lambda: agent.deleted == [stray["task_id"]])
    await trio.sleep(0.2)
    assert 1 <= agent.listings <= 2


async def test_serve_reconciles_on_registration_and_periodically(
    tmp_path: Path, serve_asgi: Any, fake_agent: Any, wait_until: WaitUntil
) -> None:
    agent = fake_agent()
    agent_url, _ = await serve_asgi(agent.app)
    stray = spec_body()
    agent.tasks[stray["task_id"]] = stray  # held from some earlier life
    config = ServerConfig(
        database=tmp_path / "server.sqlite",
        port=0,
        reconcile_interval=timedelta(seconds=0.3),
        lost_after=timedelta(seconds=30),
        **FAST,
    )
    async with trio.open_nursery() as nursery:
        base_url = await nursery.start(serve, config)
        async with httpx.AsyncClient(base_url=base_url) as client:
            created = await client.post(
                "/api/v1/tasks/create", json={"command": "date", "frequency": "every 1 minutes"}
            )
            task_id = created.json()["command_id"]
            registered = await client.post(
                "/api/v1/agents/register",
                json={"agent_id": str(agent.agent_id), "url": agent_url},
            )
            assert registered.status_code == 200
            await wait_until(lambda: agent.tasks.keys() == {task_id})
            assert agent.deleted == [stray["task_id"]]

            # its schedules are wiped but it keeps its id: no registration, and yet
            agent.tasks.clear()
            await wait_until(lambda: agent.tasks.keys() == {task_id}, timeout=5)
        nursery.cancel_scope.cancel()


async def test_labels_declared_in_the_identity_move_the_agents_tasks(
    nursery: trio.Nursery, astore: AsyncStore, serve_asgi: Any, fake_agent: Any, wait_until: Any
) -> None:
    from taskscheduler_core import Targets

    peers = await start_peers(nursery, astore)
    agent = fake_agent()
    url, _ = await serve_asgi(agent.app)
    await peers.register(agent, url)
    web_task = attrs.evolve(new_task("echo web"), targets=Targets(labels={"role": "web"}))
    await peers.create(web_task)
    await wait_until(peers.all_delivered)
    assert agent.tasks == {}

    # it restarted with a label (an agent of AVAILABLE_SERVERS never registers again)
    agent.labels = {"role": "web"}
    result = await peers.reconciler.reconcile(agent.agent_id)
    assert result is not None
    known = await astore.call(Store.get_agent, agent.agent_id)
    assert known is not None
    assert known.labels == {"role": "web"}
    await wait_until(lambda: agent.tasks.keys() == {str(web_task.id)})

    # and without it again, the task is removed
    agent.labels = {}
    await peers.reconciler.reconcile(agent.agent_id)
    await wait_until(lambda: agent.tasks == {})
    # (the reconciler removes it at once; the dispatcher's removal may follow, idempotent)
    assert set(agent.deleted) == {str(web_task.id)}
