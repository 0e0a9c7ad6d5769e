"""How ``tsched server``, ``tsched agent`` and ``tsched up`` log: ``--log-format``, ``--log-level``.

The services log through the standard library's :mod:`logging` (loggers ``taskscheduler.*``
and ``taskscheduler_agent.*``); the CLI installs one handler on the root logger, on stderr:

- ``text`` (the default): ``2026-11-28T03:16:31.123Z INFO taskscheduler.server: message``, then
  the traceback, if any, on the lines below;
- ``json``: one JSON object per line, for log collectors: ``time`` (RFC 3339, UTC), ``level``,
  ``logger``, ``message``, every field given with ``extra=`` (``task_id``, ``agent_id``, …),
  and ``exception`` (the formatted traceback) when there is one.

``--log-level`` applies to our loggers. Other libraries' loggers stay at ``warning`` or above
whatever it is: httpx, for one, logs every request at ``info``, which from an agent reporting
hundreds of executions a second would drown everything else. Python's warnings go through
logging too (so that in ``json`` every line of stderr is an object).

The standard library is enough here: a formatter of a few lines, no dependency to keep.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "JsonFormatter",
    "TextFormatter",
    "configure_logging",
]

#: The values of ``--log-format``.
LOG_FORMATS = ("text", "json")

#: The values of ``--log-level``, most verbose first.
LOG_LEVELS = ("debug", "info", "warning", "error")

#: The loggers ``--log-level`` applies to (the packages log under their module names, the
#: server also under ``taskscheduler.server.*``).
OUR_LOGGERS = (
    "taskscheduler",
    "taskscheduler_agent",
    "taskscheduler_client",
    "taskscheduler_core",
    "taskscheduler_server",
)

#: The attributes every ``LogRecord`` has: anything else on a record came from ``extra=``.
_STANDARD_ATTRIBUTES = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None))
) | {"message", "asctime", "taskName"}


def _utc_time(record: logging.LogRecord) -> str:
    """The record's time, RFC 3339 in UTC, to the millisecond."""
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger>: <message>``, the traceback below."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _utc_time(record)


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (newlines in values are escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _utc_time(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: an extra value JSON cannot hold (a UUID, a path) is written as text
        # rather than losing the line.
        return json.dumps(entry, ensure_ascii=False, default=str)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler on whatever ``sys.stderr`` is when a record is written (not when the handler
    was made), so that a replaced stderr (click's test runner, pytest) never gets a write after
    it was closed."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # always sys.stderr


#: The handler :func:`configure_logging` installed last (replaced by the next call).
_installed: logging.Handler | None = None


def configure_logging(format: str = "text", level: str = "info") -> None:
    """Log to stderr in ``format`` (``text`` or ``json``), our loggers at ``level``.

    Raises ``ValueError`` for a format or level not in :data:`LOG_FORMATS` /
    :data:`LOG_LEVELS`. Calling it again replaces the handler it installed (and only that one).
    """
    global _installed
    if format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {format!r}")
    name = level.lower()
    if name not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    number = logging.getLevelNamesMapping()[name.upper()]
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter() if format == "json" else TextFormatter())
    root = logging.getLogger()
    if _installed is not None:
        root.removeHandler(_installed)
    root.addHandler(handler)
    _installed = handler
    root.setLevel(max(number, logging.WARNING))
    for logger_name in OUR_LOGGERS:
        logging.getLogger(logger_name).setLevel(number)
    logging.captureWarnings(True)
