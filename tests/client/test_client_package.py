"""The package's public surface: what ``__init__`` exports and how the exception tree is shaped."""

from __future__ import annotations

import inspect

import pytest

import taskscheduler_client
from taskscheduler_client import (
    AgentNotFound,
    ApiError,
    ClientError,
    ConnectionFailed,
    InvalidRequest,
    OutputTimeout,
    RequestTimeout,
    ServerError,
    TaskDeleted,
    TaskNotFound,
    TransportError,
    UnexpectedResponse,
)
from taskscheduler_core import TaskSchedulerError


def _isort_key(name: str) -> tuple[int, str]:
    # the order ruff's RUF022 keeps: CONSTANTS, then Classes, then functions
    if name.isupper():
        return 0, name
    return (1 if name[0].isupper() else 2), name


def test_all_is_sorted_and_complete() -> None:
    exported = taskscheduler_client.__all__
    assert exported == sorted(exported, key=_isort_key)
    assert len(set(exported)) == len(exported)
    for name in exported:
        assert hasattr(taskscheduler_client, name), name
    public_classes = {
        name
        for name, value in vars(taskscheduler_client).items()
        if inspect.isclass(value) and not name.startswith("_")
    }
    assert public_classes <= set(exported)


@pytest.mark.parametrize(
    ("error", "bases"),
    [
        (ClientError, (TaskSchedulerError,)),
        (ApiError, (ClientError,)),
        (InvalidRequest, (ApiError, ValueError)),
        (TaskNotFound, (ApiError, LookupError)),
        (AgentNotFound, (ApiError, LookupError)),
        (TaskDeleted, (ApiError,)),
        (ServerError, (ApiError,)),
        (UnexpectedResponse, (ApiError,)),
        (TransportError, (ClientError,)),
        (ConnectionFailed, (TransportError, ConnectionError)),
        (RequestTimeout, (TransportError, TimeoutError)),
        (OutputTimeout, (ClientError, TimeoutError)),
    ],
)
def test_exception_tree(error: type[Exception], bases: tuple[type[Exception], ...]) -> None:
    for base in bases:
        assert issubclass(error, base)
    # the tree is drawn in the module docstring; every class must be in the drawing
    assert error.__name__ in taskscheduler_client.errors.__doc__  # type: ignore[operator]


def test_api_error_message_names_the_field() -> None:
    error = InvalidRequest(422, "invalid_frequency", "bad frequency", "frequency")
    assert str(error) == "frequency: bad frequency"
    assert str(ApiError(409, "conflict", "busy")) == "busy"
