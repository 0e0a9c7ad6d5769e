"""Query strings: reading ``?limit=``, ``?state=``, ``?since=``… and the page cursors.

Every parameter is checked before the store is asked anything; a bad value is refused with 422
``validation_error`` whose ``field`` is the parameter's name (``limit``, ``cursor``, …). A
single-valued parameter given twice is refused too: which of the two was meant is a guess, and
so is a value holding a NUL character.
Unknown parameters are ignored, like unknown headers.

Cursors are opaque to clients: URL-safe base64 of a small JSON array that starts with the
listing it belongs to (``tasks``, ``runs``, ``executions``) followed by the sort key of the last
item of the page. A cursor of one listing is refused by another.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

from starlette.datastructures import QueryParams

from taskscheduler_core import ExecutionKey, TaskState, WireError, parse_label, parse_time

from .config import MAX_PAGE_SIZE
from .errors import ApiError
from .store import from_micros, to_micros

E = TypeVar("E", bound=enum.Enum)

#: Longer query values are refused before they are parsed (a name is at most 200 characters,
#: a cursor well under 200).
MAX_VALUE_LENGTH = 1024


def invalid(field: str, message: str) -> ApiError:
    """The refusal of the query parameter ``field``."""
    return ApiError(422, "validation_error", message, field=field)


class Query:
    """The query parameters of one request, read one by one with their checks."""

    def __init__(self, params: QueryParams) -> None:
        self._params = params

    def values(self, name: str) -> list[str]:
        """Every value of the repeatable parameter ``name``."""
        values = self._params.getlist(name)
        for value in values:
            if len(value) > MAX_VALUE_LENGTH:
                raise invalid(name, f"is too long (at most {MAX_VALUE_LENGTH} characters)")
            # No parameter has a use for a NUL, and PostgreSQL cannot take one in a string.
            if "\x00" in value:
                raise invalid(name, "must not contain NUL characters")
        return values

    def text(self, name: str) -> str | None:
        """The value of ``name``, or ``None`` when it is absent."""
        values = self.values(name)
        if len(values) > 1:
            raise invalid(name, "is given more than once")
        return values[0] if values else None

    def limit(self, default: int) -> int:
        """``?limit=``: an integer from 1 to :data:`MAX_PAGE_SIZE`."""
        text = self.text("limit")
        if text is None:
            return default
        if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_PAGE_SIZE:
            raise invalid("limit", f"must be an integer from 1 to {MAX_PAGE_SIZE}, got {text!r}")
        return int(text)

    def uuid(self, name: str) -> UUID | None:
        text = self.text(name)
        if text is None:
            return None
        try:
            return UUID(text)
        except ValueError:
            raise invalid(name, f"must be a UUID, got {text[:64]!r}") from None

    def time(self, name: str) -> datetime | None:
        """An RFC 3339 time with its offset (``2026-01-01T00:00:00Z``)."""
        text = self.text(name)
        if text is None:
            return None
        try:
            moment = parse_time(text)
            to_micros(moment)  # within what the store can compare
        except (ValueError, OverflowError) as error:
            raise invalid(name, f"must be an RFC 3339 time with an offset: {error}") from None
        return moment

    def choice(self, name: str, kind: type[E]) -> E | None:
        """One of the values of the enum ``kind``."""
        text = self.text(name)
        if text is None:
            return None
        try:
            return kind(text)
        except ValueError:
            allowed = ", ".join(member.value for member in kind)
            raise invalid(name, f"must be one of {allowed}, got {text[:64]!r}") from None

    def task_states(self, name: str) -> tuple[TaskState, ...]:
        """``?state=active|paused|deleted|all``; absent, the tasks not deleted."""
        text = self.text(name)
        if text is None:
            return (TaskState.ACTIVE, TaskState.PAUSED)
        if text == "all":
            return tuple(TaskState)
        try:
            return (TaskState(text),)
        except ValueError:
            allowed = ", ".join([*(state.value for state in TaskState), "all"])
            raise invalid(name, f"must be one of {allowed}, got {text[:64]!r}") from None

    def boolean(self, name: str) -> bool:
        """``true`` or ``false`` (absent: false)."""
        text = self.text(name)
        if text is None or text == "false":
            return False
        if text == "true":
            return True
        raise invalid(name, f"must be true or false, got {text[:64]!r}")

    def labels(self, name: str) -> dict[str, str]:
        """A repeatable ``key=value`` parameter, as one mapping (a key given twice refused)."""
        labels: dict[str, str] = {}
        for text in self.values(name):
            try:
                key, value = parse_label(text)
            except WireError as error:
                raise invalid(name, error.message) from None
            if key in labels and labels[key] != value:
                raise invalid(name, f"label {key!r} is given twice with different values")
            labels[key] = value
        return labels

    def name_filter(self, name: str, max_length: int) -> str | None:
        """Text to find in task names: what a name may hold (no control characters)."""
        text = self.text(name)
        if text is not None and not 1 <= len(text) <= max_length:
            raise invalid(name, f"must be between 1 and {max_length} characters")
        if text is not None and any(ord(char) < 32 for char in text):
            raise invalid(name, "must not contain control characters")
        return text

    def cursor(self, listing: str) -> list[Any] | None:
        """The sort key a ``?cursor=`` of ``listing`` carries, or ``None`` (the first page)."""
        text = self.text("cursor")
        if text is None:
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(text.encode("ascii") + b"=" * 3))
        except (ValueError, UnicodeError, binascii.Error):
            data = None
        if not isinstance(data, list) or not data or data[0] != listing:
            raise _bad_cursor()
        return data[1:]


def encode_cursor(listing: str, *key: object) -> str:
    """The ``next_cursor`` of a page of ``listing`` whose last item sorts at ``key``."""
    text = json.dumps([listing, *key], separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode("ascii").rstrip("=")


def _bad_cursor() -> ApiError:
    return invalid("cursor", "is not a cursor of this listing; pass next_cursor as is")


def task_cursor(key: list[Any] | None) -> tuple[datetime, UUID] | None:
    """A tasks cursor: ``(created_at, id)`` of the last task of the page."""
    if key is None:
        return None
    try:
        [micros, task_id] = key
        return from_micros(_int(micros)), UUID(task_id)
    except (ValueError, TypeError, OverflowError):
        raise _bad_cursor() from None


def run_cursor(key: list[Any] | None) -> datetime | None:
    """A runs cursor: the ``scheduled_at`` of the last run of the page."""
    if key is None:
        return None
    try:
        [micros] = key
        return from_micros(_int(micros))
    except (ValueError, TypeError, OverflowError):
        raise _bad_cursor() from None


def execution_cursor(task_id: UUID, key: list[Any] | None) -> ExecutionKey | None:
    """An executions cursor: ``(scheduled_at, agent_id, attempt)`` of the last execution."""
    if key is None:
        return None
    try:
        [micros, agent_id, attempt] = key
        return ExecutionKey(
            task_id=task_id,
            agent_id=UUID(agent_id),
            scheduled_at=from_micros(_int(micros)),
            attempt=_int(attempt),
        )
    except (ValueError, TypeError, OverflowError):
        raise _bad_cursor() from None


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("not an integer")
    if not -(2**63) <= value < 2**63:  # what SQLite compares; beyond it, a crash not a refusal
        raise OverflowError("out of range")
    return value
