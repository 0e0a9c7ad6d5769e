"""The lease loop: under trio's MockClock with real stores (two ``Store`` objects on one SQLite
file, and on one PostgreSQL schema when ``TSCHED_TEST_DATABASE_URL`` is set), then two real
``serve()`` replicas on one database with a real agent peer, on the real clock.

The work a replica does while it holds the lease is a recorder here: each spell of it is a
``[start, stop]`` pair of trio times, so that overlaps and stop times can be checked exactly.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import socket
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import httpx
import peewee
import psycopg2
import pytest
import trio
from click.testing import CliRunner
from trio.testing import MockClock

from taskscheduler_client.cli import tsched
from taskscheduler_core import Task, parse_frequency
from taskscheduler_server import (
    AsyncStore,
    DatabaseUnavailable,
    Leadership,
    LeaseKeeper,
    ServerConfig,
    Store,
    serve,
)
from taskscheduler_server.lease import AFTER_EXPIRY, HAND_OVER_AFTER, LEADER_LEASE, STOP_MARGIN
from taskscheduler_server.store import _ASSIGNMENTS_LOCK as ASSIGNMENTS_LOCK
from taskscheduler_server.store import StoreSlot
from tcp_proxy import TcpProxy

START = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
#: Tries every 1 s; the holder stops the work 0.6 s before its lease could expire.
DURATION = timedelta(seconds=3)
INTERVAL = DURATION.total_seconds() / 3
#: How long a spell of work may outlive its lease's last renewal, at most.
STOP_AFTER = DURATION.total_seconds() * (1 - STOP_MARGIN)

pytestmark = pytest.mark.databases("sqlite", "postgresql")

T = TypeVar("T")
WaitUntil = Callable[..., Awaitable[None]]


#: trio's time at the start of the test: every time of a test is counted from it.
_origin = 0.0


def now() -> float:
    """Seconds since the start of the test, on trio's (mock) clock."""
    return trio.current_time() - _origin


def wall() -> datetime:
    """The replicas' wall clock, driven by trio's (mock) clock: one clock for all of them."""
    return wall_time(now())


def wall_time(moment: float) -> datetime:
    return START + timedelta(seconds=moment)


class FlakyStore(AsyncStore):
    """A real store whose calls can be made to fail as an unreachable database's do.

    ``failing``: every call raises :class:`DatabaseUnavailable` before reaching the database,
    as a store whose connection is refused. That is how a killed replica is played here too
    (its loop is then cancelled: the release cannot reach the database, the row stays).
    """

    failing = False

    async def call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if self.failing:
            await trio.lowlevel.checkpoint()
            raise DatabaseUnavailable("connection refused (the test cut it)")
        with _clock_held():
            return await super().call(method, *args, **kwargs)

    async def call_apart(
        self, slot: StoreSlot, method: Callable[..., T], *args: Any, **kwargs: Any
    ) -> T:
        if self.failing:
            await trio.lowlevel.checkpoint()
            raise DatabaseUnavailable("connection refused (the test cut it)")
        with _clock_held():
            return await super().call_apart(slot, method, *args, **kwargs)


#: The mock clock of the running test, and how many store calls are in their threads now.
_mock_clock: MockClock | None = None
_calls_in_threads = 0
#: Set while the test makes store calls hang on purpose: the clock must then go on.
_calls_hang = False


@contextlib.contextmanager
def calls_hang() -> Iterator[None]:
    """For a test that makes store calls hang on purpose: the clock is not held during calls
    then, but jumps only after a pause of real time far longer than a call that does not hang
    (the hung one is waited out on trio's clock, as a real renewal would be)."""
    global _calls_hang
    assert _mock_clock is not None
    _calls_hang, _mock_clock.autojump_threshold = True, 0.1
    try:
        yield
    finally:
        _calls_hang, _mock_clock.autojump_threshold = False, 0


@contextlib.contextmanager
def _clock_held() -> Iterator[None]:
    """Keep the mock clock from jumping while a store call runs in its worker thread.

    trio counts a task waiting for a thread as blocked, so an autojumping clock would move on
    (by a whole try interval) in the middle of a call, however short: what a replica reads back
    would then depend on how fast the database answered. Held, the clock jumps only when every
    replica is really asleep.
    """
    global _calls_in_threads
    if _mock_clock is None or _calls_hang:
        yield
        return
    _calls_in_threads += 1
    _mock_clock.autojump_threshold = math.inf
    try:
        yield
    finally:
        _calls_in_threads -= 1
        if _calls_in_threads == 0:
            _mock_clock.autojump_threshold = 0


