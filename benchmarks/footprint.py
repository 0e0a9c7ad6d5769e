"""Agent footprint: resident memory and idle CPU of one agent holding ``--tasks`` tasks.

A real standalone ``tsched agent`` (no server, its own temporary data directory) runs on a free
loopback port; ``--tasks`` tasks ``every 1 hours`` running ``echo hello world`` are scheduled
through its own API (``POST /api/v1/tasks/schedule``, as the server pushes them), so that none
fires during the measurement: the agent is idle. Then, over ``--seconds`` seconds, its CPU use
(``utime + stime`` from ``/proc/<pid>/stat``) and its resident memory at the end (``VmRSS``, and
the peak ``VmHWM``, from ``/proc/<pid>/status``); the resident memory with no task is measured
first, for the cost of one task. Run it with::

    python -m benchmarks.footprint --tasks 10000 --seconds 30
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from benchmarks.fire_precision import _free_port, _process, _wait
from benchmarks.report import Result, Size

COMMAND = "echo hello world"
FREQUENCY = "every 1 hours"
#: Clients scheduling at once: the agent writes each task to its state file before it answers,
#: so a few requests in flight keep it busy rather than waiting on one round trip at a time.
SCHEDULERS = 4
#: Seconds the agent is left alone after it starts, and after the last task before the window
#: starts (its last writes, and the first garbage collections after the load).
SETTLE = 2.0


def _status_kib(pid: int, field: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` (``VmRSS``, ``VmHWM``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def _own_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (its own CPU, not its children's: an idle agent has none)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _schedule(client: httpx.Client, task_ids: list[str]) -> None:
    for task_id in task_ids:
        response = client.post(
            "/api/v1/tasks/schedule",
            json={"task_id": task_id, "command": COMMAND, "frequency": FREQUENCY},
        )
        response.raise_for_status()


def measure(tasks: int, seconds: float, settle: float = SETTLE) -> dict[str, Any]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as temporary:
        data = Path(temporary)
        args = ["agent", "--port", str(port), "--data-dir", str(data / "agent")]
        with _process(args, data / "agent.log") as agent:
            with httpx.Client(base_url=url, timeout=30.0) as client:
                _wait(lambda: client.get("/healthz").status_code == 200, 30, "the agent")
                time.sleep(settle)
                empty_kib = _status_kib(agent.pid, "VmRSS")
                task_ids = [str(uuid.uuid4()) for _ in range(tasks)]
                shares = [task_ids[index::SCHEDULERS] for index in range(SCHEDULERS)]
                began = time.monotonic()
                with ThreadPoolExecutor(SCHEDULERS) as pool:
                    clients = [httpx.Client(base_url=url, timeout=30.0) for _ in range(SCHEDULERS)]
                    try:
                        list(pool.map(_schedule, clients, shares))
                    finally:
                        for each in clients:
                            each.close()
                schedule_s = time.monotonic() - began
                listed = client.get("/api/v1/tasks").json()["tasks"]
                if len(listed) != tasks:
                    raise AssertionError(f"the agent lists {len(listed)} tasks, not {tasks}")
            time.sleep(settle)
            cpu = _own_cpu_seconds(agent.pid)
            window = time.monotonic()
            time.sleep(seconds)
            cpu = _own_cpu_seconds(agent.pid) - cpu
            window = time.monotonic() - window
            rss_kib = _status_kib(agent.pid, "VmRSS")
            peak_kib = _status_kib(agent.pid, "VmHWM")
    return {
        "tasks": tasks,
        "seconds": window,
        "rss_mb": rss_kib / 1024,
        "peak_rss_mb": peak_kib / 1024,
        "empty_rss_mb": empty_kib / 1024,
        "bytes_per_task": (rss_kib - empty_kib) * 1024 / max(1, tasks),
        "idle_cpu_percent": cpu / window * 100,
        "schedule_per_second": tasks / schedule_s,
    }


#: (tasks, seconds measured, seconds to settle) by size.
SIZES: dict[Size, tuple[int, float, float]] = {
    "tiny": (200, 1.0, 0.5),
    "quick": (2000, 5.0, SETTLE),
    "full": (10_000, 30.0, SETTLE),
}


def run(size: Size) -> Result:
    figures = measure(*SIZES[size])
    return Result(
        title=(
            f"agent footprint: {figures['tasks']:,} tasks `{FREQUENCY}` on one standalone "
            f"agent, idle for {figures['seconds']:.0f} s"
        ),
        columns=[
            "tasks",
            "RSS MB",
            "peak RSS MB",
            "RSS empty MB",
            "bytes/task",
            "idle CPU %",
            "scheduled/s",
        ],
        rows=[
            [
                f"{figures['tasks']:,}",
                f"{figures['rss_mb']:.1f}",
                f"{figures['peak_rss_mb']:.1f}",
                f"{figures['empty_rss_mb']:.1f}",
                f"{figures['bytes_per_task']:,.0f}",
                f"{figures['idle_cpu_percent']:.2f}",
                f"{figures['schedule_per_second']:,.0f}",
            ]
        ],
        figures=figures,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=30.0)
    arguments = parser.parse_args()
    print(json.dumps(measure(arguments.tasks, arguments.seconds), indent=2))


if __name__ == "__main__":
    main()
