"""The lease: which of the servers sharing one database does the work that must happen once.

Dispatch, reconciliation, liveness and pruning are done by the replica that holds the lease
(the row ``leases.name = 'leader'``, see :meth:`Store.acquire_lease`); every replica serves the
whole API. (Skeleton: the contract other modules rely on; issue 7 fills in the rest.)
"""

from __future__ import annotations

from datetime import datetime

import attrs

#: The name of the lease of the work done once.
LEADER_LEASE = "leader"


@attrs.define(eq=False)
class Leadership:
    """This replica's view of the lease, kept up to date by its lease loop.

    ``held``: this replica holds the lease now (and does the work done once). ``holder``: the
    replica that held it at the last look (this one or another; ``None`` if nobody), and
    ``expires_at`` until when. Read by ``/readyz`` and ``/metrics``.
    """

    replica_id: str
    held: bool = False
    holder: str | None = None
    expires_at: datetime | None = None
