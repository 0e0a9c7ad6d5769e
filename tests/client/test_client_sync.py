"""The blocking :class:`Client` against a real server and real agents on 127.0.0.1."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest

from taskscheduler_client import (
    ApiError,
    Client,
    ConnectionFailed,
    InvalidRequest,
    OutputTimeout,
    RequestTimeout,
    TaskNotFound,
)
from taskscheduler_client.services import LocalStack
from taskscheduler_core import Agent, Frequency, LatestOutput, Task, Unit, parse_frequency

#: Bound for waits that normally take a second or two.
WAIT = 20.0


@pytest.fixture
def client(server_url: str) -> Iterator[Client]:
    with Client(server_url) as client:
        yield client


def test_create_task_returns_the_stored_task(client: Client) -> None:
    before = datetime.now(UTC)
    task = client.create_task("echo hello world", "Every 2 Hour")

    assert isinstance(task, Task)
    assert isinstance(task.id, UUID)
    assert task.command == "echo hello world"
    assert task.frequency == parse_frequency("every 2 hours")
    assert task.created_at >= before.replace(microsecond=0)


def test_create_task_accepts_a_frequency_object(client: Client) -> None:
    task = client.create_task("true", Frequency(count=3, unit=Unit.MINUTES))
    assert str(task.frequency) == "every 3 minutes"


def test_a_new_task_has_no_output_yet(client: Client) -> None:
    task = client.create_task("echo later", "every 1 hours")

    output = client.latest_output(task.id)

    assert output == LatestOutput(completion_time=None, outputs=())
    assert not output.complete


def test_task_ids_may_be_given_as_strings(client: Client) -> None:
    task = client.create_task("echo later", "every 1 hours")
    assert client.latest_output(str(task.id)) == client.latest_output(task.id)


def test_wait_for_output_returns_what_every_agent_printed(
    client: Client, stack: LocalStack
) -> None:
    task = client.create_task("printf out; printf err >&2", "every 1 seconds")

    first = client.wait_for_output(task.id, timeout=WAIT, poll_interval=0.05)

    assert first.completion_time is not None
    assert first.scheduled_at is not None
    assert first.scheduled_at > task.anchor
    agent_ids = sorted(started.agent_id for started in stack.agents)
    assert [output.agent_id for output in first.outputs] == agent_ids
    assert {(output.stdout, output.stderr) for output in first.outputs} == {("out", "err")}

    # "after" asks for a newer run than the one already seen
    second = client.wait_for_output(
        task.id, timeout=WAIT, poll_interval=0.05, after=first.completion_time
    )
    assert second.completion_time is not None
    assert second.completion_time > first.completion_time
    assert second.scheduled_at is not None
    assert second.scheduled_at > first.scheduled_at


def test_wait_for_output_gives_up_with_output_timeout(client: Client) -> None:
    task = client.create_task("echo never yet", "every 1 hours")

    started = time.monotonic()
    with pytest.raises(OutputTimeout) as caught:
        client.wait_for_output(task.id, timeout=0.3, poll_interval=0.05)
    elapsed = time.monotonic() - started

    assert 0.3 <= elapsed < 5
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.task_id == str(task.id)
    assert caught.value.last == LatestOutput(completion_time=None, outputs=())
    assert str(task.id) in str(caught.value)


def test_wait_for_output_checks_its_arguments(client: Client) -> None:
    task_id = uuid4()
    with pytest.raises(ValueError, match="poll_interval"):
        client.wait_for_output(task_id, poll_interval=0)
    with pytest.raises(ValueError, match="timeout"):
        client.wait_for_output(task_id, timeout=-1)
    with pytest.raises(ValueError, match="timezone-aware"):
        client.wait_for_output(task_id, after=datetime(2026, 1, 1))


def test_unknown_task_raises_task_not_found(client: Client) -> None:
    with pytest.raises(TaskNotFound) as caught:
        client.latest_output(uuid4())

    assert caught.value.status == 404
    assert caught.value.code
    assert isinstance(caught.value, LookupError)


def test_wait_for_output_of_an_unknown_task_fails_at_once(client: Client) -> None:
    with pytest.raises(TaskNotFound):
        client.wait_for_output(uuid4(), timeout=WAIT)


def test_an_id_that_is_not_a_uuid_is_refused(client: Client) -> None:
    with pytest.raises(ApiError) as caught:
        client.latest_output("not-a-uuid/../../healthz")
    assert caught.value.status in (400, 404, 422)


@pytest.mark.parametrize(
    ("command", "frequency", "field"),
    [
        ("echo hi", "every 0 seconds", "frequency"),
        ("echo hi", "each 5 minutes", "frequency"),
        ("echo hi", "every 5 fortnights", "frequency"),
        ("   ", "every 5 seconds", "command"),
    ],
)
def test_invalid_task_raises_invalid_request_naming_the_field(
    client: Client, command: str, frequency: str, field: str
) -> None:
    with pytest.raises(InvalidRequest) as caught:
        client.create_task(command, frequency)

    error = caught.value
    assert error.status in (400, 422)
    assert error.field == field
    assert error.code
    assert error.message
    assert str(error).startswith(f"{field}: ")
    assert isinstance(error, ValueError)


def test_agents_lists_the_registered_agents(client: Client, stack: LocalStack) -> None:
    agents = {agent.id: agent for agent in client.agents()}

    for started in stack.agents:
        assert started.agent_id in agents
        listed = agents[started.agent_id]
        assert listed.url == started.url
        assert isinstance(listed, Agent)


def test_health(client: Client, closed_port_url: str) -> None:
    assert client.health() is True
    with Client(closed_port_url) as down:
        assert down.health() is False


def test_connection_refused_raises_connection_failed(closed_port_url: str) -> None:
    with Client(closed_port_url) as client, pytest.raises(ConnectionFailed) as caught:
        client.create_task("echo hi", "every 1 seconds")

    assert isinstance(caught.value, ConnectionError)
    assert caught.value.url == closed_port_url
    assert closed_port_url in str(caught.value)


def test_no_answer_raises_request_timeout(silent_url: str) -> None:
    started = time.monotonic()
    with Client(silent_url, timeout=0.2) as client, pytest.raises(RequestTimeout) as caught:
        client.latest_output(uuid4())

    assert time.monotonic() - started < 5
    assert isinstance(caught.value, TimeoutError)


def test_url_trailing_slash_and_repr(server_url: str) -> None:
    with Client(server_url + "/") as client:
        assert client.url == server_url
        assert repr(client) == f"Client({server_url!r})"
        assert client.health()
