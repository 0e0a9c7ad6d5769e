"""TLS end to end: HTTPS server and agents, verification with a given CA, and mutual TLS.

Certificates are made on the fly by ``trustme``: one CA signs the server's, the agents' and the
clients' certificates (each for ``127.0.0.1``). Everything runs as real ``tsched`` processes on
loopback.
"""

from __future__ import annotations

import ssl
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import attrs
import httpx
import pytest
import trio
import trustme
from click.testing import CliRunner

from processes import TSCHED, Tsched, free_port, wait_until
from taskscheduler_client import AsyncClient, CertificateVerifyFailed, Client, TlsConfigError
from taskscheduler_client.cli import tsched as tsched_cli
from taskscheduler_server import ServerConfig, serve


@attrs.frozen
class Pki:
    """PEM files under one directory: the CA, and a certificate + key per role."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    def cert(self, role: str) -> Path:
        return self.directory / f"{role}.pem"

    def key(self, role: str) -> Path:
        return self.directory / f"{role}.key"

    def context(self, role: str | None = None) -> ssl.SSLContext:
        """A client context trusting the CA (and presenting ``role``'s certificate)."""
        context = ssl.create_default_context(cafile=self.ca)
        if role is not None:
            context.load_cert_chain(self.cert(role), self.key(role))
        return context


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    pki = Pki(directory)
    for role in ("server", "agent", "client"):
        issued = ca.issue_cert("127.0.0.1", "localhost")
        for n, pem in enumerate(issued.cert_chain_pems):
            pem.write_to_path(str(pki.cert(role)), append=n > 0)
        issued.private_key_pem.write_to_path(str(pki.key(role)))
    return pki


def _wait_https(url: str, process: Tsched, context: ssl.SSLContext) -> None:
    def healthy() -> bool:
        if process.process.poll() is not None:
            pytest.fail(f"tsched exited with {process.process.returncode}:\n{process.output()}")
        return httpx.get(f"{url}/healthz", verify=context, timeout=1.0).status_code == 200

    wait_until(healthy, timeout=20.0, what=f"{url}/healthz")


def _registered(url: str, context: ssl.SSLContext) -> list[dict[str, str]]:
    response = httpx.get(f"{url}/api/v1/agents", verify=context, timeout=2.0)
    response.raise_for_status()
    listed: list[dict[str, str]] = response.json()["agents"]
    return listed


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [TSCHED, *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL
    )


def _https_server(
    tsched: Callable[..., Tsched], tmp_path: Path, pki: Pki, *extra: str
) -> tuple[str, Tsched]:
    port = free_port()
    server = tsched(
        "server",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path / "server"),
        "--tls-cert",
        str(pki.cert("server")),
        "--tls-key",
        str(pki.key("server")),
        "--ca-cert",
        str(pki.ca),
        *extra,
    )
    url = f"https://127.0.0.1:{port}"
    _wait_https(url, server, pki.context("client"))
    assert f"server listening on {url}" in server.output()
    return url, server


def _https_agent(
    tsched: Callable[..., Tsched], tmp_path: Path, pki: Pki, server_url: str, *extra: str
) -> tuple[str, Tsched]:
    port = free_port()
    agent = tsched(
        "agent",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path / f"agent-{port}"),
        "--server",
        server_url,
        "--tls-cert",
        str(pki.cert("agent")),
        "--tls-key",
        str(pki.key("agent")),
        "--ca-cert",
        str(pki.ca),
        *extra,
    )
    url = f"https://127.0.0.1:{port}"
    _wait_https(url, agent, pki.context())
    return url, agent


def test_a_task_runs_end_to_end_over_https(
    tsched: Callable[..., Tsched], tmp_path: Path, pki: Pki
) -> None:
    server_url, server = _https_server(tsched, tmp_path, pki)
    agent_url, agent = _https_agent(tsched, tmp_path, pki, server_url)
    # The agent registered its https:// URL: the server pushes tasks to it over TLS,
    # verifying its certificate with --ca-cert.
    wait_until(
        lambda: [a["url"] for a in _registered(server_url, pki.context())] == [agent_url],
        timeout=20.0,
        what="the agent's registration",
    )

    # Without the CA the CLI refuses the server's certificate, in one line.
    refused = _cli("--url", server_url, "create", "echo never", "-f", "every 1 second")
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: ")
    assert refused.stderr.count("\n") == 1
    assert "certificate is not trusted" in refused.stderr
    assert "--ca-cert" in refused.stderr

    created = _cli(
        "--url",
        server_url,
        "--ca-cert",
        str(pki.ca),
        "create",
        "echo over tls",
        "-f",
        "every 1 second",
    )
    assert created.returncode == 0, created.stderr
    task_id = uuid.UUID(created.stdout.strip())
    shown = _cli(
        "--url", server_url, "--ca-cert", str(pki.ca), "output", str(task_id), "--wait", "30"
    )
    assert shown.returncode == 0, f"{shown.stderr}\n{server.output()}\n{agent.output()}"
    assert "over tls" in shown.stdout

    # The Python client verifies the same way.
    with Client(server_url, ca_cert=pki.ca) as client:
        assert client.latest_output(task_id).outputs[0].stdout == "over tls\n"
    with Client(server_url) as client, pytest.raises(CertificateVerifyFailed):
        client.latest_output(task_id)


