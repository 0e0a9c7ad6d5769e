"""Where executions wait until the server has acknowledged them.

The reporter only needs three operations, so the queue hides behind the small :class:`Outbox`
protocol: :class:`MemoryOutbox` is the in-memory implementation; a durable one (SQLite in the
data directory, so that reports survive a restart) can replace it without touching the reporter.
The methods are async so that such an implementation can run its blocking I/O in a thread.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from taskscheduler_core import Execution, ExecutionKey

logger = logging.getLogger(__name__)

#: How many unacknowledged executions :class:`MemoryOutbox` keeps by default.
DEFAULT_MEMORY_OUTBOX_LIMIT = 10_000


class Outbox(Protocol):
    """The executions not yet acknowledged by the server."""

    async def put(self, execution: Execution) -> None:
        """Keep ``execution`` until acknowledged; putting the same key again replaces it."""
        ...

    async def pending(self) -> Sequence[Execution]:
        """Every execution not yet acknowledged, oldest first."""
        ...

    async def acknowledge(self, key: ExecutionKey) -> None:
        """Forget the execution with ``key`` (delivered, or refused for good)."""
        ...


class MemoryOutbox:
    """An :class:`Outbox` in memory, bounded so that a long outage cannot exhaust memory.

    When full, the oldest execution is dropped (and counted in :attr:`dropped`): the newest
    outputs are the ones ``latest_output`` shows.
    """

    def __init__(self, *, limit: int = DEFAULT_MEMORY_OUTBOX_LIMIT) -> None:
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        self.limit = limit
        self.dropped = 0
        # dicts keep insertion order: this is the queue, oldest first
        self._executions: dict[ExecutionKey, Execution] = {}

    def __len__(self) -> int:
        return len(self._executions)

    async def put(self, execution: Execution) -> None:
        self._executions[execution.key] = execution
        while len(self._executions) > self.limit:
            oldest = next(iter(self._executions))
            del self._executions[oldest]
            self.dropped += 1
            logger.warning(
                "outbox full (%d executions): dropped the report of task %s at %s",
                self.limit,
                oldest.task_id,
                oldest.scheduled_at.isoformat(),
            )

    async def pending(self) -> Sequence[Execution]:
        return list(self._executions.values())

    async def acknowledge(self, key: ExecutionKey) -> None:
        self._executions.pop(key, None)
