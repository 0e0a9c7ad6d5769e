"""Running the real ``tsched`` programs as processes on loopback, for end-to-end tests.

Each process gets a free port on 127.0.0.1 and a data directory under ``tmp_path``; every wait is
bounded, and every process is stopped (and, if it will not stop, killed) when the test ends.

The fault tests (``tests/faults``) use the second half: a :class:`Cluster` of services that can be
killed and started again on the same port and data, readers of what each side recorded (the
server's ``executions`` table, each agent's ``journal`` and ``outbox``, read with ``sqlite3``),
and the :class:`Tally` that compares them.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence, Set
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

#: The installed ``tsched`` entry point, next to the interpreter running the tests.
TSCHED = str(Path(sys.executable).parent / "tsched")


def _ephemeral_ports() -> range:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def free_port() -> int:
    """A port nothing listens on now, to be bound a little later by a process we start.

    Picked below the kernel's ephemeral range: a port the kernel hands out (bind to port 0) can
    be taken by any outgoing connection in between, and the process would then fail to start.
    """
    ephemeral = _ephemeral_ports()
    for _ in range(200):
        port = random.randrange(10_000, 32_000)
        if port in ephemeral:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("no free port found on 127.0.0.1")


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


# --- fault tests: services killed and started again, and what each side recorded -------------

#: Liveness and reconcile settings short enough for fault tests to see them act in seconds.
FAST_SERVER_FLAGS = ("--lost-after", "2", "--reconcile-interval", "1")
FAST_AGENT_FLAGS = ("--heartbeat-interval", "0.5", "--kill-grace", "1")

#: An execution's identity as both sides can be compared on: (task, agent, scheduled_at µs).
Key = tuple[uuid.UUID, uuid.UUID, int]


class Service:
    """A ``tsched server`` or ``tsched agent`` on a fixed port and data directory.

    It can be stopped, killed, paused and started again any number of times; each life logs to
    its own file in ``logs``. ``env`` is added to each life's environment (``TSCHED_DATABASE``
    for a server on PostgreSQL, say: ``--database`` and ``--data-dir`` exclude each other).
    """

    def __init__(
        self,
        kind: str,
        *,
        port: int,
        data_dir: Path,
        logs: Path,
        flags: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.kind = kind
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.data_dir = data_dir
        self.logs = logs
        self.flags = tuple(flags)
        self.env = dict(env or {})
        self.lives: list[Tsched] = []

    @property
    def process(self) -> Tsched:
        assert self.lives, f"{self.kind} on port {self.port} was never started"
        return self.lives[-1]

    @property
    def running(self) -> bool:
        return bool(self.lives) and self.process.process.poll() is None

    def start(self, *extra: str, timeout: float = 20.0, wait: bool = True) -> Service:
        """Start (again) with the same port and data directory; returns once healthy, or at
        once with ``wait=False`` (then call :meth:`wait_healthy`)."""
        assert not self.running, f"{self.kind} on port {self.port} is already running"
        args = [self.kind, "--port", str(self.port), "--data-dir", str(self.data_dir)]
        log = self.logs / f"{self.kind}-{self.port}-{len(self.lives)}.log"
        self.lives.append(Tsched([*args, *self.flags, *extra], log=log, env=self.env))
        if wait:
            self.wait_healthy(timeout=timeout)
        return self

    def wait_healthy(self, timeout: float = 20.0) -> None:
        wait_healthy(self.url, self.process, timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Stop gracefully (SIGTERM by default); the exit status."""
        return self.process.stop(sig)

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind."""
        self.process.kill()

    def pause(self) -> None:
        self.process.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.process.process.send_signal(signal.SIGCONT)

    def output(self) -> str:
        return "\n".join(f"--- life {n} ---\n{life.output()}" for n, life in enumerate(self.lives))


class ServerService(Service):
    @property
    def database(self) -> Path:
        return self.data_dir / "server.sqlite3"

    def create(self, command: str, frequency: str) -> uuid.UUID:
        """``POST /api/v1/tasks/create``; the new task's id."""
        response = httpx.post(
            f"{self.url}/api/v1/tasks/create",
            json={"command": command, "frequency": frequency},
            timeout=10.0,
        )
        assert response.status_code == 201, response.text
        return uuid.UUID(response.json()["command_id"])

    def agent_status(self) -> dict[str, str]:
        """``GET /api/v1/agents`` as ``{agent id: status}``."""
        return {agent["id"]: agent["status"] for agent in agents(self.url)}

    def executions(self) -> list[StoredExecution]:
        return server_executions(self.database)


