"""`Client(url, token)`: a Python client for the r3mem HTTP service (`r3mem serve`).

    from r3mem.client import Client, NotFound

    with Client("http://127.0.0.1:8000", token) as c:
        c.create_session("trip")
        c.write("trip", "I moved to Lisbon in May.")
        print(c.recall("trip", query="Lisbon")["text"])
        print(c.answer("trip", "Where do I live?")["text"])

One method per endpoint, named after it; results are the service's JSON (dicts and lists). A failed
request raises an `ApiError` subclass chosen by status (`NotFound`, `Unauthorized`, `Conflict`, …) whose
message is the service's one-line message; a service that cannot be reached (or does not answer within
`timeout`) raises `ServiceUnreachable`. Only requests that are safe to repeat are retried (reads, deletes,
recall and answer, which store nothing), on connection failures, timeouts and 502/503/504, with
exponential backoff; a write, chat, create or import is sent exactly once.
"""

from __future__ import annotations

import math
import random
import time
from typing import Any
from urllib.parse import quote

import httpx

__all__ = ["Client", "ClientError", "ApiError", "BadRequest", "Unauthorized", "Forbidden", "NotFound", "Conflict",
           "PayloadTooLarge", "ServiceUnavailable", "ServerError", "ServiceUnreachable"]

RETRY_STATUSES = frozenset({502, 503, 504})


class ClientError(Exception):
    """Any failure of a request made by `Client`."""


class ServiceUnreachable(ClientError):
    """The service could not be reached, or did not answer in time (after any retries)."""


