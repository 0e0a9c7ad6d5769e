"""Fan-out: seconds from ``POST /api/v1/tasks`` until every one of ``--agents`` agents has the task.

A real ``tsched up --agents N`` (the server and N agents in one process, as on a single host,
each agent on its own loopback port, state in a temporary directory) is started; once every
agent has registered, ``--tasks`` tasks (``every 1 hours``: nothing fires meanwhile) are created
one after another, each once the previous one reached every agent.

An agent has a task once it acknowledged the push, which it does only after it saved the task
to its state file; the server then records the assignment delivered, with the time the
acknowledgment came (``delivered_at``). Those times are read from the server's database
(read-only, beside it, every :data:`POLL_PAUSE`), so that watching costs the process under test
nothing: asking 50 agents over HTTP in a loop would take much of the CPU the fan-out needs.
Once all are delivered, every agent is asked (``GET /api/v1/tasks`` on the agent itself) and
must list the task. The time is from just before the create request to the last
``delivered_at`` (the clocks are the same: one host). Run it with::

    python -m benchmarks.fanout --agents 50 --tasks 10

With ``--processes``, a ``tsched server`` and one ``tsched agent`` process per agent instead,
as when the agents are on other hosts (here they share the machine's cores all the same).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from benchmarks.fire_precision import _free_port, _process, _wait
from benchmarks.report import Result, Size
from taskscheduler_client.layout import SERVER_DATABASE_NAME

#: Seconds between two looks at the server's database.
POLL_PAUSE = 0.005
#: The longest one task may take to reach every agent before the benchmark gives up.
TIMEOUT = 60.0


def _deliveries(database: Path, task_id: str) -> list[int]:
    """The ``delivered_at`` (microseconds since the epoch) of the task's delivered assignments."""
    with contextlib.closing(
        sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True, timeout=5.0)
    ) as connection:
        rows = connection.execute(
            "SELECT delivered_at FROM assignments WHERE task_id = ? AND delivered_at IS NOT NULL",
            (uuid.UUID(task_id).hex,),
        ).fetchall()
    return [moment for (moment,) in rows]


def _fan_out(client: httpx.Client, database: Path, agent_urls: list[str]) -> tuple[float, float]:
    """Create one task; seconds until the first and until the last agent acknowledged it."""
    began = time.time()
    created = client.post(
        "/api/v1/tasks", json={"command": "echo hello world", "frequency": "every 1 hours"}
    )
    created.raise_for_status()
    task_id = created.json()["id"]
    while len(delivered := _deliveries(database, task_id)) < len(agent_urls):
        if time.time() - began > TIMEOUT:
            raise TimeoutError(f"task {task_id} reached {len(delivered)} agents in {TIMEOUT} s")
        time.sleep(POLL_PAUSE)
    for url in agent_urls:
        listed = client.get(f"{url}/api/v1/tasks").json()["tasks"]
        if not any(task["task_id"] == task_id for task in listed):
            raise AssertionError(f"the agent at {url} was marked delivered but lacks {task_id}")
    return min(delivered) / 1e6 - began, max(delivered) / 1e6 - began


def _start(
    stack: contextlib.ExitStack, data: Path, port: int, agents: int, processes: bool
) -> None:
    """``tsched up`` (one process), or with ``processes`` a ``tsched server`` and one
    ``tsched agent`` process per agent."""
    if not processes:
        args = ["up", "--port", str(port), "--agents", str(agents), "--data-dir", str(data)]
        stack.enter_context(_process(args, data / "up.log"))
        return
    args = ["server", "--port", str(port), "--data-dir", str(data)]
    stack.enter_context(_process(args, data / "server.log"))
    for n in range(agents):
        agent_dir = data / "agents" / str(n)
        args = ["agent", "--port", str(_free_port()), "--data-dir", str(agent_dir)]
        args += ["--server", f"http://127.0.0.1:{port}"]
        stack.enter_context(_process(args, data / f"agent-{n}.log"))


def measure(agents: int, tasks: int, *, processes: bool = False) -> dict[str, Any]:
    port = _free_port()
    with tempfile.TemporaryDirectory() as temporary, contextlib.ExitStack() as stack:
        data = Path(temporary)
        database = data / SERVER_DATABASE_NAME
        _start(stack, data, port, agents, processes)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0) as client:
            _wait(
                lambda: len(client.get("/api/v1/agents").json()["agents"]) == agents,
                120,
                f"{agents} agents to register",
            )
            agent_urls = [agent["url"] for agent in client.get("/api/v1/agents").json()["agents"]]
            # One task first, not counted: the first push to each agent opens its connection.
            _fan_out(client, database, agent_urls)
            results = [_fan_out(client, database, agent_urls) for _ in range(tasks)]
    firsts = [first for first, _ in results]
    lasts = [last for _, last in results]
    return {
        "agents": agents,
        "agent_processes": agents if processes else 0,
        "tasks": tasks,
        "all_agents_p50_s": statistics.median(lasts),
        "all_agents_max_s": max(lasts),
        "first_agent_p50_s": statistics.median(firsts),
    }


#: (agents, tasks) by size.
SIZES: dict[Size, tuple[int, int]] = {
    "tiny": (3, 2),
    "quick": (10, 5),
    "full": (50, 10),
}


def run(size: Size) -> Result:
    figures = measure(*SIZES[size])
    return Result(
        title=(
            f"fan-out: create -> every one of {figures['agents']} agents has the task "
            f"(`tsched up`), {figures['tasks']} tasks one after another"
        ),
        columns=["agents", "tasks", "first agent p50 s", "all agents p50 s", "all agents max s"],
        rows=[
            [
                f"{figures['agents']}",
                f"{figures['tasks']}",
                f"{figures['first_agent_p50_s']:.3f}",
                f"{figures['all_agents_p50_s']:.3f}",
                f"{figures['all_agents_max_s']:.3f}",
            ]
        ],
        figures=figures,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--agents", type=int, default=50)
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument(
        "--processes",
        action="store_true",
        help="a `tsched server` and one `tsched agent` process per agent, not `tsched up`",
    )
    arguments = parser.parse_args()
    figures = measure(arguments.agents, arguments.tasks, processes=arguments.processes)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
