"""What the server keeps about which agent runs which task.

Tasks, agents and executions are core models; assignments and agent credentials exist only on
the server.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import attrs

from taskscheduler_core import Task


@attrs.frozen(kw_only=True)
class Assignment:
    """Task ``task`` is to run on agent ``agent_id``, reached at ``agent_url``, since
    ``assigned_at``; or, once ``unassigned_at`` is set, is to be removed from it.

    An assignment ends when the task is deleted or its targets (or the agent's labels) no longer
    pick the agent. Its row is kept, so that a run's expected agents can still be told and the
    agent's late reports still accepted. ``delivered_at`` is when the agent acknowledged the
    last change: the spec pushed, or the removal done.

    ``revision`` grows every time the assignment must be pushed again (the agent re-registered,
    the task changed), so that a push that was already in flight cannot mark the newer need as
    delivered.
    """

    task: Task
    agent_id: UUID
    agent_url: str
    assigned_at: datetime
    delivered_at: datetime | None = None
    revision: int = 0
    unassigned_at: datetime | None = None

    @property
    def delivered(self) -> bool:
        return self.delivered_at is not None

    @property
    def removing(self) -> bool:
        """Whether this is a removal: the agent must drop the task, not schedule it."""
        return self.unassigned_at is not None


@attrs.frozen(kw_only=True)
class AgentCredential:
    """What the server keeps of the credentials it issued agent ``agent_id`` at registration:
    the digest of the token the agent presents, and the token the server presents to it."""

    agent_id: UUID
    token_sha256: str
    server_token: str = attrs.field(repr=False)
