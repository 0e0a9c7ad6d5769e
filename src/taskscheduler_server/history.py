"""A task's history as the API shows it: its runs (aggregated per fire time) and executions.

A run's status is not stored: it depends on which agents the run waits for and on the time
(a run still waiting is ``running`` until its report deadline). The core computes it
(:meth:`taskscheduler_core.Run.summary`); this module reads the runs a page at a time, without
their output, and feeds it. Like :mod:`.outputs`, these functions are synchronous: call them
through :meth:`AsyncStore.call`, so that each answer reads one consistent state.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from taskscheduler_core import Execution, ExecutionKey, ExecutionStatus, RunStatus, RunSummary

from .outputs import expected_agents
from .store import Store

#: With a status filter, runs are read this many at a time until the page is full…
RUNS_PER_SCAN = 200
#: …but no more than this many per request: the page may then be short, with a cursor to go on.
MAX_RUNS_SCANNED = 5000


def runs_of(
    store: Store,
    task_id: UUID,
    *,
    now: datetime,
    report_grace: timedelta,
    limit: int,
    before: datetime | None = None,
    status: RunStatus | None = None,
) -> tuple[list[RunSummary], datetime | None] | None:
    """A page of the runs of ``task_id``, newest first, and the fire time to continue before
    (``None`` on the last page); ``None`` for no such task.

    ``before`` is where the previous page stopped; ``status`` keeps only the runs with it.
    """
    if store.get_task(task_id) is None:
        return None
    expected = expected_agents(store, task_id)
    found: list[RunSummary] = []
    scanned = 0
    while True:
        size = limit + 1 if status is None else max(limit + 1, RUNS_PER_SCAN)
        runs = store.recent_runs(task_id, limit=size, before=before, with_output=False)
        for run in runs:
            scanned += 1
            summary = run.summary(
                expected=expected(run.scheduled_at), now=now, report_grace=report_grace
            )
            if status is None or summary.status is status:
                found.append(summary)
                if len(found) > limit:
                    page = found[:limit]
                    return page, page[-1].scheduled_at
            if scanned >= MAX_RUNS_SCANNED:
                # a short page; the next one goes on from the last run looked at
                return found, run.scheduled_at
        if len(runs) < size:
            return found, None
        before = runs[-1].scheduled_at


def executions_of(
    store: Store,
    task_id: UUID,
    *,
    limit: int,
    after: ExecutionKey | None = None,
    agent_id: UUID | None = None,
    status: ExecutionStatus | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> tuple[list[Execution], ExecutionKey | None] | None:
    """A page of the executions of ``task_id``, newest first, and the last one's key when more
    follow; ``None`` for no such task."""
    if store.get_task(task_id) is None:
        return None
    executions = store.find_executions(
        task_id,
        agent_id=agent_id,
        status=status,
        since=since,
        until=until,
        after=after,
        limit=limit + 1,
    )
    page = executions[:limit]
    more = len(executions) > limit
    return page, page[-1].key if more else None
