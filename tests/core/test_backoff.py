"""Backoff: capped exponential delays with equal jitter, the random draw passed in."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from taskscheduler_core import Backoff

backoffs = st.builds(
    Backoff,
    initial=st.floats(min_value=1e-3, max_value=1e3),
    maximum=st.floats(min_value=1e-3, max_value=1e6),
)
failure_counts = st.integers(min_value=1, max_value=200)
jitters = st.floats(min_value=0, max_value=1, exclude_max=True)


@given(backoffs, failure_counts, jitters)
def test_a_delay_is_between_half_the_ceiling_and_the_ceiling(
    backoff: Backoff, failures: int, jitter: float
) -> None:
    ceiling = backoff.ceiling(failures)
    assert ceiling / 2 <= backoff.delay(failures, jitter=jitter) <= ceiling


@given(backoffs, st.integers(min_value=-5, max_value=10_000), jitters)
def test_a_delay_is_never_above_the_maximum(backoff: Backoff, failures: int, jitter: float) -> None:
    delay = backoff.delay(failures, jitter=jitter)
    assert math.isfinite(delay)
    assert 0 < delay <= backoff.maximum


@given(backoffs, failure_counts)
def test_the_ceiling_doubles_until_the_cap(backoff: Backoff, failures: int) -> None:
    assert backoff.ceiling(1) == min(backoff.initial, backoff.maximum)
    assert backoff.ceiling(failures + 1) == min(backoff.maximum, 2 * backoff.ceiling(failures))


def test_the_jitter_spans_half_to_all_of_the_ceiling() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0)
    assert [backoff.delay(n, jitter=0) for n in (1, 2, 3, 4, 5)] == [0.5, 1, 2, 4, 4]
    assert [backoff.delay(n, jitter=1) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 8]
    assert backoff.delay(0, jitter=1) == backoff.delay(1, jitter=1)


@pytest.mark.parametrize("jitter", [-0.1, 1.5, math.nan])
def test_a_jitter_outside_0_1_is_refused(jitter: float) -> None:
    with pytest.raises(ValueError, match="jitter"):
        Backoff(initial=1.0, maximum=8.0).delay(1, jitter=jitter)


@pytest.mark.parametrize(("initial", "maximum"), [(0, 1), (1, 0), (-1, 1), (math.nan, 1)])
def test_delays_must_be_positive(initial: float, maximum: float) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        Backoff(initial=initial, maximum=maximum)
