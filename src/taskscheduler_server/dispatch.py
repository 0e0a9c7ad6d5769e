"""Delivering tasks to agents, and finding the agents of ``AVAILABLE_SERVERS``.

The store says which assignments are undelivered; the dispatcher pushes each one with
``POST {agent}/api/v1/tasks/schedule`` until the agent answers 2xx, then marks it delivered.
Nothing here is held only in memory: a restarted server reads the undelivered assignments back
and carries on.

Each agent has its own *lane* (a trio task), so a slow or dead agent delays no other. A lane
pushes its agent's assignments one after the other; while its agent is unreachable it waits
with capped exponential backoff and jitter. A registration of that agent ends the wait at once
(the agent says it is up); new work for an agent in backoff waits for the next attempt, so that
creating tasks does not hammer a dead agent.
"""

from __future__ import annotations

import logging
import random
import ssl
from collections.abc import Callable
from datetime import datetime, timedelta
from uuid import UUID

import attrs
import httpx
import trio

from taskscheduler_core import (
    Agent,
    AgentIdentity,
    ScheduleTask,
    TaskSpec,
    WireError,
    structure,
    unstructure,
)
from taskscheduler_core import Backoff as CoreBackoff

from .clock import utc_now
from .config import ServerConfig, normalize_agent_url
from .records import Assignment
from .store import AsyncStore, Store
from .tls import client_ssl_context

logger = logging.getLogger("taskscheduler.server.dispatch")


def _no_headers(agent_id: UUID) -> dict[str, str]:
    return {}


SCHEDULE_PATH = "/api/v1/tasks/schedule"
IDENTITY_PATH = "/api/v1/agent"

#: What a failed request to an agent can raise: connection, timeout, protocol errors, and a URL
#: httpx cannot use. All mean "not reachable now"; the dispatcher keeps trying.
#: What calling an agent can raise when it cannot be reached. ValueError covers a host name
#: that httpx cannot encode (``http://a..b``): one bad agent URL must never stop the server.
UNREACHABLE = (httpx.HTTPError, httpx.InvalidURL, ValueError)


