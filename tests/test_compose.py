"""docker-compose.yml stays consistent with the code (Docker itself cannot run here).

Each service's command must parse as a ``tsched`` command line, and each of its environment
variables must be one that the command reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from taskscheduler_client.cli import tsched

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def envvars(command: click.Command) -> set[str]:
    names: set[str] = set()
    for param in command.params:
        envvar = getattr(param, "envvar", None)
        if isinstance(envvar, str):
            names.add(envvar)
        elif envvar:
            names.update(envvar)
    return names


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_command_and_environment_are_accepted_by_tsched(name: str) -> None:
    service = SERVICES[name]
    args = service["command"]
    assert isinstance(args, list), "use the exec form, a list of arguments"
    subcommand = tsched.commands[args[0]]
    with click.Context(tsched, info_name="tsched") as parent:
        subcommand.make_context(args[0], list(args[1:]), parent=parent)  # raises if it won't parse
    unknown = set(service.get("environment", {})) - envvars(subcommand)
    assert not unknown, f"{name}: tsched {args[0]} reads no {sorted(unknown)}"


def test_three_agents_each_known_to_the_server() -> None:
    agents = sorted(name for name in SERVICES if SERVICES[name]["command"][0] == "agent")
    assert len(agents) == 3
    available = SERVICES["server"]["environment"]["AVAILABLE_SERVERS"].split(",")
    for agent in agents:
        environment = SERVICES[agent]["environment"]
        assert environment["TSCHED_ADVERTISE_URL"] in available
        assert environment["TSCHED_SERVER"] == "http://server:8080"
    assert SERVICES["server"]["ports"] == ["8080:8080"]


def test_dockerfile_installs_the_package_and_runs_tsched() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install" in dockerfile
    assert 'ENTRYPOINT ["tsched"]' in dockerfile
    for service in SERVICES.values():
        assert service["build"] == "."


def test_agents_get_longer_to_stop_than_their_kill_grace() -> None:
    for name, service in SERVICES.items():
        if service["command"][0] == "agent":
            assert service["stop_grace_period"] == "20s", name  # --kill-grace is 10 s