class Replica:
    """One replica of the test: its own store on the shared database, its lease keeper, and a
    record of the work it did (``spells``) and of its standby (``standbys``)."""

    def __init__(self, name: str, location: str | Path, duration: timedelta = DURATION) -> None:
        self.name = name
        self.store = FlakyStore(Store(location))
        self.leadership = Leadership(replica_id=name)
        self.keeper = LeaseKeeper(self.store, self.leadership, duration=duration, clock=wall)
        self.scope = trio.CancelScope()
        #: Each spell of the work done once: [start, stop] on trio's clock (stop inf: running).
        self.spells: list[list[float]] = []
        self.standbys = 0
        #: Set once its lease loop ended (after the release).
        self.stopped = trio.Event()
        #: Raised by the work at its next start, once (a store call of the work that failed).
        self.work_fails_with: Exception | None = None
        #: Raised by the work 0.1 s after each of its starts, as long as it is set.
        self.work_keeps_failing_with: Exception | None = None
        #: Raised by the standby 0.1 s after each of its starts, as long as it is set.
        self.standby_fails_with: Exception | None = None
        self._changed = trio.Event()

    @property
    def leading(self) -> bool:
        return bool(self.spells) and self.spells[-1][1] == math.inf

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def until(self, condition: Callable[[], bool], *, timeout: float = 60) -> None:
        """Wait until ``condition()`` holds, checking it whenever the work starts or stops;
        fail after ``timeout`` seconds of trio's clock."""
        with trio.fail_after(timeout):
            while not condition():
                await self._changed.wait()

    async def lead(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        spell = [now(), math.inf]
        self.spells.append(spell)
        self._notify()
        try:
            task_status.started()
            if self.work_fails_with is not None:
                await trio.sleep(0.1)
                error, self.work_fails_with = self.work_fails_with, None
                raise error
            if self.work_keeps_failing_with is not None:
                await trio.sleep(0.1)
                raise self.work_keeps_failing_with
            await trio.sleep_forever()
        finally:
            spell[1] = now()
            self._notify()

    async def standby(self) -> None:
        self.standbys += 1
        if self.standby_fails_with is not None:
            await trio.sleep(0.1)
            raise self.standby_fails_with
        await trio.sleep_forever()

    async def start(self, nursery: trio.Nursery) -> Replica:
        async def run(*, task_status: trio.TaskStatus[None]) -> None:
            with self.scope:
                await self.keeper.run(self.lead, self.standby, task_status=task_status)
            self.stopped.set()
            self._notify()

        await nursery.start(run)
        return self

    async def holder(self) -> tuple[str, datetime] | None:
        return await self.store.call(Store.lease_holder, LEADER_LEASE, now=wall())


def overlaps(first: Replica, second: Replica) -> list[tuple[list[float], list[float]]]:
    """The spells of work of the two replicas that overlap in time."""
    return [
        (a, b) for a in first.spells for b in second.spells if max(a[0], b[0]) < min(a[1], b[1])
    ]


@pytest.fixture
def location(database_location: Path | str) -> Path | str:
    """Where the replicas' shared database is: a SQLite file, or a PostgreSQL schema's URL."""
    return database_location


@pytest.fixture
def clock(mock_clock: MockClock) -> Iterator[MockClock]:
    # Store calls run in threads, which trio counts as blocked: the clock is held while one
    # runs (see _clock_held), and jumps at once otherwise.
    mock_clock.autojump_threshold = 0
    global _origin, _mock_clock
    _origin, _mock_clock = mock_clock.current_time(), mock_clock
    try:
        yield mock_clock
    finally:
        _mock_clock = None


Replicas = Callable[[str], Replica]
StartReplica = Callable[[str], Awaitable[Replica]]


@pytest.fixture
def replica(location: str | Path, clock: MockClock, nursery: trio.Nursery) -> Iterator[Replicas]:
    """``replica(name)``: a replica on the shared database (``await it.start(nursery)``)."""
    made: list[Replica] = []

    def make(name: str) -> Replica:
        made.append(Replica(name, location))
        return made[-1]

    yield make
    for each in made:
        each.store.store.close()


@pytest.fixture
def replicas(replica: Replicas, nursery: trio.Nursery) -> Callable[[str], Awaitable[Replica]]:
    """``await replicas(name)``: a replica started on the shared database."""

    async def start(name: str) -> Replica:
        return await replica(name).start(nursery)

    return start


async def test_a_lone_replica_leads_from_its_start_and_keeps_the_lease(
    clock: MockClock,
    replicas: StartReplica,
) -> None:
    one = await replicas("one")
    # Taken at the first try, before run() reported itself started: nothing waited.
    assert one.spells == [[0.0, math.inf]]
    assert one.leadership.held
    assert (one.leadership.holder, one.leadership.expires_at) == ("one", wall_time(3.0))
    assert one.standbys == 0

    await trio.sleep(2.5 * DURATION.total_seconds())  # renewed every second meanwhile
    assert one.spells == [[0.0, math.inf]]
    assert await one.holder() == ("one", wall_time(10.0))  # renewed at 7 s, for 3 s
    assert one.leadership.expires_at == wall_time(10.0)


async def test_of_two_replicas_one_leads_and_the_other_stands_by(
    clock: MockClock, replica: Replicas, nursery: trio.Nursery
) -> None:
    one, two = replica("one"), replica("two")
    # Both at the same instant: the store's transaction lets exactly one take it.
    async with trio.open_nursery() as starting:
        starting.start_soon(one.start, nursery)
        starting.start_soon(two.start, nursery)
    leader, other = (one, two) if one.leadership.held else (two, one)
    assert leader.spells == [[0.0, math.inf]]
    assert other.spells == []
    assert not other.leadership.held
    assert other.leadership.holder == leader.name
    assert other.leadership.expires_at == wall_time(3.0)
    assert other.standbys == 1

    await trio.sleep(2 * DURATION.total_seconds())
    assert leader.spells == [[0.0, math.inf]]
    assert other.spells == []
    assert other.leadership.holder == leader.name
    # What the holder's last renewal wrote (both try at whole seconds, in either order).
    assert other.leadership.expires_at in (wall_time(7.0), wall_time(8.0))


async def test_a_killed_holder_is_replaced_once_its_lease_expired_within_its_duration(
    clock: MockClock,
    replicas: StartReplica,
) -> None:
    one = await replicas("one")
    await trio.sleep(0.5)
    two = await replicas("two")  # it tries at 0.5 s, 1.5 s, 2.5 s, ...
    await trio.sleep(0.55)  # just after one's renewal at 1 s
    expires = one.leadership.expires_at
    assert expires == wall_time(4.0)

    # Killed: nothing it does reaches the database any more, not even the release.
    one.store.failing = True
    one.scope.cancel()
    killed_at = now()

    await two.until(lambda: two.leading)
    took_at = two.spells[0][0]
    assert wall_time(took_at) >= expires, "taken before the holder's lease expired"
    # At the holder's expiry (it tries then, not only at 4.5 s) ...
    assert took_at == pytest.approx(4.0 + AFTER_EXPIRY, abs=0.005)
    # ... so within the lease duration of the kill.
    assert took_at - killed_at <= DURATION.total_seconds()
    assert two.leadership.held
    assert await two.holder() == ("two", wall_time(took_at + 3.0))


async def test_a_graceful_stop_releases_the_lease_for_an_immediate_takeover(
    clock: MockClock,
    replicas: StartReplica,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="taskscheduler.server.lease")
    one = await replicas("one")
    two = await replicas("two")
    await trio.sleep(1.5)
    one.scope.cancel()
    stopped_at = now()

    await two.until(lambda: two.leading)
    took_at = two.spells[0][0]
    # At two's next try (at 2 s): long before one's lease would have expired (at 4 s).
    assert took_at == pytest.approx(2.0)
    assert took_at - stopped_at <= INTERVAL
    assert one.spells == [[0.0, stopped_at]]
    assert not overlaps(one, two)
    assert not one.leadership.held
    assert one.leadership.holder is None
    messages = [record.getMessage() for record in caplog.records]
    assert "replica one released the lease" in messages
    assert any(m.startswith("replica two took the lease") for m in messages)


async def test_a_holder_whose_database_fails_stops_at_once_and_comes_back(
    clock: MockClock,
    replicas: StartReplica,
    caplog: pytest.LogCaptureFixture,
) -> None:
    one = await replicas("one")
    await trio.sleep(0.5)
    one.store.failing = True  # the renewal at 1 s fails

    await one.until(lambda: not one.leading)
    assert one.spells == [[0.0, pytest.approx(1.0)]]
    assert not one.leadership.held
    assert wall_time(one.spells[0][1]) < wall_time(3.0)  # its lease ran until 3 s
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("cannot take or renew the lease" in m for m in warnings)
    assert any("stops the work done once" in m for m in warnings)

    await trio.sleep(1.5)  # two more tries fail, and are logged only once
    assert len([m for m in caplog.records if "cannot take" in m.getMessage()]) == 1
    one.store.failing = False
    await one.until(lambda: one.leading)
    assert one.spells[1][0] == pytest.approx(3.0)  # the next try, at 3 s, took it again
    assert one.leadership.held


async def test_a_holder_whose_renewal_hangs_stops_before_its_lease_could_expire(
    clock: MockClock, replicas: StartReplica, location: str | Path
) -> None:
    with calls_hang():
        one = await replicas("one")
        await trio.sleep(0.5)
        with hold_write_lock(location):
            # The renewal at 1 s waits on the lock, unanswered; trio's clock goes on.
            await one.until(lambda: not one.leading)
            stopped_at = one.spells[0][1]
            # Stopped by the deadline: its last renewal (at 0 s) plus 0.8 of the duration,
            # which is before that lease (until 3 s) could expire.
            assert stopped_at == pytest.approx(STOP_AFTER, abs=0.005)
            assert not one.leadership.held
        # The renewal goes through once the lock is gone: it still holds the lease (until 4 s,
        # from the renewal's start at 1 s), so it does the work again until 1 + 2.4 s at least.
        await one.until(lambda: one.leading)
        assert one.leadership.held
        assert one.leadership.expires_at == wall_time(4.0)


async def test_work_that_meets_an_unreachable_database_starts_again_at_the_next_renewal(
    clock: MockClock, replica: Replicas, nursery: trio.Nursery
) -> None:
    one = replica("one")
    one.work_fails_with = DatabaseUnavailable("server closed the connection unexpectedly")
    await one.start(nursery)
    await one.until(lambda: len(one.spells) == 2)
    # It failed at 0.1 s; the lease was kept and renewed at 1 s, and the work started again.
    assert one.spells == [[0.0, pytest.approx(0.1)], [pytest.approx(1.0), math.inf]]
    assert one.leadership.held


class StatementTimeout(peewee.OperationalError):
    """What peewee raises for a statement PostgreSQL cancelled (57014): not an unreachable
    database, so nothing the lease expects."""


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("a bug in the work"),
        StatementTimeout("canceling statement due to statement timeout"),
        # Nurseries nest what they raise: the message names the error inside.
        ExceptionGroup("nested", [ValueError("deep inside")]),
    ],
    ids=["bug", "statement-timeout", "nested"],
)
async def test_work_that_fails_with_any_error_is_logged_and_starts_again_at_the_next_renewal(
    clock: MockClock,
    replica: Replicas,
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
    error: Exception,
) -> None:
    caplog.set_level(logging.INFO, logger="taskscheduler.server.lease")
    one = replica("one")
    one.work_fails_with = error
    await one.start(nursery)  # the error must not escape: it would end the whole server
    await one.until(lambda: len(one.spells) == 2)
    # It failed at 0.1 s; the lease was kept and renewed at 1 s, and the work started again.
    assert one.spells == [[0.0, pytest.approx(0.1)], [pytest.approx(1.0), math.inf]]
    assert one.leadership.held
    assert one.leadership.work_failures == 1
    # Loud: an error with the traceback, then the usual warning that the work stopped.
    [failure] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert failure.getMessage().startswith("replica one: the work done once failed (")
    leaf = error.exceptions[0] if isinstance(error, ExceptionGroup) else error
    assert repr(leaf) in failure.getMessage()
    assert failure.exc_info is not None
    stops = [r.getMessage() for r in caplog.records if "stops the work" in r.getMessage()]
    assert stops == [
        f"replica one stops the work done once: the work done once failed ({leaf!r}); "
        "it keeps trying to take the lease"
    ]


