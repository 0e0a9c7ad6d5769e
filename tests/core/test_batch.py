"""The batch report contract: the envelope, each item on its own, and the fast path that reads a
plainly well-formed item without cattrs (held here to cattrs' answers)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskscheduler_core import (
    MAX_BATCH_EXECUTIONS,
    BatchedReport,
    Execution,
    ExecutionStatus,
    WireError,
    batch_body,
    batch_items,
    parse_batch_item,
    structure,
)
from taskscheduler_core.batch import _plain_item

MOMENT = datetime(2026, 11, 28, 3, 16, 31, 123456, tzinfo=UTC)

#: Values of every JSON kind, well and badly formed, for any field.
ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.just("2026-11-28T03:16:31Z"),
    st.just("2026-11-28T03:16:31"),
    st.just(str(uuid.uuid4())),
    st.sampled_from([status.value for status in ExecutionStatus]),
    st.sampled_from(["schedule", "manual", "retry"]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
FIELDS = [
    "task_id",
    "server_id",
    "stdout",
    "stderr",
    "scheduled_at",
    "started_at",
    "finished_at",
    "status",
    "exit_code",
    "stdout_dropped",
    "stderr_dropped",
    "attempt",
    "trigger",
    "final",
    "unknown",
]


def good_item() -> dict[str, Any]:
    execution = Execution(
        task_id=uuid.uuid4(),
        agent_id=uuid.uuid4(),
        scheduled_at=MOMENT,
        started_at=MOMENT,
        finished_at=MOMENT,
        status=ExecutionStatus.FAILED,
        exit_code=3,
        stdout="hello ✓\n",
        stderr_dropped=7,
        attempt=2,
    )
    item: dict[str, Any] = batch_body([execution])["executions"][0]
    return item


@given(changes=st.dictionaries(st.sampled_from(FIELDS), ANY_VALUE, max_size=4))
def test_the_fast_path_reads_exactly_what_cattrs_reads(changes: dict[str, Any]) -> None:
    item = good_item() | changes
    fast = _plain_item(item)
    try:
        expected = structure(item, BatchedReport)
    except WireError:
        assert fast is None  # refused: left to cattrs, for its message
        return
    assert fast is None or fast == expected  # None: read by cattrs instead, same result
    assert parse_batch_item(item, 0) == expected


def test_a_well_formed_item_takes_the_fast_path() -> None:
    item = good_item()
    assert _plain_item(item) == structure(item, BatchedReport)
    assert _plain_item({key: value for key, value in item.items() if key != "stdout"}) is not None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], None),
        ({"executions": [], "other": 1}, "other"),
        ({"executions": "no"}, "executions"),
        ({"executions": []}, "executions"),
        ({"executions": [{}] * (MAX_BATCH_EXECUTIONS + 1)}, "executions"),
    ],
)
def test_a_wrong_envelope_is_refused_naming_the_field(body: object, field: str | None) -> None:
    with pytest.raises(WireError) as refused:
        batch_items(body)
    assert refused.value.field == field


def test_an_item_s_error_names_its_index_and_field() -> None:
    item = good_item() | {"attempt": 0}
    with pytest.raises(WireError) as refused:
        parse_batch_item(item, 7)
    assert refused.value.field == "executions.7.attempt"
