"""Fixtures of the fault tests: a cluster of real ``tsched`` processes, killed after each test.

When a test fails, every process's log is printed in the test's report.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from processes import Cluster

_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        item.stash[_FAILED] = True
    return report


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A server (not started) to which agents can be added; every process is killed at the end."""
    started = Cluster(tmp_path)
    try:
        yield started
    finally:
        started.close()
        if request.node.stash.get(_FAILED, False):
            print(started.logs())