async def test_work_that_keeps_failing_is_handed_over_to_another_replica(
    clock: MockClock,
    replica: Replicas,
    replicas: StartReplica,
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
) -> None:
    one = replica("one")
    one.work_keeps_failing_with = RuntimeError("always")  # a trouble of its own (EMFILE, say)
    await one.start(nursery)
    two = await replicas("two")  # standing by
    await two.until(lambda: two.leading)
    # Not a hot loop: one start per renewal (every second), each failing 0.1 s later; after
    # HAND_OVER_AFTER of them in a row, the lease is released and left alone for a duration.
    assert one.spells == [
        [pytest.approx(start), pytest.approx(start + 0.1)] for start in (0.0, 1.0, 2.0)
    ]
    assert one.leadership.work_failures == HAND_OVER_AFTER
    handed = [r for r in caplog.records if "hands the lease over" in r.getMessage()]
    assert len(handed) == 1
    took_at = two.spells[0][0]
    # The other replica took it at its next try after the release (it tries every second).
    assert 2.1 <= took_at <= 3.1 + 0.01
    assert await two.holder() == ("two", wall_time(took_at + 3.0))
    await trio.sleep(5)
    assert two.leading
    assert one.spells[-1][1] != math.inf  # one stays off while two holds it
    assert not one.leadership.held
    assert one.leadership.holder == "two"


