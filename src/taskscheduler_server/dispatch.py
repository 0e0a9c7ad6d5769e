"""Delivering tasks to agents, and finding the agents of ``AVAILABLE_SERVERS``.

The store says which assignments are undelivered; the dispatcher pushes each one with
``POST {agent}/api/v1/tasks/schedule`` until the agent answers 2xx, then marks it delivered.
An ended assignment (the task was deleted, or no longer targets the agent) is delivered the
same way as ``DELETE {agent}/api/v1/tasks/{task_id}``. Nothing of this is held only in memory:
a restarted server reads the undelivered assignments back and carries on.

Manual runs (``POST /api/v1/tasks/{id}/run``) go the same way, after the agent's pending
pushes (so an agent that lacks the task gets it first): ``POST {agent}/api/v1/tasks/{id}/run``
with the run's time, retried until the run's report deadline. They are held in memory only: a
manual run is worth trying while its run can still complete, not after a restart.

Each agent has its own *lane* (a trio task), so a slow or dead agent delays no other. A lane
pushes its agent's assignments one after the other; while its agent is unreachable it waits
with capped exponential backoff and jitter. A registration of that agent ends the wait at once
(the agent says it is up); new work for an agent in backoff waits for the next attempt, so that
creating tasks does not hammer a dead agent.

Several replicas (see lease.py): every replica runs a dispatcher, and API calls poke their own
replica's. The replica holding the lease runs it *leading* (``run(leading=True)``): it pushes the
assignments, resolves ``AVAILABLE_SERVERS``, and, since a task may be created (or an agent
registered) through another replica, it also looks for undelivered assignments in the store
every ``poll_interval`` (0.5 s), not only when poked. The others run it *standing by*
(``leading=False``): they push no assignment and only send the manual runs received by their
own API, which live in their memory; a run that an agent refuses for lack of the task marks the
assignment undelivered, and the holder pushes it at its next look.

An agent that registers (or comes back) through another replica pokes only that replica, whose
dispatcher does not push. So at each look, while some of its lanes back off, the holder also
reads when those agents were last heard from (one query on the agents' primary key): a lane
whose agent was heard from (a registration, heartbeat or report, through any replica) since its
last attempt began tries again at once. An agent reachable again after failed attempts, however
its lane found out, is handed to the reconciler (``on_reachable_again``), as a registration
through the holder would be.
Such an attempt does not restart the backoff: an agent that is up but cannot be reached from
here (a wrong URL, a firewall) is tried once more per heartbeat interval (5 s) at most, not
at every report it sends.

A new task goes to all its agents at once, so the store calls around the pushes are batched:
the watcher reads the work of every idle lane in one call, and the acknowledgments that come
meanwhile are recorded in one call. One call per lane would queue them one behind the other
(the store runs one call at a time), and the last agents would wait for all of them.
"""

from __future__ import annotations

import logging
import math
import random
import ssl
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from uuid import UUID

import attrs
import httpx
import trio

from taskscheduler_core import (
    Agent,
    AgentIdentity,
    RunTaskNow,
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


async def _no_headers(agent_id: UUID) -> dict[str, str]:
    return {}


def _nobody(agent_id: UUID) -> None:
    pass


SCHEDULE_PATH = "/api/v1/tasks/schedule"
IDENTITY_PATH = "/api/v1/agent"
TASK_PATH = "/api/v1/tasks/{task_id}"
RUN_PATH = "/api/v1/tasks/{task_id}/run"

#: See ``Dispatcher.heard_from_interval`` (seconds): the agents' default heartbeat interval.
HEARD_FROM_INTERVAL = 5.0

#: Statuses that say "not now" rather than "never": a request refused with one is tried again.
_TRANSIENT = frozenset({408, 425, 429})

#: How often the dispatcher of the lease holder looks for undelivered work in the store, besides
#: when poked: what other replicas wrote reaches agents within this. One cheap query (the
#: assignments index) each time.
DEFAULT_POLL_INTERVAL = timedelta(seconds=0.5)

#: The connections to agents: as many at once as httpx allows by default (each lane has at most
#: one request in flight), and all of them kept open between pushes; httpx keeps only 20, so
#: that past 20 agents a fan-out would connect anew to the others every time.
AGENT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=100)