class AgentService(Service):
    def start_with(
        self, server: str | None, *, timeout: float = 20.0, wait: bool = True
    ) -> AgentService:
        """Start reporting to ``server`` (``None``: no server at all, reports stay on disk)."""
        self.start(*(() if server is None else ("--server", server)), timeout=timeout, wait=wait)
        return self

    @property
    def agent_id(self) -> uuid.UUID:
        return uuid.UUID((self.data_dir / "agent_id").read_text().strip())

    def tasks(self) -> set[uuid.UUID]:
        """The tasks the running agent has scheduled (``GET /api/v1/tasks``)."""
        response = httpx.get(f"{self.url}/api/v1/tasks", timeout=2.0)
        response.raise_for_status()
        return {uuid.UUID(spec["task_id"]) for spec in response.json()["tasks"]}

    def journal(self) -> list[JournalEntry]:
        return agent_journal(self.data_dir)

    def outbox(self) -> set[Key]:
        return agent_outbox(self.data_dir)


class Cluster:
    """A server and agents for one fault test, under one directory; all killed at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.services: list[Service] = []
        self.server = ServerService(
            "server",
            port=free_port(),
            data_dir=root / "server",
            logs=root,
            flags=FAST_SERVER_FLAGS,
        )
        self.services.append(self.server)

    def agent(self, name: str) -> AgentService:
        """A new agent (not started) with its own port and data directory."""
        agent = AgentService(
            "agent",
            port=free_port(),
            data_dir=self.root / name,
            logs=self.root,
            flags=FAST_AGENT_FLAGS,
        )
        self.services.append(agent)
        return agent

    def start(self, *wanted: AgentService) -> ServerService:
        """Start the server (unless it runs) and ``wanted`` reporting to it, side by side;
        returns the server once every one of them is up and the agents are ``alive``."""
        starting: list[Service] = [] if self.server.running else [self.server]
        starting += wanted
        for service in starting:
            if isinstance(service, AgentService):
                service.start_with(self.server.url, wait=False)
            else:
                service.start(wait=False)
        for service in starting:
            service.wait_healthy()
        self.wait_alive(*wanted)
        return self.server

    @staticmethod
    def stop_all(*services: Service, timeout: float = 15.0) -> None:
        """SIGTERM to each of ``services`` at once, then wait for each to exit with status 0."""
        running = [service for service in services if service.running]
        for service in running:
            service.process.process.send_signal(signal.SIGTERM)
        for service in running:
            try:
                service.process.process.wait(timeout)
            except subprocess.TimeoutExpired:
                service.kill()
                pytest.fail(f"{service.kind} {service.url} did not stop on SIGTERM")
            # It has exited: this only closes its log and returns the status.
            assert service.stop() == 0, service.output()

    def wait_alive(self, *wanted: AgentService, timeout: float = 20.0) -> None:
        """Wait until the server lists each of ``wanted`` (by its current id) as ``alive``."""
        ids = {str(agent.agent_id) for agent in wanted}
        wait_until(
            lambda: all(self.server.agent_status().get(i) == "alive" for i in ids),
            timeout=timeout,
            what=f"agents {sorted(ids)} alive",
        )

    def unstored(self, *wanted: AgentService) -> set[Key]:
        """What ``wanted`` journaled that the server has not stored (yet)."""
        ran = {entry.key for agent in wanted for entry in agent.journal()}
        return ran - {execution.key for execution in self.server.executions()}

    def settle(self, *wanted: AgentService, timeout: float = 30.0) -> None:
        """Wait until the server stored everything that ``wanted`` have journaled so far."""
        wait_until(
            lambda: not self.unstored(*wanted),
            timeout=timeout,
            what="the server to store every execution the agents journaled",
        )

    def account(
        self,
        scenario: str,
        *wanted: AgentService,
        earlier: Sequence[JournalEntry] = (),
        note: str = "",
    ) -> Tally:
        """Stop ``wanted`` (SIGTERM), compare their journals (plus ``earlier`` entries, of lives
        whose disk is gone) with the server's rows, print the table row, and assert that
        nothing was lost, doubled, or stored without having been run.
        """
        self.stop_all(*wanted)
        journal = [*earlier, *(entry for agent in wanted for entry in agent.journal())]
        pending = {key for agent in wanted for key in agent.outbox()}
        agent_ids = {agent.agent_id for agent in wanted} | {entry.key[1] for entry in earlier}
        stored = [e for e in self.server.executions() if e.key[1] in agent_ids]
        statuses = collections.Counter(
            entry.status for entry in {e.key: e for e in journal}.values()
        )
        breakdown = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
        if len(wanted) > 1:
            per_agent = collections.Counter(key[1] for key in {entry.key for entry in journal})
            counts = " + ".join(str(per_agent[agent.agent_id]) for agent in wanted)
            breakdown += f" ({counts} by agent)"
        result = tally(
            scenario,
            [entry.key for entry in journal],
            [execution.key for execution in stored],
            pending=pending,
            note=f"{note}; {breakdown}" if note else breakdown,
        )
        report(result)
        assert result.lost == 0, f"lost: {sorted(_unstored(journal, stored, pending))}"
        assert result.duplicated == 0, result
        phantoms = {e.key for e in stored} - {entry.key for entry in journal}
        assert not phantoms, f"stored but never run by an agent: {sorted(phantoms)}"
        by_key = {entry.key: entry.status for entry in journal}
        differing = [(e.key, by_key[e.key], e.status) for e in stored if by_key[e.key] != e.status]
        assert not differing, f"journal and server disagree on statuses: {differing}"
        return result

    def logs(self) -> str:
        return "\n".join(f"===== {s.kind} {s.url}\n{s.output()}" for s in self.services)

    def close(self) -> None:
        for service in reversed(self.services):
            for life in service.lives:
                life.kill()


# --- reading what each side recorded, straight from the SQLite files --------------------------


@dataclasses.dataclass(frozen=True)
class StoredExecution:
    """A row of the server's ``executions`` table."""

    key: Key
    status: str
    started_at: float  # Unix time
    stderr: str


