"""Running one command: ``/bin/sh -c <command>`` in its own process group, output captured.

The command gets a new session (so a process group of its own): whatever it starts in the
background belongs to that group, and cancelling the run kills the whole group, not just the
shell. Both output streams are read concurrently, so a command that fills one pipe while we wait
on the other cannot deadlock, and each is capped by :class:`~taskscheduler_core.OutputCapture`
(the tail is kept, the dropped bytes counted).

A run ends when the shell has exited *and* both streams are closed: a background child that
still holds the shell's stdout keeps the run going, as it would in a terminal.

Two ways to end a run early: cancelling the call (the group is killed and ``Cancelled``
propagates, nothing is returned), or setting its ``stop`` event (the group is killed and the
result, with what was printed so far, comes back marked ``stopped``): the agent's graceful
shutdown uses the second, so that a killed command is still recorded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Mapping

import attrs
import trio

from taskscheduler_core import DEFAULT_MAX_OUTPUT_BYTES, ExecutionStatus, OutputCapture

#: The shell every command is run with.
SHELL = "/bin/sh"

#: Variables of the agent's environment that commands do not inherit: secrets given to
#: ``tsched`` (the join token an agent registers with, the tokens and database URL of a server
#: started from the same environment, as ``tsched up`` and a shared env file do). A task that
#: runs ``env`` would otherwise print them into its output, which every reader of the API sees.
SECRET_VARIABLES = frozenset(
    {
        "TSCHED_ADMIN_TOKEN",
        "TSCHED_DATABASE",
        "TSCHED_JOIN_TOKEN",
        "TSCHED_READ_TOKEN",
        "TSCHED_TOKEN",
    }
)


def command_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment commands inherit from an agent running in ``environ``: all of it but
    :data:`SECRET_VARIABLES`."""
    return {name: value for name, value in environ.items() if name not in SECRET_VARIABLES}


_CHUNK = 64 * 1024

#: After a stop kills the group, how long output still held open (by a process that left the
#: group) is read before the run is closed anyway.
_DRAIN_AFTER_STOP = 0.5


@attrs.frozen(kw_only=True)
class CommandResult:
    """How a command ended and what it printed.

    ``exit_code`` is the shell's exit status, or ``-N`` when it was killed by signal ``N`` (as
    in :mod:`subprocess`); ``None`` when no process could be started (status ``error``, and
    ``stderr`` says why). ``stopped``: the run was ended through ``run_command``'s ``stop``.
    """

    status: ExecutionStatus
    exit_code: int | None
    stdout: str = ""
    stderr: str = ""
    stdout_dropped: int = 0
    stderr_dropped: int = 0
    stopped: bool = False


async def run_command(
    command: str,
    *,
    env: Mapping[str, str],
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
    kill_grace: float = 0.0,
    stop: trio.Event | None = None,
    on_start: Callable[[int], Awaitable[None]] | None = None,
) -> CommandResult:
    """Run ``command`` with the shell and wait for it; ``env`` is its whole environment.

    Cancelling the call kills the command's process group and reaps the shell before the
    cancellation propagates. With ``kill_grace > 0`` the group first gets SIGTERM and that many
    seconds to exit, then SIGKILL; with the default 0 it gets SIGKILL at once.

    Setting ``stop`` SIGKILLs the group and returns the result so far with ``stopped=True``.
    ``on_start(pid)`` is awaited as soon as the shell runs (its pid is the group's id); if it
    fails, the group is killed and its error propagates.
    """
    stdout = OutputCapture(max_output_bytes)
    stderr = OutputCapture(max_output_bytes)
    try:
        process = await trio.lowlevel.open_process(
            [SHELL, "-c", command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            start_new_session=True,
        )
    except (OSError, ValueError) as error:
        # ValueError: an environment value Popen refuses (an embedded NUL byte)
        return CommandResult(
            status=ExecutionStatus.ERROR,
            exit_code=None,
            stderr=f"taskscheduler: could not start {SHELL}: {error}\n",
        )
    # No checkpoint between open_process returning and this try: a cancellation that arrives
    # now is delivered inside it, so the group is always killed.
    stopped = False
    try:
        assert process.stdout is not None
        assert process.stderr is not None
        if on_start is not None:
            await on_start(process.pid)
        drain_scope = trio.CancelScope()
        async with trio.open_nursery() as watch:
            if stop is not None:

                async def stop_when_asked() -> None:
                    nonlocal stopped
                    await stop.wait()
                    stopped = True
                    _signal_group(process.pid, signal.SIGKILL)
                    drain_scope.deadline = trio.current_time() + _DRAIN_AFTER_STOP

                watch.start_soon(stop_when_asked)
            with drain_scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_drain, process.stdout, stdout)
                    nursery.start_soon(_drain, process.stderr, stderr)
                    await process.wait()
            watch.cancel_scope.cancel()
        exit_code = await process.wait()
    except BaseException:
        with trio.CancelScope(shield=True):
            await _kill_group(process, kill_grace)
        raise
    finally:
        with trio.CancelScope(shield=True):
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    await stream.aclose()
    return CommandResult(
        status=ExecutionStatus.SUCCEEDED if exit_code == 0 else ExecutionStatus.FAILED,
        exit_code=exit_code,
        stdout=stdout.text(),
        stderr=stderr.text(),
        stdout_dropped=stdout.dropped,
        stderr_dropped=stderr.dropped,
        stopped=stopped,
    )


async def _drain(stream: trio.abc.ReceiveStream, capture: OutputCapture) -> None:
    while chunk := await stream.receive_some(_CHUNK):
        capture.feed(bytes(chunk))


async def _kill_group(process: trio.Process, grace: float) -> None:
    """Stop every process of the command's group, then reap the shell."""
    # The session leader's pid is the group id (start_new_session). The group id stays taken
    # while any member lives, so signalling it cannot hit an unrelated process group.
    group = process.pid
    if grace > 0:
        _signal_group(group, signal.SIGTERM)
        with trio.move_on_after(grace):
            await process.wait()
    _signal_group(group, signal.SIGKILL)
    await process.wait()


def _signal_group(group: int, signum: signal.Signals) -> None:
    # ProcessLookupError: the group is already gone. PermissionError: what is left of it are
    # members we may not signal (they changed user), which nothing here can stop anyway.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, signum)