#: One manual run to send an agent: the task, and the run's time.
_RunKey = tuple[UUID, datetime]

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
    #: Waiting for work after a round that delivered everything (or before its first round):
    #: the watcher may then read the lane's work for it, with other idle lanes' (see ``work``).
    idle: bool = True
    #: When (the server's clock) the last delivery attempt began.
    attempted_at: datetime | None = None
    #: When (trio's clock) a contact last woke it so (see Dispatcher.heard_from_interval).
    heard_woken_at: float = -math.inf
    #: The undelivered assignments the watcher read for this lane, which its next round pushes
    #: instead of reading its own. Read after the change that woke the lane, so as fresh as the
    #: lane's own read would be; a stale one can only push a task twice (harmless: scheduling
    #: is idempotent, and an outdated acknowledgment marks nothing).
    work: list[Assignment] | None = None

    def wake(self, *, urgent: bool) -> None:
        if urgent:
            self.urgent = True
            # The agent registered: its assignments were all marked undelivered just now,
            # maybe after the watcher read this work.
            self.work = None
        if urgent or not self.backing_off:
            self.wakeup.set()

    def agent_heard_from(self) -> None:
        """The agent was heard from since the last attempt began: try again now, without
        restarting the backoff (see the module's docstring)."""
        self.wakeup.set()


@attrs.define(eq=False)
class _Acknowledgment:
    """An assignment its agent acknowledged, waiting to be recorded delivered."""

    assignment: Assignment
    #: When the agent acknowledged it.
    delivered_at: datetime
    recorded: trio.Event = attrs.Factory(trio.Event)
    #: What :meth:`Store.mark_delivered` answered.
    marked: bool = False


