"""Safe defaults and token sources, with real ``tsched`` processes: a non-loopback address needs
tokens (or ``--insecure``), a token file must be private, and the CLI presents ``--token``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest

from processes import TSCHED, Tsched, free_port, wait_healthy, wait_until

pytestmark = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


def run_tsched(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TSCHED_")}
    return subprocess.run(
        [TSCHED, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize(
    ("command", "missing"),
    [
        (["server"], "--admin-token and --join-token"),
        (["server", "--admin-token", "a"], "--join-token"),
        (["server", "--join-token", "j"], "--admin-token"),
        (["agent"], "--join-token"),
    ],
)
def test_a_non_loopback_address_without_tokens_is_refused(
    tmp_path: Path, command: list[str], missing: str
) -> None:
    result = run_tsched(*command, "--host", "0.0.0.0", "--port", "0", "--data-dir", str(tmp_path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "refusing to listen on 0.0.0.0 without" in lines[0]
    assert missing in lines[0]
    assert "--insecure" in lines[0]
    assert "listening" not in result.stdout
    # Refused before anything was created or bound.
    assert not (tmp_path / "server.sqlite3").exists()
    assert not (tmp_path / "agent" / "agent.sqlite3").exists()


@pytest.mark.parametrize(
    "options",
    [["--insecure"], ["--admin-token", "a", "--join-token", "j"]],
    ids=["insecure", "tokens"],
)
def test_a_non_loopback_server_starts_with_tokens_or_insecure(
    tmp_path: Path, options: list[str]
) -> None:
    port = free_port()
    server = Tsched(
        ["server", "--host", "0.0.0.0", "--port", str(port), "--data-dir", str(tmp_path), *options],
        log=tmp_path / "server.log",
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", server)
    finally:
        assert server.stop() == 0


def test_an_agent_with_insecure_starts_on_all_addresses(tmp_path: Path) -> None:
    port = free_port()
    agent = Tsched(
        [
            "agent",
            "--host",
            "0.0.0.0",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path),
            "--insecure",
        ],
        log=tmp_path / "agent.log",
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", agent)
    finally:
        assert agent.stop() == 0


def test_a_token_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("admin = a-secret\n")
    token_file.chmod(0o640)
    result = run_tsched(
        "server", "--port", "0", "--data-dir", str(tmp_path), "--token-file", str(token_file)
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: token file {token_file} is accessible by group or others (mode 0640); "
        f"run: chmod 600 {token_file}"
    ]
    assert "a-secret" not in result.stderr + result.stdout


def test_a_malformed_token_file_is_refused_in_one_line(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("admin: a-secret\n")
    token_file.chmod(0o600)
    result = run_tsched(
        "server", "--port", "0", "--data-dir", str(tmp_path), "--token-file", str(token_file)
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "line 1" in lines[0]
    assert "a-secret" not in result.stderr


def test_tokens_from_a_file_protect_the_api_and_the_cli_presents_them(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens"
    token_file.write_text("# tokens\nadmin = the-admin\nread = the-reader\njoin = the-join\n")
    token_file.chmod(0o600)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = Tsched(
        [
            "server",
            "--port",
            str(port),
            "--data-dir",
            str(tmp_path),
            "--token-file",
            str(token_file),
        ],
        log=tmp_path / "server.log",
    )
    try:
        wait_healthy(url, server)
        assert httpx.get(f"{url}/api/v1/agents").status_code == 401
        reader = {"Authorization": "Bearer the-reader"}
        assert httpx.get(f"{url}/api/v1/agents", headers=reader).status_code == 200

        create = ["--url", url, "create", "true", "--frequency", "every 1 hour"]
        anonymous = run_tsched(*create)
        assert anonymous.returncode == 1
        assert "bearer token" in anonymous.stderr
        assert "--token" in anonymous.stderr
        read_only = run_tsched("--token", "the-reader", *create)
        assert read_only.returncode == 1
        assert "admin token" in read_only.stderr
        admin = run_tsched("--token", "the-admin", *create)
        assert admin.returncode == 0, admin.stderr
    finally:
        server.stop()
    assert "the-admin" not in server.output()
    assert "the-reader" not in server.output()


def test_an_agent_keeps_its_credentials_private_and_uses_them_after_a_restart(
    tmp_path: Path,
) -> None:
    server_port, agent_port = free_port(), free_port()
    url = f"http://127.0.0.1:{server_port}"
    server = Tsched(
        [
            "server",
            "--port",
            str(server_port),
            "--data-dir",
            str(tmp_path / "server"),
            "--admin-token",
            "adm",
            "--join-token",
            "jt",
        ],
        log=tmp_path / "server.log",
    )
    agent_args = ["agent", "--port", str(agent_port), "--data-dir", str(tmp_path / "agent")]
    agent_args += ["--server", url, "--join-token", "jt", "--heartbeat-interval", "0.2"]
    try:
        wait_healthy(url, server)
        headers = {"Authorization": "Bearer adm"}

        def last_seen() -> str | None:
            listed = httpx.get(f"{url}/api/v1/agents", headers=headers).json()["agents"]
            return listed[0]["last_seen_at"] if listed else None

        seen_before = None
        for attempt in range(2):  # the second start re-registers with the saved credential
            agent = Tsched(agent_args, log=tmp_path / f"agent{attempt}.log")
            try:
                credentials = tmp_path / "agent" / "credentials.json"
                wait_until(credentials.exists, timeout=20, what="the agent's credentials")
                assert credentials.stat().st_mode & 0o777 == 0o600
                # Registrations and heartbeats with the agent's credential are accepted.
                wait_until(
                    lambda before=seen_before: last_seen() not in (None, before),
                    timeout=20,
                    what="heartbeats",
                )
                # The agent's scheduling endpoints answer the server alone.
                tasks = f"http://127.0.0.1:{agent_port}/api/v1/tasks"
                assert httpx.get(tasks).status_code == 401
                assert httpx.get(tasks, headers=headers).status_code == 401
            finally:
                assert agent.stop() == 0
            assert "403" not in agent.output(), agent.output()
            seen_before = last_seen()
    finally:
        server.stop()
