"""Running the server and agents inside this process, for ``tsched server``, ``agent`` and ``up``.

The server and agent packages are imported only here, and only when a service is started, so
the client and the other commands never load hypercorn, Starlette or peewee.

A service runs until SIGINT or SIGTERM. The first signal stops the agents gracefully (each
lets its running commands finish for its ``kill_grace``, then kills and records them), then
cancels the nursery that owns every service, so each one shuts down through trio's cancellation
rather than a ``KeyboardInterrupt`` thrown into whatever code happened to be running. A second
signal cancels at once, without waiting for the agents' commands (they are killed, and recorded
as interrupted when the agent starts again).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import attrs
import trio

from .layout import SERVER_DATABASE_NAME

if TYPE_CHECKING:
    from taskscheduler_agent import AgentConfig, AgentStarted
    from taskscheduler_server import ServerConfig

#: The server's SQLite file inside a data directory.


@attrs.frozen(kw_only=True)
class LocalStack:
    """Where ``tsched up`` put everything."""

    server_url: str
    database: Path
    agents: tuple[AgentStarted, ...]
    agent_dirs: tuple[Path, ...]


async def start_server(nursery: trio.Nursery, config: ServerConfig) -> str:
    """Start the server in ``nursery``; its base URL once it listens."""
    from taskscheduler_server import serve

    if not isinstance(config.database, str):  # a SQLite file (a PostgreSQL URL is a str)
        config.database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    url: str = await nursery.start(serve, config)
    return url


async def start_agent(nursery: trio.Nursery, config: AgentConfig) -> AgentStarted:
    """Start an agent in ``nursery``; its id and URL once it listens.

    Under :func:`run_until_stopped` the first signal stops it gracefully.
    """
    from taskscheduler_agent import run_agent

    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    shutdown = trio.Event()
    stopped = trio.Event()

    async def run(*, task_status: trio.TaskStatus[AgentStarted]) -> None:
        try:
            await run_agent(config, shutdown=shutdown, task_status=task_status)
        finally:
            stopped.set()

    started: AgentStarted = await nursery.start(run)

    async def stop() -> None:
        shutdown.set()
        await stopped.wait()

    _graceful_stops().append(stop)
    return started


#: What the first signal runs (concurrently) before cancelling every service: one per agent
#: started in this ``trio.run``.
_GRACEFUL_STOPS: trio.lowlevel.RunVar[list[Callable[[], Awaitable[None]]]] = trio.lowlevel.RunVar(
    "graceful_stops"
)


def _graceful_stops() -> list[Callable[[], Awaitable[None]]]:
    try:
        return _GRACEFUL_STOPS.get()
    except LookupError:
        stops: list[Callable[[], Awaitable[None]]] = []
        _GRACEFUL_STOPS.set(stops)
        return stops


async def start_local_stack(
    nursery: trio.Nursery, *, host: str, port: int, agents: int, data_dir: Path
) -> LocalStack:
    """Start a server on ``host:port`` and ``agents`` agents on free ports, all in ``nursery``.

    The server keeps its SQLite database in ``data_dir``; agent n keeps its state (and so its
    id) in ``data_dir/agents/n``, and registers itself with the server.
    """
    from taskscheduler_agent import AgentConfig
    from taskscheduler_server import ServerConfig

    database = data_dir / SERVER_DATABASE_NAME
    server_url = await start_server(
        nursery, ServerConfig(host=host, port=port, database=database, available_agents=())
    )
    agent_dirs = tuple(data_dir / "agents" / str(n) for n in range(1, agents + 1))
    started = [
        await start_agent(
            nursery, AgentConfig(host=host, port=0, data_dir=agent_dir, server_url=server_url)
        )
        for agent_dir in agent_dirs
    ]
    return LocalStack(
        server_url=server_url, database=database, agents=tuple(started), agent_dirs=agent_dirs
    )


def run_until_stopped(start: Callable[[trio.Nursery], Awaitable[None]]) -> None:
    """Run ``trio.run``: call ``start(nursery)``, then serve until SIGINT or SIGTERM.

    Returns normally when stopped by a signal. A service that fails raises out of here (in an
    exception group); :func:`failure_message` says whether that is the user's to fix.
    """
    # a Ctrl-C before the signal receiver is installed means the same: stop
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(_serve_until_signalled, start)


async def _serve_until_signalled(start: Callable[[trio.Nursery], Awaitable[None]]) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_on_signal, signals, nursery.cancel_scope)
            await start(nursery)


async def _cancel_on_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    await _next_signal(signals)
    # The first signal: stop the agents gracefully; a second one cuts that short.
    with trio.CancelScope() as graceful:
        async with trio.open_nursery() as nursery:

            async def cut_short() -> None:
                await _next_signal(signals)
                graceful.cancel()

            nursery.start_soon(cut_short)
            async with trio.open_nursery() as stopping:
                for stop in _graceful_stops():
                    stopping.start_soon(stop)
            nursery.cancel_scope.cancel()
    scope.cancel()


async def _next_signal(signals: AsyncIterator[int]) -> None:
    async for _ in signals:
        return


def failure_message(error: BaseException) -> str | None:
    """One line about a failure the user can act on (a port in use, an unwritable file), or
    ``None`` for anything else: a bug, whose traceback should be shown."""
    from taskscheduler_core import TaskSchedulerError

    for leaf in _leaves(error):
        if isinstance(leaf, OSError | TaskSchedulerError):
            return str(leaf) or type(leaf).__name__
    return None


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error
