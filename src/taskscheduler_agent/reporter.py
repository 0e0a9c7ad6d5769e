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

The outbox is read a page at a time (at most :data:`PAGE_SIZE` reports and about
:data:`PAGE_BYTES` of them), oldest first: after a long outage it may hold more reports, with
their output, than memory does.

When several reports of a page are due they go in one request, ``POST /api/v1/executions``
(one commit on the server instead of one each), and each is acknowledged or retried by the
answer's result for it. A server that does not know that endpoint (404 / 405: an older one)
gets one request per report from then on; one that refuses the batch as a whole (413, …) gets
its reports one by one this time.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence, Set
from typing import NoReturn

import attrs
import httpx
import trio

from taskscheduler_core import (
    BatchResult,
    Execution,
    ExecutionKey,
    ExecutionReport,
    WireError,
    batch_body,
    structure,
    unstructure,
)

from .backoff import Backoff
from .outbox import MemoryOutbox, Outbox

logger = logging.getLogger(__name__)

_JSON_HEADERS = {"Content-Type": "application/json"}

#: Client errors that are worth retrying: the server asks us to come back later (408, 429), or
#: does not know our credential yet (401: the registration that brings it is under way).
_RETRYABLE_CLIENT_ERRORS = frozenset({401, 408, 429})

#: The most reports read from the outbox at a time (and sent in one batch).
PAGE_SIZE = 500

#: A page ends with the report that takes it to this many bytes of JSON: each may carry up to
#: the output cap of each stream, so a page stays a bounded amount of memory (and a batch a
#: body any server takes).
PAGE_BYTES = 1024 * 1024

#: Under steady traffic, the least time between two passes over the outbox (seconds): the
#: reports of that time go in one request instead of one each. A report after a quiet spell
#: goes at once.
LINGER = 0.05

#: Answers to a batch that say the server has no batch endpoint: an older server.
_NO_BATCH_ENDPOINT = frozenset({404, 405})


@attrs.define
class _Retry:
    failures: int
    not_before: float  # trio time


