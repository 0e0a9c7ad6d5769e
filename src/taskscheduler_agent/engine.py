"""The scheduling loop: the trio side of the core's sans-IO :class:`~taskscheduler_core.Scheduler`.

The scheduler decides; the engine sleeps until its next deadline (or until a task is added or
changed), polls it, and carries out what it returns: a ``StartExecution`` runs the command in
the engine's nursery, a ``SkipExecution`` becomes a skipped / missed execution without a
process. Every finished execution is handed to ``deliver`` (the reporter, in the agent).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import NoReturn
from uuid import UUID

import trio

from taskscheduler_core import (
    DEFAULT_MAX_OUTPUT_BYTES,
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

#: What the engine hands every finished execution to.
Deliver = Callable[[Execution], Awaitable[None]]


class Engine:
    """Runs every task of this agent at its fire times; :meth:`run` is the loop.

    ``env`` is the environment commands inherit (default: the agent's own, read once here);
    the ``TSCHED_*`` variables are added per execution. Build it inside ``trio.run``, since the
    clock is trio's.
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
    ) -> None:
        self.agent_id = agent_id
        self.clock = clock if clock is not None else WallClock()
        self.scheduler = scheduler if scheduler is not None else Scheduler()
        self.max_output_bytes = max_output_bytes
        self.kill_grace = kill_grace
        self._deliver = deliver
        self._env = dict(os.environ if env is None else env)
        self._wake = trio.Event()

    def tasks(self) -> list[TaskSpec]:
        """Every task scheduled here, ordered by id."""
        return sorted(self.scheduler.tasks.values(), key=lambda spec: str(spec.task_id))

    def add_task(self, spec: TaskSpec) -> bool:
        """Schedule ``spec`` from its next fire time; ``False`` if it was already, unchanged.

        Raises :class:`TaskRejected` for an anchor whose fire times overflow the calendar.

        A changed spec replaces the old one; an execution of the old one that is running
        finishes and is reported.
        """
        now = self.clock.now()
        try:
            # Checked before the scheduler sees it: a task it cannot compute a fire time for
            # must be refused, not half-added.
            next_slot_after(spec.anchor, spec.frequency, now)
        except OverflowError:
            raise TaskRejected(
                "the task's fire times fall outside the supported range of dates", field="anchor"
            ) from None
        changed = self.scheduler.add_task(spec, after=now)
        if changed:
            logger.info(
                "scheduled task %s: %s %r", spec.task_id, spec.frequency, spec.command[:200]
            )
            self._wake.set()
        return changed

    def schedule(self, request: ScheduleTask) -> tuple[TaskSpec, bool]:
        """Carry out a schedule request: the spec now scheduled, and whether it changed.

        A request without an anchor (the original design's three fields) is anchored at
        receipt, but only the first time: sending the same task again must not move its fire
        times, or the endpoint would not be idempotent.
        """
        current = self.scheduler.tasks.get(request.task_id)
        if (
            request.anchor is None
            and current is not None
            and (current.command, current.frequency) == (request.command, request.frequency)
        ):
            return current, False
        spec = request.spec(received_at=self.clock.now())
        return spec, self.add_task(spec)

    def remove_task(self, task_id: UUID) -> bool:
        """Stop scheduling ``task_id``; a running execution finishes and is reported."""
        removed = self.scheduler.remove_task(task_id)
        if removed:
            self._wake.set()
        return removed

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Sleep until the next fire time, act on it, forever; executions run in its nursery.

        Cancelling it kills the process groups of the commands still running.
        """
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                # A fresh event before reading the deadline: a task added meanwhile wakes us.
                self._wake = trio.Event()
                deadline = self.scheduler.next_deadline()
                if deadline is None:
                    await self._wake.wait()
                    continue
                with trio.move_on_at(self.clock.deadline(deadline)) as sleep:
                    await self._wake.wait()
                now = self.clock.now()
                if sleep.cancelled_caught:
                    # We slept until the deadline, so it has come; this makes sure a float
                    # rounding can never leave it "not yet due" and spin this loop.
                    now = max(now, deadline)
                for action in self.scheduler.poll(now):
                    if isinstance(action, StartExecution):
                        nursery.start_soon(self._execute, action.task, action.scheduled_at)
                    else:
                        await self._skip(action, now)

    async def _execute(self, spec: TaskSpec, scheduled_at: datetime) -> None:
        started_at = self.clock.now()
        env = self._env | {
            "TSCHED_TASK_ID": str(spec.task_id),
            "TSCHED_AGENT_ID": str(self.agent_id),
            "TSCHED_SCHEDULED_AT": format_time(scheduled_at),
        }
        try:
            result = await run_command(
                spec.command,
                env=env,
                max_output_bytes=self.max_output_bytes,
                kill_grace=self.kill_grace,
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
