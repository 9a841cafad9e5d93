"""`Client(url, token)` and `AsyncClient(url, token)`: Python clients for the r3mem HTTP service (`r3mem serve`).

    from r3mem.client import Client, NotFound

    with Client("http://127.0.0.1:8000", token) as c:
        c.create_session("trip")
        c.write("trip", "I moved to Lisbon in May.")
        print(c.recall("trip", query="Lisbon").text)
        print(c.answer("trip", "Where do I live?").text)

    async with AsyncClient("http://127.0.0.1:8000", token) as c:   # the same methods, awaited
        print((await c.answer("trip", "Where do I live?")).text)

One method per endpoint, named after it (the OpenAPI operation ids); results are the service's own
response models (`r3mem.service.schemas`: `SessionOut`, `WriteOut`, `RecallOut`, ...), except `health`,
`version` and `export_session`, which are plain JSON (an export is a file format). A failed
request raises an `ApiError` subclass chosen by status (`NotFound`, `Unauthorized`, `Conflict`, …) whose
message is the service's one-line message; a service that cannot be reached (or does not answer within
`timeout`) raises `ServiceUnreachable`. Only requests that are safe to repeat are retried (reads, deletes,
recall and answer, which store nothing), on connection failures, timeouts and 502/503/504, with
exponential backoff; a write, chat, create or import is sent exactly once.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from r3mem.service import schemas as S

__all__ = ["Client", "AsyncClient", "ClientError", "ApiError", "BadRequest", "Unauthorized", "Forbidden",
           "NotFound", "Conflict", "PayloadTooLarge", "ServiceUnavailable", "ServerError", "ServiceUnreachable"]

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


@dataclass(frozen=True)
class Call:
    """One request as an endpoint method describes it; `Client` sends it, `AsyncClient` awaits it."""

    method: str
    path: str
    idempotent: bool  # safe to repeat: retried on connection failures, timeouts and 502/503/504
    json: Any = None
    params: dict[str, Any] | None = None
    done_if: int | None = None  # a status that, answering a retry, means an earlier attempt did the work
    model: type[BaseModel] | None = None  # the response model (None: plain JSON)
    field: str | None = None  # return this field of the model (a list) instead of the model


def _check_number(name: str, value: object, low: float, strict: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < low or (strict and value == low):
        raise ValueError(f"{name} must be a finite number of seconds {'>' if strict else '>='} {low:g}, "
                         f"got {value!r}")
    return float(value)


class _Api:
    """The service's endpoints, one method each, returning what the transport (`_do`) makes of a `Call`."""

    def __init__(self, url: str, token: str | None, timeout: float, retries: int, backoff: float) -> None:
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an int >= 0, got {retries!r}")
        self.timeout = _check_number("timeout", timeout, 0, strict=True)
        self.backoff = _check_number("backoff", backoff, 0, strict=False)
        self.url, self.retries = url.rstrip("/"), retries
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    def _do(self, call: Call) -> Any:
        raise NotImplementedError

    # ----- transport, shared by both -------------------------------------------------------------
    def _attempts(self, call: Call) -> int:
        return 1 + (self.retries if call.idempotent else 0)

    def _step(self, call: Call, attempt: int, outcome: httpx.Response | httpx.TransportError) -> Any:
        """What to do after one attempt: a float is a delay before the next attempt; anything else is
        the result (or raises). Retries on transport failures and 502/503/504 while attempts remain."""
        last = attempt + 1 == self._attempts(call)
        if isinstance(outcome, httpx.TransportError):
            if last:
                what = "timed out" if isinstance(outcome, httpx.TimeoutException) else "failed"
                raise ServiceUnreachable(f"{call.method} {self.url}{call.path} {what}: "
                                         f"{str(outcome) or type(outcome).__name__}") from outcome
            return self._delay(attempt, None)
        if outcome.status_code in RETRY_STATUSES and not last:
            return self._delay(attempt, outcome.headers.get("retry-after"))
        if attempt and call.done_if is not None and outcome.status_code == call.done_if:
            return None  # an earlier attempt did the work (a delete whose answer was lost)
        if outcome.is_error:
            raise _error(outcome)
        if outcome.status_code == 204 or not outcome.content:
            return None
        data = outcome.json()
        if call.model is None:
            return data
        result = call.model.model_validate(data)
        return getattr(result, call.field) if call.field else result

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = self.backoff * 2 ** attempt * random.uniform(0.5, 1.0)
        if retry_after and retry_after.strip().isdigit():
            delay = max(delay, min(float(retry_after), 30.0))
        return delay

    def _request_args(self, call: Call) -> dict[str, Any]:
        return {"method": call.method, "url": call.path, "json": call.json, "params": call.params}

    # ----- system ------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """`GET /health`: {"status": "ok"} when the service and its store answer."""
        return self._do(Call("GET", "/health", True))

    def version(self) -> dict[str, Any]:
        """`GET /version`: r3mem version and the model identity memories are tied to."""
        return self._do(Call("GET", "/version", True))

    # ----- users -------------------------------------------------------------------------------
    def create_user(self, user_id: str) -> S.UserOut:
        """`POST /users` (admin token): the user and its token, shown only this once."""
        return self._do(Call("POST", "/users", False, json={"user_id": user_id}, model=S.UserOut))

    def delete_me(self) -> None:
        """`DELETE /users/me`: delete the caller with all their sessions (the token stops working; a retry
        after a lost answer that finds the token gone has succeeded)."""
        return self._do(Call("DELETE", "/users/me", True, done_if=401))

    # ----- sessions ----------------------------------------------------------------------------
    def list_sessions(self) -> list[S.SessionOut]:
        """`GET /sessions`: the caller's sessions, oldest first."""
        return self._do(Call("GET", "/sessions", True, model=S.SessionList, field="sessions"))

    def create_session(self, session_id: str | None = None, meta: dict[str, Any] | None = None) -> S.SessionOut:
        """`POST /sessions`: a new session (a random id when `session_id` is None)."""
        return self._do(Call("POST", "/sessions", False, json=_drop_none({"session_id": session_id, "meta": meta}),
                             model=S.SessionOut))

    def get_session(self, session_id: str) -> S.SessionOut:
        """`GET /sessions/{id}`: the session with its memory's version, coverage and size."""
        return self._do(Call("GET", f"/sessions/{_sid(session_id)}", True, model=S.SessionOut))

    def delete_session(self, session_id: str) -> None:
        """`DELETE /sessions/{id}`: delete the session's turns and memory (a retry after a lost answer that
        finds the session gone has succeeded; a first attempt that finds nothing raises `NotFound`)."""
        return self._do(Call("DELETE", f"/sessions/{_sid(session_id)}", True, done_if=404))

    def list_turns(self, session_id: str) -> list[S.TurnOut]:
        """`GET /sessions/{id}/turns`: the session's turns, in order."""
        return self._do(Call("GET", f"/sessions/{_sid(session_id)}/turns", True, model=S.TurnList, field="turns"))

    def export_session(self, session_id: str) -> dict[str, Any]:
        """`GET /sessions/{id}/export`: turns, slots and the memory file (base64) as JSON (the export format)."""
        return self._do(Call("GET", f"/sessions/{_sid(session_id)}/export", True))

    def import_session(self, data: dict[str, Any], session_id: str | None = None) -> S.SessionOut:
        """`POST /sessions/import`: recreate a session from `export_session` output (under `session_id`)."""
        params = {"session_id": session_id} if session_id is not None else None
        return self._do(Call("POST", "/sessions/import", False, json=data, params=params, model=S.SessionOut))

    # ----- memory ------------------------------------------------------------------------------
    def write(self, session_id: str, text: str, speaker: str = "user", *, dedupe: bool = True,
              wait: bool = True) -> S.WriteOut:
        """`POST /sessions/{id}/write`: store a turn and write it into memory (`turn`, `memory_version`, `job`).

        `dedupe`: a turn repeating a stored one (same speaker and normalised text) returns the stored one.
        `wait=False` (or a long backlog on the service's side): answered once the turn is stored, with
        `memory_version` None and the `job` folding it in (see `job` / `wait_job`). Never retried: a write
        whose answer was lost may have been stored."""
        return self._do(Call("POST", f"/sessions/{_sid(session_id)}/write", False, model=S.WriteOut,
                             json={"text": text, "speaker": speaker, "dedupe": dedupe}, params=_wait(wait)))

    def memory(self, session_id: str) -> S.MemoryDetail:
        """`GET /sessions/{id}/memory`: document state size and every slot with the source text it holds."""
        return self._do(Call("GET", f"/sessions/{_sid(session_id)}/memory", True, model=S.MemoryDetail))

    def recall(self, session_id: str, query: str | None = None, level: str = "paragraph",
               index: int | None = None, top_k: int = 1, select: str | None = None,
               min_confidence: float | None = None) -> S.RecallOut:
        """`POST /sessions/{id}/recall`: reconstructed text, with per-slot text, turn and confidence;
        `select` chooses how slots are found (hybrid, dense, lexical, likelihood); a slot under
        `min_confidence` is flagged `probably_wrong` and given as its stored turns' text."""
        return self._do(Call("POST", f"/sessions/{_sid(session_id)}/recall", True, model=S.RecallOut,
                             json=_drop_none({"query": query, "level": level, "index": index, "top_k": top_k,
                                              "select": select, "min_confidence": min_confidence})))

    def answer(self, session_id: str, question: str, top_k: int = 2, max_new_tokens: int = 64,
               retrieval: str | None = None, read: str | None = None,
               min_confidence: float | None = None) -> S.ReplyOut:
        """`POST /sessions/{id}/answer`: an answer from memory (nothing stored); `read` is what the reader
        gets: text (recalled), source (the stored turns) or cache (the slots' keys and values)."""
        return self._do(Call("POST", f"/sessions/{_sid(session_id)}/answer", True, model=S.ReplyOut,
                             json=_drop_none({"question": question, "top_k": top_k, "max_new_tokens": max_new_tokens,
                                              "retrieval": retrieval, "read": read,
                                              "min_confidence": min_confidence})))

    def chat(self, session_id: str, text: str, top_k: int = 2, max_new_tokens: int = 64,
             retrieval: str | None = None, read: str | None = None,
             min_confidence: float | None = None) -> S.ChatOut:
        """`POST /sessions/{id}/chat`: store the message, answer it, store the reply (never retried)."""
        return self._do(Call("POST", f"/sessions/{_sid(session_id)}/chat", False, model=S.ChatOut,
                             json=_drop_none({"text": text, "top_k": top_k, "max_new_tokens": max_new_tokens,
                                              "retrieval": retrieval, "read": read,
                                              "min_confidence": min_confidence})))

    # ----- curation ----------------------------------------------------------------------------
    def get_turn(self, session_id: str, index: int) -> S.TurnDetail:
        """`GET /sessions/{id}/turns/{index}`: the turn with `history`, what edits of it replaced."""
        return self._do(Call("GET", f"/sessions/{_sid(session_id)}/turns/{int(index)}", True, model=S.TurnDetail))

    def edit_turn(self, session_id: str, index: int, text: str, speaker: str | None = None, *,
                  wait: bool = True) -> S.WriteOut:
        """`PATCH /sessions/{id}/turns/{index}`: new text (and speaker); the memory is rebuilt (in a job when
        long or `wait=False`). Retried: the same edit twice leaves the same turn (and one more revision)."""
        return self._do(Call("PATCH", f"/sessions/{_sid(session_id)}/turns/{int(index)}", True, model=S.WriteOut,
                             json=_drop_none({"text": text, "speaker": speaker}), params=_wait(wait)))

    def delete_turn(self, session_id: str, index: int, *, wait: bool = True) -> S.WriteOut | None:
        """`DELETE /sessions/{id}/turns/{index}`: forget the turn; returns the deleted `turn` with the memory
        version (or `job`), or None when a retry after a lost answer found it already gone (that delete
        succeeded)."""
        return self._do(Call("DELETE", f"/sessions/{_sid(session_id)}/turns/{int(index)}", True, model=S.WriteOut,
                             params=_wait(wait), done_if=404))

    # ----- jobs --------------------------------------------------------------------------------
    def jobs(self, session_id: str | None = None) -> list[S.JobOut]:
        """`GET /jobs`: the caller's background memory jobs (of one session), oldest first."""
        params = {"session_id": session_id} if session_id is not None else None
        return self._do(Call("GET", "/jobs", True, params=params, model=S.JobList, field="jobs"))

    def job(self, job_id: str) -> S.JobOut:
        """`GET /jobs/{id}`: state (queued, running, done, failed, cancelled) and progress (done / total)."""
        return self._do(Call("GET", f"/jobs/{_sid(job_id)}", True, model=S.JobOut))

    def cancel_job(self, job_id: str) -> S.JobOut:
        """`DELETE /jobs/{id}`: cancel; the job's turns stay stored and the next write folds them in."""
        return self._do(Call("DELETE", f"/jobs/{_sid(job_id)}", True, model=S.JobOut))


