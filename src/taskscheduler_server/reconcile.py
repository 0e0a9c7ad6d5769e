"""Reconciliation: making what each agent has scheduled match what it should have.

Delivery alone trusts an agent's 200 forever; but an agent may lose what it was given (its
disk was wiped, it was restored from a backup) or hold tasks it should not (it was given them
by another server, or by hand). So on every registration, and every ``reconcile_interval`` for
each alive agent, the server asks the agent what it has (``GET /api/v1/tasks``) and compares:

- a task it should have but lacks, or holds with another command, frequency or anchor, is
  marked undelivered and handed to the :class:`~.dispatch.Dispatcher`, which pushes it (with
  its retries) as it pushes a new task;
- a task it has but is not assigned is removed: ``DELETE /api/v1/tasks/{task_id}`` (a purged
  task, for one, leaves no assignment behind to drive its removal).

The agent's identity also carries its labels: an agent of ``AVAILABLE_SERVERS`` (which never
registers) that restarted with other labels has its assignments follow them here.

The agent's listing is read *before* its assignments, so that a task created meanwhile is
never taken for an extra one; and an assignment delivered after the listing was asked for is
not pushed again. Before comparing, the agent is asked who it is (``GET /api/v1/agent``): an
agent whose URL now answers with another id (it restarted with a new identity on the same
port) is left alone, since another agent's tasks say nothing about this one's.

Agents are reconciled one request at a time each, a bounded number at once, each request
bounded by ``agent_request_timeout``; an agent that does not answer is skipped until the next
round (the dispatcher already retries what it has not acknowledged).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from uuid import UUID

import attrs
import httpx
import trio

from taskscheduler_core import (
    AgentIdentity,
    AgentStatus,
    TaskSpec,
    WireError,
    structure,
)

from .clock import utc_now
from .config import ServerConfig
from .dispatch import IDENTITY_PATH, UNREACHABLE, Dispatcher
from .store import AsyncStore, Store
from .tls import client_ssl_context

logger = logging.getLogger("taskscheduler.server.reconcile")

TASKS_PATH = "/api/v1/tasks"

#: At most this many agents are reconciled at the same time.
DEFAULT_CONCURRENCY = 16

#: What a failed request to an agent can raise: transport errors, and a URL httpx refuses.


async def _no_headers(agent_id: UUID) -> dict[str, str]:
    return {}


class AgentUnusable(Exception):
    """The agent cannot be reconciled now: unreachable, or its answer is not what we expect."""


@attrs.frozen(kw_only=True)
class Reconciliation:
    """What one reconciliation of ``agent_id`` did."""

    agent_id: UUID
    #: Tasks the agent lacked (or held another version of), now handed to the dispatcher.
    pushed: tuple[UUID, ...] = ()
    #: Tasks the agent held without being assigned them, and removed from it.
    removed: tuple[UUID, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.pushed or self.removed)


@attrs.frozen
class _Listing:
    specs: dict[UUID, TaskSpec]
    listed_at: datetime
    labels: dict[str, str]


class Reconciler:
    """Reconciles every alive agent every ``interval``, and an agent at once on :meth:`notify`.

    ``notify(agent_id)`` may be called from anywhere in the trio thread, before or while
    :meth:`run` runs; it never blocks, and asking again for an agent already waiting is one
    reconciliation.
    """

    def __init__(
        self,
        store: AsyncStore,
        dispatcher: Dispatcher,
        *,
        interval: timedelta = timedelta(seconds=30),
        agent_request_timeout: timedelta = timedelta(seconds=5),
        verify: ssl.SSLContext | bool = True,
        concurrency: int = DEFAULT_CONCURRENCY,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self._dispatcher = dispatcher
        self._interval = interval.total_seconds()
        self._timeout = agent_request_timeout.total_seconds()
        # httpx's verify=: the CA agents' HTTPS certificates are checked against.
        self._verify = verify
        self._limiter = trio.CapacityLimiter(concurrency)
        self._clock = clock
        #: The headers that authenticate the server to an agent (set by ``create_app``).
        self.agent_headers: Callable[[UUID], Awaitable[dict[str, str]]] = _no_headers
        self._client: httpx.AsyncClient | None = None
        self._wanted: set[UUID] = set()
        self._running: set[UUID] = set()
        self._wakeup = trio.Event()

    @classmethod
    def from_config(
        cls, store: AsyncStore, dispatcher: Dispatcher, config: ServerConfig
    ) -> Reconciler:
        return cls(
            store,
            dispatcher,
            interval=config.reconcile_interval,
            agent_request_timeout=config.agent_request_timeout,
            verify=client_ssl_context(config.ca_cert),
        )

    def notify(self, agent_id: UUID) -> None:
        """Reconcile ``agent_id`` soon (it registered, or came back)."""
        self._wanted.add(agent_id)
        self._wakeup.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Reconcile until cancelled."""
        async with (
            # trust_env=False: agents are peers on our own network, never behind a proxy.
            httpx.AsyncClient(
                timeout=self._timeout, trust_env=False, verify=self._verify
            ) as client,
            trio.open_nursery() as nursery,
        ):
            self._client = client
            try:
                nursery.start_soon(self._every_interval)
                task_status.started()
                while True:
                    await self._wakeup.wait()
                    self._wakeup = trio.Event()
                    # An agent being reconciled now is done again when that one ends.
                    for agent_id in self._wanted - self._running:
                        self._wanted.discard(agent_id)
                        self._running.add(agent_id)
                        nursery.start_soon(self._reconcile_in_background, agent_id)
            finally:
                self._client = None

    async def _every_interval(self) -> None:
        while True:
            await trio.sleep(self._interval)
            for agent in await self._store.call(Store.list_agents, AgentStatus.ALIVE):
                self.notify(agent.id)

    async def _reconcile_in_background(self, agent_id: UUID) -> None:
        try:
            async with self._limiter:
                await self.reconcile(agent_id)
        finally:
            self._running.discard(agent_id)
            if agent_id in self._wanted:
                self._wakeup.set()

    async def reconcile(self, agent_id: UUID) -> Reconciliation | None:
        """Reconcile ``agent_id`` now (only while :meth:`run` runs).

        ``None`` if it was not reconciled: unknown, lost, unreachable, or answering oddly.
        """
        agent = await self._store.call(Store.get_agent, agent_id)
        if agent is None or agent.status is AgentStatus.LOST:
            return None
        try:
            listing = await self._listing(agent_id, agent.url)
        except AgentUnusable as error:
            logger.debug("cannot reconcile agent %s at %s: %s", agent_id, agent.url, error)
            return None
        if listing.labels != agent.labels and await self._store.call(
            Store.update_agent_labels, agent_id, listing.labels, now=listing.listed_at
        ):
            logger.info("agent %s now has labels %s", agent_id, listing.labels)
            self._dispatcher.notify(agent_id)
        assignments = await self._store.call(Store.assignments_of, agent_id)
        should = {a.task.id: TaskSpec.of(a.task) for a in assignments}
        lacking = [
            task_id for task_id, spec in should.items() if listing.specs.get(task_id) != spec
        ]
        extra = [task_id for task_id in listing.specs if task_id not in should]

        # Only those delivered before the listing are marked: the others are on their way.
        pushed = await self._store.call(
            Store.redeliver, agent_id, lacking, delivered_before=listing.listed_at
        )
        if pushed:
            logger.warning(
                "agent %s lacks %d of its tasks (or holds other versions); pushing them again",
                agent_id,
                len(pushed),
            )
            self._dispatcher.notify(agent_id)
        removed = [task_id for task_id in extra if await self._remove(agent.url, task_id, agent_id)]
        if removed:
            logger.warning(
                "removed %d tasks from agent %s that it should not run", len(removed), agent_id
            )
        return Reconciliation(agent_id=agent_id, pushed=tuple(pushed), removed=tuple(removed))

    async def _listing(self, agent_id: UUID, url: str) -> _Listing:
        """What the agent at ``url`` has scheduled, if it is ``agent_id``."""
        listed_at = self._clock()
        data = await self._get_json(url + IDENTITY_PATH)
        try:
            identity = structure(data, AgentIdentity)
        except WireError as error:
            raise AgentUnusable(f"unexpected identity: {error}") from None
        if identity.agent_id != agent_id:
            raise AgentUnusable(f"{url} is now agent {identity.agent_id}")
        data = await self._get_json(url + TASKS_PATH, headers=await self.agent_headers(agent_id))
        try:
            specs = structure(data.get("tasks"), list[TaskSpec])
        except WireError as error:
            raise AgentUnusable(f"unexpected task listing: {error}") from None
        return _Listing(
            specs={spec.task_id: spec for spec in specs},
            listed_at=listed_at,
            labels=identity.labels,
        )

    async def _get_json(self, url: str, headers: dict[str, str] | None = None) -> dict[str, object]:
        assert self._client is not None, "reconcile() is for while run() runs"
        try:
            response = await self._client.get(url, headers=headers)
        except UNREACHABLE as error:
            raise AgentUnusable(repr(error)) from None
        if not response.is_success:
            raise AgentUnusable(f"GET {url}: HTTP {response.status_code}")
        try:
            data = response.json()
        except ValueError:
            raise AgentUnusable(f"GET {url}: not JSON") from None
        if not isinstance(data, dict):
            raise AgentUnusable(f"GET {url}: not a JSON object")
        return data

    async def _remove(self, url: str, task_id: UUID, agent_id: UUID) -> bool:
        """``DELETE`` ``task_id`` from the agent at ``url``; ``True`` if it answered 2xx."""
        assert self._client is not None
        try:
            response = await self._client.delete(
                f"{url}{TASKS_PATH}/{task_id}", headers=await self.agent_headers(agent_id)
            )
        except UNREACHABLE as error:
            logger.debug("cannot remove task %s from %s: %r", task_id, url, error)
            return False
        if not response.is_success:
            logger.warning(
                "agent at %s refused to remove task %s: HTTP %d %s",
                url,
                task_id,
                response.status_code,
                response.text[:200],
            )
            return False
        return True
