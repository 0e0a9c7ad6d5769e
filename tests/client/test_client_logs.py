"""``configure_logging``: the text and JSON formats, extras, tracebacks, and who logs at what."""

from __future__ import annotations

import json
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import pytest

from taskscheduler_client import logs
from taskscheduler_client.logs import OUR_LOGGERS, configure_logging

_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Undo what configure_logging did: later tests run in this process too."""
    root = logging.getLogger()
    level = root.level
    yield
    if logs._installed is not None:
        root.removeHandler(logs._installed)
        logs._installed = None
    root.setLevel(level)
    for name in (*OUR_LOGGERS, "httpx"):
        logging.getLogger(name).setLevel(logging.NOTSET)
    logging.captureWarnings(False)


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_json_is_one_object_per_line_with_extras_and_the_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("json", "info")
    # A logger of this test's own: the client tests' stack, served from a thread of this
    # process, logs too (as taskscheduler.server.app, say), to the same stderr.
    log = logging.getLogger("taskscheduler.server.test_logs")
    log.info("created task %s", "t1", extra={"task_id": UUID(int=1), "path": Path("/x"), "n": 3})
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        log.exception("could not %s", "store")
    lines = [line for line in json_lines(capsys.readouterr().err) if line["logger"] == log.name]
    assert len(lines) == 2
    created, failed = lines
    assert _TIME.match(str(created["time"]))
    assert {key: created[key] for key in ("level", "logger", "message")} == {
        "level": "info",
        "logger": "taskscheduler.server.test_logs",
        "message": "created task t1",
    }
    # extra fields, written as text when JSON has no type for them
    assert (created["task_id"], created["path"], created["n"]) == (str(UUID(int=1)), "/x", 3)
    assert "exception" not in created
    assert failed["level"] == "error"
    assert failed["message"] == "could not store"
    exception = str(failed["exception"])
    assert exception.startswith("Traceback (most recent call last):")
    assert exception.endswith("RuntimeError: boom\nsecond line")
    # nothing of the record's own machinery leaks in
    assert not {"args", "msg", "exc_info", "levelno", "pathname"} & set(failed)


def test_text_is_time_level_logger_message(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("text", "warning")
    logging.getLogger("taskscheduler_agent.engine").info("not shown at warning")
    logging.getLogger("taskscheduler_agent.engine").warning("late by %d ms", 5)
    # (only this test's lines: see above)
    [line] = [
        line
        for line in capsys.readouterr().err.splitlines()
        if "taskscheduler_agent.engine" in line
    ]
    stamp, rest = line.split(" ", 1)
    assert _TIME.match(stamp)
    assert rest == "WARNING taskscheduler_agent.engine: late by 5 ms"


def test_the_level_is_ours_other_libraries_stay_at_warning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("json", "debug")
    logging.getLogger("taskscheduler.server.dispatch").debug("pushing")
    logging.getLogger("httpx").info("HTTP Request: POST …")  # one per report: not shown
    logging.getLogger("httpx").warning("something wrong")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
    ours = {"pushing", "HTTP Request: POST …", "something wrong"}  # (see the first test)
    lines = [
        line
        for line in json_lines(capsys.readouterr().err)
        if line["message"] in ours or "old API" in str(line["message"])
    ]
    assert [(line["logger"], line["level"]) for line in lines] == [
        ("taskscheduler.server.dispatch", "debug"),
        ("httpx", "warning"),
        ("py.warnings", "warning"),
    ]


def test_configuring_again_replaces_the_handler(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("text", "info")
    configure_logging("json", "info")
    logging.getLogger("taskscheduler").info("once")
    lines = json_lines(capsys.readouterr().err)
    assert [line["message"] for line in lines if line["logger"] == "taskscheduler"] == ["once"]


@pytest.mark.parametrize(("log_format", "level"), [("xml", "info"), ("json", "loud")])
def test_unknown_formats_and_levels_are_refused(log_format: str, level: str) -> None:
    with pytest.raises(ValueError, match="must be one of"):
        configure_logging(log_format, level)
