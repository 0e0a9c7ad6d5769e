"""Request and response bodies of the REST API that are not models themselves.

Each class is one JSON body; :mod:`taskscheduler_core.wire` turns them into and out of JSON.
Optional fields are what lets the bodies of the original design (three fields to ``complete``,
three to ``schedule``) still be accepted, while our agents send everything.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from urllib.parse import urlsplit
from uuid import UUID

import attrs

from .errors import WireError
from .firetimes import Recurrence, optional_utc, require_utc
from .models import (
    Agent,
    Execution,
    ExecutionStatus,
    Task,
    TaskSpec,
    Trigger,
    check_command,
    ids,
    non_negative,
    positive,
)
from .options import (
    RunPolicy,
    Targets,
    check_labels,
    check_name,
    label_dict,
)

#: The longest agent URL accepted at registration.
MAX_URL_LENGTH = 2048

#: The bounds of a token an agent proposes: at least 32 characters of the alphabet below (192
#: bits when random; ``secrets.token_urlsafe(32)`` makes 43), at most what fits a header easily.
MIN_TOKEN_LENGTH = 32
MAX_TOKEN_LENGTH = 256
#: RFC 6750's ``b64token``: what a bearer token may be made of, so the token goes into an
#: ``Authorization`` header exactly as proposed.
_TOKEN = re.compile(r"[A-Za-z0-9._~+/-]+=*")


def _has_host(url: str) -> bool:
    """Whether ``url`` names a host that can be dialled: present, encodable, a valid port."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port out of range
        # "a..b" or a label over 63 characters: no DNS name, and HTTP clients refuse it
        if host is not None and not host.startswith("[") and ":" not in host:
            host.encode("idna")
    except ValueError:  # an unclosed IPv6 bracket, a bad port, an unencodable name
        return False
    return bool(host)


