"""How the REST APIs refuse a request, decided without any HTTP library.

The server and the agent answer every refusal as ``{"error": {"code", "message", "field"}}``
with a 4xx status (docs/api.md lists the codes). What that takes apart from I/O is here, once
for both:

- :class:`BodyReader` collects a request body chunk by chunk and refuses it (413) as soon as it
  is over the limit: the adapter reads the chunks from its framework and feeds them in;
- :func:`decode_json_object` and :func:`decode_body` turn the bytes into a JSON object or a
  wire type, or into an :class:`ApiError` that says what is wrong;
- :func:`http_error` words the router's own refusals (no such route, wrong method) the same way.
"""

from __future__ import annotations

import json
import re
from typing import Any, TypeVar

from .errors import TaskSchedulerError, WireError
from .wire import json_type, structure

T = TypeVar("T")

#: The codes of the statuses a router refuses with on its own; any other is ``http_<status>``.
_HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
}


class ApiError(TaskSchedulerError):
    """A request refused with a 4xx status, a stable ``code`` and, where known, the ``field``.

    The server and the agent each subclass it into their own exception tree for the refusals
    they raise themselves; their handlers answer every ``ApiError`` with :meth:`body`.
    """

    def __init__(self, status: int, code: str, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def body(self) -> dict[str, Any]:
        """The JSON answer: ``{"error": {"code": ..., "message": ..., "field": ...}}``."""
        return {"error": {"code": self.code, "message": self.message, "field": self.field}}


class BodyReader:
    """A request body collected chunk by chunk, refused as soon as it is over ``limit`` bytes.

    A ``content_length`` (the header, as received) over the limit is refused before any byte is
    read; as the header may be absent (chunked) or wrong, what actually arrives is counted too.
    Both refusals are 413 ``body_too_large``.
    """

    def __init__(self, limit: int, *, content_length: str | None = None) -> None:
        self.limit = limit
        self._body = bytearray()
        declared = content_length or ""
        if declared.isascii() and declared.isdigit() and int(declared) > limit:
            raise self._too_large()

    def feed(self, chunk: bytes) -> None:
        """Add the next chunk of the body."""
        self._body += chunk
        if len(self._body) > self.limit:
            raise self._too_large()

    def decode(self, kind: type[T]) -> T:
        """The whole body as a ``kind``; see :func:`decode_body`."""
        return decode_body(bytes(self._body), kind)

    def _too_large(self) -> ApiError:
        return ApiError(
            413, "body_too_large", f"the request body is larger than {self.limit} bytes"
        )


def client_disconnected() -> ApiError:
    """The refusal of a body whose client went away before sending all of it."""
    return ApiError(400, "client_disconnected", "the client went away mid-body")


def decode_json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` as a JSON object, or an :class:`ApiError` that says why it is not one.

    - 400 ``invalid_json``: empty (or only whitespace), not JSON, not UTF-8, or nested deeper
      than the parser goes;
    - 422 ``invalid_body``: JSON, but not an object;
    - 422 ``invalid_string``: a string or key holds a lone UTF-16 surrogate; ``field`` is the
      dotted path to it (``None`` for a key at the top).
    """
    if not raw.strip():
        raise ApiError(400, "invalid_json", "the request body is empty; send a JSON object")
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as error:  # bad UTF-8 is a ValueError too
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ApiError(
            422, "invalid_body", f"the body must be a JSON object, got {json_type(data)}"
        )
    # json.loads reads UTF-16 and UTF-32 too, where the pre-check's bytes cannot match.
    plain = json.detect_encoding(raw) in ("utf-8", "utf-8-sig")
    where = None if plain and not _MAY_HOLD_SURROGATES.search(raw) else _lone_surrogate_at(data)
    if where is not None:
        raise ApiError(
            422,
            "invalid_string",
            "strings must be valid Unicode (no lone surrogates)",
            field=where or None,
        )
    return data


def decode_body(raw: bytes, kind: type[T]) -> T:
    """``raw`` as a ``kind`` of the wire format.

    Refused as :func:`decode_json_object` refuses, or with 422 ``validation_error`` naming the
    ``field`` at fault.
    """
    data = decode_json_object(raw)
    try:
        return structure(data, kind)
    except WireError as error:
        raise ApiError(422, "validation_error", error.message, field=error.field) from None


def http_error(
    status: int, *, method: str, path: str, allowed: str = "", detail: str | None = None
) -> ApiError:
    """A refusal of the router itself, worded like every other refusal of the API.

    404 is ``not_found`` (no such endpoint), 405 ``method_not_allowed`` (``allowed``: the methods
    the endpoint takes, as its ``Allow`` header lists them), 413 ``body_too_large``; any other
    status is ``http_<status>`` with ``detail`` as the message.
    """
    if status == 404:
        message = f"no such endpoint: {path}"
    elif status == 405:
        message = f"{method} is not allowed on {path} (allowed: {allowed})"
    else:
        message = detail or f"HTTP {status}"
    return ApiError(status, _HTTP_CODES.get(status, f"http_{status}"), message)


#: What a body must contain for a parsed string to hold a surrogate: a ``\uD800``–``\uDFFF``
#: escape, or one encoded as raw bytes (``json.loads`` lets those through). Most bodies have
#: neither, and skip the walk over every string (a third of the cost of a batch of reports).
#: A false alarm (an escaped backslash before ``ud9``) only costs the walk.
_MAY_HOLD_SURROGATES = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def _lone_surrogate_at(data: object) -> str | None:
    """The dotted path of a string holding a lone UTF-16 surrogate, or ``None``.

    Such a string is valid JSON (``"\\ud800"``) but not Unicode: a command holding one could be
    neither run, nor stored, nor sent back. Iterative: a document that parsed may still nest
    deeper than Python's recursion limit allows.
    """
    stack: list[tuple[object, str]] = [(data, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return path
        elif isinstance(value, dict):
            for key, item in value.items():
                stack.append((key, path))
                stack.append((item, f"{path}.{key}" if path else str(key)))
        elif isinstance(value, list):
            stack.extend(
                (item, f"{path}.{index}" if path else str(index))
                for index, item in enumerate(value)
            )
    return None
