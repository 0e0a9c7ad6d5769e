"""Starting again after the agent was killed: ending the executions it left running.

A ``running`` record still in the state file at start is an execution the previous run of the
agent never finished recording: it was killed (``SIGKILL``, a crash, a power cut) or cancelled
abruptly. Its command may still run, orphaned: its process group is killed if it is still there
and still ours (:func:`~taskscheduler_agent.leftovers.kill_leftover_group`), and the execution
is recorded as ``error``, once, with its attempt and trigger and as final (no retry follows):
recording it ends the ``running`` record in the same transaction. It is not run again: the slot
was taken.

A record taken *before* its fire time (``started_at < scheduled_at``) with no process is a slot
the engine prepared ahead (see :mod:`.engine`): the agent stopped before its fire time, or in the
instant between starting its command and noting the process. Nothing says which, so it is an
``error`` whose stderr says the command may not have started.
"""

from __future__ import annotations

import logging
from datetime import datetime
from uuid import UUID

import trio

from taskscheduler_core import Execution, ExecutionStatus, format_time

from .engine import Deliver
from .leftovers import kill_leftover_group
from .state import AsyncAgentState, RunningExecution

logger = logging.getLogger(__name__)

#: The stderr of an execution the agent was interrupted in.
INTERRUPTED = "taskscheduler: interrupted: the agent stopped while this command ran"

#: The stderr of a prepared slot the agent stopped at or before.
PREPARED_NOT_STARTED = (
    "taskscheduler: interrupted: the agent stopped at or before this fire time; "
    "the command may not have started"
)


async def recover_interrupted(
    state: AsyncAgentState, deliver: Deliver, *, agent_id: UUID, now: datetime
) -> list[Execution]:
    """Kill what is left of every interrupted execution and record it; returns the records."""
    recorded = []
    for running in await state.running():
        killed = False
        if running.process is not None:
            killed = await trio.to_thread.run_sync(kill_leftover_group, running.process)
        execution = _interrupted(running, agent_id=agent_id, now=now, killed=killed)
        logger.warning(
            "task %s at %s was interrupted by the agent stopping: recorded as %s",
            running.task_id,
            format_time(running.scheduled_at),
            execution.status.value,
        )
        await deliver(execution)
        recorded.append(execution)
    return recorded


def _interrupted(
    running: RunningExecution, *, agent_id: UUID, now: datetime, killed: bool
) -> Execution:
    if running.process is None and running.started_at < running.scheduled_at:
        return Execution(
            task_id=running.task_id,
            agent_id=agent_id,
            scheduled_at=running.scheduled_at,
            started_at=max(now, running.scheduled_at),
            finished_at=max(now, running.scheduled_at),
            status=ExecutionStatus.ERROR,
            stderr=f"{PREPARED_NOT_STARTED}\n",
            attempt=running.attempt,
            trigger=running.trigger,
            final=True,
        )
    if running.process is None:
        what = "before its process was recorded"
    elif killed:
        what = f"; what was left of it (process group {running.process.pid}) was killed"
    else:
        what = f"; its process group {running.process.pid} was already gone"
    return Execution(
        task_id=running.task_id,
        agent_id=agent_id,
        scheduled_at=running.scheduled_at,
        started_at=running.started_at,
        finished_at=max(now, running.started_at),
        status=ExecutionStatus.ERROR,
        stderr=f"{INTERRUPTED}{' ' if running.process is None else ''}{what}\n",
        attempt=running.attempt,
        trigger=running.trigger,
        # Final: a retry would need the scheduler's state of before the stop, which is gone.
        final=True,
    )
