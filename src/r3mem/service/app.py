"""`create_app(engine, store)`: the FastAPI application.

Endpoints (all JSON; errors are `{"error", "message"}`, see `errors.py`):

    GET    /health                          liveness + store reachable (no auth)
    GET    /version                         r3mem version and model identity (no auth)
    POST   /users                           admin token: create a user, returns its API token once
    DELETE /users/me                        delete the caller and all their sessions
    GET    /sessions                        the caller's sessions
    POST   /sessions                        create a session
    POST   /sessions/import                 recreate a session from an export
    GET    /sessions/{id}                   one session with its memory's version and size
    DELETE /sessions/{id}                   delete a session (turns, memory, slots)
    GET    /sessions/{id}/turns             its turns
    GET    /sessions/{id}/turns/{index}     one turn with what edits of it replaced
    PATCH  /sessions/{id}/turns/{index}     edit a turn (its old text kept in its history); memory rebuilt
    DELETE /sessions/{id}/turns/{index}     forget a turn (with its history); memory rebuilt without it
    POST   /sessions/{id}/write             store a turn and write it into memory (?wait=false: in a job)
    GET    /jobs, /jobs/{id}                background memory jobs of the caller: state and progress
    DELETE /jobs/{id}                       cancel a job (its turn stays stored; the next write folds it)
    POST   /sessions/{id}/recall            reconstruct text from memory (query / level / index / top_k)
    POST   /sessions/{id}/answer            answer a question from recalled memory (nothing stored)
    POST   /sessions/{id}/chat              write the message, answer it, store the reply
    GET    /sessions/{id}/export            turns + memory file (base64) as JSON
    GET    /sessions/{id}/memory            what the memory holds: document state, slots with their source text
    GET    /ui                              the memory inspector (static page over this API; see ui/)

Auth is a bearer token per user; a user reaches only their own sessions (others' are 404). Handlers
are synchronous, so they run in the server's thread pool; every model call holds one lock (one torch
model must not run in several threads at once) while store work proceeds in parallel. A write is
answered only after its store transaction committed, so a graceful shutdown (which lets in-flight
requests finish) loses no acknowledged write.

A request runs bounded model work: when the memory would have to fold more than `max_sync_turns` turns
(a long import caught up, an edit early in a long session), or the caller asks `wait=false`, the change
is committed, the memory catch-up is queued as a job (`jobs.py`) and the answer is 202 with the job and
its `Location`; `GET /jobs/{id}` reports progress.
"""

from __future__ import annotations

import contextlib
import hmac
import re
import secrets
import threading
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Response
from fastapi import Path as FastApiPath
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from r3mem import __version__
from r3mem.agent import DEFAULT_MIN_CONFIDENCE, ChatAgent
from r3mem.memcache import MemoryCache
from r3mem.memfile import IdentityMismatch
from r3mem.service import schemas as S
from r3mem.service.errors import ApiError, BodyLimit, NoEncodedSlash, SecurityHeaders, install_error_handlers
from r3mem.service.jobs import Job, JobRunner
from r3mem.store import MemoryStore, Session, Turn, parse_export

__all__ = ["create_app", "UI_DIR"]

UI_DIR = Path(__file__).with_name("ui")  # plain HTML/CSS/JS, no build step, no external URLs

_bearer = HTTPBearer(auto_error=False, description="A user's API token (from POST /users), or the admin token.")
Creds = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
Wait = Annotated[bool, Query(description="false: answer once the change is stored (202) and fold it into "
                                         "memory in a background job (GET /jobs/{id} for its progress).")]
TurnIndex = Annotated[int, FastApiPath(ge=1, le=2**31 - 1, description="The turn's index (1-based).")]
ImportId = Annotated[str | None, Query(pattern=S.SESSION_ID_PATTERN,
                                       description=f"Import under this id. {S.SESSION_ID_RULE}.")]
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": S.ErrorOut, "description": text}
    for code, text in [(400, "Malformed request"), (401, "Missing or invalid token"), (404, "Unknown session"),
                       (413, "Body too large"), (422, "Invalid fields")]
}


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, {"WWW-Authenticate": "Bearer"})


def _turn_out(t: Turn) -> S.TurnOut:
    return S.TurnOut(index=t.index, speaker=t.speaker, text=t.text, timestamp=t.timestamp)


