"""The typed clients of the taskscheduler REST API: :class:`Client` and :class:`AsyncClient`.

They are twins: :mod:`._base` builds every request and reads every answer, and each twin only
sends (and sleeps, while waiting for output). Both return core models and raise the exceptions of
:mod:`.errors`::

    with Client("http://127.0.0.1:8080") as client:
        task = client.create_task("echo hello world", "every 30 seconds", timeout=10)
        output = client.wait_for_output(task.id)
        client.pause_task(task.id)
        for run in client.runs(task.id).runs:
            print(run.scheduled_at, run.status)

Every endpoint of the API has its method: tasks (``create_task``, ``list_tasks``/``iter_tasks``,
``get_task``, ``edit_task``, ``pause_task``, ``resume_task``, ``run_task``, ``delete_task``),
their history (``runs``, ``executions``, ``latest_output``) and agents (``agents``, ``agent``).

:class:`AsyncClient` works under trio and asyncio alike (httpx and anyio adapt to the loop).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, Self, TypeVar

import anyio
import httpx

from taskscheduler_core import (
    Agent,
    AgentDetail,
    ExecutionList,
    ExecutionStatus,
    LatestOutput,
    Overlap,
    Recurrence,
    RunList,
    RunStarted,
    RunStatus,
    Targets,
    Task,
    TaskList,
    TaskState,
)

from . import _base
from ._base import (
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    AgentId,
    Call,
    ClientBase,
    OutputFollow,
    OutputWait,
    TaskId,
)
from ._tls import PathLike, ssl_context
from .errors import TransportError, translate_httpx_errors

T = TypeVar("T")

#: A duration: a number of seconds, or a timedelta.
Seconds = float | timedelta


class Client(ClientBase):
    """A blocking client; one connection pool, closed by :meth:`close` or ``with``.

    For an ``https://`` server whose certificate a private CA signed, give that CA's PEM file
    as ``ca_cert`` (only it is then trusted); a server requiring mutual TLS also needs
    ``client_cert`` and ``client_key``.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        ca_cert: PathLike | None = None,
        client_cert: PathLike | None = None,
        client_key: PathLike | None = None,
        token: str | None = None,
    ) -> None:
        super().__init__(url, timeout, token=token)
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            transport=transport,
            headers=self.headers,
            verify=ssl_context(ca_cert, client_cert, client_key),
        )

    def create_task(
        self,
        command: str,
        frequency: str | Recurrence,
        *,
        name: str | None = None,
        timezone: str | None = None,
        timeout: Seconds | None = None,
        overlap: Overlap | str | None = None,
        starting_deadline: Seconds | None = None,
        targets: Targets | Mapping[str, Any] | None = None,
        target_agents: Iterable[AgentId] | None = None,
        target_labels: Mapping[str, str] | None = None,
        retries: int | None = None,
        retry_delay: Seconds | None = None,
        env: Mapping[str, str] | None = None,
        max_output_bytes: int | None = None,
    ) -> Task:
        """Create a task running ``command`` at ``frequency`` (``"every 30 seconds"``).

        Options left out take the server's defaults (docs/api.md); ``targets`` may also be given
        as ``target_agents=[ids]`` or ``target_labels={"role": "web"}`` (one of the three).
        """
        options = _base.task_options(
            name=name,
            timezone=timezone,
            timeout=timeout,
            overlap=overlap,
            starting_deadline=starting_deadline,
            targets=targets,
            target_agents=target_agents,
            target_labels=target_labels,
            retries=retries,
            retry_delay=retry_delay,
            env=env,
            max_output_bytes=max_output_bytes,
        )
        return self._send(_base.create_task(command, frequency, options))

    def list_tasks(
        self,
        *,
        state: TaskState | str | None = None,
        name: str | None = None,
        agent: AgentId | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> TaskList:
        """One page of tasks, oldest first; pass ``next_cursor`` back as ``cursor`` for the next.

        ``state`` is ``active``, ``paused``, ``deleted`` or ``all`` (default: not deleted);
        ``name`` matches a part of the name, any case; ``agent`` keeps the tasks it runs.
        """
        return self._send(
            _base.list_tasks(state=state, name=name, agent=agent, limit=limit, cursor=cursor)
        )

    def iter_tasks(
        self,
        *,
        state: TaskState | str | None = None,
        name: str | None = None,
        agent: AgentId | None = None,
        page_size: int | None = None,
    ) -> Iterator[Task]:
        """Every task :meth:`list_tasks` would list, walking the pages as they are consumed."""
        cursor: str | None = None
        while True:
            page = self.list_tasks(
                state=state, name=name, agent=agent, limit=page_size, cursor=cursor
            )
            yield from page.tasks
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def get_task(self, task_id: TaskId) -> Task:
        """The task, deleted ones included (``state`` says so) until they are purged."""
        return self._send(_base.get_task(task_id))

    def edit_task(self, task_id: TaskId, **changes: Any) -> Task:
        """Change some fields of the task (``command=``, ``frequency=``, ``timeout=``, …).

        Fields not given keep their value; ``None`` resets one to its default. ``env`` and
        ``targets`` are replaced whole. Agents get the new spec; a new frequency or time zone
        starts counting from now, and nothing fires for the slots passed.
        """
        return self._send(_base.edit_task(task_id, _base.task_options(**changes)))

    def delete_task(self, task_id: TaskId, *, purge: bool = False) -> Task | None:
        """Delete the task: agents stop it, its history stays readable (``state`` deleted).

        With ``purge=True`` the task and its history are gone, and ``None`` is returned.
        """
        return self._send(_base.delete_task(task_id, purge=purge))

    def pause_task(self, task_id: TaskId) -> Task:
        """Stop firing the task until :meth:`resume_task` (it stays on its agents)."""
        return self._send(_base.pause_task(task_id))

    def resume_task(self, task_id: TaskId) -> Task:
        """Fire the paused task again, from its next slot on (the slots passed are not run)."""
        return self._send(_base.resume_task(task_id))

    def run_task(self, task_id: TaskId) -> RunStarted:
        """Run the task now on every target (paused or not); its executions are ``manual``."""
        return self._send(_base.run_task(task_id))

    def runs(
        self,
        task_id: TaskId,
        *,
        status: RunStatus | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> RunList:
        """One page of the task's runs, newest first, each with its agents' outcomes."""
        return self._send(_base.runs(task_id, status=status, limit=limit, cursor=cursor))

    def executions(
        self,
        task_id: TaskId,
        *,
        agent: AgentId | None = None,
        status: ExecutionStatus | str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> ExecutionList:
        """One page of the task's executions (every attempt), newest first.

        ``since`` (inclusive) and ``until`` (exclusive) bound ``scheduled_at``.
        """
        return self._send(
            _base.executions(
                task_id,
                agent=agent,
                status=status,
                since=since,
                until=until,
                limit=limit,
                cursor=cursor,
            )
        )

    def latest_output(self, task_id: TaskId) -> LatestOutput:
        """The newest complete run of the task; ``completion_time`` is ``None`` before the first."""
        return self._send(_base.latest_output(task_id))

    def wait_for_output(
        self,
        task_id: TaskId,
        *,
        timeout: float = 60.0,
        poll_interval: float = 0.5,
        after: datetime | None = None,
    ) -> LatestOutput:
        """Poll until the task has a complete run (completed after ``after``, if given).

        Raises :class:`~.errors.OutputTimeout` when none comes within ``timeout`` seconds.
        """
        wait = OutputWait(task_id, timeout, poll_interval, after)
        deadline = time.monotonic() + timeout
        while True:
            output = self.latest_output(task_id)
            if wait.satisfied_by(output):
                return output
            pause = wait.pause(deadline - time.monotonic())
            if pause is None:
                raise wait.timed_out()
            time.sleep(pause)

    def follow_output(
        self, task_id: TaskId, *, poll_interval: float = 0.5, include_latest: bool = False
    ) -> Iterator[LatestOutput]:
        """Each run of the task as it completes, oldest first, polling every ``poll_interval``.

        Endless: stop iterating to stop. The run already complete when it starts is given only
        with ``include_latest=True``. Runs that complete between two polls but are not the
        newest are not given (poll faster than the task fires).
        """
        follow = OutputFollow(poll_interval, include_latest)
        while True:
            output = self.latest_output(task_id)
            if follow.is_new(output):
                yield output
            time.sleep(poll_interval)

    def agents(self, *, labels: Mapping[str, str] | None = None) -> list[Agent]:
        """The agents the server knows; with ``labels``, those that have all of them."""
        return self._send(_base.agents(labels))

    def agent(self, agent_id: AgentId) -> AgentDetail:
        """One agent, with its labels, status and the ids of the tasks it runs."""
        return self._send(_base.agent(agent_id))

    def health(self) -> bool:
        """Whether the server answers its health check; ``False`` if it cannot be reached."""
        try:
            return self._send(_base.health())
        except TransportError:
            return False

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _send(self, call: Call[T]) -> T:
        with translate_httpx_errors(self.url):
            response = self._http.request(
                call.method, call.path, json=call.body, params=call.params
            )
        return call.parse(response)


class AsyncClient(ClientBase):
    """The async twin of :class:`Client`, for trio or asyncio; close with ``async with``."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        ca_cert: PathLike | None = None,
        client_cert: PathLike | None = None,
        client_key: PathLike | None = None,
        token: str | None = None,
    ) -> None:
        super().__init__(url, timeout, token=token)
        self._http = httpx.AsyncClient(
            base_url=self.url,
            timeout=timeout,
            transport=transport,
            headers=self.headers,
            verify=ssl_context(ca_cert, client_cert, client_key),
        )

    async def create_task(
        self,
        command: str,
        frequency: str | Recurrence,
        *,
        name: str | None = None,
        timezone: str | None = None,
        timeout: Seconds | None = None,
        overlap: Overlap | str | None = None,
        starting_deadline: Seconds | None = None,
        targets: Targets | Mapping[str, Any] | None = None,
        target_agents: Iterable[AgentId] | None = None,
        target_labels: Mapping[str, str] | None = None,
        retries: int | None = None,
        retry_delay: Seconds | None = None,
        env: Mapping[str, str] | None = None,
        max_output_bytes: int | None = None,
    ) -> Task:
        """Create a task running ``command`` at ``frequency`` (``"every 30 seconds"``).

        Options left out take the server's defaults (docs/api.md); ``targets`` may also be given
        as ``target_agents=[ids]`` or ``target_labels={"role": "web"}`` (one of the three).
        """
        options = _base.task_options(
            name=name,
            timezone=timezone,
            timeout=timeout,
            overlap=overlap,
            starting_deadline=starting_deadline,
            targets=targets,
            target_agents=target_agents,
            target_labels=target_labels,
            retries=retries,
            retry_delay=retry_delay,
            env=env,
            max_output_bytes=max_output_bytes,
        )
        return await self._send(_base.create_task(command, frequency, options))

    async def list_tasks(
        self,
        *,
        state: TaskState | str | None = None,
        name: str | None = None,
        agent: AgentId | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> TaskList:
        """One page of tasks, oldest first; pass ``next_cursor`` back as ``cursor`` for the next.

        ``state`` is ``active``, ``paused``, ``deleted`` or ``all`` (default: not deleted);
        ``name`` matches a part of the name, any case; ``agent`` keeps the tasks it runs.
        """
        return await self._send(
            _base.list_tasks(state=state, name=name, agent=agent, limit=limit, cursor=cursor)
        )

    async def iter_tasks(
        self,
        *,
        state: TaskState | str | None = None,
        name: str | None = None,
        agent: AgentId | None = None,
        page_size: int | None = None,
    ) -> AsyncIterator[Task]:
        """Every task :meth:`list_tasks` would list, walking the pages as they are consumed."""
        cursor: str | None = None
        while True:
            page = await self.list_tasks(
                state=state, name=name, agent=agent, limit=page_size, cursor=cursor
            )
            for task in page.tasks:
                yield task
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def get_task(self, task_id: TaskId) -> Task:
        """The task, deleted ones included (``state`` says so) until they are purged."""
        return await self._send(_base.get_task(task_id))

    async def edit_task(self, task_id: TaskId, **changes: Any) -> Task:
        """Change some fields of the task (``command=``, ``frequency=``, ``timeout=``, …).

        Fields not given keep their value; ``None`` resets one to its default. ``env`` and
        ``targets`` are replaced whole. Agents get the new spec; a new frequency or time zone
        starts counting from now, and nothing fires for the slots passed.
        """
        return await self._send(_base.edit_task(task_id, _base.task_options(**changes)))

    async def delete_task(self, task_id: TaskId, *, purge: bool = False) -> Task | None:
        """Delete the task: agents stop it, its history stays readable (``state`` deleted).

        With ``purge=True`` the task and its history are gone, and ``None`` is returned.
        """
        return await self._send(_base.delete_task(task_id, purge=purge))

    async def pause_task(self, task_id: TaskId) -> Task:
        """Stop firing the task until :meth:`resume_task` (it stays on its agents)."""
        return await self._send(_base.pause_task(task_id))

    async def resume_task(self, task_id: TaskId) -> Task:
        """Fire the paused task again, from its next slot on (the slots passed are not run)."""
        return await self._send(_base.resume_task(task_id))

    async def run_task(self, task_id: TaskId) -> RunStarted:
        """Run the task now on every target (paused or not); its executions are ``manual``."""
        return await self._send(_base.run_task(task_id))

    async def runs(
        self,
        task_id: TaskId,
        *,
        status: RunStatus | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> RunList:
        """One page of the task's runs, newest first, each with its agents' outcomes."""
        return await self._send(_base.runs(task_id, status=status, limit=limit, cursor=cursor))

    async def executions(
        self,
        task_id: TaskId,
        *,
        agent: AgentId | None = None,
        status: ExecutionStatus | str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> ExecutionList:
        """One page of the task's executions (every attempt), newest first.

        ``since`` (inclusive) and ``until`` (exclusive) bound ``scheduled_at``.
        """
        return await self._send(
            _base.executions(
                task_id,
                agent=agent,
                status=status,
                since=since,
                until=until,
                limit=limit,
                cursor=cursor,
            )
        )

    async def latest_output(self, task_id: TaskId) -> LatestOutput:
        """The newest complete run of the task; ``completion_time`` is ``None`` before the first."""
        return await self._send(_base.latest_output(task_id))

    async def wait_for_output(
        self,
        task_id: TaskId,
        *,
        timeout: float = 60.0,
        poll_interval: float = 0.5,
        after: datetime | None = None,
    ) -> LatestOutput:
        """Poll until the task has a complete run (completed after ``after``, if given).

        Raises :class:`~.errors.OutputTimeout` when none comes within ``timeout`` seconds.
        """
        wait = OutputWait(task_id, timeout, poll_interval, after)
        # the event loop's clock, so that trio's mock clocks drive it too
        deadline = anyio.current_time() + timeout
        while True:
            output = await self.latest_output(task_id)
            if wait.satisfied_by(output):
                return output
            pause = wait.pause(deadline - anyio.current_time())
            if pause is None:
                raise wait.timed_out()
            await anyio.sleep(pause)

    async def follow_output(
        self, task_id: TaskId, *, poll_interval: float = 0.5, include_latest: bool = False
    ) -> AsyncIterator[LatestOutput]:
        """Each run of the task as it completes, oldest first, polling every ``poll_interval``.

        Endless: stop iterating to stop. The run already complete when it starts is given only
        with ``include_latest=True``. Runs that complete between two polls but are not the
        newest are not given (poll faster than the task fires).
        """
        follow = OutputFollow(poll_interval, include_latest)
        while True:
            output = await self.latest_output(task_id)
            if follow.is_new(output):
                yield output
            await anyio.sleep(poll_interval)

    async def agents(self, *, labels: Mapping[str, str] | None = None) -> list[Agent]:
        """The agents the server knows; with ``labels``, those that have all of them."""
        return await self._send(_base.agents(labels))

    async def agent(self, agent_id: AgentId) -> AgentDetail:
        """One agent, with its labels, status and the ids of the tasks it runs."""
        return await self._send(_base.agent(agent_id))

    async def health(self) -> bool:
        """Whether the server answers its health check; ``False`` if it cannot be reached."""
        try:
            return await self._send(_base.health())
        except TransportError:
            return False

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def _send(self, call: Call[T]) -> T:
        with translate_httpx_errors(self.url):
            response = await self._http.request(
                call.method, call.path, json=call.body, params=call.params
            )
        return call.parse(response)
