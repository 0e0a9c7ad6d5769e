"""The physical ceiling of one agent: ``echo hello world`` processes spawned and reaped per second.

Like the agent's runner, each is ``/bin/sh -c <command>`` in its own process group with stdout
and stderr captured; one after another from one process, for ``--seconds``. Run it with::

    python -m benchmarks.spawn --seconds 5
"""

from __future__ import annotations

import argparse
import subprocess
import time

from benchmarks.report import Result, Size

COMMAND = "echo hello world"


def measure(seconds: float) -> dict[str, float]:
    spawned = 0
    began = time.perf_counter()
    deadline = began + seconds
    while time.perf_counter() < deadline:
        subprocess.run(
            ["/bin/sh", "-c", COMMAND], capture_output=True, check=True, start_new_session=True
        )
        spawned += 1
    took = time.perf_counter() - began
    return {"seconds": took, "processes": spawned, "per_second": spawned / took}


SECONDS: dict[Size, float] = {"tiny": 0.3, "quick": 1.0, "full": 5.0}


def run(size: Size) -> Result:
    figures = measure(SECONDS[size])
    return Result(
        title=f"spawn ceiling: `/bin/sh -c '{COMMAND}'` spawned and reaped, one at a time",
        columns=["seconds", "processes", "per second"],
        rows=[
            [
                f"{figures['seconds']:.2f}",
                f"{figures['processes']:.0f}",
                f"{figures['per_second']:,.0f}",
            ]
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
