"""The agent's exception tree.

::

    TaskSchedulerError (core)
    └── AgentError                           anything the agent itself refuses or fails at
        ├── AgentConfigError (also ValueError)  a configuration value out of range
        ├── IdentityError (also ValueError)     ``data_dir/agent_id`` exists but is not a UUID
        ├── TaskRejected (also ValueError)      a task the agent cannot schedule
        ├── StateError                          ``data_dir/agent.sqlite3`` cannot be used
        ├── TlsConfigError (also ValueError)    a TLS file missing or unusable (in ``tls``)
        └── ApiError (also core ApiError)       a request the API refuses; a 4xx JSON error

Each leaf also subclasses the builtin it resembles and carries the offending value. The API
answers every core :class:`~taskscheduler_core.ApiError` the same way: this subclass, for what
the agent refuses itself, and the core's own, for a body or route the core refuses.
"""

from __future__ import annotations

from pathlib import Path

from taskscheduler_core import ApiError as CoreApiError
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


class TaskRejected(AgentError, ValueError):
    """A task spec that is well-formed but cannot be scheduled (its fire times overflow)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.message = message
        self.field = field


class StateError(AgentError):
    """The agent's state file cannot be opened, read or written; ``path`` is the file."""

    def __init__(self, message: str, *, path: Path) -> None:
        super().__init__(message)
        self.message = message
        self.path = path


class ApiError(AgentError, CoreApiError):
    """A request the agent refuses itself: the core's ``ApiError``, in the agent's tree."""