@dataclasses.dataclass(frozen=True)
class JournalEntry:
    """A row of an agent's ``journal`` table (one per execution it ran or recorded)."""

    key: Key
    status: str


def read_sqlite(path: Path, sql: str, *, attempts: int = 20) -> list[sqlite3.Row]:
    """Rows of ``sql`` from the database at ``path``, read-only, safe beside a live writer.

    An absent file reads as no rows. A read can meet a writer's lock or a file being created;
    it is retried for about a second before it fails.
    """
    if not path.exists():
        return []
    for attempt in range(attempts):
        try:
            with contextlib.closing(
                sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5.0)
            ) as connection:
                connection.row_factory = sqlite3.Row
                return connection.execute(sql).fetchall()
        except sqlite3.OperationalError as error:
            if attempt == attempts - 1 or "no such table" in str(error):
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")


def micros(moment: str | int) -> int:
    """A time as integer microseconds since the epoch: the server stores them so; the agent
    journal writes the wire format."""
    if isinstance(moment, int):
        return moment
    from taskscheduler_core import parse_time

    return (parse_time(moment) - _EPOCH) // _MICROSECOND


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def server_executions(database: Path) -> list[StoredExecution]:
    """Every execution the server stored (its ``executions`` table)."""
    rows = read_sqlite(
        database,
        "SELECT task_id, agent_id, scheduled_at, status, started_at, stderr FROM executions",
    )
    return [
        StoredExecution(
            key=(
                uuid.UUID(row["task_id"]),
                uuid.UUID(row["agent_id"]),
                micros(row["scheduled_at"]),
            ),
            status=row["status"],
            started_at=micros(row["started_at"]) / 1e6,
            stderr=row["stderr"] or "",
        )
        for row in rows
    ]


