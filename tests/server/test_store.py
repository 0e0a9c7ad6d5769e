"""The store on a real SQLite file and a real PostgreSQL schema: assignment rules, idempotence,
exact times, reopening."""

from __future__ import annotations

import inspect
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest
import trio

from taskscheduler_core import (
    Agent,
    Execution,
    ExecutionStatus,
    Task,
    parse_frequency,
)
from taskscheduler_server import AsyncStore, DatabaseUnavailable, ServerError, Store, TaskNotFound

pytestmark = pytest.mark.databases("sqlite", "postgresql")

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def make_task(
    at: datetime = START, command: str = "echo hi", every: str = "every 10 seconds"
) -> Task:
    return Task(
        id=uuid4(), command=command, frequency=parse_frequency(every), anchor=at, created_at=at
    )


def make_agent(at: datetime = START, url: str = "http://127.0.0.1:9") -> Agent:
    return Agent(id=uuid4(), url=url, registered_at=at)


def make_execution(
    task: Task, agent_id: UUID, scheduled_at: datetime, **fields: object
) -> Execution:
    values: dict[str, object] = {
        "task_id": task.id,
        "agent_id": agent_id,
        "scheduled_at": scheduled_at,
        "started_at": scheduled_at,
        "finished_at": scheduled_at + timedelta(seconds=1),
        "status": ExecutionStatus.SUCCEEDED,
        "exit_code": 0,
        "stdout": "out",
    }
    values.update(fields)
    return Execution(**values)  # type: ignore[arg-type]


@pytest.mark.databases("sqlite")
def test_schema_and_durability_settings(store: Store) -> None:
    connection = sqlite3.connect(store.path)
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
    assert {"tasks", "agents", "assignments", "executions"} <= tables
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    connection.close()
    pragma = store._db.pragma  # the store's own connection carries the per-connection ones
    assert pragma("synchronous") == 2  # FULL
    assert pragma("foreign_keys") == 1
    assert pragma("busy_timeout") == 5000


def test_task_round_trips_exactly(store: Store) -> None:
    task = make_task(START + timedelta(microseconds=123_457))
    store.create_task(task)
    assert store.get_task(task.id) == task
    assert store.get_task(uuid4()) is None
    assert store.list_tasks() == [task]


def test_new_task_is_assigned_to_every_known_agent(store: Store) -> None:
    first, second = make_agent(url="http://127.0.0.1:1"), make_agent(url="http://127.0.0.1:2")
    store.upsert_agent(first)
    store.upsert_agent(second)
    task = make_task(START + timedelta(minutes=1))

    assignments = store.create_task(task)

    assert {(a.agent_id, a.agent_url) for a in assignments} == {
        (first.id, first.url),
        (second.id, second.url),
    }
    assert all(a.assigned_at == task.created_at and not a.delivered for a in assignments)
    assert {(a.task.id, a.agent_id) for a in store.undelivered()} == {
        (task.id, first.id),
        (task.id, second.id),
    }
    assert all(a.task == task for a in store.undelivered())
    assert store.agents_awaiting_delivery() == {first.id, second.id}


def test_task_with_no_agents_has_no_assignments(store: Store) -> None:
    assert store.create_task(make_task()) == []
    assert store.undelivered() == []


def test_new_agent_is_assigned_every_existing_task_from_its_registration(store: Store) -> None:
    tasks = [make_task(), make_task(command="date")]
    for task in tasks:
        store.create_task(task)
    later = START + timedelta(minutes=5)
    agent = make_agent(later)

    record = store.upsert_agent(agent)

    assert (record.id, record.url, record.registered_at, record.last_seen_at) == (
        agent.id,
        agent.url,
        later,
        later,
    )
    pending = store.undelivered(agent.id)
    assert {a.task.id for a in pending} == {task.id for task in tasks}
    assert {a.assigned_at for a in pending} == {later}
    for task in tasks:
        assert store.assignment_times(task.id) == {agent.id: later}


def test_upsert_is_idempotent_and_reregistration_asks_for_delivery_again(store: Store) -> None:
    agent = make_agent()
    store.upsert_agent(agent)
    task = make_task(START + timedelta(seconds=1))
    [assignment] = store.create_task(task)
    assert store.mark_delivered(assignment, START + timedelta(seconds=2))
    assert store.undelivered() == []

    again = Agent(
        id=agent.id, url="http://127.0.0.1:7777", registered_at=START + timedelta(hours=1)
    )
    record = store.upsert_agent(again)

    assert store.list_agents() == [record]
    assert record.registered_at == START  # first heard of
    assert record.last_seen_at == START + timedelta(hours=1)
    assert record.url == "http://127.0.0.1:7777"
    [pending] = store.undelivered()
    assert pending.agent_url == "http://127.0.0.1:7777"
    assert pending.revision == assignment.revision + 1
    # The assignment keeps its time: the agent was expected for every slot since then.
    assert store.assignment_times(task.id) == {agent.id: START + timedelta(seconds=1)}


