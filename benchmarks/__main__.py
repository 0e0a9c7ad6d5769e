"""Run the benchmarks: ``python -m benchmarks [--quick] [--json PATH] [--only NAME …]``.

Each benchmark prints a table; all their figures go to one JSON file (``benchmarks/results.json``
unless ``--json`` says otherwise), with the machine they were measured on. Benchmarks are not
pass/fail: nothing here compares a figure with a target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import (
    fanout,
    fire_precision,
    fire_times,
    first_run,
    footprint,
    ingest,
    reads,
    spawn,
)
from benchmarks.report import Result, Size

#: Every benchmark, in the order they run: the ceilings first.
REGISTRY: dict[str, Callable[[Size], Result]] = {
    "spawn": spawn.run,
    "fire_precision": fire_precision.run,
    "first_run": first_run.run,
    "fire_times": fire_times.run,
    "ingest": ingest.run,
    "reads": reads.run,
    "footprint": footprint.run,
    "fanout": fanout.run,
}

DEFAULT_JSON = Path(__file__).resolve().parent / "results.json"


def _machine() -> dict[str, object]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--quick", action="store_true", help="tiny sizes: seconds, not minutes")
    sizes.add_argument("--tiny", action="store_true", help="the smallest sizes (the smoke test)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where the figures go")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=list(REGISTRY),
        metavar="NAME",
        help=(f"run only these ({', '.join(REGISTRY)})"),
    )
    arguments = parser.parse_args(argv)
    size: Size = "tiny" if arguments.tiny else "quick" if arguments.quick else "full"
    names = arguments.only or list(REGISTRY)
    figures: dict[str, object] = {}
    for name in names:
        began = time.monotonic()
        result = REGISTRY[name](size)
        print(result.table())
        print(f"({name}: {time.monotonic() - began:.1f} s)\n", flush=True)
        figures[name] = result.figures
    document = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m benchmarks", *(sys.argv[1:] if argv is None else argv)]),
        "size": size,
        "machine": _machine(),
        "benchmarks": figures,
    }
    arguments.json.write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
    print(f"figures written to {arguments.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
