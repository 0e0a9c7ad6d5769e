"""Registering with the server, so it knows where to push this agent's tasks, and telling it
that this agent is alive (heartbeats), so that it is not counted as lost."""

from __future__ import annotations

import enum
import logging
from typing import NoReturn
from uuid import UUID

import httpx
import trio

from taskscheduler_core import RegisterAgent, unstructure

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

    With ``keys`` the agent registers with its own credential, or the join token when it has
    none (or when the server no longer knows its credential: its database was replaced), and
    keeps the credentials the server issues; ``client`` then presents the agent's token on
    every later request.
    """
    url = f"{server_url.rstrip('/')}/api/v1/agents/register"
    body = unstructure(registration)
    failures = 0
    use_join_token = False
    while True:
        token = None if keys is None else keys.registration_token(use_join_token=use_join_token)
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        try:
            response = await client.post(url, json=body, headers=headers, timeout=request_timeout)
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as error:
            reason = f"{type(error).__name__}: {error}"
        else:
            if response.is_success:
                if keys is not None:
                    await _keep_credentials(client, keys, response)
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


async def _keep_credentials(
    client: httpx.AsyncClient, keys: AgentKeys, response: httpx.Response
) -> None:
    try:
        issued = response.json().get("credentials")
    except (ValueError, AttributeError):
        issued = None
    if isinstance(issued, dict):
        agent_token, server_token = issued.get("agent_token"), issued.get("server_token")
        if isinstance(agent_token, str) and isinstance(server_token, str):
            await trio.to_thread.run_sync(keys.save, agent_token, server_token)
            logger.info("received this agent's credentials; kept in %s", keys.path)
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
