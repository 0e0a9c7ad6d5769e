"""Fixtures of the end-to-end tests: real ``tsched`` processes, stopped after each test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from processes import Tsched


@pytest.fixture
def tsched(tmp_path: Path) -> Iterator[Callable[..., Tsched]]:
    """Start ``tsched`` subcommands; all of them are stopped after the test."""
    started: list[Tsched] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Tsched:
        log = tmp_path / f"tsched-{len(started)}-{args[0]}.log"
        process = Tsched(list(args), log=log, env=env)
        started.append(process)
        return process

    yield start
    for process in reversed(started):
        process.kill()
