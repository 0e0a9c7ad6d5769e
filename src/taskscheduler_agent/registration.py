"""Registering with the server, so it knows where to push this agent's tasks, and telling it
that this agent is alive (heartbeats), so that it is not counted as lost."""

from __future__ import annotations

import enum
import logging
from typing import Any, NoReturn
from uuid import UUID

import attrs
import httpx
import trio

from taskscheduler_core import ProposedCredentials, RegisterAgent, unstructure

from .backoff import Backoff
from .credentials import AgentKeys

logger = logging.getLogger(__name__)


async def register(
    client: httpx.AsyncClient,
    *,
    server_url: str,
    registration: RegisterAgent,
    backoff: Backoff,
    request_timeout: float = 10.0,
    keys: AgentKeys | None = None,
) -> None:
    """``POST {server_url}/api/v1/agents/register`` until the server answers 2xx.

    Every answer but a 2xx is retried, a 4xx too: a server that is being upgraded, or not yet
    configured, will accept us later, and until it does the agent cannot be given any task.

    With ``keys`` the agent registers with its own credential once a server took it; until
    then (and whenever the server no longer knows it: its database was replaced) with the join
    token and the credentials it proposes for itself, made and saved before the first attempt
    (docs/security.md). A lost answer is then harmless: the same proposal, sent again, is
    recognised. What the server took (or, if it does not read proposals, issued) is kept, and
    ``client`` presents the agent's token on every later request.
    """
    url = f"{server_url.rstrip('/')}/api/v1/agents/register"
    proposal = None if keys is None else await trio.to_thread.run_sync(keys.propose)
    failures = 0
    # The join token first while no server has taken this agent's credentials.
    use_join_token = keys is not None and keys.agent_token is None
    while True:
        token = None if keys is None else keys.registration_token(use_join_token=use_join_token)
        joining = keys is not None and token is not None and token == keys.join_token
        offered = proposal if joining else None
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        body = _register_body(registration, offered)
        try:
            response = await client.post(url, json=body, headers=headers, timeout=request_timeout)
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as error:
            reason = f"{type(error).__name__}: {error}"
        else:
            if response.is_success:
                if keys is not None:
                    await _keep_credentials(
                        client, keys, response, presented=token, offered=offered
                    )
                logger.info("registered with %s as %s", server_url, registration.url)
                return
            if response.status_code == 401 and keys is not None and keys.join_token is not None:
                use_join_token = not use_join_token
            reason = f"HTTP {response.status_code}: {response.text[:200]}"
        failures += 1
        delay = backoff.delay(failures)
        logger.warning("could not register with %s (%s); retrying in %.3g s", url, reason, delay)
        await trio.sleep(delay)


class Heartbeat(enum.Enum):
    """What one heartbeat found out."""

    ALIVE = "alive"  #: the server knows this agent and counts it alive
    UNKNOWN = "unknown"  #: the server does not know this agent: it must register again
    FAILED = "failed"  #: no answer, or one that says nothing about this agent


async def heartbeat(
    client: httpx.AsyncClient, *, server_url: str, agent_id: UUID, request_timeout: float = 10.0
) -> Heartbeat:
    """``POST {server_url}/api/v1/agents/{agent_id}/heartbeat`` once."""
    url = f"{server_url.rstrip('/')}/api/v1/agents/{agent_id}/heartbeat"
    try:
        response = await client.post(url, json={}, timeout=request_timeout)
    except (httpx.HTTPError, httpx.InvalidURL, OSError) as error:
        logger.debug("heartbeat to %s failed: %s: %s", url, type(error).__name__, error)
        return Heartbeat.FAILED
    if response.is_success:
        return Heartbeat.ALIVE
    if response.status_code == 401:
        # The server does not know our credential (its database was replaced): registering
        # again with the join token makes us known again.
        return Heartbeat.UNKNOWN
    if response.status_code == 404 and _error_code(response) == "agent_not_found":
        # The server's database was replaced, or it never had us. Any other 404 is a server
        # without the endpoint (an older release), where registering again would change
        # nothing but would repeat at every heartbeat.
        return Heartbeat.UNKNOWN
    logger.debug("heartbeat to %s: HTTP %d: %s", url, response.status_code, response.text[:200])
    return Heartbeat.FAILED


async def stay_registered(
    client: httpx.AsyncClient,
    *,
    server_url: str,
    registration: RegisterAgent,
    backoff: Backoff,
    heartbeat_interval: float,
    request_timeout: float = 10.0,
    keys: AgentKeys | None = None,
) -> NoReturn:
    """Register, then heartbeat every ``heartbeat_interval`` seconds, forever; register again
    whenever the server answers a heartbeat with 404 (it does not know this agent)."""
    await register(
        client,
        server_url=server_url,
        registration=registration,
        backoff=backoff,
        request_timeout=request_timeout,
        keys=keys,
    )
    failing = False
    while True:
        await trio.sleep(heartbeat_interval)
        outcome = await heartbeat(
            client,
            server_url=server_url,
            agent_id=registration.agent_id,
            request_timeout=request_timeout,
        )
        if outcome is Heartbeat.FAILED:
            if not failing:
                logger.warning("heartbeats to %s fail; still trying", server_url)
            failing = True
            continue
        if failing:
            logger.info("heartbeats to %s go through again", server_url)
        failing = False
        if outcome is Heartbeat.UNKNOWN:
            logger.warning("%s does not know this agent: registering again", server_url)
            await register(
                client,
                server_url=server_url,
                registration=registration,
                backoff=backoff,
                request_timeout=request_timeout,
                keys=keys,
            )


def _register_body(
    registration: RegisterAgent, offered: ProposedCredentials | None
) -> dict[str, Any]:
    body: dict[str, Any] = unstructure(attrs.evolve(registration, credentials=offered))
    if offered is None:
        # The original three fields only, as every server release (and a script) reads them.
        del body["credentials"]
    return body


async def _keep_credentials(
    client: httpx.AsyncClient,
    keys: AgentKeys,
    response: httpx.Response,
    *,
    presented: str | None,
    offered: ProposedCredentials | None,
) -> None:
    """After a 2xx: keep what the server issued, or the proposal it holds; then present the
    agent's token on every request."""
    try:
        answer = response.json()
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        answer = {}
    issued = answer.get("credentials")
    accepted = answer.get("credentials_accepted")
    if isinstance(issued, dict):
        # A server that does not read proposals (an older release) issues its own.
        agent_token, server_token = issued.get("agent_token"), issued.get("server_token")
        if isinstance(agent_token, str) and isinstance(server_token, str):
            await trio.to_thread.run_sync(keys.save, agent_token, server_token)
            logger.info("received this agent's credentials; kept in %s", keys.path)
    elif keys.proposal is not None and (
        accepted is True or (presented is not None and presented == keys.proposal.agent_token)
    ):
        # Taken: said so, or the proposed token itself was accepted as this agent's.
        await trio.to_thread.run_sync(keys.accept)
        logger.info("the server holds this agent's credentials; kept in %s", keys.path)
    elif offered is not None and accepted is False:
        logger.warning(
            "the server took no credentials: it has no join token, so it cannot present the "
            "credential this agent requires of scheduling calls; give it this agent's join token"
        )
    if keys.agent_token is not None:
        client.headers["Authorization"] = f"Bearer {keys.agent_token}"


def _error_code(response: httpx.Response) -> str | None:
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None
