"""The agent's credentials: proposed by the agent, saved before they are sent, kept once taken.

First ``AgentKeys`` on its own (the file, its mode, what a later start reads back), then real
agents (``run_agent``) against a real server (``serve``) on 127.0.0.1: one whose first
registration answer is lost on the way (tests/lossy_http.py closes the connection after the
server answered), one whose data directory holds credentials an older server issued, one whose
server's database is replaced, and one facing a server that issues its own credentials.
"""

from __future__ import annotations

import json
import stat
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
from processes import free_port
from taskscheduler_agent import AgentConfig, AgentStarted, run_agent
from taskscheduler_agent.credentials import CREDENTIALS_FILE, AgentKeys
from taskscheduler_agent.errors import IdentityError
from taskscheduler_core import ProposedCredentials, unauthorized
from taskscheduler_server import ServerConfig, serve

ADMIN = "admin-" + "a" * 40
JOIN = "join-" + "j" * 40
REGISTER = "/api/v1/agents/register"

ServeAsgi = Callable[..., Awaitable[str]]
WaitFor = Callable[..., Awaitable[None]]


def saved(data_dir: Path) -> dict[str, Any]:
    path = data_dir / CREDENTIALS_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def accepted(data_dir: Path) -> bool:
    """Whether the agent saved credentials a server took (``False`` before any file)."""
    try:
        return saved(data_dir).get("accepted") is True
    except FileNotFoundError:
        return False


def loaded(data_dir: Path, join_token: str | None = JOIN) -> AgentKeys:
    keys = AgentKeys(data_dir, join_token=join_token)
    keys.load()
    return keys


# --- AgentKeys: the file -----------------------------------------------------------------------


def test_a_proposal_is_saved_before_it_is_used_and_read_back_as_one(tmp_path: Path) -> None:
    keys = loaded(tmp_path)
    proposal = keys.propose()
    assert proposal is not None
    # On disk, mode 0600, marked as not (yet) taken by any server.
    assert saved(tmp_path) == {
        "agent_token": proposal.agent_token,
        "server_token": proposal.server_token,
        "accepted": False,
    }
    assert (keys.agent_token, keys.server_token) == (None, None)
    assert proposal.agent_token != proposal.server_token
    # A later start (the agent was killed before it heard back) proposes the very same ones,
    # and registers with the join token, not with a token no server may know.
    again = loaded(tmp_path)
    assert again.proposal == proposal
    assert again.agent_token is None
    assert again.propose() == proposal
    assert again.registration_token(use_join_token=True) == JOIN
    # After a 401 to the join token (rotated, say), the proposed token itself is tried.
    assert again.registration_token(use_join_token=False) == proposal.agent_token
    # Taken: the same tokens, now the agent's credentials.
    again.accept()
    assert saved(tmp_path)["accepted"] is True
    assert (again.agent_token, again.server_token, again.proposal) == (
        proposal.agent_token,
        proposal.server_token,
        None,
    )
    later = loaded(tmp_path)
    assert later.agent_token == proposal.agent_token
    assert later.registration_token(use_join_token=False) == proposal.agent_token
    # Held credentials are what it proposes again (to a server whose database was replaced).
    assert later.propose() == proposal


def test_without_a_join_token_nothing_is_proposed_or_written(tmp_path: Path) -> None:
    keys = loaded(tmp_path, join_token=None)
    assert keys.propose() is None
    assert not (tmp_path / CREDENTIALS_FILE).exists()
    assert not keys.server_only  # the original design's uncredentialed schedule calls


def test_a_pending_proposal_already_guards_the_scheduling_endpoints(tmp_path: Path) -> None:
    """The server may push with the proposed server token before the agent hears that it was
    taken: that token is accepted, and only that one."""
    keys = loaded(tmp_path)
    proposal = keys.propose()
    assert proposal is not None
    keys.check_server({"authorization": f"Bearer {proposal.server_token}"})
    for header in ({}, {"authorization": f"Bearer {proposal.agent_token}"}):
        with pytest.raises(type(unauthorized())) as refused:
            keys.check_server(header)
        assert refused.value.status == 401
    # Even without the join token (removed from the configuration meanwhile).
    loaded(tmp_path, join_token=None).check_server(
        {"authorization": f"Bearer {proposal.server_token}"}
    )


def test_credentials_saved_by_an_older_release_are_taken_as_accepted(tmp_path: Path) -> None:
    issued = {"agent_token": "issued-by-the-server", "server_token": "also-issued"}
    (tmp_path / CREDENTIALS_FILE).write_text(json.dumps(issued))
    keys = loaded(tmp_path)
    assert (keys.agent_token, keys.server_token, keys.proposal) == (
        "issued-by-the-server",
        "also-issued",
        None,
    )
    assert keys.registration_token(use_join_token=False) == "issued-by-the-server"
    # Too short to be proposed under today's rules: not offered (the server would issue new
    # ones after a database replacement, as before), and nothing is rewritten.
    assert keys.propose() is None
    assert json.loads((tmp_path / CREDENTIALS_FILE).read_text()) == issued


