"""Fixtures for the client tests: a real server with real agents on 127.0.0.1.

``stack`` runs ``tsched up``'s stack (server + two agents, SQLite and agent state in a temporary
directory) in a background thread with its own trio loop, once for the session, so that blocking
clients, asyncio and trio tests all talk to it over real HTTP.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from taskscheduler_client import Client
from taskscheduler_client.services import LocalStack, start_local_stack

#: Generous bound for anything that should take a second or two; only reached on failure.
WAIT = 20.0


def _run_stack(data_dir: Path, agents: int) -> Iterator[LocalStack]:
    Started = tuple[LocalStack, trio.lowlevel.TrioToken, trio.CancelScope]
    handoff: queue.Queue[Started | BaseException] = queue.Queue()

    async def main() -> None:
        try:
            async with trio.open_nursery() as nursery:
                stack = await start_local_stack(
                    nursery, host="127.0.0.1", port=0, agents=agents, data_dir=data_dir
                )
                handoff.put((stack, trio.lowlevel.current_trio_token(), nursery.cancel_scope))
        except BaseException as error:
            handoff.put(error)
            raise

    thread = threading.Thread(target=trio.run, args=(main,), name="tsched-stack", daemon=True)
    thread.start()
    started = handoff.get(timeout=WAIT)
    if isinstance(started, BaseException):
        raise started
    stack, token, scope = started
    try:
        _wait_until_registered(stack)
        yield stack
    finally:
        trio.from_thread.run_sync(scope.cancel, trio_token=token)
        thread.join(timeout=WAIT)


def _wait_until_registered(stack: LocalStack) -> None:
    # agents register in the background; a task created before that would not reach them
    expected = {started.agent_id for started in stack.agents}
    deadline = time.monotonic() + WAIT
    with Client(stack.server_url) as client:
        while {agent.id for agent in client.agents()} < expected:
            assert time.monotonic() < deadline, "the agents never registered"
            time.sleep(0.05)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A server and two agents, shared by the whole session."""
    yield from _run_stack(tmp_path_factory.mktemp("stack"), agents=2)


@pytest.fixture(scope="session")
def server_url(stack: LocalStack) -> str:
    return stack.server_url


@pytest.fixture
def closed_port_url() -> str:
    """A URL where nothing listens: connecting is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A URL that accepts connections (the kernel's backlog does) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture(autouse=True)
def _tasks_stop_after_the_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Delete what a test left running on the shared stack once it is done: its agents would
    otherwise go on running each task (``every 1 seconds``, most of them) for the rest of the
    session, a load on the 2 cores every later test shares. (Deleted, not purged: a test's
    history stays readable, and what a later test creates is its own.)"""
    yield
    if "server_url" not in request.fixturenames and "stack" not in request.fixturenames:
        return
    stack: LocalStack = request.getfixturevalue("stack")
    with Client(stack.server_url) as client:
        for task in client.iter_tasks():
            client.delete_task(task.id)
