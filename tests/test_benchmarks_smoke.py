"""The benchmark suite still runs: every benchmark, smallest sizes, figures in the JSON file.

No timing is asserted: benchmarks are not pass/fail. This only keeps them from rotting.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("apscheduler")

ROOT = Path(__file__).resolve().parent.parent


def _numbers(figures: Any) -> list[float]:
    """Every numeric leaf of a figures tree."""
    if isinstance(figures, dict):
        return [number for value in figures.values() for number in _numbers(value)]
    if isinstance(figures, list):
        return [number for value in figures for number in _numbers(value)]
    if isinstance(figures, int | float) and not isinstance(figures, bool):
        return [float(figures)]
    return []


@pytest.mark.e2e
def test_every_benchmark_runs_and_writes_its_figures(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    finished = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--tiny", "--json", str(results)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr
    document = json.loads(results.read_text())
    benchmarks = document["benchmarks"]
    assert set(benchmarks) == {
        "spawn",
        "fire_precision",
        "first_run",
        "fire_times",
        "ingest",
        "reads",
        "footprint",
        "fanout",
    }
    for name, figures in benchmarks.items():
        numbers = _numbers(figures)
        assert numbers, name
        assert all(math.isfinite(number) for number in numbers), name
    for case in benchmarks["fire_precision"].values():
        assert case["tsched"]["completed"] > 0
        assert case["apscheduler"]["completed"] > 0
    assert "fire precision" in finished.stdout
    ingest = benchmarks["ingest"]
    assert ingest["failures"] == 0
    assert ingest["stored"] == ingest["acknowledged"] > 0
