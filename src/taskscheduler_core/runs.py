"""Runs: the executions of one task on all its agents that share one fire time.

A run is **complete** when every agent expected for it has reported, or when its report deadline
(``scheduled_at + report_grace``) has passed, so that one dead agent cannot hide every output
forever. ``latest_output`` shows the newest complete run.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Iterable
from datetime import datetime, timedelta
from uuid import UUID

import attrs

from .models import AgentOutput, Execution, ExecutionStatus, LatestOutput, Trigger

#: How long after its fire time a run waits for missing agents before it counts as complete.
DEFAULT_REPORT_GRACE = timedelta(seconds=60)


def _by_agent(executions: Iterable[Execution]) -> tuple[Execution, ...]:
    return tuple(sorted(executions, key=lambda e: (str(e.agent_id), e.attempt)))


class RunStatus(enum.Enum):
    """The aggregated status of a run, over the final outcome of each of its agents."""

    RUNNING = "running"  #: an expected agent has not reported a final attempt yet
    SUCCEEDED = "succeeded"  #: every agent that ran succeeded
    FAILED = "failed"  #: every agent that ran failed (failed, timed out, error, cancelled)
    PARTIALLY_FAILED = "partially_failed"  #: some agents succeeded, some failed
    MISSED = "missed"  #: no agent ran it: every execution was missed or skipped


@attrs.frozen(kw_only=True)
class AgentOutcome:
    """How one agent's part of a run ended: its last attempt, and how many there were."""

    agent_id: UUID
    status: ExecutionStatus
    exit_code: int | None
    attempts: int
    started_at: datetime
    finished_at: datetime
    #: ``False`` while the agent will retry.
    final: bool


def _outcomes(outcomes: Iterable[AgentOutcome]) -> tuple[AgentOutcome, ...]:
    return tuple(outcomes)


@attrs.frozen(kw_only=True)
class RunSummary:
    """One row of ``GET /api/v1/tasks/{id}/runs``."""

    task_id: UUID
    scheduled_at: datetime
    trigger: Trigger
    status: RunStatus
    started_at: datetime | None
    #: When the last execution finished; ``None`` while the run is running.
    finished_at: datetime | None
    outcomes: tuple[AgentOutcome, ...] = attrs.field(converter=_outcomes)


def _summaries(runs: Iterable[RunSummary]) -> tuple[RunSummary, ...]:
    return tuple(runs)


@attrs.frozen(kw_only=True)
class RunList:
    """Answer of ``GET /api/v1/tasks/{id}/runs``: one page, newest first."""

    runs: tuple[RunSummary, ...] = attrs.field(converter=_summaries)
    next_cursor: str | None = None


