"""Fire precision: how late one agent starts N tasks ``every 1 seconds``, against APScheduler 3.

A real ``tsched server`` and one ``tsched agent --server`` run on free loopback ports with
temporary data directories. ``--tasks`` tasks running ``echo hello world`` are created through
the server's API; once the agent has them all, every execution scheduled in the next
``--seconds`` seconds is counted: lateness = ``started_at − scheduled_at`` (p50 / p99 / max)
and executions completed against expected (tasks × seconds), from the agent's own record (its
journal, read-only); how many of them the server has stored (``GET /tasks/{id}/executions``)
once the agent's outbox holds none of them, or after ``--drain`` seconds; and the agent's CPU
seconds (its own and its reaped children's, the shells, from ``/proc/<pid>/stat``) per 1,000
executions. Then ``benchmarks.apscheduler_fire``
does the same job in a subprocess, on the same machine in the same run. Run it with::

    python -m benchmarks.fire_precision --tasks 100 --seconds 30
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks.report import Result, Size
from taskscheduler_core import format_time, parse_time

TSCHED = str(Path(sys.executable).parent / "tsched")
COMMAND = "echo hello world"


def _free_port() -> int:
    # Below the kernel's ephemeral range, so no outgoing connection takes it before we bind it.
    for _ in range(200):
        port = random.randrange(10_000, 32_000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port found on 127.0.0.1")


def _wait(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if condition():
                return
        time.sleep(0.05)
    raise TimeoutError(f"gave up after {timeout} s waiting for {what}")


def _cpu_seconds(pid: int) -> float:
    """utime + stime + cutime + cstime of ``pid``: its own CPU and its reaped children's."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces; the fields after its closing ")" do not.
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = sum(int(field) for field in fields[11:15])  # fields 14–17 of proc(5)
    return ticks / os.sysconf("SC_CLK_TCK")


def quantile(ordered: list[float], q: float) -> float:
    """The nearest-rank quantile of an ascending list (nan when empty)."""
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def lateness_figures(lateness: list[float], expected: int) -> dict[str, float]:
    ordered = sorted(lateness)
    return {
        "expected": expected,
        "completed": len(ordered),
        "p50_ms": quantile(ordered, 0.50) * 1000,
        "p99_ms": quantile(ordered, 0.99) * 1000,
        "max_ms": (ordered[-1] if ordered else math.nan) * 1000,
    }


@contextlib.contextmanager
def _process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as output:
        process = subprocess.Popen(
            [TSCHED, *args], stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _agent_rows(data_dir: Path, sql: str, *parameters: str) -> list[sqlite3.Row]:
    """Rows of ``sql`` from the live agent's database, read-only beside its writer."""
    path = data_dir / "agent.sqlite3"
    for attempt in range(40):  # a writer's lock is brief; bounded retries
        try:
            with contextlib.closing(
                sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5.0)
            ) as connection:
                connection.row_factory = sqlite3.Row
                return connection.execute(sql, parameters).fetchall()
        except sqlite3.OperationalError:
            if attempt == 39:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


def _journaled_lateness(data_dir: Path, since: str, until: str) -> tuple[list[float], int]:
    """``started_at − scheduled_at`` of every execution the agent recorded as succeeded in the
    window, and how many it recorded otherwise (skipped, missed, failed).

    The agent's journal, not the server's store: the server may still be receiving the
    window's reports long after it (see ``stored``), and the times are the agent's either way.
    """
    rows = _agent_rows(
        data_dir,
        "SELECT scheduled_at, started_at, status FROM journal"
        " WHERE scheduled_at >= ? AND scheduled_at < ?",
        since,
        until,
    )
    lateness = [
        (parse_time(row["started_at"]) - parse_time(row["scheduled_at"])).total_seconds()
        for row in rows
        if row["status"] == "succeeded"
    ]
    return lateness, len(rows) - len(lateness)


def _unreported(data_dir: Path, until: str) -> int:
    """Reports of executions scheduled before ``until`` still in the agent's outbox."""
    rows = _agent_rows(data_dir, "SELECT count(*) AS n FROM outbox WHERE scheduled_at < ?", until)
    return int(rows[0]["n"])


def _stored(client: httpx.Client, task_ids: list[str], since: str, until: str) -> int:
    """Executions in the window the server has stored (``GET /tasks/{id}/executions``)."""
    stored = 0
    for task_id in task_ids:
        cursor: str | None = None
        for _ in range(1000):  # pages; bounded
            params = {"since": since, "until": until, "limit": "1000"}
            if cursor:
                params["cursor"] = cursor
            page = client.get(f"/api/v1/tasks/{task_id}/executions", params=params)
            page.raise_for_status()
            body = page.json()
            stored += len(body["executions"])
            cursor = body.get("next_cursor")
            if not cursor:
                break
    return stored


