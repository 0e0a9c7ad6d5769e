"""Reads at scale: ``latest_output`` and history pages of a server holding 1,000,000 executions.

A real ``tsched server`` runs on a free loopback port over a SQLite file that holds ``--tasks``
tasks (``every 1 hours``, assigned to ``--agents`` agents, delivered) × ``--runs`` runs each, one
execution per agent per run printing ``hello world``, written in fire-time order as a live
server would have stored them. One client then asks, for ``--requests`` random tasks each:

- ``GET /api/v1/tasks/{id}/latest_output``
- ``GET /api/v1/tasks/{id}/executions?limit=20`` (the first page of the history)
- ``GET /api/v1/tasks/{id}/runs?limit=20``

(and ``GET /healthz``, which reads no database, for the floor: HTTP and the framework alone)
and reports the latency of each, as the client sees it (p50 / p99 / max), after a warm-up, and
the server's CPU time per request (``/proc/<pid>/stat``), which other load moves less. Every
answer is checked (the output, the page size): a fast wrong answer is not a figure.

The file is built once (the schema by the server's own :class:`~taskscheduler_server.store.Store`,
the rows by ``sqlite3`` ``executemany`` in one transaction) and cached in the temporary directory,
keyed by its size and the schema version; each run works on a copy, since the server writes to it
(agent liveness). Run it with::

    python -m benchmarks.reads --tasks 10000 --runs 100 --requests 2000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from benchmarks.fire_precision import _cpu_seconds, _free_port, _process, _wait, quantile
from benchmarks.report import Result, Size
from taskscheduler_core import Agent, Task, parse_recurrence, unstructure
from taskscheduler_server.store import SCHEMA_VERSION, Store, to_micros

COMMAND = "echo hello world"
OUTPUT = "hello world\n"
INTERVAL = timedelta(hours=1)
#: Bumped when the rows the fixture writes change, so that a stale cached file is not reused.
FIXTURE_VERSION = 2
#: A cached file older than this is built again: its runs must stay inside the server's default
#: retention (30 days), or the server would start pruning (writing) while it is measured.
MAX_FIXTURE_AGE = timedelta(days=7)
#: Where the fixture's agents "listen": a loopback port nothing listens on, so the server's
#: reconciler is refused at once instead of reaching anything.
AGENT_URL = "http://127.0.0.1:9"
#: The page size asked of both history listings.
PAGE = 20
#: Requests per endpoint before measuring: the first ones pay for imports and cold caches.
WARM_UP = 50
#: The server counts as settled once it uses less than this share of a CPU over a second.
QUIET_CPU = 0.05

#: What is asked; ``healthz`` (no database) is the floor: what HTTP and the framework take.
ENDPOINTS = ("healthz", "latest_output", "executions", "runs")


def fixture_path(tasks: int, runs: int, agents: int) -> Path:
    name = (
        f"tsched-bench-reads-s{SCHEMA_VERSION}-f{FIXTURE_VERSION}-{tasks}x{runs}x{agents}.sqlite3"
    )
    return Path(tempfile.gettempdir()) / name


def _task(index: int, *, tasks: int, runs: int, now: datetime) -> Task:
    # Anchored so that the last of the runs is an hour old, the tasks spread over one interval
    # (as tasks created at different times are): none of the runs is waiting for a report.
    anchor = now - (runs + 1) * INTERVAL - INTERVAL * index / tasks
    anchor = anchor.replace(microsecond=0)
    return Task(
        id=uuid.UUID(int=random.Random(index).getrandbits(128), version=4),
        command=COMMAND,
        frequency=parse_recurrence("every 1 hours"),
        anchor=anchor,
        created_at=anchor,
        updated_at=anchor,
        name=f"reads-{index}",
    )


def _task_row(task: Task) -> tuple[Any, ...]:
    """A ``tasks`` row as the store writes it (checked by :func:`_check` through the store)."""
    return (
        task.id.hex,
        task.command,
        str(task.frequency),
        to_micros(task.anchor),
        to_micros(task.created_at),
        None if task.updated_at is None else to_micros(task.updated_at),
        task.name,
        json.dumps(unstructure(task.policy()), sort_keys=True),
        json.dumps(unstructure(task.targets), sort_keys=True),
        0,
        None,
    )


def _execution_rows(
    task_list: list[Task], agent_ids: list[uuid.UUID], runs: int
) -> Iterator[tuple[Any, ...]]:
    """Every execution, in fire-time order: how a live server's table fills (a task's rows are
    spread over the whole table, not side by side)."""
    step = INTERVAL // timedelta(microseconds=1)
    anchors = [(task.id.hex, to_micros(task.anchor)) for task in task_list]
    agents = [agent_id.hex for agent_id in agent_ids]
    for k in range(1, runs + 1):
        for task_hex, anchor in anchors:
            scheduled = anchor + k * step
            for agent_hex in agents:
                started = scheduled + 5_000
                yield (
                    task_hex,
                    agent_hex,
                    scheduled,
                    started,
                    started + 3_000,
                    "succeeded",
                    0,
                    OUTPUT,
                    "",
                    0,
                    0,
                    1,
                    "schedule",
                    1,
                )


def build(path: Path, *, tasks: int, runs: int, agents: int, now: datetime) -> None:
    """Write the fixture to ``path`` (which must not exist)."""
    agent_ids = [
        uuid.UUID(int=random.Random(-1 - n).getrandbits(128), version=4) for n in range(agents)
    ]
    registered = now - (runs + 3) * INTERVAL
    with Store(path) as store:  # the real schema, and real agent rows
        for agent_id in agent_ids:
            store.upsert_agent(Agent(id=agent_id, url=AGENT_URL, registered_at=registered))
    task_list = [_task(index, tasks=tasks, runs=runs, now=now) for index in range(tasks)]
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        # A fixture: nothing to lose if the machine dies while it is written.
        connection.execute("PRAGMA synchronous = OFF")
        connection.execute("PRAGMA cache_size = -524288")  # 512 MiB: the indexes stay in memory
        connection.execute("BEGIN")
        connection.executemany(
            "INSERT INTO tasks (id, command, frequency, anchor, created_at, updated_at, name,"
            " policy, targets, paused, deleted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (_task_row(task) for task in task_list),
        )
        # Assigned when created, and delivered: nothing for the dispatcher to push.
        connection.executemany(
            "INSERT INTO assignments (task_id, agent_id, assigned_at, delivered_at, revision,"
            " unassigned_at) VALUES (?, ?, ?, ?, 0, NULL)",
            (
                (task.id.hex, agent_id.hex, to_micros(task.anchor), to_micros(task.anchor) + 1)
                for task in task_list
                for agent_id in agent_ids
            ),
        )
        connection.executemany(
            "INSERT INTO executions (task_id, agent_id, scheduled_at, started_at, finished_at,"
            " status, exit_code, stdout, stderr, stdout_dropped, stderr_dropped, attempt,"
            " trigger, final) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            _execution_rows(task_list, agent_ids, runs),
        )
        connection.execute("COMMIT")
        # No ANALYZE: a server's own file has no statistics, and its query plans are measured.
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()
    _check(path, task_list[0], agent_ids, runs)


def _check(path: Path, task: Task, agent_ids: list[uuid.UUID], runs: int) -> None:
    """Read the fixture back through the store: rows it could not read would be no benchmark."""
    with Store(path) as store:
        stored = store.get_task(task.id)
        if stored != task:
            raise AssertionError(f"the store reads the fixture's task as {stored!r}")
        executions = store.executions(task.id)
        if len(executions) != runs * len(agent_ids) or executions[-1].stdout != OUTPUT:
            raise AssertionError(f"the store reads {len(executions)} executions of {task.id}")
        if store.expected_agents(task.id, executions[-1].scheduled_at) != set(agent_ids):
            raise AssertionError("the fixture's assignments are not read as assigned")


def fixture(tasks: int, runs: int, agents: int) -> tuple[Path, list[str], float]:
    """The cached fixture (built if missing or stale), its task ids, and the seconds the build
    took (0 when cached)."""
    path = fixture_path(tasks, runs, agents)
    fresh = path.exists() and time.time() - path.stat().st_mtime < MAX_FIXTURE_AGE.total_seconds()
    took = 0.0
    if not fresh:
        # Built under a name of this process's own, then renamed at once: two runs at the same
        # time each build theirs, and neither ever reads a half-written file.
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        began = time.monotonic()
        try:
            build(partial, tasks=tasks, runs=runs, agents=agents, now=datetime.now(UTC))
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        finally:
            for companion in _companions(partial):
                companion.unlink(missing_ok=True)  # checkpointed: empty
        took = time.monotonic() - began
        partial.rename(path)
    with contextlib.closing(
        sqlite3.connect(f"{path.as_uri()}?mode=ro&immutable=1", uri=True)
    ) as connection:
        ids = [str(uuid.UUID(hex=row[0])) for row in connection.execute("SELECT id FROM tasks")]
    return path, ids, took


def _companions(path: Path) -> list[Path]:
    return [path.with_name(path.name + suffix) for suffix in ("-wal", "-shm")]


def _checker(endpoint: str, runs: int, agents: int) -> Callable[[dict[str, Any]], bool]:
    """Whether an answer of ``endpoint`` is the right one for the fixture."""
    if endpoint == "healthz":
        return lambda body: body == {"status": "ok"}
    if endpoint == "latest_output":
        return lambda body: (
            body["completion_time"] is not None
            and len(body["outputs"]) == agents
            and all(output["stdout"] == OUTPUT for output in body["outputs"])
        )
    if endpoint == "executions":
        executions = min(PAGE, runs * agents)
        return lambda body: (
            len(body["executions"]) == executions
            and all(execution["stdout"] == OUTPUT for execution in body["executions"])
        )
    shown = min(PAGE, runs)
    return lambda body: (
        len(body["runs"]) == shown and all(run["status"] == "succeeded" for run in body["runs"])
    )


def _path(endpoint: str, task_id: str) -> str:
    if endpoint == "healthz":
        return "/healthz"
    if endpoint == "latest_output":
        return f"/api/v1/tasks/{task_id}/latest_output"
    return f"/api/v1/tasks/{task_id}/{endpoint}?limit={PAGE}"


def _latencies(
    client: httpx.Client, endpoint: str, task_ids: list[str], count: int, runs: int, agents: int
) -> list[float]:
    """Seconds per request of ``count`` requests on random tasks; raises on a wrong answer."""
    right = _checker(endpoint, runs, agents)
    chooser = random.Random(endpoint)
    seconds = []
    for _ in range(count):
        path = _path(endpoint, chooser.choice(task_ids))
        began = time.perf_counter()
        response = client.get(path)
        seconds.append(time.perf_counter() - began)
        if response.status_code != 200 or not right(response.json()):
            raise AssertionError(f"GET {path}: {response.status_code} {response.text[:300]}")
    return seconds


def _settle(pid: int, timeout: float) -> float:
    """Wait until the server at ``pid`` is idle; the seconds it took.

    On start the server checks every task's history against the retention policy (10,000 store
    calls for 10,000 tasks): the reads are measured once that pass is over, at steady state.
    """
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        before = _cpu_seconds(pid)
        time.sleep(1.0)
        if _cpu_seconds(pid) - before < QUIET_CPU:
            break
    return time.monotonic() - began


def measure(tasks: int, runs: int, requests: int, agents: int = 1) -> dict[str, Any]:
    path, task_ids, build_s = fixture(tasks, runs, agents)
    port = _free_port()
    with tempfile.TemporaryDirectory() as temporary:
        data = Path(temporary)
        database = data / "server.sqlite3"
        shutil.copyfile(path, database)
        database.chmod(0o600)
        args = ["server", "--port", str(port), "--database", str(database)]
        with (
            _process(args, data / "server.log") as server,
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0) as client,
        ):
            _wait(lambda: client.get("/healthz").status_code == 200, 60, "the server")
            settled_s = _settle(server.pid, 120.0)
            figures: dict[str, Any] = {
                "tasks": tasks,
                "runs_per_task": runs,
                "agents": agents,
                "executions_stored": tasks * runs * agents,
                "requests": requests,
                "build_s": build_s,
                "settled_s": settled_s,
            }
            for endpoint in ENDPOINTS:
                _latencies(client, endpoint, task_ids, WARM_UP, runs, agents)
            for endpoint in ENDPOINTS:
                cpu = _cpu_seconds(server.pid)
                ordered = sorted(_latencies(client, endpoint, task_ids, requests, runs, agents))
                cpu = _cpu_seconds(server.pid) - cpu
                figures[endpoint] = {
                    "p50_ms": quantile(ordered, 0.50) * 1000,
                    "p99_ms": quantile(ordered, 0.99) * 1000,
                    "max_ms": ordered[-1] * 1000,
                    # What the server spent per request: unlike the latencies, hardly moved by
                    # other processes on the machine.
                    "server_cpu_ms": cpu / requests * 1000,
                }
    return figures


_LABELS = {
    "healthz": "/healthz (the floor)",
    "latest_output": "/api/v1/tasks/{id}/latest_output",
    "executions": f"/api/v1/tasks/{{id}}/executions?limit={PAGE}",
    "runs": f"/api/v1/tasks/{{id}}/runs?limit={PAGE}",
}

#: (tasks, runs, requests per endpoint) by size.
SIZES: dict[Size, tuple[int, int, int]] = {
    "tiny": (50, 10, 50),
    "quick": (1000, 100, 500),
    "full": (10_000, 100, 2000),
}


def run(size: Size) -> Result:
    figures = measure(*SIZES[size])
    rows = [
        [
            _LABELS[endpoint],
            f"{figures[endpoint]['p50_ms']:.2f}",
            f"{figures[endpoint]['p99_ms']:.2f}",
            f"{figures[endpoint]['max_ms']:.2f}",
            f"{figures[endpoint]['server_cpu_ms']:.2f}",
        ]
        for endpoint in ENDPOINTS
    ]
    return Result(
        title=(
            f"reads: {figures['executions_stored']:,} executions ({figures['tasks']:,} tasks × "
            f"{figures['runs_per_task']} runs × {figures['agents']} agent), {figures['requests']} "
            "requests each on random tasks, one client"
        ),
        columns=["GET", "p50 ms", "p99 ms", "max ms", "server CPU ms/request"],
        rows=rows,
        figures=figures,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--agents", type=int, default=1)
    parser.add_argument("--requests", type=int, default=2000, help="per endpoint")
    arguments = parser.parse_args()
    figures = measure(arguments.tasks, arguments.runs, arguments.requests, arguments.agents)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