def _agent_url(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    # Control characters first: HTTP clients refuse a URL with one (it could never be dialled),
    # and PostgreSQL cannot store a NUL in a text column.
    if any(char.isascii() and not char.isprintable() for char in value):
        raise WireError("must not contain control characters", field=attribute.name)
    # A URL without a host ("http://") would be stored and then dialled forever.
    if (
        not value.startswith(("http://", "https://"))
        or len(value) > MAX_URL_LENGTH
        or not _has_host(value)
    ):
        raise WireError(
            f"must be an http:// or https:// URL with a host, of at most {MAX_URL_LENGTH} "
            "characters",
            field=attribute.name,
        )


def _token(instance: object, attribute: attrs.Attribute[str], value: str) -> None:
    # The value itself is never quoted back: it is a secret.
    if not MIN_TOKEN_LENGTH <= len(value) <= MAX_TOKEN_LENGTH or not _TOKEN.fullmatch(value):
        raise WireError(
            f"must be {MIN_TOKEN_LENGTH} to {MAX_TOKEN_LENGTH} characters of A-Z a-z 0-9 "
            "- . _ ~ + / (and = at the end), as secrets.token_urlsafe(32) makes",
            field=attribute.name,
        )


@attrs.frozen(kw_only=True)
class CreateTask(RunPolicy):
    """Body of ``POST /api/v1/tasks/create`` (and ``POST /api/v1/tasks``).

    Only ``command`` and ``frequency`` are required; every option has the default documented in
    :mod:`taskscheduler_core.options`. ``PATCH /api/v1/tasks/{id}`` takes any subset of these
    fields (see :func:`taskscheduler_core.lifecycle.edit_task`).
    """

    command: str = attrs.field(validator=check_command)
    frequency: Recurrence
    name: str | None = attrs.field(default=None, validator=check_name)
    targets: Targets = attrs.field(factory=Targets)


@attrs.frozen(kw_only=True)
class TaskCreated:
    """Answer of ``POST /api/v1/tasks/create``: the task, and its id as ``command_id`` too."""

    command_id: UUID
    task: Task


@attrs.frozen(kw_only=True)
class ScheduleTask(RunPolicy):
    """Body of the agent's ``POST /api/v1/tasks/schedule``.

    ``anchor`` is sent by our server so that every agent fires at the same instants; a caller of
    the original design may leave it out, and the agent then anchors the task at receipt.
    """

    task_id: UUID
    command: str = attrs.field(validator=check_command)
    frequency: Recurrence
    anchor: datetime | None = attrs.field(default=None, converter=optional_utc)
    paused: bool = False

    @classmethod
    def of(cls, spec: TaskSpec) -> ScheduleTask:
        return cls(
            task_id=spec.task_id,
            command=spec.command,
            frequency=spec.frequency,
            anchor=spec.anchor,
            paused=spec.paused,
            **spec.policy_fields(),
        )

    def spec(self, received_at: datetime) -> TaskSpec:
        return TaskSpec(
            task_id=self.task_id,
            command=self.command,
            frequency=self.frequency,
            anchor=self.anchor if self.anchor is not None else received_at,
            paused=self.paused,
            **self.policy_fields(),
        )


@attrs.frozen(kw_only=True)
class RunTaskNow:
    """Body of the agent's ``POST /api/v1/tasks/{task_id}/run``: a manual run.

    The server picks ``scheduled_at`` once and sends it to every target, so the manual run's
    executions group into one run like a scheduled one.
    """

    scheduled_at: datetime = attrs.field(converter=require_utc)


@attrs.frozen(kw_only=True)
class ExecutionReport:
    """Body of ``POST /api/v1/tasks/{task_id}/complete``: an agent reports one execution.

    ``server_id`` is the agent's id (the original design calls agents "servers"). The original
    three fields alone are accepted: the execution is then taken as succeeded, scheduled, started
    and finished when the server received it.
    """

    server_id: UUID
    stdout: str = ""
    stderr: str = ""
    scheduled_at: datetime | None = attrs.field(default=None, converter=optional_utc)
    started_at: datetime | None = attrs.field(default=None, converter=optional_utc)
    finished_at: datetime | None = attrs.field(default=None, converter=optional_utc)
    status: ExecutionStatus = ExecutionStatus.SUCCEEDED
    exit_code: int | None = None
    stdout_dropped: int = attrs.field(default=0, validator=non_negative)
    stderr_dropped: int = attrs.field(default=0, validator=non_negative)
    attempt: int = attrs.field(default=1, validator=positive)
    trigger: Trigger = Trigger.SCHEDULE
    final: bool = True

    @classmethod
    def of(cls, execution: Execution) -> ExecutionReport:
        return cls(
            server_id=execution.agent_id,
            stdout=execution.stdout,
            stderr=execution.stderr,
            scheduled_at=execution.scheduled_at,
            started_at=execution.started_at,
            finished_at=execution.finished_at,
            status=execution.status,
            exit_code=execution.exit_code,
            stdout_dropped=execution.stdout_dropped,
            stderr_dropped=execution.stderr_dropped,
            attempt=execution.attempt,
            trigger=execution.trigger,
            final=execution.final,
        )

    def execution(self, task_id: UUID, received_at: datetime) -> Execution:
        """The execution this report describes; missing times default to ``received_at``."""
        finished_at = self.finished_at or received_at
        started_at = self.started_at or finished_at
        return Execution(
            task_id=task_id,
            agent_id=self.server_id,
            scheduled_at=self.scheduled_at or started_at,
            started_at=started_at,
            finished_at=finished_at,
            status=self.status,
            exit_code=self.exit_code,
            stdout=self.stdout,
            stderr=self.stderr,
            stdout_dropped=self.stdout_dropped,
            stderr_dropped=self.stderr_dropped,
            attempt=self.attempt,
            trigger=self.trigger,
            final=self.final,
        )


@attrs.frozen(kw_only=True)
class ProposedCredentials:
    """The credentials an agent proposes for itself when it registers with the join token.

    The agent makes them and saves them before it sends them, so that an answer lost on the
    way cannot lose them: sending the same ones again is then recognised as the same agent
    (docs/security.md). ``agent_token`` is what the agent will present, ``server_token`` what
    the server will present to it.
    """

    agent_token: str = attrs.field(repr=False, validator=_token)
    server_token: str = attrs.field(repr=False, validator=_token)

    def __attrs_post_init__(self) -> None:
        # One token for both ways would let whoever sees one side's answer speak for the other.
        if self.agent_token == self.server_token:
            raise WireError("must differ from agent_token", field="server_token")


@attrs.frozen(kw_only=True)
class RegisterAgent:
    """Body of ``POST /api/v1/agents/register``: an agent tells the server where it listens.

    ``labels`` are what task ``targets`` select on; they replace the ones registered before.
    ``credentials``, with the join token, are the ones the agent proposes for itself; without
    them the server issues its own and answers them once.
    """

    agent_id: UUID
    url: str = attrs.field(validator=_agent_url)
    labels: dict[str, str] = attrs.field(factory=dict, converter=label_dict, validator=check_labels)
    credentials: ProposedCredentials | None = None


@attrs.frozen(kw_only=True)
class AgentIdentity:
    """Answer of an agent's ``GET /api/v1/agent``: who it is."""

    agent_id: UUID
    version: str
    labels: dict[str, str] = attrs.field(factory=dict, converter=label_dict, validator=check_labels)


# Typed converters: mypy cannot infer the item type of a bare ``converter=tuple``.
def _tasks(tasks: Iterable[Task]) -> tuple[Task, ...]:
    return tuple(tasks)


def _executions(executions: Iterable[Execution]) -> tuple[Execution, ...]:
    return tuple(executions)


def _agents(agents: Iterable[Agent]) -> tuple[Agent, ...]:
    return tuple(agents)


@attrs.frozen(kw_only=True)
class TaskList:
    """Answer of ``GET /api/v1/tasks``: one page of tasks, oldest first.

    ``next_cursor`` is passed back as ``?cursor=`` for the next page; ``null`` on the last one.
    """

    tasks: tuple[Task, ...] = attrs.field(converter=_tasks)
    next_cursor: str | None = None


@attrs.frozen(kw_only=True)
class ExecutionList:
    """Answer of ``GET /api/v1/tasks/{id}/executions``: one page, newest first."""

    executions: tuple[Execution, ...] = attrs.field(converter=_executions)
    next_cursor: str | None = None


@attrs.frozen(kw_only=True)
class AgentList:
    """Answer of ``GET /api/v1/agents``."""

    agents: tuple[Agent, ...] = attrs.field(converter=_agents)


@attrs.frozen(kw_only=True)
class RunStarted:
    """Answer of ``POST /api/v1/tasks/{id}/run``: the manual run's time and its target agents."""

    task_id: UUID
    scheduled_at: datetime = attrs.field(converter=require_utc)
    agents: tuple[UUID, ...] = attrs.field(converter=ids)