async def test_a_lone_replica_whose_work_keeps_failing_takes_the_lease_back_after_a_pause(
    clock: MockClock, replica: Replicas, nursery: trio.Nursery
) -> None:
    one = replica("one")
    one.work_keeps_failing_with = RuntimeError("always")
    await one.start(nursery)
    await one.until(lambda: len(one.spells) == HAND_OVER_AFTER and not one.leading)
    handed_at = one.spells[-1][1]
    one.work_keeps_failing_with = None  # the trouble passes
    await one.until(lambda: one.leading)
    # Away for one lease duration from the hand-over, then back at its next try.
    assert one.spells[-1][0] >= handed_at + DURATION.total_seconds() - 0.01
    assert one.spells[-1][0] <= handed_at + DURATION.total_seconds() + INTERVAL + 0.01
    assert one.leadership.held


async def test_a_standby_that_fails_with_any_error_is_started_again_after_a_pause(
    clock: MockClock,
    replicas: StartReplica,
    replica: Replicas,
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
) -> None:
    one = await replicas("one")
    two = replica("two")
    two.standby_fails_with = RuntimeError("a bug in the standby")
    await two.start(nursery)
    await trio.sleep(3.0)
    # Started at 0 s, 1.1 s and 2.2 s: each failure is followed by a pause of one interval.
    assert two.standbys == 3
    assert two.leadership.work_failures == 3
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 3
    assert all(r.exc_info is not None for r in errors)
    assert errors[0].getMessage() == (
        "replica two: the standby work failed (RuntimeError('a bug in the standby')); "
        "the API goes on serving, and it starts again in 1 s"
    )
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]  # said once
    # The lease goes on as before.
    assert one.leading
    assert two.leadership.holder == "one"


