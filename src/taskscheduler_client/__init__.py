"""taskscheduler's client side: typed clients of the REST API and the ``tsched`` command line.

:class:`Client` (blocking) and :class:`AsyncClient` (trio or asyncio) return core models and raise
the exceptions of :mod:`taskscheduler_client.errors`. The CLI lives in
:mod:`taskscheduler_client.cli` and is not imported here, so that using the client never loads
click.
"""

from __future__ import annotations

from ._base import DEFAULT_TIMEOUT, DEFAULT_URL
from .client import AsyncClient, Client
from .errors import (
    AgentNotFound,
    ApiError,
    CertificateVerifyFailed,
    ClientError,
    ConnectionFailed,
    Forbidden,
    InvalidRequest,
    OutputTimeout,
    RequestTimeout,
    ServerError,
    TaskDeleted,
    TaskNotFound,
    TlsConfigError,
    TransportError,
    Unauthorized,
    UnexpectedResponse,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "AgentNotFound",
    "ApiError",
    "AsyncClient",
    "CertificateVerifyFailed",
    "Client",
    "ClientError",
    "ConnectionFailed",
    "Forbidden",
    "InvalidRequest",
    "OutputTimeout",
    "RequestTimeout",
    "ServerError",
    "TaskDeleted",
    "TaskNotFound",
    "TlsConfigError",
    "TransportError",
    "Unauthorized",
    "UnexpectedResponse",
]
