"""Many reports at once: ``POST /api/v1/executions``, ``Store.record_executions`` and the group
commit of ``AsyncStore`` (concurrent reports share one transaction, each gets its own result).

Everything runs on a real SQLite file and on a real PostgreSQL schema; the endpoint in-process
(``httpx.ASGITransport``) and, once, over real HTTP on 127.0.0.1 with many concurrent reporters.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import httpx
import peewee
import pytest
import trio
import trio.testing

from databases import count_rows
from taskscheduler_core import (
    MAX_BATCH_EXECUTIONS,
    Agent,
    AgentStatus,
    Execution,
    ExecutionStatus,
    Task,
    format_time,
    parse_frequency,
)
from taskscheduler_server import AsyncStore, ServerConfig, Store, TaskNotFound, create_app

pytestmark = pytest.mark.databases("sqlite", "postgresql")

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
JOIN = "join-token-for-batch-tests"
ADMIN = "admin-token-for-batch-tests"


def make_task(store: Store, **fields: Any) -> Task:
    task = Task(
        id=uuid4(),
        command="echo hi",
        frequency=parse_frequency("every 10 seconds"),
        anchor=START,
        created_at=START,
        **fields,
    )
    store.create_task(task)
    return task


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
        "stdout": "out",
    } | fields
    return Execution(**values)


def item(task_id: UUID | str, agent_id: UUID, offset: float, **fields: Any) -> dict[str, Any]:
    """One item of a batch body: a report of task ``task_id`` scheduled ``offset`` s after START."""
    return {
        "task_id": str(task_id),
        "server_id": str(agent_id),
        "scheduled_at": format_time(START + timedelta(seconds=offset)),
        "stdout": f"run {offset}",
    } | fields


def acknowledged(duplicate: bool = False) -> dict[str, Any]:
    return {"acknowledged": True, "duplicate": duplicate, "error": None}


def refused(code: str, field: str) -> Callable[[dict[str, Any]], bool]:
    def matches(result: dict[str, Any]) -> bool:
        error = result["error"]
        return (
            result["acknowledged"] is False
            and error["code"] == code
            and error["field"] == field
            and bool(error["message"])
        )

    return matches


def stored_count(store: Store) -> int:
    """The executions committed, read on a connection of the test's own."""
    return count_rows(store.location, "executions")


# --- Store.record_executions -----------------------------------------------------------------


def test_record_executions_answers_each_in_order_in_one_transaction(store: Store) -> None:
    task, agent = make_task(store), uuid4()
    unknown = uuid4()
    first = make_execution(task.id, agent, 0, stdout="first")
    results = store.record_executions(
        [
            first,
            make_execution(unknown, agent, 1),
            make_execution(task.id, agent, 0, stdout="second"),  # same key as `first`
            make_execution(task.id, agent, 0, attempt=2),
            make_execution(task.id, uuid4(), 0),
        ]
    )
    assert results[0] is True
    assert isinstance(results[1], TaskNotFound)
    assert results[1].task_id == unknown
    assert results[2:] == [False, True, True]
    # The first of two reports with one key is the one stored; a repeat later is a duplicate.
    stored = {(e.agent_id, e.attempt): e.stdout for e in store.executions(task.id)}
    assert stored[(agent, 1)] == "first"
    assert len(stored) == 3
    assert store.record_executions([first]) == [False]
    assert store.record_executions([]) == []


def test_record_executions_round_trips_every_field(store: Store) -> None:
    task, agent = make_task(store), uuid4()
    execution = make_execution(
        task.id,
        agent,
        0.123456,
        status=ExecutionStatus.TIMED_OUT,
        exit_code=None,
        stdout="o" * 10,
        stderr="é",
        stdout_dropped=2**62,
        stderr_dropped=3,
        attempt=4,
        final=False,
    )
    assert store.record_executions([execution]) == [True]
    assert store.executions(task.id) == [execution]