def _job_out(j: Job) -> S.JobOut:
    return S.JobOut(job_id=j.job_id, session_id=j.session_id, kind=j.kind, state=j.state, done=j.done, total=j.total,
                    memory_version=j.memory_version, turn_index=j.turn_index, error=j.error,
                    created_at=j.created_at, finished_at=j.finished_at)


def _session_out(s: Session, memory: S.MemoryInfo | None = None) -> S.SessionOut:
    return S.SessionOut(session_id=s.session_id, created_at=s.created_at, updated_at=s.updated_at, meta=s.meta,
                        turn_count=s.turn_count, memory=memory)


def _check_session_id(session_id: str) -> str:
    """Ids reachable in every route: the service decodes %2F before routing, so an id with '/'
    (or '.', '..', which clients normalise away) could be created but never addressed."""
    if not re.fullmatch(S.SESSION_ID_PATTERN, session_id):
        raise ApiError(422, "invalid_request", f"session_id {session_id[:40]!r} is not allowed: {S.SESSION_ID_RULE}")
    return session_id


def _check_export(engine, data: dict[str, Any], session_id: str | None) -> dict[str, Any]:
    """Refuse an export that is malformed or whose memory this engine cannot use, before any write.

    The memory is decoded as the engine will decode it on the next write (identity, checksum,
    shapes, dtype, token ids), so an imported session can always be written to and recalled. A memory
    written by another engine (an older adapter, other levels or precision) is kept and rebuilt from the
    imported turns at first use, as the agent rebuilds any stale memory."""
    parsed = parse_export(data, session_id)  # InvalidExport (a ValueError): 400
    _check_session_id(parsed["session_id"])
    memory = parsed["memory"]
    if memory is not None:
        with contextlib.suppress(IdentityMismatch):  # another engine's memory: rebuilt from the turns at first use
            engine.from_bytes(memory["blob"], name="imported memory")  # MemoryFileError (a ValueError): 400
    return parsed
class _Service:
    """The state every handler shares: engine, store, the model lock and the shared dense encoder."""

    def __init__(self, engine, store: MemoryStore, admin_token: str | None, max_sync_turns: int) -> None:
        self.engine, self.store, self.admin_token = engine, store, admin_token
        self.model_lock = threading.Lock()
        self.memories = MemoryCache()  # decoded session memories, reused while their version stands
        self.jobs = JobRunner()
        self.max_sync_turns = max_sync_turns

    def fold(self, agent: ChatAgent, kind: str, turn: Turn, wait: bool, response: Response,
             reuse=None) -> S.WriteOut:
        """Bring the memory up to date after `turn` changed (committed): here when the work is bounded and
        the caller waits, else in a job (202, `Location: /jobs/{id}`). `reuse`: `ChatAgent.reusable`
        taken before an edit or delete."""
        if wait and agent.backlog() <= self.max_sync_turns:
            version = agent.sync_after([turn], {"write": "stored", "edit": "edited", "delete": "deleted"}[kind],
                                       reuse=reuse)
            return S.WriteOut(turn=_turn_out(turn), memory_version=version)
        job = self.jobs.submit(agent.user_id, agent.session_id, kind,
                               lambda progress: agent.sync(progress=progress, reuse=reuse), turn_index=turn.index)
        response.status_code = 202
        response.headers["Location"] = f"/jobs/{job.job_id}"
        return S.WriteOut(turn=_turn_out(turn), memory_version=None, job=_job_out(job))

    def resume(self) -> list[Job]:
        """At start: a catch-up job for every session whose memory is behind its stored turns (jobs live in
        the process, so a restart forgot the ones that were queued or running; their turns are stored)."""
        jobs = []
        for user, sid in self.store.sessions_behind():
            agent = self.agent(user, sid)
            jobs.append(self.jobs.submit(user, sid, "sync", lambda progress, a=agent: a.sync(progress=progress)))
        return jobs

    def job(self, user: str, job_id: str) -> Job:
        job = self.jobs.get(user, job_id)
        if job is None:
            raise ApiError(404, "not_found", f"job {job_id[:40]!r} not found")
        return job

    def user(self, creds: HTTPAuthorizationCredentials | None) -> str:
        if creds is None:
            raise _unauthorized("missing bearer token (Authorization: Bearer <token>)")
        user = self.store.authenticate(creds.credentials)
        if user is None:
            raise _unauthorized("invalid token")
        return user

    def require_admin(self, creds: HTTPAuthorizationCredentials | None) -> None:
        if self.admin_token is None:
            raise ApiError(403, "forbidden", "user creation is disabled: the service has no admin token")
        if creds is None or not hmac.compare_digest(creds.credentials.encode(), self.admin_token.encode()):
            raise _unauthorized("admin token required")

    def retriever(self, kind: str | None):
        from r3mem.retrieval import make_retriever

        return make_retriever(kind)  # the embedding retriever shares the process's one MiniLM encoder

    def agent(self, user: str, session_id: str, retrieval: str | None = None, top_k: int = 2,
              read: str = "text", min_confidence: float | None = DEFAULT_MIN_CONFIDENCE) -> ChatAgent:
        """The session's agent (`min_confidence`: what its answers trust, as `ChatAgent` takes it)."""
        self.store.get_session(user, session_id)  # 404 before any work
        return ChatAgent(self.engine, self.store, user, session_id, retrieval, top_k=top_k, lock=self.model_lock,
                         retriever=self.retriever(retrieval), cache=self.memories, read=read,
                         min_confidence=min_confidence)

    def memory_info(self, user: str, session_id: str) -> S.MemoryInfo:
        stored = self.store.get_memory(user, session_id)
        if stored is None:
            return S.MemoryInfo(version=0, through_turn=0, slots=0, bytes=0)
        return S.MemoryInfo(version=stored.version, through_turn=stored.through_turn, slots=len(stored.slots),
                            bytes=len(stored.blob))


