"""Seconds from ``create`` (``every 1 seconds``) to the first complete run, with 2 agents.

Starts a real ``tsched up`` on a free loopback port, creates ``--tasks`` tasks one after another,
and times each until ``latest_output`` shows a complete run. Run it with::

    python -m benchmarks.first_run --tasks 10
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.report import Result, Size


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait(condition: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():  # type: ignore[operator]
                return
        except httpx.TransportError:
            pass
        time.sleep(0.01)
    raise TimeoutError(f"gave up after {timeout} s")


def measure(tasks: int, agents: int = 2) -> dict[str, float]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    tsched = str(Path(sys.executable).parent / "tsched")
    with tempfile.TemporaryDirectory() as data:
        up = subprocess.Popen(
            [tsched, "up", "--port", str(port), "--agents", str(agents), "--data-dir", data],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            with httpx.Client(base_url=url, timeout=5.0) as client:
                _wait(lambda: len(client.get("/api/v1/agents").json()["agents"]) == agents, 30)
                seconds = []
                for _ in range(tasks):
                    started = time.monotonic()
                    created = client.post(
                        "/api/v1/tasks/create",
                        json={"command": "echo hello world", "frequency": "every 1 seconds"},
                    ).json()
                    path = f"/api/v1/tasks/{created['command_id']}/latest_output"
                    _wait(lambda p=path: client.get(p).json()["completion_time"], 30)
                    seconds.append(time.monotonic() - started)
        finally:
            up.send_signal(signal.SIGINT)
            up.wait(15)
    return {
        "tasks": tasks,
        "agents": agents,
        "p50_s": statistics.median(seconds),
        "max_s": max(seconds),
        "min_s": min(seconds),
    }


TASKS: dict[Size, int] = {"tiny": 1, "quick": 3, "full": 10}


def run(size: Size) -> Result:
    figures = measure(TASKS[size])
    return Result(
        title=f"create -> first complete run, {figures['agents']:.0f} agents, one task at a time",
        columns=["tasks", "min s", "p50 s", "max s"],
        rows=[
            [
                f"{figures['tasks']:.0f}",
                f"{figures['min_s']:.3f}",
                f"{figures['p50_s']:.3f}",
                f"{figures['max_s']:.3f}",
            ]
        ],
        figures=figures,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=10)
    parser.add_argument("--agents", type=int, default=2)
    args = parser.parse_args()
    figures = measure(args.tasks, args.agents)
    print(f"create -> first complete run, {figures['agents']} agents, {figures['tasks']} tasks")
    low, mid, high = figures["min_s"], figures["p50_s"], figures["max_s"]
    print(f"  min {low:.3f} s   p50 {mid:.3f} s   max {high:.3f} s")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
