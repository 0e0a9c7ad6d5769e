"""What :class:`Client` and :class:`AsyncClient` share: building requests and reading answers.

Every API operation is a :class:`Call`: the method, the path, the JSON body and the function that
turns the response into a core model (or raises). The twins only send calls, so the sync and the
async client cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote
from uuid import UUID

import attrs
import httpx

from taskscheduler_core import (
    Agent,
    Frequency,
    LatestOutput,
    Task,
    TaskCreated,
    WireError,
    __version__,
    require_utc,
    structure,
)

from .errors import (
    ApiError,
    Forbidden,
    InvalidRequest,
    OutputTimeout,
    ServerError,
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

_INVALID_STATUSES = frozenset({400, 413, 422})


@attrs.frozen
class Call(Generic[T]):
    """One API operation: what to send, and how to read the answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    body: Any = None


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


def create_task(command: str, frequency: str | Frequency) -> Call[Task]:
    # the frequency is not parsed here: the server's answer is the one that counts, and it names
    # the field at fault
    body = {"command": command, "frequency": str(frequency)}
    return Call("POST", "/api/v1/tasks/create", _parse_created, body)


def latest_output(task_id: TaskId) -> Call[LatestOutput]:
    return Call("GET", f"{task_path(task_id)}/latest_output", _parser(LatestOutput))


def agents() -> Call[list[Agent]]:
    return Call("GET", "/api/v1/agents", _parse_agents)


def health() -> Call[bool]:
    return Call("GET", "/healthz", lambda response: response.is_success)


def task_path(task_id: TaskId) -> str:
    # a str id is sent as it is (the server says whether it is a valid id), but quoted so that it
    # stays one path segment whatever it contains
    return f"/api/v1/tasks/{quote(str(task_id), safe='')}"


# --- reading answers -----------------------------------------------------------------------------


def _parse_created(response: httpx.Response) -> Task:
    return _parser(TaskCreated)(response).task


def _parse_agents(response: httpx.Response) -> list[Agent]:
    # the listing is an object {"agents": [...]}, leaving room for paging; a bare list is
    # accepted too
    raise_for_status(response)
    data = _json(response)
    if isinstance(data, dict) and "agents" in data:
        data = data["agents"]
    return _structure(response, data, list[Agent])


def _parser(kind: type[T]) -> Callable[[httpx.Response], T]:
    def parse(response: httpx.Response) -> T:
        raise_for_status(response)
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


def raise_for_status(response: httpx.Response) -> None:
    """Raise the :class:`ApiError` matching an error answer; do nothing for a success."""
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
        kind = TaskNotFound
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
