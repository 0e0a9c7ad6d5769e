"""Reporting executions to the server, retrying until each one is acknowledged.

Every execution goes into the :class:`~taskscheduler_agent.outbox.Outbox` first and leaves it
only when the server answers ``2xx`` (it stores reports idempotently, so a retry after a lost
answer is harmless), or when the server refuses it for good (a ``4xx`` other than 408 and 429:
retrying would only repeat the refusal, so it is logged and dropped).

Retries are paced twice over:

- each report has its own backoff, so a report the server keeps failing on goes to the back of
  the line and cannot stall the ones behind it;
- a failure that says the *server* is in trouble (no connection, a timeout, a 5xx, 408, 429)
  also closes a gate for everyone, with its own backoff, so an agent with a long backlog sends
  one probe per period to a server that is down instead of its whole queue. Any answer from
  the server reopens the gate.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import NoReturn

import attrs
import httpx
import trio

from taskscheduler_core import Execution, ExecutionKey, ExecutionReport, unstructure

from .backoff import Backoff
from .outbox import MemoryOutbox, Outbox

logger = logging.getLogger(__name__)

#: Client errors that are worth retrying: the server asks us to come back later.
_RETRYABLE_CLIENT_ERRORS = frozenset({408, 429})


@attrs.define
class _Retry:
    failures: int
    not_before: float  # trio time


class Reporter:
    """Sends each execution put into it to ``POST {server_url}/api/v1/tasks/{id}/complete``.

    Without a ``server_url`` executions are logged and kept in the outbox. :meth:`run` is the
    delivery loop; pass ``client`` to share an ``httpx.AsyncClient`` (else ``run`` opens one).
    """

    def __init__(
        self,
        *,
        server_url: str | None,
        outbox: Outbox | None = None,
        client: httpx.AsyncClient | None = None,
        backoff: Backoff | None = None,
        request_timeout: float = 10.0,
    ) -> None:
        self.server_url = server_url.rstrip("/") if server_url else None
        self.outbox: Outbox = outbox if outbox is not None else MemoryOutbox()
        self.backoff = backoff if backoff is not None else Backoff(initial=0.2, maximum=30.0)
        self.request_timeout = request_timeout
        self._client = client
        self._wake = trio.Event()
        self._retries: dict[ExecutionKey, _Retry] = {}
        self._gate_failures = 0
        self._gate_until = -math.inf

    async def submit(self, execution: Execution) -> None:
        """Queue ``execution`` for delivery; returns once it is in the outbox."""
        await self.outbox.put(execution)
        level = logging.INFO if self.server_url is None else logging.DEBUG
        logger.log(
            level,
            "task %s at %s: %s (exit code %s), %d+%d characters of output",
            execution.task_id,
            execution.scheduled_at.isoformat(),
            execution.status.value,
            execution.exit_code,
            len(execution.stdout),
            len(execution.stderr),
        )
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Deliver the outbox, forever."""
        if self.server_url is None:
            task_status.started()
            await trio.sleep_forever()
        if self._client is not None:
            task_status.started()
            await self._deliver_forever(self._client, self.server_url)
        async with httpx.AsyncClient(timeout=self.request_timeout) as client:
            task_status.started()
            await self._deliver_forever(client, self.server_url)

    async def _deliver_forever(self, client: httpx.AsyncClient, server_url: str) -> NoReturn:
        while True:
            # A fresh event before reading the outbox: a put during the read still wakes us.
            self._wake = trio.Event()
            pending = await self.outbox.pending()
            self._forget_gone(pending)
            now = trio.current_time()
            due = next((e for e in pending if self._not_before(e.key) <= now), None)
            if due is not None and now >= self._gate_until:
                await self._attempt(client, server_url, due)
                continue
            if due is not None:
                wake_at = self._gate_until
            else:
                earliest = min((r.not_before for r in self._retries.values()), default=math.inf)
                wake_at = max(earliest, self._gate_until)
            with trio.move_on_at(wake_at):
                await self._wake.wait()

    async def _attempt(
        self, client: httpx.AsyncClient, server_url: str, execution: Execution
    ) -> None:
        url = f"{server_url}/api/v1/tasks/{execution.task_id}/complete"
        body = unstructure(ExecutionReport.of(execution))
        try:
            response = await client.post(url, json=body, timeout=self.request_timeout)
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as error:
            self._failed(execution, f"{type(error).__name__}: {error}", retry_after=None)
            return
        status = response.status_code
        if response.is_success:
            self._server_answered()
            self._retries.pop(execution.key, None)
            await self.outbox.acknowledge(execution.key)
            logger.debug("reported task %s at %s", execution.task_id, execution.scheduled_at)
        elif 400 <= status < 500 and status not in _RETRYABLE_CLIENT_ERRORS:
            self._server_answered()
            self._retries.pop(execution.key, None)
            await self.outbox.acknowledge(execution.key)
            logger.error(
                "the server refused the report of task %s at %s (HTTP %d: %s); dropped it",
                execution.task_id,
                execution.scheduled_at.isoformat(),
                status,
                response.text[:500],
            )
        else:
            self._failed(execution, f"HTTP {status}", retry_after=_retry_after(response.headers))

    def _failed(self, execution: Execution, reason: str, *, retry_after: float | None) -> None:
        now = trio.current_time()
        retry = self._retries.setdefault(execution.key, _Retry(failures=0, not_before=now))
        retry.failures += 1
        retry.not_before = now + self.backoff.delay(retry.failures)
        self._gate_failures += 1
        gate = self.backoff.delay(self._gate_failures)
        if retry_after is not None:
            gate = max(gate, min(retry_after, self.backoff.maximum))
        self._gate_until = now + gate
        logger.warning(
            "could not report task %s at %s (%s, failure %d); retrying in %.1f s",
            execution.task_id,
            execution.scheduled_at.isoformat(),
            reason,
            retry.failures,
            max(retry.not_before, self._gate_until) - now,
        )

    def _server_answered(self) -> None:
        self._gate_failures = 0
        self._gate_until = -math.inf

    def _not_before(self, key: ExecutionKey) -> float:
        retry = self._retries.get(key)
        return -math.inf if retry is None else retry.not_before

    def _forget_gone(self, pending: Sequence[Execution]) -> None:
        # Executions can leave the outbox behind our back (a full MemoryOutbox drops its
        # oldest); their retry state must not outlive them.
        if self._retries:
            keys = {execution.key for execution in pending}
            for key in [key for key in self._retries if key not in keys]:
                del self._retries[key]


def _retry_after(headers: httpx.Headers) -> float | None:
    """``Retry-After`` in seconds, when the server sent one as a number (dates are ignored)."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
