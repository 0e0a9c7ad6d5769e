"""A loopback HTTP proxy that loses answers: "the connection dropped after the server committed".

``AnswerDroppingProxy(target_url, path, drop=1)`` listens on ``127.0.0.1`` (``.url``) and forwards
every request to ``target_url``. For the first ``drop`` requests to ``path`` it forwards the
request, waits for the real server's answer (so whatever the server does, it has done and
committed), and then closes the client's connection without a byte of it: the client sees the
server hang up, as when a connection drops, a load balancer times out, or the caller is killed
between the server's commit and the answer.

It runs in its own threads (``http.server``), so it serves sync tests and trio tests alike. Use
it as a context manager; ``dropped`` is the answers lost so far (each a ``(status, body)``).
"""

from __future__ import annotations

import http.server
import threading
from types import TracebackType

import httpx

__all__ = ["AnswerDroppingProxy"]

#: Request headers passed on; the rest (``Host``, ``Connection``, …) are the proxy's own.
_FORWARDED = ("authorization", "content-type")


class AnswerDroppingProxy:
    """Forward to ``target_url``; lose the answers of the first ``drop`` requests to ``path``."""

    def __init__(self, target_url: str, path: str, *, drop: int = 1) -> None:
        self.target_url = target_url.rstrip("/")
        self.path = path
        self.to_drop = drop
        self.dropped: list[tuple[int, bytes]] = []
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=10.0)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                proxy._forward(self)

            def do_POST(self) -> None:
                proxy._forward(self)

            def do_DELETE(self) -> None:
                proxy._forward(self)

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: the test reports what matters

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> AnswerDroppingProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._http.close()

    def _forward(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("content-length") or 0)
        body = handler.rfile.read(length) if length else b""
        headers = {name: value for name in _FORWARDED if (value := handler.headers.get(name))}
        response = self._http.request(
            handler.command, self.target_url + handler.path, content=body, headers=headers
        )
        with self._lock:
            drop = handler.path == self.path and len(self.dropped) < self.to_drop
            if drop:
                self.dropped.append((response.status_code, response.content))
        if drop:
            # The server has answered (and so committed); the caller never hears it.
            handler.close_connection = True
            return
        handler.send_response(response.status_code)
        handler.send_header("Content-Type", response.headers.get("content-type", "text/plain"))
        handler.send_header("Content-Length", str(len(response.content)))
        handler.end_headers()
        handler.wfile.write(response.content)
