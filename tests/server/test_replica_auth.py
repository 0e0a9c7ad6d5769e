"""Agent credentials across replicas: every replica sees every credential, whichever issued it.

Replicas sharing one database each keep the credentials in memory (auth.py ``Guard``). Here,
first two guards on two stores of one database (a SQLite file, or a PostgreSQL schema when
``TSCHED_TEST_DATABASE_URL`` is set) check the cache's rules — what is looked up, how often, one
at a time — then two real ``serve()`` replicas with admin and join tokens check what an agent
sees: registered through one, it heartbeats, reports and registers again through the other; the
lease holder pushes to it with its server token; and its id cannot be taken over through the
other replica, nor issued twice by two registering at once.
"""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar
from uuid import UUID, uuid4

import httpx
import pytest
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from taskscheduler_core import ApiError, token_digest
from taskscheduler_server import AsyncStore, ServerConfig, Store, serve
from taskscheduler_server.auth import (
    MAX_UNKNOWN,
    UNKNOWN_SECONDS,
    Guard,
    IssuedCredential,
    Role,
)
from taskscheduler_server.records import AgentCredential

pytestmark = pytest.mark.databases("sqlite", "postgresql")

ADMIN = "admin-" + "a" * 40
JOIN = "join-" + "j" * 40

T = TypeVar("T")
WaitUntil = Callable[..., Awaitable[None]]


class CountingStore(AsyncStore):
    """A real store that counts its calls by method, and how many ran at once."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.calls: collections.Counter[str] = collections.Counter()
        self.running = 0
        self.most_running = 0
        self._called = trio.Event()

    async def call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            return await super().call(method, *args, **kwargs)
        finally:
            self.running -= 1
            self.calls[method.__name__] += 1
            self._called.set()
            self._called = trio.Event()

    async def wait_for(self, name: str, count: int) -> None:
        """Until ``name`` was called ``count`` times (at most 5 s of trio time: a MockClock
        must run, ``rate = 1``, for this bound to hold)."""
        with trio.fail_after(5):
            while self.calls[name] < count:
                await self._called.wait()


@pytest.fixture
def stores(database_location: Path | str) -> Iterator[tuple[CountingStore, CountingStore]]:
    """Two stores on one database, as two replicas have."""
    with Store(database_location) as one, Store(database_location) as two:
        yield CountingStore(one), CountingStore(two)


def guard(store: AsyncStore) -> Guard:
    return Guard(store, admin_token=ADMIN, join_token=JOIN)


def request_with(token: str) -> Request:
    headers = [(b"authorization", f"Bearer {token}".encode())]
    return Request({"type": "http", "method": "POST", "path": "/", "headers": headers})


def issued_by_hand(agent_id: UUID, token: str) -> AgentCredential:
    return AgentCredential(
        agent_id=agent_id, token_sha256=token_digest(token), server_token=f"server-{token}"
    )


# --- the guard: what it looks up in the store, and how often ---------------------------------


async def test_a_token_issued_by_one_replica_is_found_by_the_other_then_costs_no_call(
    stores: tuple[CountingStore, CountingStore],
) -> None:
    one, two = guard(stores[0]), guard(stores[1])
    agent = uuid4()
    assert await two.caller(request_with("not-issued-yet")) is None  # two has loaded: empty
    issued = await one.issue(agent)
    for _ in range(5):
        caller = await two.caller(request_with(issued.agent_token))
        assert caller is not None
        assert (caller.role, caller.agent_id) == (Role.AGENT, agent)
    # One lookup by digest, at its first use; the other four were answered from memory.
    assert stores[1].calls["credential_by_digest"] == 2  # the made-up token's, and this one
    assert stores[1].calls["agent_credentials"] == 1  # the first load, once


async def test_an_unknown_token_is_looked_up_again_only_after_a_while(
    stores: tuple[CountingStore, CountingStore], mock_clock: Any
) -> None:
    two = guard(stores[1])
    for _ in range(10):
        assert await two.caller(request_with("wrong")) is None
    assert stores[1].calls["credential_by_digest"] == 1
    mock_clock.jump(UNKNOWN_SECONDS / 2)
    assert await two.caller(request_with("wrong")) is None
    assert stores[1].calls["credential_by_digest"] == 1
    mock_clock.jump(UNKNOWN_SECONDS / 2)
    assert await two.caller(request_with("wrong")) is None
    assert stores[1].calls["credential_by_digest"] == 2


async def test_new_tokens_are_looked_up_one_at_a_time(
    stores: tuple[CountingStore, CountingStore],
) -> None:
    """A flood of made-up tokens, each new, costs the database one query at a time."""
    two = guard(stores[1])
    await two.caller(request_with("warm-up"))  # the first load out of the way
    stores[1].most_running = 0
    answers: list[object] = []

    async def ask(index: int) -> None:
        answers.append(await two.caller(request_with(f"made-up-{index}")))

    async with trio.open_nursery() as nursery:
        for index in range(20):
            nursery.start_soon(ask, index)
    assert answers == [None] * 20
    assert stores[1].calls["credential_by_digest"] == 21
    assert stores[1].most_running == 1


async def test_the_unknown_tokens_remembered_are_bounded(
    stores: tuple[CountingStore, CountingStore],
) -> None:
    two = guard(stores[1])
    await two.caller(request_with("first"))
    for index in range(MAX_UNKNOWN):  # pushes "first" out, the oldest
        two._unknown_digests.add(f"digest-{index}")
    assert await two.caller(request_with("first")) is None
    assert stores[1].calls["credential_by_digest"] == 2  # asked again: it was forgotten


async def test_the_server_token_of_an_agent_registered_elsewhere_is_fetched_when_needed(
    stores: tuple[CountingStore, CountingStore], mock_clock: Any
) -> None:
    """``agent_headers`` (synchronous, for the dispatcher) misses once, and the guard's
    background task looks the agent up at once, for the dispatcher's next attempt."""
    mock_clock.rate = 1  # runs as the real clock, and jumps when told
    one, two = guard(stores[0]), guard(stores[1])
    agent, stranger = uuid4(), uuid4()
    async with two.lifespan(None):
        await stores[1].wait_for("agent_credentials", 1)  # the first load, before serving
        issued = await one.issue(agent)
        assert two.agent_headers(agent) == {}
        await stores[1].wait_for("agent_credentials", 2)
        assert two.agent_headers(agent) == {"Authorization": f"Bearer {issued.server_token}"}

        # An agent without a credential (an AVAILABLE_SERVERS one) is looked up once a while.
        for _ in range(5):
            assert two.agent_headers(stranger) == {}
        await stores[1].wait_for("agent_credentials", 3)
        assert two.agent_headers(stranger) == {}
        mock_clock.jump(UNKNOWN_SECONDS)
        assert two.agent_headers(stranger) == {}
        await stores[1].wait_for("agent_credentials", 4)
        assert stores[1].calls["agent_credentials"] == 4


