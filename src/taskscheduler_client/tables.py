"""The human form of the CLI's answers: aligned tables, rendered with ``rich``.

Each listing has a fixed set of columns (scripts that cut columns keep working; scripts should
use ``--json`` all the same), in upper case, separated by two spaces, one row per line: rows are
never wrapped or cut, except that commands are shortened to :data:`MAX_CELL` characters in
listings (``tsched show`` prints them whole). Times are UTC, RFC 3339 to the second
(``2026-11-28T03:16:31Z``); durations are seconds (``0.05s``) or ``1m05s``, ``2h03m``.

Colour (status words, bold headers) only goes to a terminal: :func:`render` is told whether.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from rich.console import Console
from rich.table import Table
from rich.text import Text

from taskscheduler_core import (
    Agent,
    AgentDetail,
    AgentStatus,
    Execution,
    ExecutionStatus,
    RunStarted,
    RunStatus,
    RunSummary,
    Task,
    TaskState,
)

#: Longest command (or name) shown in a listing cell; the rest is replaced by "…".
MAX_CELL = 60
#: Wide enough that no table is ever squeezed: a row too long for the terminal wraps there.
_WIDTH = 100_000

_STYLES = {
    TaskState.ACTIVE.value: "green",
    TaskState.PAUSED.value: "yellow",
    TaskState.DELETED.value: "dim",
    AgentStatus.ALIVE.value: "green",
    AgentStatus.LOST.value: "red",
    RunStatus.RUNNING.value: "cyan",
    RunStatus.SUCCEEDED.value: "green",
    RunStatus.FAILED.value: "red",
    RunStatus.PARTIALLY_FAILED.value: "yellow",
    RunStatus.MISSED.value: "dim",
    ExecutionStatus.TIMED_OUT.value: "red",
    ExecutionStatus.ERROR.value: "red",
    ExecutionStatus.SKIPPED.value: "dim",
    ExecutionStatus.CANCELLED.value: "yellow",
}


def render(table: Table, *, color: bool) -> str:
    """``table`` as text, one line per row, without trailing spaces; ANSI colours if ``color``."""
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=_WIDTH,
        force_terminal=color,
        color_system="standard" if color else None,
        no_color=not color,
        highlight=False,
        emoji=False,
        markup=False,
    )
    console.print(table)
    return "".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines())


def time_text(moment: datetime | None) -> str:
    """A time in UTC to the second, ``-`` for none."""
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration_text(seconds: float | timedelta | None) -> str:
    """``0.05s``, ``12s``, ``1m05s``, ``2h03m``; ``-`` for none."""
    if seconds is None:
        return "-"
    if isinstance(seconds, timedelta):
        seconds = seconds.total_seconds()
    if seconds < 10:
        return f"{seconds:.2f}".rstrip("0").rstrip(".") + "s"
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _short(text: str | None) -> str:
    if text is None or not text.strip():
        return "-"
    # one line per row: a multi-line command shows its first line, and "…" for the rest
    lines = text.strip().splitlines()
    if len(lines[0]) > MAX_CELL:
        return lines[0][: MAX_CELL - 1] + "…"
    return lines[0] + ("…" if len(lines) > 1 else "")


def _status(value: str) -> Text:
    return Text(value, style=_STYLES.get(value, ""))


def _table(*columns: str) -> Table:
    table = Table(
        box=None,
        show_edge=False,
        pad_edge=False,
        padding=(0, 2, 0, 0),
        header_style="bold",
        highlight=False,
    )
    for column in columns:
        table.add_column(column, no_wrap=True)
    return table


def _fields(rows: Iterable[tuple[str, str | Text]]) -> Table:
    """A field / value table (``tsched show``): the field names are the JSON keys."""
    table = Table(
        box=None, show_header=False, show_edge=False, pad_edge=False, padding=(0, 2, 0, 0)
    )
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value")
    for name, value in rows:
        table.add_row(name, value)
    return table


# --- tasks --------------------------------------------------------------------------------------

TASK_COLUMNS = ("ID", "NAME", "STATE", "FREQUENCY", "TARGETS", "COMMAND")


def task_table(tasks: Iterable[Task]) -> Table:
    """``tsched list``: one row per task."""
    table = _table(*TASK_COLUMNS)
    for task in tasks:
        table.add_row(
            str(task.id),
            _short(task.name),
            _status(task.state.value),
            _frequency_text(task),
            str(task.targets),
            _short(task.command),
        )
    return table


def _frequency_text(task: Task) -> str:
    text = str(task.frequency)
    return text if task.timezone == "UTC" else f"{text} ({task.timezone})"


def task_detail(task: Task) -> Table:
    """``tsched show``: every field of the task, by its JSON name."""
    env = " ".join(f"{key}={value}" for key, value in sorted(task.env.items()))
    rows: list[tuple[str, str | Text]] = [
        ("id", str(task.id)),
        ("name", task.name or "-"),
        ("state", _status(task.state.value)),
        ("command", task.command),
        ("frequency", str(task.frequency)),
        ("timezone", task.timezone),
        ("targets", str(task.targets)),
        ("timeout", duration_text(task.timeout) if task.timeout is not None else "none"),
        ("overlap", task.overlap.value),
        ("starting_deadline", _seconds_or(task.starting_deadline, "default")),
        ("retries", str(task.retries)),
        ("retry_delay", duration_text(task.retry_delay)),
        ("env", env or "-"),
        ("max_output_bytes", _int_or(task.max_output_bytes, "the agent's limit")),
        ("anchor", time_text(task.anchor)),
        ("created_at", time_text(task.created_at)),
        ("updated_at", time_text(task.updated_at)),
        ("deleted_at", time_text(task.deleted_at)),
    ]
    return _fields(rows)


def _seconds_or(value: float | None, default: str) -> str:
    return default if value is None else duration_text(value)


def _int_or(value: int | None, default: str) -> str:
    return default if value is None else str(value)


# --- runs and executions -------------------------------------------------------------------------

RUN_COLUMNS = ("SCHEDULED AT", "TRIGGER", "STATUS", "AGENTS", "OUTCOMES", "FINISHED AT")


def run_table(runs: Iterable[RunSummary]) -> Table:
    """``tsched runs``: one row per run, newest first, with its agents' outcomes counted."""
    table = _table(*RUN_COLUMNS)
    for run in runs:
        table.add_row(
            time_text(run.scheduled_at),
            run.trigger.value,
            _status(run.status.value),
            str(len(run.outcomes)),
            outcome_counts(run) or "-",
            time_text(run.finished_at),
        )
    return table


