"""What :class:`Client` and :class:`AsyncClient` share: building requests and reading answers.

Every API operation is a :class:`Call`: the method, the path, the JSON body and the function that
turns the response into a core model (or raises). The twins only send calls, so the sync and the
async client cannot drift apart.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar
from urllib.parse import quote
from uuid import UUID

import attrs
import httpx

from taskscheduler_core import (
    Agent,
    AgentDetail,
    ExecutionList,
    ExecutionStatus,
    LatestOutput,
    Recurrence,
    RunList,
    RunStarted,
    RunStatus,
    Targets,
    Task,
    TaskCreated,
    TaskList,
    TaskState,
    WireError,
    __version__,
    format_time,
    require_utc,
    structure,
    unstructure,
)

from .errors import (
    AgentNotFound,
    ApiError,
    Forbidden,
    InvalidRequest,
    OutputTimeout,
    ServerError,
    TaskDeleted,
    TaskNotFound,
    Unauthorized,
    UnexpectedResponse,
)

T = TypeVar("T")

#: Where ``tsched up`` and ``tsched server`` listen unless told otherwise.
DEFAULT_URL = "http://127.0.0.1:8080"

#: Seconds to wait for connecting, and then for each read and write.
DEFAULT_TIMEOUT = 10.0

TaskId = UUID | str
AgentId = UUID | str

_INVALID_STATUSES = frozenset({400, 413, 422})
_NOT_FOUND: dict[str, type[ApiError]] = {
    "task_not_found": TaskNotFound,
    "agent_not_found": AgentNotFound,
}


@attrs.frozen
class Call(Generic[T]):
    """One API operation: what to send, and how to read the answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    body: Any = None
    params: tuple[tuple[str, str], ...] | None = None


class ClientBase:
    """The configuration both twins hold: where the server is and how long to wait for it."""

    def __init__(
        self, url: str, timeout: float | httpx.Timeout, *, token: str | None = None
    ) -> None:
        # a trailing slash would make every path join to "//api/…"
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._token = token  # sent as "Authorization: Bearer"; never in a repr

    @property
    def headers(self) -> dict[str, str]:
        headers = {
            "Accept": "application/json",
            "User-Agent": f"taskscheduler-client/{__version__}",
        }
        if self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


# --- the calls -----------------------------------------------------------------------------------


def create_task(
    command: str, frequency: str | Recurrence, options: Mapping[str, Any]
) -> Call[Task]:
    # the frequency is not parsed here: the server's answer is the one that counts, and it names
    # the field at fault
    body = {"command": command, "frequency": str(frequency)}
    # options left out (None) are not sent, so that the server's defaults apply and a server
    # that predates them still accepts the body
    body |= {name: wire_value(value) for name, value in options.items() if value is not None}
    return Call("POST", "/api/v1/tasks/create", _parse_created, body)


