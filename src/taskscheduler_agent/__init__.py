"""taskscheduler's agent: runs each task it is given on schedule and reports every execution.

One agent runs per host. :func:`run_agent` serves the agent's endpoints, drives the core
:class:`~taskscheduler_core.Scheduler` from a trio loop, runs each command with ``/bin/sh -c`` in
its own process group, and reports every execution to the server until it is acknowledged.
Its schedules, its outbox of unacknowledged reports, a journal of every execution and the
commands it is running are kept in ``DATA_DIR/agent.sqlite3`` (:mod:`.state`), so that a
restart, even after a ``SIGKILL``, loses nothing and runs no slot twice.
"""

from __future__ import annotations

from .app import MAX_BODY_BYTES, create_app
from .backoff import Backoff
from .clock import WallClock
from .config import AgentConfig
from .engine import KILLED_ON_SHUTDOWN, Deliver, Engine, ScheduleStore
from .errors import (
    AgentConfigError,
    AgentError,
    ApiError,
    IdentityError,
    StateError,
    TaskRejected,
)
from .identity import AGENT_ID_FILE, load_or_create_agent_id
from .leftovers import ProcessIdentity, kill_leftover_group
from .metrics import AgentMetrics
from .outbox import DEFAULT_MEMORY_OUTBOX_LIMIT, MemoryOutbox, Outbox, SqliteOutbox
from .recovery import INTERRUPTED, recover_interrupted
from .registration import Heartbeat, heartbeat, register, stay_registered
from .reporter import Reporter
from .runner import SECRET_VARIABLES, SHELL, CommandResult, command_environment, run_command
from .serve import AgentStarted, run_agent
from .state import (
    JOURNAL_RETENTION,
    STATE_FILE,
    AgentState,
    AsyncAgentState,
    RunningExecution,
    SavedSchedule,
)

__all__ = [
    "AGENT_ID_FILE",
    "DEFAULT_MEMORY_OUTBOX_LIMIT",
    "INTERRUPTED",
    "JOURNAL_RETENTION",
    "KILLED_ON_SHUTDOWN",
    "MAX_BODY_BYTES",
    "SECRET_VARIABLES",
    "SHELL",
    "STATE_FILE",
    "AgentConfig",
    "AgentConfigError",
    "AgentError",
    "AgentMetrics",
    "AgentStarted",
    "AgentState",
    "ApiError",
    "AsyncAgentState",
    "Backoff",
    "CommandResult",
    "Deliver",
    "Engine",
    "Heartbeat",
    "IdentityError",
    "MemoryOutbox",
    "Outbox",
    "ProcessIdentity",
    "Reporter",
    "RunningExecution",
    "SavedSchedule",
    "ScheduleStore",
    "SqliteOutbox",
    "StateError",
    "TaskRejected",
    "WallClock",
    "command_environment",
    "create_app",
    "heartbeat",
    "kill_leftover_group",
    "load_or_create_agent_id",
    "recover_interrupted",
    "register",
    "run_agent",
    "run_command",
    "stay_registered",
]
