"""The hand-written reads behind ``latest_output``, ``runs`` and ``executions`` on real databases
(SQLite and PostgreSQL), checked against what the rows say; and the dispatcher's fan-out to many
idle agents.

The reads are SQL written by hand for speed (see ``store.py``): these tests pin them to the
meaning the peewee queries had, filter by filter, including the pages past the first.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
import trio

from taskscheduler_core import (
    Agent,
    AgentStatus,
    Execution,
    ExecutionStatus,
    Task,
    Trigger,
    parse_frequency,
)
from taskscheduler_server import AsyncStore, Dispatcher, Store
from taskscheduler_server.outputs import FIRST_PAGE, latest_output_of

pytestmark = pytest.mark.databases("sqlite", "postgresql")

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
#: Longer than the runs of a test span: only the agents' reports complete a run.
GRACE = timedelta(hours=1)


def make_task(**fields: Any) -> Task:
    values: dict[str, Any] = {
        "id": uuid4(),
        "command": "echo hi",
        "frequency": parse_frequency("every 10 seconds"),
        "anchor": START,
        "created_at": START,
    }
    return Task(**(values | fields))


def make_execution(task: Task, agent_id: UUID, scheduled_at: datetime, **fields: Any) -> Execution:
    values: dict[str, Any] = {
        "task_id": task.id,
        "agent_id": agent_id,
        "scheduled_at": scheduled_at,
        "started_at": scheduled_at,
        "finished_at": scheduled_at + timedelta(seconds=1),
        "status": ExecutionStatus.SUCCEEDED,
        "exit_code": 0,
        "stdout": f"{agent_id} at {scheduled_at}",
    }
    return Execution(**(values | fields))


def two_agents(store: Store) -> list[UUID]:
    agents = sorted((uuid4(), uuid4()), key=str)
    for agent_id in agents:
        store.upsert_agent(Agent(id=agent_id, url="http://127.0.0.1:9", registered_at=START))
    return agents


def test_every_task_field_reads_back(store: Store) -> None:
    task = make_task(
        name="nightly",
        paused=True,
        updated_at=START + timedelta(seconds=1),
        timeout=3.5,
        retries=2,
        env={"A": "b"},
    )
    store.create_task(task)
    assert store.get_task(task.id) == task
    assert store.get_task(uuid4()) is None


def test_latest_output_looks_past_the_first_page(store: Store) -> None:
    first, second = two_agents(store)
    task = make_task()
    store.create_task(task)
    slots = [START + timedelta(seconds=10 * k) for k in range(1, 12)]
    # The oldest run is complete (both agents); the newer ones, more than a first page of
    # them, wait for the second agent inside the report grace.
    for slot in slots:
        store.record_execution(make_execution(task, first, slot))
    store.record_execution(make_execution(task, second, slots[0]))
    now = slots[-1] + timedelta(seconds=1)
    assert len(slots) - 1 > FIRST_PAGE

    shown = latest_output_of(store, task.id, now=now, report_grace=GRACE)
    assert shown is not None
    assert shown.scheduled_at == slots[0]
    assert [output.agent_id for output in shown.outputs] == [first, second]
    assert shown.outputs[0].stdout == f"{first} at {slots[0]}"

    # Once the grace has passed for the newest, it is the one shown, with its one output.
    later = latest_output_of(store, task.id, now=slots[-1] + GRACE, report_grace=GRACE)
    assert later is not None
    assert later.scheduled_at == slots[-1]
    assert [output.agent_id for output in later.outputs] == [first]


def test_latest_output_with_no_complete_run_is_empty(store: Store) -> None:
    first, _ = two_agents(store)
    task = make_task()
    store.create_task(task)
    slots = [START + timedelta(seconds=10 * k) for k in range(1, FIRST_PAGE + 3)]
    for slot in slots:
        store.record_execution(make_execution(task, first, slot))
    shown = latest_output_of(store, task.id, now=slots[-1], report_grace=GRACE)
    assert shown is not None
    assert shown.completion_time is None
    assert shown.outputs == ()
    assert latest_output_of(store, uuid4(), now=START, report_grace=GRACE) is None


def _stored(store: Store, task: Task, agents: list[UUID]) -> list[Execution]:
    """Runs at 10 fire times on two agents, the second agent retrying some; every status."""
    statuses = list(ExecutionStatus)
    executions = []
    for k in range(10):
        slot = START + timedelta(seconds=10 * (k + 1))
        for n, agent_id in enumerate(agents):
            attempts = 2 if n == 1 and k % 3 == 0 else 1
            for attempt in range(1, attempts + 1):
                execution = make_execution(
                    task,
                    agent_id,
                    slot,
                    status=statuses[(k + n + attempt) % len(statuses)],
                    attempt=attempt,
                    final=attempt == attempts,
                    trigger=Trigger.MANUAL if k == 4 else Trigger.SCHEDULE,
                    stderr="warning" if attempt == 2 else "",
                    stdout_dropped=k,
                )
                store.record_execution(execution)
                executions.append(execution)
    return executions


def _newest_first(executions: list[Execution]) -> list[Execution]:
    ordered = sorted(executions, key=lambda e: (str(e.agent_id), -e.attempt))
    return sorted(ordered, key=lambda e: e.scheduled_at, reverse=True)


def test_find_executions_filters_and_pages_as_the_rows_say(store: Store) -> None:
    agents = two_agents(store)
    task = make_task()
    store.create_task(task)
    executions = _stored(store, task, agents)
    other = make_task()
    store.create_task(other)
    store.record_execution(make_execution(other, agents[0], START + timedelta(seconds=10)))

    everything = _newest_first(executions)
    assert store.find_executions(task.id, limit=1000) == everything
    since, until = START + timedelta(seconds=30), START + timedelta(seconds=70)
    cases: list[tuple[dict[str, Any], Callable[[Execution], bool]]] = [
        ({"agent_id": agents[1]}, lambda e: e.agent_id == agents[1]),
        ({"status": ExecutionStatus.FAILED}, lambda e: e.status is ExecutionStatus.FAILED),
        ({"since": since}, lambda e: e.scheduled_at >= since),
        ({"until": until}, lambda e: e.scheduled_at < until),
        (
            {"agent_id": agents[0], "since": since, "until": until},
            lambda e: e.agent_id == agents[0] and since <= e.scheduled_at < until,
        ),
    ]
    for filters, keep in cases:
        assert store.find_executions(task.id, limit=1000, **filters) == [
            e for e in everything if keep(e)
        ], filters
    # Page by page with the cursor (the last execution's key), three at a time.
    pages: list[Execution] = []
    after = None
    for _ in range(len(everything)):
        page = store.find_executions(task.id, limit=3, after=after)
        pages += page
        if len(page) < 3:
            break
        after = page[-1].key
    assert pages == everything


def test_recent_runs_and_run_read_whole_runs(store: Store) -> None:
    agents = two_agents(store)
    task = make_task()
    store.create_task(task)
    executions = _stored(store, task, agents)
    slots = sorted({e.scheduled_at for e in executions}, reverse=True)

    runs = store.recent_runs(task.id, limit=4, before=slots[2])
    assert [run.scheduled_at for run in runs] == slots[3:7]
    for run in runs:
        mine = [e for e in executions if e.scheduled_at == run.scheduled_at]
        assert set(run.executions) == set(mine)
    bare = store.recent_runs(task.id, limit=1, with_output=False)[0]
    assert all(e.stdout == "" and e.stderr == "" for e in bare.executions)
    whole = store.run(task.id, slots[0])
    assert whole is not None
    assert set(whole.executions) == {e for e in executions if e.scheduled_at == slots[0]}
    assert store.run(task.id, START) is None
    # ran_only passes over the runs in which nothing ran: skipped, missed.
    ran = store.recent_runs(task.id, limit=100, ran_only=True)
    assert [run.scheduled_at for run in ran] == [
        slot for slot in slots if any(e.status.ran for e in executions if e.scheduled_at == slot)
    ]


def test_retention_and_assignment_reads(store: Store) -> None:
    first, second = two_agents(store)
    task = make_task()
    store.create_task(task)
    assert store.oldest_run_time(task.id) is None
    assert store.run_times(task.id, limit=5) == []
    slots = [START + timedelta(seconds=10 * k) for k in range(1, 8)]
    for slot in slots:
        store.record_execution(make_execution(task, first, slot))
        store.record_execution(make_execution(task, second, slot))
    assert store.oldest_run_time(task.id) == slots[0]
    assert store.run_times(task.id, limit=3) == slots[::-1][:3]

    assert store.assignment_spans(task.id) == {first: (START, None), second: (START, None)}
    assert store.lost_agents() == frozenset()
    assert {agent.id for agent in store.mark_lost(START)} == {first, second}
    assert store.lost_agents() == {first, second}
    assert {a.status for a in store.list_agents()} == {AgentStatus.LOST}


def test_undelivered_by_agent_is_undelivered_of_each(store: Store) -> None:
    first, second = two_agents(store)
    tasks = [make_task(created_at=START + timedelta(seconds=n)) for n in range(3)]
    for task in tasks:
        store.create_task(task)
    [delivered] = [a for a in store.undelivered(first) if a.task.id == tasks[1].id]
    assert store.mark_delivered(delivered, START + timedelta(seconds=5))
    nobody = uuid4()

    found = store.undelivered_by_agent([first, second, nobody])
    assert found == {
        first: store.undelivered(first),
        second: store.undelivered(second),
        nobody: [],
    }
    assert [a.task.id for a in found[first]] == [tasks[0].id, tasks[2].id]


async def test_a_new_task_reaches_many_idle_agents_once_each(
    nursery: trio.Nursery,
    astore: AsyncStore,
    serve_asgi: Any,
    fake_agent: Any,
    wait_until: Callable[..., Awaitable[None]],
) -> None:
    agents = [fake_agent() for _ in range(6)]
    for agent in agents:
        url, _ = await serve_asgi(agent.app)
        await astore.call(
            Store.upsert_agent,
            Agent(id=agent.agent_id, url=url, registered_at=datetime.now(UTC)),
        )
    dispatcher = Dispatcher(astore, agent_request_timeout=timedelta(seconds=2))
    await nursery.start(dispatcher.run)

    for command in ("echo one", "echo two", "echo three"):
        await astore.call(Store.create_task, make_task(command=command))
        dispatcher.notify()

        async def everywhere() -> bool:
            return not await astore.call(Store.undelivered)

        await wait_until(everywhere, timeout=10)
    # Each push once: the lanes were handed their work, and none read it again meanwhile.
    for agent in agents:
        assert sorted(body["command"] for body in agent.scheduled) == [
            "echo one",
            "echo three",
            "echo two",
        ]
