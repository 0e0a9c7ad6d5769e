"""Replicas sharing one database, beyond the lease loop itself (tests/server/test_lease.py):
the store's door apart for the lease and the probes, an agent that comes back through a replica
without the lease while the holder's lane to it backs off, and the count of failed work.

Real stores (two ``Store`` objects on one database play two replicas), real agent peers on
127.0.0.1, trio's real clock with short intervals.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID, uuid4

import httpx
import pytest
import trio

from taskscheduler_core import Agent, Task, parse_frequency
from taskscheduler_server import AsyncStore, Dispatcher, Leadership, ServerConfig, Store, serve
from taskscheduler_server.metrics import ServerMetrics
from taskscheduler_server.store import StoreSlot

pytestmark = pytest.mark.databases("sqlite", "postgresql")

T = TypeVar("T")
WaitUntil = Callable[..., Awaitable[None]]

#: A backoff far longer than any test: an agent reached within a test was not reached by it.
LONG = timedelta(seconds=60)


class CountingStore(AsyncStore):
    """A real store that counts its calls by method name (to check what a poll costs)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.calls: dict[str, int] = {}

    async def call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        name = getattr(method, "__name__", repr(method))
        self.calls[name] = self.calls.get(name, 0) + 1
        return await super().call(method, *args, **kwargs)


@pytest.fixture
async def replica_stores(
    database_location: Path | str,
) -> AsyncIterator[tuple[CountingStore, AsyncStore]]:
    """Two stores on one database: the holder's and another replica's."""
    holder, other = Store(database_location), Store(database_location)
    try:
        yield CountingStore(holder), AsyncStore(other)
    finally:
        holder.close()
        other.close()


def new_task(command: str = "echo hi") -> Task:
    now = datetime.now(UTC)
    return Task(
        id=uuid4(),
        command=command,
        frequency=parse_frequency("every 1 hours"),
        anchor=now,
        created_at=now,
    )


async def register(store: AsyncStore, agent_id: UUID, url: str) -> None:
    """A registration through ``store``'s replica, which pokes no other replica."""
    await store.call(Store.upsert_agent, Agent(id=agent_id, url=url, registered_at=utc()))


def utc() -> datetime:
    return datetime.now(UTC)


# --- the store's door apart -------------------------------------------------------------------


async def test_a_call_apart_passes_the_queue_on_postgresql_and_waits_its_turn_on_sqlite(
    store: Store, nursery: trio.Nursery
) -> None:
    astore = AsyncStore(store)
    release = threading.Event()
    entered = 0

    def stuck(_: Store) -> None:
        nonlocal entered
        entered += 1
        release.wait(10)

    ended: list[str] = []

    async def call(name: str, method: Callable[[Store], object]) -> None:
        await astore.call(method)
        ended.append(name)

    async def apart() -> None:
        await astore.call_apart(StoreSlot(), Store.ping)
        ended.append("apart")

    try:
        # Every place of the shared door taken, and one more call queued behind them.
        for n in range(store.concurrency):
            nursery.start_soon(call, f"stuck {n}", stuck)
        with trio.fail_after(5):
            while entered < store.concurrency:
                await trio.sleep(0.01)
        nursery.start_soon(call, "queued", Store.ping)
        nursery.start_soon(apart)
        await trio.sleep(0.3)
        if store.backend == "postgresql":
            assert ended == ["apart"]  # on a pooled connection of its own, past the queue
        else:
            assert ended == []  # SQLite's one connection: it waits for its turn
    finally:
        release.set()
    with trio.fail_after(5):
        while len(ended) < store.concurrency + 2:
            await trio.sleep(0.01)


# --- an agent back through another replica ------------------------------------------------------


async def test_an_agent_registering_through_another_replica_ends_the_holders_backoff(
    nursery: trio.Nursery,
    replica_stores: tuple[CountingStore, AsyncStore],
    serve_asgi: Any,
    fake_agent: Any,
    free_port: Callable[[], int],
    wait_until: WaitUntil,
) -> None:
    holder, other = replica_stores
    agent = fake_agent()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    await register(other, agent.agent_id, url)  # the agent is down: nothing listens there
    task = new_task()
    await other.call(Store.create_task, task)

    dispatcher = Dispatcher(
        holder, backoff_initial=LONG, backoff_max=LONG, poll_interval=timedelta(seconds=0.05)
    )
    reconcile: list[UUID] = []
    dispatcher.on_reachable_again = reconcile.append
    await nursery.start(dispatcher.run)
    # The push is refused at once; the lane backs off for 30 to 60 s. Its agent's contact
    # (the registration) came before that attempt: no reason to try again.
    await wait_until(lambda: holder.calls.get("last_seen", 0) >= 3)
    assert await holder.call(Store.undelivered, agent.agent_id)

    await serve_asgi(agent.app, port)  # the agent restarts ...
    await trio.sleep(0.3)
    assert agent.scheduled == []  # ... and nobody tells the holder
    assert reconcile == []

    await register(other, agent.agent_id, url)  # ... and registers through the other replica
    await wait_until(lambda: agent.task_ids == {str(task.id)}, timeout=2)
    await wait_until(lambda: reconcile == [agent.agent_id], timeout=2)
    assert not await holder.call(Store.undelivered, agent.agent_id)

    # Nothing backs off any more: the polls read no agent's contact.
    queries = holder.calls["last_seen"]
    await trio.sleep(0.3)
    assert holder.calls["last_seen"] == queries