async def test_the_lease_duration_must_be_positive(location: str | Path) -> None:
    with Store(location) as store, pytest.raises(ValueError, match="duration"):
        LeaseKeeper(AsyncStore(store), Leadership("x"), duration=timedelta(0))


def test_lease_settings_and_their_checks(tmp_path: Path) -> None:
    config = ServerConfig(database=tmp_path / "x.sqlite")
    assert config.lease_duration == timedelta(seconds=15)
    # On SQLite (one server per file) the host name: the same after a restart, so a server
    # restarted after a crash renews its own lease at once.
    assert config.replica_id == socket.gethostname()
    # On PostgreSQL, a new replica at each start.
    config = ServerConfig(database="postgresql://127.0.0.1/test")
    assert config.replica_id != ServerConfig(database="postgresql://127.0.0.1/test").replica_id
    host, pid, suffix = config.replica_id.rsplit("-", 2)
    assert (host, pid) == (socket.gethostname(), str(os.getpid()))
    assert re.fullmatch("[0-9a-f]{4}", suffix)
    for options, field in [
        ({"lease_duration": timedelta(0)}, "lease_duration"),
        ({"replica_id": ""}, "--replica-id"),
        ({"replica_id": " a"}, "--replica-id"),
        ({"replica_id": "a\nb"}, "--replica-id"),
        ({"replica_id": "a" * 201}, "--replica-id"),
    ]:
        with pytest.raises(ValueError, match=field):
            ServerConfig(database=tmp_path / "x.sqlite", **options)  # type: ignore[arg-type]


