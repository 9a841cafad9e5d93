"""Every error the service returns is JSON `{"error": kind, "message": one line}` with a 4xx/5xx status.

Library exceptions map to statuses here (NotFound → 404, Conflict → 409, ValueError → 400, store
failures → 503), request-body problems to 400 (malformed JSON) / 422 (wrong fields) / 413 (too large).
"""

from __future__ import annotations

import json
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from r3mem.store import Conflict, NotFound, StoreError

__all__ = ["ApiError", "LIBRARY_ERRORS", "LIBRARY_ERROR_TYPES", "first_line", "install_error_handlers", "BodyLimit",
           "NoEncodedSlash"]

log = logging.getLogger("r3mem.service")

# Library exceptions and what they mean to a client, most specific first: (type, HTTP status, kind). The
# service answers them with that status; the MCP server turns the same types into tool errors.
LIBRARY_ERRORS: tuple[tuple[type[Exception], int, str], ...] = (
    (NotFound, 404, "not_found"),
    (Conflict, 409, "conflict"),
    (StoreError, 503, "store_unavailable"),
    (ValueError, 400, "invalid_request"),  # also MemoryFileError, ConfigError
    (IndexError, 400, "invalid_request"),  # a slot or turn index that does not exist
)
LIBRARY_ERROR_TYPES = tuple(t for t, _, _ in LIBRARY_ERRORS)


class ApiError(Exception):
    """An error response: HTTP status, machine-readable kind, one-line message."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers


def error_response(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": kind, "message": message}, status_code=status, headers=headers)


def first_line(exc: BaseException) -> str:
    """The exception's message as one line (its type's name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _where(loc: tuple | list) -> str:
    return ".".join(str(p) for p in loc if p != "body") or "body"


def _validation_message(exc: RequestValidationError) -> tuple[int, str, str]:
    errors = exc.errors()
    for e in errors:
        if e.get("type") == "json_invalid":
            reason = (e.get("ctx") or {}).get("error", "")
            return 400, "malformed_json", f"request body is not valid JSON: {reason}".rstrip(": ")
    parts = [f"{_where(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors[:3]]
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return 422, "invalid_request", "; ".join(parts) + more


def _library_handler(status: int, kind: str):
    async def handle(_: Request, exc: Exception) -> JSONResponse:
        if status >= 500:
            log.error("%s: %s", kind, exc)
        return error_response(status, kind, first_line(exc))

    return handle


def install_error_handlers(app: FastAPI) -> None:
    """Register the JSON error mapping on `app`."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.kind, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(*_validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, kind, str(exc.detail), getattr(exc, "headers", None))

    for exc_type, status, kind in LIBRARY_ERRORS:
        app.add_exception_handler(exc_type, _library_handler(status, kind))

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        # The server drops the connection after an unhandled error: say so, or the client's next
        # request on this keep-alive connection fails with "connection reset".
        return error_response(500, "internal_error", "internal server error", {"Connection": "close"})


class BodyLimit:
    """ASGI middleware refusing request bodies over `max_bytes` with 413 (declared or streamed)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await self._reply(send, 400, "invalid_request", "Content-Length header is not a number")
                return
            if int(declared) > self.max_bytes:
                await self._too_large(send)
                return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away; nothing to answer
            body += message.get("body", b"")
            if len(body) > self.max_bytes:
                await self._too_large(send)
                return
            if not message.get("more_body", False):
                break
        problem = _json_body_problem(scope, bytes(body))
        if problem is not None:
            await self._reply(send, 400, "malformed_json", problem)
            return
        await self.app(scope, _replay(bytes(body), receive), send)

    async def _too_large(self, send: Send) -> None:
        await self._reply(send, 413, "payload_too_large", f"request body exceeds the limit of {self.max_bytes} bytes")

    @staticmethod
    async def _reply(send: Send, status: int, kind: str, message: str) -> None:
        payload = json.dumps({"error": kind, "message": message}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})


MAX_JSON_DEPTH = 512
"""Deepest nesting of a JSON request body read at all: below the JSON parser's recursion limit (~1,000),
where the framework would answer only "There was an error parsing the body". Shallower bodies reach the
validators, which say what is too deep (session `meta`: 32 levels)."""


def _json_body_problem(scope: Scope, body: bytes) -> str | None:
    """What makes a JSON body unreadable in a way the framework reports only as "There was an error
    parsing the body": invalid UTF-8 (with its byte offset) or nesting past `MAX_JSON_DEPTH`. None when
    neither (other syntax errors are reported by the framework with their position)."""
    ctype = dict(scope.get("headers") or []).get(b"content-type", b"").split(b";")[0].strip().lower()
    if not body or ctype != b"application/json":
        return None
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"request body is not valid UTF-8: byte 0x{body[e.start]:02x} at offset {e.start}"
    deepest = json_depth(text, MAX_JSON_DEPTH)
    return f"request body nests JSON deeper than {MAX_JSON_DEPTH} levels" if deepest > MAX_JSON_DEPTH else None


def json_depth(text: str, stop: int) -> int:
    """How deep brackets nest outside JSON strings in `text` (linear, no recursion); the scan stops once
    past `stop`."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > stop:
                break
        elif ch in "]}":
            depth -= 1
    return deepest


class SecurityHeaders:
    """ASGI middleware: `nosniff` on every response; the inspector's pages (`/ui`) also get a
    Content-Security-Policy allowing only this origin's own files, and may not be framed."""

    CSP = (b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
           b"frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
    UI = [(b"content-security-policy", CSP), (b"x-frame-options", b"DENY"), (b"referrer-policy", b"no-referrer")]

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ui = scope.get("path", "").startswith("/ui")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-content-type-options"]
                headers.append((b"x-content-type-options", b"nosniff"))
                if ui:
                    headers += self.UI
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


class NoEncodedSlash:
    """ASGI middleware refusing a path with an encoded '/' (%2F) with 404.

    The server decodes %2F before routing, so `/sessions/a%2Fturns` would reach the turns of
    session `a`: a request for an id holding '/' (which no session may have) must not land on
    another route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and b"%2f" in (scope.get("raw_path") or b"").lower():
            await BodyLimit._reply(send, 404, "not_found", "no such route: a path segment may not contain an "
                                   "encoded '/' (%2F); session ids never contain '/'")
            return
        await self.app(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that yields the buffered body once, then defers to the real one (disconnects)."""
    done = False

    async def replay() -> Message:
        nonlocal done
        if not done:
            done = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
