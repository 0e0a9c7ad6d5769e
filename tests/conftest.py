"""Shared pytest configuration for taskscheduler's tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from databases import postgres_schema


@pytest.fixture
def database_url() -> Iterator[str]:
    """The URL of a fresh PostgreSQL schema of this test's own, dropped after it (skipped
    without ``TSCHED_TEST_DATABASE_URL``: see tests/databases.py)."""
    with postgres_schema() as url:
        yield url