def measure_ours(tasks: int, seconds: int, drain: float) -> dict[str, float]:
    """Our agent's figures; ``drain``: how long to wait for the window's reports to arrive."""
    server_port, agent_port = _free_port(), _free_port()
    url = f"http://127.0.0.1:{server_port}"
    with tempfile.TemporaryDirectory() as temporary:
        data = Path(temporary)
        agent_data = data / "agent"
        server_args = ["server", "--port", str(server_port), "--data-dir", str(data / "server")]
        agent_args = ["agent", "--port", str(agent_port), "--data-dir", str(agent_data)]
        with (
            _process(server_args, data / "server.log") as server,
            httpx.Client(base_url=url, timeout=30.0) as client,
        ):
            _wait(lambda: client.get("/healthz").status_code == 200, 30, "the server")
            with _process([*agent_args, "--server", url], data / "agent.log") as agent:
                _wait(lambda: client.get("/api/v1/agents").json()["agents"], 30, "the agent")
                agent_id = client.get("/api/v1/agents").json()["agents"][0]["id"]
                task_ids = []
                for _ in range(tasks):
                    created = client.post(
                        "/api/v1/tasks",
                        json={"command": COMMAND, "frequency": "every 1 seconds"},
                    )
                    created.raise_for_status()
                    task_ids.append(created.json()["id"])
                _wait(
                    lambda: len(client.get(f"/api/v1/agents/{agent_id}").json()["tasks"]) == tasks,
                    60,
                    "the server to assign every task",
                )

                # The agent's own word (its state file), not the server's: a task the agent
                # received late would miss its first fire times and count as dropped. An agent
                # past its capacity may take long to accept them all while the first ones run:
                # the window then starts anyway, and the figures say how many it had.
                def on_agent() -> int:
                    rows = _agent_rows(agent_data, "SELECT count(*) AS n FROM schedules")
                    return int(rows[0]["n"])

                with contextlib.suppress(TimeoutError):
                    _wait(lambda: on_agent() == tasks, 120, "the agent to have every task")
                scheduled = on_agent()
                # Every task was created (anchored) before now, so each fires exactly once per
                # second from a second from now on: D times in the D-second window.
                window_start = time.time() + 1.0
                time.sleep(window_start - time.time())
                agent_cpu, server_cpu = _cpu_seconds(agent.pid), _cpu_seconds(server.pid)
                time.sleep(window_start + seconds - time.time())
                agent_cpu = _cpu_seconds(agent.pid) - agent_cpu
                server_cpu = _cpu_seconds(server.pid) - server_cpu
                since = format_time(datetime.fromtimestamp(window_start, UTC))
                until = format_time(datetime.fromtimestamp(window_start + seconds, UTC))
                # The window's last commands are still running; then their reports travel.
                time.sleep(1.0)
                drain_end = time.monotonic() + drain
                while _unreported(agent_data, until) and time.monotonic() < drain_end:
                    time.sleep(0.5)
                lateness, not_succeeded = _journaled_lateness(agent_data, since, until)
                stored = _stored(client, task_ids, since, until)
    figures = lateness_figures(lateness, tasks * seconds)
    figures["recorded_not_succeeded"] = not_succeeded
    figures["tasks_on_agent"] = scheduled
    completed = max(1, len(lateness))
    figures["stored_by_server"] = stored
    figures["agent_cpu_s_per_1000"] = agent_cpu / completed * 1000
    figures["server_cpu_s_per_1000"] = server_cpu / completed * 1000
    return figures


def measure_apscheduler(tasks: int, seconds: int) -> dict[str, float]:
    finished = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.apscheduler_fire",
            "--tasks",
            str(tasks),
            "--seconds",
            str(seconds),
        ],
        capture_output=True,
        check=True,
        timeout=seconds + 120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    body: dict[str, Any] = json.loads(finished.stdout)
    lateness: list[float] = body["lateness_s"]
    figures = lateness_figures(lateness, tasks * seconds)
    figures["missed"] = body["missed"]
    figures["cpu_s_per_1000"] = body["cpu_s"] / max(1, len(lateness)) * 1000
    return figures


def measure(tasks: int, seconds: int, drain: float = 30.0) -> dict[str, Any]:
    ours = measure_ours(tasks, seconds, drain)
    theirs = measure_apscheduler(tasks, seconds)
    return {
        "tasks": tasks,
        "seconds": seconds,
        "tsched": ours,
        "apscheduler": theirs,
        "p99_ratio": theirs["p99_ms"] / ours["p99_ms"] if ours["p99_ms"] > 0 else math.nan,
    }


#: (tasks, seconds, seconds to wait for the window's reports to reach the server) by size.
SIZES: dict[Size, list[tuple[int, int, float]]] = {
    "tiny": [(5, 1, 3.0)],
    "quick": [(20, 3, 10.0)],
    "full": [(100, 30, 30.0), (1000, 30, 30.0)],
}


def run(size: Size) -> Result:
    cases = [measure(*case) for case in SIZES[size]]
    rows = []
    for case in cases:
        for name in ("tsched", "apscheduler"):
            figures = case[name]
            cpu = figures.get("agent_cpu_s_per_1000", figures.get("cpu_s_per_1000", math.nan))
            rows.append(
                [
                    f"{name}, {case['tasks']} tasks × {case['seconds']} s",
                    f"{figures['completed']:.0f} / {figures['expected']:.0f}",
                    f"{figures['stored_by_server']:.0f}" if name == "tsched" else "",
                    f"{figures['p50_ms']:.2f}",
                    f"{figures['p99_ms']:.2f}",
                    f"{figures['max_ms']:.2f}",
                    f"{cpu:.3f}",
                    f"{case['p99_ratio']:.2f}×" if name == "apscheduler" else "",
                ]
            )
    return Result(
        title="fire precision: lateness (start − scheduled) of tasks every 1 s running echo",
        columns=[
            "scheduler",
            "done / expected",
            "stored",
            "p50 ms",
            "p99 ms",
            "max ms",
            "CPU s/1000",
            "p99 ratio",
        ],
        rows=rows,
        figures={f"{case['tasks']}_tasks": case for case in cases},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--drain", type=float, default=30.0, help="wait for reports this long")
    arguments = parser.parse_args()
    print(json.dumps(measure(arguments.tasks, arguments.seconds, arguments.drain), indent=2))


if __name__ == "__main__":
    main()
