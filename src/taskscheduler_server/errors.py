"""The server's exception tree.

::

    ServerError (also TaskSchedulerError)
    ├── TaskNotFound (also LookupError)   a task id the store does not hold
    └── ApiError                          a request the API refuses; becomes a 4xx JSON error

Every :class:`ApiError` is answered as ``{"error": {"code", "message", "field"}}`` with its
status; nothing else a client sends may turn into a 5xx.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from taskscheduler_core import TaskSchedulerError


class ServerError(TaskSchedulerError):
    """Base class of every error raised by the taskscheduler server."""


class TaskNotFound(ServerError, LookupError):
    """No task has this id."""

    def __init__(self, task_id: UUID) -> None:
        super().__init__(f"no task with id {task_id}")
        self.task_id = task_id


class ApiError(ServerError):
    """A request refused with a 4xx status, a stable ``code`` and, where known, the ``field``."""

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}
