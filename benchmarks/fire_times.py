"""What a fire time costs: the core's next-fire computation and the agent scheduler's poll.

Pure CPU, no I/O: it times ``next_fire_after`` for an interval and for cron expressions in
several time zones, and simulated hours of an agent with ``--tasks`` tasks (a third every
10 seconds, a third ``*/1 * * * *`` in Europe/Paris, a third ``@hourly`` in America/New_York)
driven through ``Scheduler.poll``. Run it with::

    python -m benchmarks.fire_times --tasks 1000
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import UTC, datetime, timedelta

from benchmarks.report import Result, Size
from taskscheduler_core import Scheduler, StartExecution, TaskSpec
from taskscheduler_core.firetimes import next_fire_after, parse_recurrence

START = datetime(2026, 3, 29, 0, 30, tzinfo=UTC)  # Europe's spring-forward change is at 01:00

CASES = [
    ("every 10 seconds", "UTC"),
    ("*/5 * * * *", "UTC"),
    ("*/5 * * * *", "Europe/Paris"),
    ("30 2 * * *", "Europe/Paris"),
    ("0 9 * * 1-5", "America/New_York"),
]


def time_next_fire(calls: int) -> dict[str, float]:
    """µs per ``next_fire_after`` call, by case (``"<frequency> in <zone>"``)."""
    figures = {}
    for text, zone in CASES:
        recurrence = parse_recurrence(text)
        moment = START
        began = time.perf_counter()
        for _ in range(calls):
            moment = next_fire_after(recurrence, anchor=START, timezone=zone, moment=moment)
        figures[f"{text} in {zone}"] = (time.perf_counter() - began) / calls * 1e6
    return figures


def time_agent_day(count: int, hours: float) -> dict[str, float]:
    kinds = [
        ("every 10 seconds", "UTC"),
        ("*/1 * * * *", "Europe/Paris"),
        ("@hourly", "America/New_York"),
    ]
    scheduler = Scheduler()
    for index in range(count):
        text, zone = kinds[index % len(kinds)]
        spec = TaskSpec(
            task_id=uuid.uuid4(),
            command="true",
            frequency=parse_recurrence(text),
            anchor=START,
            timezone=zone,
        )
        scheduler.add_task(spec, after=START)
    end = START + timedelta(hours=hours)
    polls = starts = 0
    began = time.perf_counter()
    while (deadline := scheduler.next_deadline()) is not None and deadline <= end:
        for action in scheduler.poll(deadline):
            if isinstance(action, StartExecution):
                starts += 1
                scheduler.record_finished(action.task.task_id, action.scheduled_at, now=deadline)
        polls += 1
    took = time.perf_counter() - began
    return {
        "tasks": count,
        "hours": hours,
        "executions": starts,
        "polls": polls,
        "cpu_s": took,
        "us_per_execution": took / starts * 1e6,
    }


SIZES: dict[Size, tuple[int, int, float]] = {
    "tiny": (50, 9, 0.05),
    "quick": (200, 30, 0.25),
    "full": (2000, 300, 6.0),
}


def run(size: Size) -> Result:
    return measure(*SIZES[size])


def measure(calls: int, tasks: int, hours: float) -> Result:
    next_fire = time_next_fire(calls)
    day = time_agent_day(tasks, hours)
    rows = [[case, f"{cost:.1f} µs per fire time"] for case, cost in next_fire.items()]
    rows.append(
        [
            f"agent scheduler, {tasks} tasks, {hours:g} h simulated",
            f"{day['us_per_execution']:.1f} µs per execution started",
        ]
    )
    return Result(
        title="fire times: next_fire_after and the agent's Scheduler.poll (pure CPU)",
        columns=["case", "cost"],
        rows=rows,
        figures={"next_fire_after_us": next_fire, "agent_scheduler": day},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300, help="tasks on the simulated agent")
    parser.add_argument("--hours", type=float, default=1, help="simulated hours")
    parser.add_argument("--calls", type=int, default=2000, help="next_fire_after calls per case")
    arguments = parser.parse_args()
    print(measure(arguments.calls, arguments.tasks, arguments.hours).table())


if __name__ == "__main__":
    main()
