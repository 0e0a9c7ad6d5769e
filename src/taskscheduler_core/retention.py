"""History retention: which executions the server may prune.

Both rules are caps, so that storage stays bounded whatever a task's frequency: a run is pruned
once it is not among the task's newest ``keep_runs`` runs, or once it is older than ``keep_days``
days. ``None`` turns a rule off; both off keeps everything. A task's newest run is always kept
(unless the task was deleted), so that a ``@yearly`` task's ``latest_output`` does not go blank
after 30 days. The server applies the policy in the
background, and forgets a deleted task once its last run is pruned.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import attrs

from .errors import WireError


def _optional_positive(instance: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None and (
        isinstance(value, bool) or not isinstance(value, int | float) or value <= 0
    ):
        raise WireError(f"must be a number > 0, got {value!r}", field=attribute.name)


@attrs.frozen(kw_only=True)
class RetentionPolicy:
    """How much history the server keeps per task (defaults: 1,000 runs or 30 days)."""

    keep_runs: int | None = attrs.field(default=1000, validator=_optional_positive)
    keep_days: float | None = attrs.field(default=30.0, validator=_optional_positive)

    @property
    def keeps_everything(self) -> bool:
        return self.keep_runs is None and self.keep_days is None

    def cutoff(
        self, run_times: Sequence[datetime], *, now: datetime, keep_newest: bool = True
    ) -> datetime | None:
        """Runs scheduled before the returned time are pruned (``None``: prune nothing).

        ``run_times`` are the task's run fire times, newest first (at least ``keep_runs + 1`` of
        them when there are that many, and at least the newest). ``keep_newest=False`` (for a
        deleted task) lets the rules prune the newest run too.
        """
        if self.keeps_everything:
            return None
        by_count: datetime | None = None
        if self.keep_runs is not None and len(run_times) > self.keep_runs:
            by_count = run_times[self.keep_runs - 1]  # the oldest run the count rule keeps
        by_age = now - timedelta(days=self.keep_days) if self.keep_days is not None else None
        cutoffs = [cutoff for cutoff in (by_count, by_age) if cutoff is not None]
        if not cutoffs or not run_times:
            return None
        cutoff = max(cutoffs)  # either rule prunes
        return min(cutoff, run_times[0]) if keep_newest else cutoff