class Backoff:
    """The retry timer of one lane: the core's backoff, counting failures since the last reset.

    Each wait is in ``[d/2, d]`` with a random draw: the jitter keeps many lanes (or many
    servers) that failed together from retrying in step.
    """

    def __init__(self, initial: timedelta, maximum: timedelta) -> None:
        self.policy = CoreBackoff(initial=initial.total_seconds(), maximum=maximum.total_seconds())
        self._failures = 0

    def reset(self) -> None:
        self._failures = 0

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; each call doubles the next, up to the cap."""
        self._failures += 1
        return self.policy.delay(self._failures, jitter=random.random())


@attrs.define(eq=False)
class _Lane:
    """Delivery to one agent."""

    agent_id: UUID
    wakeup: trio.Event = attrs.Factory(trio.Event)
    backing_off: bool = False
    # An urgent wake-up (the agent registered) also restarts the backoff from its start.
    urgent: bool = False

    def wake(self, *, urgent: bool) -> None:
        if urgent:
            self.urgent = True
        if urgent or not self.backing_off:
            self.wakeup.set()


class Dispatcher:
    """Pushes undelivered assignments to agents and resolves ``available_agents``.

    ``notify()`` (new tasks) and ``notify(agent_id)`` (that agent registered) may be called from
    anywhere in the trio thread, before or while :meth:`run` runs; they never block.
    """

    def __init__(
        self,
        store: AsyncStore,
        *,
        available_agents: tuple[str, ...] = (),
        backoff_initial: timedelta = timedelta(seconds=0.5),
        backoff_max: timedelta = timedelta(seconds=30),
        agent_request_timeout: timedelta = timedelta(seconds=5),
        verify: ssl.SSLContext | bool = True,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self.available_agents = tuple(dict.fromkeys(map(normalize_agent_url, available_agents)))
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._timeout = agent_request_timeout.total_seconds()
        # httpx's verify=: the CA agents' HTTPS certificates are checked against.
        self._verify = verify
        self._clock = clock
        #: The headers that authenticate the server to an agent (set by ``create_app``).
        self.agent_headers: Callable[[UUID], dict[str, str]] = _no_headers
        self._lanes: dict[UUID, _Lane] = {}
        self._nursery: trio.Nursery | None = None
        self._client: httpx.AsyncClient | None = None
        # Set when there may be undelivered work the lanes do not know of yet.
        self._changed = trio.Event()
        self._changed.set()  # so that run() loads what an earlier life left undelivered

    @classmethod
    def from_config(cls, store: AsyncStore, config: ServerConfig) -> Dispatcher:
        return cls(
            store,
            available_agents=config.available_agents,
            backoff_initial=config.backoff_initial,
            backoff_max=config.backoff_max,
            agent_request_timeout=config.agent_request_timeout,
            verify=client_ssl_context(config.ca_cert),
        )

    def notify(self, agent_id: UUID | None = None) -> None:
        """Something may need delivery: new tasks, or (with ``agent_id``) that agent registered."""
        if agent_id is None:
            self._changed.set()
            return
        lane = self._lanes.get(agent_id)
        if lane is not None:
            lane.wake(urgent=True)
        elif self._nursery is not None:
            self._start_lane(agent_id).wake(urgent=True)
        else:
            self._changed.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver until cancelled."""
        async with (
            # trust_env=False: agents are peers on our own network, never reached through the
            # proxies the environment may configure for the outside world.
            httpx.AsyncClient(
                timeout=self._timeout, trust_env=False, verify=self._verify
            ) as client,
            trio.open_nursery() as nursery,
        ):
            self._client = client
            self._nursery = nursery
            try:
                for url in self.available_agents:
                    nursery.start_soon(self._resolve, url)
                task_status.started()
                await self._watch_for_work()
            finally:
                self._nursery = None
                self._lanes.clear()

    async def _watch_for_work(self) -> None:
        while True:
            await self._changed.wait()
            self._changed = trio.Event()
            for agent_id in await self._store.call(Store.agents_awaiting_delivery):
                lane = self._lanes.get(agent_id) or self._start_lane(agent_id)
                lane.wake(urgent=False)

    def _start_lane(self, agent_id: UUID) -> _Lane:
        assert self._nursery is not None
        lane = self._lanes[agent_id] = _Lane(agent_id)
        self._nursery.start_soon(self._run_lane, lane, name=f"dispatch to agent {agent_id}")
        return lane

    async def _run_lane(self, lane: _Lane) -> None:
        backoff = Backoff(self._backoff_initial, self._backoff_max)
        failures = 0
        while True:
            # A wake-up from now on means "look again": replace the event before reading.
            lane.wakeup = trio.Event()
            if lane.urgent:
                lane.urgent = False
                backoff.reset()
            pending = await self._store.call(Store.undelivered, lane.agent_id)
            if await self._push_all(pending, quiet=failures > 0):
                if failures:
                    logger.info("agent %s is reachable again", lane.agent_id)
                failures = 0
                backoff.reset()
                await lane.wakeup.wait()
                continue
            failures += 1
            lane.backing_off = True
            try:
                with trio.move_on_after(backoff.next_delay()):
                    await lane.wakeup.wait()
            finally:
                lane.backing_off = False

    async def _push_all(self, pending: list[Assignment], *, quiet: bool) -> bool:
        """Push each assignment; ``True`` if all were acknowledged.

        Stops at the first transport error (the agent is unreachable: trying its other tasks
        now would only add timeouts), but goes on past an error status, which concerns one task.
        """
        all_delivered = True
        for assignment in pending:
            try:
                delivered = await self._push(assignment, quiet=quiet)
            except UNREACHABLE as error:
                log = logger.debug if quiet else logger.warning
                log(
                    "cannot reach agent %s at %s: %r",
                    assignment.agent_id,
                    assignment.agent_url,
                    error,
                )
                return False
            all_delivered = all_delivered and delivered
        return all_delivered

    async def _push(self, assignment: Assignment, *, quiet: bool) -> bool:
        assert self._client is not None
        body = unstructure(ScheduleTask.of(TaskSpec.of(assignment.task)))
        response = await self._client.post(
            assignment.agent_url + SCHEDULE_PATH,
            json=body,
            headers=self.agent_headers(assignment.agent_id),
        )
        if not response.is_success:
            (logger.debug if quiet else logger.warning)(
                "agent %s refused task %s: HTTP %d %s",
                assignment.agent_id,
                assignment.task.id,
                response.status_code,
                response.text[:200],
            )
            return False
        await self._store.call(Store.mark_delivered, assignment, self._clock())
        logger.debug("delivered task %s to agent %s", assignment.task.id, assignment.agent_id)
        return True

    async def _resolve(self, url: str) -> None:
        """Ask the agent at ``url`` who it is, until it answers; then register it."""
        assert self._client is not None
        backoff = Backoff(self._backoff_initial, self._backoff_max)
        attempts = 0
        while True:
            attempts += 1
            problem: str
            try:
                response = await self._client.get(url + IDENTITY_PATH)
                if response.is_success:
                    identity = structure(response.json(), AgentIdentity)
                    break
                problem = f"HTTP {response.status_code}"
            except UNREACHABLE as error:
                problem = repr(error)
            except (ValueError, WireError) as error:  # not JSON, or not an identity
                problem = f"unexpected answer: {error}"
            (logger.warning if attempts == 1 else logger.debug)(
                "cannot resolve agent %s (attempt %d): %s", url, attempts, problem
            )
            await trio.sleep(backoff.next_delay())
        agent = Agent(id=identity.agent_id, url=url, registered_at=self._clock())
        await self._store.call(Store.upsert_agent, agent)
        logger.info("agent %s at %s resolved from AVAILABLE_SERVERS", agent.id, url)
        self.notify(agent.id)
