"""The agent's id in ``data_dir/agent_id``: created once, read back, never silently replaced."""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

import pytest

from taskscheduler_agent import AGENT_ID_FILE, IdentityError, load_or_create_agent_id


def test_created_on_first_start_and_read_back_later(tmp_path: Path) -> None:
    data_dir = tmp_path / "not" / "yet" / "there"
    agent_id = load_or_create_agent_id(data_dir)
    assert (data_dir / AGENT_ID_FILE).read_text() == f"{agent_id}\n"
    assert load_or_create_agent_id(data_dir) == agent_id
    # nothing but the id file is left behind by the atomic write
    assert [path.name for path in data_dir.iterdir()] == [AGENT_ID_FILE]


def test_different_directories_are_different_agents(tmp_path: Path) -> None:
    assert load_or_create_agent_id(tmp_path / "a") != load_or_create_agent_id(tmp_path / "b")


def test_an_id_written_by_hand_is_accepted(tmp_path: Path) -> None:
    agent_id = UUID("6f1b0f4e-3c59-4a55-9d43-2f0b3c3f9a10")
    (tmp_path / AGENT_ID_FILE).write_text(f"  {agent_id}\r\n")
    assert load_or_create_agent_id(tmp_path) == agent_id


@pytest.mark.parametrize("content", [b"", b"not-a-uuid\n", b"\xff\xfe", b"6f1b0f4e-3c59"])
def test_a_corrupt_file_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / AGENT_ID_FILE
    path.write_bytes(content)
    with pytest.raises(IdentityError) as raised:
        load_or_create_agent_id(tmp_path)
    assert raised.value.path == path
    assert str(path) in str(raised.value)
    assert isinstance(raised.value, ValueError)
    assert path.read_bytes() == content  # left for the operator to inspect


def test_a_data_dir_that_cannot_be_created_is_an_identity_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(IdentityError, match="agent id"):
        load_or_create_agent_id(blocker / "data")
