"""The package's public surface and its configuration object."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest

import taskscheduler_agent
from taskscheduler_agent import AgentConfig, AgentConfigError, AgentError, IdentityError
from taskscheduler_core import DEFAULT_MAX_OUTPUT_BYTES, TaskSchedulerError


def _isort_key(name: str) -> tuple[int, str]:
    # the order ruff's RUF022 keeps: CONSTANTS, then Classes, then functions
    if name.isupper():
        return 0, name
    return (1 if name[0].isupper() else 2), name


def test_all_is_sorted_and_complete() -> None:
    names = taskscheduler_agent.__all__
    assert names == sorted(names, key=_isort_key)
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(taskscheduler_agent, name), name
    public_classes = {
        name
        for name, value in vars(taskscheduler_agent).items()
        if inspect.isclass(value) and not name.startswith("_")
    }
    assert public_classes <= set(names)


def test_errors_share_one_base() -> None:
    assert issubclass(AgentError, TaskSchedulerError)
    for leaf in (AgentConfigError, IdentityError, taskscheduler_agent.TaskRejected):
        assert issubclass(leaf, AgentError)
        assert issubclass(leaf, ValueError)
    assert issubclass(taskscheduler_agent.ApiError, AgentError)


def test_config_defaults(tmp_path: Path) -> None:
    config = AgentConfig(data_dir=str(tmp_path))  # type: ignore[arg-type]
    assert config.data_dir == tmp_path
    assert (config.host, config.port) == ("127.0.0.1", 8081)
    assert (config.server_url, config.advertise_url) == (None, None)
    assert config.max_output_bytes == DEFAULT_MAX_OUTPUT_BYTES
    assert (config.report_backoff_initial, config.report_backoff_max) == (0.2, 30.0)
    assert (config.register_backoff_max, config.kill_grace) == (10.0, 10.0)
    assert config.heartbeat_interval == 5.0


def test_urls_lose_their_trailing_slash(tmp_path: Path) -> None:
    config = AgentConfig(
        data_dir=tmp_path, server_url="http://127.0.0.1:8080/", advertise_url=" http://a:1/ "
    )
    assert (config.server_url, config.advertise_url) == ("http://127.0.0.1:8080", "http://a:1")


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("port", -1),
        ("port", 65536),
        ("port", True),
        ("server_url", "127.0.0.1:8080"),
        ("advertise_url", "ftp://agent"),
        ("max_output_bytes", -1),
        ("report_backoff_initial", 0),
        ("report_backoff_max", -1.0),
        ("register_backoff_max", float("nan")),
        ("kill_grace", -0.5),
        ("heartbeat_interval", 0),
        ("request_timeout", 0),
    ],
)
def test_config_refuses_values_out_of_range(tmp_path: Path, option: str, value: Any) -> None:
    with pytest.raises(AgentConfigError) as raised:
        AgentConfig(data_dir=tmp_path, **{option: value})
    assert raised.value.field == option
    assert option in str(raised.value)
