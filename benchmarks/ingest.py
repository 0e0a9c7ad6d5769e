"""Report ingestion: executions a real ``tsched server`` acknowledges (durably) per second.

A real ``tsched server`` runs on a free loopback port with its SQLite file in a temporary
directory (``synchronous=FULL``: every acknowledged report is on disk) and retention off, so
that nothing it stored is pruned before it is counted. ``--tasks`` tasks are created through
its API first. Then a load generator in its own process (``python -m benchmarks.ingest load``:
hand-written HTTP/1.1 keep-alive over ``--connections`` raw sockets and one ``epoll`` loop, the
cheapest client Python has, since it shares the 2 cores with the server) keeps every
connection busy for ``--seconds`` with

- ``POST /api/v1/tasks/{id}/complete``: one report a request, as each agent sent until now;
- ``POST /api/v1/executions``: batches of ``--batch`` reports (100 and 500 by default).

Every report has its own execution key (each connection is one agent; fire times count up by
a microsecond), so each one is a new durable write, and every answer is checked: status 200 and
each report ``acknowledged``, not a ``duplicate``. Requests are built from a template made once
(only the task id and the fire time are filled in per report). At the end the server's
``executions`` table (read-only, beside the running server) must hold exactly the reports that
were acknowledged.

The ceiling is measured in the same run with the same load generator and the same request
shapes: a bare ASGI callable answering ``200 {"ok":true}`` to any POST (after reading the
body), served by hypercorn's trio worker in its own process with the settings of our server
(``taskscheduler_server.serve.hypercorn_config``). Run it with::

    python -m benchmarks.ingest --seconds 10 --tasks 100 --connections 32 --shapes 0 100 500

``--postgresql URL`` stores in PostgreSQL instead (a fresh schema of that database, dropped at
the end; the server's pool and commits are PostgreSQL's: ``synchronous_commit`` as the server
is configured)::

    python -m benchmarks.ingest --postgresql postgresql://root@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import selectors
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlencode
from uuid import UUID, uuid4

import httpx

from benchmarks.fire_precision import _free_port, _wait
from benchmarks.report import Result, Size

TSCHED = str(Path(sys.executable).parent / "tsched")
ROOT = Path(__file__).resolve().parent.parent
#: Placeholders of the report template, filled in per report.
_TASK, _TIME = "@TASK@", "@TIME@"
#: When the first reported execution was scheduled; each next one a microsecond later.
_EPOCH = datetime(2026, 11, 28, tzinfo=UTC)


# -- the ceiling: a bare hypercorn-trio app ---------------------------------------------------


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``200 {"ok":true}`` to any request, once its body is read (lifespan acknowledged)."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    body = b'{"ok":true}'
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve_bare(port: int) -> None:
    """Serve :func:`bare_app` on 127.0.0.1:``port`` as ``tsched server`` serves its app."""
    import hypercorn.trio
    import trio

    from taskscheduler_server import ServerConfig
    from taskscheduler_server.serve import hypercorn_config

    settings = hypercorn_config(ServerConfig(database="unused", host="127.0.0.1", port=port))
    # A raw ASGI callable is looser than hypercorn's annotations; it does fit.
    trio.run(hypercorn.trio.serve, cast(Any, bare_app), settings)


# -- the load generator -----------------------------------------------------------------------


def report_template(agent_id: UUID) -> str:
    """The JSON of one report as our agent sends it (every field), task and time left open."""
    moment = "2026-11-28T00:00:00.000000Z"
    report = {
        "task_id": _TASK,
        "server_id": str(agent_id),
        "stdout": "hello world\n",
        "stderr": "",
        "scheduled_at": _TIME,
        "started_at": moment,
        "finished_at": moment,
        "status": "succeeded",
        "exit_code": 0,
        "stdout_dropped": 0,
        "stderr_dropped": 0,
        "attempt": 1,
        "trigger": "schedule",
        "final": True,
    }
    return json.dumps(report, separators=(",", ":"))


@dataclass
class _Connection:
    """One keep-alive connection: what is left to send, what came back, the open request."""

    sock: socket.socket
    agent_id: UUID
    template: str
    outgoing: memoryview = field(default_factory=lambda: memoryview(b""))
    incoming: bytearray = field(default_factory=bytearray)
    sent_at: float = 0.0
    reports: int = 0  # in the request in flight (0: none in flight)


@dataclass
class Load:
    """What to send to the server ``pid`` listening on ``port``, shape after shape: ``0`` is one
    report a ``/complete`` request, ``n`` batches of ``n`` to ``/api/v1/executions``."""

    port: int
    pid: int
    task_ids: list[str]
    shapes: list[int]
    connections: int
    seconds: float
    #: The answer a request must get (``bare``: the ceiling's ``{"ok":true}``).
    bare: bool = False
    drain: float = 30.0
    host: str = "127.0.0.1"


class LoadGenerator:
    """Keeps every connection busy with the next request of one shape (``batch``) until
    ``seconds`` have passed."""

    def __init__(self, load: Load, batch: int) -> None:
        self.load = load
        self.batch = batch
        self.counter = 0
        self.acknowledged = 0  # reports, in the window
        self.acknowledged_total = 0  # reports, the drained ones too
        self.requests = 0  # answered in the window
        self.failures: list[str] = []
        self.latencies: list[float] = []
        self.host = f"{load.host}:{load.port}"

    def _reports(self, connection: _Connection, count: int) -> list[tuple[str, str]]:
        """The next ``count`` reports: (task id, report JSON), each with a key of its own."""
        task_ids = self.load.task_ids
        first = self.counter
        self.counter += count
        reports = []
        for number in range(first, first + count):
            task_id = task_ids[number % len(task_ids)]
            moment = (_EPOCH + timedelta(microseconds=number)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            text = connection.template.replace(_TASK, task_id, 1).replace(_TIME, moment, 1)
            reports.append((task_id, text))
        return reports

    def request(self, connection: _Connection) -> bytes:
        """The next request of ``connection``, every report in it with a new key."""
        if self.batch == 0:
            [(task_id, text)] = self._reports(connection, 1)
            path = f"/api/v1/tasks/{task_id}/complete"
            # The single endpoint takes the task from its path, not the body.
            body = text.replace(f'"task_id":"{task_id}",', "", 1).encode()
            connection.reports = 1
        else:
            path = "/api/v1/executions"
            texts = [text for _, text in self._reports(connection, self.batch)]
            body = ('{"executions":[' + ",".join(texts) + "]}").encode()
            connection.reports = self.batch
        head = (
            f"POST {path} HTTP/1.1\r\nhost: {self.host}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    def check(self, status: int, body: bytes, reports: int) -> bool:
        if status != 200:
            self.failures.append(f"status {status}: {body[:200]!r}")
            return False
        if self.load.bare:
            ok = body == b'{"ok":true}'
        elif self.batch == 0:
            ok = json.loads(body) == {"acknowledged": True, "duplicate": False}
        else:
            results = json.loads(body)["results"]
            fresh = {"acknowledged": True, "duplicate": False, "error": None}
            ok = len(results) == reports and all(result == fresh for result in results)
        if not ok:
            self.failures.append(f"not acknowledged: {body[:200]!r}")
        return ok

    def run(self) -> dict[str, Any]:
        load = self.load
        selector = selectors.DefaultSelector()
        connections = []
        for _ in range(load.connections):
            sock = socket.create_connection((load.host, load.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            agent_id = uuid4()
            connection = _Connection(sock, agent_id, report_template(agent_id))
            connections.append(connection)
            selector.register(sock, selectors.EVENT_READ, connection)
        began = time.monotonic()
        deadline = began + load.seconds
        for connection in connections:
            self._send(selector, connection, self.request(connection))
        in_flight = len(connections)
        give_up = deadline + load.drain
        while in_flight and time.monotonic() < give_up:
            for key, mask in selector.select(timeout=0.5):
                connection = key.data
                if mask & selectors.EVENT_WRITE:
                    self._send(selector, connection, None)
                if mask & selectors.EVENT_READ and self._receive(connection, deadline):
                    if time.monotonic() < deadline:
                        self._send(selector, connection, self.request(connection))
                    else:
                        in_flight -= 1
        ended = min(time.monotonic(), deadline)
        for connection in connections:
            connection.sock.close()
        if in_flight:
            self.failures.append(f"{in_flight} requests unanswered {load.drain} s after the end")
        took = ended - began
        ordered = sorted(self.latencies)
        return {
            "seconds": took,
            "requests": self.requests,
            "acknowledged": self.acknowledged,
            "acknowledged_total": self.acknowledged_total,
            "requests_per_second": self.requests / took,
            "executions_per_second": self.acknowledged / took,
            "p50_ms": _quantile(ordered, 0.50) * 1000,
            "p99_ms": _quantile(ordered, 0.99) * 1000,
            "failures": len(self.failures),
            "first_failures": self.failures[:5],
        }

    def _send(
        self, selector: selectors.BaseSelector, connection: _Connection, request: bytes | None
    ) -> None:
        if request is not None:
            connection.outgoing = memoryview(request)
            connection.sent_at = time.monotonic()
        try:
            sent = connection.sock.send(connection.outgoing)
        except BlockingIOError:
            sent = 0
        connection.outgoing = connection.outgoing[sent:]
        # Wait for room in the socket only while a large batch is still being written.
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if connection.outgoing else 0)
        selector.modify(connection.sock, events, connection)

    def _receive(self, connection: _Connection, deadline: float) -> bool:
        """Read what arrived; ``True`` once the answer to the request in flight is complete."""
        data = connection.sock.recv(1 << 20)
        if not data:
            raise ConnectionError("the server closed a keep-alive connection")
        connection.incoming += data
        end = connection.incoming.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(connection.incoming[:end]).decode("latin-1").lower()
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name == "content-length":
                length = int(value)
        if len(connection.incoming) < end + 4 + length:
            return False
        status = int(head[9:12])
        body = bytes(connection.incoming[end + 4 : end + 4 + length])
        del connection.incoming[: end + 4 + length]
        now = time.monotonic()
        if self.check(status, body, connection.reports):
            self.acknowledged_total += connection.reports
            if now <= deadline:
                self.acknowledged += connection.reports
        if now <= deadline:
            self.requests += 1
            self.latencies.append(now - connection.sent_at)
        connection.reports = 0
        return True


def _quantile(ordered: list[float], q: float) -> float:
    if not ordered:
        return math.nan
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def generate_shapes(load: Load) -> dict[str, Any]:
    """Every shape of ``load`` in turn (in this process), with the server's CPU time per
    report (per request for the ceiling, which stores nothing) during each."""
    figures: dict[str, Any] = {}
    for shape in load.shapes:
        cpu = _cpu_seconds(load.pid)
        shape_figures = LoadGenerator(load, shape).run()
        used = _cpu_seconds(load.pid) - cpu
        done = shape_figures["requests" if load.bare else "acknowledged_total"]
        shape_figures["server_cpu_ms_per_report"] = used / max(1, done) * 1000
        figures[str(shape)] = shape_figures
    return figures


def generate(load: Load) -> dict[str, Any]:
    """Run ``load`` in a process of its own (it shares the cores, not the interpreter, with
    the orchestration); its figures by shape."""
    arguments = ["--port", str(load.port), "--pid", str(load.pid)]
    arguments += ["--connections", str(load.connections), "--seconds", str(load.seconds)]
    arguments += ["--shapes", *map(str, load.shapes), "--tasks", *load.task_ids]
    finished = subprocess.run(
        [sys.executable, "-m", "benchmarks.ingest", "load", *arguments]
        + (["--bare"] if load.bare else []),
        capture_output=True,
        check=False,
        timeout=len(load.shapes) * (load.seconds + load.drain) + 60,
        cwd=ROOT,
    )
    if finished.returncode != 0:
        raise RuntimeError(f"the load generator failed: {finished.stderr.decode()[-2000:]}")
    figures: dict[str, Any] = json.loads(finished.stdout)
    return figures


# -- the servers -------------------------------------------------------------------------------


@contextlib.contextmanager
def _process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as output:
        process = subprocess.Popen(
            args, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT
        )
        try:
            yield process
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (fields 14 and 15 of proc(5))."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stored(database: Path | str) -> int:
    """Rows of the server's executions table, read beside the running server."""
    if isinstance(database, str):  # a PostgreSQL URL
        import psycopg2

        with (
            contextlib.closing(psycopg2.connect(database)) as connection,
            connection.cursor() as cursor,
        ):
            cursor.execute("SELECT count(*) FROM executions")
            (count,) = cursor.fetchone()
        return int(count)
    with contextlib.closing(
        sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True, timeout=10.0)
    ) as connection:
        (count,) = connection.execute("SELECT count(*) FROM executions").fetchone()
        return int(count)


