"""Capped exponential backoff with jitter, for everything the agent retries."""

from __future__ import annotations

import random

import attrs

# 2**62 × any sane initial delay is past every cap; stopping there keeps the float finite.
_MAX_EXPONENT = 62


@attrs.frozen(kw_only=True)
class Backoff:
    """Delays that double from ``initial`` up to ``maximum`` seconds."""

    initial: float
    maximum: float

    def delay(self, failures: int) -> float:
        """How long to wait after ``failures`` failures in a row (``failures`` ≥ 1).

        The delay is drawn from ``[d/2, d]`` around the exponential value ``d``: the jitter
        keeps many agents that lost the server at the same moment from retrying in lockstep,
        and the lower half-bound keeps the backoff growing.
        """
        exponent = min(max(failures, 1) - 1, _MAX_EXPONENT)
        capped = min(self.maximum, self.initial * 2.0**exponent)
        return capped * (0.5 + 0.5 * random.random())
