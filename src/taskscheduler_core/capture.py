"""Capturing a process's output stream with a size cap that keeps the tail.

The end of a command's output is what says how it ended, so when a stream outgrows its cap the
oldest bytes are dropped and counted. Pure: the agent feeds it the bytes it reads.
"""

from __future__ import annotations

#: Per-stream cap used when a task does not say otherwise.
DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024


class OutputCapture:
    """Keeps the last ``limit`` bytes fed to it and counts the bytes dropped before them."""

    def __init__(self, limit: int = DEFAULT_MAX_OUTPUT_BYTES) -> None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self.limit = limit
        self.dropped = 0
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        excess = len(self._buffer) - self.limit
        if excess > 0:
            del self._buffer[:excess]
            self.dropped += excess

    @property
    def data(self) -> bytes:
        return bytes(self._buffer)

    def text(self) -> str:
        """The kept bytes as UTF-8; invalid sequences (or one cut by the cap) become U+FFFD."""
        return self._buffer.decode("utf-8", errors="replace")


def keep_tail(text: str, limit: int) -> tuple[str, int]:
    """``text`` cut to its last ``limit`` UTF-8 bytes, and how many bytes were dropped.

    The cut never splits a character: a character the cut would split is dropped whole (and
    counted). The server uses it to re-check the streams an agent reports.
    """
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    data = text.encode("utf-8", errors="surrogatepass")
    if len(data) <= limit:
        return text, 0
    start = len(data) - limit
    while start < len(data) and (data[start] & 0xC0) == 0x80:  # a continuation byte
        start += 1
    return data[start:].decode("utf-8", errors="surrogatepass"), start
