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


def time_next_fire(calls: int) -> None:
    print(f"next_fire_after, {calls} chained calls each:")
    for text, zone in CASES:
        recurrence = parse_recurrence(text)
        moment = START
        began = time.perf_counter()
        for _ in range(calls):
            moment = next_fire_after(recurrence, anchor=START, timezone=zone, moment=moment)
        per_call = (time.perf_counter() - began) / calls
        print(f"  {text!r:>20} in {zone:<17} {per_call * 1e6:8.1f} µs/call")


def time_agent_day(count: int, hours: float) -> None:
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
    print(
        f"{hours:g} simulated hours, {count} tasks: {starts} executions started in {polls} polls, "
        f"{took:.2f} s of CPU = {took / starts * 1e6:.1f} µs per execution"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=300, help="tasks on the simulated agent")
    parser.add_argument("--hours", type=float, default=1, help="simulated hours")
    parser.add_argument("--calls", type=int, default=2000, help="next_fire_after calls per case")
    arguments = parser.parse_args()
    time_next_fire(arguments.calls)
    time_agent_day(arguments.tasks, arguments.hours)


if __name__ == "__main__":
    main()
