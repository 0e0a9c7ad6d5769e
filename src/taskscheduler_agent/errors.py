"""The agent's exception tree.

::

    TaskSchedulerError (core)
    └── AgentError                           anything the agent itself refuses or fails at
        ├── AgentConfigError (also ValueError)  a configuration value out of range
        └── IdentityError (also ValueError)     ``data_dir/agent_id`` exists but is not a UUID

Each leaf also subclasses the builtin it resembles and carries the offending value.
"""

from __future__ import annotations

from pathlib import Path

from taskscheduler_core import TaskSchedulerError


class AgentError(TaskSchedulerError):
    """Base class of every error raised by the agent package."""


class AgentConfigError(AgentError, ValueError):
    """A configuration value is out of range; ``field`` names it."""

    def __init__(self, message: str, *, field: str, value: object) -> None:
        super().__init__(f"{field}: {message}")
        self.message = message
        self.field = field
        self.value = value


class IdentityError(AgentError, ValueError):
    """The agent's identity file exists but cannot be read as a UUID."""

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
