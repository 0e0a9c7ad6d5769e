"""The store on PostgreSQL, where SQLite has nothing alike: several servers on one database at
once (exactly-once reports, one lease holder, assignments, one schema creation), output holding
NUL characters, schema versions, the database out of reach and back, and a real
``tsched server --database postgresql://…`` process.

Every test has a fresh schema of its own (the ``database_url`` fixture, tests/databases.py) and
is skipped without ``TSCHED_TEST_DATABASE_URL``. The store-level suite (test_store.py and the
others marked ``databases``) runs on PostgreSQL too; this file is what only it needs.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
import trio

from databases import count_rows, execute, query, server_address, through_port, with_option
from processes import Tsched, free_port, wait_healthy
from taskscheduler_core import Agent, Execution, ExecutionStatus, Task, parse_frequency
from taskscheduler_server import AsyncStore, DatabaseUnavailable, ServerError, Store
from taskscheduler_server.database import open_postgresql
from taskscheduler_server.store import SCHEMA_VERSION
from tcp_proxy import TcpProxy

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def make_task(name: str | None = None) -> Task:
    return Task(
        id=uuid4(),
        command="echo hi",
        frequency=parse_frequency("every 10 seconds"),
        anchor=START,
        created_at=START,
        name=name,
    )


def make_execution(task_id: UUID, agent_id: UUID, offset: float, **fields: Any) -> Execution:
    moment = START + timedelta(seconds=offset)
    values: dict[str, Any] = {
        "task_id": task_id,
        "agent_id": agent_id,
        "scheduled_at": moment,
        "started_at": moment,
        "finished_at": moment + timedelta(seconds=1),
        "status": ExecutionStatus.SUCCEEDED,
        "exit_code": 0,
        "stdout": f"run {offset}",
    } | fields
    return Execution(**values)


def at_once(*calls: Callable[[], Any], timeout: float = 30.0) -> list[Any]:
    """Run ``calls`` in threads released together; their results in order (or the first error
    one raised)."""
    barrier = threading.Barrier(len(calls))
    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(index: int, call: Callable[[], Any]) -> None:
        try:
            barrier.wait(timeout)
            results[index] = call()
        except BaseException as error:  # handed to the test's thread below
            errors.append(error)

    threads = [
        threading.Thread(target=run, args=(index, call), daemon=True)
        for index, call in enumerate(calls)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
        assert not thread.is_alive(), "a call did not finish"
    if errors:
        raise errors[0]
    return results


# --- several servers on one database ------------------------------------------------------------


def test_two_servers_receiving_the_same_reports_at_once_store_each_once(database_url: str) -> None:
    with Store(database_url) as one, Store(database_url) as two:
        task = make_task()
        one.create_task(task)
        agents = [uuid4() for _ in range(3)]
        stored = 0
        for round_ in range(4):
            executions = [
                make_execution(task.id, agent, round_ * 1000 + n)
                for agent in agents
                for n in range(40)
            ]
            # The same reports, one server given them in order, the other backwards.
            first, second = at_once(
                partial(one.record_executions, executions),
                partial(two.record_executions, executions[::-1]),
            )
            for index, execution in enumerate(executions):
                told = [first[index], second[len(executions) - 1 - index]]
                assert sorted(told) == [False, True], (round_, execution)
            stored += len(executions)
            # and one report at a time, from each server at once
            single = make_execution(task.id, agents[0], round_ * 1000 + 999)
            answers = at_once(
                partial(one.record_execution, single), partial(two.record_execution, single)
            )
            assert sorted(answers) == [False, True]
            stored += 1
        assert count_rows(database_url, "executions") == stored
        assert len(one.executions(task.id)) == stored


def test_of_two_servers_racing_for_the_lease_exactly_one_holds_it(database_url: str) -> None:
    with Store(database_url) as one, Store(database_url) as two:
        for round_ in range(12):
            # each round starts after the previous holder's time ran out
            now = START + timedelta(seconds=10 * round_)
            until = now + timedelta(seconds=5)
            took = at_once(
                partial(one.acquire_lease, "leader", "one", now=now, expires_at=until),
                partial(two.acquire_lease, "leader", "two", now=now, expires_at=until),
            )
            assert sorted(took) == [False, True], round_
            winner = "one" if took[0] else "two"
            assert one.lease_holder("leader", now=now) == (winner, until)
            # the holder renews; the other cannot take it before it expires
            loser = two if winner == "one" else one
            assert not loser.acquire_lease(
                "leader", "other", now=now, expires_at=until + timedelta(seconds=1)
            )


def test_a_task_created_while_an_agent_registers_elsewhere_is_assigned_to_it(
    database_url: str,
) -> None:
    """Each side reads the other's table to assign: without serialising the two, each would
    miss the other's uncommitted row."""
    with Store(database_url) as one, Store(database_url) as two:
        for _ in range(12):
            task = make_task()
            agent = Agent(id=uuid4(), url="http://127.0.0.1:9", registered_at=START)
            at_once(partial(one.create_task, task), partial(two.upsert_agent, agent))
            assert agent.id in one.assignment_times(task.id)


