"""What the server keeps about its agents and about which agent runs which task.

Tasks and executions are core models; these two exist only on the server.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import attrs

from taskscheduler_core import Task


@attrs.frozen(kw_only=True)
class AgentRecord:
    """An agent the server knows, as ``GET /api/v1/agents`` lists it."""

    id: UUID
    url: str
    registered_at: datetime  #: first time the server heard of this agent
    last_seen_at: datetime  #: latest registration (or resolution from ``AVAILABLE_SERVERS``)


@attrs.frozen(kw_only=True)
class Assignment:
    """Task ``task`` is to run on agent ``agent_id``, reached at ``agent_url``.

    ``revision`` grows every time the assignment must be pushed again (the agent re-registered),
    so that a push that was already in flight cannot mark the newer need as delivered.
    """

    task: Task
    agent_id: UUID
    agent_url: str
    assigned_at: datetime
    delivered_at: datetime | None = None
    revision: int = 0

    @property
    def delivered(self) -> bool:
        return self.delivered_at is not None