def outcome_counts(run: RunSummary) -> str:
    """``2 succeeded``, ``1 succeeded, 1 failed``: the agents' final statuses, counted."""
    counts: dict[str, int] = {}
    for outcome in run.outcomes:
        counts[outcome.status.value] = counts.get(outcome.status.value, 0) + 1
    return ", ".join(f"{count} {status}" for status, count in sorted(counts.items()))


EXECUTION_COLUMNS = (
    "SCHEDULED AT",
    "AGENT",
    "ATTEMPT",
    "TRIGGER",
    "STATUS",
    "EXIT",
    "STARTED AT",
    "DURATION",
)


def execution_table(executions: Iterable[Execution]) -> Table:
    """``tsched history``: one row per execution (every attempt), newest first."""
    table = _table(*EXECUTION_COLUMNS)
    for execution in executions:
        table.add_row(
            time_text(execution.scheduled_at),
            str(execution.agent_id),
            str(execution.attempt) + ("" if execution.final else "+"),
            execution.trigger.value,
            _status(execution.status.value),
            "-" if execution.exit_code is None else str(execution.exit_code),
            time_text(execution.started_at),
            duration_text(execution.finished_at - execution.started_at),
        )
    return table


def run_started_text(started: RunStarted) -> str:
    """``tsched run``: what was started, on one line."""
    agents = len(started.agents)
    plural = "agent" if agents == 1 else "agents"
    return (
        f"task {started.task_id}: manual run at {time_text(started.scheduled_at)} "
        f"on {agents} {plural}"
    )


# --- agents -------------------------------------------------------------------------------------

AGENT_COLUMNS = ("ID", "STATUS", "URL", "LABELS", "LAST SEEN")


def agent_table(agents: Iterable[Agent]) -> Table:
    """``tsched agents``: one row per agent."""
    table = _table(*AGENT_COLUMNS)
    for agent in agents:
        table.add_row(
            str(agent.id),
            _status(agent.status.value),
            agent.url,
            labels_text(agent.labels),
            time_text(agent.last_seen_at),
        )
    return table


def labels_text(labels: dict[str, str]) -> str:
    """``role=web,zone=a``, sorted; ``-`` for none."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items())) or "-"


def agent_detail(agent: AgentDetail) -> Table:
    """``tsched agents ID``: the agent's fields, then the ids of its tasks, one per line."""
    tasks: Sequence[str] = [str(task_id) for task_id in agent.tasks]
    rows: list[tuple[str, str | Text]] = [
        ("id", str(agent.id)),
        ("url", agent.url),
        ("status", _status(agent.status.value)),
        ("labels", labels_text(agent.labels)),
        ("registered_at", time_text(agent.registered_at)),
        ("last_seen_at", time_text(agent.last_seen_at)),
        ("tasks", "\n".join(tasks) if tasks else "-"),
    ]
    return _fields(rows)