def _mark_all_delivered(store: Store, delivered: list[tuple[Assignment, datetime]]) -> list[bool]:
    """:meth:`Store.mark_delivered` of each assignment with its time, in one store call."""
    return [store.mark_delivered(assignment, moment) for assignment, moment in delivered]


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
        poll_interval: timedelta | None = DEFAULT_POLL_INTERVAL,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._store = store
        self.available_agents = tuple(dict.fromkeys(map(normalize_agent_url, available_agents)))
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._timeout = agent_request_timeout.total_seconds()
        # httpx's verify=: the CA agents' HTTPS certificates are checked against.
        self._verify = verify
        #: How often a leading dispatcher looks for work written by other replicas (None: never).
        self._poll_interval = None if poll_interval is None else poll_interval.total_seconds()
        self._clock = clock
        #: The headers that authenticate the server to an agent (set by ``create_app``).
        self.agent_headers: Callable[[UUID], Awaitable[dict[str, str]]] = _no_headers
        #: A lane backing off is woken by its agent being heard from at most once in this
        #: many seconds (an agent's heartbeat interval by default): an agent that reports every
        #: second but cannot be reached from here is not pushed at every poll.
        self.heard_from_interval = HEARD_FROM_INTERVAL
        #: Called with an agent reachable again after failed attempts, while leading
        #: (``serve()`` sets the reconciler's ``notify``).
        self.on_reachable_again: Callable[[UUID], None] = _nobody
        #: Pushing assignments (this replica holds the lease), or only sending manual runs.
        self._leading = False
        self._lanes: dict[UUID, _Lane] = {}
        #: Manual runs still to send, by agent: when each stops being worth sending.
        self._runs: dict[UUID, dict[_RunKey, datetime]] = {}
        self._nursery: trio.Nursery | None = None
        self._client: httpx.AsyncClient | None = None
        # Set when there may be undelivered work the lanes do not know of yet.
        self._changed = trio.Event()
        self._changed.set()  # so that run() loads what an earlier life left undelivered
        # Acknowledged pushes not yet recorded, and set when there are some.
        self._acknowledged: list[_Acknowledgment] = []
        self._to_record = trio.Event()

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

    def run_now(
        self, task_id: UUID, scheduled_at: datetime, agent_ids: list[UUID], *, until: datetime
    ) -> None:
        """Send each of ``agent_ids`` a manual run of ``task_id`` for ``scheduled_at``, tried
        until ``until``; never blocks."""
        for agent_id in agent_ids:
            self._runs.setdefault(agent_id, {})[(task_id, scheduled_at)] = until
            lane = self._lanes.get(agent_id)
            if lane is not None:
                lane.wake(urgent=False)
            elif self._nursery is not None:
                self._start_lane(agent_id).wake(urgent=False)
            else:
                self._changed.set()

    async def run(
        self, *, leading: bool = True, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Deliver until cancelled: assignments and manual runs, or with ``leading=False`` (a
        replica that does not hold the lease) manual runs only.

        It may be run again after it was cancelled (the lease loop switches it between the two
        modes): what is still to deliver is read again from the store, and the manual runs not
        sent yet are kept.
        """
        # What a previous run left: acknowledgments whose lanes are gone (a later round pushes
        # those again), and a look at the store for the undelivered work, which starts it all.
        self._acknowledged = []
        self._to_record = trio.Event()
        self._changed.set()
        self._leading = leading
        async with (
            # trust_env=False: agents are peers on our own network, never reached through the
            # proxies the environment may configure for the outside world.
            httpx.AsyncClient(
                timeout=self._timeout, trust_env=False, verify=self._verify, limits=AGENT_LIMITS
            ) as client,
            trio.open_nursery() as nursery,
        ):
            self._client = client
            self._nursery = nursery
            try:
                for url in self.available_agents if leading else ():
                    nursery.start_soon(self._resolve, url)
                nursery.start_soon(self._record_acknowledgments)
                task_status.started()
                await self._watch_for_work()
            finally:
                self._nursery = None
                self._leading = False
                self._lanes.clear()

    async def _watch_for_work(self) -> None:
        while True:
            # Leading, it also looks every poll_interval: another replica may have written work
            # (a task created through it, an agent that registered with it).
            with trio.move_on_after(
                self._poll_interval if self._leading and self._poll_interval else math.inf
            ):
                await self._changed.wait()
            self._changed = trio.Event()
            awaiting = (
                await self._store.call(Store.agents_awaiting_delivery) if self._leading else set()
            )
            wanted = awaiting | {agent for agent, runs in self._runs.items() if runs}
            lanes = [self._lanes.get(agent_id) or self._start_lane(agent_id) for agent_id in wanted]
            # The idle lanes' work is read here, in one store call. Read by each lane, the reads
            # queue one behind another in the store (one thread, one call at a time), and the
            # first acknowledgments behind all of them: with 50 agents, the last lane started
            # its push only after 50 reads, and no push was recorded before it.
            idle = [lane.agent_id for lane in lanes if lane.idle and lane.agent_id in awaiting]
            work = await self._store.call(Store.undelivered_by_agent, idle) if idle else {}
            for lane in lanes:
                if lane.idle and lane.agent_id in work:  # still idle: nothing read it since
                    lane.work = work[lane.agent_id]
                lane.wake(urgent=False)
            if self._leading:
                await self._wake_agents_heard_from()

    async def _wake_agents_heard_from(self) -> None:
        """Wake the lanes backing off whose agent was heard from since their last attempt
        began: it registered, or came back, maybe through another replica (which could not
        wake them). One query, and none while no lane backs off."""
        waiting = [lane.agent_id for lane in self._lanes.values() if lane.backing_off]
        if not waiting:
            return
        seen = await self._store.call(Store.last_seen, waiting)
        for agent_id, seen_at in seen.items():
            lane = self._lanes.get(agent_id)
            # Checked again after the query: the lane may have tried (or stopped) meanwhile.
            if (
                lane is not None
                and lane.backing_off
                and lane.attempted_at is not None
                and seen_at > lane.attempted_at
                and trio.current_time() - lane.heard_woken_at >= self.heard_from_interval
            ):
                lane.heard_woken_at = trio.current_time()
                lane.agent_heard_from()

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
            lane.idle = False
            pending, lane.work = lane.work, None
            if not self._leading:
                pending = []  # standing by: manual runs only
            elif pending is None:
                pending = await self._store.call(Store.undelivered, lane.agent_id)
            lane.attempted_at = self._clock()
            if await self._deliver(lane.agent_id, pending, quiet=failures > 0):
                if failures:
                    logger.info("agent %s is reachable again", lane.agent_id)
                    if self._leading:
                        # It may have restarted meanwhile (through another replica, say):
                        # the reconciler compares what it runs with what it should.
                        self.on_reachable_again(lane.agent_id)
                failures = 0
                backoff.reset()
                lane.idle = True
                await lane.wakeup.wait()
                continue
            failures += 1
            lane.backing_off = True
            try:
                with trio.move_on_after(backoff.next_delay()):
                    await lane.wakeup.wait()
            finally:
                lane.backing_off = False

    async def _deliver(self, agent_id: UUID, pending: list[Assignment], *, quiet: bool) -> bool:
        """Push each assignment, then send the manual runs; ``True`` if all were acknowledged.

        Stops at the first transport error (the agent is unreachable: trying its other tasks
        now would only add timeouts), but goes on past an error status, which concerns one task.
        """
        all_delivered = True
        try:
            for assignment in pending:
                delivered = await self._push(assignment, quiet=quiet)
                all_delivered = all_delivered and delivered
            if self._runs.get(agent_id):
                all_delivered = await self._send_runs(agent_id, quiet=quiet) and all_delivered
        except UNREACHABLE as error:
            log = logger.debug if quiet else logger.warning
            log("cannot reach agent %s: %r", agent_id, error)
            return False
        return all_delivered

    async def _push(self, assignment: Assignment, *, quiet: bool) -> bool:
        assert self._client is not None
        headers = await self.agent_headers(assignment.agent_id)
        task_id = assignment.task.id
        if assignment.removing:
            what = "removal of task"
            response = await self._client.delete(
                assignment.agent_url + TASK_PATH.format(task_id=task_id), headers=headers
            )
        else:
            what = "task"
            response = await self._client.post(
                assignment.agent_url + SCHEDULE_PATH,
                json=unstructure(ScheduleTask.of(TaskSpec.of(assignment.task))),
                headers=headers,
            )
        if not response.is_success:
            (logger.debug if quiet else logger.warning)(
                "agent %s refused %s %s: HTTP %d %s",
                assignment.agent_id,
                what,
                task_id,
                response.status_code,
                response.text[:200],
            )
            return False
        await self._mark_delivered(assignment)
        logger.debug("delivered %s %s to agent %s", what, task_id, assignment.agent_id)
        return True

    async def _mark_delivered(self, assignment: Assignment) -> bool:
        """Record ``assignment`` delivered (see :meth:`Store.mark_delivered`) once it is.

        The lanes' acknowledgments are recorded together, by one task in one store call for
        all those that came meanwhile: when a task is created, its agents answer nearly at once,
        and one store call (one thread, one at a time) each would queue them one behind the
        other.
        """
        acknowledgment = _Acknowledgment(assignment, self._clock())
        self._acknowledged.append(acknowledgment)
        self._to_record.set()
        await acknowledgment.recorded.wait()
        return acknowledgment.marked

    async def _record_acknowledgments(self) -> None:
        """Record the acknowledgments waiting, all in one store call, until cancelled."""
        while True:
            await self._to_record.wait()
            self._to_record = trio.Event()
            batch, self._acknowledged = self._acknowledged, []
            marked = await self._store.call(
                _mark_all_delivered, [(each.assignment, each.delivered_at) for each in batch]
            )
            for acknowledgment, was_marked in zip(batch, marked, strict=True):
                acknowledgment.marked = was_marked
                acknowledgment.recorded.set()

    async def _send_runs(self, agent_id: UUID, *, quiet: bool) -> bool:
        """Send the agent its manual runs; ``True`` when none is left to retry.

        An agent that answers ``task_not_found`` lacks the task (it lost it, or a push is still
        to come): its assignment is pushed again, and the run follows on the next attempt.
        """
        assert self._client is not None
        runs = self._runs.get(agent_id, {})
        agent = await self._store.call(Store.get_agent, agent_id)
        all_sent = True
        for (task_id, scheduled_at), until in sorted(runs.items()):
            if agent is None or self._clock() > until:
                logger.warning(
                    "gave up the manual run of task %s at %s on agent %s: not delivered in time",
                    task_id,
                    scheduled_at,
                    agent_id,
                )
                del runs[(task_id, scheduled_at)]
                continue
            response = await self._client.post(
                agent.url + RUN_PATH.format(task_id=task_id),
                json=unstructure(RunTaskNow(scheduled_at=scheduled_at)),
                headers=await self.agent_headers(agent_id),
            )
            status = response.status_code
            if response.is_success:
                del runs[(task_id, scheduled_at)]
                logger.debug("sent the manual run of task %s to agent %s", task_id, agent_id)
                continue
            if status == 404 and _error_code(response) == "task_not_found":
                await self._store.call(
                    Store.redeliver, agent_id, [task_id], delivered_before=self._clock()
                )
                all_sent = False
            elif 400 <= status < 500 and status not in _TRANSIENT:
                logger.warning(
                    "agent %s refused the manual run of task %s: HTTP %d %s",
                    agent_id,
                    task_id,
                    status,
                    response.text[:200],
                )
                del runs[(task_id, scheduled_at)]
            else:
                (logger.debug if quiet else logger.warning)(
                    "agent %s could not take the manual run of task %s now: HTTP %d",
                    agent_id,
                    task_id,
                    status,
                )
                all_sent = False
        return all_sent

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
        agent = Agent(
            id=identity.agent_id, url=url, registered_at=self._clock(), labels=identity.labels
        )
        await self._store.call(Store.upsert_agent, agent)
        logger.info("agent %s at %s resolved from AVAILABLE_SERVERS", agent.id, url)
        self.notify(agent.id)


def _error_code(response: httpx.Response) -> str | None:
    """The ``code`` of an error answer in our format, if it is one."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None
