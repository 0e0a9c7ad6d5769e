"""The server is SIGKILLed — while agents report their executions, and in the middle of a flood
of concurrent reports — and restarted: every execution is stored exactly once."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import trio

from processes import Cluster, report, tally, wait_until
from taskscheduler_core import ExecutionReport, ExecutionStatus, unstructure

pytestmark = pytest.mark.faults


def test_server_killed_while_two_agents_run_a_task(cluster: Cluster) -> None:
    one, two = cluster.agent("one"), cluster.agent("two")
    server = cluster.start(one, two)
    task = server.create("echo $TSCHED_SCHEDULED_AT", "every 1 seconds")
    wait_until(
        lambda: all(len(agent.journal()) >= 2 for agent in (one, two)),
        timeout=10,
        what="both agents to run the task twice",
    )

    server.kill()
    killed_at = time.time()
    time.sleep(5)
    server.start()
    restarted_at = time.time()

    # The agents ran the task all along; what they ran while the server was down is delivered.
    while_down = 0
    for agent in (one, two):
        mine = [e for e in agent.journal() if killed_at < e.key[2] / 1e6 < restarted_at]
        assert len(mine) >= 4, agent.journal()
        while_down += len(mine)
    cluster.settle(one, two)
    result = cluster.account(
        "server SIGKILLed for 5 s while 2 agents run `every 1 seconds`",
        one,
        two,
        note=f"{while_down} of them ran while the server was down",
    )
    assert {execution.key[0] for execution in server.executions()} == {task}
    assert result.run >= 2 * 7


async def test_server_killed_during_200_concurrent_reports(cluster: Cluster) -> None:
    server = cluster.start()
    task = server.create("echo not run by any agent", "every 1 hours")
    agent_id = uuid.uuid4()
    first = datetime.now(UTC).replace(microsecond=0)
    bodies = {
        n: unstructure(
            ExecutionReport(
                server_id=agent_id,
                stdout=f"report {n}\n",
                stderr="",
                scheduled_at=first + timedelta(seconds=n),
                started_at=first + timedelta(seconds=n, milliseconds=1),
                finished_at=first + timedelta(seconds=n, milliseconds=2),
                status=ExecutionStatus.SUCCEEDED,
                exit_code=0,
            )
        )
        for n in range(200)
    }
    acknowledged: set[int] = set()
    failed: set[int] = set()
    enough = trio.Event()
    url = f"{server.url}/api/v1/tasks/{task}/complete"

    async def post(client: httpx.AsyncClient, n: int) -> None:
        try:
            response = await client.post(url, json=bodies[n])
        except httpx.HTTPError:
            failed.add(n)
            return
        if response.is_success:
            acknowledged.add(n)
            if len(acknowledged) == 60 and not enough.is_set():
                # Killed right here, before any other task runs: on a fast machine the server
                # could otherwise answer every report before the main task got to the kill.
                server.kill()
                enough.set()
        else:
            failed.add(n)

    # All 200 are posted at once; 64 connections carry them, so at the kill some reports are
    # in flight on the server and others not yet sent.
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with (
        httpx.AsyncClient(limits=limits, timeout=10.0) as client,
        trio.open_nursery() as nursery,
    ):
        for n in bodies:
            nursery.start_soon(post, client, n)
        with trio.move_on_after(20):
            await enough.wait()
        server.kill()  # no-op if already killed mid-way; else the 20 s bound ran out
    assert acknowledged, "no report was acknowledged before the kill"
    assert failed, "the kill came after every report was answered: nothing was tested"
    assert acknowledged | failed == set(bodies)

    await trio.to_thread.run_sync(server.start)

    def keys() -> list[tuple[uuid.UUID, uuid.UUID, int]]:
        return [e.key for e in server.executions()]

    def key(n: int) -> tuple[uuid.UUID, uuid.UUID, int]:
        moment = first + timedelta(seconds=n)
        return (task, agent_id, int(moment.timestamp()) * 1_000_000)

    after_restart = keys()
    missing = {n for n in acknowledged if key(n) not in set(after_restart)}
    assert not missing, f"acknowledged reports not stored after the restart: {sorted(missing)}"

    # Delivery goes on: an agent sends again everything (whatever was answered); a repeated
    # report is acknowledged and stored once.
    async with httpx.AsyncClient(limits=limits, timeout=10.0) as client:
        answers: dict[int, httpx.Response] = {}

        async def again(n: int) -> None:
            answers[n] = await client.post(url, json=bodies[n])

        async with trio.open_nursery() as nursery:
            for n in bodies:
                nursery.start_soon(again, n)
    assert all(response.status_code == 200 for response in answers.values())
    assert all(answers[n].json()["duplicate"] for n in acknowledged)
    stored = keys()
    result = tally(
        "200 concurrent reports, server SIGKILLed mid-way",
        [key(n) for n in bodies],
        stored,
        note=(
            f"{len(acknowledged)} acknowledged before the kill, {len(after_restart)} in the "
            f"database after the restart; the {len(failed)} unanswered were sent again"
        ),
    )
    report(result)
    assert (result.run, result.stored, result.lost, result.duplicated) == (200, 200, 0, 0)
    assert len(stored) == 200