async def test_a_replica_starting_knows_every_server_token_before_it_serves(
    stores: tuple[CountingStore, CountingStore],
) -> None:
    """A holder that restarts pushes at once to the agents it has work for: the tokens must be
    there before the first push, not after the first request that happens to load them."""
    one = guard(stores[0])
    agents = [uuid4() for _ in range(3)]
    issued = [await one.issue(agent) for agent in agents]
    restarted = guard(stores[1])
    async with restarted.lifespan(None):
        for agent, credential in zip(agents, issued, strict=True):
            assert restarted.agent_headers(agent) == {
                "Authorization": f"Bearer {credential.server_token}"
            }


async def test_an_id_with_a_credential_is_refused_by_the_replica_that_did_not_issue_it(
    stores: tuple[CountingStore, CountingStore],
) -> None:
    one, two = guard(stores[0]), guard(stores[1])
    agent = uuid4()
    await two.caller(request_with("warm-up"))  # two loaded before the agent existed
    issued = await one.issue(agent)
    join = await two.caller(request_with(JOIN))
    assert await two.check_registration(join, agent)  # not known here: the store decides
    with pytest.raises(ApiError) as refused:
        await two.issue(agent)
    assert refused.value.status == 403
    assert "already has a credential" in refused.value.message
    # The agent's credential is the one it was given, everywhere.
    [stored] = await stores[1].call(Store.agent_credentials, [agent])
    assert stored.token_sha256 == token_digest(issued.agent_token)
    caller = await two.caller(request_with(issued.agent_token))
    assert caller is not None
    assert caller.agent_id == agent
    # Now known here, it is refused without asking the store.
    with pytest.raises(ApiError, match="already has a credential"):
        await two.check_registration(join, agent)


