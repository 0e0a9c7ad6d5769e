"""What the client reads that the core has no model for.

The core's :class:`~taskscheduler_core.Agent` is what the server stores; the agent listing adds
when the server last heard from each one, which only a reader of the listing cares about.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import attrs

from taskscheduler_core import Agent
from taskscheduler_core.firetimes import optional_utc, require_utc


@attrs.frozen(kw_only=True)
class AgentInfo:
    """One entry of ``GET /api/v1/agents``: an agent and when the server last heard from it."""

    id: UUID
    url: str
    registered_at: datetime = attrs.field(converter=require_utc)
    last_seen_at: datetime | None = attrs.field(default=None, converter=optional_utc)

    @property
    def agent(self) -> Agent:
        """The core model of this agent."""
        return Agent(id=self.id, url=self.url, registered_at=self.registered_at)