def list_tasks(
    *,
    state: TaskState | str | None = None,
    name: str | None = None,
    agent: AgentId | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[TaskList]:
    params = _query(state=state, name=name, agent=agent, limit=limit, cursor=cursor)
    return Call("GET", "/api/v1/tasks", _parser(TaskList), params=params)


def get_task(task_id: TaskId) -> Call[Task]:
    return Call("GET", task_path(task_id), _parser(Task))


def edit_task(task_id: TaskId, changes: Mapping[str, Any]) -> Call[Task]:
    # unlike a create, None is sent: null resets an option (no timeout, no name)
    body = {name: wire_value(value) for name, value in changes.items()}
    return Call("PATCH", task_path(task_id), _parser(Task), body)


def delete_task(task_id: TaskId, *, purge: bool = False) -> Call[Task | None]:
    params = (("purge", "true"),) if purge else None
    return Call("DELETE", task_path(task_id), _parse_deleted, params=params)


def pause_task(task_id: TaskId) -> Call[Task]:
    return Call("POST", f"{task_path(task_id)}/pause", _parser(Task))


def resume_task(task_id: TaskId) -> Call[Task]:
    return Call("POST", f"{task_path(task_id)}/resume", _parser(Task))


def run_task(task_id: TaskId) -> Call[RunStarted]:
    return Call("POST", f"{task_path(task_id)}/run", _parser(RunStarted))


def runs(
    task_id: TaskId,
    *,
    status: RunStatus | str | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[RunList]:
    params = _query(status=status, limit=limit, cursor=cursor)
    return Call("GET", f"{task_path(task_id)}/runs", _parser(RunList), params=params)


def executions(
    task_id: TaskId,
    *,
    agent: AgentId | None = None,
    status: ExecutionStatus | str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> Call[ExecutionList]:
    params = _query(
        agent=agent, status=status, since=since, until=until, limit=limit, cursor=cursor
    )
    path = f"{task_path(task_id)}/executions"
    return Call("GET", path, _parser(ExecutionList), params=params)


def latest_output(task_id: TaskId) -> Call[LatestOutput]:
    return Call("GET", f"{task_path(task_id)}/latest_output", _parser(LatestOutput))


def agents(labels: Mapping[str, str] | None = None) -> Call[list[Agent]]:
    # one ?label=key=value per label: the server keeps the agents that have all of them
    params = tuple(("label", f"{key}={value}") for key, value in (labels or {}).items())
    return Call("GET", "/api/v1/agents", _parse_agents, params=params or None)


def agent(agent_id: AgentId) -> Call[AgentDetail]:
    path = f"/api/v1/agents/{quote(str(agent_id), safe='')}"
    return Call("GET", path, _parser(AgentDetail, not_found=AgentNotFound))


def health() -> Call[bool]:
    return Call("GET", "/healthz", lambda response: response.is_success)


def task_path(task_id: TaskId) -> str:
    # a str id is sent as it is (the server says whether it is a valid id), but quoted so that it
    # stays one path segment whatever it contains
    return f"/api/v1/tasks/{quote(str(task_id), safe='')}"


def task_options(
    *,
    targets: Targets | Mapping[str, Any] | None = None,
    target_agents: Iterable[AgentId] | None = None,
    target_labels: Mapping[str, str] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Task fields by name, with ``target_agents`` / ``target_labels`` folded into ``targets``.

    Raises :class:`ValueError` when more than one of the three ways to give targets is used.
    """
    given = [value for value in (targets, target_agents, target_labels) if value is not None]
    if len(given) > 1:
        raise ValueError("give only one of targets, target_agents and target_labels")
    if target_agents is not None:
        targets = {"agents": [str(agent_id) for agent_id in target_agents]}
    elif target_labels is not None:
        targets = {"labels": dict(target_labels)}
    return options | ({} if targets is None else {"targets": targets})


def wire_value(value: object) -> Any:
    """A task option as JSON data: enums by value, ids and frequencies as text, durations as
    seconds, and core models (``Targets``) through the core's converter."""
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Mapping):
        return {str(key): wire_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [wire_value(item) for item in value]
    return unstructure(value)


def _query(**values: object) -> tuple[tuple[str, str], ...] | None:
    """Query parameters of the values given (``None`` is left out), as the API spells them."""
    params = []
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, datetime):
            value = format_time(require_utc(value, name))
        params.append((name, str(value)))
    return tuple(params) or None


# --- reading answers -----------------------------------------------------------------------------


def _parse_created(response: httpx.Response) -> Task:
    return _parser(TaskCreated)(response).task


def _parse_deleted(response: httpx.Response) -> Task | None:
    # a purge answers 204 without a body: there is no task left to show
    raise_for_status(response)
    if response.status_code == 204:
        return None
    return _structure(response, _json(response), Task)


def _parse_agents(response: httpx.Response) -> list[Agent]:
    # the listing is an object {"agents": [...]}, leaving room for paging; a bare list is
    # accepted too
    raise_for_status(response)
    data = _json(response)
    if isinstance(data, dict) and "agents" in data:
        data = data["agents"]
    return _structure(response, data, list[Agent])


def _parser(
    kind: type[T], *, not_found: type[ApiError] = TaskNotFound
) -> Callable[[httpx.Response], T]:
    def parse(response: httpx.Response) -> T:
        raise_for_status(response, not_found=not_found)
        return _structure(response, _json(response), kind)

    return parse


def _structure(response: httpx.Response, data: object, kind: type[T]) -> T:
    try:
        return structure(data, kind)
    except WireError as error:
        raise _unexpected(response, f"the answer does not fit the API: {error}") from None


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise _unexpected(response, "the answer is not JSON") from None


def _unexpected(response: httpx.Response, message: str) -> UnexpectedResponse:
    return UnexpectedResponse(
        response.status_code,
        "unexpected_response",
        f"{response.request.method} {response.request.url}: {message}",
    )


def raise_for_status(response: httpx.Response, *, not_found: type[ApiError] = TaskNotFound) -> None:
    """Raise the :class:`ApiError` matching an error answer; do nothing for a success.

    A 404 is read by its code (``task_not_found``, ``agent_not_found``); a 404 without one of
    ours (a proxy's page, an older server without the route) raises ``not_found``, what the
    call was looking up.
    """
    if response.is_success:
        return
    status = response.status_code
    code, message, field = _error_details(response)
    kind: type[ApiError]
    if status in _INVALID_STATUSES:
        kind = InvalidRequest
    elif status == 401:
        kind = Unauthorized
    elif status == 403:
        kind = Forbidden
    elif status == 404:
        kind = _NOT_FOUND.get(code, not_found)
    elif status == 409 and code == "task_deleted":
        kind = TaskDeleted
    elif status >= 500:
        kind = ServerError
    else:
        kind = ApiError
    raise kind(status, code, message, field)


def _error_details(response: httpx.Response) -> tuple[str, str, str | None]:
    """``code``, ``message`` and ``field`` of an error body, or the best a foreign body allows."""
    fallback_code = f"http_{response.status_code}"
    try:
        data = response.json()
    except ValueError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        code = error.get("code")
        message = error.get("message")
        field = error.get("field")
        return (
            code if isinstance(code, str) and code else fallback_code,
            message if isinstance(message, str) and message else _status_line(response),
            field if isinstance(field, str) and field else None,
        )
    # not our error format: a proxy, another service, or a framework default page
    text = " ".join(response.text.split())[:200]
    message = f"{_status_line(response)}: {text}" if text else _status_line(response)
    return fallback_code, message, None


def _status_line(response: httpx.Response) -> str:
    return f"HTTP {response.status_code} {response.reason_phrase}".rstrip()


# --- waiting for output --------------------------------------------------------------------------


@attrs.define
class OutputWait:
    """The rules of ``wait_for_output``, shared by the twins; they only poll and sleep."""

    task_id: TaskId
    timeout: float
    poll_interval: float
    after: datetime | None
    last: LatestOutput | None = None

    def __attrs_post_init__(self) -> None:
        if self.timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {self.timeout}")
        if self.poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0, got {self.poll_interval}")
        if self.after is not None:
            self.after = require_utc(self.after, "after")

    def satisfied_by(self, output: LatestOutput) -> bool:
        """Whether ``output`` is a complete run, newer than ``after`` when that is given."""
        self.last = output
        if output.completion_time is None:
            return False
        return self.after is None or output.completion_time > self.after

    def pause(self, remaining: float) -> float | None:
        """How long to sleep before the next poll, or ``None`` when time is up."""
        if remaining <= 0:
            return None
        return min(self.poll_interval, remaining)

    def timed_out(self) -> OutputTimeout:
        return OutputTimeout(
            task_id=str(self.task_id), timeout=self.timeout, after=self.after, last=self.last
        )


# --- following a task run after run -------------------------------------------------------------


@attrs.define
class OutputFollow:
    """The rules of ``follow_output``, shared by the twins: which answers are new runs.

    A run is known by its ``scheduled_at``; one is new when it is later than every run seen
    before, so a run is never given twice and never out of order. The run already complete at
    the first poll is given only with ``include_latest``.
    """

    poll_interval: float
    include_latest: bool = False
    seen: datetime | None = None
    polled: bool = False

    def __attrs_post_init__(self) -> None:
        if self.poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0, got {self.poll_interval}")

    def is_new(self, output: LatestOutput) -> bool:
        """Whether ``output`` is a complete run not given yet (and remember it)."""
        first, self.polled = not self.polled, True
        # a server that predates scheduled_at: the completion time tells runs apart too
        key = output.scheduled_at or output.completion_time
        if key is None or (self.seen is not None and key <= self.seen):
            return False
        self.seen = key
        return self.include_latest or not first
