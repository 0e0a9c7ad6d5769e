"""The agent's stable identity: a UUID kept in ``data_dir/agent_id``.

The server keys every execution by agent id, so the id must survive restarts: it is created on
the first start and read back on every later one.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from uuid import UUID

from .errors import IdentityError

#: The file, inside the data directory, that holds the agent's id.
AGENT_ID_FILE = "agent_id"


def load_or_create_agent_id(data_dir: Path) -> UUID:
    """The id stored in ``data_dir``; a new one is created (with the directory) on first use.

    Raises :class:`IdentityError` when the file exists but does not hold a UUID: silently making
    a new id would orphan every execution the server stored under the old one.
    """
    path = data_dir / AGENT_ID_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        try:
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            return _create(path)
        except OSError as error:
            raise IdentityError(
                f"cannot create the agent id in {path}: {error}", path=path
            ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise IdentityError(f"cannot read the agent id from {path}: {error}", path=path) from None
    try:
        return UUID(text.strip())
    except ValueError:
        raise IdentityError(
            f"{path} does not hold an agent id (a UUID): {text[:64]!r}; "
            "restore it, or delete it to start as a new agent",
            path=path,
        ) from None


def _create(path: Path) -> UUID:
    agent_id = uuid.uuid4()
    # Written to a temporary file and renamed over, so a crash mid-write never leaves a torn
    # file that would stop the next start.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(f"{agent_id}\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return agent_id


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
