"""TLS for the server: the files its HTTPS listener serves, and how it verifies agents.

Every file is read here, once, when the configuration is checked, so that a missing or
unreadable certificate is one clear error at start-up instead of a failure on the first
connection.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from .errors import ServerError


class TlsConfigError(ServerError, ValueError):
    """A TLS file is missing, unreadable or not what its option says; ``path`` names it."""

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def check_pair(cert: Path | None, key: Path | None, *, what: str) -> None:
    """Refuse a certificate without its key (or the reverse), and a pair that does not load."""
    if (cert is None) != (key is None):
        raise TlsConfigError(f"{what}: give both the certificate and the key, or neither")
    if cert is not None and key is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        _load_chain(context, cert, key)


def _load_chain(context: ssl.SSLContext, cert: Path, key: Path) -> None:
    for path in (cert, key):
        _readable(path)
    try:
        context.load_cert_chain(certfile=cert, keyfile=key)
    except (OSError, ssl.SSLError) as error:
        raise TlsConfigError(
            f"cannot use certificate {cert} with key {key}: {_describe(error)}", path=cert
        ) from None


def _readable(path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as error:
        raise TlsConfigError(f"cannot read {path}: {_describe(error)}", path=path) from None


def check_ca(path: Path | None) -> None:
    """Refuse a CA file that is missing or holds no certificate."""
    if path is not None:
        client_ssl_context(path)


def client_ssl_context(
    ca_cert: Path | None, cert: Path | None = None, key: Path | None = None
) -> ssl.SSLContext | bool:
    """What httpx's ``verify=`` gets for calls to agents: ``True`` (the default trust store)
    unless a CA (and, for mutual TLS, a certificate of our own) is given."""
    if ca_cert is None and cert is None:
        return True
    if ca_cert is not None:
        _readable(ca_cert)
    try:
        # With a CA given, only that CA is trusted: not the system's as well.
        context = ssl.create_default_context(cafile=ca_cert)
    except (OSError, ssl.SSLError) as error:
        raise TlsConfigError(
            f"cannot use CA certificate {ca_cert}: {_describe(error)}", path=ca_cert
        ) from None
    if cert is not None and key is not None:
        _load_chain(context, cert, key)
    return context