@pytest.mark.databases("sqlite")  # timing-bound, and nothing in it differs by backend
async def test_an_agent_heard_from_but_unreachable_is_tried_once_per_contact_not_hammered(
    nursery: trio.Nursery,
    replica_stores: tuple[CountingStore, AsyncStore],
    serve_asgi: Any,
    fake_agent: Any,
    wait_until: WaitUntil,
) -> None:
    holder, other = replica_stores
    # Up, and heard from through the other replica, but refusing the holder's pushes (as an
    # agent behind a firewall would be unreachable): every attempt fails.
    agent = fake_agent(refuse=1000)
    url, _ = await serve_asgi(agent.app)
    await register(other, agent.agent_id, url)
    await other.call(Store.create_task, new_task())

    def attempts() -> int:
        return 1000 - int(agent.refuse)

    dispatcher = Dispatcher(
        holder,
        backoff_initial=timedelta(seconds=0.4),
        backoff_max=LONG,
        poll_interval=timedelta(seconds=0.05),
    )
    dispatcher.heard_from_interval = 1.0  # (5 s, a heartbeat interval, by default)
    reconcile: list[UUID] = []
    dispatcher.on_reachable_again = reconcile.append
    await nursery.start(dispatcher.run)
    # Its own backoff: 0.2-0.4 s, 0.4-0.8 s, 0.8-1.6 s, then at least 1.6 s before the 5th.
    # (Wide margins: the suite shares 2 cores with real processes; only a bound reached on
    # failure is tight.)
    await wait_until(lambda: attempts() == 4, timeout=10)

    for expected in (5, 6):
        await other.call(Store.heartbeat, agent.agent_id, utc())
        woken = trio.current_time()
        with trio.fail_after(1.2):  # once more, at once (its own backoff waits 1.6 s at least)
            while attempts() < expected:
                await trio.sleep(0.01)
        # The backoff went on where it was (the next wait is at least 1.6 s), and contacts
        # within heard_from_interval wake nothing: an agent that reports every second but is
        # unreachable is tried once per interval, not at every poll.
        for _ in range(4):
            await other.call(Store.heartbeat, agent.agent_id, utc())
            await trio.sleep(0.1)
        assert attempts() == expected
        await trio.sleep_until(woken + 1.0)
    assert reconcile == []  # never reachable: nothing to reconcile

    agent.refuse = 0
    await other.call(Store.heartbeat, agent.agent_id, utc())
    await wait_until(lambda: len(agent.scheduled) == 1, timeout=1.2)
    await wait_until(lambda: reconcile == [agent.agent_id], timeout=5)


async def test_an_agent_back_through_the_replica_without_the_lease_gets_its_tasks_at_once(
    database_location: Path | str,
    nursery: trio.Nursery,
    serve_asgi: Any,
    fake_agent: Any,
    free_port: Callable[[], int],
    wait_until: WaitUntil,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two real servers; the agent is down when a task is created, so the holder's lane backs
    off (for 15 to 30 s); it comes back and registers through the other replica."""

    def config(name: str) -> ServerConfig:
        return ServerConfig(
            database=database_location,
            port=0,
            replica_id=name,
            lease_duration=timedelta(seconds=1.5),
            backoff_initial=timedelta(seconds=30),
            backoff_max=timedelta(seconds=30),
            graceful_timeout=timedelta(seconds=0.5),
        )

    await nursery.start(serve, config("one"))  # takes the lease at its first try
    two: str = await nursery.start(serve, config("two"))
    agent = fake_agent()
    port = free_port()
    body = {"agent_id": str(agent.agent_id), "url": f"http://127.0.0.1:{port}"}
    async with httpx.AsyncClient(timeout=5) as http:
        lease = (await http.get(f"{two}/readyz")).json()["lease"]
        assert lease == {"replica": "two", "held": False, "holder": "one"}
        assert (await http.post(f"{two}/api/v1/agents/register", json=body)).status_code == 200
        created = await http.post(
            f"{two}/api/v1/tasks", json={"command": "true", "frequency": "every 1 hours"}
        )
        task_id = created.json()["command_id"]
        # The holder found the task at its next look, and could not reach the agent.
        await wait_until(
            lambda: any("cannot reach agent" in r.getMessage() for r in caplog.records),
            timeout=3,
        )

        await serve_asgi(agent.app, port)
        registered = await http.post(f"{two}/api/v1/agents/register", json=body)
        assert registered.status_code == 200
        began = trio.current_time()
        await wait_until(lambda: task_id in agent.task_ids, timeout=3)
        print(
            f"\nregistered through the replica without the lease, pushed in "
            f"{trio.current_time() - began:.3f} s"
        )
        # Reconciled too (its round comes only every 30 s), as through the holder.
        await wait_until(lambda: agent.listings >= 1, timeout=3)
        assert agent.identity_requests >= 1


# --- loud failures ------------------------------------------------------------------------------


def test_failures_of_the_work_done_once_are_counted_in_the_metrics() -> None:
    leadership = Leadership(replica_id="one")
    metrics = ServerMetrics(leadership)

    total = "tsched_lease_work_failures_total "  # not its _created sample

    def failures() -> list[str]:
        text = metrics.render(None).decode()
        return [line for line in text.splitlines() if line.startswith(total)]

    assert failures() == ["tsched_lease_work_failures_total 0.0"]
    leadership.work_failures = 2
    assert failures() == ["tsched_lease_work_failures_total 2.0"]
    assert failures() == ["tsched_lease_work_failures_total 2.0"]  # rendered again: the same
    leadership.work_failures = 3
    assert failures() == ["tsched_lease_work_failures_total 3.0"]
