"""The compose files stay consistent with the code and with each other (Docker cannot run here).

``docker-compose.yml`` is the original design's setup on SQLite; ``docker-compose.postgres.yml``
runs two server replicas on one PostgreSQL behind HAProxy (``deploy/compose/haproxy.cfg``).
That each service's command line and environment are ones ``tsched`` accepts is checked, with
every other deployment file, by tests/test_deploy.py (whose helpers these tests share); here,
how the services of each file fit together.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from test_deploy import (
    ROOT,
    compose_environment,
    compose_services,
    option_value,
    placeholders,
    runs_tsched,
)

SQLITE = compose_services(ROOT / "docker-compose.yml")
POSTGRES = compose_services(ROOT / "docker-compose.postgres.yml")
HAPROXY = ROOT / "deploy" / "compose" / "haproxy.cfg"


def named(services: dict[str, dict[str, Any]], subcommand: str) -> list[str]:
    """The services running ``tsched SUBCOMMAND``, by name."""
    return sorted(
        name
        for name, service in services.items()
        if runs_tsched(service) and service["command"][0] == subcommand
    )


def port_of(service: dict[str, Any]) -> str:
    return option_value(tuple(service["command"]), "--port")


# --- docker-compose.yml: one server on SQLite, three agents --------------------------------------


def test_three_agents_each_known_to_the_server() -> None:
    agents = named(SQLITE, "agent")
    assert len(agents) == 3
    available = SQLITE["server"]["environment"]["AVAILABLE_SERVERS"].split(",")
    for agent in agents:
        environment = SQLITE[agent]["environment"]
        assert environment["TSCHED_ADVERTISE_URL"] in available
        assert environment["TSCHED_SERVER"] == "http://server:8080"
    assert SQLITE["server"]["ports"] == ["8080:8080"]


def test_dockerfile_installs_the_package_and_runs_tsched() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install" in dockerfile
    assert 'ENTRYPOINT ["tsched"]' in dockerfile
    # numeric, so that Kubernetes can check runAsNonRoot (deploy/kubernetes runs it as 1000)
    assert re.search(r"^USER 1000(:1000)?$", dockerfile, re.MULTILINE)
    assert "--uid 1000" in dockerfile
    for service in SQLITE.values():
        assert service["build"] == "."


@pytest.mark.parametrize("services", [SQLITE, POSTGRES], ids=["sqlite", "postgres"])
def test_agents_get_longer_to_stop_than_their_kill_grace(services: dict[str, Any]) -> None:
    for name in named(services, "agent"):
        assert services[name]["stop_grace_period"] == "20s", name  # --kill-grace is 10 s


@pytest.mark.parametrize("services", [SQLITE, POSTGRES], ids=["sqlite", "postgres"])
def test_agents_advertise_their_own_service_and_keep_their_state(services: dict[str, Any]) -> None:
    for name in named(services, "agent"):
        agent = services[name]
        assert agent["environment"]["TSCHED_ADVERTISE_URL"] == f"http://{name}:{port_of(agent)}"
        data_dir = option_value(tuple(agent["command"]), "--data-dir")
        assert f"{name}-data:{data_dir}" in agent["volumes"]


# --- docker-compose.postgres.yml: two replicas on PostgreSQL, behind one address -----------------


def test_two_replicas_share_one_postgresql_database() -> None:
    replicas = named(POSTGRES, "server")
    assert len(replicas) == 2
    environments = [compose_environment(POSTGRES[name]) for name in replicas]
    databases = {environment["TSCHED_DATABASE"] for environment in environments}
    (database,) = databases
    assert database is not None
    url = urlsplit(placeholders(database))
    assert url.scheme == "postgresql"
    assert url.hostname == "postgres"
    assert url.port == 5432
    assert len({environment["TSCHED_REPLICA_ID"] for environment in environments}) == 2
    for name in replicas:
        assert POSTGRES[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "ports" not in POSTGRES[name], f"{name}: reached through `server` only"
    # the password the replicas connect with is the one the database is created with
    postgres = POSTGRES["postgres"]
    password = postgres["environment"]["POSTGRES_PASSWORD"]
    assert password.startswith("${POSTGRES_PASSWORD:?")
    assert ":${POSTGRES_PASSWORD}@" in database
    assert url.username == postgres["environment"]["POSTGRES_USER"]
    assert url.path == "/" + postgres["environment"]["POSTGRES_DB"]
    assert "pg_isready" in postgres["healthcheck"]["test"]


def haproxy_backends() -> list[tuple[str, str]]:
    """The ``server NAME HOST:PORT`` lines of haproxy.cfg, as (host, port)."""
    return [
        (match[1], match[2])
        for match in re.finditer(r"^\s*server\s+\S+\s+([\w.-]+):(\d+)", HAPROXY.read_text(), re.M)
    ]


def test_server_is_a_proxy_in_front_of_every_replica() -> None:
    proxy = POSTGRES["server"]
    assert not runs_tsched(proxy)
    assert str(proxy["image"]).startswith("haproxy:")
    mount = f"./{HAPROXY.relative_to(ROOT).as_posix()}:/usr/local/etc/haproxy/haproxy.cfg:ro"
    assert mount in proxy["volumes"]
    assert proxy["ports"] == ["8080:8080"]
    config = HAPROXY.read_text()
    assert re.search(r"^\s*bind :8080$", config, re.M)
    # only ready replicas get requests: /readyz says the database is reachable
    assert re.search(r"^\s*option httpchk GET /readyz$", config, re.M)
    replicas = named(POSTGRES, "server")
    assert sorted(haproxy_backends()) == [(name, port_of(POSTGRES[name])) for name in replicas]
    assert set(proxy["depends_on"]) == set(replicas)


def test_agents_register_through_the_proxy() -> None:
    agents = named(POSTGRES, "agent")
    assert len(agents) >= 2
    for name in agents:
        environment = POSTGRES[name]["environment"]
        assert environment["TSCHED_SERVER"] == "http://server:8080"
        assert environment["TSCHED_JOIN_TOKEN"].startswith("${TSCHED_JOIN_TOKEN")
    # a registering agent is enough: no static list of agents to keep in step
    for name in named(POSTGRES, "server"):
        assert "AVAILABLE_SERVERS" not in POSTGRES[name]["environment"]


def test_the_variants_do_not_share_containers_or_volumes() -> None:
    """Without its own project name the PostgreSQL variant would reuse the SQLite one's agent
    volumes (same directory, same service names), and so their ids and credentials."""

    assert yaml.safe_load((ROOT / "docker-compose.postgres.yml").read_text())["name"]
