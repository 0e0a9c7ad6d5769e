"""The scheduling loop: the trio side of the core's sans-IO :class:`~taskscheduler_core.Scheduler`.

The scheduler decides; the engine sleeps until its next deadline (or until a task is added or
changed), polls it, and carries out what it returns: a ``StopExecution`` kills the process group
of one running execution (it ran past its ``timeout``, or ``overlap: replace`` replaced it), a
``StartExecution`` runs the command in the engine's nursery (a first attempt, a retry, or a
manual run), a ``SkipExecution`` becomes a skipped / missed execution without a process. Every
finished execution is handed to ``deliver`` (the reporter, in the agent), with its ``attempt``,
``trigger`` and whether it is ``final`` (no retry follows).

Running executions are keyed by ``(task_id, scheduled_at)``: with ``overlap: allow`` several
executions of one task run at once, one per fire time.

With a :class:`ScheduleStore` (the agent's state file) every change is durable before it takes
effect: a task is saved before the schedule request is answered, and a slot is marked taken,
with a ``running`` record for its command, before the command starts. So a restart resumes
every task after the last slot acted on (:meth:`Engine.restore`), and no slot is run twice.
Retries wait in memory only: one pending when the agent stops is not run.

Marking a slot taken is a commit, and a commit waits for the disk (an fsync, and whatever
commit is under way): a command started only after it would start milliseconds late. So the
fire times of the next :data:`PREPARE_AHEAD` seconds are marked taken *before* they come, by a
task of their own (:meth:`Engine._prepare_forever`), and at its time a prepared slot starts at
once. What the poll does not start after all (a skip, a task removed or changed meanwhile) is
recorded or released as usual; the prepared slots left at a graceful stop are recorded as
missed, and one that a crash leaves behind is recorded at the next start as interrupted.
Retries, manual runs and slots that were not prepared in time take the slow path: marked taken
when they are due, then started.

Stopping: :meth:`Engine.stop` is the graceful way (nothing new starts, running commands get
``kill_grace`` seconds, then their groups are killed and they are recorded as ``error``);
cancelling :meth:`Engine.run` is the abrupt one (groups killed at once, nothing recorded: their
``running`` records are what the next start finds).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
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
    StopExecution,
    TaskSpec,
    Trigger,
    format_time,
    next_fire_after,
)

from .clock import WallClock
from .errors import TaskRejected
from .runner import CommandResult, run_command

logger = logging.getLogger(__name__)

#: The longest the loop sleeps before it looks at the time of day again (seconds).
MAX_SLEEP = 1.0

#: How many commands may wait to start at once. Past it the agent is overloaded (due commands
#: come faster than it can start processes): a slot due then is recorded as ``skipped`` at once
#: rather than queued, so that the commands it does start start on time, and the backlog (and
#: every command's lateness) cannot grow without bound.
MAX_STARTING = 50

#: How far ahead fire times are marked taken on disk (seconds): far more than a commit takes,
#: and short, so that a task changed meanwhile rarely leaves a prepared slot to release.
PREPARE_AHEAD = 0.2

#: What the engine hands every finished execution to.
Deliver = Callable[[Execution], Awaitable[None]]

#: What the stderr of a command killed by a graceful shutdown ends with.
KILLED_ON_SHUTDOWN = "taskscheduler: killed: the agent shut down\n"

#: How many manual runs the engine remembers in memory, so that a repeated request for the same
#: time starts nothing (the state file remembers them across restarts).
MANUAL_RUNS_REMEMBERED = 10_000

_Slot = tuple[UUID, datetime]


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
        starting: Sequence[StartExecution],
        *,
        started_at: datetime,
    ) -> None:
        """Mark each task's slots up to ``last_slots`` taken, and ``starting`` as running."""
        ...

    async def process_started(
        self, task_id: UUID, scheduled_at: datetime, pid: int, *, attempt: int = 1
    ) -> None:
        """Note the process group (led by ``pid``) of a running execution."""
        ...

    async def executed(self, task_id: UUID, scheduled_at: datetime) -> bool:
        """Whether an execution of the task for ``scheduled_at`` runs or was recorded."""
        ...

    async def release_slots(self, slots: Sequence[tuple[UUID, datetime]]) -> None:
        """Forget the ``running`` records of prepared slots that were not started after all."""
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
        starting: Sequence[StartExecution],
        *,
        started_at: datetime,
    ) -> None:
        pass

    async def process_started(
        self, task_id: UUID, scheduled_at: datetime, pid: int, *, attempt: int = 1
    ) -> None:
        pass

    async def executed(self, task_id: UUID, scheduled_at: datetime) -> bool:
        return False

    async def release_slots(self, slots: Sequence[tuple[UUID, datetime]]) -> None:
        pass


