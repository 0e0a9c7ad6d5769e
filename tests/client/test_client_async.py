"""The :class:`AsyncClient` against a real server and real agents, under trio and under asyncio."""

from __future__ import annotations

import asyncio
from uuid import uuid4

import pytest
import trio

from taskscheduler_client import (
    AsyncClient,
    ConnectionFailed,
    InvalidRequest,
    OutputTimeout,
    RequestTimeout,
    TaskNotFound,
)
from taskscheduler_client.services import LocalStack
from taskscheduler_core import LatestOutput

#: Bound for waits that normally take a second or two.
WAIT = 20.0


async def test_create_and_wait_for_output_under_trio(stack: LocalStack) -> None:
    async with AsyncClient(stack.server_url) as client:
        task = await client.create_task("echo from trio", "every 1 seconds")

        output = await client.wait_for_output(str(task.id), timeout=WAIT, poll_interval=0.05)

        assert output.completion_time is not None
        assert {o.agent_id for o in output.outputs} == {a.agent_id for a in stack.agents}
        assert {o.stdout for o in output.outputs} == {"from trio\n"}
        latest = await client.latest_output(task.id)
        assert latest.completion_time is not None
        assert latest.completion_time >= output.completion_time


async def test_agents_and_health_under_trio(stack: LocalStack, closed_port_url: str) -> None:
    async with AsyncClient(stack.server_url) as client:
        assert await client.health()
        listed = {agent.id for agent in await client.agents()}
        assert listed >= {started.agent_id for started in stack.agents}
    async with AsyncClient(closed_port_url) as down:
        assert not await down.health()


async def test_errors_under_trio(server_url: str) -> None:
    async with AsyncClient(server_url) as client:
        with pytest.raises(TaskNotFound):
            await client.latest_output(uuid4())
        with pytest.raises(InvalidRequest) as caught:
            await client.create_task("echo hi", "every -1 seconds")
        assert caught.value.field == "frequency"


async def test_connection_refused_under_trio(closed_port_url: str) -> None:
    async with AsyncClient(closed_port_url) as client:
        with pytest.raises(ConnectionFailed):
            await client.latest_output(uuid4())


async def test_no_answer_under_trio(silent_url: str) -> None:
    async with AsyncClient(silent_url, timeout=0.2) as client:
        with trio.fail_after(5), pytest.raises(RequestTimeout):
            await client.latest_output(uuid4())


async def test_wait_for_output_times_out_under_trio(server_url: str) -> None:
    async with AsyncClient(server_url) as client:
        task = await client.create_task("echo not yet", "every 1 hours")
        start = trio.current_time()
        with pytest.raises(OutputTimeout) as caught:
            await client.wait_for_output(task.id, timeout=0.3, poll_interval=0.05)
        assert 0.3 <= trio.current_time() - start < 5
        assert caught.value.last == LatestOutput(completion_time=None, outputs=())


def test_the_async_client_under_asyncio(stack: LocalStack, closed_port_url: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(stack.server_url) as client:
            task = await client.create_task("echo from asyncio", "every 1 hours")
            assert not (await client.latest_output(task.id)).complete
            with pytest.raises(OutputTimeout):
                await client.wait_for_output(task.id, timeout=0.2, poll_interval=0.05)
            with pytest.raises(TaskNotFound):
                await client.latest_output(uuid4())
            assert await client.health()
        async with AsyncClient(closed_port_url) as down:
            with pytest.raises(ConnectionFailed):
                await down.agents()

    asyncio.run(asyncio.wait_for(scenario(), WAIT))
