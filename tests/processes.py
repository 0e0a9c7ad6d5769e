"""Running the real ``tsched`` programs as processes on loopback, for end-to-end tests.

Each process gets a free port on 127.0.0.1 and a data directory under ``tmp_path``; every wait is
bounded, and every process is stopped (and, if it will not stop, killed) when the test ends.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

#: The installed ``tsched`` entry point, next to the interpreter running the tests.
TSCHED = str(Path(sys.executable).parent / "tsched")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    condition: Callable[[], Any], *, timeout: float, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
        except httpx.TransportError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


class Tsched:
    """One running ``tsched`` process; its output goes to a log file for failure reports."""

    def __init__(self, args: list[str], *, log: Path, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.log = log
        self._log_file = log.open("ab")
        self.process = subprocess.Popen(
            [TSCHED, *args],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )

    def output(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15.0) -> int:
        """Stop the process with ``sig`` (Ctrl-C by default) and return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                pytest.fail(f"tsched {self.args[0]} did not stop on {sig!r}:\n{self.output()}")
        self._log_file.close()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log_file.close()


def wait_healthy(url: str, process: Tsched, timeout: float = 20.0) -> None:
    def healthy() -> bool:
        if process.process.poll() is not None:
            pytest.fail(f"tsched exited with {process.process.returncode}:\n{process.output()}")
        return httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200

    wait_until(healthy, timeout=timeout, what=f"{url}/healthz")


def agents(url: str) -> list[dict[str, str]]:
    """The agents the server at ``url`` knows (``GET /api/v1/agents``)."""
    response = httpx.get(f"{url}/api/v1/agents", timeout=2.0)
    response.raise_for_status()
    listed: list[dict[str, str]] = response.json()["agents"]
    return listed