@attrs.frozen(kw_only=True)
class Run:
    """The executions of one task that share one ``scheduled_at``, sorted by agent id."""

    task_id: UUID
    scheduled_at: datetime
    executions: tuple[Execution, ...] = attrs.field(converter=_by_agent)

    @property
    def agent_ids(self) -> frozenset[UUID]:
        return frozenset(execution.agent_id for execution in self.executions)

    @property
    def last_attempts(self) -> tuple[Execution, ...]:
        """Each agent's newest attempt, sorted by agent id: what the run's outcome is made of."""
        newest: dict[UUID, Execution] = {}
        for execution in self.executions:  # sorted by (agent, attempt): the last one wins
            newest[execution.agent_id] = execution
        return tuple(newest.values())

    @property
    def done_agent_ids(self) -> frozenset[UUID]:
        """Agents whose newest attempt is final (no retry to come)."""
        return frozenset(e.agent_id for e in self.last_attempts if e.final)

    @property
    def ran(self) -> bool:
        """Whether a process was started for any execution of the run."""
        return any(execution.status.ran for execution in self.executions)

    @property
    def completion_time(self) -> datetime | None:
        """When the last execution of the run finished; ``None`` for a run with none."""
        return max((e.finished_at for e in self.executions), default=None)

    def is_complete(
        self, *, expected: Collection[UUID], now: datetime, report_grace: timedelta
    ) -> bool:
        """Every expected agent reported a final attempt, or the report deadline has passed."""
        if not self.executions:
            return False
        return self.done_agent_ids >= set(expected) or now >= self.scheduled_at + report_grace

    def summary(
        self, *, expected: Collection[UUID], now: datetime, report_grace: timedelta
    ) -> RunSummary:
        """This run as a row of the runs view, with its aggregated :class:`RunStatus`."""
        last = self.last_attempts
        attempts: dict[UUID, int] = {}
        for execution in self.executions:
            attempts[execution.agent_id] = attempts.get(execution.agent_id, 0) + 1
        complete = self.is_complete(expected=expected, now=now, report_grace=report_grace)
        ran = [e for e in last if e.status.ran]
        succeeded = sum(e.status is ExecutionStatus.SUCCEEDED for e in ran)
        if not complete:
            status = RunStatus.RUNNING
        elif not ran:
            status = RunStatus.MISSED
        elif succeeded == len(ran):
            status = RunStatus.SUCCEEDED
        elif succeeded == 0:
            status = RunStatus.FAILED
        else:
            status = RunStatus.PARTIALLY_FAILED
        return RunSummary(
            task_id=self.task_id,
            scheduled_at=self.scheduled_at,
            trigger=self.executions[0].trigger if self.executions else Trigger.SCHEDULE,
            status=status,
            started_at=min((e.started_at for e in self.executions), default=None),
            finished_at=self.completion_time if complete else None,
            outcomes=tuple(
                AgentOutcome(
                    agent_id=e.agent_id,
                    status=e.status,
                    exit_code=e.exit_code,
                    attempts=attempts[e.agent_id],
                    started_at=e.started_at,
                    finished_at=e.finished_at,
                    final=e.final,
                )
                for e in last
            ),
        )

    def output(self) -> LatestOutput:
        return LatestOutput(
            completion_time=self.completion_time,
            scheduled_at=self.scheduled_at,
            outputs=tuple(
                AgentOutput(agent_id=e.agent_id, stdout=e.stdout, stderr=e.stderr)
                for e in self.last_attempts
            ),
        )


def group_runs(executions: Iterable[Execution]) -> list[Run]:
    """Group executions into runs, newest ``scheduled_at`` first."""
    by_slot: dict[tuple[UUID, datetime], list[Execution]] = {}
    for execution in executions:
        by_slot.setdefault((execution.task_id, execution.scheduled_at), []).append(execution)
    runs = [
        Run(task_id=task_id, scheduled_at=scheduled_at, executions=tuple(group))
        for (task_id, scheduled_at), group in by_slot.items()
    ]
    return sorted(runs, key=lambda run: run.scheduled_at, reverse=True)


def latest_complete_run(
    runs: Iterable[Run],
    *,
    expected: Callable[[datetime], Collection[UUID]],
    now: datetime,
    report_grace: timedelta = DEFAULT_REPORT_GRACE,
) -> Run | None:
    """The first complete run of ``runs`` (given newest first) that ran something, or ``None``.

    ``expected(scheduled_at)`` names the agents that should report for the run at that time.
    A run in which every execution was skipped or missed printed nothing: it is passed over, so
    that a long command's output is not hidden by the slots skipped while it ran.
    """
    for run in runs:
        if not run.ran:
            continue
        if run.is_complete(expected=expected(run.scheduled_at), now=now, report_grace=report_grace):
            return run
    return None


def latest_output(
    runs: Iterable[Run],
    *,
    expected: Callable[[datetime], Collection[UUID]],
    now: datetime,
    report_grace: timedelta = DEFAULT_REPORT_GRACE,
) -> LatestOutput:
    """What ``GET /api/v1/tasks/{id}/latest_output`` answers for these runs."""
    run = latest_complete_run(runs, expected=expected, now=now, report_grace=report_grace)
    if run is None:
        return LatestOutput(completion_time=None, outputs=())
    return run.output()