@pytest.mark.parametrize(
    "content",
    [
        {"agent_token": "a" * 43, "server_token": "b" * 43, "accepted": "no"},
        {"agent_token": "short", "server_token": "b" * 43, "accepted": False},
        {"agent_token": "a" * 43, "server_token": "a" * 43, "accepted": False},
        ["a", "b"],
    ],
)
def test_a_credentials_file_that_is_not_one_is_refused_with_its_path(
    tmp_path: Path, content: object
) -> None:
    (tmp_path / CREDENTIALS_FILE).write_text(json.dumps(content))
    with pytest.raises(IdentityError, match=CREDENTIALS_FILE):
        loaded(tmp_path)


# --- real agents against a real server ---------------------------------------------------------


def server_config(database: Path, port: int = 0) -> ServerConfig:
    return ServerConfig(
        database=database,
        port=port,
        admin_token=ADMIN,
        join_token=JOIN,
        backoff_initial=timedelta(milliseconds=20),
        backoff_max=timedelta(milliseconds=200),
        graceful_timeout=timedelta(seconds=0.2),
    )


def agent_config(data_dir: Path, server_url: str) -> AgentConfig:
    return AgentConfig(
        data_dir=data_dir,
        port=0,
        server_url=server_url,
        join_token=JOIN,
        heartbeat_interval=0.1,
        report_backoff_initial=0.02,
        register_backoff_max=0.1,
    )


async def last_seen(http: httpx.AsyncClient, server: str, agent: UUID) -> str | None:
    response = await http.get(
        f"{server}/api/v1/agents/{agent}", headers={"Authorization": f"Bearer {ADMIN}"}
    )
    return response.json()["last_seen_at"] if response.is_success else None


