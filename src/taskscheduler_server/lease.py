"""The lease: which of the servers sharing one database does the work that must happen once.

Every replica serves the whole API. Dispatch, reconciliation, liveness and pruning are done by
the replica that holds the lease: the row ``leases.name = 'leader'``, taken and renewed with
:meth:`Store.acquire_lease` (one transaction: of two replicas trying at once, one gets it).

The rules, as :class:`LeaseKeeper` applies them (``d`` is the lease duration, 15 s by default):

- **Trying and renewing.** Every replica tries to take the lease every ``d/3``; the holder renews
  it as often, each time until ``now + d``. A replica that sees another hold it tries again at
  that holder's ``expires_at`` too (if sooner), so that a dead holder is replaced as soon as its
  lease runs out: within ``d`` of its last renewal.
- **Stopping in time.** The holder stops the work (cancels it) at once when a renewal fails or
  is refused, and in any case ``STOP_MARGIN × d`` before its lease could expire in the database:
  that deadline is kept on trio's clock from the start of the last successful renewal, so a
  renewal that hangs (the database unreachable, no answer) cannot keep the work going. Then it
  logs a warning and keeps trying to take the lease again.
- **Clocks.** ``now`` and ``expires_at`` come from the server clock of whoever writes the row
  (:func:`~.clock.utc_now`), not the database's. The replicas' clocks must therefore agree to
  within ``STOP_MARGIN × d`` (3 s at the default; NTP keeps them within milliseconds): a
  replica whose clock runs that far ahead of the holder's would take the lease while the holder
  still works. (Trio's clock stops while the host is suspended: a holder whose host slept
  through its deadline learns that its lease is gone at its next renewal, within ``d/3``.)
- **Graceful stop.** Cancelling :meth:`LeaseKeeper.run` stops the work, then releases the lease
  (shielded, bounded by ``RELEASE_TIMEOUT``), so that another replica takes it at its next try
  (within ``d/3``) rather than at expiry.
- **Work that fails.** The work done once raising any error stops it, as a lost lease does, and
  it starts again after the next successful renewal: at most once per renewal, never in a hot
  loop. :class:`~.errors.DatabaseUnavailable` (the database went away under it) is expected and
  logged as a warning; any other error (a statement timeout, a database turned read-only, a
  bug) is logged as an error with its traceback and counted in
  :attr:`Leadership.work_failures`: the API goes on serving either way. After
  ``HAND_OVER_AFTER`` (3) failures in a row, the holder hands the lease over: it releases it
  and does not try to take it for one lease duration, so that another replica, which may not
  share its trouble (a full disk, a descriptor limit), does the work. The standby failing
  is started again after a pause of one try interval, likewise.
- **Its own door to the store.** The lease's store calls go through
  :meth:`AsyncStore.call_apart`, not the door of the API's calls: on PostgreSQL they take a
  pooled connection of their own, so that API calls queued up (say, behind a lock held by a
  stalled transaction of another replica) cannot hold a renewal back until the lease is lost.
  On SQLite they still queue with every other call (one connection, one writer).
- **A lone server** (SQLite, ``tsched up``) finds the lease free at its first try, made before
  :meth:`LeaseKeeper.run` reports itself started: the work starts as it did before leases
  existed; after a crash too, since its default replica id (the host name) is the same at each
  start. On PostgreSQL a new process is a new replica: after a crash (no release) it waits for
  its previous life's lease to run out, as any other replica would.

What only the holder does is given as ``lead``; ``standby`` runs instead while this replica does
not hold the lease (the server's dispatcher then sends only the manual runs received by this
replica: see :meth:`.dispatch.Dispatcher.run`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import attrs
import trio

from .clock import utc_now
from .errors import DatabaseUnavailable
from .store import AsyncStore, Store, StoreSlot

logger = logging.getLogger("taskscheduler.server.lease")

#: The name of the lease of the work done once.
LEADER_LEASE = "leader"

#: Tries (renewals, for the holder) per lease duration.
TRIES_PER_DURATION = 3

#: The holder stops the work this fraction of the lease duration before the lease could expire:
#: the clock skew between replicas this tolerates, and the slack for the cancellation itself.
STOP_MARGIN = 0.2

#: A graceful stop waits at most this long (seconds) for its turn to release the lease: the store
#: may be busy with calls stuck on an unreachable database. (A call that started is not
#: abandoned: the database's own timeouts bound it.)
RELEASE_TIMEOUT = 5.0

#: A replica that saw the lease held tries again this long (seconds) after it expires: the
#: holder's row must read as expired by then, even with the two clocks a hair apart.
AFTER_EXPIRY = 0.01

#: The shortest wait between two tries: a guard against spinning on a clock that moves oddly.
MIN_WAIT = 0.01

#: A holder whose work failed this many times in a row (each start failing within a lease
#: duration) hands the lease over: it releases it and does not try to take it again for one
#: lease duration, so that another replica, which may not share its trouble (a full disk, a
#: file-descriptor limit, a broken connection of its own), does the work.
HAND_OVER_AFTER = 3

#: The work done once, started with ``nursery.start`` (so it takes ``task_status``) and run
#: until cancelled.
Work = Callable[..., Awaitable[object]]

#: What a replica does while it does not hold the lease: called without arguments, run until
#: cancelled.
Standby = Callable[[], Awaitable[object]]


@attrs.define(eq=False)
class Leadership:
    """This replica's view of the lease, kept up to date by its lease loop.

    ``held``: this replica holds the lease now (and does the work done once). ``holder``: the
    replica that held it at the last look (this one or another; ``None`` if nobody), and
    ``expires_at`` until when. Read by ``/readyz`` and ``/metrics`` (``work_failures`` too).
    """

    replica_id: str
    held: bool = False
    holder: str | None = None
    expires_at: datetime | None = None
    #: How many times the work done once (or the standby) failed with an error other than an
    #: unreachable database: a bug, or a database failing in a way nobody expected. Each one
    #: was logged with its traceback.
    work_failures: int = 0


class LeaseKeeper:
    """Takes, renews and gives up the lease ``name`` for ``leadership.replica_id``, and runs the
    work done once while it holds it (see the module's docstring for the rules).

    ``await nursery.start(keeper.run, lead, standby)`` returns after the first try, with
    ``lead`` started if the lease was taken; :attr:`leadership` is kept current throughout.
    """

    def __init__(
        self,
        store: AsyncStore,
        leadership: Leadership,
        *,
        duration: timedelta,
        name: str = LEADER_LEASE,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if duration <= timedelta(0):
            raise ValueError(f"the lease duration must be positive, got {duration}")
        self._store = store
        #: The lease's own place in line for the store (see the module's docstring).
        self._slot = StoreSlot()
        self.leadership = leadership
        self._duration = duration
        self._name = name
        self._clock = clock
        #: Seconds between two tries (renewals, while held).
        self.interval = duration.total_seconds() / TRIES_PER_DURATION
        #: Until when (trio's clock) this replica may do the work: the start of its last
        #: successful renewal plus ``(1 - STOP_MARGIN) × duration``; -inf when it may not.
        self._valid_until = -math.inf
        #: When (trio's clock) the next try is due.
        self._next_try = -math.inf
        #: Set when ``_valid_until`` changed, for the supervisor.
        self._changed = trio.Event()
        #: Why the lease was last lost (for the warning).
        self._lost_because = ""
        #: A try may have left the lease ours in the database: a graceful stop releases it.
        self._maybe_holding = False
        #: The database failed the last try (to log an outage once, and its end).
        self._failing = False
        #: Set once ``lead`` or ``standby`` first started.
        self._working = trio.Event()
        #: Failures of the work in a row (see HAND_OVER_AFTER), and until when (trio's clock)
        #: this replica does not try to take the lease after handing it over.
        self._failures_in_a_row = 0
        self._abstain_until = -math.inf

    @property
    def replica_id(self) -> str:
        return self.leadership.replica_id

    async def run(
        self,
        lead: Work,
        standby: Standby | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Keep trying to hold the lease until cancelled; run ``lead`` while it is held and
        ``standby`` (if given) while it is not; each runs until cancelled. Reports itself started
        once the first of them has. On cancellation the work stops, then the lease is released."""
        try:
            # The first try comes before anything else: a lone server leads from its start.
            await self._try()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keep_trying)
                nursery.start_soon(self._supervise, lead, standby)
                await self._working.wait()
                task_status.started()
        finally:
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + RELEASE_TIMEOUT
                await self._release()

    # -- taking and renewing -----------------------------------------------------------------

    async def _keep_trying(self) -> None:
        while True:
            await trio.sleep_until(max(self._next_try, trio.current_time() + MIN_WAIT))
            await self._try()

    async def _try(self) -> None:
        """One try to take or renew the lease; updates what the supervisor and readers see."""
        began = trio.current_time()  # before "now" is read: the deadline errs on the safe side
        now = self._clock()
        expires_at = now + self._duration
        self._next_try = began + self.interval
        if began < self._abstain_until:
            # Handed over after failing work: only look, so that readers see the holder.
            self._next_try = min(self._next_try, self._abstain_until)
            try:
                holder = await self._store.call_apart(
                    self._slot, Store.lease_holder, self._name, now=now
                )
            except Exception as error:
                self._failed(error)
                return
            self._lose("it handed the lease over after its work kept failing")
            self.leadership.holder, self.leadership.expires_at = holder or (None, None)
            self._changed.set()
            return
        self._maybe_holding = True
        try:
            taken = await self._store.call_apart(
                self._slot,
                Store.acquire_lease,
                self._name,
                self.replica_id,
                now=now,
                expires_at=expires_at,
            )
            holder = (
                (self.replica_id, expires_at)
                if taken
                else await self._store.call_apart(
                    self._slot, Store.lease_holder, self._name, now=now
                )
            )
        except Exception as error:  # the database is unreachable, locked, or failing
            self._failed(error)
            return
        if self._failing:
            self._failing = False
            logger.info("the database answers again; replica %s tries the lease", self.replica_id)
        if taken:
            self._valid_until = began + self._duration.total_seconds() * (1 - STOP_MARGIN)
        else:
            self._maybe_holding = False
            self._lose(f"replica {holder[0] if holder else 'another'} holds it")
            if holder is not None:
                # Try again as soon as the holder's time is up, should it not renew.
                left = (holder[1] - self._clock()).total_seconds()
                self._next_try = min(self._next_try, trio.current_time() + left + AFTER_EXPIRY)
        self.leadership.holder, self.leadership.expires_at = holder or (None, None)
        self._changed.set()

    def _failed(self, error: Exception) -> None:
        # A renewal whose outcome is unknown is a renewal that failed: stop the work now.
        self._lose(f"the database did not answer ({error!r})")
        self._changed.set()
        if self._failing:
            logger.debug("replica %s cannot reach the lease: %r", self.replica_id, error)
            return
        self._failing = True
        expected = isinstance(error, DatabaseUnavailable)
        logger.warning(
            "replica %s cannot take or renew the lease: %s; trying again every %.3g s",
            self.replica_id,
            error if expected else repr(error),
            self.interval,
            exc_info=None if expected else error,
        )

    def _lose(self, because: str) -> None:
        self._valid_until = -math.inf
        self._lost_because = because

    def _may_lead(self) -> bool:
        return trio.current_time() < self._valid_until

    async def _release(self) -> None:
        """Give the lease up (a graceful stop), if this replica may hold it."""
        leadership = self.leadership
        leadership.held = False
        if not self._maybe_holding:
            return
        try:
            released = await self._store.call_apart(
                self._slot, Store.release_lease, self._name, self.replica_id
            )
        except Exception as error:
            logger.warning(
                "replica %s could not release the lease (%r): it expires by itself at %s",
                self.replica_id,
                error,
                leadership.expires_at,
            )
            return
        self._maybe_holding = False
        if released:
            logger.info("replica %s released the lease", self.replica_id)
            leadership.holder = leadership.expires_at = None

    # -- running the work --------------------------------------------------------------------

    async def _changes(self) -> None:
        """Wait until a try changed what this replica may do."""
        await self._changed.wait()
        self._changed = trio.Event()

    async def _supervise(self, lead: Work, standby: Standby | None) -> None:
        """Run ``lead`` while the lease is held, ``standby`` while it is not, forever."""
        while True:
            if self._may_lead():
                await self._lead(lead)
                continue
            async with trio.open_nursery() as nursery:
                if standby is not None:
                    nursery.start_soon(self._stand_by, standby)
                self._working.set()
                while not self._may_lead():
                    await self._changes()
                nursery.cancel_scope.cancel()

    async def _lead(self, lead: Work) -> None:
        leadership = self.leadership
        leadership.held = True
        logger.info(
            "replica %s took the lease (until %s): it dispatches, reconciles, watches liveness "
            "and prunes",
            self.replica_id,
            leadership.expires_at,
        )
        started = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(lead)
                self._working.set()
                while self._may_lead():
                    # A renewal moves _valid_until later: then the wait starts again.
                    with trio.move_on_at(self._valid_until):
                        await self._changes()
                if self._valid_until > -math.inf:
                    self._lose(
                        "its lease could have expired: no renewal succeeded for "
                        f"{(1 - STOP_MARGIN) * self._duration.total_seconds():.3g} s"
                    )
                # Not held from now on, even while a store call of the work finishes.
                self._stopping()
                nursery.cancel_scope.cancel()
        except* Exception as group:
            # Whatever the work raised, the API goes on: the work stops, and starts again only
            # after the next successful renewal (so a work that fails at once is no hot loop).
            because = self._work_failed(
                "the work done once", group, "after the next renewal", warn=False
            )
            self._lose(because)
            if leadership.held:  # not already stopping (a renewal failed meanwhile)
                self._stopping()
            if trio.current_time() - started >= self._duration.total_seconds():
                self._failures_in_a_row = 0  # it had worked for a while: a new failure
            self._failures_in_a_row += 1
            if self._failures_in_a_row >= HAND_OVER_AFTER:
                await self._hand_over()
        finally:
            leadership.held = False

    async def _hand_over(self) -> None:
        """The work failed :data:`HAND_OVER_AFTER` times in a row: give the lease up and stay
        away from it for one lease duration (another replica takes it; alone, this one takes
        it back then and tries again)."""
        self._failures_in_a_row = 0
        self._abstain_until = trio.current_time() + self._duration.total_seconds()
        logger.error(
            "replica %s hands the lease over: the work done once failed %d times in a row; it "
            "will not try to take it for %.3g s",
            self.replica_id,
            HAND_OVER_AFTER,
            self._duration.total_seconds(),
        )
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + RELEASE_TIMEOUT
            await self._release()

    def _work_failed(
        self, what: str, group: BaseExceptionGroup[Exception], again: str, *, warn: bool
    ) -> str:
        """Log (and count) ``what`` failing with ``group`` (it starts ``again``); why it
        stopped.

        An unreachable database is expected: a warning if ``warn`` (else the caller's warning
        says it). Anything else is a surprise, a bug or a database failing in a way nobody
        foresaw: an error with its traceback.
        """
        errors = _leaves(group)
        if all(isinstance(error, DatabaseUnavailable) for error in errors):
            because = f"{what} met an unreachable database ({errors[0]})"
            if warn:
                logger.warning("replica %s: %s; again %s", self.replica_id, because, again)
            return because
        self.leadership.work_failures += 1
        logger.error(
            "replica %s: %s failed (%s); the API goes on serving, and it starts again %s",
            self.replica_id,
            what,
            "; ".join(map(repr, errors)),
            again,
            exc_info=group,
        )
        return f"{what} failed ({errors[0]!r})"

    def _stopping(self) -> None:
        self.leadership.held = False
        logger.warning(
            "replica %s stops the work done once: %s; it keeps trying to take the lease",
            self.replica_id,
            self._lost_because,
        )

    async def _stand_by(self, standby: Standby) -> None:
        """Run ``standby`` until cancelled, again after a pause of one try interval when it
        fails (with any error: as the work done once, it must not take the API down)."""
        while True:
            try:
                await standby()
            except* Exception as group:
                self._work_failed("the standby work", group, f"in {self.interval:.3g} s", warn=True)
            await trio.sleep(self.interval)


def _leaves(group: BaseExceptionGroup[Exception]) -> list[Exception]:
    """The exceptions of ``group`` and of the groups nested in it (nurseries nest them)."""
    leaves: list[Exception] = []
    for error in group.exceptions:
        if isinstance(error, BaseExceptionGroup):
            leaves.extend(_leaves(error))
        else:
            leaves.append(error)
    return leaves