def test_a_push_from_before_a_reregistration_does_not_mark_it_delivered(store: Store) -> None:
    agent = make_agent()
    store.upsert_agent(agent)
    [in_flight] = store.create_task(make_task())
    store.upsert_agent(agent)  # the agent restarted while the push was in flight

    assert not store.mark_delivered(in_flight, START)
    [current] = store.undelivered()
    assert store.mark_delivered(current, START)
    assert not store.mark_delivered(current, START)  # already delivered
    assert store.undelivered() == []
    assert store.agents_awaiting_delivery() == set()


def test_expected_agents_are_those_assigned_before_the_slot(store: Store) -> None:
    early = make_agent()
    store.upsert_agent(early)
    task = make_task()
    store.create_task(task)
    late = make_agent(START + timedelta(seconds=15))
    store.upsert_agent(late)

    assert store.expected_agents(task.id, START) == frozenset()
    assert store.expected_agents(task.id, START + timedelta(seconds=10)) == {early.id}
    assert store.expected_agents(task.id, START + timedelta(seconds=15)) == {early.id}
    assert store.expected_agents(task.id, START + timedelta(seconds=20)) == {early.id, late.id}


def test_record_execution_is_idempotent(store: Store) -> None:
    task = make_task()
    store.create_task(task)
    agent_id = uuid4()  # never registered: accepted all the same
    slot = START + timedelta(seconds=10)
    execution = make_execution(task, agent_id, slot, stdout="first")

    assert store.record_execution(execution) is True
    assert store.record_execution(execution) is False
    # A repeat that differs (a retried report, re-read from disk) changes nothing either.
    assert store.record_execution(make_execution(task, agent_id, slot, stdout="second")) is False
    assert store.executions(task.id) == [execution]


def test_record_execution_for_an_unknown_task_fails(store: Store) -> None:
    with pytest.raises(TaskNotFound):
        store.record_execution(make_execution(make_task(), uuid4(), START))


def test_every_execution_field_round_trips(store: Store) -> None:
    task = make_task()
    store.create_task(task)
    execution = make_execution(
        task,
        uuid4(),
        START + timedelta(seconds=10, microseconds=1),
        started_at=START + timedelta(seconds=10, microseconds=250),
        finished_at=START + timedelta(seconds=12, microseconds=999_999),
        status=ExecutionStatus.TIMED_OUT,
        exit_code=-9,
        stdout="tail of it \x00 with a NUL, é, 😀",
        stderr="boom\n",
        stdout_dropped=2**40,
        stderr_dropped=3,
    )
    store.record_execution(execution)
    assert store.executions(task.id) == [execution]
    [run] = store.recent_runs(task.id, limit=5)
    assert run.executions == (execution,)


def test_runs_one_microsecond_apart_are_distinct(store: Store) -> None:
    task = make_task()
    store.create_task(task)
    agent_id = uuid4()
    slot = START + timedelta(seconds=10)
    store.record_execution(make_execution(task, agent_id, slot))
    store.record_execution(make_execution(task, agent_id, slot + timedelta(microseconds=1)))
    runs = store.recent_runs(task.id, limit=10)
    assert [run.scheduled_at for run in runs] == [slot + timedelta(microseconds=1), slot]


def test_recent_runs_newest_first_with_limit_and_paging(store: Store) -> None:
    task = make_task()
    other = make_task(command="date")
    store.create_task(task)
    store.create_task(other)
    agents = sorted([uuid4(), uuid4()], key=str)
    slots = [START + timedelta(seconds=10 * k) for k in range(1, 6)]
    for slot in slots:
        for agent_id in agents:
            store.record_execution(make_execution(task, agent_id, slot, stdout=f"{slot:%S}"))
    store.record_execution(make_execution(other, agents[0], slots[-1] + timedelta(seconds=1)))

    runs = store.recent_runs(task.id, limit=2)
    assert [run.scheduled_at for run in runs] == [slots[4], slots[3]]
    assert [e.agent_id for e in runs[0].executions] == agents
    assert runs[0].executions[0].stdout == "50"

    older = store.recent_runs(task.id, limit=2, before=slots[3])
    assert [run.scheduled_at for run in older] == [slots[2], slots[1]]

    bare = store.recent_runs(task.id, limit=1, with_output=False)
    assert [e.stdout for e in bare[0].executions] == ["", ""]
    assert bare[0].completion_time == runs[0].completion_time

    full = store.run(task.id, slots[0])
    assert full is not None
    assert [e.stdout for e in full.executions] == ["10", "10"]
    assert store.run(task.id, START) is None
    assert store.recent_runs(uuid4(), limit=3) == []


