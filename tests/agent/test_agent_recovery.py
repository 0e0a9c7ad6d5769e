"""Starting after a crash: leftover process groups are killed, interrupted runs recorded once."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import attrs
import pytest
import trio

from taskscheduler_agent import (
    STATE_FILE,
    AgentConfig,
    AgentStarted,
    AgentState,
    ProcessIdentity,
    kill_leftover_group,
    load_or_create_agent_id,
    run_agent,
)
from taskscheduler_agent.leftovers import identify
from taskscheduler_core import StartExecution, TaskSpec, Trigger, format_time, parse_recurrence

SLOT = datetime(2026, 11, 28, 3, 16, 1, tzinfo=UTC)

StartCollector = Callable[..., Awaitable[Any]]
WaitFor = Callable[..., Awaitable[None]]
LiveGroupMembers = Callable[[int], list[int]]


@pytest.fixture
def orphan() -> Iterator[subprocess.Popen[bytes]]:
    """A command group like one a killed agent leaves: a shell and a background child, in a
    session of their own."""
    process = subprocess.Popen(
        ["/bin/sh", "-c", "sleep 30 & sleep 30"],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield process
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def agent_config(tmp_path: Path, **options: Any) -> AgentConfig:
    fast = {"report_backoff_initial": 0.01, "report_backoff_max": 0.1, "register_backoff_max": 0.1}
    return AgentConfig(**({"data_dir": tmp_path / "agent", "port": 0} | fast | options))


def starting(
    task_id: UUID, *, attempt: int = 1, trigger: Trigger = Trigger.SCHEDULE
) -> StartExecution:
    """What the engine hands the state file for an execution about to start."""
    spec = TaskSpec(
        task_id=task_id,
        command="sleep 30",
        frequency=parse_recurrence("every 1 seconds"),
        anchor=SLOT,
    )
    return StartExecution(task=spec, scheduled_at=SLOT, attempt=attempt, trigger=trigger)


def journal(data_dir: Path) -> list[tuple[str, str, str]]:
    with sqlite3.connect(data_dir / STATE_FILE) as connection:
        return connection.execute("SELECT task_id, scheduled_at, status FROM journal").fetchall()


async def test_a_leftover_group_is_killed_and_its_run_recorded_once(
    tmp_path: Path,
    orphan: subprocess.Popen[bytes],
    start_collector: StartCollector,
    wait_for: WaitFor,
    live_group_members: LiveGroupMembers,
) -> None:
    config = agent_config(tmp_path)
    load_or_create_agent_id(config.data_dir)
    task_id = uuid4()
    await wait_for(lambda: len(live_group_members(orphan.pid)) >= 2)  # the shell forked
    # what the killed agent had written: the slot taken, the command's group
    with AgentState(config.data_dir / STATE_FILE) as state:
        state.begin_slots({}, [starting(task_id)], started_at=SLOT)
        state.process_started(task_id, SLOT, orphan.pid)

    collector = await start_collector()
    for _ in range(2):  # the second start finds nothing left to do
        async with trio.open_nursery() as nursery:
            started: AgentStarted = await nursery.start(
                run_agent, attrs.evolve(config, server_url=collector.url)
            )
            await wait_for(lambda: collector.reports_for(task_id))
            await wait_for(lambda: not live_group_members(orphan.pid), timeout=5)
            await trio.sleep(0.2)  # time for a second report, were there one
            nursery.cancel_scope.cancel()

    (report,) = collector.reports_for(task_id)
    assert report["server_id"] == str(started.agent_id)
    assert (report["status"], report["exit_code"]) == ("error", None)
    assert report["scheduled_at"] == format_time(SLOT)
    assert (report["attempt"], report["trigger"], report["final"]) == (1, "schedule", True)
    assert "interrupted" in report["stderr"]
    assert f"process group {orphan.pid}) was killed" in report["stderr"]
    assert journal(config.data_dir) == [(str(task_id), format_time(SLOT), "error")]
    with AgentState(config.data_dir / STATE_FILE) as state:
        assert state.running() == []
        assert state.pending() == []


async def test_a_run_interrupted_before_its_process_was_saved_is_recorded_too(
    tmp_path: Path, start_collector: StartCollector, wait_for: WaitFor
) -> None:
    config = agent_config(tmp_path)
    config.data_dir.mkdir()
    task_id = uuid4()
    with AgentState(config.data_dir / STATE_FILE) as state:
        # a manual run's second attempt (a retry): reported with both, and final
        state.begin_slots(
            {}, [starting(task_id, attempt=2, trigger=Trigger.MANUAL)], started_at=SLOT
        )
    collector = await start_collector()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_agent, attrs.evolve(config, server_url=collector.url))
        await wait_for(lambda: collector.reports_for(task_id))
        nursery.cancel_scope.cancel()
    (report,) = collector.reports_for(task_id)
    assert report["status"] == "error"
    assert (report["attempt"], report["trigger"], report["final"]) == (2, "manual", True)
    assert "before its process was recorded" in report["stderr"]


def test_a_group_is_killed_only_when_its_leader_is_still_the_one_started(
    orphan: subprocess.Popen[bytes],
) -> None:
    saved = identify(orphan.pid)
    assert saved.start_ticks is not None
    assert saved.boot_id is not None
    strangers = [
        attrs.evolve(saved, start_ticks=saved.start_ticks + 1),  # the pid was reused
        attrs.evolve(saved, boot_id="another boot"),  # saved before a reboot
        attrs.evolve(saved, start_ticks=None),  # nothing to check it against
    ]
    for stranger in strangers:
        assert not kill_leftover_group(stranger)
        assert orphan.poll() is None
    assert kill_leftover_group(saved)
    assert orphan.wait(timeout=5) == -signal.SIGKILL


def test_a_group_whose_leader_exited_is_still_killed(
    live_group_members: LiveGroupMembers,
) -> None:
    shell = subprocess.Popen(
        ["/bin/sh", "-c", "sleep 30 >/dev/null 2>&1 & exit 0"], start_new_session=True
    )
    saved = identify(shell.pid)  # before it is reaped: a zombie still has its /proc entry
    assert shell.wait(timeout=5) == 0
    try:
        assert len(live_group_members(shell.pid)) == 1  # the background sleep, orphaned
        assert kill_leftover_group(saved)
        deadline = time.monotonic() + 5
        while live_group_members(shell.pid):
            assert time.monotonic() < deadline, "the orphaned member survived"
            time.sleep(0.01)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)


def test_a_gone_group_is_no_error() -> None:
    gone = ProcessIdentity(pid=2**22 + 1, start_ticks=1, boot_id=identify(os.getpid()).boot_id)
    assert not kill_leftover_group(gone)


async def test_a_slot_prepared_ahead_and_left_by_a_crash_is_recorded_as_interrupted(
    tmp_path: Path, start_collector: StartCollector, wait_for: WaitFor
) -> None:
    config = agent_config(tmp_path)
    config.data_dir.mkdir()
    task_id = uuid4()
    with AgentState(config.data_dir / STATE_FILE) as state:
        # taken 0.2 s before its time (the engine prepares slots ahead), then the agent died
        state.begin_slots({}, [starting(task_id)], started_at=SLOT - timedelta(seconds=0.2))
    collector = await start_collector()
    async with trio.open_nursery() as nursery:
        await nursery.start(run_agent, attrs.evolve(config, server_url=collector.url))
        await wait_for(lambda: collector.reports_for(task_id))
        nursery.cancel_scope.cancel()
    (report,) = collector.reports_for(task_id)
    assert report["status"] == "error"
    assert report["scheduled_at"] == format_time(SLOT)
    assert "the command may not have started" in report["stderr"]
    with AgentState(config.data_dir / STATE_FILE) as state:
        assert state.running() == []
