"""A loopback TCP proxy that a test can cut and restore: "the database is unreachable for a while".

``TcpProxy(target_host, target_port)`` listens on ``127.0.0.1`` (port picked by the kernel,
``.url_port``) and forwards every connection to the target. It runs in its own threads, so it
serves plain (sync) tests and trio tests alike: ``cut()`` and ``restore()`` return within
milliseconds and never block a trio loop for long.

- ``cut()`` closes every forwarded connection (both ends see the other hang up) and refuses new
  ones (the listener is closed, so a connect gets "connection refused").
- ``cut(hold=True)`` closes every forwarded connection too, but keeps accepting: new connections
  are parked, unanswered (a client waits as on a partitioned network) until ``restore()``
  forwards them, or ``close()`` drops them.
- ``restore()`` listens on the same port again and forwards as before.

Use it as a context manager: ``with TcpProxy("127.0.0.1", 5432) as proxy: ...``; leaving the block
closes everything. ``connections`` is the number of connections forwarded right now.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from types import TracebackType

__all__ = ["TcpProxy"]

_CHUNK = 65536


class _Link:
    """One forwarded connection: the client's socket, the target's, a pump thread each way.

    Whoever stops it first (either pump at end of stream, or ``kill`` from a cut) shuts both
    sockets down, which wakes the other pump; the last pump to finish closes the sockets, so no
    socket is closed while another thread may still be inside a call on it.
    """

    def __init__(self, client: socket.socket, upstream: socket.socket, proxy: TcpProxy) -> None:
        self.client = client
        self.upstream = upstream
        self._proxy = proxy
        self._lock = threading.Lock()
        self._running = 2

    def start(self) -> None:
        for source, sink in ((self.client, self.upstream), (self.upstream, self.client)):
            threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def kill(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):  # already shut down, or never connected
                sock.shutdown(socket.SHUT_RDWR)

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(_CHUNK):
                sink.sendall(data)
        except OSError:
            pass  # the other side is gone, or a cut shut the sockets down
        finally:
            self.kill()
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last:
                self.client.close()
                self.upstream.close()
                self._proxy._forget(self)


class TcpProxy:
    """Forward ``127.0.0.1:<url_port>`` to ``target_host:target_port``, until cut."""

    def __init__(self, target_host: str, target_port: int, *, host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.host = host
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._links: set[_Link] = set()
        self._held: list[socket.socket] = []
        self._mode = "open"  # "open" | "refuse" | "hold" | "closed"
        self._requested = 0  # generation of the mode asked for
        self._applied = 0  # generation the acceptor thread has put in place
        self._wake_read, self._wake_write = socket.socketpair()
        listener = self._listen(0)
        self.url_port: int = listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, args=(listener,), daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.url_port

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._links)

    def cut(self, *, hold: bool = False) -> None:
        """Close every forwarded connection; refuse new ones (or park them, with ``hold``)."""
        self._set_mode("hold" if hold else "refuse")
        with self._lock:
            links = list(self._links)
        for link in links:
            link.kill()

    def restore(self) -> None:
        """Accept and forward again (parked connections are forwarded now)."""
        self._set_mode("open")
        with self._lock:
            held, self._held = self._held, []
        for client in held:
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def close(self) -> None:
        """Stop listening and close every connection; the proxy cannot be used again."""
        if self._mode == "closed":
            return
        self._set_mode("closed")
        self._thread.join(timeout=5)
        with self._lock:
            links = list(self._links)
            held, self._held = self._held, []
        for link in links:
            link.kill()
        for client in held:
            client.close()
        self._wake_read.close()
        self._wake_write.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _set_mode(self, mode: str) -> None:
        """Ask the acceptor thread for ``mode``; return once it is in place (listener open or
        closed), so that a connect right after ``cut()`` is refused and one after ``restore()``
        is accepted."""
        with self._changed:
            if self._mode == "closed":
                raise RuntimeError("the proxy is closed")
            self._mode = mode
            self._requested += 1
            wanted = self._requested
        self._wake_write.send(b"x")
        with self._changed:
            if not self._changed.wait_for(lambda: self._applied >= wanted, timeout=5):
                raise RuntimeError("the proxy's acceptor thread did not answer")

    def _listen(self, port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, port))
        listener.listen(64)
        listener.setblocking(False)
        return listener

    def _accept_loop(self, listener: socket.socket | None) -> None:
        """The only thread that touches the listener: opens and closes it as the mode says."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_read, selectors.EVENT_READ)
            if listener is not None:
                selector.register(listener, selectors.EVENT_READ)
            while True:
                with self._lock:
                    mode, generation = self._mode, self._requested
                if mode in ("refuse", "closed") and listener is not None:
                    selector.unregister(listener)
                    listener.close()
                    listener = None
                elif mode in ("open", "hold") and listener is None:
                    listener = self._listen(self.url_port)
                    selector.register(listener, selectors.EVENT_READ)
                with self._changed:
                    self._applied = generation
                    self._changed.notify_all()
                if mode == "closed":
                    return
                for key, _ in selector.select():
                    if key.fileobj is self._wake_read:
                        self._wake_read.recv(1024)
                    elif listener is not None:
                        self._accept(listener)

    def _accept(self, listener: socket.socket) -> None:
        try:
            client, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        client.setblocking(True)
        with self._lock:
            if self._mode == "hold":
                self._held.append(client)
                return
        threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()  # the target is down: the client sees the connection closed
            return
        upstream.settimeout(None)
        link = _Link(client, upstream, self)
        with self._lock:
            if self._mode != "open":  # cut while connecting
                upstream.close()
                client.close()
                return
            self._links.add(link)
        link.start()

    def _forget(self, link: _Link) -> None:
        with self._lock:
            self._links.discard(link)
