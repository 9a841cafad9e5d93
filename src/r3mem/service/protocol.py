"""The HTTP/1.1 protocol the service runs on: uvicorn's h11 protocol, answering a request h11 refuses with
the status h11 names for it (431 Request Header Fields Too Large for headers larger than h11 buffers, e.g.
a 1 MB Authorization header) instead of uvicorn's blanket 400, and a one-line JSON error like every other.

    uvicorn.run(app, **uvicorn_options())    # what `r3mem serve` and `serve_in_thread` do
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import STATUS_PHRASES, H11Protocol

__all__ = ["HintedH11Protocol", "uvicorn_options"]

DRAIN_S = 2.0  # after an error answer, read and drop the client's remaining bytes this long, then close
_MESSAGES = {431: ("headers_too_large", "request headers are too large for this server")}


class HintedH11Protocol(H11Protocol):
    """`H11Protocol` whose protocol-error answer uses h11's `error_status_hint` (431, 400, ...)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._hint, self._draining = 400, False
        parse = self.conn.next_event

        def next_event():  # the connection object lives as long as the protocol (start_next_cycle reuses it)
            try:
                return parse()
            except h11.RemoteProtocolError as exc:
                self._hint = exc.error_status_hint
                raise

        self.conn.next_event = next_event  # type: ignore[method-assign]

    def send_400_response(self, msg: str) -> None:
        status = self._hint if 400 <= self._hint < 500 else 400
        kind, message = _MESSAGES.get(status, ("bad_request", f"malformed HTTP request: {msg}"))
        body = json.dumps({"error": kind, "message": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
        for event in (h11.Response(status_code=status, headers=headers, reason=STATUS_PHRASES[status]),
                      h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        # Closing now, with the rest of a 1 MB header unread, makes the kernel reset the connection and the
        # client may never read the answer: send FIN, drop what still arrives, close a little later.
        self._draining = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        asyncio.get_running_loop().call_later(DRAIN_S, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if not self._draining:
            super().data_received(data)


def uvicorn_options() -> dict[str, Any]:
    """Options for `uvicorn.run` / `uvicorn.Config` that every way of serving the app shares."""
    return {"http": HintedH11Protocol}
