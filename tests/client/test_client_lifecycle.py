"""Every task-lifecycle, history and agent method of the clients against the real server.

The session's ``stack`` (a server and two agents on 127.0.0.1) is shared with the other client
tests, so each test names its tasks uniquely and filters by that name.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TypeVar
from uuid import uuid4

import pytest

from taskscheduler_client import (
    AgentNotFound,
    AsyncClient,
    Client,
    InvalidRequest,
    TaskDeleted,
    TaskNotFound,
)
from taskscheduler_client.services import LocalStack
from taskscheduler_core import (
    ExecutionStatus,
    Overlap,
    RunStatus,
    Targets,
    TaskState,
    Trigger,
)

#: Bound for waits that normally take a second or two.
WAIT = 20.0

T = TypeVar("T")


@pytest.fixture
def client(server_url: str) -> Iterator[Client]:
    with Client(server_url) as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid4().hex[:12]}"


def eventually(probe: Callable[[], T | None], what: str) -> T:
    deadline = time.monotonic() + WAIT
    while True:
        found = probe()
        if found is not None:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_create_with_options_and_get(client: Client) -> None:
    name = unique("options")
    task = client.create_task(
        "echo options",
        "every 1 hours",
        name=name,
        timeout=timedelta(seconds=90),
        overlap=Overlap.ALLOW,
        starting_deadline=5,
        retries=2,
        retry_delay=0.5,
        env={"GREETING": "hi"},
        max_output_bytes=4096,
        target_labels={"role": "nowhere"},
    )

    assert (task.name, task.timeout, task.overlap) == (name, 90.0, Overlap.ALLOW)
    assert (task.starting_deadline, task.retries, task.retry_delay) == (5.0, 2, 0.5)
    assert (task.env, task.max_output_bytes) == ({"GREETING": "hi"}, 4096)
    assert task.targets == Targets(labels={"role": "nowhere"})
    assert task.state is TaskState.ACTIVE
    assert client.get_task(task.id) == task
    assert client.get_task(str(task.id)) == task


def test_create_defaults_and_refusals(client: Client) -> None:
    task = client.create_task("true", "every 1 hours")
    assert (task.timezone, task.timeout, task.overlap, task.retries) == (
        "UTC",
        None,
        Overlap.SKIP,
        0,
    )
    assert task.targets.all

    with pytest.raises(InvalidRequest) as caught:
        client.create_task("true", "every 1 hours", overlap="sometimes")
    assert caught.value.field == "overlap"
    with pytest.raises(InvalidRequest) as zone:
        client.create_task("true", "0 3 * * *", timezone="Mars/Olympus_Mons")
    assert zone.value.field == "timezone"


def test_list_filters_and_pages(client: Client) -> None:
    name = unique("listed")
    created = [client.create_task("true", "every 1 hours", name=f"{name}-{n}") for n in range(3)]
    client.pause_task(created[1].id)

    page = client.list_tasks(name=name.upper())
    assert [task.id for task in page.tasks] == [task.id for task in created]  # oldest first
    assert page.next_cursor is None
    paused = client.list_tasks(name=name, state=TaskState.PAUSED)
    assert [task.id for task in paused.tasks] == [created[1].id]

    first = client.list_tasks(name=name, limit=2)
    assert len(first.tasks) == 2
    assert first.next_cursor is not None
    rest = client.list_tasks(name=name, limit=2, cursor=first.next_cursor)
    assert [task.id for task in (*first.tasks, *rest.tasks)] == [task.id for task in created]
    walked = [task.id for task in client.iter_tasks(name=name, page_size=1)]
    assert walked == [task.id for task in created]

    with pytest.raises(InvalidRequest) as caught:
        client.list_tasks(limit=0)
    assert caught.value.field == "limit"


def test_edit(client: Client) -> None:
    task = client.create_task("echo before", "every 1 hours", name=unique("edit"), timeout=30)

    edited = client.edit_task(task.id, command="echo after", name=None, timeout=None)
    assert (edited.command, edited.name, edited.timeout) == ("echo after", None, None)
    assert edited.anchor == task.anchor  # same frequency: the same fire times
    assert edited.updated_at is not None
    assert edited.updated_at > task.created_at

    moved = client.edit_task(task.id, frequency="every 2 hours", target_agents=[uuid4()])
    assert str(moved.frequency) == "every 2 hours"
    assert moved.anchor > task.anchor  # counted from the edit
    assert moved.targets.agents is not None

    with pytest.raises(InvalidRequest) as caught:
        client.edit_task(task.id, colour="blue")
    assert caught.value.field == "colour"
    with pytest.raises(InvalidRequest):
        client.edit_task(task.id, retries=99)
    assert client.get_task(task.id) == moved, "a refused edit changes nothing"


def test_pause_resume_are_idempotent(client: Client) -> None:
    task = client.create_task("true", "every 1 hours")
    assert client.pause_task(task.id).state is TaskState.PAUSED
    assert client.pause_task(task.id).state is TaskState.PAUSED
    assert client.resume_task(task.id).state is TaskState.ACTIVE
    assert client.resume_task(task.id).state is TaskState.ACTIVE


def test_run_now_and_history(client: Client, stack: LocalStack) -> None:
    agent_ids = {started.agent_id for started in stack.agents}
    task = client.create_task("echo manual; exit 3", "every 1 hours")
    client.pause_task(task.id)  # a paused task runs on demand all the same

    started = client.run_task(task.id)
    assert started.task_id == task.id
    assert set(started.agents) == agent_ids

    def finished() -> list[object] | None:
        runs = client.runs(task.id).runs
        return list(runs) if runs and runs[0].status is not RunStatus.RUNNING else None

    (run,) = eventually(finished, "the manual run")
    assert run.scheduled_at == started.scheduled_at
    assert run.trigger is Trigger.MANUAL
    assert run.status is RunStatus.FAILED
    assert {o.agent_id for o in run.outcomes} == agent_ids
    assert {(o.status, o.exit_code) for o in run.outcomes} == {(ExecutionStatus.FAILED, 3)}
    assert client.runs(task.id, status=RunStatus.SUCCEEDED).runs == ()

    executions = client.executions(task.id).executions
    assert {e.agent_id for e in executions} == agent_ids
    assert {(e.trigger, e.stdout) for e in executions} == {(Trigger.MANUAL, "manual\n")}
    one_agent = next(iter(agent_ids))
    assert [e.agent_id for e in client.executions(task.id, agent=one_agent).executions] == [
        one_agent
    ]
    at = started.scheduled_at
    assert len(client.executions(task.id, since=at).executions) == 2  # since is inclusive
    assert client.executions(task.id, until=at).executions == ()  # until is exclusive
    assert client.executions(task.id, status="succeeded").executions == ()
    page = client.executions(task.id, limit=1)
    assert len(page.executions) == 1
    assert page.next_cursor is not None


def test_delete_then_purge(client: Client) -> None:
    name = unique("deleted")
    task = client.create_task("true", "every 1 hours", name=name)

    deleted = client.delete_task(task.id)
    assert deleted is not None
    assert deleted.state is TaskState.DELETED
    assert client.get_task(task.id).state is TaskState.DELETED  # still readable
    assert client.list_tasks(name=name).tasks == ()
    assert [t.id for t in client.list_tasks(name=name, state="deleted").tasks] == [task.id]
    assert client.runs(task.id).runs == ()
    for change in (client.pause_task, client.resume_task, client.run_task):
        with pytest.raises(TaskDeleted):
            change(task.id)
    with pytest.raises(TaskDeleted):
        client.edit_task(task.id, name="again")
    again = client.delete_task(task.id)  # repeatable
    assert again is not None
    assert again.deleted_at == deleted.deleted_at

    assert client.delete_task(task.id, purge=True) is None
    with pytest.raises(TaskNotFound):
        client.get_task(task.id)
    assert client.list_tasks(name=name, state="all").tasks == ()


def test_agents_and_one_agent(client: Client, stack: LocalStack) -> None:
    task = client.create_task("true", "every 1 hours")
    agent_ids = {started.agent_id for started in stack.agents}

    listed = client.agents()
    assert {agent.id for agent in listed} >= agent_ids
    assert all(agent.labels == {} for agent in listed)
    assert client.agents(labels={"role": "web"}) == []

    agent_id = stack.agents[0].agent_id
    detail = client.agent(agent_id)
    assert detail.id == agent_id
    assert task.id in detail.tasks
    assert [t.id for t in client.list_tasks(agent=agent_id, limit=1000).tasks].count(task.id) == 1
    with pytest.raises(AgentNotFound):
        client.agent(uuid4())


def test_follow_output(client: Client) -> None:
    task = client.create_task("date +%s%N", "every 1 seconds")
    try:
        followed = []
        for output in client.follow_output(task.id, poll_interval=0.05):
            followed.append(output)
            if len(followed) == 2:
                break
        first, second = followed
        assert first.scheduled_at is not None
        assert second.scheduled_at is not None
        assert second.scheduled_at > first.scheduled_at
    finally:
        client.delete_task(task.id, purge=True)


async def test_the_async_twin_under_trio(stack: LocalStack) -> None:
    async with AsyncClient(stack.server_url) as client:
        name = unique("async")
        task = await client.create_task("echo async", "every 1 hours", name=name, retries=1)
        assert (await client.get_task(task.id)).retries == 1
        assert (await client.edit_task(task.id, retries=0)).retries == 0
        assert (await client.pause_task(task.id)).state is TaskState.PAUSED
        assert [t.id async for t in client.iter_tasks(name=name)] == [task.id]
        assert (await client.resume_task(task.id)).state is TaskState.ACTIVE
        started = await client.run_task(task.id)
        assert len(started.agents) == 2
        assert (await client.agent(started.agents[0])).id == started.agents[0]
        assert (await client.list_tasks(name=name)).tasks[0].id == task.id
        assert isinstance((await client.runs(task.id)).runs, tuple)
        assert isinstance((await client.executions(task.id)).executions, tuple)
        assert len(await client.agents()) >= 2
        deleted = await client.delete_task(task.id)
        assert deleted is not None
        assert deleted.state is TaskState.DELETED
        assert await client.delete_task(task.id, purge=True) is None
