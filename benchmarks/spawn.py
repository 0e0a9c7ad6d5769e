"""The physical ceiling of one agent: ``echo hello world`` processes spawned and reaped per second.

Like the agent's runner, each is ``/bin/sh -c <command>`` in its own process group with stdout
and stderr captured, for ``--seconds``: one after another from one thread, then from as many
threads as the machine has cores (what an agent, whose spawns run in worker threads, can reach
at best), with the CPU the shells themselves take. Run it with::

    python -m benchmarks.spawn --seconds 5
"""

from __future__ import annotations

import argparse
import os
import subprocess
import threading
import time

from benchmarks.report import Result, Size

COMMAND = "echo hello world"


def _spawn_until(deadline: float) -> int:
    spawned = 0
    while time.perf_counter() < deadline:
        subprocess.run(
            ["/bin/sh", "-c", COMMAND], capture_output=True, check=True, start_new_session=True
        )
        spawned += 1
    return spawned


def _children_cpu() -> float:
    times = os.times()
    return times.children_user + times.children_system


def measure(seconds: float) -> dict[str, float]:
    figures: dict[str, float] = {}
    threads = os.cpu_count() or 1
    for name, workers in (("one_thread", 1), (f"{threads}_threads", threads)):
        counts: list[int] = []
        children = _children_cpu()
        began = time.perf_counter()
        deadline = began + seconds

        def work(counts: list[int] = counts, deadline: float = deadline) -> None:
            counts.append(_spawn_until(deadline))

        pool = [threading.Thread(target=work) for _ in range(workers)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
        took = time.perf_counter() - began
        spawned = sum(counts)
        figures[f"{name}_per_second"] = spawned / took
        figures[f"{name}_shell_cpu_ms"] = (_children_cpu() - children) / max(1, spawned) * 1000
    figures["seconds"] = seconds
    figures["threads"] = threads
    return figures


SECONDS: dict[Size, float] = {"tiny": 0.3, "quick": 1.0, "full": 5.0}


def run(size: Size) -> Result:
    figures = measure(SECONDS[size])
    threads = int(figures["threads"])
    return Result(
        title=f"spawn ceiling: `/bin/sh -c '{COMMAND}'` spawned and reaped",
        columns=["spawning from", "per second", "CPU of each shell"],
        rows=[
            [
                "1 thread",
                f"{figures['one_thread_per_second']:,.0f}",
                f"{figures['one_thread_shell_cpu_ms']:.2f} ms",
            ],
            [
                f"{threads} threads",
                f"{figures[f'{threads}_threads_per_second']:,.0f}",
                f"{figures[f'{threads}_threads_shell_cpu_ms']:.2f} ms",
            ],
        ],
        figures=figures,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0)
    arguments = parser.parse_args()
    print(measure(arguments.seconds))


if __name__ == "__main__":
    main()