def test_the_hand_written_columns_are_those_of_the_table(store: Store) -> None:
    from taskscheduler_server.store import _EXECUTION_COLUMNS

    fields = store._tables.execution._meta.sorted_fields
    assert set(_EXECUTION_COLUMNS) == {field.column_name for field in fields} - {"id"}


def test_every_reporting_agent_is_seen_once_at_its_latest_time(store: Store) -> None:
    task = make_task(store)
    one, two = (Agent(id=uuid4(), url="http://127.0.0.1:9", registered_at=START) for _ in range(2))
    store.upsert_agent(one)
    store.upsert_agent(two)
    store.mark_lost(START + timedelta(seconds=1))
    late, later = START + timedelta(seconds=5), START + timedelta(seconds=9)
    results = store.record_executions(
        [
            make_execution(task.id, one.id, 0),
            make_execution(task.id, one.id, 1),
            make_execution(uuid4(), two.id, 2),  # an unknown task: not a sign of life
        ],
        seen_at=[later, late, later],
    )
    assert results[:2] == [True, True]
    seen = store.get_agent(one.id)
    assert seen is not None
    assert (seen.status, seen.last_seen_at) == (AgentStatus.ALIVE, later)
    silent = store.get_agent(two.id)
    assert silent is not None
    assert silent.status is AgentStatus.LOST
    # A slow report carrying an earlier time never moves last_seen_at back.
    store.record_executions([make_execution(task.id, one.id, 3)], seen_at=late)
    seen = store.get_agent(one.id)
    assert seen is not None
    assert seen.last_seen_at == later


def test_record_executions_takes_more_than_one_statement_of_rows(store: Store) -> None:
    task, agent = make_task(store), uuid4()
    executions = [make_execution(task.id, agent, n) for n in range(1200)]
    assert store.record_executions(executions) == [True] * 1200
    assert store.record_executions(executions[::-1]) == [False] * 1200
    assert stored_count(store) == 1200


# --- the group commit of AsyncStore ----------------------------------------------------------