async def test_two_replicas_issuing_for_one_id_at_once_issue_one_credential(
    stores: tuple[CountingStore, CountingStore],
) -> None:
    one, two = guard(stores[0]), guard(stores[1])
    for _ in range(5):
        agent = uuid4()
        outcomes: list[object] = []

        async def issue(by: Guard, agent: UUID = agent, outcomes: list[object] = outcomes) -> None:
            try:
                outcomes.append(await by.issue(agent))
            except ApiError as error:
                outcomes.append(error.status)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(issue, one)
            nursery.start_soon(issue, two)
        assert len(outcomes) == 2
        assert outcomes.count(403) == 1, outcomes
        [winner] = [outcome for outcome in outcomes if outcome != 403]
        assert isinstance(winner, IssuedCredential)
        [stored] = await stores[0].call(Store.agent_credentials, [agent])
        assert stored.server_token == winner.server_token


async def test_a_credential_is_added_once_and_never_replaced(
    stores: tuple[CountingStore, CountingStore],
) -> None:
    agent = uuid4()
    store = stores[0].store
    assert store.add_agent_credential(issued_by_hand(agent, "first"))
    assert not store.add_agent_credential(issued_by_hand(agent, "second"))
    [kept] = store.agent_credentials([agent])
    assert kept == issued_by_hand(agent, "first")
    assert store.credential_by_digest(token_digest("first")) == kept
    assert store.credential_by_digest(token_digest("second")) is None
    assert store.agent_credentials([uuid4()]) == []


# --- two real servers on one database, with tokens ---------------------------------------------


def replica_config(location: str | Path, name: str) -> ServerConfig:
    return ServerConfig(
        database=location,
        port=0,
        replica_id=name,
        admin_token=ADMIN,
        join_token=JOIN,
        lease_duration=timedelta(seconds=1.5),
        backoff_initial=timedelta(milliseconds=20),
        backoff_max=timedelta(milliseconds=100),
        graceful_timeout=timedelta(seconds=0.5),
    )


@pytest.fixture
async def replicas(database_location: Path | str, nursery: trio.Nursery) -> tuple[str, str]:
    """Two servers on one database: the first holds the lease, the second stands by."""
    one = await nursery.start(serve, replica_config(database_location, "one"))
    two = await nursery.start(serve, replica_config(database_location, "two"))
    async with httpx.AsyncClient(timeout=5) as http:
        lease = (await http.get(f"{two}/readyz")).json()["lease"]
    assert (lease["held"], lease["holder"]) == (False, "one")
    return one, two


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def register(
    http: httpx.AsyncClient, server: str, agent: UUID, token: str, url: str = "http://127.0.0.1:9"
) -> httpx.Response:
    return await http.post(
        f"{server}/api/v1/agents/register",
        json={"agent_id": str(agent), "url": url},
        headers=bearer(token),
    )


async def test_an_agent_registered_through_one_replica_speaks_through_the_other(
    replicas: tuple[str, str],
) -> None:
    one, two = replicas
    agent = uuid4()
    async with httpx.AsyncClient(timeout=5) as http:
        # Two loads its credentials before the agent exists (any agent request does).
        before = await http.post(f"{two}/api/v1/agents/{agent}/heartbeat", json={})
        assert before.status_code == 401
        registered = await register(http, one, agent, JOIN)
        assert registered.status_code == 200, registered.text
        token = registered.json()["credentials"]["agent_token"]
        task = await http.post(
            f"{one}/api/v1/tasks",
            json={"command": "true", "frequency": "every 1 hours"},
            headers=bearer(ADMIN),
        )
        task_id = task.json()["command_id"]

        for server in (two, one):
            beat = await http.post(
                f"{server}/api/v1/agents/{agent}/heartbeat", json={}, headers=bearer(token)
            )
            assert beat.status_code == 200, beat.text
        report = await http.post(
            f"{two}/api/v1/tasks/{task_id}/complete",
            json={"server_id": str(agent), "stdout": "through two"},
            headers=bearer(token),
        )
        assert report.status_code == 200, report.text
        # It registers again through two with its own credential: no new one is issued.
        again = await register(http, two, agent, token)
        assert again.status_code == 200, again.text
        assert "credentials" not in again.json()

        # Neither the join token nor the admin token takes its id over through two.
        for other in (JOIN, ADMIN):
            taken = await register(http, two, agent, other, url="http://127.0.0.1:10")
            assert taken.status_code == 403, taken.text
            assert "already has a credential" in taken.json()["error"]["message"]
        shown = await http.get(f"{one}/api/v1/agents/{agent}", headers=bearer(ADMIN))
        assert shown.json()["url"] == "http://127.0.0.1:9"
        for server in (one, two):
            beat = await http.post(
                f"{server}/api/v1/agents/{agent}/heartbeat", json={}, headers=bearer(token)
            )
            assert beat.status_code == 200, beat.text


