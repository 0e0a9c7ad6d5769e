"""The scheduling loop: the trio side of the core's sans-IO :class:`~taskscheduler_core.Scheduler`.

The scheduler decides; the engine sleeps until its next deadline (or until a task is added or
changed), polls it, and carries out what it returns: a ``StartExecution`` runs the command in
the engine's nursery, a ``SkipExecution`` becomes a skipped / missed execution without a
process. Every finished execution is handed to ``deliver`` (the reporter, in the agent).

With a :class:`ScheduleStore` (the agent's state file) every change is durable before it takes
effect: a task is saved before the schedule request is answered, and each poll's slots are
marked taken, with a ``running`` record for each command, before any command starts. So a
restart resumes every task after the last slot acted on (:meth:`Engine.restore`), and no slot
is run twice.

Stopping: :meth:`Engine.stop` is the graceful way (nothing new starts, running commands get
``kill_grace`` seconds, then their groups are killed and they are recorded as ``error``);
cancelling :meth:`Engine.run` is the abrupt one (groups killed at once, nothing recorded: their
``running`` records are what the next start finds).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Protocol
from uuid import UUID

import attrs
import trio

from taskscheduler_core import (
    DEFAULT_MAX_OUTPUT_BYTES,
    Action,
    Execution,
    ExecutionStatus,
    Scheduler,
    ScheduleTask,
    SkipExecution,
    StartExecution,
    TaskSpec,
    format_time,
    next_slot_after,
)

from .clock import WallClock
from .errors import TaskRejected
from .runner import CommandResult, run_command

logger = logging.getLogger(__name__)

#: The longest the loop sleeps before it looks at the time of day again (seconds).
MAX_SLEEP = 1.0

#: What the engine hands every finished execution to.
Deliver = Callable[[Execution], Awaitable[None]]

#: What the stderr of a command killed by a graceful shutdown ends with.
KILLED_ON_SHUTDOWN = "taskscheduler: killed: the agent shut down\n"


class ScheduleStore(Protocol):
    """Where the engine keeps its schedules durably (the agent's state file)."""

    async def save_schedule(self, spec: TaskSpec, *, since: datetime) -> None:
        """Keep ``spec``, scheduled from ``since`` on."""
        ...

    async def remove_schedule(self, task_id: UUID) -> bool:
        """Forget the task."""
        ...

    async def begin_slots(
        self,
        last_slots: Mapping[UUID, datetime],
        starting: Sequence[tuple[UUID, datetime]],
        *,
        started_at: datetime,
    ) -> None:
        """Mark each task's slots up to ``last_slots`` taken, and ``starting`` as running."""
        ...

    async def process_started(self, task_id: UUID, scheduled_at: datetime, pid: int) -> None:
        """Note the process group (led by ``pid``) of a running execution."""
        ...


class _NoStore:
    """The store of an engine that keeps nothing on disk."""

    async def save_schedule(self, spec: TaskSpec, *, since: datetime) -> None:
        pass

    async def remove_schedule(self, task_id: UUID) -> bool:
        return True

    async def begin_slots(
        self,
        last_slots: Mapping[UUID, datetime],
        starting: Sequence[tuple[UUID, datetime]],
        *,
        started_at: datetime,
    ) -> None:
        pass

    async def process_started(self, task_id: UUID, scheduled_at: datetime, pid: int) -> None:
        pass


class Engine:
    """Runs every task of this agent at its fire times; :meth:`run` is the loop.

    ``env`` is the environment commands inherit (default: the agent's own, read once here);
    the ``TSCHED_*`` variables are added per execution. ``store`` keeps the schedules durably
    (default: nowhere). ``kill_grace`` is how long :meth:`stop` lets running commands finish.
    Build it inside ``trio.run``, since the clock is trio's.
    """

    def __init__(
        self,
        *,
        agent_id: UUID,
        deliver: Deliver,
        clock: WallClock | None = None,
        scheduler: Scheduler | None = None,
        env: Mapping[str, str] | None = None,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        kill_grace: float = 0.0,
        store: ScheduleStore | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.clock = clock if clock is not None else WallClock()
        self.scheduler = scheduler if scheduler is not None else Scheduler()
        self.max_output_bytes = max_output_bytes
        self.kill_grace = kill_grace
        self._deliver = deliver
        self._store: ScheduleStore = store if store is not None else _NoStore()
        self._env = dict(os.environ if env is None else env)
        self._wake = trio.Event()
        # One change of the task set at a time: each is saved, then applied.
        self._changing = trio.Lock()
        self._stopping = False
        self._kill = trio.Event()  # set when the grace is over: running commands are killed
        self._executing = 0
        self._idle = trio.Event()  # set by the last execution to end once stopping
        self._stopped = trio.Event()

    def tasks(self) -> list[TaskSpec]:
        """Every task scheduled here, ordered by id."""
        return sorted(self.scheduler.tasks.values(), key=lambda spec: str(spec.task_id))

    def restore(self, spec: TaskSpec, *, after: datetime) -> None:
        """Resume a saved task from the first fire time after ``after`` (its last slot acted
        on): the slots since then are recorded as missed on the next poll, with no burst."""
        self.scheduler.add_task(spec, after=after)
        self._wake.set()

    async def add_task(self, spec: TaskSpec) -> bool:
        """Schedule ``spec`` from its next fire time; ``False`` if it was already, unchanged.

        Raises :class:`TaskRejected` for an anchor whose fire times overflow the calendar.

        A changed spec replaces the old one; an execution of the old one that is running
        finishes and is reported. The spec is saved before it is scheduled.
        """
        async with self._changing:
            return await self._add_task(spec)

    async def _add_task(self, spec: TaskSpec) -> bool:
        if self.scheduler.tasks.get(spec.task_id) == spec:
            return False
        now = self.clock.now()
        try:
            # Checked before the scheduler sees it: a task it cannot compute a fire time for
            # must be refused, not half-added.
            next_slot_after(spec.anchor, spec.frequency, now)
        except OverflowError:
            raise TaskRejected(
                "the task's fire times fall outside the supported range of dates", field="anchor"
            ) from None
        await self._store.save_schedule(spec, since=now)
        self.scheduler.add_task(spec, after=now)
        logger.info("scheduled task %s: %s %r", spec.task_id, spec.frequency, spec.command[:200])
        self._wake.set()
        return True

    async def schedule(self, request: ScheduleTask) -> tuple[TaskSpec, bool]:
        """Carry out a schedule request: the spec now scheduled, and whether it changed.

        A request without an anchor (the original design's three fields) is anchored at
        receipt, but only the first time: sending the same task again must not move its fire
        times, or the endpoint would not be idempotent.
        """
        async with self._changing:
            current = self.scheduler.tasks.get(request.task_id)
            if (
                request.anchor is None
                and current is not None
                and (current.command, current.frequency) == (request.command, request.frequency)
            ):
                return current, False
            spec = request.spec(received_at=self.clock.now())
            return spec, await self._add_task(spec)

    async def remove_task(self, task_id: UUID) -> bool:
        """Stop scheduling ``task_id`` (durably); a running execution finishes and is reported.

        Returns whether it was scheduled here.
        """
        async with self._changing:
            scheduled = task_id in self.scheduler.tasks
            await self._store.remove_schedule(task_id)
            self.scheduler.remove_task(task_id)
        if scheduled:
            logger.info("removed task %s", task_id)
            self._wake.set()
        return scheduled

    async def stop(self) -> None:
        """Stop gracefully and wait until :meth:`run` has returned.

        Nothing new starts; running commands get ``kill_grace`` seconds to finish, then their
        process groups are killed and they are recorded with status ``error``.
        """
        self._stopping = True
        self._wake.set()
        await self._stopped.wait()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sleep until the next fire time, act on it, until :meth:`stop`; executions run in its
        nursery. Cancelling it kills the process groups of the commands still running."""
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                await self._schedule_until_stopped(nursery)
                if self._executing:
                    logger.info(
                        "stopping: %d command(s) still running get %.3g s to finish",
                        self._executing,
                        self.kill_grace,
                    )
                    with trio.move_on_after(self.kill_grace):
                        await self._idle.wait()
                self._kill.set()
        finally:
            self._stopped.set()

    async def _schedule_until_stopped(self, nursery: trio.Nursery) -> None:
        while not self._stopping:
            # A fresh event before reading the deadline: a task added meanwhile wakes us.
            self._wake = trio.Event()
            deadline = self.scheduler.next_deadline()
            if deadline is None:
                await self._wake.wait()
                continue
            wake_at = self.clock.deadline(deadline)
            # Never sleep long in one go: a host suspended meanwhile stops trio's monotonic
            # clock, and waking regularly lets the clock catch up with the time of day.
            with trio.move_on_at(min(wake_at, trio.current_time() + MAX_SLEEP)) as sleep:
                await self._wake.wait()
            if self._stopping:
                return
            if self.clock.resync():
                continue  # the deadline moved in trio time: compute it again
            now = self.clock.now()
            if sleep.cancelled_caught and trio.current_time() >= wake_at:
                # We slept until the deadline, so it has come; this makes sure a float
                # rounding can never leave it "not yet due" and spin this loop.
                now = max(now, deadline)
            await self._act(nursery, self.scheduler.poll(now), now)

    async def _act(self, nursery: trio.Nursery, actions: Sequence[Action], now: datetime) -> None:
        # Under the same lock as add/remove: a task removed while this awaits its writes (a
        # reconcile's DELETE) must not have a command started after its removal.
        async with self._changing:
            await self._act_on_current(nursery, actions, now)

    async def _act_on_current(
        self, nursery: trio.Nursery, actions: Sequence[Action], now: datetime
    ) -> None:
        current = self.scheduler.tasks
        for action in actions:
            if action.task.task_id not in current and isinstance(action, StartExecution):
                # polled before its removal: release the slot the scheduler marked running
                self.scheduler.record_finished(action.task.task_id, action.scheduled_at)
        actions = [action for action in actions if action.task.task_id in current]
        if not actions:
            return
        # Skips are recorded first: if the agent dies before the slots are marked taken, the
        # next start acts on them again, and recording a skip twice is one record.
        for action in actions:
            if isinstance(action, SkipExecution):
                await self._skip(action, now)
        starts = [action for action in actions if isinstance(action, StartExecution)]
        last_slots: dict[UUID, datetime] = {}
        for action in actions:
            last_slots[action.task.task_id] = action.scheduled_at  # sorted: the last is newest
        await self._store.begin_slots(
            last_slots,
            [(start.task.task_id, start.scheduled_at) for start in starts],
            started_at=now,
        )
        for start in starts:
            self._executing += 1
            nursery.start_soon(self._execute, start.task, start.scheduled_at)

    async def _execute(self, spec: TaskSpec, scheduled_at: datetime) -> None:
        try:
            await self._execute_and_deliver(spec, scheduled_at)
        finally:
            self._executing -= 1
            if self._stopping and not self._executing:
                self._idle.set()

    async def _execute_and_deliver(self, spec: TaskSpec, scheduled_at: datetime) -> None:
        started_at = self.clock.now()
        env = self._env | {
            "TSCHED_TASK_ID": str(spec.task_id),
            "TSCHED_AGENT_ID": str(self.agent_id),
            "TSCHED_SCHEDULED_AT": format_time(scheduled_at),
        }

        async def started(pid: int) -> None:
            await self._store.process_started(spec.task_id, scheduled_at, pid)

        try:
            result = await run_command(
                spec.command,
                env=env,
                max_output_bytes=self.max_output_bytes,
                stop=self._kill,
                on_start=started,
            )
        except Exception as error:
            # A bug in running one command must not take the agent (and every other task)
            # down; the execution is reported as an error instead.
            logger.exception("running task %s failed", spec.task_id)
            result = CommandResult(
                status=ExecutionStatus.ERROR,
                exit_code=None,
                stderr=f"taskscheduler: the agent failed to run the command: {error!r}\n",
            )
        finally:
            self.scheduler.record_finished(spec.task_id, scheduled_at)
        if result.stopped:
            separator = "" if not result.stderr or result.stderr.endswith("\n") else "\n"
            result = attrs.evolve(
                result,
                status=ExecutionStatus.ERROR,
                stderr=f"{result.stderr}{separator}{KILLED_ON_SHUTDOWN}",
            )
        await self._deliver(
            Execution(
                task_id=spec.task_id,
                agent_id=self.agent_id,
                scheduled_at=scheduled_at,
                started_at=started_at,
                finished_at=self.clock.now(),
                status=result.status,
                exit_code=result.exit_code,
                stdout=result.stdout,
                stderr=result.stderr,
                stdout_dropped=result.stdout_dropped,
                stderr_dropped=result.stderr_dropped,
            )
        )

    async def _skip(self, action: SkipExecution, now: datetime) -> None:
        logger.info(
            "task %s at %s %s: %s",
            action.task.task_id,
            format_time(action.scheduled_at),
            action.status.value,
            action.reason,
        )
        await self._deliver(
            Execution(
                task_id=action.task.task_id,
                agent_id=self.agent_id,
                scheduled_at=action.scheduled_at,
                started_at=now,
                finished_at=now,
                status=action.status,
            )
        )
