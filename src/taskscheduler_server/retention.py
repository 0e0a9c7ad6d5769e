"""Pruning the history: the background loop that applies the retention policy.

Every ``prune_interval`` each task's executions older than its cutoff are deleted (the core's
:class:`~taskscheduler_core.RetentionPolicy` says where the cutoff is: a task keeps its newest
``keep_runs`` runs, none older than ``keep_days``). Rows go in bounded batches, each its own
store call, so that the database is never held for long and reports keep being acknowledged
while a long history is pruned. A deleted task whose history is gone is then forgotten: its
``GET`` answers 404 from then on.

The loop sleeps with trio (a ``MockClock`` drives it in tests) and reads "now" from its
``clock``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from uuid import UUID

import attrs
import trio

from taskscheduler_core import RetentionPolicy

from .clock import utc_now
from .store import AsyncStore, Store

logger = logging.getLogger("taskscheduler.server.retention")

#: Executions deleted per store call, and tasks read per page.
PRUNE_BATCH = 500


@attrs.frozen(kw_only=True)
class Pruned:
    """What one pass of :func:`prune_once` did."""

    executions: int = 0
    #: Deleted tasks forgotten, their history being gone.
    forgotten: tuple[UUID, ...] = ()


async def prune_task(
    store: AsyncStore, task_id: UUID, *, policy: RetentionPolicy, now: datetime
) -> int:
    """Delete the executions of ``task_id`` that ``policy`` no longer keeps; how many."""
    # the newest keep_runs + 1 fire times tell whether the count rule prunes, and where; the
    # newest one is kept, but for a deleted task, which must be able to empty and be forgotten
    limit = (policy.keep_runs or 0) + 1
    run_times = await store.call(Store.run_times, task_id, limit=limit)
    task = await store.call(Store.get_task, task_id)
    keep_newest = task is not None and task.deleted_at is None
    cutoff = policy.cutoff(run_times, now=now, keep_newest=keep_newest)
    if cutoff is None:
        return 0
    oldest = await store.call(Store.oldest_run_time, task_id)
    if oldest is None or oldest >= cutoff:
        return 0
    deleted = 0
    while True:
        batch = await store.call(Store.prune_executions, task_id, before=cutoff, limit=PRUNE_BATCH)
        deleted += batch
        if batch < PRUNE_BATCH:
            return deleted


async def prune_once(store: AsyncStore, *, policy: RetentionPolicy, now: datetime) -> Pruned:
    """Apply ``policy`` to every task once, then forget the deleted tasks left empty."""
    deleted = 0
    after: UUID | None = None
    while not policy.keeps_everything:
        task_ids = await store.call(Store.task_ids, after=after, limit=PRUNE_BATCH)
        for task_id in task_ids:
            deleted += await prune_task(store, task_id, policy=policy, now=now)
        if len(task_ids) < PRUNE_BATCH:
            break
        after = task_ids[-1]
    forgotten = await store.call(Store.forget_deleted_tasks)
    return Pruned(executions=deleted, forgotten=tuple(forgotten))


async def prune_history(
    store: AsyncStore,
    *,
    policy: RetentionPolicy,
    interval: timedelta,
    clock: Callable[[], datetime] = utc_now,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Prune now and every ``interval`` until cancelled."""
    task_status.started()
    while True:
        pruned = await prune_once(store, policy=policy, now=clock())
        if pruned.executions or pruned.forgotten:
            logger.info(
                "pruned %d executions past the retention policy (%s); forgot %d deleted tasks",
                pruned.executions,
                policy,
                len(pruned.forgotten),
            )
        await trio.sleep(interval.total_seconds())
