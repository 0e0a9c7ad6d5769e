"""An agent's labels: from ``tsched agent --label`` (or ``TSCHED_LABELS``) to its registration
and its identity, which is what task ``targets`` select on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from click.testing import CliRunner

from processes import Tsched, free_port, wait_healthy
from taskscheduler_agent import AgentConfig, AgentConfigError, AgentStarted, run_agent
from taskscheduler_client.cli import tsched

StartCollector = Callable[..., Awaitable[Any]]
WaitFor = Callable[..., Awaitable[None]]


async def test_labels_are_registered_and_shown_in_the_identity(
    tmp_path: Path, nursery: trio.Nursery, start_collector: StartCollector, wait_for: WaitFor
) -> None:
    collector = await start_collector()
    labels = {"role": "web", "example.com/zone": "eu-1"}
    config = AgentConfig(
        data_dir=tmp_path / "agent", port=0, server_url=collector.url, labels=labels
    )
    started: AgentStarted = await nursery.start(run_agent, config)
    await wait_for(lambda: collector.registrations)
    assert collector.registrations[0]["labels"] == labels
    async with httpx.AsyncClient(base_url=started.url) as http:
        identity = (await http.get("/api/v1/agent")).json()
    assert identity["labels"] == labels


@pytest.mark.parametrize(
    "labels", [{"": "x"}, {"role": "two words"}, {"-role": "x"}, {f"k{n}": "v" for n in range(33)}]
)
def test_a_bad_label_in_the_configuration_names_labels(labels: dict[str, str]) -> None:
    with pytest.raises(AgentConfigError) as raised:
        AgentConfig(data_dir=Path("unused"), labels=labels)
    assert raised.value.field == "labels"


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--label", "role"], {}),
        (["--label", "role=web", "--label", "=x"], {}),
        (["--label", "role=two words"], {}),
        ([], {"TSCHED_LABELS": "role=web,zone"}),
        ([], {"TSCHED_LABELS": "role=web, zone=two words"}),
    ],
)
def test_a_bad_label_flag_is_one_line_naming_it_and_exit_2(
    tmp_path: Path, args: list[str], env: dict[str, str]
) -> None:
    result = CliRunner().invoke(
        tsched, ["agent", "--data-dir", str(tmp_path), *args], env=env, catch_exceptions=False
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "--label" in lines[0]
    assert not (tmp_path / "agent_id").exists()  # refused before anything started


def test_tsched_agent_declares_its_labels(tmp_path: Path) -> None:
    port = free_port()
    process = Tsched(
        [
            "agent",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path / "agent"),
            "--label",
            "role=web",
            "--label",
            "tier=1",
        ],
        log=tmp_path / "agent.log",
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process)
        identity = httpx.get(f"{url}/api/v1/agent", timeout=2.0).json()
        assert identity["labels"] == {"role": "web", "tier": "1"}
    finally:
        assert process.stop() == 0