# PostgreSQL only: two servers writing one SQLite file at once may find it locked (a 503), and
# SQLite serves one server anyway.
@pytest.mark.databases("postgresql")
async def test_two_replicas_registering_one_new_id_at_once_issue_one_credential(
    replicas: tuple[str, str],
) -> None:
    answers: list[httpx.Response] = []
    agent = uuid4()
    async with httpx.AsyncClient(timeout=5) as http:

        async def register_through(server: str) -> None:
            answers.append(await register(http, server, agent, JOIN))

        async with trio.open_nursery() as nursery:
            for server in replicas:
                nursery.start_soon(register_through, server)
        assert sorted(answer.status_code for answer in answers) == [200, 403]
        [won] = [answer for answer in answers if answer.status_code == 200]
        token = won.json()["credentials"]["agent_token"]
        for server in replicas:
            beat = await http.post(
                f"{server}/api/v1/agents/{agent}/heartbeat", json={}, headers=bearer(token)
            )
            assert beat.status_code == 200, beat.text


class TokenCheckingAgent:
    """A real agent peer that, like ``tsched agent``, takes scheduling calls only with the
    server token it was issued (401 otherwise), and records what it took."""

    def __init__(self) -> None:
        self.agent_id = uuid4()
        self.server_token: str | None = None
        self.tasks: dict[str, dict[str, Any]] = {}
        self.refused: list[str] = []
        self.app = Starlette(
            routes=[
                Route("/api/v1/tasks/schedule", self._schedule, methods=["POST"]),
                Route("/api/v1/tasks", self._list, methods=["GET"]),
                Route("/api/v1/agent", self._identity, methods=["GET"]),
            ]
        )

    def _refusal(self, request: Request) -> Response | None:
        if (
            self.server_token is not None
            and request.headers.get("authorization") == f"Bearer {self.server_token}"
        ):
            return None
        self.refused.append(request.url.path)
        error = {"code": "unauthorized", "message": "server token required", "field": None}
        return JSONResponse({"error": error}, status_code=401)

    async def _schedule(self, request: Request) -> Response:
        if (refusal := self._refusal(request)) is not None:
            return refusal
        body = await request.json()
        self.tasks[body["task_id"]] = body
        return JSONResponse({"task_id": body["task_id"], "changed": True})

    async def _list(self, request: Request) -> Response:
        if (refusal := self._refusal(request)) is not None:
            return refusal
        return JSONResponse({"tasks": list(self.tasks.values())})

    async def _identity(self, request: Request) -> Response:
        return JSONResponse({"agent_id": str(self.agent_id), "version": "test", "labels": {}})


async def test_the_holder_pushes_to_an_agent_registered_through_the_other_with_its_token(
    replicas: tuple[str, str], serve_asgi: Any, wait_until: WaitUntil
) -> None:
    one, two = replicas
    peer = TokenCheckingAgent()
    peer_url, _ = await serve_asgi(peer.app)
    async with httpx.AsyncClient(timeout=5) as http:
        registered = await register(http, two, peer.agent_id, JOIN, url=peer_url)
        assert registered.status_code == 200, registered.text
        peer.server_token = registered.json()["credentials"]["server_token"]
        for server in (two, one):
            created = await http.post(
                f"{server}/api/v1/tasks",
                json={"command": "true", "frequency": "every 1 hours"},
                headers=bearer(ADMIN),
            )
            task_id = created.json()["command_id"]
            # Pushed by one, the holder, which had never seen the agent's credential.
            await wait_until(lambda task_id=task_id: task_id in peer.tasks, timeout=5)
    # Not even the holder's first push went without the token: the dispatcher looks up, in
    # the store, the credential of an agent this replica has not seen, before it pushes.
    assert peer.refused == []