def test_the_lease_flags_are_checked_before_the_server_starts(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["server", "--data-dir", str(tmp_path), "--port", "0"]
    for args, env in [
        (["--lease-seconds", "0"], {}),
        ([], {"TSCHED_LEASE_SECONDS": "-1"}),
        (["--lease-seconds", "inf"], {}),
    ]:
        result = runner.invoke(tsched, [*base, *args], env=env, prog_name="tsched")
        assert result.exit_code == 2, result.output
        assert "--lease-seconds" in result.output
    result = runner.invoke(tsched, [*base, "--replica-id", " spaced"], prog_name="tsched")
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        "error: --replica-id must be 1 to 200 printable characters without surrounding blanks, "
        "got ' spaced'"
    ]


@pytest.mark.databases("postgresql")
async def test_a_holder_cut_off_from_postgresql_stops_before_another_takes_over(
    clock: MockClock, replica: Replicas, location: str | Path, nursery: trio.Nursery
) -> None:
    assert isinstance(location, str)
    parts = urlsplit(location)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        user = f"{parts.username}@" if parts.username else ""
        proxied = urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.url_port}"))
        one = await Replica("one", proxied).start(nursery)
        await trio.sleep(0.5)
        two = await replica("two").start(nursery)
        await trio.sleep(0.55)  # one renewed at 1 s: its lease runs until 4 s
        proxy.cut()  # its connections are closed, new ones refused

        await one.until(lambda: not one.leading)
        assert one.spells[0][1] == pytest.approx(2.0)  # the renewal at 2 s failed: at once
        await two.until(lambda: two.leading)
        assert two.spells[0][0] == pytest.approx(4.0 + AFTER_EXPIRY, abs=0.005)
        assert not overlaps(one, two)

        proxy.restore()
        await trio.sleep(2)  # one reaches the database again, and sees two hold the lease
        assert len(one.spells) == 1
        assert not one.leadership.held
        assert one.leadership.holder == "two"
        one.scope.cancel()
        one.store.store.close()


@pytest.mark.databases("postgresql")
async def test_api_calls_waiting_on_a_lock_do_not_hold_the_renewals_back(
    location: str | Path, nursery: trio.Nursery
) -> None:
    """More API calls than the store runs at once wait on the assignments' lock, held by a
    stalled transaction of "another replica": the renewals go on beside them (on the real
    clock: the calls stuck in their threads must not stop it)."""
    assert isinstance(location, str)
    one = await Replica("one", location, duration=timedelta(seconds=1.5)).start(nursery)
    stalled = psycopg2.connect(location)
    stalled.autocommit = True
    done = 0

    async def create_task(n: int) -> None:
        nonlocal done
        moment = datetime.now(UTC)
        task = Task(
            id=uuid4(),
            command=f"echo {n}",
            frequency=parse_frequency("every 1 hours"),
            anchor=moment,
            created_at=moment,
        )
        await one.store.call(Store.create_task, task)
        done += 1

    try:
        with stalled.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_lock(%s, hashtext(current_schema()))", (ASSIGNMENTS_LOCK,)
            )
        first_expiry = one.leadership.expires_at
        assert first_expiry is not None
        async with trio.open_nursery() as api:
            for n in range(one.store.store.concurrency + 2):
                api.start_soon(create_task, n)
            try:
                # Renewals every 0.5 s; one that queued behind the API's calls would let the
                # work stop 1.2 s after the last renewal that got through.
                await trio.sleep(2.0)
                seen = (done, len(one.spells), one.leading, one.leadership.held)
                expires_at = one.leadership.expires_at
            finally:  # the API's calls end only once the lock is gone
                with stalled.cursor() as cursor:
                    cursor.execute(
                        "SELECT pg_advisory_unlock(%s, hashtext(current_schema()))",
                        (ASSIGNMENTS_LOCK,),
                    )
        assert seen == (0, 1, True, True)  # nothing created yet: the calls did wait
        assert expires_at is not None
        assert expires_at >= first_expiry + timedelta(seconds=1.5)  # renewed meanwhile
        assert done == one.store.store.concurrency + 2
    finally:
        stalled.close()
        one.scope.cancel()
        await one.stopped.wait()
        one.store.store.close()


