"""OutputCapture: a byte cap that keeps the tail and counts what it dropped."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskscheduler_core import DEFAULT_MAX_OUTPUT_BYTES, OutputCapture


def test_under_the_cap_everything_is_kept() -> None:
    capture = OutputCapture(limit=16)
    capture.feed(b"hello ")
    capture.feed(b"world\n")
    assert capture.data == b"hello world\n"
    assert capture.text() == "hello world\n"
    assert capture.dropped == 0


def test_over_the_cap_the_tail_is_kept_and_the_head_counted() -> None:
    capture = OutputCapture(limit=5)
    capture.feed(b"0123")
    capture.feed(b"456789")
    assert capture.data == b"56789"
    assert capture.dropped == 5
    capture.feed(b"ab")
    assert capture.data == b"789ab"
    assert capture.dropped == 7


def test_one_chunk_larger_than_the_cap() -> None:
    capture = OutputCapture(limit=3)
    capture.feed(b"x" * 1000 + b"end")
    assert capture.data == b"end"
    assert capture.dropped == 1000


def test_empty_feeds_change_nothing() -> None:
    capture = OutputCapture(limit=3)
    capture.feed(b"")
    assert capture.data == b""
    assert capture.text() == ""
    assert capture.dropped == 0


def test_a_zero_cap_keeps_nothing() -> None:
    capture = OutputCapture(limit=0)
    capture.feed(b"abc")
    assert capture.data == b""
    assert capture.dropped == 3


def test_a_negative_cap_is_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        OutputCapture(limit=-1)


def test_default_cap() -> None:
    assert OutputCapture().limit == DEFAULT_MAX_OUTPUT_BYTES == 1024 * 1024


def test_invalid_utf8_is_replaced() -> None:
    capture = OutputCapture(limit=100)
    capture.feed(b"ok \xff\xfe done")
    assert capture.text() == "ok \ufffd\ufffd done"


def test_a_character_cut_by_the_cap_is_replaced() -> None:
    # "é" is two bytes; the cap keeps only its second one.
    capture = OutputCapture(limit=3)
    capture.feed("café".encode())
    assert capture.data == b"f\xc3\xa9"
    assert capture.text() == "fé"
    capture.feed(b"!")
    assert capture.data == b"\xc3\xa9!"
    capture.feed(b"?")
    assert capture.data == b"\xa9!?"
    assert capture.text() == "\ufffd!?"


def test_a_character_split_across_chunks_is_whole() -> None:
    capture = OutputCapture(limit=100)
    for byte in "naïve ☃".encode():
        capture.feed(bytes([byte]))
    assert capture.text() == "naïve ☃"


@settings(max_examples=300)
@given(
    chunks=st.lists(st.binary(max_size=64), max_size=20),
    limit=st.integers(min_value=0, max_value=200),
)
def test_keeps_the_tail_for_any_chunking(chunks: list[bytes], limit: int) -> None:
    capture = OutputCapture(limit=limit)
    for chunk in chunks:
        capture.feed(chunk)
        assert len(capture.data) <= limit
    whole = b"".join(chunks)
    assert capture.data == (whole[-limit:] if limit else b"")
    assert capture.dropped == max(0, len(whole) - limit)
    assert capture.text() == capture.data.decode("utf-8", errors="replace")