async def runs_a_task(http: httpx.AsyncClient, server: str, wait_for: WaitFor) -> None:
    """A task created now reaches the agent (pushed with the server token it requires), runs,
    and is reported (with the agent's token)."""
    admin = {"Authorization": f"Bearer {ADMIN}"}
    marker = f"ran-{uuid4().hex[:8]}"
    created = await http.post(
        f"{server}/api/v1/tasks",
        json={"command": f"echo {marker}", "frequency": "every 1 seconds"},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    task_id = created.json()["command_id"]
    output: list[str] = []

    async def poll() -> None:
        while True:
            latest = await http.get(f"{server}/api/v1/tasks/{task_id}/latest_output", headers=admin)
            output[:] = [o.get("stdout", "") for o in latest.json()["outputs"]]
            if output:
                return
            await trio.sleep(0.05)

    with trio.fail_after(15):
        await poll()
    assert output == [f"{marker}\n"]


async def beats_go_through(http: httpx.AsyncClient, server: str, agent: UUID) -> None:
    """The server sees heartbeats (they present the agent's token) move ``last_seen_at``."""
    with trio.fail_after(10):
        first = None
        while first is None:
            first = await last_seen(http, server, agent)
            await trio.sleep(0.05)
        while await last_seen(http, server, agent) == first:
            await trio.sleep(0.05)


async def test_an_agent_whose_first_registration_answer_is_lost_registers_and_works(
    tmp_path: Path, nursery: trio.Nursery, wait_for: WaitFor
) -> None:
    server = await nursery.start(serve, server_config(tmp_path / "server.sqlite"))
    with AnswerDroppingProxy(server, REGISTER) as proxy:
        started: AgentStarted = await nursery.start(
            run_agent, agent_config(tmp_path / "agent", proxy.url)
        )
        async with httpx.AsyncClient(timeout=10) as http:
            await wait_for(lambda: accepted(tmp_path / "agent"))
            # The first answer was a 200 the agent never heard; the retry was accepted too.
            [(status, _)] = proxy.dropped
            assert status == 200
            await beats_go_through(http, server, started.agent_id)
            await runs_a_task(http, server, wait_for)


async def test_an_agent_with_credentials_an_older_server_issued_keeps_working(
    tmp_path: Path, nursery: trio.Nursery, wait_for: WaitFor
) -> None:
    server = await nursery.start(serve, server_config(tmp_path / "server.sqlite"))
    data_dir = tmp_path / "agent"
    data_dir.mkdir()
    agent_id = uuid4()
    async with httpx.AsyncClient(timeout=10) as http:
        # Issued as before: a registration with the join token and no proposal.
        issued = await http.post(
            server + REGISTER,
            json={"agent_id": str(agent_id), "url": "http://127.0.0.1:9"},
            headers={"Authorization": f"Bearer {JOIN}"},
        )
        assert issued.status_code == 200, issued.text
        credentials = issued.json()["credentials"]
        # The data directory an agent of the older release left: no "accepted" in the file.
        (data_dir / "agent_id").write_text(f"{agent_id}\n")
        (data_dir / CREDENTIALS_FILE).write_text(json.dumps(credentials))
        (data_dir / CREDENTIALS_FILE).chmod(0o600)
        started: AgentStarted = await nursery.start(run_agent, agent_config(data_dir, server))
        assert started.agent_id == agent_id
        await beats_go_through(http, server, agent_id)
        await runs_a_task(http, server, wait_for)
    assert json.loads((data_dir / CREDENTIALS_FILE).read_text()) == credentials


async def test_an_agent_keeps_its_credentials_when_the_servers_database_is_replaced(
    tmp_path: Path, nursery: trio.Nursery, wait_for: WaitFor
) -> None:
    port = free_port()
    first = trio.CancelScope()

    async def first_server(*, task_status: trio.TaskStatus[str]) -> None:
        with first:
            await serve(server_config(tmp_path / "first.sqlite", port), task_status=task_status)

    server = await nursery.start(first_server)
    data_dir = tmp_path / "agent"
    started: AgentStarted = await nursery.start(run_agent, agent_config(data_dir, server))
    await wait_for(lambda: accepted(data_dir))
    before = saved(data_dir)
    first.cancel()
    # A new, empty database on the same address: the agent's token is unknown there.
    assert await nursery.start(serve, server_config(tmp_path / "second.sqlite", port)) == server
    async with httpx.AsyncClient(timeout=10) as http:
        await beats_go_through(http, server, started.agent_id)
        await runs_a_task(http, server, wait_for)
    # It proposed the credentials it had: nothing new was issued, nothing rewritten.
    assert saved(data_dir) == before


class IssuingServer:
    """A server of the release before proposals: it ignores them and issues its own."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.issued = {"agent_token": "i" * 43, "server_token": "s" * 43}
        self.app = Starlette(routes=[Route(REGISTER, self.register, methods=["POST"])])

    async def register(self, request: Request) -> Response:
        body = await request.json()
        self.bodies.append(body)
        answer = {"agent_id": body["agent_id"], "url": body["url"], "credentials": self.issued}
        return JSONResponse(answer)


async def test_credentials_issued_by_an_older_server_replace_the_proposal(
    tmp_path: Path, nursery: trio.Nursery, serve_asgi: ServeAsgi, wait_for: WaitFor
) -> None:
    older = IssuingServer()
    url = await serve_asgi(older.app)
    data_dir = tmp_path / "agent"
    await nursery.start(run_agent, agent_config(data_dir, url))
    await wait_for(lambda: accepted(data_dir))
    [body] = older.bodies
    proposal = ProposedCredentials(**body["credentials"])
    assert proposal.agent_token != older.issued["agent_token"]
    assert saved(data_dir) == {**older.issued, "accepted": True}


async def test_an_agent_registers_with_one_proposal_across_restarts_until_taken(
    tmp_path: Path, nursery: trio.Nursery, serve_asgi: ServeAsgi, wait_for: WaitFor
) -> None:
    """Killed before any answer (here: the server refuses until told otherwise), a later start
    proposes the same credentials."""
    refusing = RefusingServer()
    url = await serve_asgi(refusing.app)
    data_dir = tmp_path / "agent"
    for _ in range(2):
        with trio.CancelScope() as life:
            nursery.start_soon(_cancel_after_bodies, life, refusing, len(refusing.bodies) + 2)
            await run_agent(agent_config(data_dir, url))
    proposals = {json.dumps(body["credentials"], sort_keys=True) for body in refusing.bodies}
    assert len(refusing.bodies) >= 4
    assert len(proposals) == 1
    assert saved(data_dir)["accepted"] is False
    assert all(body["authorization"] == f"Bearer {JOIN}" for body in refusing.bodies)


class RefusingServer:
    """Answers every registration 503, recording its body and the token presented."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.changed = trio.Event()
        self.app = Starlette(routes=[Route(REGISTER, self.register, methods=["POST"])])

    async def register(self, request: Request) -> Response:
        body = await request.json()
        self.bodies.append(body | {"authorization": request.headers.get("authorization")})
        self.changed.set()
        self.changed = trio.Event()
        error = {"code": "database_unavailable", "message": "later", "field": None}
        return JSONResponse({"error": error}, status_code=503)


async def _cancel_after_bodies(scope: trio.CancelScope, server: RefusingServer, count: int) -> None:
    with trio.fail_after(15):
        while len(server.bodies) < count:
            await server.changed.wait()
    scope.cancel()
