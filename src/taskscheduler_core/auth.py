"""Bearer tokens, pure: reading the ``Authorization`` header, comparing tokens in constant time,
digests for storage, the token file's format, and the loopback rule of safe defaults.

Who may call what is decided by the server and the agent (docs/security.md); this module only
holds the pieces that need no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

import attrs

from .api_errors import ApiError
from .errors import TaskSchedulerError

#: Sent with every 401, as RFC 6750 asks.
AUTHENTICATE_HEADERS = {"WWW-Authenticate": 'Bearer realm="taskscheduler"'}

#: The names a token file may set, one ``name = token`` a line.
TOKEN_FILE_NAMES = frozenset({"admin", "read", "join"})


class TokenFileError(TaskSchedulerError, ValueError):
    """A token file that does not follow the format; ``line`` is its 1-based line number."""

    def __init__(self, message: str, *, line: int) -> None:
        super().__init__(f"line {line}: {message}")
        self.message = message
        self.line = line


def unauthorized(
    message: str = "a valid bearer token is required (Authorization: Bearer TOKEN; tsched --token)",
) -> ApiError:
    """401 ``unauthorized``: no token, or one that is not known."""
    return ApiError(401, "unauthorized", message, field="authorization")


def forbidden(message: str) -> ApiError:
    """403 ``forbidden``: a known token that may not do this."""
    return ApiError(403, "forbidden", message, field="authorization")


def bearer_token(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or ``None`` without one."""
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


def same_token(given: str | None, expected: str | None) -> bool:
    """Whether ``given`` is ``expected``, in time independent of where they differ.

    ``None`` on either side never matches: an unset token is not the empty token.
    """
    if given is None or expected is None:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8"))


def token_digest(token: str) -> str:
    """The SHA-256 of ``token`` (hex): what is stored of a credential that is never sent back."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@attrs.frozen(kw_only=True)
class TokenFile:
    """The tokens of a token file; each may be missing."""

    admin: str | None = attrs.field(default=None, repr=False)
    read: str | None = attrs.field(default=None, repr=False)
    join: str | None = attrs.field(default=None, repr=False)


def parse_token_file(text: str) -> TokenFile:
    """Read ``name = token`` lines (``admin``, ``read``, ``join``); blank lines and lines
    starting with ``#`` are ignored. A token is everything after the ``=``, stripped."""
    tokens: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        name, equals, token = stripped.partition("=")
        name, token = name.strip(), token.strip()
        if not equals or name not in TOKEN_FILE_NAMES:
            raise TokenFileError(
                "expected 'admin = TOKEN', 'read = TOKEN' or 'join = TOKEN'", line=number
            )
        if not token:
            raise TokenFileError(f"the {name} token is empty", line=number)
        if name in tokens:
            raise TokenFileError(f"the {name} token is set twice", line=number)
        tokens[name] = token
    return TokenFile(**tokens)


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` is reachable from this machine only."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve to anything