@contextlib.contextmanager
def hold_write_lock(location: str | Path) -> Iterator[None]:
    """Hold a lock that every writer of the lease waits for, from a connection of our own (a
    database that does not answer): SQLite's write lock, or PostgreSQL's lock of the leases
    table against writes."""
    if isinstance(location, str):
        connection = psycopg2.connect(location)  # a transaction is open from the first statement
        try:
            with connection.cursor() as cursor:
                cursor.execute("LOCK TABLE leases IN EXCLUSIVE MODE")
            yield
        finally:
            connection.rollback()
            connection.close()
        return
    lite = sqlite3.connect(str(location), isolation_level=None)
    try:
        lite.execute("BEGIN IMMEDIATE")
        yield
    finally:
        lite.execute("ROLLBACK")
        lite.close()


# --- two real servers on one database, a real agent peer, the real clock --------------------


def replica_config(location: str | Path, name: str) -> ServerConfig:
    return ServerConfig(
        database=location,
        port=0,
        replica_id=name,
        lease_duration=timedelta(seconds=1.5),  # tries every 0.5 s
        backoff_initial=timedelta(milliseconds=20),
        backoff_max=timedelta(milliseconds=100),
        graceful_timeout=timedelta(seconds=0.5),
    )


async def start_server(nursery: trio.Nursery, config: ServerConfig) -> tuple[str, trio.CancelScope]:
    scope = trio.CancelScope()

    async def run(*, task_status: trio.TaskStatus[str]) -> None:
        with scope:
            await serve(config, task_status=task_status)

    url: str = await nursery.start(run)
    return url, scope


async def lease_seen_by(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    response = await http.get(f"{url}/readyz")
    assert response.status_code == 200, response.text
    lease: dict[str, Any] = response.json()["lease"]
    return lease


async def test_two_servers_on_one_database_the_holder_delivers_what_the_other_received(
    location: str | Path,
    nursery: trio.Nursery,
    serve_asgi: Any,
    fake_agent: Any,
    wait_until: WaitUntil,
) -> None:
    agent = fake_agent()
    agent_url, _ = await serve_asgi(agent.app)
    one, one_scope = await start_server(nursery, replica_config(location, "one"))
    two, _ = await start_server(nursery, replica_config(location, "two"))
    async with httpx.AsyncClient(timeout=5) as http:
        assert await lease_seen_by(http, one) == {"replica": "one", "held": True, "holder": "one"}
        assert await lease_seen_by(http, two) == {"replica": "two", "held": False, "holder": "one"}

        # The agent registers with two, and a task is created through two: one pushes it.
        registered = await http.post(
            f"{two}/api/v1/agents/register",
            json={"agent_id": str(agent.agent_id), "url": agent_url},
        )
        assert registered.status_code == 200, registered.text
        began = trio.current_time()
        created = await http.post(
            f"{two}/api/v1/tasks/create", json={"command": "true", "frequency": "every 1 hours"}
        )
        task_id = created.json()["command_id"]
        await wait_until(lambda: task_id in agent.task_ids, timeout=5)
        latency = trio.current_time() - began
        print(f"\ncreated through the replica without the lease, pushed in {latency:.3f} s")
        assert latency < 2.0  # the holder looks every 0.5 s

        def pushes() -> list[dict[str, Any]]:
            return [body for body in agent.scheduled if body["task_id"] == task_id]

        await trio.sleep(0.6)  # another look of the holder's: nothing more to push
        assert len(pushes()) == 1  # by the holder alone: two, standing by, pushes nothing

        # A manual run received by two, which does not hold the lease, reaches the agent.
        run = await http.post(f"{two}/api/v1/tasks/{task_id}/run")
        assert run.status_code == 202, run.text
        await wait_until(lambda: [r for r in agent.runs if r[0] == task_id], timeout=5)
        assert len(pushes()) == 1

        # One stops gracefully: two takes over at its next try (every 0.5 s), and delivers.
        one_scope.cancel()
        stopped = trio.current_time()
        await wait_until(lambda: held_by(http, two, "two"), timeout=5)
        takeover = trio.current_time() - stopped
        print(f"graceful stop of the holder -> the other holds the lease in {takeover:.3f} s")
        assert takeover < 1.5  # well before the lease (1.5 s) could have expired
        created = await http.post(
            f"{two}/api/v1/tasks/create", json={"command": "date", "frequency": "every 1 hours"}
        )
        second = created.json()["command_id"]
        await wait_until(lambda: second in agent.task_ids, timeout=5)


async def held_by(http: httpx.AsyncClient, url: str, replica: str) -> bool:
    lease = await lease_seen_by(http, url)
    return bool(lease["held"]) and lease["holder"] == replica
