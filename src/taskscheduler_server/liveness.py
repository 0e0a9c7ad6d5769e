"""Which agents are alive: the watch that marks silent agents ``lost``.

An agent is heard from when it heartbeats, registers or reports; the store records that in the
request's own transaction and marks it ``alive``. :func:`watch_liveness` marks ``lost`` the
alive agents silent for ``lost_after``. It sleeps until the first moment an alive agent could
become lost (the oldest ``last_seen_at`` + ``lost_after``): a contact only pushes that moment
later, so it never oversleeps, and it wakes once per loss rather than polling.

A server that starts gives every agent ``lost_after`` from its start: no agent could reach it
while it was down, and none is declared lost for the server's own absence.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

import trio

from .clock import utc_now
from .store import AsyncStore, Store

logger = logging.getLogger("taskscheduler.server.liveness")

#: The shortest sleep between two sweeps: a guard against spinning on a clock that moves oddly.
MIN_SWEEP_INTERVAL = 0.01


async def watch_liveness(
    store: AsyncStore,
    *,
    lost_after: timedelta,
    clock: Callable[[], datetime] = utc_now,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Mark agents ``lost`` when they have been silent for ``lost_after``; runs until cancelled."""
    started = clock()
    task_status.started()
    while True:
        silent_since = clock() - lost_after
        # Nobody is judged on the time before this server started.
        if silent_since >= started:
            for agent in await store.call(Store.mark_lost, silent_since):
                logger.warning(
                    "agent %s at %s is lost: not heard from for %s (since %s)",
                    agent.id,
                    agent.url,
                    lost_after,
                    agent.last_seen_at,
                )
        oldest = await store.call(Store.oldest_alive_contact)
        next_loss = max(started, oldest or clock()) + lost_after
        await trio.sleep(max((next_loss - clock()).total_seconds(), MIN_SWEEP_INTERVAL))