FINISHED = ("done", "failed", "cancelled")


def _overdue(job: S.JobOut, timeout_s: float) -> ClientError:
    return ClientError(f"job {job.job_id} still {job.state} after {timeout_s:g} s ({job.done}/{job.total} turns)")


class Client(_Api):
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
        super().__init__(url, token, timeout, retries, backoff)
        self._http = httpx.Client(base_url=self.url, headers=self._headers, timeout=httpx.Timeout(self.timeout),
                                  transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _do(self, call: Call) -> Any:
        for attempt in range(self._attempts(call)):
            try:
                outcome: httpx.Response | httpx.TransportError = self._http.request(**self._request_args(call))
            except httpx.TransportError as exc:  # connect/read/write failures and timeouts
                outcome = exc
            step = self._step(call, attempt, outcome)
            if not isinstance(step, float):
                return step
            time.sleep(step)
        raise AssertionError("unreachable")  # pragma: no cover

    def wait_job(self, job_id: str, timeout_s: float = 600.0, poll_s: float = 0.25) -> S.JobOut:
        """Poll `job` until it has finished (done, failed or cancelled); `ClientError` after `timeout_s`."""
        deadline = time.monotonic() + _check_number("timeout_s", timeout_s, 0, strict=False)
        while (job := self.job(job_id)).state not in FINISHED:
            if time.monotonic() >= deadline:
                raise _overdue(job, timeout_s)
            time.sleep(poll_s)
        return job


class AsyncClient(_Api):
    """`Client` for asyncio: the same methods and arguments, each a coroutine (`await c.recall(...)`);
    `async with AsyncClient(url, token) as c: ...`. `transport`: an `httpx.AsyncBaseTransport`."""

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 60.0, retries: int = 2,
                 backoff: float = 0.25, transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(url, token, timeout, retries, backoff)
        self._http = httpx.AsyncClient(base_url=self.url, headers=self._headers,
                                       timeout=httpx.Timeout(self.timeout), transport=transport)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _do(self, call: Call) -> Any:
        for attempt in range(self._attempts(call)):
            try:
                outcome: httpx.Response | httpx.TransportError = await self._http.request(**self._request_args(call))
            except httpx.TransportError as exc:
                outcome = exc
            step = self._step(call, attempt, outcome)
            if not isinstance(step, float):
                return step
            await asyncio.sleep(step)
        raise AssertionError("unreachable")  # pragma: no cover

    async def wait_job(self, job_id: str, timeout_s: float = 600.0, poll_s: float = 0.25) -> S.JobOut:
        """Poll `job` until it has finished (done, failed or cancelled); `ClientError` after `timeout_s`."""
        deadline = time.monotonic() + _check_number("timeout_s", timeout_s, 0, strict=False)
        while (job := await self.job(job_id)).state not in FINISHED:
            if time.monotonic() >= deadline:
                raise _overdue(job, timeout_s)
            await asyncio.sleep(poll_s)
        return job
