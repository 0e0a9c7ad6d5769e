"""``token=`` of the clients against the real server app (in-process, a real SQLite file)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from taskscheduler_client import ApiError, AsyncClient, Forbidden, Unauthorized
from taskscheduler_server import ServerConfig
from taskscheduler_server.app import create_app
from taskscheduler_server.store import AsyncStore, Store


@pytest.fixture
async def transport(tmp_path: Path) -> AsyncIterator[httpx.ASGITransport]:
    store = AsyncStore(await trio.to_thread.run_sync(Store, tmp_path / "server.sqlite"))
    config = ServerConfig(database=tmp_path / "server.sqlite", admin_token="adm", read_token="rd")
    app = create_app(store, config=config)
    try:
        yield httpx.ASGITransport(app=app)
    finally:
        await store.aclose()


async def test_without_a_token_every_call_is_unauthorized(
    transport: httpx.ASGITransport,
) -> None:
    async with AsyncClient("http://server", transport=transport) as client:
        with pytest.raises(Unauthorized) as raised:
            await client.create_task("true", "every 1 hour")
        assert raised.value.status == 401
        assert raised.value.code == "unauthorized"
        assert isinstance(raised.value, PermissionError)
        with pytest.raises(Unauthorized):
            await client.agents()
    async with AsyncClient("http://server", transport=transport, token="nope") as client:
        with pytest.raises(Unauthorized):
            await client.agents()


async def test_the_read_token_reads_and_may_not_write(transport: httpx.ASGITransport) -> None:
    async with AsyncClient("http://server", transport=transport, token="rd") as reader:
        assert await reader.agents() == []
        with pytest.raises(Forbidden) as raised:
            await reader.create_task("true", "every 1 hour")
        assert raised.value.status == 403
        assert isinstance(raised.value, ApiError)


async def test_the_admin_token_may_do_everything(transport: httpx.ASGITransport) -> None:
    async with AsyncClient("http://server", transport=transport, token="adm") as admin:
        task = await admin.create_task("true", "every 1 hour")
        assert task.command == "true"
        assert "adm" not in repr(admin)
