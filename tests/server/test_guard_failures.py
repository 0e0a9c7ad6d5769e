"""The guard when the store fails under it: a lookup of a token this replica has not seen, and
the lifespan task that keeps the agents' credentials, must neither queue requests behind one
connect timeout after another nor stop the server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

import peewee
import trio

from taskscheduler_server import AsyncStore, DatabaseUnavailable, Store
from taskscheduler_server.auth import Guard
from taskscheduler_server.records import AgentCredential

T = TypeVar("T")


class FailingStore(AsyncStore):
    """A real store whose calls of ``failing`` raise ``error`` (after ``delay`` seconds: a
    connect timeout), counting them."""

    def __init__(self, store: Store, failing: Callable[..., Any], error: Exception) -> None:
        super().__init__(store)
        self.failing, self.error = failing, error
        self.failures_left = 1_000
        self.delay = 0.0
        self.calls = 0

    async def call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if method is self.failing and self.failures_left > 0:
            self.calls += 1
            self.failures_left -= 1
            await trio.sleep(self.delay)
            raise self.error
        return await super().call(method, *args, **kwargs)


async def test_unseen_tokens_during_an_outage_are_refused_at_once_not_one_timeout_each(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    with Store(tmp_path / "server.sqlite3") as store:
        failing = FailingStore(
            store, Store.credential_by_digest, DatabaseUnavailable("connection timed out")
        )
        failing.delay = 10.0  # each lookup waits out a connect timeout
        guard = Guard(failing, admin_token="a" * 32, join_token="j" * 32)
        await guard._load()  # (what the first request does)
        outcomes: list[str] = []

        async def look_up(number: int) -> None:
            try:
                await guard._agent_with_digest(f"{number:064x}")
            except DatabaseUnavailable:
                outcomes.append(f"503 at {trio.current_time():.0f}")

        async with trio.open_nursery() as nursery:
            for number in range(5):
                nursery.start_soon(look_up, number)
        # One waited out the timeout; the four queued behind it were answered right after.
        assert failing.calls == 1
        assert outcomes == ["503 at 10"] * 5
        # A second later, the store is asked again.
        await trio.sleep(1.0)
        failing.failures_left = 0
        assert await guard._agent_with_digest("f" * 64) is None


async def test_the_credentials_task_survives_an_error_nobody_foresaw(tmp_path: Path) -> None:
    with Store(tmp_path / "server.sqlite3") as store:
        agent_id = uuid4()
        store.add_agent_credential(
            AgentCredential(agent_id=agent_id, token_sha256="0" * 64, server_token="s" * 32)
        )
        failing = FailingStore(
            store, Store.agent_credentials, peewee.DatabaseError("database disk image is malformed")
        )
        failing.failures_left = 2
        guard = Guard(failing, admin_token="a" * 32, join_token="j" * 32)
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                await nursery.start(guard.keep_fresh)  # started after the first (failed) load
                # Tried again (every RETRY_SECONDS) until the store answers; never crashed.
                while guard.agent_headers(agent_id) == {}:
                    await trio.sleep(0.05)
                nursery.cancel_scope.cancel()
        assert failing.calls == 2
        assert guard.agent_headers(agent_id) == {"Authorization": f"Bearer {'s' * 32}"}