def test_everything_survives_reopening_the_file(database_location: Path | str) -> None:
    path = database_location
    agent = make_agent()
    task = make_task(START + timedelta(seconds=1))
    delivered_task = make_task(START + timedelta(seconds=2))
    with Store(path) as store:
        store.upsert_agent(agent)
        store.create_task(task)
        [assignment] = store.create_task(delivered_task)
        store.mark_delivered(assignment, START + timedelta(seconds=3))
        execution = make_execution(task, agent.id, START + timedelta(seconds=11))
        store.record_execution(execution)

    with Store(path) as reopened:
        assert reopened.list_tasks() == [task, delivered_task]
        [record] = reopened.list_agents()
        assert record.id == agent.id
        assert [a.task for a in reopened.undelivered()] == [task]
        assert reopened.executions(task.id) == [execution]
        assert reopened.record_execution(execution) is False


def test_two_stores_on_two_files_do_not_mix(tmp_path: Path) -> None:
    with Store(tmp_path / "a.sqlite") as a, Store(tmp_path / "b.sqlite") as b:
        task = make_task()
        a.create_task(task)
        assert b.get_task(task.id) is None
        assert a.get_task(task.id) == task


def test_a_file_that_is_not_a_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"this is not sqlite " * 100)
    with pytest.raises(ServerError, match="cannot open the database"):
        Store(path)


async def test_async_store_runs_calls_in_a_thread_one_at_a_time(store: Store) -> None:
    async_store = AsyncStore(store)
    tasks = [make_task(command=f"echo {n}") for n in range(20)]
    async with trio.open_nursery() as nursery:
        for task in tasks:
            nursery.start_soon(async_store.call, Store.create_task, task)
    assert {t.id for t in await async_store.call(Store.list_tasks)} == {t.id for t in tasks}
    await async_store.aclose()


def test_recent_runs_ran_only_passes_over_any_number_of_skipped_runs(store: Store) -> None:
    task = make_task()
    store.create_task(task)
    ran, other = uuid4(), uuid4()
    store.record_execution(make_execution(task, ran, START + timedelta(seconds=1), stdout="long"))
    # the other agent skipped that slot while its previous run went on: still a run that ran
    skipped_there = make_execution(
        task, other, START + timedelta(seconds=1), status=ExecutionStatus.SKIPPED
    )
    store.record_execution(skipped_there)
    for k in range(2, 302):  # a command that hangs leaves skipped runs behind it
        status = ExecutionStatus.SKIPPED if k % 2 else ExecutionStatus.MISSED
        store.record_execution(
            make_execution(task, ran, START + timedelta(seconds=k), status=status)
        )
    [run] = store.recent_runs(task.id, limit=1, ran_only=True)
    assert run.scheduled_at == START + timedelta(seconds=1)
    assert {e.agent_id for e in run.executions} == {ran, other}
    assert len(store.recent_runs(task.id, limit=1000)) == 301


@pytest.mark.databases("sqlite")  # the same class on both: no database needed
def test_every_public_method_is_one_guarded_call_on_the_database() -> None:
    """On PostgreSQL a method that skipped Store._guarded would run without a connection (or
    leak one), and its failures would not be DatabaseUnavailable."""
    from taskscheduler_server.store import _UNGUARDED

    methods = {
        name: member
        for name, member in vars(Store).items()
        if not name.startswith("_") and inspect.isfunction(member)
    }
    assert len(methods) > 40
    guarded = {
        name
        for name, member in methods.items()
        if member.__name__ == name and hasattr(member, "__wrapped__")
    }
    assert guarded == methods.keys() - _UNGUARDED
    assert set(_UNGUARDED) == {"close"}


@pytest.mark.databases("sqlite")
def test_a_file_locked_by_another_process_is_unavailable_not_an_error(tmp_path: Path) -> None:
    path = tmp_path / "server.sqlite3"
    with Store(path) as store:
        # The busy timeout lowered from 5 s, for a quick test (the store waits that long for
        # a lock another process holds, then gives up).
        store._db.execute_sql("PRAGMA busy_timeout = 50")  # type: ignore[no-untyped-call]
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN EXCLUSIVE")  # (WAL: readers go on, a writer waits)
            with pytest.raises(DatabaseUnavailable, match="locked"):
                store.create_task(make_task())
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert store.list_tasks() == []  # nothing half-written
        task = make_task()
        store.create_task(task)  # and it writes again at once
        assert store.list_tasks() == [task]
