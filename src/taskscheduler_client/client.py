"""The typed clients of the taskscheduler REST API: :class:`Client` and :class:`AsyncClient`.

They are twins: :mod:`._base` builds every request and reads every answer, and each twin only
sends (and sleeps, while waiting for output). Both return core models and raise the exceptions of
:mod:`.errors`::

    with Client("http://127.0.0.1:8080") as client:
        task = client.create_task("echo hello world", "every 30 seconds")
        output = client.wait_for_output(task.id)

:class:`AsyncClient` works under trio and asyncio alike (httpx and anyio adapt to the loop).
"""

from __future__ import annotations

import time
from datetime import datetime
from types import TracebackType
from typing import Self, TypeVar

import anyio
import httpx

from taskscheduler_core import Agent, Frequency, LatestOutput, Task

from . import _base
from ._base import DEFAULT_TIMEOUT, DEFAULT_URL, Call, ClientBase, OutputWait, TaskId
from ._tls import PathLike, ssl_context
from .errors import TransportError, translate_httpx_errors

T = TypeVar("T")


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

    def create_task(self, command: str, frequency: str | Frequency) -> Task:
        """Create a task running ``command`` at ``frequency`` (``"every 30 seconds"``)."""
        return self._send(_base.create_task(command, frequency))

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

    def agents(self) -> list[Agent]:
        """The agents the server knows."""
        return self._send(_base.agents())

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
            response = self._http.request(call.method, call.path, json=call.body)
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

    async def create_task(self, command: str, frequency: str | Frequency) -> Task:
        """Create a task running ``command`` at ``frequency`` (``"every 30 seconds"``)."""
        return await self._send(_base.create_task(command, frequency))

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

    async def agents(self) -> list[Agent]:
        """The agents the server knows."""
        return await self._send(_base.agents())

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
            response = await self._http.request(call.method, call.path, json=call.body)
        return call.parse(response)
