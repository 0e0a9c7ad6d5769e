"""The TLS settings of the clients: which CA to trust and which certificate to present.

Files are read when the client is built, so that a missing CA certificate is an error at once
rather than on the first request.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from .errors import TlsConfigError

PathLike = str | Path


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _readable(path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as error:
        raise TlsConfigError(f"cannot read {path}: {_describe(error)}", path=str(path)) from None


def ssl_context(
    ca_cert: PathLike | None = None,
    client_cert: PathLike | None = None,
    client_key: PathLike | None = None,
) -> ssl.SSLContext | bool:
    """httpx's ``verify=``: ``True`` (its default trust store) when nothing is given; else a
    context trusting only ``ca_cert`` (if given) and presenting ``client_cert`` (mutual TLS)."""
    if ca_cert is None and client_cert is None:
        if client_key is not None:
            raise TlsConfigError("client_key needs client_cert")
        return True
    ca = None if ca_cert is None else Path(ca_cert)
    if ca is not None:
        _readable(ca)
    try:
        context = ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as error:
        raise TlsConfigError(
            f"cannot use CA certificate {ca}: {_describe(error)}", path=str(ca)
        ) from None
    if client_cert is not None:
        cert = Path(client_cert)
        # The key may be in the certificate's file.
        key = None if client_key is None else Path(client_key)
        for path in (cert, key):
            if path is not None:
                _readable(path)
        try:
            context.load_cert_chain(certfile=cert, keyfile=key)
        except (OSError, ssl.SSLError) as error:
            raise TlsConfigError(
                f"cannot use client certificate {cert}: {_describe(error)}", path=str(cert)
            ) from None
    return context
