"""``run_command`` on real ``/bin/sh`` processes."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from taskscheduler_agent import CommandResult, run_command
from taskscheduler_core import ExecutionStatus


async def test_stdout_and_stderr_are_captured_separately(shell_env: dict[str, str]) -> None:
    result = await run_command("printf out; printf err >&2", env=shell_env)
    assert result == CommandResult(
        status=ExecutionStatus.SUCCEEDED, exit_code=0, stdout="out", stderr="err"
    )


async def test_non_zero_exit_is_failed(shell_env: dict[str, str]) -> None:
    result = await run_command("echo partial; exit 3", env=shell_env)
    assert (result.status, result.exit_code, result.stdout) == (
        ExecutionStatus.FAILED,
        3,
        "partial\n",
    )


async def test_killed_by_a_signal_is_failed_with_the_negative_signal_number(
    shell_env: dict[str, str],
) -> None:
    result = await run_command("kill -TERM $$", env=shell_env)
    assert (result.status, result.exit_code) == (ExecutionStatus.FAILED, -signal.SIGTERM)


async def test_the_cap_keeps_the_tail_and_counts_what_it_dropped(
    shell_env: dict[str, str],
) -> None:
    result = await run_command(
        "printf 0123456789abcdef; printf ABCDEFGHIJKL >&2", env=shell_env, max_output_bytes=10
    )
    assert (result.stdout, result.stdout_dropped) == ("6789abcdef", 6)
    assert (result.stderr, result.stderr_dropped) == ("CDEFGHIJKL", 2)


async def test_both_streams_are_read_at_once_so_a_full_pipe_cannot_deadlock(
    shell_env: dict[str, str],
) -> None:
    # 200 kB on stderr before anything on stdout: far more than a pipe holds (64 kB), so a
    # reader that drained stdout first would wait forever.
    command = "head -c 200000 /dev/zero | tr '\\0' e >&2; head -c 150000 /dev/zero | tr '\\0' o"
    with trio.fail_after(10):
        result = await run_command(command, env=shell_env, max_output_bytes=100_000)
    assert result.status is ExecutionStatus.SUCCEEDED
    assert (result.stderr, result.stderr_dropped) == ("e" * 100_000, 100_000)
    assert (result.stdout, result.stdout_dropped) == ("o" * 100_000, 50_000)


async def test_invalid_utf8_is_replaced(shell_env: dict[str, str]) -> None:
    result = await run_command(r"printf 'ok \377\376 caf\303\251'", env=shell_env)
    assert result.stdout == "ok \ufffd\ufffd café"


async def test_env_is_the_whole_environment_and_stdin_is_empty() -> None:
    result = await run_command(
        'echo "$TSCHED_TASK_ID|${HOME-unset}"; read line || echo eof', env={"TSCHED_TASK_ID": "t1"}
    )
    assert result.stdout == "t1|unset\neof\n"


async def test_a_command_that_cannot_start_is_an_error() -> None:
    # The OS refuses an environment value with a NUL byte: no process is ever started.
    result = await run_command("echo never", env={"BROKEN": "a\x00b"})
    assert result.status is ExecutionStatus.ERROR
    assert result.exit_code is None
    assert result.stdout == ""
    assert "could not start /bin/sh" in result.stderr


async def test_cancelling_kills_the_whole_process_group(
    tmp_path: Path,
    shell_env: dict[str, str],
    read_pids: Callable[[Path, int], Awaitable[list[int]]],
    live_group_members: Callable[[int], list[int]],
    wait_for: Callable[..., Awaitable[None]],
) -> None:
    pids = tmp_path / "pids"
    command = f"echo $$ > {pids}; sleep 30 & echo $! >> {pids}; sleep 30; wait"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_command(command, env=shell_env))
        shell, background = await read_pids(pids, 2)
        assert os.getpgid(background) == shell  # the shell leads the command's own group
        assert len(live_group_members(shell)) == 3  # sh, the background and foreground sleep
        nursery.cancel_scope.cancel()
    # run_command returned only after the kill; the kernel may take a moment to finish it
    await wait_for(lambda: not live_group_members(shell), timeout=5)


async def test_kill_grace_sends_sigterm_first(
    tmp_path: Path,
    shell_env: dict[str, str],
    read_pids: Callable[[Path, int], Awaitable[list[int]]],
    live_group_members: Callable[[int], list[int]],
    wait_for: Callable[..., Awaitable[None]],
) -> None:
    pids = tmp_path / "pids"
    marker = tmp_path / "terminated"
    # The shell notes the SIGTERM and exits on it; the grace period is not waited out.
    command = f"trap 'echo > {marker}; exit 1' TERM; echo $$ > {pids}; sleep 30 & wait"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_command(command, env=shell_env, kill_grace=10))
        (shell,) = await read_pids(pids, 1)
        await wait_for(lambda: len(live_group_members(shell)) == 2)
        started = trio.current_time()
        nursery.cancel_scope.cancel()
    assert trio.current_time() - started < 5
    assert marker.exists()
    await wait_for(lambda: not live_group_members(shell), timeout=5)


async def test_a_group_that_ignores_sigterm_is_killed_after_the_grace(
    tmp_path: Path,
    shell_env: dict[str, str],
    read_pids: Callable[[Path, int], Awaitable[list[int]]],
    live_group_members: Callable[[int], list[int]],
    wait_for: Callable[..., Awaitable[None]],
) -> None:
    pids = tmp_path / "pids"
    # an ignored signal stays ignored in children: the whole group shrugs SIGTERM off
    command = f"trap '' TERM; echo $$ > {pids}; sleep 30 & wait"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: run_command(command, env=shell_env, kill_grace=0.3))
        (shell,) = await read_pids(pids, 1)
        await wait_for(lambda: len(live_group_members(shell)) == 2)
        started = trio.current_time()
        nursery.cancel_scope.cancel()
    assert 0.3 <= trio.current_time() - started < 5
    await wait_for(lambda: not live_group_members(shell), timeout=5)


@pytest.mark.parametrize("limit", [0, 1, 3])
async def test_tiny_caps(limit: int, shell_env: dict[str, str]) -> None:
    result = await run_command("printf abc", env=shell_env, max_output_bytes=limit)
    assert result.stdout == "abc"[3 - limit :]
    assert result.stdout_dropped == 3 - limit


async def test_stop_kills_the_group_and_returns_what_was_printed(
    tmp_path: Path,
    shell_env: dict[str, str],
    live_group_members: Callable[[int], list[int]],
    wait_for: Callable[..., Awaitable[None]],
) -> None:
    stop = trio.Event()
    started: list[int] = []

    async def on_start(pid: int) -> None:
        started.append(pid)

    async def stop_soon() -> None:
        await trio.sleep(0.3)
        stop.set()

    # the second sleep leaves the group (setsid) but keeps stdout open: the run still ends
    escaped = tmp_path / "escaped"
    command = f"echo before; sleep 30 & setsid sh -c 'echo $$ > {escaped}; exec sleep 30' & wait"
    try:
        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stop_soon)
                result = await run_command(command, env=shell_env, stop=stop, on_start=on_start)
    finally:
        if escaped.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(escaped.read_text()), signal.SIGKILL)
    assert (result.stopped, result.status, result.exit_code) == (
        True,
        ExecutionStatus.FAILED,
        -signal.SIGKILL,
    )
    assert result.stdout == "before\n"
    (shell,) = started
    await wait_for(lambda: not live_group_members(shell), timeout=5)


async def test_a_run_that_ends_is_not_stopped(shell_env: dict[str, str]) -> None:
    stop = trio.Event()
    result = await run_command("echo hi", env=shell_env, stop=stop)
    stop.set()
    assert (result.stopped, result.status, result.stdout) == (
        False,
        ExecutionStatus.SUCCEEDED,
        "hi\n",
    )
