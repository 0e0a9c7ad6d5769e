"""Process groups a previous run of the agent left behind, and how to end them safely.

Every command runs in a session of its own, so its process group id is the shell's pid. When
the agent is killed (``SIGKILL``, a crash, the OOM killer) its commands live on, reparented to
init. The agent saves each command's :class:`ProcessIdentity` when it starts it; the next start
kills the groups that are still there (:func:`kill_leftover_group`) before recording those
executions as interrupted.

A pid is reused once its process is gone, so a saved pid alone could name a stranger. The
identity also holds the shell's start time (``/proc/<pid>/stat``, in clock ticks since boot) and
the boot id: a process with that pid but another start time, or a saved identity from an earlier
boot, is not ours. While any member of a process group lives, Linux does not hand its id out as
a new pid, so a group whose leader has exited but whose members remain is still ours to kill.
Without ``/proc`` (not Linux) nothing can be verified, and nothing is killed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
from pathlib import Path

import attrs

logger = logging.getLogger(__name__)

_PROC = Path("/proc")
_BOOT_ID = _PROC / "sys" / "kernel" / "random" / "boot_id"


@attrs.frozen(kw_only=True)
class ProcessIdentity:
    """Who a process group leader is, beyond its pid (``None`` where ``/proc`` cannot say)."""

    pid: int
    start_ticks: int | None
    boot_id: str | None


def identify(pid: int) -> ProcessIdentity:
    """The identity of the live process ``pid`` (a command's shell, just started)."""
    stat = _read_stat(pid)
    return ProcessIdentity(
        pid=pid,
        start_ticks=None if stat is None else stat.start_ticks,
        boot_id=_boot_id(),
    )


def kill_leftover_group(identity: ProcessIdentity) -> bool:
    """``SIGKILL`` the process group led by ``identity`` if it is still there and ours.

    Returns whether a signal was sent. Never raises for a group that is gone or not ours.
    """
    if identity.start_ticks is None or identity.boot_id is None or _boot_id() is None:
        if _PROC.is_dir():
            logger.warning("no saved identity for process group %d: left alone", identity.pid)
        return False
    if identity.boot_id != _boot_id():
        return False  # the host rebooted since: that group died with it
    stat = _read_stat(identity.pid)
    if stat is not None and not stat.zombie and stat.start_ticks != identity.start_ticks:
        return False  # the pid now names another process (and the group, if any, is its own)
    # The leader is ours (alive, or a zombie not yet reaped), or it is gone; in both cases a
    # group with this id can only be what is left of ours.
    try:
        os.killpg(identity.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    logger.warning("killed process group %d, left running by a previous agent", identity.pid)
    return True


@attrs.frozen
class _Stat:
    start_ticks: int
    zombie: bool


def _read_stat(pid: int) -> _Stat | None:
    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (OSError, UnicodeDecodeError):
        return None
    # "pid (comm) state ppid pgrp ... starttime ...": comm may hold spaces and parentheses,
    # so the fields are counted from the last ")"; starttime is field 22 of the whole line.
    try:
        fields = text[text.rindex(")") + 2 :].split()
        return _Stat(start_ticks=int(fields[19]), zombie=fields[0] in ("Z", "X"))
    except (ValueError, IndexError):
        return None


@functools.cache  # read once: a process never outlives the boot it started in
def _boot_id() -> str | None:
    with contextlib.suppress(OSError, UnicodeDecodeError):
        return _BOOT_ID.read_text().strip() or None
    return None