@contextlib.contextmanager
def _database(data: Path, postgresql: str | None) -> Iterator[Path | str]:
    """The server's database: a SQLite file in ``data``, or a new schema of ``postgresql``
    (dropped afterwards)."""
    if postgresql is None:
        yield data / "server" / "server.sqlite3"
        return
    import psycopg2

    schema = f"tsched_bench_{secrets.token_hex(4)}"

    def admin(statement: str) -> None:
        with contextlib.closing(psycopg2.connect(postgresql)) as connection:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(statement)

    admin(f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in postgresql else "?"
    options = urlencode({"options": f"-csearch_path={schema}"}, quote_via=quote)
    try:
        yield f"{postgresql}{separator}{options}"
    finally:
        admin(f'DROP SCHEMA "{schema}" CASCADE')


def measure(
    *,
    tasks: int,
    connections: int,
    seconds: float,
    shapes: list[int],
    profile: Path | None = None,
    postgresql: str | None = None,
) -> dict[str, Any]:
    """Every figure of one run: the ceiling, then our server, per request shape (``0``:
    ``/complete``, one report a request; ``n``: ``/executions``, batches of ``n``)."""
    with (
        tempfile.TemporaryDirectory() as temporary,
        _database(Path(temporary), postgresql) as database,
    ):
        data = Path(temporary)
        bare_port, port = _free_port(), _free_port()
        bare_args = [sys.executable, "-m", "benchmarks.ingest", "bare", "--port", str(bare_port)]
        server_args = [TSCHED, "server", "--port", str(port), "--database", str(database)]
        # Retention off: every acknowledged report must still be there to be counted.
        server_args += ["--keep-runs", "0", "--keep-days", "0"]
        # Both start at once (they are idle while the other one is measured).
        with (
            _process(bare_args, data / "bare.log") as bare,
            _process(server_args, data / "server.log") as server,
            httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30.0) as client,
        ):
            bare_url = f"http://127.0.0.1:{bare_port}/"
            _wait(lambda: httpx.post(bare_url, content=b"{}").is_success, 30, "the bare server")
            _wait(lambda: client.get("/healthz").is_success, 30, "the server")
            task_ids = []
            for number in range(tasks):
                created = client.post(
                    "/api/v1/tasks",
                    json={"command": f"echo {number}", "frequency": "every 1 hours"},
                )
                created.raise_for_status()
                task_ids.append(created.json()["id"])
            # The ceiling stores nothing: any task id will do in its paths and bodies.
            ceiling = generate(
                Load(bare_port, bare.pid, task_ids, shapes, connections, seconds, bare=True)
            )
            profiler = _profiler(server.pid, profile) if profile else contextlib.nullcontext()
            with profiler:
                ours = generate(Load(port, server.pid, task_ids, shapes, connections, seconds))
            acknowledged = sum(figures["acknowledged_total"] for figures in ours.values())
            stored = _stored(database)
    of_ceiling = {
        shape: ours[shape]["requests_per_second"] / ceiling[shape]["requests_per_second"]
        for shape in ours
    }
    return {
        "database": "postgresql" if postgresql else "sqlite",
        "tasks": tasks,
        "connections": connections,
        "seconds": seconds,
        "ceiling": ceiling,
        "tsched": ours,
        "of_ceiling": of_ceiling,
        "acknowledged": acknowledged,
        "stored": stored,
        "stored_equals_acknowledged": int(stored == acknowledged),
        "failures": sum(figures["failures"] for figures in [*ours.values(), *ceiling.values()]),
    }


