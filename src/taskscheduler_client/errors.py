"""The client's exception tree.

::

    TaskSchedulerError (core)
    └── ClientError                          anything the client raises
        ├── ApiError                         the server answered with an error status
        │   ├── InvalidRequest (ValueError)  400 / 413 / 422: the request was refused
        │   ├── Unauthorized (PermissionError)  401: no token, or a wrong one
        │   ├── Forbidden (PermissionError)  403: the token may not do this
        │   ├── TaskNotFound (LookupError)   404: no such task (or it was purged)
        │   ├── AgentNotFound (LookupError)  404: no such agent
        │   ├── TaskDeleted                  409: the task is deleted; it cannot change or run
        │   ├── ServerError                  5xx: a bug or an outage on the server
        │   └── UnexpectedResponse           2xx, but not the body the API promises
        ├── TransportError                   no answer came back
        │   ├── ConnectionFailed (ConnectionError)   nothing listens at the URL
        │   │   └── CertificateVerifyFailed          HTTPS, but its certificate is untrusted
        │   └── RequestTimeout (TimeoutError)        the server did not answer in time
        ├── OutputTimeout (TimeoutError)     wait_for_output gave up waiting for a run
        └── TlsConfigError (ValueError)      ca_cert / client_cert missing or unusable

Each leaf also subclasses the builtin it resembles, so callers that only know Python can catch
``ValueError`` or ``TimeoutError``. httpx's own errors never escape: :func:`translate_httpx_errors`
turns them into this tree, and it is the only place that does.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import httpx

from taskscheduler_core import LatestOutput, TaskSchedulerError


class ClientError(TaskSchedulerError):
    """Base class of every error raised by the taskscheduler client."""


class ApiError(ClientError):
    """The server answered with an error status; the body's ``code``, ``message`` and ``field``."""

    def __init__(self, status: int, code: str, message: str, field: str | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field


class InvalidRequest(ApiError, ValueError):
    """The server refused the request as malformed or invalid (400, 413, 422)."""


class Unauthorized(ApiError, PermissionError):
    """The server wants a valid token (401): give ``token=`` (``--token``, ``TSCHED_TOKEN``)."""


class Forbidden(ApiError, PermissionError):
    """The token is valid but may not do this (403): a read-only token creating a task."""


class TaskNotFound(ApiError, LookupError):
    """The server knows no such task (404)."""


class AgentNotFound(ApiError, LookupError):
    """The server knows no such agent (404 ``agent_not_found``)."""


class TaskDeleted(ApiError):
    """The task is deleted (409 ``task_deleted``): it can be read, but not edited, paused,
    resumed or run. Its history stays readable until pruned or purged."""


class ServerError(ApiError):
    """The server failed (5xx): a bug or an outage, not something the request can fix."""


class UnexpectedResponse(ApiError):
    """The server said yes but sent a body the API does not describe (wrong service at the URL?)."""


class TransportError(ClientError):
    """No answer came back from ``url``."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.message = message
        self.url = url


class ConnectionFailed(TransportError, ConnectionError):
    """Could not connect: nothing listens at the URL, or the name does not resolve."""


class CertificateVerifyFailed(ConnectionFailed):
    """The server's HTTPS certificate is not signed by a CA the client trusts (``ca_cert``)."""


class TlsConfigError(ClientError, ValueError):
    """A TLS file given to the client (``ca_cert``, ``client_cert``, ``client_key``) is
    missing, unreadable or unusable; ``path`` names it."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class RequestTimeout(TransportError, TimeoutError):
    """The server did not answer within the client's timeout."""


class OutputTimeout(ClientError, TimeoutError):
    """``wait_for_output`` saw no (new enough) complete run within its timeout.

    ``last`` is the last answer seen, so a caller can still tell "no run yet" from "only old runs".
    """

    def __init__(
        self,
        *,
        task_id: str,
        timeout: float,
        after: datetime | None,
        last: LatestOutput | None,
    ) -> None:
        newer = f" completed after {after.isoformat()}" if after is not None else ""
        super().__init__(f"no complete run of task {task_id}{newer} within {timeout:g} seconds")
        self.task_id = task_id
        self.timeout = timeout
        self.after = after
        self.last = last


@contextmanager
def translate_httpx_errors(url: str) -> Iterator[None]:
    """Turn httpx's exceptions raised inside the block into :class:`TransportError` and kin."""
    try:
        yield
    except httpx.ConnectError as error:
        if _certificate_not_verified(error):
            raise CertificateVerifyFailed(
                f"cannot connect to {url}: its TLS certificate is not trusted "
                f"({_ssl_reason(error)}); give the CA that signed it (--ca-cert, ca_cert=)",
                url=url,
            ) from error
        raise ConnectionFailed(f"cannot connect to {url}: {error}", url=url) from error
    except httpx.TimeoutException as error:
        detail = str(error) or type(error).__name__
        raise RequestTimeout(f"no answer from {url} in time: {detail}", url=url) from error
    except httpx.UnsupportedProtocol as error:
        raise TransportError(
            f"cannot reach {url}: the URL must start with http:// or https://", url=url
        ) from error
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        detail = str(error) or type(error).__name__
        if url.startswith("https://") and isinstance(
            error, httpx.ReadError | httpx.RemoteProtocolError
        ):
            # What a mutual-TLS server does to a client without a certificate, after the
            # handshake (TLS 1.3): it closes the connection without a word.
            detail += (
                "; if the server requires a client certificate, give one "
                "(--tls-client-cert/--tls-client-key, client_cert=)"
            )
        raise TransportError(f"request to {url} failed: {detail}", url=url) from error


def _certificate_not_verified(error: BaseException) -> bool:
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return True
        cause = cause.__cause__ or cause.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(error)


def _ssl_reason(error: BaseException) -> str:
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError) and cause.verify_message:
            return str(cause.verify_message)
        cause = cause.__cause__ or cause.__context__
    return "certificate verify failed"
