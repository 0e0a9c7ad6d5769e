"""Which run ``latest_output`` shows, read from the store in one go.

The rule is the core's (:func:`taskscheduler_core.latest_complete_run`); this module only feeds
it. Runs are read newest first, a page at a time and without their output, until a complete
one is found: a run older than the report grace with any execution is always complete, so this
reads little more than the runs inside the grace window. The first page is small, since the
newest run or the one before it is nearly always the answer; only the chosen run's output is
read.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from uuid import UUID

from taskscheduler_core import LatestOutput, latest_complete_run

from .store import Store

#: Runs read by the first page: the newest complete run is nearly always among them (the newest
#: is complete, or still waiting for its reports while the one before it is).
FIRST_PAGE = 4
#: Runs read per page after the first, while looking for the newest complete one.
RUNS_PER_PAGE = 50


def expected_agents(store: Store, task_id: UUID) -> Callable[[datetime], frozenset[UUID]]:
    """Which agents a run of ``task_id`` waits for, by its fire time, read once from ``store``.

    An agent is waited for only for the fire times while it was assigned the task (after it was
    assigned, before its assignment ended: the task was deleted, or its targets or the agent's
    labels changed), and only while it is not lost: a silent agent would hold every run back
    until the report deadline (which bounds the wait for every agent in any case).
    """
    spans = store.assignment_spans(task_id)
    lost = store.lost_agents()

    def expected(scheduled_at: datetime) -> frozenset[UUID]:
        return frozenset(
            agent
            for agent, (since, until) in spans.items()
            if agent not in lost and _assigned_at(scheduled_at, since, until)
        )

    return expected


def _assigned_at(moment: datetime, since: datetime, until: datetime | None) -> bool:
    return since < moment and (until is None or until > moment)


def latest_output_of(
    store: Store, task_id: UUID, *, now: datetime, report_grace: timedelta
) -> LatestOutput | None:
    """What ``GET /api/v1/tasks/{task_id}/latest_output`` answers; ``None`` for no such task.

    Synchronous, like the store: call it through :meth:`AsyncStore.call`, so it reads one
    consistent state.
    """
    if store.get_task(task_id) is None:
        return None
    expected = expected_agents(store, task_id)
    before: datetime | None = None
    page = FIRST_PAGE
    while True:
        runs = store.recent_runs(
            task_id, limit=page, before=before, with_output=False, ran_only=True
        )
        run = latest_complete_run(runs, expected=expected, now=now, report_grace=report_grace)
        if run is not None:
            shown = store.run(task_id, run.scheduled_at)
            assert shown is not None  # read in the same call: nothing deleted it meanwhile
            return shown.output()
        if len(runs) < page:
            return LatestOutput(completion_time=None, outputs=())
        before = runs[-1].scheduled_at
        page = RUNS_PER_PAGE
