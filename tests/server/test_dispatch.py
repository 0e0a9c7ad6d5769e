"""The dispatcher against real agent peers served by hypercorn on 127.0.0.1, on trio's real clock
with short backoffs: delivery, retry until the agent is up, AVAILABLE_SERVERS resolution."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import attrs
import trio

from taskscheduler_core import Agent, Task, parse_frequency, parse_time
from taskscheduler_server import AsyncStore, Backoff, Dispatcher, Store

FAST = {
    "backoff_initial": timedelta(milliseconds=20),
    "backoff_max": timedelta(milliseconds=100),
    "agent_request_timeout": timedelta(seconds=2),
}

WaitUntil = Callable[..., Awaitable[None]]


def new_task(command: str = "echo hi") -> Task:
    now = datetime.now(UTC)
    return Task(
        id=uuid4(),
        command=command,
        frequency=parse_frequency("every 30 seconds"),
        anchor=now,
        created_at=now,
    )


# While a dispatcher runs, the store is only touched through the AsyncStore, as in the server.


async def register(astore: AsyncStore, agent_id: UUID, url: str) -> None:
    agent = Agent(id=agent_id, url=url, registered_at=datetime.now(UTC))
    await astore.call(Store.upsert_agent, agent)


async def create(astore: AsyncStore, task: Task) -> None:
    await astore.call(Store.create_task, task)


def all_delivered(astore: AsyncStore) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not await astore.call(Store.undelivered)

    return check


async def undelivered(astore: AsyncStore) -> list[Any]:
    return await astore.call(Store.undelivered)


async def start_dispatcher(nursery: trio.Nursery, astore: AsyncStore, **options: Any) -> Dispatcher:
    dispatcher = Dispatcher(astore, **(FAST | options))
    await nursery.start(dispatcher.run)
    return dispatcher


async def test_delivers_each_assignment_with_its_anchor(
    nursery: trio.Nursery,
    astore: AsyncStore,
    serve_asgi: Any,
    fake_agent: Any,
    wait_until: WaitUntil,
) -> None:
    agent = fake_agent()
    url, _ = await serve_asgi(agent.app)
    await register(astore, agent.agent_id, url)
    task = new_task()
    await create(astore, task)

    await start_dispatcher(nursery, astore)

    await wait_until(lambda: agent.scheduled)
    [body] = agent.scheduled
    assert body["task_id"] == str(task.id)
    assert body["command"] == "echo hi"
    assert body["frequency"] == "every 30 seconds"
    assert parse_time(body["anchor"]) == task.anchor
    await wait_until(all_delivered(astore))


async def test_new_work_is_delivered_at_once(
    nursery: trio.Nursery,
    astore: AsyncStore,
    serve_asgi: Any,
    fake_agent: Any,
    wait_until: WaitUntil,
) -> None:
    agent = fake_agent()
    url, _ = await serve_asgi(agent.app)
    # Long backoffs: only a wake-up, not a retry timer, can deliver within the wait below.
    dispatcher = await start_dispatcher(
        nursery, astore, backoff_initial=timedelta(seconds=60), backoff_max=timedelta(seconds=60)
    )

    await register(astore, agent.agent_id, url)
    dispatcher.notify(agent.agent_id)
    task = new_task()
    await create(astore, task)
    dispatcher.notify()
    await wait_until(lambda: agent.task_ids == {str(task.id)}, timeout=2)

    second = new_task("date")
    await create(astore, second)
    dispatcher.notify()
    await wait_until(lambda: agent.task_ids == {str(task.id), str(second.id)}, timeout=2)

    # A re-registration (the agent restarted) pushes everything again.
    await register(astore, agent.agent_id, url)
    dispatcher.notify(agent.agent_id)
    await wait_until(lambda: len(agent.scheduled) == 4, timeout=2)
    await wait_until(all_delivered(astore), timeout=2)


async def test_retries_until_the_agent_is_up(
    nursery: trio.Nursery,
    astore: AsyncStore,
    serve_asgi: Any,
    fake_agent: Any,
    free_port: Callable[[], int],
    wait_until: WaitUntil,
) -> None:
    agent = fake_agent()
    port = free_port()
    await register(astore, agent.agent_id, f"http://127.0.0.1:{port}")
    task = new_task()
    await create(astore, task)

    await start_dispatcher(nursery, astore)
    await trio.sleep(0.3)  # several refused attempts
    assert [a.task.id for a in await undelivered(astore)] == [task.id]

    await serve_asgi(agent.app, port)  # the agent comes up late
    await wait_until(lambda: agent.task_ids == {str(task.id)}, timeout=3)
    await wait_until(all_delivered(astore))


async def test_retries_an_agent_that_refuses_for_a_while(
    nursery: trio.Nursery,
    astore: AsyncStore,
    serve_asgi: Any,
    fake_agent: Any,
    wait_until: WaitUntil,
) -> None:
    agent = fake_agent(refuse=3)
    url, _ = await serve_asgi(agent.app)
    await register(astore, agent.agent_id, url)
    tasks = [new_task(), new_task("date")]
    for task in tasks:
        await create(astore, task)

    await start_dispatcher(nursery, astore)
    await wait_until(lambda: agent.task_ids == {str(task.id) for task in tasks}, timeout=3)
    await wait_until(all_delivered(astore))


async def test_a_hanging_agent_does_not_delay_the_others(
    nursery: trio.Nursery,
    astore: AsyncStore,
    serve_asgi: Any,
    fake_agent: Any,
    wait_until: WaitUntil,
) -> None:
    # A peer that accepts connections and never answers: each push to it takes the timeout.
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    hanging_url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    healthy = fake_agent()
    healthy_url, _ = await serve_asgi(healthy.app)
    await register(astore, uuid4(), hanging_url)
    await register(astore, healthy.agent_id, healthy_url)
    tasks = [new_task(f"echo {n}") for n in range(3)]
    for task in tasks:
        await create(astore, task)

    with trio.fail_after(1.5):  # well under one agent_request_timeout (2 s)
        await start_dispatcher(nursery, astore)
        await wait_until(lambda: len(healthy.task_ids) == 3)

        async def only_the_hanging_one_waits() -> bool:
            return {a.agent_url for a in await undelivered(astore)} == {hanging_url}

        await wait_until(only_the_hanging_one_waits)
    listener.close()


async def test_resolves_available_servers_and_delivers(
    nursery: trio.Nursery,
    astore: AsyncStore,
    serve_asgi: Any,
    fake_agent: Any,
    free_port: Callable[[], int],
    wait_until: WaitUntil,
) -> None:
    task = new_task()
    await create(astore, task)  # before the server knows any agent
    up = fake_agent()
    up_url, _ = await serve_asgi(up.app)
    late = fake_agent()
    late_port = free_port()
    late_url = f"http://127.0.0.1:{late_port}"

    await start_dispatcher(nursery, astore, available_agents=(up_url + "/", late_url))

    await wait_until(lambda: up.task_ids == {str(task.id)})
    [record] = await astore.call(Store.list_agents)
    assert (record.id, record.url) == (up.agent_id, up_url)

    await trio.sleep(0.2)  # the late agent is retried while it is down
    await serve_asgi(late.app, late_port)
    await wait_until(lambda: late.task_ids == {str(task.id)}, timeout=3)
    agents = await astore.call(Store.list_agents)
    assert {a.id for a in agents} == {up.agent_id, late.agent_id}
    assert late.identity_requests == 1
    await wait_until(all_delivered(astore))


async def test_undelivered_work_survives_a_restart(
    astore: AsyncStore,
    serve_asgi: Any,
    fake_agent: Any,
    free_port: Callable[[], int],
    wait_until: WaitUntil,
) -> None:
    agent = fake_agent()
    port = free_port()
    await register(astore, agent.agent_id, f"http://127.0.0.1:{port}")
    task = new_task()
    await create(astore, task)

    async with trio.open_nursery() as first_life:
        await start_dispatcher(first_life, astore)
        await trio.sleep(0.1)
        first_life.cancel_scope.cancel()
    assert await undelivered(astore) != []

    await serve_asgi(agent.app, port)
    async with trio.open_nursery() as second_life:
        await start_dispatcher(second_life, astore)
        await wait_until(lambda: agent.task_ids == {str(task.id)})
        second_life.cancel_scope.cancel()


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    backoff = Backoff(timedelta(seconds=1), timedelta(seconds=8))
    delays = [backoff.next_delay() for _ in range(6)]
    for delay, nominal in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
        assert nominal / 2 <= delay <= nominal
    backoff.reset()
    assert backoff.next_delay() <= 1


async def test_an_agent_url_httpx_cannot_encode_does_not_stop_the_others(
    nursery: trio.Nursery,
    astore: AsyncStore,
    serve_asgi: Any,
    fake_agent: Any,
    wait_until: WaitUntil,
) -> None:
    # "xn--a" passes the registration check but is no valid IDNA label for httpx: pushing to it
    # raises a ValueError, which must count as "unreachable", not end the dispatcher.
    await register(astore, uuid4(), "http://xn--a:8081")
    agent = fake_agent()
    url, _ = await serve_asgi(agent.app)
    await register(astore, agent.agent_id, url)
    await create(astore, new_task())
    await start_dispatcher(nursery, astore)
    await wait_until(lambda: agent.scheduled)
    await trio.sleep(0.2)  # a few failed attempts at the bad one: the dispatcher still runs
    assert len(await undelivered(astore)) == 1


# --- removals and manual runs ------------------------------------------------------------------


async def test_an_ended_assignment_is_delivered_as_a_removal(
    nursery: trio.Nursery,
    astore: AsyncStore,
    serve_asgi: Any,
    fake_agent: Any,
    wait_until: WaitUntil,
) -> None:
    agent = fake_agent()
    url, _ = await serve_asgi(agent.app)
    await register(astore, agent.agent_id, url)
    task = new_task()
    await create(astore, task)
    dispatcher = await start_dispatcher(nursery, astore)
    await wait_until(lambda: agent.task_ids == {str(task.id)})
    await wait_until(all_delivered(astore))

    deleted_at = datetime.now(UTC)
    await astore.call(
        Store.change_task, task.id, lambda t: attrs.evolve(t, deleted_at=deleted_at), now=deleted_at
    )
    dispatcher.notify()
    await wait_until(lambda: agent.deleted == [str(task.id)])
    await wait_until(all_delivered(astore))
    assert agent.tasks == {}
    # acknowledged once: nothing more is sent, even when the agent registers again
    await register(astore, agent.agent_id, url)
    dispatcher.notify(agent.agent_id)
    await trio.sleep(0.2)
    assert (agent.deleted, len(agent.scheduled)) == ([str(task.id)], 1)


async def test_a_manual_run_follows_the_push_of_its_task(
    nursery: trio.Nursery,
    astore: AsyncStore,
    serve_asgi: Any,
    fake_agent: Any,
    wait_until: WaitUntil,
) -> None:
    agent = fake_agent()
    url, _ = await serve_asgi(agent.app)
    await register(astore, agent.agent_id, url)
    task = new_task()
    await create(astore, task)
    dispatcher = await start_dispatcher(nursery, astore)
    at = datetime.now(UTC)
    # handed over before the task reached the agent: it gets the task, then the run
    dispatcher.run_now(task.id, at, [agent.agent_id], until=at + timedelta(seconds=30))
    await wait_until(lambda: agent.runs)
    assert agent.events == [("schedule", str(task.id)), ("run", str(task.id))]
    assert [(task_id, parse_time(when)) for task_id, when in agent.runs] == [(str(task.id), at)]

    # an agent that lost the task (its disk was wiped) answers task_not_found: it is pushed
    # the task again, then the run
    agent.tasks.clear()
    later = at + timedelta(seconds=1)
    dispatcher.run_now(task.id, later, [agent.agent_id], until=later + timedelta(seconds=30))
    await wait_until(lambda: len(agent.runs) == 2)
    assert agent.events[2:] == [("schedule", str(task.id)), ("run", str(task.id))]
    assert parse_time(agent.runs[1][1]) == later
    await wait_until(all_delivered(astore))


async def test_a_manual_run_is_given_up_after_its_deadline(
    nursery: trio.Nursery,
    astore: AsyncStore,
    serve_asgi: Any,
    fake_agent: Any,
    free_port: Callable[[], int],
    wait_until: WaitUntil,
) -> None:
    agent = fake_agent()
    port = free_port()
    await register(astore, agent.agent_id, f"http://127.0.0.1:{port}")
    task = new_task()
    await create(astore, task)
    dispatcher = await start_dispatcher(nursery, astore)
    now = datetime.now(UTC)
    dispatcher.run_now(task.id, now, [agent.agent_id], until=now + timedelta(milliseconds=200))
    unknown = uuid4()  # an agent the store does not know: nothing to send it to
    dispatcher.run_now(task.id, now, [unknown], until=now + timedelta(seconds=30))
    await trio.sleep(0.4)  # the agent is down past the run's deadline
    await serve_asgi(agent.app, port)
    await wait_until(lambda: agent.task_ids == {str(task.id)})
    await wait_until(all_delivered(astore))
    await trio.sleep(0.2)
    assert agent.runs == []


async def test_available_servers_agents_are_registered_with_their_labels(
    nursery: trio.Nursery,
    astore: AsyncStore,
    serve_asgi: Any,
    fake_agent: Any,
    wait_until: WaitUntil,
) -> None:
    agent = fake_agent(labels={"role": "batch"})
    url, _ = await serve_asgi(agent.app)
    await start_dispatcher(nursery, astore, available_agents=(url,))

    async def resolved() -> bool:
        known = await astore.call(Store.get_agent, agent.agent_id)
        return known is not None and known.labels == {"role": "batch"}

    await wait_until(resolved)
