"""Serving the app: cheroot's threaded WSGI server, in a thread of its own."""

from __future__ import annotations

import re
import threading
from typing import Any

import structlog
from cheroot import wsgi

log = structlog.get_logger(__name__)


class ServerError(OSError):
    """The server cannot listen where it was told to; the message says where and why."""


class Server:
    """One listening server: `start` returns once it listens; `stop` ends it.

    ``port`` 0 takes a free port; `port` says which once started.
    """

    def __init__(self, app: Any, address: str, port: int, *, threads: int = 8) -> None:
        self.address = address
        self._requested_port = port
        self._server = wsgi.Server(
            (address, port), app, numthreads=threads, server_name="halo-integrator"
        )
        # Stop within a fraction of a second rather than the default half second per poll.
        self._server.expiration_interval = 0.05
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.bind_addr[1]

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"

    def start(self) -> Server:
        try:
            self._server.prepare()
        except OSError as exc:
            raise ServerError(
                f"cannot listen on {self.address}:{self._requested_port}: {_reason(exc)}; stop "
                "what uses that port, or set [server] address and port to another"
            ) from None
        self._thread = threading.Thread(target=self._server.serve, name="http-server", daemon=True)
        self._thread.start()
        log.info("web.listening", address=self.address, port=self.port)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        self._server.stop()
        self._thread.join(timeout=timeout)
        self._thread = None
        log.info("web.stopped", address=self.address, port=self.port)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _reason(exc: OSError) -> str:
    # cheroot says "No socket could be created -- ((addr, port): [Errno 98] Address ...)".
    found = re.search(r"\[Errno \d+\] ([^)]+)", str(exc))
    return found.group(1).lower() if found else (exc.strerror or str(exc))


def serve(app: Any, address: str, port: int, *, threads: int = 8) -> Server:
    """A `Server` of ``app`` on ``address:port``, not yet started (call `Server.start`)."""
    return Server(app, address, port, threads=threads)
