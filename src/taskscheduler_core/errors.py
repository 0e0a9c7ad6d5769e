"""The core's exception tree.

::

    TaskSchedulerError
    ├── FrequencyError (also ValueError)   a frequency text that does not parse
    ├── TimezoneError (also ValueError)    a time zone name that is not a known IANA name
    ├── WireError (also ValueError)        a JSON document that does not fit a wire type
    └── ApiError                           a request the REST API refuses: status, code, field
                                           (in :mod:`~taskscheduler_core.api_errors`)

Each leaf error also subclasses the builtin it resembles, so callers that only know Python can
still catch ``ValueError``; each carries the offending value and, where it has one, the field.
"""

from __future__ import annotations


class TaskSchedulerError(Exception):
    """Base class of every error raised by taskscheduler."""


class FrequencyError(TaskSchedulerError, ValueError):
    """A frequency text is neither ``every <integer> <unit>`` nor a valid cron expression."""

    def __init__(self, message: str, *, text: object) -> None:
        super().__init__(message)
        self.message = message
        self.text = text


class TimezoneError(TaskSchedulerError, ValueError):
    """A time zone name is not an IANA name this installation knows (``Europe/Paris``)."""

    def __init__(self, message: str, *, name: object) -> None:
        super().__init__(message)
        self.message = message
        self.name = name


class WireError(TaskSchedulerError, ValueError):
    """A JSON document does not fit the wire type it should; ``field`` names where (dotted)."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.message = message
        self.field = field
