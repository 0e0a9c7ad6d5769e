"""Runs: the executions of one task on all its agents that share one fire time.

A run is **complete** when every agent expected for it has reported, or when its report deadline
(``scheduled_at + report_grace``) has passed, so that one dead agent cannot hide every output
forever. ``latest_output`` shows the newest complete run.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from datetime import datetime, timedelta
from uuid import UUID

import attrs

from .models import AgentOutput, Execution, LatestOutput

#: How long after its fire time a run waits for missing agents before it counts as complete.
DEFAULT_REPORT_GRACE = timedelta(seconds=60)


def _by_agent(executions: Iterable[Execution]) -> tuple[Execution, ...]:
    return tuple(sorted(executions, key=lambda execution: str(execution.agent_id)))


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
        """Every expected agent reported, or the report deadline has passed."""
        if not self.executions:
            return False
        return self.agent_ids >= set(expected) or now >= self.scheduled_at + report_grace

    def output(self) -> LatestOutput:
        return LatestOutput(
            completion_time=self.completion_time,
            scheduled_at=self.scheduled_at,
            outputs=tuple(
                AgentOutput(agent_id=e.agent_id, stdout=e.stdout, stderr=e.stderr)
                for e in self.executions
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