class ApiError(ClientError):
    """The service answered with an error: `status`, machine-readable `kind` and its one-line `message`."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, kind={self.kind!r}, message={self.message!r})"


class BadRequest(ApiError):
    """400 / 422: malformed or invalid request (e.g. a slot index that does not exist)."""


class Unauthorized(ApiError):
    """401: missing or invalid token."""


class Forbidden(ApiError):
    """403: the service refuses this (e.g. user creation without an admin token configured)."""


class NotFound(ApiError):
    """404: unknown session (or another user's), user or route."""


class Conflict(ApiError):
    """409: already exists, or a concurrent change."""


class PayloadTooLarge(ApiError):
    """413: the request body exceeds the service's limit."""


class ServiceUnavailable(ApiError):
    """503: the service's store is unavailable."""


class ServerError(ApiError):
    """Any other 5xx."""


_BY_STATUS: dict[int, type[ApiError]] = {400: BadRequest, 422: BadRequest, 401: Unauthorized, 403: Forbidden,
                                         404: NotFound, 409: Conflict, 413: PayloadTooLarge, 503: ServiceUnavailable}


def _error(response: httpx.Response) -> ApiError:
    """The typed error for an error response: the service's `{"error", "message"}`, or its first text line."""
    kind, message = "http_error", ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        kind, message = str(body.get("error") or kind), body["message"]
    else:
        message = response.text.strip()
    message = (message.splitlines() or [""])[0] or response.reason_phrase or f"HTTP {response.status_code}"
    cls = _BY_STATUS.get(response.status_code) or (ServerError if response.status_code >= 500 else ApiError)
    return cls(response.status_code, kind, message)


def _sid(session_id: str) -> str:
    if not isinstance(session_id, str) or not session_id:
        raise ValueError(f"session_id must be a non-empty str, got {session_id!r}")
    return quote(session_id, safe="")


def _wait(wait: bool) -> dict[str, str] | None:
    return None if wait else {"wait": "false"}


def _drop_none(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


class Client:
    """A client for one user's sessions on an r3mem service.

    Args:
        url: the service's base URL, e.g. "http://127.0.0.1:8000".
        token: the user's API token (from `create_user`), or the admin token for `create_user`.
        timeout: seconds to wait for connecting and for each answer (recall and answer run the model:
            allow for it).
        retries: how many times a request that is safe to repeat is re-sent after a connection failure,
            timeout or 502/503/504 (0: never).
        backoff: base delay in seconds between retries, doubled each time (with jitter).
        transport: an `httpx` transport to use instead of the network (tests).
    """

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 60.0, retries: int = 2,
                 backoff: float = 0.25, transport: httpx.BaseTransport | None = None) -> None:
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not math.isfinite(timeout) \
                or timeout <= 0:
            raise ValueError(f"timeout must be a finite number of seconds > 0, got {timeout!r}")
        if isinstance(backoff, bool) or not isinstance(backoff, (int, float)) or not math.isfinite(backoff) \
                or backoff < 0:
            raise ValueError(f"backoff must be a finite number of seconds >= 0, got {backoff!r}")
        self.url, self.retries, self.backoff = url.rstrip("/"), retries, backoff
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=httpx.Timeout(timeout),
                                  transport=transport)

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ----- transport ---------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, idempotent: bool, json: Any = None,
                 params: dict[str, Any] | None = None, done_if: int | None = None) -> httpx.Response:
        """`done_if`: a status that, answering a retry, means an earlier attempt did the work (a delete
        whose 204 was lost finds nothing the second time: that delete succeeded)."""
        attempts = 1 + (self.retries if idempotent else 0)
        for attempt in range(attempts):
            last = attempt + 1 == attempts
            try:
                response = self._http.request(method, path, json=json, params=params)
            except httpx.TransportError as exc:  # connect/read/write failures and timeouts
                if last:
                    what = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
                    raise ServiceUnreachable(f"{method} {self.url}{path} {what}: {str(exc) or type(exc).__name__}"
                                             ) from exc
                self._sleep(attempt, None)
                continue
            if response.status_code in RETRY_STATUSES and not last:
                self._sleep(attempt, response.headers.get("retry-after"))
                continue
            if attempt and done_if is not None and response.status_code == done_if:
                return response
            if response.is_error:
                raise _error(response)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        delay = self.backoff * 2 ** attempt * random.uniform(0.5, 1.0)
        if retry_after and retry_after.strip().isdigit():
            delay = max(delay, min(float(retry_after), 30.0))
        time.sleep(delay)

    def _json(self, method: str, path: str, *, idempotent: bool, json: Any = None,
              params: dict[str, Any] | None = None, done_if: int | None = None) -> Any:
        response = self._request(method, path, idempotent=idempotent, json=json, params=params, done_if=done_if)
        if response.is_error:  # `done_if` on a retry: the work was done
            return None
        return None if response.status_code == 204 or not response.content else response.json()

    # ----- system ------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """`GET /health`: {"status": "ok"} when the service and its store answer."""
        return self._json("GET", "/health", idempotent=True)

    def version(self) -> dict[str, Any]:
        """`GET /version`: r3mem version and the model identity memories are tied to."""
        return self._json("GET", "/version", idempotent=True)

    # ----- users -------------------------------------------------------------------------------
    def create_user(self, user_id: str) -> dict[str, Any]:
        """`POST /users` (admin token): {"user_id", "token"}; the token is shown only this once."""
        return self._json("POST", "/users", idempotent=False, json={"user_id": user_id})

    def delete_me(self) -> None:
        """`DELETE /users/me`: delete the caller with all their sessions (the token stops working; a retry
        after a lost answer that finds the token gone has succeeded)."""
        self._json("DELETE", "/users/me", idempotent=True, done_if=401)

    # ----- sessions ----------------------------------------------------------------------------
    def list_sessions(self) -> list[dict[str, Any]]:
        """`GET /sessions`: the caller's sessions, oldest first."""
        return self._json("GET", "/sessions", idempotent=True)["sessions"]

    def create_session(self, session_id: str | None = None, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """`POST /sessions`: a new session (a random id when `session_id` is None)."""
        return self._json("POST", "/sessions", idempotent=False,
                          json=_drop_none({"session_id": session_id, "meta": meta}))

    def get_session(self, session_id: str) -> dict[str, Any]:
        """`GET /sessions/{id}`: the session with its memory's version, coverage and size."""
        return self._json("GET", f"/sessions/{_sid(session_id)}", idempotent=True)

    def delete_session(self, session_id: str) -> None:
        """`DELETE /sessions/{id}`: delete the session's turns and memory (a retry after a lost answer that
        finds the session gone has succeeded; a first attempt that finds nothing raises `NotFound`)."""
        self._json("DELETE", f"/sessions/{_sid(session_id)}", idempotent=True, done_if=404)

    def list_turns(self, session_id: str) -> list[dict[str, Any]]:
        """`GET /sessions/{id}/turns`: the session's turns, in order."""
        return self._json("GET", f"/sessions/{_sid(session_id)}/turns", idempotent=True)["turns"]

    def export_session(self, session_id: str) -> dict[str, Any]:
        """`GET /sessions/{id}/export`: turns, slots and the memory file (base64) as JSON."""
        return self._json("GET", f"/sessions/{_sid(session_id)}/export", idempotent=True)

    def import_session(self, data: dict[str, Any], session_id: str | None = None) -> dict[str, Any]:
        """`POST /sessions/import`: recreate a session from `export_session` output (under `session_id`)."""
        params = {"session_id": session_id} if session_id is not None else None
        return self._json("POST", "/sessions/import", idempotent=False, json=data, params=params)

    # ----- memory ------------------------------------------------------------------------------
    def write(self, session_id: str, text: str, speaker: str = "user", *, dedupe: bool = True,
              wait: bool = True) -> dict[str, Any]:
        """`POST /sessions/{id}/write`: store a turn and write it into memory; {"turn", "memory_version", "job"}.

        `dedupe`: a turn repeating a stored one (same speaker and normalised text) returns the stored one.
        `wait=False` (or a long backlog on the service's side): answered once the turn is stored, with
        `memory_version` None and the `job` folding it in (see `job` / `wait_job`). Never retried: a write
        whose answer was lost may have been stored."""
        return self._json("POST", f"/sessions/{_sid(session_id)}/write", idempotent=False,
                          json={"text": text, "speaker": speaker, "dedupe": dedupe}, params=_wait(wait))

    # ----- curation ----------------------------------------------------------------------------
    def get_turn(self, session_id: str, index: int) -> dict[str, Any]:
        """`GET /sessions/{id}/turns/{index}`: the turn with `history`, what edits of it replaced."""
        return self._json("GET", f"/sessions/{_sid(session_id)}/turns/{int(index)}", idempotent=True)

    def edit_turn(self, session_id: str, index: int, text: str, speaker: str | None = None, *,
                  wait: bool = True) -> dict[str, Any]:
        """`PATCH /sessions/{id}/turns/{index}`: new text (and speaker); the memory is rebuilt (in a job when
        long or `wait=False`). Retried: the same edit twice leaves the same turn (and one more revision)."""
        return self._json("PATCH", f"/sessions/{_sid(session_id)}/turns/{int(index)}", idempotent=True,
                          json=_drop_none({"text": text, "speaker": speaker}), params=_wait(wait))

    def delete_turn(self, session_id: str, index: int, *, wait: bool = True) -> dict[str, Any] | None:
        """`DELETE /sessions/{id}/turns/{index}`: forget the turn; returns {"turn" deleted, "memory_version",
        "job"}, or None when a retry after a lost answer found it already gone (that delete succeeded)."""
        return self._json("DELETE", f"/sessions/{_sid(session_id)}/turns/{int(index)}", idempotent=True,
                          params=_wait(wait), done_if=404)

    # ----- jobs --------------------------------------------------------------------------------
    def jobs(self, session_id: str | None = None) -> list[dict[str, Any]]:
        """`GET /jobs`: the caller's background memory jobs (of one session), oldest first."""
        params = {"session_id": session_id} if session_id is not None else None
        return self._json("GET", "/jobs", idempotent=True, params=params)["jobs"]

    def job(self, job_id: str) -> dict[str, Any]:
        """`GET /jobs/{id}`: state (queued, running, done, failed, cancelled) and progress (done / total)."""
        return self._json("GET", f"/jobs/{_sid(job_id)}", idempotent=True)

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """`DELETE /jobs/{id}`: cancel; the job's turns stay stored and the next write folds them in."""
        return self._json("DELETE", f"/jobs/{_sid(job_id)}", idempotent=True)

    def wait_job(self, job_id: str, timeout_s: float = 600.0, poll_s: float = 0.25) -> dict[str, Any]:
        """Poll `job` until it has finished (done, failed or cancelled); `ClientError` after `timeout_s`."""
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not math.isfinite(timeout_s):
            raise ValueError(f"timeout_s must be a finite number, got {timeout_s!r}")
        deadline = time.monotonic() + timeout_s
        while (job := self.job(job_id))["state"] in ("queued", "running"):
            if time.monotonic() >= deadline:
                raise ClientError(f"job {job_id} still {job['state']} after {timeout_s:g} s ({job['done']}/"
                                  f"{job['total']} turns)")
            time.sleep(poll_s)
        return job

    def memory(self, session_id: str) -> dict[str, Any]:
        """`GET /sessions/{id}/memory`: document state size and every slot with the source text it holds."""
        return self._json("GET", f"/sessions/{_sid(session_id)}/memory", idempotent=True)

    def recall(self, session_id: str, query: str | None = None, level: str = "paragraph",
               index: int | None = None, top_k: int = 1, select: str | None = None) -> dict[str, Any]:
        """`POST /sessions/{id}/recall`: reconstructed text, with per-slot text, turn and confidence;
        `select` chooses how slots are found (hybrid, dense, lexical, likelihood)."""
        return self._json("POST", f"/sessions/{_sid(session_id)}/recall", idempotent=True,
                          json=_drop_none({"query": query, "level": level, "index": index, "top_k": top_k,
                                           "select": select}))

    def answer(self, session_id: str, question: str, top_k: int = 2, max_new_tokens: int = 64,
               retrieval: str | None = None, read: str | None = None) -> dict[str, Any]:
        """`POST /sessions/{id}/answer`: an answer from memory (nothing stored); `read` is what the reader
        gets: text (recalled), source (the stored turns) or cache (the slots' keys and values)."""
        return self._json("POST", f"/sessions/{_sid(session_id)}/answer", idempotent=True,
                          json=_drop_none({"question": question, "top_k": top_k, "max_new_tokens": max_new_tokens,
                                           "retrieval": retrieval, "read": read}))

    def chat(self, session_id: str, text: str, top_k: int = 2, max_new_tokens: int = 64,
             retrieval: str | None = None, read: str | None = None) -> dict[str, Any]:
        """`POST /sessions/{id}/chat`: store the message, answer it, store the reply (never retried)."""
        return self._json("POST", f"/sessions/{_sid(session_id)}/chat", idempotent=False,
                          json=_drop_none({"text": text, "top_k": top_k, "max_new_tokens": max_new_tokens,
                                           "retrieval": retrieval, "read": read}))