@attrs.define(eq=False)
class _Running:
    """One execution running in the engine's nursery, and how it is to be stopped."""

    start: StartExecution
    stop: trio.Event = attrs.field(factory=trio.Event)
    #: Set when it is stopped: the status it is reported with, and why (ends its stderr).
    stop_status: ExecutionStatus | None = None
    stop_note: str = ""
    #: Stopped by a shutdown: no retry follows, whatever the task's ``retries``.
    shutdown: bool = False
    #: Counted among the commands waiting to start (the engine's ``_starting``).
    starting: bool = True

    def kill(self, status: ExecutionStatus, note: str, *, shutdown: bool = False) -> None:
        if self.stop_status is None:  # the first reason wins: it is what the scheduler saw
            self.stop_status = status
            self.stop_note = note
            self.shutdown = shutdown
        self.stop.set()


class Engine:
    """Runs every task of this agent at its fire times; :meth:`run` is the loop.

    ``env`` is the environment commands inherit (default: the agent's own, read once here); a
    task's ``env`` is laid over it, and the ``TSCHED_*`` variables over both. ``max_output_bytes``
    caps each stream of a task that sets no cap of its own. ``store`` keeps the schedules
    durably (default: nowhere). ``kill_grace`` is how long :meth:`stop` lets running commands
    finish. ``on_start`` is told of each execution as it starts, with its start time (the
    agent's metrics; it must not block). Build it inside ``trio.run``, since the clock is trio's.
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
        on_start: Callable[[StartExecution, datetime], None] | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.clock = clock if clock is not None else WallClock()
        self.scheduler = scheduler if scheduler is not None else Scheduler()
        self.max_output_bytes = max_output_bytes
        self.kill_grace = kill_grace
        self._deliver = deliver
        self._on_start = on_start
        self._store: ScheduleStore = store if store is not None else _NoStore()
        self._env = dict(os.environ if env is None else env)
        self._wake = trio.Event()
        # One change of the task set at a time: each is saved, then applied.
        self._changing = trio.Lock()
        self._stopping = False
        self._killed = False  # the grace is over: running commands are killed
        self._running: dict[_Slot, _Running] = {}
        # Stops for executions the scheduler started but the engine has not yet (a poll waiting
        # for the lock while a manual run replaces what it polled): applied when they start.
        self._early_stops: dict[_Slot, StopExecution] = {}
        self._manual_runs: OrderedDict[_Slot, None] = OrderedDict()
        # Slots marked taken ahead of their time and not yet acted on by a poll; the time up to
        # which the polls have acted (a prepared slot at or before it is one to release).
        self._prepared: set[_Slot] = set()
        self._polled_until: datetime | None = None
        self._prepare_wake = trio.Event()
        self._preparing = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._executing = 0
        self._starting = 0  # launched, process not started yet
        self._idle = trio.Event()  # set by the last execution to end once stopping
        self._stopped = trio.Event()

    def tasks(self) -> list[TaskSpec]:
        """Every task scheduled here, ordered by id."""
        return sorted(self.scheduler.tasks.values(), key=lambda spec: str(spec.task_id))

    def running(self) -> list[StartExecution]:
        """The executions running now, oldest fire time first."""
        return sorted(
            (running.start for running in self._running.values()),
            key=lambda start: (start.scheduled_at, str(start.task.task_id)),
        )

    def restore(self, spec: TaskSpec, *, after: datetime) -> None:
        """Resume a saved task from the first fire time after ``after`` (its last slot acted
        on): the slots since then are recorded as missed on the next poll, with no burst."""
        self.scheduler.add_task(spec, after=after)
        self._wake.set()

    async def add_task(self, spec: TaskSpec) -> bool:
        """Schedule ``spec`` from its next fire time; ``False`` if it was already, unchanged.

        Raises :class:`TaskRejected` for an anchor whose fire times overflow the calendar.

        A changed spec replaces the old one; an execution of the old one that is running
        finishes and is reported. A paused spec is kept and fires nothing; the spec that
        resumes it fires from its next slot on. The spec is saved before it is scheduled.
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
            next_fire_after(spec.frequency, anchor=spec.anchor, timezone=spec.timezone, moment=now)
        except (OverflowError, ValueError):
            raise TaskRejected(
                "the task's fire times fall outside the supported range of dates", field="anchor"
            ) from None
        await self._store.save_schedule(spec, since=now)
        await self._release_prepared(spec.task_id)
        self.scheduler.add_task(spec, after=now)
        logger.info(
            "scheduled task %s%s: %s %r",
            spec.task_id,
            " (paused)" if spec.paused else "",
            spec.frequency,
            spec.command[:200],
        )
        self._wake.set()
        self._prepare_wake.set()
        return True

    async def schedule(self, request: ScheduleTask) -> tuple[TaskSpec, bool]:
        """Carry out a schedule request: the spec now scheduled, and whether it changed.

        A request without an anchor (the original design's three fields) is anchored at
        receipt, but only the first time, and again only when its frequency or time zone
        changes: sending the same task again must not move its fire times, or the endpoint
        would not be idempotent.
        """
        async with self._changing:
            current = self.scheduler.tasks.get(request.task_id)
            if (
                request.anchor is None
                and current is not None
                and (current.frequency, current.timezone) == (request.frequency, request.timezone)
            ):
                spec = request.spec(received_at=current.anchor)
            else:
                spec = request.spec(received_at=self.clock.now())
            return spec, await self._add_task(spec)

    async def remove_task(self, task_id: UUID) -> bool:
        """Stop scheduling ``task_id`` (durably); a running execution finishes and is reported.

        Returns whether it was scheduled here.
        """
        async with self._changing:
            scheduled = task_id in self.scheduler.tasks
            await self._store.remove_schedule(task_id)
            await self._release_prepared(task_id)
            self.scheduler.remove_task(task_id)
        if scheduled:
            logger.info("removed task %s", task_id)
            self._wake.set()
        return scheduled

    async def run_now(self, task_id: UUID, scheduled_at: datetime) -> bool:
        """Run ``task_id`` now, by hand, as the execution for ``scheduled_at`` (trigger manual).

        The task's overlap rule applies, as to a slot; a paused task runs too. Idempotent: a
        second request for the same time starts nothing. Returns ``False`` for a task not
        scheduled here. A stopping agent starts nothing.
        """
        async with self._changing:
            if task_id not in self.scheduler.tasks:
                return False
            slot = (task_id, scheduled_at)
            if self._stopping or self._nursery is None:
                logger.warning("task %s: manual run refused: the agent is stopping", task_id)
                return True
            if slot in self._manual_runs or await self._store.executed(task_id, scheduled_at):
                return True
            self._manual_runs[slot] = None
            while len(self._manual_runs) > MANUAL_RUNS_REMEMBERED:
                self._manual_runs.popitem(last=False)
            now = self.clock.now()
            actions = self.scheduler.run_now(task_id, scheduled_at, now=now)
            self._stop_now(actions)
            logger.info("task %s: manual run for %s", task_id, format_time(scheduled_at))
            await self._act_on_current(self._nursery, actions, now)
        self._wake.set()  # a timeout may now be the next deadline
        return True

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
                self._nursery = nursery
                task_status.started()
                nursery.start_soon(self._prepare_forever)
                await self._schedule_until_stopped(nursery)
                if self._executing:
                    logger.info(
                        "stopping: %d command(s) still running get %.3g s to finish",
                        self._executing,
                        self.kill_grace,
                    )
                    with trio.move_on_after(self.kill_grace):
                        await self._idle.wait()
                self._killed = True
                for running in self._running.values():
                    running.kill(ExecutionStatus.ERROR, KILLED_ON_SHUTDOWN, shutdown=True)
                # The prepared slots that will not start now are missed: recorded so (which
                # ends their ``running`` rows), since a restart resumes after them.
                self._preparing.cancel()
                async with self._changing:
                    for task_id, scheduled_at in sorted(self._prepared):
                        await self._deliver(_missed_on_stop(self.agent_id, task_id, scheduled_at))
                    self._prepared.clear()
        finally:
            self._nursery = None
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
            actions = self.scheduler.poll(now)
            # At once, with no checkpoint since the poll: an execution the scheduler now sees
            # as stopped must not be able to finish first and be reported as if it was not.
            self._stop_now(actions)
            # The prepared slots go now, before anything awaits: their slots are on disk.
            actions = self._start_prepared(nursery, actions)
            self._polled_until = now
            if actions:
                await self._act(nursery, actions, now)

    def _start_prepared(self, nursery: trio.Nursery, actions: Sequence[Action]) -> list[Action]:
        """Start the prepared slots among ``actions``; the actions left to :meth:`_act`."""
        if not self._prepared:
            return list(actions)
        left: list[Action] = []
        current = self.scheduler.tasks
        for action in actions:
            if isinstance(action, StopExecution) or not self._is_prepared(action):
                left.append(action)
                continue
            self._prepared.discard((action.task.task_id, action.scheduled_at))
            if isinstance(action, StartExecution) and action.task.task_id in current:
                self._launch(nursery, action)
            else:
                # A skip, recorded by _act, or a start polled for a task removed since, which
                # _act releases. Its slot is already taken on disk either way.
                left.append(action)
        return left

    def _is_prepared(self, action: StartExecution | SkipExecution) -> bool:
        return (
            action.trigger is Trigger.SCHEDULE
            and (not isinstance(action, StartExecution) or action.attempt == 1)
            and (action.task.task_id, action.scheduled_at) in self._prepared
        )

    async def _prepare_forever(self) -> None:
        """Mark the fire times of the next :data:`PREPARE_AHEAD` seconds taken before they come,
        and release the prepared slots the polls did not act on; until the engine stops."""
        with self._preparing:
            await self._prepare_until_cancelled()

    async def _prepare_until_cancelled(self) -> None:
        while True:
            self._prepare_wake = trio.Event()
            now = self.clock.now()
            until = now + timedelta(seconds=PREPARE_AHEAD)
            async with self._changing:
                await self._prepare(now, until)
            # Again when half the horizon has passed, or when a task changes; an agent whose
            # tasks are all far off sleeps up to MAX_SLEEP, then looks again.
            deadline = self.scheduler.next_deadline()
            pause = PREPARE_AHEAD / 2
            if deadline is None:
                pause = MAX_SLEEP
            else:
                pause = min(MAX_SLEEP, max(pause, (deadline - now).total_seconds() - pause))
            with trio.move_on_after(pause):
                await self._prepare_wake.wait()

    async def _release_prepared(self, task_id: UUID) -> None:
        """Forget the prepared slots of a task that changed or went (under ``_changing``): the
        new spec, if any, takes its slots afresh."""
        slots = sorted(slot for slot in self._prepared if slot[0] == task_id)
        if slots:
            self._prepared.difference_update(slots)
            await self._store.release_slots(slots)

    async def _prepare(self, now: datetime, until: datetime) -> None:
        polled = self._polled_until
        stale = [slot for slot in self._prepared if polled is not None and slot[1] <= polled]
        if stale:
            self._prepared.difference_update(stale)
            await self._store.release_slots(sorted(stale))
        if self._stopping:
            return
        coming = [
            StartExecution(task=spec, scheduled_at=when)
            for spec, when in self.scheduler.upcoming(until)
            if (spec.task_id, when) not in self._prepared and when > now
        ]
        if not coming:
            return
        await self._store.begin_slots(
            {start.task.task_id: start.scheduled_at for start in coming}, coming, started_at=now
        )
        self._prepared.update((start.task.task_id, start.scheduled_at) for start in coming)

    def _stop_now(self, actions: Sequence[Action]) -> None:
        for action in actions:
            if isinstance(action, StopExecution):
                running = self._running.get((action.task_id, action.scheduled_at))
                if running is None:
                    self._early_stops[(action.task_id, action.scheduled_at)] = action
                else:
                    _stop(running, action)

    async def _act(self, nursery: trio.Nursery, actions: Sequence[Action], now: datetime) -> None:
        # Under the same lock as add/remove: a task removed while this awaits its writes (a
        # reconcile's DELETE) must not have a command started after its removal.
        async with self._changing:
            await self._act_on_current(nursery, actions, now)

    async def _act_on_current(
        self, nursery: trio.Nursery, actions: Sequence[Action], now: datetime
    ) -> None:
        current = self.scheduler.tasks
        starts_and_skips: list[StartExecution | SkipExecution] = []
        released: list[_Slot] = []
        for action in actions:
            if isinstance(action, StopExecution):
                continue  # carried out by _stop_now
            # Prepared while this poll waited for the lock: acted on here, nothing to release.
            self._prepared.discard((action.task.task_id, action.scheduled_at))
            if action.task.task_id in current:
                starts_and_skips.append(action)
            elif isinstance(action, StartExecution):
                # polled before its removal: release the slot the scheduler marked running
                slot = (action.task.task_id, action.scheduled_at)
                self._early_stops.pop(slot, None)
                self.scheduler.record_finished(*slot)
                released.append(slot)
        if released:
            await self._store.release_slots(released)
        if not starts_and_skips:
            return
        # Skips are recorded first: if the agent dies before the slots are marked taken, the
        # next start acts on them again, and recording a skip twice is one record.
        for action in starts_and_skips:
            if isinstance(action, SkipExecution):
                await self._skip(action, now)
        starts = [action for action in starts_and_skips if isinstance(action, StartExecution)]
        # Only the fire times of the schedule move a task's last slot: a retry or a manual run
        # is for a time already acted on, or for no slot at all.
        last_slots: dict[UUID, datetime] = {}
        for action in starts_and_skips:
            first = not isinstance(action, StartExecution) or action.attempt == 1
            if action.trigger is Trigger.SCHEDULE and first:
                task_id = action.task.task_id
                last_slots[task_id] = max(
                    action.scheduled_at, last_slots.get(task_id, action.scheduled_at)
                )
        if last_slots or starts:
            await self._store.begin_slots(last_slots, starts, started_at=now)
        for start in starts:
            self._launch(nursery, start)

    def _launch(self, nursery: trio.Nursery, start: StartExecution) -> None:
        """Run ``start`` in ``nursery``; its slot is taken on disk already."""
        slot = (start.task.task_id, start.scheduled_at)
        if self._starting >= MAX_STARTING:
            self._early_stops.pop(slot, None)
            self.scheduler.record_finished(*slot, ExecutionStatus.SKIPPED, now=self.clock.now())
            skip = SkipExecution(
                task=start.task,
                scheduled_at=start.scheduled_at,
                status=ExecutionStatus.SKIPPED,
                reason=f"the agent is overloaded: {self._starting} commands wait to start",
                trigger=start.trigger,
            )
            self._executing += 1
            nursery.start_soon(self._record_overload, skip, start.attempt)
            return
        self._starting += 1
        running = _Running(start=start)
        self._running[slot] = running
        early = self._early_stops.pop(slot, None)
        if early is not None:
            _stop(running, early)
        self._executing += 1
        nursery.start_soon(self._execute, running)

    async def _record_overload(self, skip: SkipExecution, attempt: int) -> None:
        try:
            # Its attempt too: recording it is what ends the slot's ``running`` row.
            now = self.clock.now()
            logger.warning(
                "task %s at %s skipped: %s",
                skip.task.task_id,
                format_time(skip.scheduled_at),
                skip.reason,
            )
            await self._deliver(
                Execution(
                    task_id=skip.task.task_id,
                    agent_id=self.agent_id,
                    scheduled_at=skip.scheduled_at,
                    started_at=now,
                    finished_at=now,
                    status=skip.status,
                    stderr=f"taskscheduler: skipped: {skip.reason}\n",
                    attempt=attempt,
                    trigger=skip.trigger,
                )
            )
        finally:
            self._executing -= 1
            if self._stopping and not self._executing:
                self._idle.set()

    def _started(self, running: _Running) -> None:
        """``running`` no longer waits to start (its process runs, or none could start)."""
        if running.starting:
            running.starting = False
            self._starting -= 1

    async def _execute(self, running: _Running) -> None:
        try:
            await self._execute_and_deliver(running)
        finally:
            self._started(running)
            self._executing -= 1
            if self._stopping and not self._executing:
                self._idle.set()

    async def _execute_and_deliver(self, running: _Running) -> None:
        start = running.start
        spec, scheduled_at = start.task, start.scheduled_at
        started_at = self.clock.now()
        if self._on_start is not None:
            self._on_start(start, started_at)
        # The task's variables over the agent's, ours over both (the core refuses a task env
        # that names TSCHED_*, and this order makes sure of it).
        env = (
            self._env
            | spec.env
            | {
                "TSCHED_TASK_ID": str(spec.task_id),
                "TSCHED_AGENT_ID": str(self.agent_id),
                "TSCHED_SCHEDULED_AT": format_time(scheduled_at),
            }
        )
        # A task may ask for less than the agent's cap, never more: the agent's cap is the
        # operator's bound on memory per execution.
        cap = self.max_output_bytes
        if spec.max_output_bytes is not None:
            cap = min(cap, spec.max_output_bytes)

        def now_started() -> None:
            self._started(running)

        async def started(pid: int) -> None:
            now_started()
            await self._store.process_started(
                spec.task_id, scheduled_at, pid, attempt=start.attempt
            )

        if self._killed:  # started in the instant the grace ran out
            running.kill(ExecutionStatus.ERROR, KILLED_ON_SHUTDOWN, shutdown=True)
        try:
            result = await run_command(
                spec.command, env=env, max_output_bytes=cap, stop=running.stop, on_start=started
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
        except BaseException:
            # Cancelled (an abrupt stop): the group is killed, nothing is recorded; the
            # scheduler must still let go of the slot.
            now_started()
            self._finished(running, result=None)
            raise
        now_started()  # if no process could start, it waits no longer either
        if running.stop_status is not None:
            # Stopped by the scheduler (timeout, replaced) or by the shutdown: reported with
            # that status even if the command ended by itself in the same instant, since that
            # is the status the scheduler decided its retries on.
            separator = "" if not result.stderr or result.stderr.endswith("\n") else "\n"
            result = attrs.evolve(
                result,
                status=running.stop_status,
                stderr=f"{result.stderr}{separator}{running.stop_note}",
            )
        final = self._finished(running, result=result)
        await self._deliver(
            Execution(
                task_id=spec.task_id,
                agent_id=self.agent_id,
                scheduled_at=scheduled_at,
                started_at=started_at,
                finished_at=max(self.clock.now(), started_at),
                status=result.status,
                exit_code=result.exit_code,
                stdout=result.stdout,
                stderr=result.stderr,
                stdout_dropped=result.stdout_dropped,
                stderr_dropped=result.stderr_dropped,
                attempt=start.attempt,
                trigger=start.trigger,
                final=final,
            )
        )

    def _finished(self, running: _Running, *, result: CommandResult | None) -> bool:
        """Tell the scheduler the execution ended; whether that attempt is final."""
        start = running.start
        slot = (start.task.task_id, start.scheduled_at)
        if self._running.get(slot) is running:
            del self._running[slot]
        if result is None or running.shutdown:
            # no ``now``: the scheduler schedules no retry (the agent is going away)
            self.scheduler.record_finished(*slot, ExecutionStatus.ERROR)
            return True
        final = self.scheduler.record_finished(*slot, result.status, now=self.clock.now())
        self._wake.set()  # a retry may now be the next deadline
        return final

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
                trigger=action.trigger,
            )
        )


def _missed_on_stop(agent_id: UUID, task_id: UUID, scheduled_at: datetime) -> Execution:
    return Execution(
        task_id=task_id,
        agent_id=agent_id,
        scheduled_at=scheduled_at,
        started_at=scheduled_at,
        finished_at=scheduled_at,
        status=ExecutionStatus.MISSED,
        stderr="taskscheduler: missed: the agent stopped before this fire time\n",
    )


def _stop(running: _Running, stop: StopExecution) -> None:
    logger.info(
        "task %s at %s: stopping it (%s): %s",
        stop.task_id,
        format_time(stop.scheduled_at),
        stop.status.value,
        stop.reason,
    )
    running.kill(stop.status, f"taskscheduler: killed: {stop.reason}\n")