def create_app(
    engine, store: MemoryStore, *, max_body_bytes: int = 1_000_000, admin_token: str | None = None,
    max_sync_turns: int = 256,
) -> FastAPI:
    """The HTTP service over an `R3Mem` engine and a `MemoryStore` (the caller owns and closes both).

    `max_sync_turns`: the most turns a request folds into memory itself; more go to a background job."""
    if max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be >= 1, got {max_body_bytes}")
    if isinstance(max_sync_turns, bool) or not isinstance(max_sync_turns, int) or max_sync_turns < 0:
        raise ValueError(f"max_sync_turns must be an int >= 0, got {max_sync_turns!r}")
    svc = _Service(engine, store, admin_token, max_sync_turns)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        svc.resume()
        yield

    # FastAPIOffline: /docs and /redoc from assets inside the package (FastAPI's load them from a CDN);
    # operation ids are the handlers' names (list_sessions, write, ...) rather than path-derived strings.
    app = FastAPIOffline(title="r3mem", version=__version__, responses=_ERRORS,
                         description="R³Mem memory service: sessions of turns written into reversible compressed "
                                     "memory.", generate_unique_id_function=lambda route: route.name,
                         lifespan=lifespan)
    app.state.service = svc
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(NoEncodedSlash)
    app.add_middleware(SecurityHeaders)
    _system_routes(app, svc)
    _session_routes(app, svc)
    _memory_routes(app, svc)
    _curation_routes(app, svc)
    _job_routes(app, svc)
    app.mount("/ui", StaticFiles(directory=UI_DIR, html=True), name="ui")
    return app


def _system_routes(app: FastAPI, svc: _Service) -> None:
    @app.get("/health", tags=["system"])
    def health() -> dict[str, str]:
        """Liveness: the store answers."""
        svc.store.schema_version  # noqa: B018 - raises StoreError (503) when unreachable
        return {"status": "ok"}

    @app.get("/version", tags=["system"])
    def version() -> dict[str, Any]:
        """r3mem version and the model identity memories are tied to."""
        return {"r3mem": __version__, "base_model_id": svc.engine.base_model_id,
                "adapter_hash": svc.engine.adapter_hash,
                "adapter_trained": bool(svc.engine.trained)}

    @app.post("/users", status_code=201, response_model=S.UserOut, tags=["users"])
    def create_user(body: S.UserIn, creds: Creds) -> S.UserOut:
        """Create a user (admin token required); the returned API token is shown only once."""
        svc.require_admin(creds)
        token = secrets.token_urlsafe(32)
        svc.store.create_user(body.user_id, token=token)
        return S.UserOut(user_id=body.user_id, token=token)

    @app.delete("/users/me", status_code=204, tags=["users"])
    def delete_me(creds: Creds) -> Response:
        """Delete the caller with all their sessions, turns and memories (the token stops working)."""
        svc.store.delete_user(svc.user(creds))
        return Response(status_code=204)


