"""taskscheduler's agent: runs each task it is given on schedule and reports every execution.

One agent runs per host. :func:`run_agent` serves the schedule endpoint, drives the core
:class:`~taskscheduler_core.Scheduler` from a trio loop, runs each command with ``/bin/sh -c`` in
its own process group, and reports every execution to the server until it is acknowledged.
"""

from __future__ import annotations

from .app import MAX_BODY_BYTES, create_app
from .backoff import Backoff
from .clock import WallClock
from .config import AgentConfig
from .engine import Deliver, Engine
from .errors import AgentConfigError, AgentError, ApiError, IdentityError, TaskRejected
from .identity import AGENT_ID_FILE, load_or_create_agent_id
from .outbox import DEFAULT_MEMORY_OUTBOX_LIMIT, MemoryOutbox, Outbox
from .registration import register
from .reporter import Reporter
from .runner import SHELL, CommandResult, run_command
from .serve import AgentStarted, run_agent

__all__ = [
    "AGENT_ID_FILE",
    "DEFAULT_MEMORY_OUTBOX_LIMIT",
    "MAX_BODY_BYTES",
    "SHELL",
    "AgentConfig",
    "AgentConfigError",
    "AgentError",
    "AgentStarted",
    "ApiError",
    "Backoff",
    "CommandResult",
    "Deliver",
    "Engine",
    "IdentityError",
    "MemoryOutbox",
    "Outbox",
    "Reporter",
    "TaskRejected",
    "WallClock",
    "create_app",
    "load_or_create_agent_id",
    "register",
    "run_agent",
    "run_command",
]
