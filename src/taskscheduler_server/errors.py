"""The server's exception tree.

::

    ServerError (also TaskSchedulerError)
    ├── TaskNotFound (also LookupError)   a task id the store does not hold
    ├── DatabaseUnavailable               the database cannot be reached now; answered 503
    ├── TlsConfigError (also ValueError)  a TLS file missing or unusable (in ``tls``)
    └── ApiError (also core ApiError)     a request the API refuses; becomes a 4xx JSON error

Every core :class:`~taskscheduler_core.ApiError` is answered as ``{"error": {"code",
"message", "field"}}`` with its status: this subclass, for what the server refuses itself, and
the core's own, for a body or route the core refuses. Nothing else a client sends may turn
into a 5xx.
"""

from __future__ import annotations

from uuid import UUID

from taskscheduler_core import ApiError as CoreApiError
from taskscheduler_core import TaskSchedulerError


class ServerError(TaskSchedulerError):
    """Base class of every error raised by the taskscheduler server."""


class TaskNotFound(ServerError, LookupError):
    """No task has this id."""

    def __init__(self, task_id: UUID) -> None:
        super().__init__(f"no task with id {task_id}")
        self.task_id = task_id


class DatabaseUnavailable(ServerError):
    """The database cannot be reached (or refused the connection) right now.

    Raised by the store for connection-level failures only, never for a bad value: the API
    answers it ``503`` (agents keep their reports and retry), and a replica that cannot renew
    its lease stops the work only the lease holder does.
    """


class ApiError(ServerError, CoreApiError):
    """A request the server refuses itself: the core's ``ApiError``, in the server's tree."""
