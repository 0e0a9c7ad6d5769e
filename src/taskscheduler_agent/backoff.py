"""Backoff for everything the agent retries: the core's, with a fresh random jitter each time."""

from __future__ import annotations

import random

import attrs

from taskscheduler_core import Backoff as CoreBackoff


@attrs.frozen(kw_only=True)
class Backoff(CoreBackoff):
    """Delays that double from ``initial`` up to ``maximum`` seconds, drawn from ``[d/2, d]``."""

    def delay(self, failures: int, *, jitter: float | None = None) -> float:
        """How long to wait after ``failures`` failures in a row (``failures`` ≥ 1).

        ``jitter`` pins the draw (see :meth:`taskscheduler_core.Backoff.delay`); by default it is
        random, so that many agents that lost the server at the same moment do not retry in step.
        """
        return super().delay(failures, jitter=random.random() if jitter is None else jitter)
