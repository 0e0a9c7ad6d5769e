"""The server's Prometheus metrics (``GET /metrics``; docs/observability.md lists them).

Each app has a registry of its own (a ``CollectorRegistry``, never prometheus-client's global
one): a process may run several servers, as the tests do.

The report paths are the hot ones (thousands of reports a second), so what they count is kept in
memory as they go (a counter child per status, bound once; one histogram observation per
request) and nothing there touches the store. What only the store knows, how many agents are
alive or lost, is read once per scrape (:meth:`ServerMetrics.render` takes it as an argument);
what the lease loop knows is read from its :class:`~.lease.Leadership` then too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from taskscheduler_core import AgentStatus, ExecutionStatus

from .lease import Leadership
from .store import Store

#: The media type of the text format ``generate_latest`` writes (Prometheus' 0.0.4).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: A report is committed in a few milliseconds (an fsync, shared by the reports of a group
#: commit); the upper buckets are for a database in trouble.
REPORT_SECONDS_BUCKETS = (
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
)


class ServerMetrics:
    """The metrics of one server app, and the text of a scrape."""

    def __init__(self, leadership: Leadership | None = None) -> None:
        self.leadership = leadership
        self.registry = CollectorRegistry()
        executions = Counter(
            "tsched_executions",
            "Executions stored (new ones, not repeated reports), by status.",
            ["status"],
            registry=self.registry,
        )
        # One child per status, bound now: the report path only increments.
        self._stored = {status: executions.labels(status.value) for status in ExecutionStatus}
        self.duplicates = Counter(
            "tsched_report_duplicates",
            "Reports of executions already stored (an agent retrying, or two replicas).",
            registry=self.registry,
        )
        self.report_seconds = Histogram(
            "tsched_report_seconds",
            "Seconds from a report request's arrival to the commit of its executions.",
            buckets=REPORT_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.database_unavailable = Counter(
            "tsched_database_unavailable",
            "Requests answered 503 because the database could not be reached.",
            registry=self.registry,
        )
        self._agents = Gauge(
            "tsched_agents",
            "Agents by status, read from the database at scrape time (absent if it did not "
            "answer).",
            ["status"],
            registry=self.registry,
        )
        self._lease_held = Gauge(
            "tsched_lease_held",
            "1 if this replica holds the lease (does the work done once), else 0.",
            registry=self.registry,
        )
        self._lease_holder = Gauge(
            "tsched_lease_holder",
            "1 for the replica this one last saw holding the lease (absent: nobody).",
            ["replica"],
            registry=self.registry,
        )
        self._work_failures = Counter(
            "tsched_lease_work_failures",
            "Times the work done once (or the standby) failed with an error other than an "
            "unreachable database; each is logged with its traceback.",
            registry=self.registry,
        )
        #: What the counter was brought up to from ``leadership.work_failures``.
        self._work_failures_seen = 0

    def reported(self, seconds: float, outcomes: Iterable[tuple[ExecutionStatus, bool]]) -> None:
        """A report request committed in ``seconds``: each execution's status and whether it
        was new (else a duplicate)."""
        self.report_seconds.observe(seconds)
        duplicates = 0
        for status, new in outcomes:
            if new:
                self._stored[status].inc()
            else:
                duplicates += 1
        if duplicates:
            self.duplicates.inc(duplicates)

    def render(self, agents: Mapping[AgentStatus, int] | None) -> bytes:
        """The text of a scrape; ``agents``: how many agents have each status (``None`` when
        the database could not say: the gauge is left out rather than stale)."""
        # No await from here on: the gauges set are the gauges written.
        self._agents.clear()
        if agents is not None:
            for status in AgentStatus:
                self._agents.labels(status.value).set(agents.get(status, 0))
        leadership = self.leadership
        self._lease_held.set(1 if leadership is not None and leadership.held else 0)
        self._lease_holder.clear()
        if leadership is not None and leadership.holder is not None:
            self._lease_holder.labels(leadership.holder).set(1)
        if leadership is not None and leadership.work_failures > self._work_failures_seen:
            self._work_failures.inc(leadership.work_failures - self._work_failures_seen)
            self._work_failures_seen = leadership.work_failures
        return generate_latest(self.registry)


def count_agents(store: Store) -> dict[AgentStatus, int]:
    """How many agents have each status (run in the store's thread, once per scrape)."""
    counts = dict.fromkeys(AgentStatus, 0)
    for agent in store.list_agents():
        counts[agent.status] += 1
    return counts
