"""The agent's Prometheus metrics (``GET /metrics``) and its readiness (``GET /readyz``).

Each agent has a registry of its own (a ``CollectorRegistry``, never prometheus-client's global
one): a process may run several agents, as ``tsched up`` and the tests do.

An agent may start hundreds of commands a second, so what happens on those paths is counted in
memory as it happens, at the cost of a dictionary lookup and a lock-protected increment: the
engine calls :meth:`AgentMetrics.started` as an execution starts, every execution recorded
passes through :meth:`AgentMetrics.counting`, and the reporter calls
:meth:`AgentMetrics.acknowledged` with what the server acknowledged. What is read at scrape
time costs nothing on those paths: the number of tasks (from the engine), and the number of
reports still queued, counted in the state file's ``outbox`` table through a connection of its
own (SQLite in WAL mode lets it read beside the agent's writer, without waiting for it).

The same count is the readiness check: an agent whose state file cannot be read cannot keep a
schedule or a report, whatever else works.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from taskscheduler_core import Execution, ExecutionStatus, StartExecution, Trigger

if TYPE_CHECKING:
    from .engine import Deliver, Engine

#: The media type of the text format ``generate_latest`` writes (Prometheus' 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: How long a scrape or a readiness check waits for the state file (seconds).
STATE_PROBE_TIMEOUT = 2.0

#: Fire lateness: a healthy agent starts a command within a millisecond or two of its time, so
#: the buckets go down to 1 ms; the upper ones are an overloaded or suspended host.
FIRE_LATENESS_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

#: Report latency: tens of milliseconds when the server answers (the reporter lingers 50 ms to
#: batch), up to the length of an outage when it does not.
REPORT_LATENCY_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
)


class AgentMetrics:
    """The metrics of one agent; ``state_path`` is its state file (``DATA_DIR/agent.sqlite3``),
    whose outbox is counted at scrape time (without one, the queued gauge is left out and the
    agent is always ready)."""

    def __init__(self, *, state_path: Path | None = None) -> None:
        self.state_path = state_path
        self.registry = CollectorRegistry()
        executions = Counter(
            "tsched_agent_executions",
            "Executions this agent recorded (run, skipped, missed, interrupted), by status.",
            ["status"],
            registry=self.registry,
        )
        # One child per status, bound now: the hot path only increments.
        self._executions = {status: executions.labels(status.value) for status in ExecutionStatus}
        self.fire_lateness = Histogram(
            "tsched_agent_fire_lateness_seconds",
            "Seconds from a fire time to the start of its execution (first attempts of the "
            "schedule; retries and manual runs are not late).",
            buckets=FIRE_LATENESS_BUCKETS,
            registry=self.registry,
        )
        self.report_latency = Histogram(
            "tsched_agent_report_latency_seconds",
            "Seconds from an execution's end to the server's acknowledgement of its report.",
            buckets=REPORT_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._queued = _QueuedReports(self.registry)
        self._tasks = Gauge(
            "tsched_agent_tasks", "Tasks scheduled on this agent.", registry=self.registry
        )
        self._engine: Engine | None = None

    def watch(self, engine: Engine) -> None:
        """Count ``engine``'s tasks at scrape time, and measure time with its clock (trio's:
        under a ``MockClock`` the latencies are the mock's)."""
        self._engine = engine

    def _now(self) -> datetime:
        engine = self._engine
        return datetime.now(UTC) if engine is None else engine.clock.now()

    # -- the hot paths ---------------------------------------------------------------------

    def started(self, start: StartExecution, started_at: datetime) -> None:
        """The engine starts ``start`` at ``started_at``: its lateness, if it is a fire time's
        first attempt (a retry waits on purpose; a manual run has no fire time)."""
        if start.trigger is Trigger.SCHEDULE and start.attempt == 1:
            late = (started_at - start.scheduled_at).total_seconds()
            self.fire_lateness.observe(max(late, 0.0))

    def counting(self, deliver: Deliver) -> Deliver:
        """``deliver``, counting each execution by status once it is handed over."""

        async def counted(execution: Execution) -> None:
            await deliver(execution)
            self._executions[execution.status].inc()

        return counted

    def acknowledged(self, executions: Iterable[Execution]) -> None:
        """The server acknowledged the reports of ``executions`` (stored, or already)."""
        now = self._now()
        for execution in executions:
            latency = (now - execution.finished_at).total_seconds()
            self.report_latency.observe(max(latency, 0.0))

    # -- scrape time -----------------------------------------------------------------------

    async def reports_queued(self) -> int:
        """How many reports the outbox holds; raises if the state file cannot be read in
        :data:`STATE_PROBE_TIMEOUT` (``TimeoutError``) or at all (``sqlite3.Error``)."""
        if self.state_path is None:
            raise ValueError("this agent keeps no state file")
        with trio.move_on_after(STATE_PROBE_TIMEOUT):
            # Abandoned on timeout: the thread has its own connection and closes it itself.
            return await trio.to_thread.run_sync(
                _count_outbox, self.state_path, abandon_on_cancel=True
            )
        raise TimeoutError(f"the state file did not answer within {STATE_PROBE_TIMEOUT:g} s")

    async def state_problem(self) -> tuple[int | None, str | None]:
        """The reports queued and ``None``, or ``None`` and why the state file cannot be read
        (``(None, None)`` for an agent without one)."""
        if self.state_path is None:
            return None, None
        try:
            return await self.reports_queued(), None
        except (OSError, sqlite3.Error) as error:  # TimeoutError is an OSError
            return None, f"cannot read {self.state_path}: {error}"

    async def render(self) -> bytes:
        """The text of a scrape."""
        queued, _ = await self.state_problem()
        # No await from here on: the gauges set are the gauges written.
        self._queued.value = queued
        engine = self._engine
        self._tasks.set(0 if engine is None else len(engine.scheduler.tasks))
        return generate_latest(self.registry)


class _QueuedReports(Collector):
    """``tsched_agent_reports_queued``, as counted by the scrape under way: left out when the
    outbox could not be read (a gauge of prometheus-client always has a value)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.value: int | None = None
        registry.register(self)

    def describe(self) -> list[GaugeMetricFamily]:
        return []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.value is not None:
            yield GaugeMetricFamily(
                "tsched_agent_reports_queued",
                "Reports not yet acknowledged by the server (the outbox; absent if it could "
                "not be read).",
                value=self.value,
            )


def _count_outbox(path: Path) -> int:
    """``SELECT count(*) FROM outbox`` on a connection of its own, read only, never creating
    the file (:mod:`.state` documents the table for readers like this one)."""
    uri = f"{path.resolve().as_uri()}?mode=rw"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=STATE_PROBE_TIMEOUT)) as db:
        db.execute("PRAGMA query_only = 1")
        (count,) = db.execute("SELECT count(*) FROM outbox").fetchone()
    return int(count)
