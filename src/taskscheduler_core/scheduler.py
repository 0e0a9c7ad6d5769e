"""The agent's scheduling policy as a sans-IO state machine.

Modelled on h11: the scheduler does no I/O, starts no process and reads no clock. The agent
drives it::

    scheduler.add_task(spec, after=now)
    while True:
        sleep until scheduler.next_deadline()
        for action in scheduler.poll(now):
            StopExecution   -> kill that execution's process group (timed out / replaced)
            StartExecution  -> run the command; when it ends: scheduler.record_finished(...)
            SkipExecution   -> record a skipped / missed execution

The rules, for each task:

1. Fire times come from the task's frequency (:mod:`taskscheduler_core.firetimes`): interval
   slots ``anchor + k × interval``, or the times a cron expression matches in ``timezone``.
2. A slot is never acted on before its time: ``poll(now)`` only looks at slots ``<= now``.
3. A slot is acted on at most once: after a poll, the task's next slot is after ``now``.
4. When several slots are due at once (the agent was down or stalled), only the newest may start;
   the older ones are reported as ``missed`` (at most ``max_missed`` of them, the newest ones: a
   week-long outage must not turn into a flood of records). No burst of executions.
5. The newest due slot starts if it is at most ``starting_deadline`` late (10 s by default),
   else it is ``missed`` too.
6. A slot that comes while an execution of the task still runs (or waits for a retry) follows
   the task's ``overlap``: ``skip`` records it as skipped, ``allow`` starts it anyway,
   ``replace`` stops the running ones (status cancelled) and starts it.
7. An execution running longer than the task's ``timeout`` is stopped (status timed_out).
8. A failed, timed-out or errored attempt is tried again after ``retry_delay × 2^(n-1)``
   seconds, up to ``retries`` more times; each attempt is its own execution record.
9. A paused task fires nothing; resuming (a spec with ``paused`` false) fires from the next slot
   after the resume, never the slots that passed while paused.
10. ``run_now`` starts a manual execution at once, under the same overlap rule.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from datetime import datetime, timedelta
from types import MappingProxyType
from uuid import UUID

import attrs

from .firetimes import fires_between, next_fire_after, require_utc
from .models import ExecutionStatus, TaskSpec, Trigger
from .options import Overlap

#: How late a slot may start when the task sets no ``starting_deadline``; later than that, the
#: slot is recorded as missed.
DEFAULT_STARTING_DEADLINE = timedelta(seconds=10)

#: At most this many slots older than the newest due one are recorded as missed per task per poll
#: (the newest due slot, if it is too late as well, is one more).
DEFAULT_MAX_MISSED = 10


@attrs.frozen(kw_only=True)
class StartExecution:
    """Run ``task.command`` now, for the fire time ``scheduled_at``.

    ``deadline`` is when the scheduler will stop it for running past the timeout (``None``: no
    timeout); it is informative, the :class:`StopExecution` comes from :meth:`Scheduler.poll`.
    """

    task: TaskSpec
    scheduled_at: datetime
    attempt: int = 1
    trigger: Trigger = Trigger.SCHEDULE
    deadline: datetime | None = None


@attrs.frozen(kw_only=True)
class SkipExecution:
    """Do not run the slot ``scheduled_at``; record it with ``status`` (skipped or missed)."""

    task: TaskSpec
    scheduled_at: datetime
    status: ExecutionStatus
    reason: str
    trigger: Trigger = Trigger.SCHEDULE


@attrs.frozen(kw_only=True)
class StopExecution:
    """Kill the running execution of ``task_id`` for ``scheduled_at``, and report it as ``status``.

    ``status`` is ``timed_out`` (it ran past the timeout) or ``cancelled`` (a newer slot replaced
    it). The execution stays running for the scheduler until :meth:`Scheduler.record_finished`.
    """

    task_id: UUID
    scheduled_at: datetime
    status: ExecutionStatus
    reason: str


Action = StartExecution | SkipExecution | StopExecution


@attrs.define
class _Entry:
    spec: TaskSpec
    after: datetime  # every slot at or before this was acted on (or must never fire)
    generation: int  # bumps on every change, so stale heap entries can be told apart


@attrs.define
class _Running:
    spec: TaskSpec
    attempt: int
    trigger: Trigger
    kill_at: datetime | None  # None once stopped (or with no timeout)
    stopping: ExecutionStatus | None = None


@attrs.define
class _Retry:
    spec: TaskSpec
    attempt: int  # the attempt number to start
    trigger: Trigger
    due: datetime


_Slot = tuple[UUID, datetime]


class Scheduler:
    """Decides, for every task of one agent, which fire times to start, skip, miss or stop."""

    def __init__(
        self,
        *,
        starting_deadline: timedelta = DEFAULT_STARTING_DEADLINE,
        max_missed: int = DEFAULT_MAX_MISSED,
    ) -> None:
        self.starting_deadline = starting_deadline
        self.max_missed = max_missed
        self._entries: dict[UUID, _Entry] = {}
        # The specs again, by task: what :attr:`tasks` shows without copying (it is read on
        # every start, and an agent may hold ten thousand tasks).
        self._specs: dict[UUID, TaskSpec] = {}
        self._running: dict[_Slot, _Running] = {}
        self._retries: dict[_Slot, _Retry] = {}
        self._heap: list[tuple[datetime, int, UUID]] = []
        self._generation = 0

    @property
    def tasks(self) -> Mapping[UUID, TaskSpec]:
        """Every task scheduled, by id: a read-only view that follows later changes."""
        return MappingProxyType(self._specs)

    def upcoming(self, until: datetime) -> list[tuple[TaskSpec, datetime]]:
        """The next fire time of each task that falls at or before ``until``, without acting on
        it: what an adapter may prepare ahead (the agent marks these slots taken on disk before
        they come, so that starting them at their time waits for no disk).

        A poll may still skip or miss such a slot (overlap, starting deadline), and a change of
        the task may drop it. Only the next slot of each task is listed.
        """
        until = require_utc(until)
        found: list[tuple[TaskSpec, datetime]] = []
        heap = self._heap
        # Walk the heap from its root, down only where the times are due: the entries at or
        # before ``until`` without looking at the others.
        stack = [0] if heap else []
        while stack:
            index = stack.pop()
            when, generation, task_id = heap[index]
            if when > until:
                continue
            entry = self._entries.get(task_id)
            if entry is not None and entry.generation == generation and not entry.spec.paused:
                found.append((entry.spec, when))
            stack.extend(child for child in (2 * index + 1, 2 * index + 2) if child < len(heap))
        found.sort(key=lambda item: item[1])
        return found

    def running(self, task_id: UUID) -> frozenset[datetime]:
        """The fire times of ``task_id`` started and not yet recorded as finished."""
        return frozenset(when for (task, when) in self._running if task == task_id)

    def pending_retries(self, task_id: UUID) -> frozenset[datetime]:
        """The fire times of ``task_id`` that wait for a retry."""
        return frozenset(when for (task, when) in self._retries if task == task_id)

    def add_task(self, spec: TaskSpec, *, after: datetime) -> bool:
        """Schedule ``spec`` from the first slot strictly after ``after``.

        Adding the same spec again changes nothing (returns ``False``): this is what makes the
        agent's schedule endpoint idempotent. A changed spec replaces the old one; no slot at or
        before ``after`` is fired for it. Pass the time of the last slot acted on as ``after`` to
        resume a schedule, and the slots since then are reported as missed on the next poll.
        A paused spec is kept but fires nothing, and drops the task's pending retries.
        """
        current = self._entries.get(spec.task_id)
        if current is not None and current.spec == spec:
            return False
        self._generation += 1
        entry = _Entry(spec=spec, after=require_utc(after), generation=self._generation)
        self._entries[spec.task_id] = entry
        self._specs[spec.task_id] = spec
        if spec.paused:
            self._drop_retries(spec.task_id)
        else:
            self._push(entry)
        return True

    def remove_task(self, task_id: UUID) -> bool:
        """Stop scheduling ``task_id``; executions already running are still recorded."""
        self._drop_retries(task_id)
        self._specs.pop(task_id, None)
        return self._entries.pop(task_id, None) is not None

    def next_deadline(self) -> datetime | None:
        """The earliest moment :meth:`poll` has something to do, or ``None``."""
        self._drop_stale()
        moments = [self._heap[0][0]] if self._heap else []
        moments.extend(retry.due for retry in self._retries.values())
        moments.extend(r.kill_at for r in self._running.values() if r.kill_at is not None)
        return min(moments, default=None)

    def poll(self, now: datetime) -> list[Action]:
        """Act on everything due at ``now``: stops first, then slots and retries, oldest first."""
        now = require_utc(now)
        stops = self._timeouts(now)
        actions: list[Action] = self._due_retries(now)
        while True:
            self._drop_stale()
            if not self._heap or self._heap[0][0] > now:
                break
            _, _, task_id = heapq.heappop(self._heap)
            entry = self._entries[task_id]
            slot_actions = self._due(entry, now)
            stops.extend(a for a in slot_actions if isinstance(a, StopExecution))
            actions.extend(a for a in slot_actions if not isinstance(a, StopExecution))
            entry.after = now
            self._push(entry)
        actions.sort(key=lambda action: action.scheduled_at)
        return [*stops, *actions]

    def run_now(self, task_id: UUID, scheduled_at: datetime, *, now: datetime) -> list[Action]:
        """A manual run of ``task_id`` for ``scheduled_at``, under the task's overlap rule.

        Returns no action for an unknown task, or one already started for that time (a repeated
        request is idempotent). A paused task can still be run by hand.
        """
        entry = self._entries.get(task_id)
        scheduled_at = require_utc(scheduled_at)
        slot = (task_id, scheduled_at)
        if entry is None or slot in self._running or slot in self._retries:
            return []
        actions = self._start_or_overlap(entry.spec, scheduled_at, require_utc(now), Trigger.MANUAL)
        stops = [a for a in actions if isinstance(a, StopExecution)]
        return [*stops, *(a for a in actions if not isinstance(a, StopExecution))]

    def record_started(
        self,
        spec: TaskSpec,
        scheduled_at: datetime,
        *,
        now: datetime,
        attempt: int = 1,
        trigger: Trigger = Trigger.SCHEDULE,
    ) -> StartExecution:
        """Note that an execution runs from ``now`` (done by :meth:`poll`; also for recovery)."""
        kill_at = now + timedelta(seconds=spec.timeout) if spec.timeout is not None else None
        self._running[(spec.task_id, scheduled_at)] = _Running(
            spec=spec, attempt=attempt, trigger=trigger, kill_at=kill_at
        )
        return StartExecution(
            task=spec, scheduled_at=scheduled_at, attempt=attempt, trigger=trigger, deadline=kill_at
        )

    def record_finished(
        self,
        task_id: UUID,
        scheduled_at: datetime,
        status: ExecutionStatus = ExecutionStatus.SUCCEEDED,
        *,
        now: datetime | None = None,
    ) -> bool:
        """Note that the execution for ``scheduled_at`` ended with ``status``.

        Returns whether that attempt is final: ``False`` when a retry is now scheduled (a
        retryable status, attempts left, the task still scheduled and not paused).
        """
        running = self._running.pop((task_id, scheduled_at), None)
        if running is None:
            return True
        if running.stopping is not None:
            status = running.stopping
        entry = self._entries.get(task_id)
        spec = entry.spec if entry is not None else running.spec
        if (
            entry is None
            or spec.paused
            or now is None
            or not status.retryable
            or running.attempt > spec.retries
        ):
            return True
        delay = timedelta(seconds=spec.retry_delay_for(running.attempt))
        self._retries[(task_id, scheduled_at)] = _Retry(
            spec=spec, attempt=running.attempt + 1, trigger=running.trigger, due=now + delay
        )
        return False

    def _timeouts(self, now: datetime) -> list[Action]:
        stops: list[Action] = []
        for (task_id, scheduled_at), running in self._running.items():
            if running.kill_at is not None and running.kill_at <= now:
                running.kill_at = None
                running.stopping = ExecutionStatus.TIMED_OUT
                stops.append(
                    StopExecution(
                        task_id=task_id,
                        scheduled_at=scheduled_at,
                        status=ExecutionStatus.TIMED_OUT,
                        reason=f"ran longer than its timeout of {running.spec.timeout} s",
                    )
                )
        return stops

    def _due_retries(self, now: datetime) -> list[Action]:
        due = [slot for slot, retry in self._retries.items() if retry.due <= now]
        actions: list[Action] = []
        for slot in sorted(due, key=lambda slot: self._retries[slot].due):
            retry = self._retries.pop(slot)
            entry = self._entries.get(slot[0])
            spec = entry.spec if entry is not None else retry.spec
            actions.append(
                self.record_started(
                    spec, slot[1], now=now, attempt=retry.attempt, trigger=retry.trigger
                )
            )
        return actions

    def _due(self, entry: _Entry, now: datetime) -> list[Action]:
        spec = entry.spec
        due = fires_between(
            spec.frequency,
            anchor=spec.anchor,
            timezone=spec.timezone,
            after=entry.after,
            until=now,
            limit=self.max_missed + 1,
        )
        if not due:
            return []
        *older, newest = due
        actions: list[Action] = [
            SkipExecution(
                task=spec,
                scheduled_at=when,
                status=ExecutionStatus.MISSED,
                reason="the agent was down or stalled at this fire time",
            )
            for when in older
        ]
        if now - newest > self._starting_deadline(spec):
            actions.append(
                SkipExecution(
                    task=spec,
                    scheduled_at=newest,
                    status=ExecutionStatus.MISSED,
                    reason=f"reached {now - newest} late, past the starting deadline",
                )
            )
            return actions
        actions.extend(self._start_or_overlap(spec, newest, now, Trigger.SCHEDULE))
        return actions

    def _starting_deadline(self, spec: TaskSpec) -> timedelta:
        # No cap by the interval is needed: the newest due slot is always less late than the
        # gap to the slot after it, or that one would be the newest.
        if spec.starting_deadline is not None:
            return timedelta(seconds=spec.starting_deadline)
        return self.starting_deadline

    def _start_or_overlap(
        self, spec: TaskSpec, scheduled_at: datetime, now: datetime, trigger: Trigger
    ) -> list[Action]:
        busy = [slot for slot in (*self._running, *self._retries) if slot[0] == spec.task_id]
        if busy and spec.overlap is Overlap.SKIP:
            return [
                SkipExecution(
                    task=spec,
                    scheduled_at=scheduled_at,
                    status=ExecutionStatus.SKIPPED,
                    reason="the previous execution of this task is still running",
                    trigger=trigger,
                )
            ]
        actions: list[Action] = []
        if busy and spec.overlap is Overlap.REPLACE:
            self._drop_retries(spec.task_id)
            for (task_id, when), running in self._running.items():
                if task_id == spec.task_id and running.stopping is None:
                    running.kill_at = None
                    running.stopping = ExecutionStatus.CANCELLED
                    actions.append(
                        StopExecution(
                            task_id=task_id,
                            scheduled_at=when,
                            status=ExecutionStatus.CANCELLED,
                            reason=f"replaced by the run for {scheduled_at.isoformat()}",
                        )
                    )
        actions.append(self.record_started(spec, scheduled_at, now=now, trigger=trigger))
        return actions

    def _drop_retries(self, task_id: UUID) -> None:
        for slot in [slot for slot in self._retries if slot[0] == task_id]:
            del self._retries[slot]

    def _push(self, entry: _Entry) -> None:
        when = next_fire_after(
            entry.spec.frequency,
            anchor=entry.spec.anchor,
            timezone=entry.spec.timezone,
            moment=entry.after,
        )
        heapq.heappush(self._heap, (when, entry.generation, entry.spec.task_id))

    def _drop_stale(self) -> None:
        while self._heap:
            _, generation, task_id = self._heap[0]
            entry = self._entries.get(task_id)
            if entry is not None and entry.generation == generation and not entry.spec.paused:
                return
            heapq.heappop(self._heap)
