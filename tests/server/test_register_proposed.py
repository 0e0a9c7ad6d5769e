"""Registrations with credentials the agent proposes: a lost answer no longer locks it out.

An agent with the join token proposes its own credentials (saved before it sends them); the
server stores them as it stores issued ones. Sending the same ones again — its first answer was
lost — is accepted; anything else for an id that has a credential is still 403, whatever the
token. Real servers (``serve()``) on real HTTP, on SQLite and on PostgreSQL (with
``TSCHED_TEST_DATABASE_URL``); the lost answer is a real connection closed by a proxy after the
server answered (tests/lossy_http.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
import pytest
import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from lossy_http import AnswerDroppingProxy
from processes import read_sqlite
from taskscheduler_core import token_digest
from taskscheduler_server import ServerConfig, Store, serve
from taskscheduler_server.records import AgentCredential

pytestmark = pytest.mark.databases("sqlite", "postgresql")

ADMIN = "admin-" + "a" * 40
READ = "read-" + "r" * 40
JOIN = "join-" + "j" * 40
REGISTER = "/api/v1/agents/register"

WaitUntil = Callable[..., Awaitable[None]]


def config(location: Path | str, name: str = "one", **tokens: str | None) -> ServerConfig:
    chosen = {"admin_token": ADMIN, "read_token": READ, "join_token": JOIN} | tokens
    return ServerConfig(
        database=location,
        port=0,
        replica_id=name,
        lease_duration=timedelta(seconds=1.5),
        backoff_initial=timedelta(milliseconds=20),
        backoff_max=timedelta(milliseconds=100),
        graceful_timeout=timedelta(seconds=0.5),
        **chosen,
    )


def proposal() -> dict[str, str]:
    """Credentials as ``tsched agent`` makes them."""
    return {"agent_token": secrets.token_urlsafe(32), "server_token": secrets.token_urlsafe(32)}


def bearer(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


def body(agent: UUID, credentials: object = None, url: str = "http://127.0.0.1:9") -> Any:
    sent: dict[str, object] = {"agent_id": str(agent), "url": url}
    if credentials is not None:
        sent["credentials"] = credentials
    return sent


async def register(
    http: httpx.AsyncClient,
    server: str,
    agent: UUID,
    credentials: object = None,
    token: str | None = JOIN,
    url: str = "http://127.0.0.1:9",
) -> httpx.Response:
    return await http.post(
        server + REGISTER, json=body(agent, credentials, url), headers=bearer(token)
    )


async def heartbeat(http: httpx.AsyncClient, server: str, agent: UUID, token: str) -> int:
    response = await http.post(
        f"{server}/api/v1/agents/{agent}/heartbeat", json={}, headers=bearer(token)
    )
    return response.status_code


def stored(location: Path | str, agent: UUID) -> list[AgentCredential]:
    """The credentials the database holds for ``agent``: read beside the running server (a
    second ``Store`` on its SQLite file could meet its lock while opening)."""
    if isinstance(location, str):
        with Store(location) as store:
            return store.agent_credentials([agent])
    sql = "SELECT token_sha256, server_token FROM agent_credentials WHERE agent_id = '%s'"
    rows = read_sqlite(location, sql % agent.hex)
    return [
        AgentCredential(agent_id=agent, token_sha256=row[0], server_token=row[1]) for row in rows
    ]


class TokenCheckingAgent:
    """A real agent peer that, like ``tsched agent``, takes scheduling calls only with one
    server token (401 otherwise), and records the tasks it took."""

    def __init__(self, server_token: str) -> None:
        self.agent_id = uuid4()
        self.server_token = server_token
        self.tasks: set[str] = set()
        self.refused = 0
        self.app = Starlette(
            routes=[
                Route("/api/v1/tasks/schedule", self._schedule, methods=["POST"]),
                Route("/api/v1/tasks", self._list, methods=["GET"]),
            ]
        )

    def _allowed(self, request: Request) -> bool:
        allowed = request.headers.get("authorization") == f"Bearer {self.server_token}"
        self.refused += not allowed
        return allowed

    async def _schedule(self, request: Request) -> Response:
        if not self._allowed(request):
            return JSONResponse({"error": {"code": "unauthorized"}}, status_code=401)
        spec = await request.json()
        self.tasks.add(spec["task_id"])
        return JSONResponse({"task_id": spec["task_id"], "changed": True})

    async def _list(self, request: Request) -> Response:
        if not self._allowed(request):
            return JSONResponse({"error": {"code": "unauthorized"}}, status_code=401)
        return JSONResponse({"tasks": []})


async def test_a_registration_whose_answer_was_lost_is_accepted_when_proposed_again(
    database_location: Path | str,
    nursery: trio.Nursery,
    serve_asgi: Any,
    wait_until: WaitUntil,
) -> None:
    server = await nursery.start(serve, config(database_location))
    credentials = proposal()
    peer = TokenCheckingAgent(credentials["server_token"])
    peer_url, _ = await serve_asgi(peer.app)
    async with httpx.AsyncClient(timeout=10) as http:
        with (
            AnswerDroppingProxy(server, REGISTER) as proxy,
            pytest.raises(httpx.RemoteProtocolError),
        ):
            await register(http, proxy.url, peer.agent_id, credentials, url=peer_url)
        # The server did register the agent, and answered; the agent never heard it.
        [(status, _)] = proxy.dropped
        assert status == 200
        [kept] = await trio.to_thread.run_sync(stored, database_location, peer.agent_id)
        assert kept.token_sha256 == token_digest(credentials["agent_token"])
        assert kept.server_token == credentials["server_token"]

        # So it registers again, with the join token and the same proposal: accepted, and the
        # tokens are never sent back (the agent has them).
        again = await register(http, server, peer.agent_id, credentials, url=peer_url)
        assert again.status_code == 200, again.text
        assert again.json() == {
            "agent_id": str(peer.agent_id),
            "url": peer_url,
            "credentials_accepted": True,
        }
        assert await heartbeat(http, server, peer.agent_id, credentials["agent_token"]) == 200
        # And the server pushes to it with the server token it proposed.
        created = await http.post(
            f"{server}/api/v1/tasks",
            json={"command": "true", "frequency": "every 1 hours"},
            headers=bearer(ADMIN),
        )
        task_id = created.json()["command_id"]
        await wait_until(lambda: task_id in peer.tasks, timeout=5)
        assert peer.refused == 0


async def test_a_credential_stored_by_a_replica_that_failed_before_the_agent_row(
    database_location: Path | str, nursery: trio.Nursery
) -> None:
    """What a 503 while writing the agent row leaves behind: the credential, committed, and no
    agent. The same proposal again completes the registration."""
    agent, credentials = uuid4(), proposal()
    with Store(database_location) as store:
        assert store.add_agent_credential(
            AgentCredential(
                agent_id=agent,
                token_sha256=token_digest(credentials["agent_token"]),
                server_token=credentials["server_token"],
            )
        )
        assert store.get_agent(agent) is None
    server = await nursery.start(serve, config(database_location))
    async with httpx.AsyncClient(timeout=10) as http:
        registered = await register(http, server, agent, credentials)
        assert registered.status_code == 200, registered.text
        assert registered.json()["credentials_accepted"] is True
        shown = await http.get(f"{server}/api/v1/agents/{agent}", headers=bearer(ADMIN))
        assert shown.status_code == 200, shown.text
        assert await heartbeat(http, server, agent, credentials["agent_token"]) == 200


async def test_other_credentials_for_a_registered_id_are_refused_whatever_the_token(
    database_location: Path | str, nursery: trio.Nursery
) -> None:
    server = await nursery.start(serve, config(database_location))
    agent, credentials = uuid4(), proposal()
    async with httpx.AsyncClient(timeout=10) as http:
        first = await register(http, server, agent, credentials)
        assert first.status_code == 200, first.text
        other = proposal()
        attempts = [
            other,  # another agent's take-over
            {**credentials, "server_token": other["server_token"]},  # half right
            {**credentials, "agent_token": other["agent_token"]},
            None,  # no proposal: the server would issue new ones
        ]
        for token in (JOIN, ADMIN):
            for attempt in attempts:
                taken = await register(http, server, agent, attempt, token=token, url="http://x:1")
                assert taken.status_code == 403, (token[:5], attempt, taken.text)
                assert "already has a credential" in taken.json()["error"]["message"]
        # The agent's own token with a proposal that is not its credentials: refused too.
        mixed = await register(http, server, agent, other, token=credentials["agent_token"])
        assert mixed.status_code == 403, mixed.text
        # Nothing changed: the first credentials work, the others do not.
        [kept] = await trio.to_thread.run_sync(stored, database_location, agent)
        assert kept.token_sha256 == token_digest(credentials["agent_token"])
        assert kept.server_token == credentials["server_token"]
        assert await heartbeat(http, server, agent, credentials["agent_token"]) == 200
        assert await heartbeat(http, server, agent, other["agent_token"]) == 401
        shown = await http.get(f"{server}/api/v1/agents/{agent}", headers=bearer(ADMIN))
        assert shown.json()["url"] == "http://127.0.0.1:9"
        # Its own token with its own credentials is accepted, like its own token alone.
        own = await register(http, server, agent, credentials, token=credentials["agent_token"])
        assert own.status_code == 200, own.text
        assert own.json()["credentials_accepted"] is True


async def test_a_proposal_needs_the_join_or_admin_token(
    database_location: Path | str, nursery: trio.Nursery
) -> None:
    server = await nursery.start(serve, config(database_location))
    registered, registered_credentials = uuid4(), proposal()
    agent, credentials = uuid4(), proposal()
    async with httpx.AsyncClient(timeout=10) as http:
        assert (await register(http, server, registered, registered_credentials)).is_success
        refusals = {
            None: 401,
            "not-a-token": 401,
            READ: 403,
            registered_credentials["agent_token"]: 403,  # an agent may not register another
            credentials["agent_token"]: 401,  # its own proposal is no credential yet
        }
        for token, status in refusals.items():
            refused = await register(http, server, agent, credentials, token=token)
            assert refused.status_code == status, (token, refused.text)
        assert await trio.to_thread.run_sync(stored, database_location, agent) == []
        by_admin = await register(http, server, agent, credentials, token=ADMIN)
        assert by_admin.status_code == 200, by_admin.text
        assert "credentials" not in by_admin.json()
        assert await heartbeat(http, server, agent, credentials["agent_token"]) == 200


async def test_a_bad_proposal_is_refused_naming_the_field(
    database_location: Path | str, nursery: trio.Nursery
) -> None:
    server = await nursery.start(serve, config(database_location))
    good = proposal()
    agent = uuid4()
    bad: list[tuple[object, str]] = [
        ("a string", "credentials"),
        ([good["agent_token"]], "credentials"),
        ({"agent_token": good["agent_token"]}, "credentials.server_token"),
        ({**good, "agent_token": "short"}, "credentials.agent_token"),
        ({**good, "agent_token": "x" * 257}, "credentials.agent_token"),
        ({**good, "agent_token": good["agent_token"] + " space"}, "credentials.agent_token"),
        ({**good, "server_token": good["server_token"] + "\u00e9"}, "credentials.server_token"),
        ({**good, "server_token": good["server_token"] + "\x00"}, "credentials.server_token"),
        ({**good, "server_token": 12345}, "credentials.server_token"),
        ({**good, "server_token": good["agent_token"]}, "credentials.server_token"),
    ]
    async with httpx.AsyncClient(timeout=10) as http:
        for credentials, field in bad:
            refused = await register(http, server, agent, credentials)
            assert refused.status_code == 422, (credentials, refused.text)
            error = refused.json()["error"]
            assert error["field"] == field, (credentials, error)
            # A token is a secret: never quoted back.
            assert good["agent_token"] not in error["message"]
        assert await trio.to_thread.run_sync(stored, database_location, agent) == []
        # The longest and the most unusual allowed ones are taken.
        edge = {"agent_token": "A-._~+/" * 36 + "a" * 2 + "==", "server_token": "s" * 32}
        accepted = await register(http, server, agent, edge)
        assert accepted.status_code == 200, accepted.text
        assert await heartbeat(http, server, agent, edge["agent_token"]) == 200


async def test_the_same_proposal_through_another_replica_is_recognised_from_the_store(
    database_location: Path | str, nursery: trio.Nursery
) -> None:
    one = await nursery.start(serve, config(database_location, "one"))
    two = await nursery.start(serve, config(database_location, "two"))
    agent, credentials = uuid4(), proposal()
    async with httpx.AsyncClient(timeout=10) as http:
        # Two loads the credentials it will keep in memory before the agent exists.
        assert await heartbeat(http, two, agent, credentials["agent_token"]) == 401
        with (
            AnswerDroppingProxy(one, REGISTER) as proxy,
            pytest.raises(httpx.RemoteProtocolError),
        ):
            await register(http, proxy.url, agent, credentials)
        again = await register(http, two, agent, credentials)
        assert again.status_code == 200, again.text
        assert again.json()["credentials_accepted"] is True
        # Two knows them now, and still refuses others.
        assert (await register(http, two, agent, proposal())).status_code == 403
        for server in (one, two):
            assert await heartbeat(http, server, agent, credentials["agent_token"]) == 200


# PostgreSQL only, as in test_replica_auth.py: two servers writing one SQLite file at once may
# find it locked (a 503).
@pytest.mark.databases("postgresql")
async def test_one_proposal_sent_to_two_replicas_at_once_is_accepted_by_both(
    database_location: Path | str, nursery: trio.Nursery
) -> None:
    """An agent that timed out and retried through another replica while the first request
    was still running: both are the same agent, both succeed, one credential is stored."""
    replicas = [
        await nursery.start(serve, config(database_location, name)) for name in ("one", "two")
    ]
    async with httpx.AsyncClient(timeout=10) as http:
        for _ in range(3):
            agent, credentials = uuid4(), proposal()
            answers: list[httpx.Response] = []

            async def register_through(
                server: str,
                agent: UUID = agent,
                credentials: dict[str, str] = credentials,
                answers: list[httpx.Response] = answers,
            ) -> None:
                answers.append(await register(http, server, agent, credentials))

            async with trio.open_nursery() as both:
                for server in replicas:
                    both.start_soon(register_through, server)
            assert [answer.status_code for answer in answers] == [200, 200], answers
            [kept] = await trio.to_thread.run_sync(stored, database_location, agent)
            assert kept.token_sha256 == token_digest(credentials["agent_token"])


async def test_a_server_without_a_join_token_takes_no_proposed_credentials(
    database_location: Path | str, nursery: trio.Nursery
) -> None:
    server = await nursery.start(
        serve, config(database_location, admin_token=None, read_token=None, join_token=None)
    )
    agent, credentials = uuid4(), proposal()
    async with httpx.AsyncClient(timeout=10) as http:
        registered = await register(http, server, agent, credentials, token=None)
        assert registered.status_code == 200, registered.text
        assert registered.json()["credentials_accepted"] is False
        assert await trio.to_thread.run_sync(stored, database_location, agent) == []
