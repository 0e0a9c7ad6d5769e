"""Which run ``latest_output`` shows, read from the store in one go.

The rule is the core's (:func:`taskscheduler_core.latest_complete_run`); this module only feeds
it. Runs are read newest first, a page at a time and without their output, until a complete
one is found: a run older than the report grace with any execution is always complete, so this
reads little more than the runs inside the grace window. Only the chosen run's output is read.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from uuid import UUID

from taskscheduler_core import LatestOutput, latest_complete_run

from .store import Store

#: Runs read per page while looking for the newest complete one.
RUNS_PER_PAGE = 50


def latest_output_of(
    store: Store, task_id: UUID, *, now: datetime, report_grace: timedelta
) -> LatestOutput | None:
    """What ``GET /api/v1/tasks/{task_id}/latest_output`` answers; ``None`` for no such task.

    Synchronous, like the store: call it through :meth:`AsyncStore.call`, so it reads one
    consistent state.
    """
    if store.get_task(task_id) is None:
        return None
    assigned = store.assignment_times(task_id)
    lost = store.lost_agents()

    def expected(scheduled_at: datetime) -> frozenset[UUID]:
        # An agent is waited for only for the fire times after it was assigned the task, and
        # only while it is not lost: a silent agent would hold every run back until the
        # report deadline (which bounds the wait for every agent in any case).
        return frozenset(
            agent for agent, since in assigned.items() if since < scheduled_at and agent not in lost
        )

    before: datetime | None = None
    while True:
        runs = store.recent_runs(
            task_id, limit=RUNS_PER_PAGE, before=before, with_output=False, ran_only=True
        )
        run = latest_complete_run(runs, expected=expected, now=now, report_grace=report_grace)
        if run is not None:
            shown = store.run(task_id, run.scheduled_at)
            assert shown is not None  # read in the same call: nothing deleted it meanwhile
            return shown.output()
        if len(runs) < RUNS_PER_PAGE:
            return LatestOutput(completion_time=None, outputs=())
        before = runs[-1].scheduled_at