def _session_routes(app: FastAPI, svc: _Service) -> None:
    @app.get("/sessions", response_model=S.SessionList, tags=["sessions"])
    def list_sessions(creds: Creds) -> S.SessionList:
        return S.SessionList(sessions=[_session_out(s) for s in svc.store.list_sessions(svc.user(creds))])

    @app.post("/sessions", status_code=201, response_model=S.SessionOut, tags=["sessions"])
    def create_session(body: S.SessionIn, creds: Creds) -> S.SessionOut:
        """Create a session; `session_id` and `meta` are checked before anything is stored."""
        return _session_out(svc.store.create_session(svc.user(creds), body.session_id, body.meta))

    @app.post("/sessions/import", status_code=201, response_model=S.SessionOut, tags=["sessions"])
    def import_session(body: dict[str, Any], creds: Creds, session_id: ImportId = None) -> S.SessionOut:
        """Recreate a session from `GET /sessions/{id}/export` output (its memory must fit this model)."""
        user = svc.user(creds)
        parsed = _check_export(svc.engine, body, session_id)
        session = svc.store.import_session(user, body, parsed["session_id"])
        return _session_out(session, svc.memory_info(user, session.session_id))

    @app.get("/sessions/{session_id}", response_model=S.SessionOut, tags=["sessions"])
    def get_session(session_id: str, creds: Creds) -> S.SessionOut:
        user = svc.user(creds)
        return _session_out(svc.store.get_session(user, session_id), svc.memory_info(user, session_id))

    @app.delete("/sessions/{session_id}", status_code=204, tags=["sessions"])
    def delete_session(session_id: str, creds: Creds) -> Response:
        svc.store.delete_session(svc.user(creds), session_id)
        return Response(status_code=204)

    @app.get("/sessions/{session_id}/turns", response_model=S.TurnList, tags=["sessions"])
    def list_turns(session_id: str, creds: Creds) -> S.TurnList:
        return S.TurnList(turns=[_turn_out(t) for t in svc.store.list_turns(svc.user(creds), session_id)])

    @app.get("/sessions/{session_id}/export", tags=["sessions"])
    def export_session(session_id: str, creds: Creds) -> dict[str, Any]:
        """Turns, slots and the memory file (`memory.blob_b64`, base64 of the .r3mem bytes) as JSON."""
        return svc.store.export_session(svc.user(creds), session_id)


def _memory_routes(app: FastAPI, svc: _Service) -> None:
    @app.post("/sessions/{session_id}/write", status_code=201, response_model=S.WriteOut, tags=["memory"],
              responses={202: {"model": S.WriteOut, "description": "Turn stored; a job folds it into memory"}})
    def write(session_id: str, body: S.WriteIn, creds: Creds, response: Response, wait: Wait = True) -> S.WriteOut:
        """Store a turn and write it into the session memory; answered after both are committed (201), or
        once the turn is stored with the job that writes it (202: `wait=false`, or a long backlog)."""
        agent = svc.agent(svc.user(creds), session_id)
        turn = agent.store_turn(body.text, body.speaker, dedupe=body.dedupe)
        return svc.fold(agent, "write", turn, wait, response)

    @app.get("/sessions/{session_id}/memory", response_model=S.MemoryDetail, tags=["memory"])
    def describe(session_id: str, creds: Creds) -> dict[str, Any]:
        """What the memory holds: document state size, and each slot with the text span it came from."""
        return svc.agent(svc.user(creds), session_id).describe()

    @app.post("/sessions/{session_id}/recall", response_model=S.RecallOut, tags=["memory"])
    def recall(session_id: str, body: S.RecallIn, creds: Creds) -> dict[str, Any]:
        """Reconstruct text from the session memory by running the model backward."""
        agent = svc.agent(svc.user(creds), session_id)
        return agent.recall(body.query, body.level, body.index, body.top_k, body.select, body.min_confidence).to_dict()

    @app.post("/sessions/{session_id}/answer", response_model=S.ReplyOut, tags=["memory"])
    def answer(session_id: str, body: S.AnswerIn, creds: Creds) -> dict[str, Any]:
        """Answer a question from recalled memory with the base model; nothing is stored."""
        agent = svc.agent(svc.user(creds), session_id, body.retrieval, body.top_k, body.read, body.min_confidence)
        return agent.respond(body.question, body.max_new_tokens).to_dict()

    @app.post("/sessions/{session_id}/chat", response_model=S.ChatOut, tags=["memory"])
    def chat(session_id: str, body: S.ChatIn, creds: Creds) -> dict[str, Any]:
        """Store the message as a turn, answer it from memory, store the reply as an assistant turn."""
        agent = svc.agent(svc.user(creds), session_id, body.retrieval, body.top_k, body.read, body.min_confidence)
        return agent.chat(body.text, body.max_new_tokens).to_dict()