def agent_journal(data_dir: Path) -> list[JournalEntry]:
    """Every execution the agent in ``data_dir`` ran or recorded (its ``journal`` table)."""
    id_file = data_dir / "agent_id"
    if not id_file.exists():
        return []
    agent_id = uuid.UUID(id_file.read_text().strip())
    rows = read_sqlite(
        data_dir / "agent.sqlite3", "SELECT task_id, scheduled_at, status FROM journal"
    )
    return [
        JournalEntry(
            key=(uuid.UUID(row["task_id"]), agent_id, micros(row["scheduled_at"])),
            status=row["status"],
        )
        for row in rows
    ]


def agent_outbox(data_dir: Path) -> set[Key]:
    """The executions the agent in ``data_dir`` holds, not yet acknowledged (``outbox``)."""
    id_file = data_dir / "agent_id"
    if not id_file.exists():
        return set()
    agent_id = uuid.UUID(id_file.read_text().strip())
    rows = read_sqlite(data_dir / "agent.sqlite3", "SELECT task_id, scheduled_at FROM outbox")
    return {(uuid.UUID(row["task_id"]), agent_id, micros(row["scheduled_at"])) for row in rows}


def _unstored(
    journal: Sequence[JournalEntry], stored: Sequence[StoredExecution], pending: Set[Key]
) -> set[Key]:
    return {entry.key for entry in journal} - {e.key for e in stored} - pending


def process_group_alive(group: int) -> bool:
    """Whether any live process (zombies do not count) is in process group ``group``."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        # "pid (comm) state ppid pgrp ...": comm may hold spaces and parentheses
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == group and fields[0] not in ("Z", "X"):
            return True
    return False


# --- the fault table ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Tally:
    """One scenario's result: what the agents ran against what the server stored."""

    scenario: str
    run: int  #: distinct executions the agents ran or recorded (their journals)
    stored: int  #: of those, stored by the server
    lost: int  #: ran, not stored, and not waiting in an outbox either
    duplicated: int  #: executions recorded more than once, by the server or across journals
    pending: int = 0  #: ran, not stored yet, still in an agent's outbox on disk
    note: str = ""

    HEADER = (
        "| scenario | run by agents | stored by server | lost | duplicated | pending | notes |\n"
        "|---|---:|---:|---:|---:|---:|---|"
    )

    def row(self) -> str:
        cells = (self.run, self.stored, self.lost, self.duplicated, self.pending)
        return f"| {self.scenario} | " + " | ".join(map(str, cells)) + f" | {self.note} |"


def tally(
    scenario: str,
    ran: Sequence[Key],
    stored: Sequence[Key],
    *,
    pending: Set[Key] = frozenset(),
    note: str = "",
) -> Tally:
    """Compare the executions agents ran (``ran``, journal rows, several lives concatenated)
    with the server's rows ``stored`` and what is still in outboxes (``pending``)."""
    ran_once = set(ran)
    stored_once = set(stored)
    duplicated = (len(ran) - len(ran_once)) + (len(stored) - len(stored_once))
    return Tally(
        scenario=scenario,
        run=len(ran_once),
        stored=len(ran_once & stored_once),
        lost=len(ran_once - stored_once - pending),
        duplicated=duplicated,
        pending=len((ran_once - stored_once) & pending),
        note=note,
    )


def report(result: Tally) -> None:
    """Print the row (seen with ``pytest -s``) and append it to ``$TSCHED_FAULTS_REPORT``."""
    print(f"\n{Tally.HEADER}\n{result.row()}")
    path = os.environ.get("TSCHED_FAULTS_REPORT")
    if path:
        target = Path(path)
        header = "" if target.exists() and target.stat().st_size else Tally.HEADER + "\n"
        with target.open("a", encoding="utf-8") as file:
            file.write(f"{header}{result.row()}\n")