class Reporter:
    """Sends each execution put into it to ``POST {server_url}/api/v1/tasks/{id}/complete``.

    Without a ``server_url`` executions are logged and kept in the outbox. :meth:`run` is the
    delivery loop; pass ``client`` to share an ``httpx.AsyncClient`` (else ``run`` opens one).
    ``on_acknowledged`` is told of the executions the server acknowledged, once they have left
    the outbox (the agent's metrics; it must not block).
    """

    def __init__(
        self,
        *,
        server_url: str | None,
        outbox: Outbox | None = None,
        client: httpx.AsyncClient | None = None,
        backoff: Backoff | None = None,
        request_timeout: float = 10.0,
        page_size: int = PAGE_SIZE,
        page_bytes: int = PAGE_BYTES,
        linger: float = LINGER,
        on_acknowledged: Callable[[Sequence[Execution]], None] | None = None,
    ) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.page_size = page_size
        self.page_bytes = page_bytes
        self.linger = linger
        #: Whether the server takes batches; ``False`` after it answered one with 404 / 405.
        self.batches = True
        self.server_url = server_url.rstrip("/") if server_url else None
        self.outbox: Outbox = outbox if outbox is not None else MemoryOutbox()
        self.backoff = backoff if backoff is not None else Backoff(initial=0.2, maximum=30.0)
        self.request_timeout = request_timeout
        self.on_acknowledged = on_acknowledged
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
            began = trio.current_time()
            wake_at = await self._deliver_due(client, server_url)
            with trio.move_on_at(wake_at):
                await self._wake.wait()
            # Each request costs the agent (and the server) a millisecond or two of CPU,
            # whatever it carries: under steady traffic, the reports of `linger` go together.
            await trio.sleep_until(began + self.linger)

    async def _deliver_due(self, client: httpx.AsyncClient, server_url: str) -> float:
        """One pass over the outbox, a page at a time: attempt each due report, oldest first,
        while the gate is open.

        Returns the trio time at which something will be due: the gate's reopening, or the
        earliest retry (infinity when nothing waits). What is put in the outbox meanwhile
        wakes the loop sooner: reading the outbox again at once would find nothing new.
        """
        earliest = math.inf
        # Only the keys that have retry state are remembered: the whole outbox may not fit.
        waiting: set[ExecutionKey] = set()
        after = 0
        while True:
            if trio.current_time() < self._gate_until:
                return self._gate_until  # before reading: a closed gate sends nothing
            page = await self.outbox.pending_page(
                after=after, limit=self.page_size, max_bytes=self.page_bytes
            )
            if not page:
                break
            after = page[-1][0]
            if trio.current_time() < self._gate_until:
                return self._gate_until
            due: list[Execution] = []
            for _, execution in page:
                retry = self._retries.get(execution.key)
                if retry is not None:
                    waiting.add(execution.key)
                    if retry.not_before > trio.current_time():
                        earliest = min(earliest, retry.not_before)
                        continue
                due.append(execution)
            if len(due) > 1 and self.batches:
                due = await self._attempt_batch(client, server_url, due)
            for execution in due:  # one by one: a single one, or what the batch left
                if trio.current_time() < self._gate_until:
                    return self._gate_until
                await self._attempt(client, server_url, execution.key, execution)
            # Whatever failed just now has retry state: the next pass must not forget it.
            for _, execution in page:
                retry = self._retries.get(execution.key)
                if retry is not None:
                    waiting.add(execution.key)
                    earliest = min(earliest, retry.not_before)
        self._forget_gone(waiting)
        return max(earliest, self._gate_until)

    async def _attempt_batch(
        self, client: httpx.AsyncClient, server_url: str, executions: list[Execution]
    ) -> list[Execution]:
        """Report ``executions`` in one request; returns those to send one by one instead
        (all of them when the server does not take this batch, else none)."""
        url = f"{server_url}/api/v1/executions"
        try:
            content = json.dumps(batch_body(executions), ensure_ascii=False).encode("utf-8")
        except (TypeError, ValueError):
            return executions  # one of them cannot be encoded: _attempt drops that one
        try:
            response = await client.post(
                url, content=content, headers=_JSON_HEADERS, timeout=self.request_timeout
            )
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as error:
            self._batch_failed(executions, f"{type(error).__name__}: {error}", retry_after=None)
            return []
        status = response.status_code
        if status in _NO_BATCH_ENDPOINT:
            logger.info("the server takes no batch reports (HTTP %d): reporting one by one", status)
            self.batches = False
            return executions
        if _server_in_trouble(status):
            self._batch_failed(
                executions, f"HTTP {status}", retry_after=_retry_after(response.headers)
            )
            return []
        if not response.is_success:
            return executions  # refused as a whole (too large, …): each on its own
        try:
            results = structure(response.json(), BatchResult).results
        except (ValueError, WireError):
            results = ()
        if len(results) != len(executions):
            # Not our server's answer (a proxy's page?): nothing is known to be stored.
            self._batch_failed(executions, f"HTTP {status}: unexpected answer", retry_after=None)
            return []
        self._server_answered()
        done: list[ExecutionKey] = []
        acknowledged: list[Execution] = []
        for execution, result in zip(executions, results, strict=True):
            key = execution.key
            if result.acknowledged:
                self._retries.pop(key, None)
                done.append(key)
                acknowledged.append(execution)
            elif result.error is not None and result.error.code in _PERMANENT_CODES:
                self._retries.pop(key, None)
                done.append(key)
                logger.error(
                    "the server refused the report of task %s at %s (%s: %s); dropped it",
                    execution.task_id,
                    execution.scheduled_at.isoformat(),
                    result.error.code,
                    result.error.message,
                )
            else:
                code = result.error.code if result.error is not None else "not acknowledged"
                self._failed(key, execution, code, retry_after=None, gate=False)
        await self.outbox.acknowledge_many(done)
        if acknowledged and self.on_acknowledged is not None:
            self.on_acknowledged(acknowledged)
        logger.debug("reported %d executions in one batch", len(done))
        return []

    def _batch_failed(
        self, executions: list[Execution], reason: str, *, retry_after: float | None
    ) -> None:
        """The server is in trouble: every report of the batch waits, and the gate closes
        once (not once per report, which would back off as if that many requests failed)."""
        for execution in executions:
            self._failed(execution.key, execution, reason, retry_after=None, gate=False, log=False)
        # One time for all of them, so that they go together again (each on its own jitter
        # would scatter the batch into singles).
        together = max(self._retries[execution.key].not_before for execution in executions)
        for execution in executions:
            self._retries[execution.key].not_before = together
        self._close_gate(retry_after)
        logger.warning(
            "could not report %d executions in one batch (%s); retrying in %.3g s",
            len(executions),
            reason,
            max(together, self._gate_until) - trio.current_time(),
        )

    async def _attempt(
        self, client: httpx.AsyncClient, server_url: str, key: ExecutionKey, execution: Execution
    ) -> None:
        url = f"{server_url}/api/v1/tasks/{execution.task_id}/complete"
        try:
            body = json.dumps(unstructure(ExecutionReport.of(execution)), ensure_ascii=False)
            content = body.encode("utf-8")
        except (TypeError, ValueError) as error:
            # Cannot happen with outputs we decoded ourselves; if it ever does, retrying would
            # fail the same way, so the report is dropped rather than kept forever.
            logger.error("cannot encode the report of task %s: %s; dropped", key.task_id, error)
            self._retries.pop(key, None)
            await self.outbox.acknowledge(key)
            return
        try:
            response = await client.post(
                url, content=content, headers=_JSON_HEADERS, timeout=self.request_timeout
            )
        except (httpx.HTTPError, httpx.InvalidURL, OSError) as error:
            self._failed(key, execution, f"{type(error).__name__}: {error}", retry_after=None)
            return
        status = response.status_code
        if response.is_success:
            self._server_answered()
            self._retries.pop(key, None)
            await self.outbox.acknowledge(key)
            if self.on_acknowledged is not None:
                self.on_acknowledged((execution,))
            logger.debug("reported task %s at %s", execution.task_id, execution.scheduled_at)
        elif _refused_for_good(response):
            self._server_answered()
            self._retries.pop(key, None)
            await self.outbox.acknowledge(key)
            logger.error(
                "the server refused the report of task %s at %s (HTTP %d: %s); dropped it",
                execution.task_id,
                execution.scheduled_at.isoformat(),
                status,
                response.text[:500],
            )
        else:
            retry_after = _retry_after(response.headers)
            self._failed(key, execution, f"HTTP {status}", retry_after=retry_after)

    def _failed(
        self,
        key: ExecutionKey,
        execution: Execution,
        reason: str,
        *,
        retry_after: float | None,
        gate: bool = True,
        log: bool = True,
    ) -> None:
        now = trio.current_time()
        retry = self._retries.setdefault(key, _Retry(failures=0, not_before=now))
        retry.failures += 1
        retry.not_before = now + self.backoff.delay(retry.failures)
        if gate:
            self._close_gate(retry_after)
        if not log:
            return
        logger.warning(
            "could not report task %s at %s (%s, failure %d); retrying in %.3g s",
            execution.task_id,
            execution.scheduled_at.isoformat(),
            reason,
            retry.failures,
            max(retry.not_before, self._gate_until) - now,
        )

    def _close_gate(self, retry_after: float | None) -> None:
        self._gate_failures += 1
        gate = self.backoff.delay(self._gate_failures)
        if retry_after is not None:
            gate = max(gate, min(retry_after, self.backoff.maximum))
        self._gate_until = trio.current_time() + gate

    def _server_answered(self) -> None:
        self._gate_failures = 0
        self._gate_until = -math.inf

    def _forget_gone(self, keys: Set[ExecutionKey]) -> None:
        # Executions can leave the outbox behind our back (a full MemoryOutbox drops its
        # oldest); their retry state must not outlive them. ``keys``: the keys with retry
        # state that a whole pass over the outbox saw.
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


#: Error codes of our server that say this report can never be stored (the task is gone, or
#: the report is malformed or not this agent's to make): retrying cannot help, so it is dropped.
_PERMANENT_CODES = frozenset(
    {
        "task_not_found",
        "validation_error",
        "invalid_body",
        "invalid_json",
        "invalid_string",
        "forbidden",
    }
)


def _server_in_trouble(status: int) -> bool:
    """A 5xx, or a 4xx that asks to come back later: worth retrying, after a pause."""
    return status >= 500 or status in _RETRYABLE_CLIENT_ERRORS


def _refused_for_good(response: httpx.Response) -> bool:
    """Whether a refusal is permanent; anything else (a 413, a proxy's 404, an HTML page) is
    retried, since dropping a report loses an execution for good."""
    if not 400 <= response.status_code < 500 or response.status_code in _RETRYABLE_CLIENT_ERRORS:
        return False
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return False
    return code in _PERMANENT_CODES
