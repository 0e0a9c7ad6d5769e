"""Where executions wait until the server has acknowledged them.

The reporter only needs a few operations, so the queue hides behind the small :class:`Outbox`
protocol. It reads the queue a page at a time (:meth:`Outbox.pending_page`): a backlog of a
long outage, outputs included, is never loaded into memory at once.

:class:`SqliteOutbox` is the one the agent runs with: the ``outbox`` table of its state file, so
that reports survive a restart (and a ``SIGKILL``); putting an execution there also journals it
and ends its ``running`` row, in one transaction. :class:`MemoryOutbox` keeps them in memory,
for tests and embedders that want no file. The methods are async so that the durable one can
run its blocking I/O in a thread.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from taskscheduler_core import Execution, ExecutionKey

from .state import AsyncAgentState

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

    async def pending_page(
        self, *, after: int, limit: int, max_bytes: int | None = None
    ) -> Sequence[tuple[int, Execution]]:
        """Up to ``limit`` executions queued after position ``after`` (0: from the start),
        oldest first, each with its position; replacing an execution keeps its position.
        With ``max_bytes``, the page may end sooner, once it holds about that many bytes."""
        ...

    async def acknowledge(self, key: ExecutionKey) -> None:
        """Forget the execution with ``key`` (delivered, or refused for good)."""
        ...

    async def acknowledge_many(self, keys: Sequence[ExecutionKey]) -> None:
        """Forget the executions with ``keys``."""
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
        # dicts keep insertion order: this is the queue, oldest first, with increasing positions
        self._executions: dict[ExecutionKey, tuple[int, Execution]] = {}
        self._last_position = 0

    def __len__(self) -> int:
        return len(self._executions)

    async def put(self, execution: Execution) -> None:
        kept = self._executions.get(execution.key)
        if kept is None:
            self._last_position += 1
            position = self._last_position
        else:
            position = kept[0]
        self._executions[execution.key] = (position, execution)
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
        return [execution for _, execution in self._executions.values()]

    async def pending_page(
        self, *, after: int, limit: int, max_bytes: int | None = None
    ) -> Sequence[tuple[int, Execution]]:
        # max_bytes is not applied: these executions are in memory already.
        page = []
        for position, execution in self._executions.values():
            if position > after:
                page.append((position, execution))
                if len(page) == limit:
                    break
        return page

    async def acknowledge(self, key: ExecutionKey) -> None:
        self._executions.pop(key, None)

    async def acknowledge_many(self, keys: Sequence[ExecutionKey]) -> None:
        for key in keys:
            self._executions.pop(key, None)


class SqliteOutbox:
    """An :class:`Outbox` in the agent's state file (:mod:`taskscheduler_agent.state`).

    Unbounded: a long outage fills the disk slowly (a report is a few hundred bytes plus its
    output), and dropping reports is what this outbox exists to avoid.
    """

    def __init__(self, state: AsyncAgentState) -> None:
        self.state = state

    async def put(self, execution: Execution) -> None:
        """Journal ``execution`` and queue its report; returns once both are on disk."""
        await self.state.record(execution)

    async def pending(self) -> Sequence[Execution]:
        return await self.state.pending()

    async def pending_page(
        self, *, after: int, limit: int, max_bytes: int | None = None
    ) -> Sequence[tuple[int, Execution]]:
        return await self.state.pending_page(after=after, limit=limit, max_bytes=max_bytes)

    async def acknowledge(self, key: ExecutionKey) -> None:
        await self.state.acknowledge(key)

    async def acknowledge_many(self, keys: Sequence[ExecutionKey]) -> None:
        """Forget ``keys`` in one transaction."""
        await self.state.acknowledge_many(keys)
