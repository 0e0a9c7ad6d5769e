"""Running the server: the store, hypercorn (trio worker), the dispatcher, the reconciler, the
liveness watch and the pruning of the history, in one nursery."""

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


async def serve(
    config: ServerConfig, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the server until cancelled; ``task_status.started`` gets the bound base URL.

    ``await nursery.start(serve, config)`` returns e.g. ``"http://127.0.0.1:54321"`` once the
    server accepts connections (useful with ``port=0``). On cancellation it stops accepting,
    gives open requests ``graceful_timeout`` to finish, stops the background tasks (dispatch,
    reconciliation, liveness, pruning) and closes the database.
    """
    check_exposure(
        config.host,
        admin_token=config.admin_token,
        join_token=config.join_token,
        insecure=config.insecure,
    )
    config.database.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = AsyncStore(await trio.to_thread.run_sync(Store, config.database))
    try:
        dispatcher = Dispatcher.from_config(store, config)
        reconciler = Reconciler.from_config(store, dispatcher, config)
        app = create_app(store, dispatcher=dispatcher, reconciler=reconciler, config=config)
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
                await nursery.start(dispatcher.run)
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
                base_url = binds[0]
                logger.info("taskscheduler server listening on %s", base_url)
                task_status.started(base_url)
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
        logger.info("taskscheduler server stopped")