def test_servers_opening_an_empty_schema_at_once_create_it_once(database_url: str) -> None:
    stores = at_once(*(lambda: Store(database_url) for _ in range(4)))
    try:
        assert query(database_url, 'SELECT "version" FROM "tsched_schema_version"') == [
            (SCHEMA_VERSION,)
        ]
        task = make_task()
        stores[0].create_task(task)
        assert all(store.get_task(task.id) == task for store in stores)
    finally:
        for store in stores:
            store.close()


def test_a_schema_of_another_version_is_refused_untouched(database_url: str) -> None:
    with Store(database_url) as store:
        store.create_task(make_task())
    for version, refusal in ((SCHEMA_VERSION + 1, "upgrade the server"), (3, "no taskscheduler")):
        execute(database_url, 'UPDATE "tsched_schema_version" SET "version" = ?', (version,))
        with pytest.raises(ServerError, match=f"schema version {version}.*{refusal}"):
            Store(database_url)
        assert query(database_url, 'SELECT "version" FROM "tsched_schema_version"') == [(version,)]
        assert count_rows(database_url, "tasks") == 1


def test_output_holding_nul_characters_round_trips_exactly(database_url: str) -> None:
    with Store(database_url) as store:
        task = make_task()
        store.create_task(task)
        agent = uuid4()
        stdout = "\x00binary\x00 tail é 😀\n\x00"
        execution = make_execution(task.id, agent, 10, stdout=stdout, stderr="\x00")
        assert store.record_execution(execution) is True
        assert store.executions(task.id) == [execution]  # through peewee's fields
        [run] = store.recent_runs(task.id, limit=1)  # through the hand-written reads
        assert run.executions == (execution,)
        assert store.find_executions(task.id) == [execution]
        # kept as the bytes of its UTF-8, which PostgreSQL's TEXT could not hold
        [(kind, raw)] = query(
            database_url, 'SELECT pg_typeof("stdout")::text, "stdout" FROM "executions"'
        )
        assert (kind, bytes(raw)) == ("bytea", stdout.encode())


def test_names_are_searched_as_python_folds_them(database_url: str) -> None:
    with Store(database_url) as store:
        straße, other = make_task(name="Straße nightly"), make_task(name="ÉTÉ")
        store.create_task(straße)
        store.create_task(other)
        assert [t.id for t in store.find_tasks(name="STRASSE")] == [straße.id]
        assert [t.id for t in store.find_tasks(name="été")] == [other.id]
        assert store.find_tasks(name="100%") == []  # a % is a character, not a pattern


def test_integers_of_64_bits_fit(database_url: str) -> None:
    with Store(database_url) as store:
        task = make_task()
        store.create_task(task)
        big = make_execution(
            task.id, uuid4(), 0, exit_code=-(2**63), attempt=2**63 - 1, stdout_dropped=2**63 - 1
        )
        assert store.record_execution(big) is True
        assert store.executions(task.id) == [big]


