"""The agent's scheduling policy as a sans-IO state machine.

Modelled on h11: the scheduler does no I/O, starts no process and reads no clock. The agent
drives it::

    scheduler.add_task(spec, after=now)
    while True:
        sleep until scheduler.next_deadline()
        for action in scheduler.poll(now):
            StartExecution  -> run the command; afterwards scheduler.record_finished(...)
            SkipExecution   -> record a skipped / missed execution

The rules, for each task:

1. Fire times are ``anchor + k × interval`` (:mod:`taskscheduler_core.firetimes`).
2. A slot is never acted on before its time: ``poll(now)`` only looks at slots ``<= now``.
3. A slot is acted on at most once: after a poll, the task's next slot is after ``now``.
4. When several slots are due at once (the agent was down or stalled), only the newest may start;
   the older ones are reported as ``missed`` (at most ``max_missed`` of them, the newest ones: a
   week-long outage must not turn into a flood of records). No burst of executions.
5. The newest due slot starts if it is at most ``starting_deadline`` late (capped by the
   interval), else it is ``missed`` too.
6. A slot that comes while the task's previous execution still runs is ``skipped``.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from datetime import datetime, timedelta
from uuid import UUID

import attrs

from .firetimes import require_utc, slot, slot_index_after
from .models import ExecutionStatus, TaskSpec

#: How late a slot may start; later than this (or than the interval) it is recorded as missed.
DEFAULT_STARTING_DEADLINE = timedelta(seconds=10)

#: At most this many slots older than the newest due one are recorded as missed per task per poll
#: (the newest due slot, if it is too late as well, is one more).
DEFAULT_MAX_MISSED = 10


@attrs.frozen(kw_only=True)
class StartExecution:
    """Run ``task.command`` now, for the fire time ``scheduled_at``."""

    task: TaskSpec
    scheduled_at: datetime


@attrs.frozen(kw_only=True)
class SkipExecution:
    """Do not run the slot ``scheduled_at``; record it with ``status`` (skipped or missed)."""

    task: TaskSpec
    scheduled_at: datetime
    status: ExecutionStatus
    reason: str


Action = StartExecution | SkipExecution


@attrs.define
class _Entry:
    spec: TaskSpec
    next_index: int  # the index k of the next slot not yet acted on
    generation: int  # bumps on every change, so stale heap entries can be told apart


class Scheduler:
    """Decides, for every task of one agent, which fire times to start, skip or miss."""

    def __init__(
        self,
        *,
        starting_deadline: timedelta = DEFAULT_STARTING_DEADLINE,
        max_missed: int = DEFAULT_MAX_MISSED,
    ) -> None:
        self.starting_deadline = starting_deadline
        self.max_missed = max_missed
        self._entries: dict[UUID, _Entry] = {}
        self._running: dict[UUID, set[datetime]] = {}
        self._heap: list[tuple[datetime, int, UUID]] = []
        self._generation = 0

    @property
    def tasks(self) -> Mapping[UUID, TaskSpec]:
        return {task_id: entry.spec for task_id, entry in self._entries.items()}

    def running(self, task_id: UUID) -> frozenset[datetime]:
        """The fire times of ``task_id`` started and not yet recorded as finished."""
        return frozenset(self._running.get(task_id, ()))

    def add_task(self, spec: TaskSpec, *, after: datetime) -> bool:
        """Schedule ``spec`` from the first slot strictly after ``after``.

        Adding the same spec again changes nothing (returns ``False``): this is what makes the
        agent's schedule endpoint idempotent. A changed spec replaces the old one; no slot at or
        before ``after`` is fired for it. Pass the time of the last slot acted on as ``after`` to
        resume a schedule, and the slots since then are reported as missed on the next poll.
        """
        current = self._entries.get(spec.task_id)
        if current is not None and current.spec == spec:
            return False
        self._generation += 1
        entry = _Entry(
            spec=spec,
            next_index=slot_index_after(spec.anchor, spec.frequency, require_utc(after)),
            generation=self._generation,
        )
        self._entries[spec.task_id] = entry
        self._push(entry)
        return True

    def remove_task(self, task_id: UUID) -> bool:
        """Stop scheduling ``task_id``; executions already running are still recorded."""
        return self._entries.pop(task_id, None) is not None

    def next_deadline(self) -> datetime | None:
        """The earliest fire time not yet acted on, or ``None`` with no tasks."""
        self._drop_stale()
        return self._heap[0][0] if self._heap else None

    def poll(self, now: datetime) -> list[Action]:
        """Act on every slot due at ``now``, each exactly once, oldest first."""
        now = require_utc(now)
        actions: list[Action] = []
        while True:
            self._drop_stale()
            if not self._heap or self._heap[0][0] > now:
                break
            _, _, task_id = heapq.heappop(self._heap)
            entry = self._entries[task_id]
            actions.extend(self._due(entry, now))
            entry.next_index = slot_index_after(entry.spec.anchor, entry.spec.frequency, now)
            self._push(entry)
        actions.sort(key=lambda action: action.scheduled_at)
        return actions

    def record_started(self, task_id: UUID, scheduled_at: datetime) -> None:
        """Note that the execution for ``scheduled_at`` is running (done by :meth:`poll`)."""
        self._running.setdefault(task_id, set()).add(scheduled_at)

    def record_finished(self, task_id: UUID, scheduled_at: datetime) -> None:
        """Note that the execution started for ``scheduled_at`` has ended."""
        running = self._running.get(task_id)
        if running is not None:
            running.discard(scheduled_at)
            if not running:
                del self._running[task_id]

    def _due(self, entry: _Entry, now: datetime) -> list[Action]:
        spec = entry.spec
        last_index = slot_index_after(spec.anchor, spec.frequency, now) - 1
        newest = slot(spec.anchor, spec.frequency, last_index)
        first_missed = max(entry.next_index, last_index - self.max_missed)
        actions: list[Action] = [
            SkipExecution(
                task=spec,
                scheduled_at=slot(spec.anchor, spec.frequency, k),
                status=ExecutionStatus.MISSED,
                reason="the agent was down or stalled at this fire time",
            )
            for k in range(first_missed, last_index)
        ]
        deadline = min(self.starting_deadline, spec.frequency.interval)
        if now - newest > deadline:
            actions.append(
                SkipExecution(
                    task=spec,
                    scheduled_at=newest,
                    status=ExecutionStatus.MISSED,
                    reason=f"reached {now - newest} late, past the starting deadline",
                )
            )
        elif self._running.get(spec.task_id):
            actions.append(
                SkipExecution(
                    task=spec,
                    scheduled_at=newest,
                    status=ExecutionStatus.SKIPPED,
                    reason="the previous execution of this task is still running",
                )
            )
        else:
            self.record_started(spec.task_id, newest)
            actions.append(StartExecution(task=spec, scheduled_at=newest))
        return actions

    def _push(self, entry: _Entry) -> None:
        when = slot(entry.spec.anchor, entry.spec.frequency, entry.next_index)
        heapq.heappush(self._heap, (when, entry.generation, entry.spec.task_id))

    def _drop_stale(self) -> None:
        while self._heap:
            _, generation, task_id = self._heap[0]
            entry = self._entries.get(task_id)
            if entry is not None and entry.generation == generation:
                return
            heapq.heappop(self._heap)
