"""Capped exponential backoff with "equal jitter", for everything that is retried.

The delay after ``n`` failures in a row is drawn from ``[d/2, d]`` around the exponential value
``d = initial × 2^(n-1)``, capped at ``maximum``. The jitter keeps many lanes or agents that
failed at the same moment (the server was down) from retrying in step; the lower half-bound
keeps the backoff growing. The random draw is an argument, so that the core stays
deterministic: the adapters pass ``random.random()``.
"""

from __future__ import annotations

import attrs

# 2**62 × any sane initial delay is past every cap; stopping there keeps the float finite.
_MAX_EXPONENT = 62


@attrs.frozen(kw_only=True)
class Backoff:
    """Delays in seconds that double from ``initial`` up to ``maximum`` (both > 0)."""

    initial: float = attrs.field(validator=attrs.validators.gt(0))
    maximum: float = attrs.field(validator=attrs.validators.gt(0))

    def ceiling(self, failures: int) -> float:
        """``d``, the delay after ``failures`` failures in a row before jitter (0 counts as 1)."""
        exponent = min(max(failures, 1) - 1, _MAX_EXPONENT)
        return min(self.maximum, self.initial * 2.0**exponent)

    def delay(self, failures: int, *, jitter: float) -> float:
        """How long to wait after ``failures`` failures in a row: ``d × (1 + jitter) / 2``.

        ``jitter`` is a random draw in ``[0, 1]`` (``random.random()``), which puts the delay in
        ``[d/2, d]``.
        """
        if not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be in [0, 1], got {jitter!r}")
        return self.ceiling(failures) * (0.5 + 0.5 * jitter)
