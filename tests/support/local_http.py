"""The lifecycle every HTTP stand-in of the tests shares: a ThreadingHTTPServer on 127.0.0.1 (a
free port) served by a thread, `start()`/`stop()` or a `with` block, `url` while running.

A stand-in subclasses `LocalHttpServer`, names its request handler (`handler`) and reaches its
own state from the handler as `self.server.app`. `stop()` waits for every request thread
(`block_on_close`), so nothing lingers after a test.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Self


class AppServer(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins every request thread
    block_on_close = True
    app: Any


class LocalHttpServer:
    """Base of the stand-ins: set `handler` (and `thread_name`) in the subclass."""

    handler: ClassVar[type[BaseHTTPRequestHandler]]
    thread_name: ClassVar[str] = "local-http"
    _server: AppServer | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """`http://127.0.0.1:PORT` while running."""
        assert self._server is not None, "start the server first"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> Self:
        server = AppServer(("127.0.0.1", 0), self.handler)
        server.app = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=self.thread_name, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and wait for every request in flight; idempotent."""
        self._before_stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._after_stop()

    def _before_stop(self) -> None:
        """Release requests the stand-in holds on purpose, so stopping does not wait for them."""

    def _after_stop(self) -> None:
        """Let go of what the stand-in keeps besides its server."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