def test_an_agent_heard_from_by_another_server_meanwhile_is_not_marked_lost(
    database_url: str,
) -> None:
    import psycopg2

    with Store(database_url) as store:
        agent_id = uuid4()
        store.upsert_agent(Agent(id=agent_id, url="http://127.0.0.1:1", registered_at=START))
        heard = START + timedelta(minutes=5)
        # Another replica's heartbeat, written but not committed yet when mark_lost reads.
        other = psycopg2.connect(database_url)
        try:
            with other.cursor() as cursor:
                cursor.execute(
                    "UPDATE agents SET status = 'alive', last_seen_at = %s WHERE id = %s",
                    (
                        int((heard - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds() * 1e6),
                        agent_id.hex,
                    ),
                )
            marking = threading.Thread(
                target=lambda: found.extend(store.mark_lost(heard - timedelta(minutes=1)))
            )
            found: list[Agent] = []
            marking.start()
            time.sleep(0.3)  # mark_lost has read the agent as silent, and waits for the row
            other.commit()
            marking.join(10)
        finally:
            other.close()
        assert found == []
        agent = store.get_agent(agent_id)
        assert agent is not None
        assert (agent.status.value, agent.last_seen_at) == ("alive", heard)


@pytest.mark.parametrize(
    ("setting", "statement"),
    [
        # lock_timeout (55P03): another session holds a lock longer than the role allows
        ("-clock_timeout=100", "LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE"),
        # statement_timeout (57014): the same wait, cancelled by the statement's own limit
        ("-cstatement_timeout=100", "LOCK TABLE tasks IN ACCESS EXCLUSIVE MODE"),
    ],
)
def test_a_database_that_cannot_serve_now_is_unavailable_not_an_error(
    database_url: str, setting: str, statement: str
) -> None:
    import psycopg2

    with Store(with_option(database_url, setting)) as store:
        holder = psycopg2.connect(database_url)
        try:
            with holder.cursor() as cursor:
                cursor.execute(statement)
            with pytest.raises(DatabaseUnavailable):
                store.list_tasks()
        finally:
            holder.rollback()
            holder.close()
        assert store.list_tasks() == []  # and it serves again at once


async def test_calls_run_side_by_side_on_pooled_connections(database_url: str) -> None:
    with Store(database_url) as store:
        astore = AsyncStore(store)
        task = make_task()
        await astore.call(Store.create_task, task)
        gate = threading.Event()
        async with trio.open_nursery() as nursery:
            # a call holding its worker thread does not hold up the others
            nursery.start_soon(astore.call, lambda _: gate.wait(10))
            with trio.fail_after(5):
                for _ in range(3):
                    assert await astore.call(Store.get_task, task.id) == task
            gate.set()
        # every call gave its connection back to the pool
        assert store._db._in_use == {}


# --- the database out of reach ------------------------------------------------------------------


def sleep_in_a_transaction(store: Store) -> None:
    with store._db.atomic():
        store._execute("SELECT pg_sleep(5)")


async def test_a_database_out_of_reach_is_unavailable_then_back_without_a_restart(
    database_url: str,
) -> None:
    with (
        TcpProxy(*server_address(database_url)) as proxy,
        Store(through_port(database_url, proxy.url_port)) as store,
    ):
        astore = AsyncStore(store)
        task = make_task()
        store.create_task(task)
        agent = uuid4()

        async def busy_calls() -> None:
            """Several calls at once, so that the pool holds several connections."""
            async with trio.open_nursery() as nursery:
                for n in range(store.concurrency):
                    nursery.start_soon(partial(astore.call, Store.run_times, task.id, limit=1 + n))

        await busy_calls()
        assert proxy.connections > 1

        # a call under way when the connection goes
        began = time.monotonic()
        async with trio.open_nursery() as nursery:

            async def cut_soon() -> None:
                await trio.sleep(0.3)
                proxy.cut()

            nursery.start_soon(cut_soon)
            with pytest.raises(DatabaseUnavailable):
                await astore.call(Store._guarded, sleep_in_a_transaction)
        assert time.monotonic() - began < 4  # not the five seconds of the sleep

        # every call while it is out of reach, reads, writes and the group commit alike
        with pytest.raises(DatabaseUnavailable, match=r"refused|closed|connect"):
            store.get_task(task.id)
        with pytest.raises(DatabaseUnavailable):
            store.ping()
        with pytest.raises(DatabaseUnavailable):
            await astore.record_execution(make_execution(task.id, agent, 0))
        assert count_rows(database_url, "executions") == 0

        proxy.restore()
        # the broken connections are thrown away: everything works again at once
        await busy_calls()
        assert await astore.call(Store.get_task, task.id) == task
        assert await astore.record_execution(make_execution(task.id, agent, 0)) is True
        store.ping()


def test_a_database_that_never_answers_is_unavailable_after_the_connect_timeout(
    database_url: str,
) -> None:
    with TcpProxy(*server_address(database_url)) as proxy:
        url = through_port(database_url, proxy.url_port) + "&connect_timeout=1"
        with Store(url) as store:
            proxy.cut(hold=True)  # connections accepted, never answered
            began = time.monotonic()
            with pytest.raises(DatabaseUnavailable, match="timeout"):
                store.list_agents()
            assert time.monotonic() - began < 5
            proxy.restore()
            assert store.list_agents() == []


def test_a_transaction_a_stalled_server_left_open_is_ended_with_its_locks(
    database_url: str,
) -> None:
    """A server paused mid-transaction (here: asleep between two statements) would hold its
    locks until it woke; PostgreSQL ends the transaction after
    ``idle_in_transaction_session_timeout`` (30 s unless the URL says otherwise; here 0.3 s)."""
    assert "idle_in_transaction_session_timeout=30000" in str(
        open_postgresql(database_url).connect_params["options"]
    )
    url = with_option(database_url, "-cidle_in_transaction_session_timeout=300")
    with Store(url) as stalled, Store(url) as other:
        task = make_task()
        stalled.create_task(task)

        def stall(store: Store) -> None:
            with store._db.atomic():
                store._serialise_assignments()  # the lock that task creation waits for
                time.sleep(2)
                store._execute("SELECT 1")

        def create_meanwhile() -> float:
            time.sleep(0.1)  # once the stalled one holds the lock
            began = time.monotonic()
            other.create_task(make_task())
            return time.monotonic() - began

        failed, waited = at_once(
            partial(pytest.raises, DatabaseUnavailable, stalled._guarded, stall),
            create_meanwhile,
        )
        assert failed.type is DatabaseUnavailable
        assert waited < 1.2  # not until the stalled server woke up
        assert stalled.get_task(task.id) == task  # and the stalled one works again


def test_a_database_out_of_reach_at_start_is_one_error(database_url: str) -> None:
    with TcpProxy(*server_address(database_url)) as proxy:
        proxy.cut()
        with pytest.raises(DatabaseUnavailable, match="cannot reach the database") as caught:
            Store(through_port(database_url, proxy.url_port))
        assert "\n" not in str(caught.value)


# --- a real server process ----------------------------------------------------------------------


@pytest.mark.e2e
def test_a_server_process_on_postgresql_keeps_its_tasks_across_a_restart(
    database_url: str, tmp_path: Path
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started: list[Tsched] = []

    def start(args: Sequence[str], env: dict[str, str] | None = None) -> Tsched:
        process = Tsched(
            ["server", "--port", str(port), *args], log=tmp_path / f"{len(started)}.log", env=env
        )
        started.append(process)
        wait_healthy(url, process)
        return process

    try:
        first = start(["--database", database_url])
        created = httpx.post(
            f"{url}/api/v1/tasks/create",
            json={"command": "echo kept", "frequency": "every 1 hours"},
            timeout=10,
        )
        assert created.status_code == 201, created.text
        task_id = created.json()["command_id"]
        assert first.stop(signal.SIGTERM) == 0
        assert "(database postgresql://" in first.output()

        # again, given the database by its environment variable this time
        second = start([], env={"TSCHED_DATABASE": database_url})
        fetched = httpx.get(f"{url}/api/v1/tasks/{task_id}", timeout=10)
        assert fetched.status_code == 200, fetched.text
        assert fetched.json()["command"] == "echo kept"
        assert second.stop(signal.SIGTERM) == 0
    finally:
        for process in started:
            process.kill()
    assert count_rows(database_url, "tasks") == 1