@pytest.fixture
def flushes(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every ``Store.record_executions`` call on ``store`` (one transaction each).

    Only this test's store: the client tests' session-wide stack runs in a thread of this
    process, and its agents go on reporting to its own store while later tests run.
    """
    sizes: list[int] = []
    original = Store.record_executions

    def counted(self: Store, executions: Any, **kwargs: Any) -> list[bool | TaskNotFound]:
        if self is store:
            sizes.append(len(executions))
        return original(self, executions, **kwargs)

    monkeypatch.setattr(Store, "record_executions", counted)
    return sizes


async def test_concurrent_reports_share_transactions_and_each_gets_its_result(
    store: Store, astore: AsyncStore, flushes: list[int]
) -> None:
    task, agent = make_task(store), uuid4()
    executions = [make_execution(task.id, agent, n) for n in range(20)]
    executions.append(executions[3])  # a repeat, queued with the first
    results: dict[int, bool] = {}

    async def report(index: int) -> None:
        results[index] = await astore.record_execution(executions[index], seen_at=START)

    async with trio.open_nursery() as nursery:
        for index in range(len(executions)):
            nursery.start_soon(report, index)
    assert sum(results.values()) == 20  # every execution new once, the repeat a duplicate
    assert sorted(flushes, reverse=True)[0] > 1  # some writes were committed together
    assert sum(flushes) == len(executions)
    assert stored_count(store) == 20


async def test_a_failing_write_fails_alone(
    store: Store, astore: AsyncStore, flushes: list[int]
) -> None:
    task, agent = make_task(store), uuid4()
    # The database refuses an integer over 64 bits (SQLite's driver with OverflowError,
    # PostgreSQL with a DataError): this write fails, in whatever batch it is.
    refusal = OverflowError if store.backend == "sqlite" else peewee.DataError
    bad = make_execution(task.id, agent, 99, exit_code=2**70)
    good = [make_execution(task.id, agent, n) for n in range(10)]
    unknown = make_execution(uuid4(), agent, 0)
    outcomes: dict[str, Any] = {}

    async def report(name: str, execution: Execution) -> None:
        try:
            outcomes[name] = await astore.record_execution(execution)
        except (refusal, TaskNotFound) as error:
            outcomes[name] = error

    async with trio.open_nursery() as nursery:
        for number, execution in enumerate(good[:5]):
            nursery.start_soon(report, f"good {number}", execution)
        nursery.start_soon(report, "bad", bad)
        nursery.start_soon(report, "unknown", unknown)
        for number, execution in enumerate(good[5:], start=5):
            nursery.start_soon(report, f"good {number}", execution)
    assert isinstance(outcomes.pop("bad"), refusal)
    assert isinstance(outcomes.pop("unknown"), TaskNotFound)
    assert outcomes == {f"good {number}": True for number in range(10)}
    assert stored_count(store) == 10
    # Batches of reports keep their own results too, and a later write goes through.
    assert await astore.record_executions([*good[:2], unknown]) == [
        False,
        False,
        InstanceOf(TaskNotFound),
    ]


class InstanceOf:
    """Equal to any instance of ``kind`` (results hold exceptions, compared by type here)."""

    def __init__(self, kind: type[BaseException]) -> None:
        self.kind = kind

    def __eq__(self, other: object) -> bool:
        return isinstance(other, self.kind)

    def __hash__(self) -> int:
        return hash(self.kind)


async def test_a_queued_write_is_committed_before_its_caller_sees_cancelled(
    store: Store, astore: AsyncStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    task, agent = make_task(store), uuid4()
    gate = threading.Event()  # holds the first flush in its worker thread
    flushes: list[int] = []
    original = Store.record_executions

    def held(self: Store, executions: Any, **kwargs: Any) -> list[bool | TaskNotFound]:
        if self is not store:  # another store in this process (see the flushes fixture)
            return original(self, executions, **kwargs)
        flushes.append(len(executions))
        gate.wait(10)
        return original(self, executions, **kwargs)

    monkeypatch.setattr(Store, "record_executions", held)
    finished: list[int] = []
    cancelled: list[int] = []

    async def report(number: int) -> None:
        try:
            await astore.record_execution(make_execution(task.id, agent, number))
        except trio.Cancelled:
            # Seen only once its write is committed (checked below).
            cancelled.append(number)
            raise
        finished.append(number)

    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(report, 0)
            await trio.testing.wait_all_tasks_blocked()  # its caller is flushing, held
            for number in range(1, 12):
                nursery.start_soon(report, number)
            await trio.testing.wait_all_tasks_blocked()  # the others queued behind it
            # Every caller is cancelled, the flushing one too, while the flush is held.
            scope.cancel()
            gate.set()
    # Nobody's write was stranded: the flushing caller finished its flush and returned its
    # result; the next one, cancelled as it was, still flushed the eleven queued meanwhile
    # before it saw Cancelled, as did the others.
    assert flushes == [1, 11]
    assert finished == [0]
    assert sorted(cancelled) == list(range(1, 12))
    assert stored_count(store) == 12

    # Cancelled before it queued anything: nothing is written.
    with trio.CancelScope() as scope:
        scope.cancel()
        with pytest.raises(trio.Cancelled):
            await astore.record_execution(make_execution(task.id, agent, 100))
    assert stored_count(store) == 12
    # And the queue is not left stuck: the next write goes through.
    assert await astore.record_execution(make_execution(task.id, agent, 101)) is True


@pytest.mark.databases("sqlite")  # on PostgreSQL the flush does not wait for the other call
async def test_a_flush_cancelled_before_it_reaches_the_database_still_writes(
    store: Store, astore: AsyncStore, flushes: list[int]
) -> None:
    task, agent = make_task(store), uuid4()
    gate = threading.Event()
    finished: list[int] = []
    cancelled: list[int] = []

    async def report(number: int) -> None:
        try:
            await astore.record_execution(make_execution(task.id, agent, number))
        except trio.Cancelled:
            cancelled.append(number)
            raise
        finished.append(number)

    async with trio.open_nursery() as nursery:
        # Another call holds the store (a long read, say): the flush waits for its turn.
        nursery.start_soon(astore.call, lambda _: gate.wait(10))
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as reporters:
                for number in range(12):
                    reporters.start_soon(report, number)
                await trio.testing.wait_all_tasks_blocked()
                # Cancelled while its batch is taken from the queue but not yet written.
                scope.cancel()
                gate.set()
    assert flushes == [12]  # all twelve in the held flush
    assert len(finished) == 1  # the flushing caller, which returned its result
    assert sorted(finished + cancelled) == list(range(12))
    assert stored_count(store) == 12
    assert await astore.record_execution(make_execution(task.id, agent, 12)) is True


# --- POST /api/v1/executions -----------------------------------------------------------------


@pytest.fixture
async def secured(astore: AsyncStore, clock: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The app with a join token: agents report with their own credentials."""
    config = ServerConfig(database="unused.sqlite3", join_token=JOIN, admin_token=ADMIN)
    app = create_app(astore, config=config, clock=clock)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as http:
        yield http


async def create_task(client: httpx.AsyncClient, **fields: Any) -> UUID:
    body = {"command": "echo hi", "frequency": "every 10 seconds"} | fields
    response = await client.post("/api/v1/tasks", json=body)
    assert response.status_code == 201, response.text
    return UUID(response.json()["id"])


async def post_batch(
    client: httpx.AsyncClient, items: list[Any], **headers: str
) -> list[dict[str, Any]]:
    response = await client.post("/api/v1/executions", json={"executions": items}, headers=headers)
    assert response.status_code == 200, response.text
    results: list[dict[str, Any]] = response.json()["results"]
    assert len(results) == len(items)
    return results


async def test_a_batch_stores_its_reports_and_answers_each_in_order(
    client: httpx.AsyncClient, store: Store
) -> None:
    task_id, other = await create_task(client), await create_task(client)
    agent = uuid4()
    items = [
        item(task_id, agent, 0, stdout="first"),
        item(other, agent, 0),
        item(task_id, agent, 0, stdout="second"),  # the same execution again
        item(task_id, agent, 10, status="failed", exit_code=3, attempt=2, final=False),
        item(task_id, agent, 10, attempt=3, trigger="manual"),
    ]
    results = await post_batch(client, items)
    assert results == [acknowledged(), acknowledged(), acknowledged(True)] + [acknowledged()] * 2
    executions = {(e.scheduled_at, e.attempt): e for e in store.executions(task_id)}
    assert executions[(START, 1)].stdout == "first"
    failed = executions[(START + timedelta(seconds=10), 2)]
    assert (failed.status, failed.exit_code, failed.final) == (ExecutionStatus.FAILED, 3, False)
    assert len(store.executions(other)) == 1
    # The same batch again: every report a duplicate, nothing stored twice.
    assert await post_batch(client, items) == [acknowledged(True)] * len(items)
    assert stored_count(store) == 4
    # Readable through the API like the reports of /complete.
    listed = await client.get(f"/api/v1/tasks/{task_id}/executions")
    assert len(listed.json()["executions"]) == 3


async def test_a_refused_item_does_not_hold_back_the_others(
    client: httpx.AsyncClient, store: Store
) -> None:
    task_id = await create_task(client)
    agent = uuid4()
    unknown = uuid4()
    items: list[Any] = [
        item(task_id, agent, 0),
        item(unknown, agent, 1),
        item(task_id, agent, 2, exit_code=2**63),
        item(task_id, agent, 3, status="exploded"),
        "not an object",
        {"server_id": str(agent)},  # no task_id
        item("not-a-uuid", agent, 4),
        item(task_id, agent, 5, attempt=0),
        item(task_id, agent, 6),
    ]
    results = await post_batch(client, items)
    assert results[0] == results[-1] == acknowledged()
    expected = [
        refused("task_not_found", "executions.1.task_id"),
        refused("validation_error", "executions.2.exit_code"),
        refused("validation_error", "executions.3.status"),
        refused("validation_error", "executions.4"),
        refused("validation_error", "executions.5.task_id"),
        refused("validation_error", "executions.6.task_id"),
        refused("validation_error", "executions.7.attempt"),
    ]
    for number, (result, matches) in enumerate(zip(results[1:-1], expected, strict=True)):
        assert matches(result), (number + 1, result)
    assert str(unknown) in results[1]["error"]["message"]
    assert {e.scheduled_at for e in store.executions(task_id)} == {
        START,
        START + timedelta(seconds=6),
    }


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        (b'{"executions": [', 400, "invalid_json", None),
        (b"", 400, "invalid_json", None),
        (b"[]", 422, "invalid_body", None),
        (b"{}", 422, "validation_error", "executions"),
        (b'{"executions": {}}', 422, "validation_error", "executions"),
        (b'{"executions": []}', 422, "validation_error", "executions"),
        (b'{"executions": [], "extra": 1}', 422, "validation_error", "extra"),
    ],
)
async def test_only_the_envelope_refuses_the_whole_batch(
    client: httpx.AsyncClient,
    store: Store,
    body: bytes,
    status: int,
    code: str,
    field: str | None,
) -> None:
    response = await client.post(
        "/api/v1/executions", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["field"] == field
    assert stored_count(store) == 0


async def test_a_batch_holds_at_most_the_documented_number_of_reports(
    client: httpx.AsyncClient, store: Store
) -> None:
    task_id, agent = await create_task(client), uuid4()
    items = [item(task_id, agent, n) for n in range(MAX_BATCH_EXECUTIONS + 1)]
    response = await client.post("/api/v1/executions", json={"executions": items})
    assert response.status_code == 422
    assert response.json()["error"]["field"] == "executions"
    assert stored_count(store) == 0
    results = await post_batch(client, items[:MAX_BATCH_EXECUTIONS])
    assert results == [acknowledged()] * MAX_BATCH_EXECUTIONS
    assert stored_count(store) == MAX_BATCH_EXECUTIONS


async def test_streams_are_cut_and_the_body_limit_is_that_of_a_report(store: Store) -> None:
    config = ServerConfig(database="unused.sqlite3", max_body_bytes=1000, max_output_bytes=200)
    app = create_app(AsyncStore(store), config=config)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        task_id, agent = await create_task(client), uuid4()
        # Over max_body_bytes, under the report limit (1000 + 2 × 6 × 200): accepted, cut.
        items = [item(task_id, agent, n, stdout="0123456789abcdef" * 25) for n in range(5)]
        assert await post_batch(client, items) == [acknowledged()] * 5
        execution = store.executions(task_id)[0]
        assert execution.stdout == ("0123456789abcdef" * 25)[-200:]
        assert execution.stdout_dropped == 200
        big = [item(task_id, agent, n, stdout="y" * 200) for n in range(20)]
        response = await client.post("/api/v1/executions", json={"executions": big})
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "body_too_large"
    assert stored_count(store) == 5


async def test_a_batch_is_a_sign_of_life_of_its_agent(
    client: httpx.AsyncClient, store: Store, clock: Any
) -> None:
    agent = uuid4()
    registered = await client.post(
        "/api/v1/agents/register", json={"agent_id": str(agent), "url": "http://127.0.0.1:9"}
    )
    assert registered.status_code == 200
    task_id = await create_task(client)
    store.mark_lost(clock.advance(seconds=60))
    arrived = clock.advance(seconds=1)
    await post_batch(client, [item(task_id, agent, 0), item(task_id, agent, 1)])
    seen = store.get_agent(agent)
    assert seen is not None
    assert (seen.status, seen.last_seen_at) == (AgentStatus.ALIVE, arrived)


async def register(client: httpx.AsyncClient, agent_id: UUID) -> str:
    """Register ``agent_id`` with the join token; its own bearer token."""
    response = await client.post(
        "/api/v1/agents/register",
        json={"agent_id": str(agent_id), "url": "http://127.0.0.1:9"},
        headers={"Authorization": f"Bearer {JOIN}"},
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["credentials"]["agent_token"]
    return token


async def test_an_agent_reports_only_for_itself_and_its_tasks(
    secured: httpx.AsyncClient, store: Store
) -> None:
    mine, theirs = uuid4(), uuid4()
    token = await register(secured, mine)
    await register(secured, theirs)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    created = await secured.post(
        "/api/v1/tasks", json={"command": "true", "frequency": "every 1 hours"}, headers=admin
    )
    assigned = UUID(created.json()["id"])
    elsewhere = await secured.post(
        "/api/v1/tasks",
        json={
            "command": "true",
            "frequency": "every 1 hours",
            "targets": {"agents": [str(theirs)]},
        },
        headers=admin,
    )
    not_mine = UUID(elsewhere.json()["id"])
    items = [
        item(assigned, mine, 0),
        item(assigned, theirs, 0),  # speaking for another agent
        item(not_mine, mine, 0),  # a task not assigned to this agent
        item(assigned, mine, 1),
    ]
    results = await post_batch(secured, items, Authorization=f"Bearer {token}")
    assert results[0] == results[3] == acknowledged()
    assert refused("forbidden", "executions.1.server_id")(results[1])
    assert refused("forbidden", "executions.2.task_id")(results[2])
    assert {(e.agent_id, e.scheduled_at) for e in store.executions(assigned)} == {
        (mine, START + timedelta(seconds=offset)) for offset in (0, 1)
    }
    assert store.executions(not_mine) == []
    # The admin may report for any agent; no token, or the wrong kind, refuses the request.
    assert await post_batch(secured, items[1:2], **admin) == [acknowledged()]
    for headers in ({}, {"Authorization": "Bearer nonsense"}):
        response = await secured.post(
            "/api/v1/executions", json={"executions": items}, headers=headers
        )
        assert response.status_code == 401, headers
    response = await secured.post(
        "/api/v1/executions",
        json={"executions": items},
        headers={"Authorization": f"Bearer {JOIN}"},
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"


# --- over real HTTP --------------------------------------------------------------------------


async def test_many_concurrent_reporters_over_http_are_all_stored_once(
    store: Store, astore: AsyncStore, serve_asgi: Any, flushes: list[int]
) -> None:
    url, _ = await serve_asgi(create_app(astore))
    # One pool, one connection per reporter at a time: the reports really are concurrent.
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        task_id = await create_task(client)
        answers: list[dict[str, Any]] = []

        async def reporter(agent: UUID) -> None:
            for offset in range(3):
                response = await client.post(
                    f"/api/v1/tasks/{task_id}/complete", json=item(task_id, agent, offset)
                )
                assert response.status_code == 200, response.text
                answers.append(response.json())
            # Two of these five were reported one by one just now.
            answers.extend(await post_batch(client, [item(task_id, agent, n) for n in range(1, 6)]))

        async with trio.open_nursery() as nursery:
            for _ in range(12):
                nursery.start_soon(reporter, uuid4())
    singles = [answer for answer in answers if "error" not in answer]
    batched = [answer for answer in answers if "error" in answer]
    assert singles == [{"acknowledged": True, "duplicate": False}] * 12 * 3
    assert sorted(answer["duplicate"] for answer in batched) == [False] * 12 * 3 + [True] * 12 * 2
    assert stored_count(store) == 12 * 6
    # Every report went through a transaction, and they shared them: fewer transactions than
    # requests.
    assert sum(flushes) == 12 * 8
    assert len(flushes) < 12 * 4
