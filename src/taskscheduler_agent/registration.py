"""Registering with the server, so it knows where to push this agent's tasks."""

from __future__ import annotations

import logging

import httpx
import trio

from taskscheduler_core import RegisterAgent, unstructure

from .backoff import Backoff

logger = logging.getLogger(__name__)


async def register(
    client: httpx.AsyncClient,
    *,
    server_url: str,
    registration: RegisterAgent,
    backoff: Backoff,
    request_timeout: float = 10.0,
) -> None:
    """``POST {server_url}/api/v1/agents/register`` until the server answers 2xx.

    Every answer but a 2xx is retried, a 4xx too: a server that is being upgraded, or not yet
    configured, will accept us later, and until it does the agent cannot be given any task.
    """
    url = f"{server_url.rstrip('/')}/api/v1/agents/register"
    body = unstructure(registration)
    failures = 0
    while True:
        try:
            response = await client.post(url, json=body, timeout=request_timeout)
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as error:
            reason = f"{type(error).__name__}: {error}"
        else:
            if response.is_success:
                logger.info("registered with %s as %s", server_url, registration.url)
                return
            reason = f"HTTP {response.status_code}: {response.text[:200]}"
        failures += 1
        delay = backoff.delay(failures)
        logger.warning("could not register with %s (%s); retrying in %.3g s", url, reason, delay)
        await trio.sleep(delay)