def test_mutual_tls_refuses_agents_and_clients_without_a_certificate(
    tsched: Callable[..., Tsched], tmp_path: Path, pki: Pki
) -> None:
    server_url, server = _https_server(tsched, tmp_path, pki, "--client-ca", str(pki.ca))
    _, anonymous = _https_agent(tsched, tmp_path, pki, server_url)
    agent_url, agent = _https_agent(
        tsched,
        tmp_path,
        pki,
        server_url,
        "--tls-client-cert",
        str(pki.cert("agent")),
        "--tls-client-key",
        str(pki.key("agent")),
    )
    mtls = pki.context("client")
    wait_until(
        lambda: [a["url"] for a in _registered(server_url, mtls)] == [agent_url],
        timeout=20.0,
        what="the registration of the agent with a client certificate",
    )
    wait_until(
        lambda: "could not register" in anonymous.output(),
        timeout=10.0,
        what="the agent without a client certificate to be refused",
    )
    assert [a["url"] for a in _registered(server_url, mtls)] == [agent_url]

    # A client without a certificate is refused too (one line), with one it gets through.
    refused = _cli(
        "--url", server_url, "--ca-cert", str(pki.ca), "create", "true", "-f", "every 1 second"
    )
    assert refused.returncode == 1
    assert refused.stderr.startswith("error: ")
    assert refused.stderr.count("\n") == 1
    assert "--tls-client-cert" in refused.stderr
    created = _cli(
        "--url",
        server_url,
        "--ca-cert",
        str(pki.ca),
        "--tls-client-cert",
        str(pki.cert("client")),
        "--tls-client-key",
        str(pki.key("client")),
        "create",
        "echo mutual",
        "-f",
        "every 1 second",
    )
    assert created.returncode == 0, created.stderr
    task_id = created.stdout.strip()
    with Client(
        server_url, ca_cert=pki.ca, client_cert=pki.cert("client"), client_key=pki.key("client")
    ) as client:
        output = client.wait_for_output(task_id, timeout=30)
    assert [entry.stdout for entry in output.outputs] == ["mutual\n"], (
        f"{server.output()}\n{agent.output()}"
    )


@pytest.mark.parametrize(
    ("command", "flags", "message"),
    [
        ("server", ["--tls-cert", "{missing}", "--tls-key", "{key}"], "cannot read {missing}"),
        ("server", ["--tls-cert", "{cert}"], "give both the certificate and the key"),
        ("server", ["--ca-cert", "{missing}"], "cannot read {missing}"),
        ("server", ["--tls-cert", "{key}", "--tls-key", "{key}"], "cannot use certificate"),
        ("server", ["--client-ca", "{ca}"], "needs tls_cert"),
        ("agent", ["--tls-key", "{key}"], "give both the certificate and the key"),
        ("agent", ["--tls-cert", "{cert}", "--tls-key", "{missing}"], "cannot read {missing}"),
        ("agent", ["--ca-cert", "{missing}"], "cannot read {missing}"),
        ("agent", ["--tls-client-cert", "{cert}"], "give both the certificate and the key"),
    ],
)
def test_unusable_tls_files_are_one_line_errors(
    tmp_path: Path, pki: Pki, command: str, flags: list[str], message: str
) -> None:
    names = {
        "missing": str(tmp_path / "missing.pem"),
        "cert": str(pki.cert("server")),
        "key": str(pki.key("server")),
        "ca": str(pki.ca),
    }
    args = [command, "--port", "0", "--data-dir", str(tmp_path / "data")]
    args += [flag.format(**names) for flag in flags]
    result = CliRunner().invoke(tsched_cli, args)
    assert result.exit_code == 1, result.output
    lines = result.output.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert message.format(**names) in lines[0]


def test_the_client_refuses_a_missing_ca_file(tmp_path: Path) -> None:
    with pytest.raises(TlsConfigError, match="cannot read"):
        Client("https://127.0.0.1:1", ca_cert=tmp_path / "nope.pem")
    result = CliRunner().invoke(
        tsched_cli, ["--ca-cert", str(tmp_path / "nope.pem"), "output", str(uuid.uuid4())]
    )
    assert result.exit_code == 1
    assert result.output.startswith("error: cannot read ")
    assert result.output.count("\n") == 1


def test_tls_files_come_from_the_environment_too(tmp_path: Path, pki: Pki) -> None:
    env = {"TSCHED_TLS_CERT": str(pki.cert("server")), "TSCHED_TLS_KEY": str(tmp_path / "no.key")}
    for command in ("server", "agent"):
        result = CliRunner().invoke(
            tsched_cli, [command, "--port", "0", "--data-dir", str(tmp_path)], env=env
        )
        assert result.exit_code == 1
        assert (
            result.output
            == f"error: cannot read {tmp_path / 'no.key'}: No such file or directory\n"
        )


async def test_serve_in_process_over_https_with_the_async_client(tmp_path: Path, pki: Pki) -> None:
    config = ServerConfig(
        database=tmp_path / "server.sqlite3",
        port=0,
        tls_cert=pki.cert("server"),
        tls_key=pki.key("server"),
    )
    async with trio.open_nursery() as nursery:
        url = await nursery.start(serve, config)
        assert url.startswith("https://127.0.0.1:")
        async with AsyncClient(url, ca_cert=str(pki.ca)) as client:
            assert await client.health()
            task = await client.create_task("echo hi", "every 1 hour")
            assert (await client.latest_output(task.id)).completion_time is None
        async with AsyncClient(url) as client:
            with pytest.raises(CertificateVerifyFailed):
                await client.agents()
        nursery.cancel_scope.cancel()
