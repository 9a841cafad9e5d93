"""Serving an ASGI app from a background thread: for notebooks, scripts and tests that talk to the
service over real HTTP in the same process (`r3mem serve` is the way to run it for others)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["serve_in_thread"]


@contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 30.0) -> Iterator[str]:
    """Serve `app` with uvicorn in a daemon thread (port 0: a free one); yields the base URL and
    shuts the server down on exit.

        with serve_in_thread(create_app(engine, store)) as url:
            Client(url, token).sessions()
    """
    import uvicorn

    from r3mem.service.protocol import uvicorn_options

    sock = socket.socket()
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", **uvicorn_options()))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.02)
    try:
        if not server.started:
            raise RuntimeError(f"the server did not start on {host}:{sock.getsockname()[1]} within {timeout_s:g} s")
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)
        sock.close()
