"""taskscheduler's server: the REST API, the SQLite store, delivery and reconciliation of
tasks to agents, and the liveness of agents.

``await nursery.start(serve, ServerConfig(database=path, port=0))`` runs it and returns its URL;
:func:`create_app` gives the ASGI application alone, over an :class:`AsyncStore`.
"""

from __future__ import annotations

from .app import create_app
from .config import ServerConfig, parse_available_servers
from .dispatch import Backoff, Dispatcher
from .errors import ApiError, DatabaseUnavailable, ServerError, TaskNotFound
from .lease import Leadership, LeaseKeeper
from .liveness import watch_liveness
from .metrics import ServerMetrics
from .outputs import latest_output_of
from .reconcile import Reconciler, Reconciliation
from .records import Assignment
from .serve import serve
from .store import AsyncStore, Store, StoreSlot

__all__ = [
    "ApiError",
    "Assignment",
    "AsyncStore",
    "Backoff",
    "DatabaseUnavailable",
    "Dispatcher",
    "Leadership",
    "LeaseKeeper",
    "Reconciler",
    "Reconciliation",
    "ServerConfig",
    "ServerError",
    "ServerMetrics",
    "Store",
    "StoreSlot",
    "TaskNotFound",
    "create_app",
    "latest_output_of",
    "parse_available_servers",
    "serve",
    "watch_liveness",
]
