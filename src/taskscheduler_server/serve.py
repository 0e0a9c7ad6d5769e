"""Running the server: the store, hypercorn (trio worker), and the lease loop, in one nursery.

The lease loop (lease.py) runs the work done once — the dispatcher (leading), the reconciler, the
liveness watch and the pruning of the history — while this replica holds the lease, and the
dispatcher standing by (manual runs received here) while it does not. A lone server takes the
lease at its first try, before it reports itself started.
"""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import cast

import hypercorn.config
import hypercorn.trio
import trio
from hypercorn.typing import ASGIFramework
from starlette.applications import Starlette

from .app import create_app
from .auth import check_exposure
from .config import ServerConfig
from .dispatch import Dispatcher
from .lease import Leadership, LeaseKeeper
from .liveness import watch_liveness
from .reconcile import Reconciler
from .retention import prune_history
from .store import AsyncStore, Store

logger = logging.getLogger("taskscheduler.server")


def hypercorn_config(config: ServerConfig) -> hypercorn.config.Config:
    """Hypercorn's settings for ``config``: quiet access log, errors through ``logging``."""
    http = hypercorn.config.Config()
    host = f"[{config.host}]" if ":" in config.host else config.host  # IPv6 literal
    http.bind = [f"{host}:{config.port}"]
    # One line per request is noise for a service polled by agents every few seconds; who
    # wants it can give hypercorn a logger of their own.
    http.accesslog = None
    http.errorlog = logging.getLogger("taskscheduler.server.http")
    http.graceful_timeout = config.graceful_timeout.total_seconds()
    if config.tls_cert is not None and config.tls_key is not None:
        # HTTPS: hypercorn then reports its binds as https://…, and so does serve().
        http.certfile = str(config.tls_cert)
        http.keyfile = str(config.tls_key)
        if config.client_ca is not None:
            http.ca_certs = str(config.client_ca)
            http.verify_mode = ssl.CERT_REQUIRED
    return http


async def _run_http(
    app: Starlette,
    http: hypercorn.config.Config,
    shutdown_trigger: Callable[[], Awaitable[None]],
    scope: trio.CancelScope,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    with scope:
        # Starlette's ASGI signature is looser than hypercorn's annotations; they do fit.
        framework = cast(ASGIFramework, app)
        await hypercorn.trio.serve(
            framework, http, shutdown_trigger=shutdown_trigger, task_status=task_status
        )


def _work_done_once(
    store: AsyncStore, dispatcher: Dispatcher, reconciler: Reconciler, config: ServerConfig
) -> Callable[..., Awaitable[None]]:
    """What only the lease holder does, as one task for ``nursery.start``."""

    async def lead(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(dispatcher.run, leading=True))
            await nursery.start(reconciler.run)
            await nursery.start(
                functools.partial(watch_liveness, store, lost_after=config.lost_after)
            )
            await nursery.start(
                functools.partial(
                    prune_history,
                    store,
                    policy=config.retention,
                    interval=config.prune_interval,
                )
            )
            task_status.started()

    return lead


async def serve(
    config: ServerConfig, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the server until cancelled; ``task_status.started`` gets the bound base URL.

    ``await nursery.start(serve, config)`` returns e.g. ``"http://127.0.0.1:54321"`` once the
    server accepts connections (useful with ``port=0``) and has made its first try at the lease
    (with the work done once started, if it took it). On cancellation it stops accepting, gives
    open requests ``graceful_timeout`` to finish, stops the background tasks (dispatch,
    reconciliation, liveness, pruning), releases the lease and closes the database.
    """
    check_exposure(
        config.host,
        admin_token=config.admin_token,
        join_token=config.join_token,
        insecure=config.insecure,
    )
    if not isinstance(config.database, str):  # a SQLite file (a PostgreSQL URL is a str)
        config.database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = AsyncStore(await trio.to_thread.run_sync(Store, config.database))
    started = False  # a server that never started (its port taken, say) never says it stopped
    try:
        dispatcher = Dispatcher.from_config(store, config)
        reconciler = Reconciler.from_config(store, dispatcher, config)
        # An agent that registered through another replica while the holder's lane to it
        # backed off is found by the holder's dispatcher, which hands it to the reconciler.
        dispatcher.on_reachable_again = reconciler.notify
        leadership = Leadership(replica_id=config.replica_id)
        lease = LeaseKeeper(store, leadership, duration=config.lease_duration)
        app = create_app(
            store,
            dispatcher=dispatcher,
            reconciler=reconciler,
            config=config,
            leadership=leadership,
        )
        shutdown = trio.Event()
        # Hypercorn runs shielded: a cancellation of serve() becomes its graceful shutdown
        # (stop accepting, finish open requests) instead of cutting requests off mid-answer,
        # which could leave an agent unsure whether its report was stored.
        http_scope = trio.CancelScope(shield=True)
        async with trio.open_nursery() as nursery:
            try:
                binds = await nursery.start(
                    _run_http, app, hypercorn_config(config), shutdown.wait, http_scope
                )
                await nursery.start(
                    lease.run,
                    _work_done_once(store, dispatcher, reconciler, config),
                    functools.partial(dispatcher.run, leading=False),
                )
                base_url = binds[0]
                logger.info(
                    "taskscheduler server listening on %s (replica %s, %s the lease)",
                    base_url,
                    config.replica_id,
                    "holding" if leadership.held else "not holding",
                )
                task_status.started(base_url)
                started = True
                await trio.sleep_forever()
            finally:
                shutdown.set()
                # Backstop: hypercorn enforces graceful_timeout itself; this bounds the rest.
                http_scope.deadline = (
                    trio.current_time() + config.graceful_timeout.total_seconds() + 1
                )
    finally:
        with trio.CancelScope(shield=True):
            await store.aclose()
        if started:
            logger.info("taskscheduler server stopped")