def _curation_routes(app: FastAPI, svc: _Service) -> None:
    responses = {202: {"model": S.WriteOut, "description": "Changed; a job rebuilds the memory"}}

    @app.get("/sessions/{session_id}/turns/{index}", response_model=S.TurnDetail, tags=["curation"])
    def get_turn(session_id: str, index: TurnIndex, creds: Creds) -> S.TurnDetail:
        """One turn, with what edits of it replaced (oldest first)."""
        user = svc.user(creds)
        turn = svc.store.get_turn(user, session_id, index)
        history = [S.RevisionOut(rev=r.rev, speaker=r.speaker, text=r.text, timestamp=r.timestamp,
                                 replaced_at=r.replaced_at) for r in svc.store.turn_history(user, session_id, index)]
        return S.TurnDetail(**_turn_out(turn).model_dump(), history=history)

    @app.patch("/sessions/{session_id}/turns/{index}", response_model=S.WriteOut, tags=["curation"],
               responses=responses)
    def edit_turn(session_id: str, index: TurnIndex, body: S.TurnEditIn, creds: Creds, response: Response,
                  wait: Wait = True) -> S.WriteOut:
        """Replace a turn's text (and speaker); the old text stays in its history, the memory is rebuilt from
        the turns as they now are (nothing recalls the old text)."""
        agent = svc.agent(svc.user(creds), session_id)
        reuse = agent.reusable()  # before the change: the rebuild compresses only what changed
        turn = svc.store.edit_turn(agent.user_id, session_id, index, body.text, body.speaker)
        return svc.fold(agent, "edit", turn, wait, response, reuse)

    @app.delete("/sessions/{session_id}/turns/{index}", response_model=S.WriteOut, tags=["curation"],
                responses=responses)
    def delete_turn(session_id: str, index: TurnIndex, creds: Creds, response: Response,
                    wait: Wait = True) -> S.WriteOut:
        """Forget a turn: deleted with its history, the memory rebuilt from the other turns; returns it."""
        agent = svc.agent(svc.user(creds), session_id)
        reuse = agent.reusable()
        turn = svc.store.delete_turn(agent.user_id, session_id, index)
        return svc.fold(agent, "delete", turn, wait, response, reuse)


def _job_routes(app: FastAPI, svc: _Service) -> None:
    @app.get("/jobs", response_model=S.JobList, tags=["jobs"])
    def list_jobs(creds: Creds, session_id: str | None = None) -> S.JobList:
        """The caller's background jobs (of one session with `session_id`), oldest first."""
        return S.JobList(jobs=[_job_out(j) for j in svc.jobs.list(svc.user(creds), session_id)])

    @app.get("/jobs/{job_id}", response_model=S.JobOut, tags=["jobs"])
    def get_job(job_id: str, creds: Creds) -> S.JobOut:
        """A job's state and progress (turns folded / to fold); another user's job is 404."""
        return _job_out(svc.job(svc.user(creds), job_id))

    @app.delete("/jobs/{job_id}", status_code=202, response_model=S.JobOut, tags=["jobs"])
    def cancel_job(job_id: str, creds: Creds) -> S.JobOut:
        """Cancel a job: a queued one never runs, a running one stops after its current batch and leaves the
        memory at the version it started from (its turns stay stored; the next write folds them)."""
        user = svc.user(creds)
        svc.job(user, job_id)
        return _job_out(svc.jobs.cancel(user, job_id))
