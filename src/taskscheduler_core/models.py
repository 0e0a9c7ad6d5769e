"""The things taskscheduler talks about: tasks, executions, agents and outputs.

All models are frozen attrs classes, checked when built; change one with ``attrs.evolve``.
Times are timezone-aware UTC datetimes, ids are UUIDs.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import datetime
from uuid import UUID

import attrs

from .errors import WireError
from .firetimes import Recurrence, optional_utc, require_utc
from .options import RunPolicy, Targets, check_labels, check_name, label_dict

#: Commands longer than this are refused: a shell command line is never megabytes long, and the
#: command travels to every agent and into every listing.
MAX_COMMAND_LENGTH = 65_536


def _utc(value: datetime) -> datetime:
    return require_utc(value)


def check_command(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    """A command is a non-blank string of bounded length that a shell can receive (no NUL)."""
    name = attribute.name
    if not isinstance(value, str):
        raise WireError(f"must be a string, got {type(value).__name__}", field=name)
    if not value.strip():
        raise WireError("must not be empty", field=name)
    if len(value) > MAX_COMMAND_LENGTH:
        raise WireError(
            f"is too long ({len(value)} characters, at most {MAX_COMMAND_LENGTH})", field=name
        )
    if "\x00" in value:
        raise WireError("must not contain NUL characters", field=name)


def non_negative(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise WireError(f"must be >= 0, got {value}", field=attribute.name)


def positive(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise WireError(f"must be >= 1, got {value}", field=attribute.name)


class ExecutionStatus(enum.Enum):
    """How one execution of a task on one agent ended."""

    SUCCEEDED = "succeeded"  #: exit code 0
    FAILED = "failed"  #: non-zero exit code or killed by a signal
    TIMED_OUT = "timed_out"  #: killed because it ran past its timeout
    ERROR = "error"  #: could not be run at all (the shell could not be started, …)
    SKIPPED = "skipped"  #: not started: the previous execution on that agent was still running
    MISSED = "missed"  #: not started: the agent reached the slot too late (down or stalled)
    CANCELLED = "cancelled"  #: killed: a newer slot replaced it (``overlap: replace``)

    @property
    def ran(self) -> bool:
        """Whether a process was started for this execution."""
        return self not in (ExecutionStatus.SKIPPED, ExecutionStatus.MISSED)

    @property
    def retryable(self) -> bool:
        """Whether a task with ``retries`` tries this execution again."""
        return self in (ExecutionStatus.FAILED, ExecutionStatus.TIMED_OUT, ExecutionStatus.ERROR)


class Trigger(enum.Enum):
    """Why an execution happened."""

    SCHEDULE = "schedule"  #: a fire time of the task's frequency
    MANUAL = "manual"  #: ``POST /api/v1/tasks/{id}/run``


class TaskState(enum.Enum):
    """Where a task is in its lifecycle."""

    ACTIVE = "active"
    PAUSED = "paused"  #: kept on its agents but not fired until resumed
    DELETED = "deleted"  #: removed from its agents; its history stays until pruned


@attrs.frozen(kw_only=True)
class Task(RunPolicy):
    """A periodic command, as the server stores it, with its options (:class:`RunPolicy`).

    An interval task fires at ``anchor + k × frequency`` (k ≥ 1); a cron task at the times its
    expression matches in ``timezone``, after ``anchor``. It runs on the agents ``targets`` picks.
    ``updated_at`` is the last change (create, edit, pause, resume, delete).
    """

    id: UUID
    command: str = attrs.field(validator=check_command)
    frequency: Recurrence
    anchor: datetime = attrs.field(converter=_utc)
    created_at: datetime = attrs.field(converter=_utc)
    updated_at: datetime | None = attrs.field(default=None, converter=optional_utc)
    name: str | None = attrs.field(default=None, validator=check_name)
    targets: Targets = attrs.field(factory=Targets)
    paused: bool = False
    deleted_at: datetime | None = attrs.field(default=None, converter=optional_utc)

    @property
    def state(self) -> TaskState:
        if self.deleted_at is not None:
            return TaskState.DELETED
        return TaskState.PAUSED if self.paused else TaskState.ACTIVE


@attrs.frozen(kw_only=True)
class TaskSpec(RunPolicy):
    """What an agent needs to run a task: the part of :class:`Task` sent to agents.

    A paused spec stays on the agent but fires nothing; resuming fires from the next slot on.
    """

    task_id: UUID
    command: str = attrs.field(validator=check_command)
    frequency: Recurrence
    anchor: datetime = attrs.field(converter=_utc)
    paused: bool = False

    @classmethod
    def of(cls, task: Task) -> TaskSpec:
        return cls(
            task_id=task.id,
            command=task.command,
            frequency=task.frequency,
            anchor=task.anchor,
            paused=task.paused,
            **task.policy_fields(),
        )


@attrs.frozen(kw_only=True)
class ExecutionKey:
    """The identity of an execution: one task, on one agent, for one fire time, one attempt."""

    task_id: UUID
    agent_id: UUID
    scheduled_at: datetime = attrs.field(converter=_utc)
    attempt: int = 1


@attrs.frozen(kw_only=True)
class Execution:
    """One execution of a task on one agent, finished (or never started: skipped / missed)."""

    task_id: UUID
    agent_id: UUID
    scheduled_at: datetime = attrs.field(converter=_utc)
    started_at: datetime = attrs.field(converter=_utc)
    finished_at: datetime = attrs.field(converter=_utc)
    status: ExecutionStatus
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    #: Bytes dropped from the head of each stream because it outgrew the per-stream cap.
    stdout_dropped: int = attrs.field(default=0, validator=non_negative)
    stderr_dropped: int = attrs.field(default=0, validator=non_negative)
    #: 1 for the first try of a fire time, 2 for its first retry, …
    attempt: int = attrs.field(default=1, validator=positive)
    trigger: Trigger = Trigger.SCHEDULE
    #: ``False`` while the agent will try again (a failed attempt with retries left).
    final: bool = True

    @property
    def key(self) -> ExecutionKey:
        return ExecutionKey(
            task_id=self.task_id,
            agent_id=self.agent_id,
            scheduled_at=self.scheduled_at,
            attempt=self.attempt,
        )


class AgentStatus(enum.Enum):
    """Whether the server hears from an agent."""

    ALIVE = "alive"  #: heard from (heartbeat, registration or report) within ``lost_after``
    LOST = "lost"  #: silent for longer than that; a run does not wait for it


@attrs.frozen(kw_only=True)
class Agent:
    """An agent the server knows: its stable id and the base URL it is reached at.

    ``registered_at`` is when the server first heard of it; ``last_seen_at`` when it last did
    (a heartbeat, registration, report, or resolution from ``AVAILABLE_SERVERS``), where known;
    ``status`` whether it is heard from still.
    """

    id: UUID
    url: str
    registered_at: datetime = attrs.field(converter=_utc)
    last_seen_at: datetime | None = attrs.field(default=None, converter=optional_utc)
    status: AgentStatus = AgentStatus.ALIVE
    #: What the agent declared at start (``tsched agent --label role=web``); targets select on it.
    labels: dict[str, str] = attrs.field(factory=dict, converter=label_dict, validator=check_labels)


def ids(values: Iterable[UUID]) -> tuple[UUID, ...]:
    """A tuple of ids (a typed converter: mypy cannot type a bare ``converter=tuple``)."""
    return tuple(values)


@attrs.frozen(kw_only=True)
class AgentDetail(Agent):
    """``GET /api/v1/agents/{id}``: an agent and the ids of the tasks assigned to it."""

    tasks: tuple[UUID, ...] = attrs.field(default=(), converter=ids)


@attrs.frozen(kw_only=True)
class AgentOutput:
    """What one agent's execution printed; on the wire, empty streams are omitted."""

    agent_id: UUID
    stdout: str = ""
    stderr: str = ""


def _outputs(outputs: Iterable[AgentOutput]) -> tuple[AgentOutput, ...]:
    return tuple(outputs)


@attrs.frozen(kw_only=True)
class LatestOutput:
    """The answer of ``latest_output``: the newest complete run, or none yet."""

    completion_time: datetime | None = attrs.field(converter=optional_utc)
    outputs: tuple[AgentOutput, ...] = attrs.field(converter=_outputs)
    #: The fire time of the run shown; ``None`` while no run is complete.
    scheduled_at: datetime | None = attrs.field(default=None, converter=optional_utc)

    @property
    def complete(self) -> bool:
        return self.completion_time is not None
