"""APScheduler 3.x doing the fire-precision job, for comparison: prints its lateness as JSON.

``--tasks`` interval jobs of 1 s each run ``/bin/sh -c 'echo hello world'`` through
``subprocess.run`` on a ``BackgroundScheduler`` with its defaults (a thread pool of 10,
``coalesce=True``, ``misfire_grace_time=1``: a run later than 1 s is skipped and counted as
missed). The jobs' first runs are spread evenly over one second, like tasks created one after
another. Every run scheduled in the ``--seconds`` window after a one-second warm-up is counted.
Run it with::

    python -m benchmarks.apscheduler_fire --tasks 100 --seconds 30
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.events import EVENT_JOB_MISSED, JobExecutionEvent
from apscheduler.schedulers.background import BackgroundScheduler

COMMAND = ["/bin/sh", "-c", "echo hello world"]


def _scheduled_time() -> datetime:
    # APScheduler 3 does not hand a job its scheduled time, but its ``run_job`` (the caller)
    # holds it in the local ``run_time``: exact, where recomputing it from the trigger would
    # be ambiguous for a run more than one interval late.
    caller = sys._getframe(2)
    run_time = caller.f_locals.get("run_time")
    if not isinstance(run_time, datetime):
        raise RuntimeError("APScheduler's run_job no longer has a run_time local")
    return run_time


def _cpu_seconds() -> float:
    """This process's CPU time and its reaped children's (the shells)."""
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


def measure(tasks: int, seconds: int) -> dict[str, Any]:
    lock = threading.Lock()
    lateness: list[float] = []
    missed = 0
    base = datetime.now(UTC) + timedelta(seconds=1)
    window_start = base + timedelta(seconds=1)
    window_end = window_start + timedelta(seconds=seconds)

    def in_window(moment: datetime) -> bool:
        return window_start <= moment < window_end

    def job() -> None:
        started = datetime.now(UTC)
        scheduled = _scheduled_time()
        subprocess.run(COMMAND, capture_output=True, check=False)
        if in_window(scheduled):
            with lock:
                lateness.append((started - scheduled).total_seconds())

    def on_missed(event: JobExecutionEvent) -> None:
        nonlocal missed
        if in_window(event.scheduled_run_time):
            with lock:
                missed += 1

    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_listener(on_missed, EVENT_JOB_MISSED)
    for index in range(tasks):
        scheduler.add_job(
            job,
            "interval",
            seconds=1,
            start_date=base + timedelta(seconds=index / tasks),
            id=str(index),
        )
    cpu_before = _cpu_seconds()
    scheduler.start()
    time.sleep(max(0.0, (window_end - datetime.now(UTC)).total_seconds()) + 1.5)
    scheduler.shutdown(wait=True)
    cpu = _cpu_seconds() - cpu_before
    with lock:
        return {"lateness_s": sorted(lateness), "missed": missed, "cpu_s": cpu}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--seconds", type=int, default=30)
    arguments = parser.parse_args()
    print(json.dumps(measure(arguments.tasks, arguments.seconds)))


if __name__ == "__main__":
    main()
