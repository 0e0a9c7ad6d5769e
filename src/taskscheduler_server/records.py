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


@attrs.frozen(kw_only=True)
class AgentCredential:
    """What the server keeps of the credentials it issued agent ``agent_id`` at registration:
    the digest of the token the agent presents, and the token the server presents to it."""

    agent_id: UUID
    token_sha256: str
    server_token: str = attrs.field(repr=False)
