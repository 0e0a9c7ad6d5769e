"""Starting the services: the local stack in a trio loop, and ``tsched server`` / ``agent`` as
processes that print where they listen and stop cleanly on a signal.

(``tsched up`` as a process is covered by the end-to-end tests.)
"""

from __future__ import annotations

import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from taskscheduler_client import AsyncClient, Client
from taskscheduler_client.services import SERVER_DATABASE_NAME, failure_message, start_local_stack

#: Bound for waits that normally take a second or two.
WAIT = 20.0

TSCHED = [sys.executable, "-m", "taskscheduler_client"]


async def test_local_stack_runs_a_task_and_keeps_agent_ids_across_restarts(
    tmp_path: Path,
) -> None:
    async with trio.open_nursery() as nursery:
        stack = await start_local_stack(
            nursery, host="127.0.0.1", port=0, agents=1, data_dir=tmp_path
        )
        assert stack.database == tmp_path / SERVER_DATABASE_NAME
        assert stack.agent_dirs == (tmp_path / "agents" / "1",)
        async with AsyncClient(stack.server_url) as client:
            with trio.fail_after(WAIT):
                while not await client.agents():
                    await trio.sleep(0.05)
            task = await client.create_task("echo in-loop", "every 1 seconds")
            output = await client.wait_for_output(task.id, timeout=WAIT, poll_interval=0.05)
        assert [(o.agent_id, o.stdout) for o in output.outputs] == [
            (stack.agents[0].agent_id, "in-loop\n")
        ]
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        again = await start_local_stack(
            nursery, host="127.0.0.1", port=0, agents=1, data_dir=tmp_path
        )
        assert again.agents[0].agent_id == stack.agents[0].agent_id
        nursery.cancel_scope.cancel()


def test_failure_message_finds_the_users_problem_in_a_group() -> None:
    in_use = OSError(98, "address already in use")
    error = BaseExceptionGroup("services", [ExceptionGroup("inner", [in_use])])
    assert failure_message(error) == "[Errno 98] address already in use"
    assert failure_message(ExceptionGroup("bug", [KeyError("x")])) is None


# --- the commands as processes --------------------------------------------------------------------


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=WAIT)


def start(processes: list[subprocess.Popen[str]], *args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [*TSCHED, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    processes.append(process)
    return process


def first_line(process: subprocess.Popen[str]) -> str:
    """The first line the process prints, waiting at most ``WAIT`` seconds for it."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=WAIT):
            pytest.fail("the process printed nothing")
    return process.stdout.readline()


def stop(process: subprocess.Popen[str], signum: signal.Signals) -> tuple[int, str]:
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=WAIT)
    return process.returncode, stderr


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_server_prints_its_url_and_stops_cleanly(
    processes: list[subprocess.Popen[str]], tmp_path: Path, signum: signal.Signals
) -> None:
    server = start(processes, "server", "--port", "0", "--data-dir", str(tmp_path))

    line = first_line(server)
    assert line.startswith("server listening on http://127.0.0.1:")
    url = line.split()[3]
    with Client(url) as client:
        assert client.health()
    assert (tmp_path / SERVER_DATABASE_NAME).exists()

    returncode, stderr = stop(server, signum)
    assert returncode == 0, stderr
    assert "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1] == "stopped"


def test_agent_prints_its_id_and_url_and_stops_cleanly(
    processes: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    agent = start(processes, "agent", "--port", "0", "--data-dir", str(tmp_path))

    words = first_line(agent).split()
    assert words[0] == "agent"
    assert words[2:4] == ["listening", "on"]
    assert words[4].startswith("http://127.0.0.1:")

    returncode, stderr = stop(agent, signal.SIGINT)
    assert returncode == 0, stderr
    assert "Traceback" not in stderr


def test_a_port_in_use_is_one_line(processes: list[subprocess.Popen[str]], tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = start(processes, "server", "--port", str(port), "--data-dir", str(tmp_path))
        deadline = time.monotonic() + WAIT
        _, stderr = server.communicate(timeout=max(0.0, deadline - time.monotonic()))

    assert server.returncode == 1
    assert stderr.splitlines() == [stderr.strip()], stderr
    assert stderr.startswith(f"error: cannot run the server on 127.0.0.1:{port}: ")
