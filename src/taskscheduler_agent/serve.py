"""Running an agent: its HTTP endpoint, scheduling loop, reporter, registration and heartbeats.

:func:`run_agent` opens the one nursery that owns all of them. On start it opens the state file
(``DATA_DIR/agent.sqlite3``), records the executions a previous run left interrupted, resumes
every saved schedule and delivers the outbox. It stops two ways: gracefully when its
``shutdown`` event is set (no new command starts, running ones get ``kill_grace`` seconds, then
are killed and recorded), or at once when cancelled (running commands are killed; the next
start records them as interrupted).
"""

from __future__ import annotations

import logging
import os
from functools import partial
from typing import cast
from uuid import UUID

import attrs
import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework

from taskscheduler_core import RegisterAgent

from .app import create_app
from .backoff import Backoff
from .config import AgentConfig
from .credentials import AgentKeys, check_exposure
from .engine import Engine
from .identity import load_or_create_agent_id
from .metrics import AgentMetrics
from .outbox import SqliteOutbox
from .recovery import recover_interrupted
from .registration import stay_registered
from .reporter import Reporter
from .runner import command_environment
from .state import STATE_FILE, AsyncAgentState

logger = logging.getLogger(__name__)

_ALL_ADDRESSES = frozenset({"0.0.0.0", "::", ""})


@attrs.frozen(kw_only=True)
class AgentStarted:
    """What ``run_agent`` tells its starter once it listens."""

    agent_id: UUID
    #: The URL the agent is known by: ``advertise_url`` if configured, else ``bound_url``.
    url: str
    #: The URL the HTTP endpoint actually listens on (with the real port when port 0 was asked).
    bound_url: str


async def run_agent(
    config: AgentConfig,
    *,
    shutdown: trio.Event | None = None,
    task_status: trio.TaskStatus[AgentStarted] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the agent until ``shutdown`` is set (a graceful stop; then it returns) or until
    cancelled; ``task_status.started`` once it listens.

    With ``config.server_url`` the agent registers there (retrying until it is accepted, on every
    start), heartbeats every ``config.heartbeat_interval`` and reports every execution there.
    """
    check_exposure(config.host, join_token=config.join_token, insecure=config.insecure)
    agent_id = await trio.to_thread.run_sync(load_or_create_agent_id, config.data_dir)
    keys = AgentKeys(config.data_dir, join_token=config.join_token)
    await trio.to_thread.run_sync(keys.load)
    state = await AsyncAgentState.open(config.data_dir / STATE_FILE)
    try:
        async with httpx.AsyncClient(
            timeout=config.request_timeout, verify=config.server_verify()
        ) as client:
            if keys.agent_token is not None:
                # Heartbeats and reports present the agent's own credential.
                client.headers["Authorization"] = f"Bearer {keys.agent_token}"
            await _run(config, agent_id, state, client, keys, shutdown, task_status)
    finally:
        with trio.CancelScope(shield=True):
            await state.aclose()


async def _run(
    config: AgentConfig,
    agent_id: UUID,
    state: AsyncAgentState,
    client: httpx.AsyncClient,
    keys: AgentKeys,
    shutdown: trio.Event | None,
    task_status: trio.TaskStatus[AgentStarted],
) -> None:
    metrics = AgentMetrics(state_path=config.data_dir / STATE_FILE)
    reporter = Reporter(
        server_url=config.server_url,
        outbox=SqliteOutbox(state),
        client=client,
        backoff=Backoff(initial=config.report_backoff_initial, maximum=config.report_backoff_max),
        request_timeout=config.request_timeout,
        on_acknowledged=metrics.acknowledged,
    )
    # Every execution recorded, by the engine or by the recovery below, is counted.
    deliver = metrics.counting(reporter.submit)
    engine = Engine(
        agent_id=agent_id,
        deliver=deliver,
        env=command_environment(os.environ),
        max_output_bytes=config.max_output_bytes,
        kill_grace=config.kill_grace,
        store=state,
        on_start=metrics.started,
    )
    metrics.watch(engine)
    await recover_interrupted(state, deliver, agent_id=agent_id, now=engine.clock.now())
    for saved in await state.schedules():
        engine.restore(saved.spec, after=saved.resume_after)
    app = create_app(
        engine=engine, agent_id=agent_id, keys=keys, labels=config.labels, metrics=metrics
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(reporter.run)
        await nursery.start(engine.run)
        # Starlette and hypercorn spell the ASGI callable's types each their own way.
        asgi_app = cast("ASGIFramework", app)
        binds: list[str] = await nursery.start(partial(serve, asgi_app, _hypercorn_config(config)))
        bound_url = binds[0]
        url = config.advertise_url or bound_url
        if config.advertise_url is None and config.host in _ALL_ADDRESSES:
            logger.warning(
                "listening on all addresses as %s: set advertise_url to the URL the server "
                "can reach this agent at",
                bound_url,
            )
        if config.server_url is not None:
            nursery.start_soon(
                partial(
                    stay_registered,
                    client,
                    server_url=config.server_url,
                    registration=RegisterAgent(agent_id=agent_id, url=url, labels=config.labels),
                    backoff=Backoff(
                        initial=config.report_backoff_initial,
                        maximum=config.register_backoff_max,
                    ),
                    heartbeat_interval=config.heartbeat_interval,
                    request_timeout=config.request_timeout,
                    keys=keys,
                )
            )
        logger.info(
            "agent %s listening on %s with %d task(s)", agent_id, bound_url, len(engine.tasks())
        )
        task_status.started(AgentStarted(agent_id=agent_id, url=url, bound_url=bound_url))
        if shutdown is not None:
            await shutdown.wait()
            logger.info("agent %s stopping", agent_id)
            await engine.stop()
            # Reports not yet delivered stay in the outbox, on disk, for the next start.
            nursery.cancel_scope.cancel()


def _hypercorn_config(config: AgentConfig) -> HypercornConfig:
    hypercorn_config = HypercornConfig()
    host = f"[{config.host}]" if ":" in config.host else config.host
    hypercorn_config.bind = [f"{host}:{config.port}"]
    # Executions are reported elsewhere; per-request access logs would only be noise.
    hypercorn_config.accesslog = None
    # hypercorn's own messages ("Running on …") through logging, like the server's: the CLI
    # prints where everything listens itself
    hypercorn_config.errorlog = logging.getLogger("taskscheduler.agent.http")
    if config.tls_cert is not None and config.tls_key is not None:
        # HTTPS: the bound URL (and so the URL registered with the server) is https://…
        hypercorn_config.certfile = str(config.tls_cert)
        hypercorn_config.keyfile = str(config.tls_key)
    return hypercorn_config