@contextlib.contextmanager
def _profiler(pid: int, path: Path) -> Iterator[None]:
    """py-spy records the server ``pid`` (raw folded stacks to ``path``) while the body runs."""
    py_spy = str(Path(sys.executable).parent / "py-spy")
    options = ["--nonblocking", "-f", "raw", "-r", "200", "-p", str(pid), "-o", str(path)]
    spy = subprocess.Popen(
        [py_spy, "record", *options],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)  # py-spy attaches
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(30)


#: (tasks, connections, seconds per shape, request shapes) by size.
SIZES: dict[Size, tuple[int, int, float, list[int]]] = {
    "tiny": (5, 8, 0.3, [0, 100]),
    "quick": (100, 32, 2.0, [0, 100, 500]),
    "full": (100, 32, 10.0, [0, 100, 500]),
}


def _shape_name(shape: str) -> str:
    return "/complete (1 a request)" if shape == "0" else f"/executions (batches of {shape})"


def run(size: Size) -> Result:
    tasks, connections, seconds, shapes = SIZES[size]
    figures = measure(tasks=tasks, connections=connections, seconds=seconds, shapes=shapes)
    rows = []
    for shape, ours in figures["tsched"].items():
        bare = figures["ceiling"][shape]
        rows.append(
            [
                _shape_name(shape),
                f"{bare['requests_per_second']:,.0f}",
                f"{ours['requests_per_second']:,.0f}",
                f"{figures['of_ceiling'][shape]:.0%}",
                f"{ours['executions_per_second']:,.0f}",
                f"{ours['p50_ms']:.1f} / {ours['p99_ms']:.1f}",
                f"{ours['server_cpu_ms_per_report']:.3f}",
            ]
        )
    stored = f"stored {figures['stored']:,} of {figures['acknowledged']:,} acknowledged"
    return Result(
        title=(
            f"report ingestion: {connections} reporters on keep-alive connections, "
            f"{seconds:g} s a shape, {tasks} tasks; {stored}, {figures['failures']} failures"
        ),
        columns=[
            "endpoint",
            "bare req/s",
            "tsched req/s",
            "of bare",
            "executions/s",
            "p50 / p99 ms",
            "server CPU ms/report",
        ],
        rows=rows,
        figures=figures,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    commands = parser.add_subparsers(dest="command")
    bare = commands.add_parser("bare", help="serve the ceiling's bare app (used by the run)")
    bare.add_argument("--port", type=int, required=True)
    load = commands.add_parser("load", help="generate load, print figures (used by the run)")
    load.add_argument("--port", type=int, required=True)
    load.add_argument("--pid", type=int, required=True, help="the server's, for its CPU time")
    load.add_argument("--shapes", type=int, nargs="+", default=[0])
    load.add_argument("--connections", type=int, default=32)
    load.add_argument("--seconds", type=float, default=10.0)
    load.add_argument("--bare", action="store_true")
    load.add_argument("--tasks", nargs="+", required=True)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--shapes",
        type=int,
        nargs="+",
        default=[0, 100, 500],
        help="0: one report a /complete request; N: batches of N to /executions",
    )
    parser.add_argument("--profile", type=Path, help="py-spy raw profile of our server here")
    parser.add_argument(
        "--postgresql", metavar="URL", help="store in a new schema of this PostgreSQL database"
    )
    arguments = parser.parse_args(argv)
    if arguments.command == "bare":
        serve_bare(arguments.port)
    elif arguments.command == "load":
        load_of = Load(
            arguments.port,
            arguments.pid,
            arguments.tasks,
            arguments.shapes,
            arguments.connections,
            arguments.seconds,
            bare=arguments.bare,
        )
        print(json.dumps(generate_shapes(load_of)))
    else:
        figures = measure(
            tasks=arguments.tasks,
            connections=arguments.connections,
            seconds=arguments.seconds,
            shapes=arguments.shapes,
            profile=arguments.profile,
            postgresql=arguments.postgresql,
        )
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
