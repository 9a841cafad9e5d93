"""An MCP (Model Context Protocol) server over a memory store: `r3mem mcp` runs it.

    from r3mem.mcp_server import create_server
    server = create_server(engine, MemoryStore("chats.db"), user_id="local")
    server.run("stdio")                      # or: server.run("streamable-http", host="127.0.0.1", port=8765)

An MCP-capable agent (a desktop chat app, an IDE assistant) gets tools to write text or conversation
turns into a session's memory, recall text back from it (with the model's confidence), answer a question
from it, list its sessions and delete one. Every tool is a thin layer over `ChatAgent` and `MemoryStore`,
acting for one user of the store (`user_id`, like `r3mem chat --user`). Library errors (unknown session,
bad slot index, store unavailable) come back as tool errors with the library's one-line message, so the
agent can read and correct them.

Needs the optional `mcp` extra: `pip install 'r3mem[mcp]'`.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Annotated, Any, Literal, TypeVar

import anyio
from pydantic import BaseModel, ConfigDict, Field

from r3mem import __version__
from r3mem.agent import DEFAULT_MIN_CONFIDENCE, ChatAgent, ensure_session
from r3mem.memcache import MemoryCache
from r3mem.service.errors import LIBRARY_ERROR_TYPES, first_line
from r3mem.service.schemas import RevisionOut, SlotOut, Time, TurnOut
from r3mem.store import MemoryStore, NotFound, Session, Turn
from r3mem.text import MAX_QUERY_CHARS

try:
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
    from mcp.types import ToolAnnotations
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("the MCP server needs the 'mcp' extra: pip install 'r3mem[mcp]'") from e

__all__ = ["create_server", "TRANSPORTS", "INSTRUCTIONS"]

TRANSPORTS = ("stdio", "streamable-http")
DEFAULT_SESSION = "default"

INSTRUCTIONS = """\
Long-term memory for this conversation partner, kept by r3mem. Text written to a session is compressed
into a reversible neural memory; recall runs the model backward to reconstruct the text, so a recall is a
reconstruction, not a copy: check its `confidence` (0-1, the geometric mean of the probabilities the model
gave the tokens it produced; below about 0.5 treat the text as unreliable).
Use `write_memory` for each user message or fact worth keeping (or `write_conversation` for several turns;
a repeat of a stored fact is not stored twice), `recall_memory` to get back what was said about a topic,
`answer_from_memory` to answer a question from memory in one step, `search_memories` to find the stored
memories about a topic across all sessions. Curate single memories with `list_memories`, `get_memory`,
`update_memory` (its old text kept in its history) and `delete_memory` (forgotten: no recall returns it);
`list_sessions` shows which sessions exist and `delete_session` forgets one.
Sessions are created on first write; omit `session_id` to use the default session."""

_T = TypeVar("_T")


# ----------------------------------------------------------------------------------- result models
# extra="allow": whatever else the library adds to a result is passed through, not dropped.


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


# One model per thing both doors return, shared with the HTTP service (its descriptions document both).
TurnResult = TurnOut
SlotResult = SlotOut
RevisionResult = RevisionOut


class WriteResult(_Open):
    session_id: str
    turns: list[TurnResult] = Field(description="The turns stored, in order.")
    memory_version: int = Field(description="Version of the session memory that covers these turns (committed).")


class RecallResult(_Open):
    session_id: str
    text: str = Field(description="The recalled slots' texts joined by blank lines.")
    level: str
    confidence: float | None = Field(None, description="The least confident slot's geometric-mean token "
                                                          "probability (0-1); null when nothing was recalled.")
    probably_wrong: bool | None = Field(None, description="Some slot is under min_confidence (null: none given).")
    slots: list[SlotResult]


class AnswerResult(_Open):
    session_id: str
    text: str = Field(description="The answer.")
    recalled: str = Field(description="The memory text the answer was based on.")
    confidence: float | None = Field(None, description="How sure the memory was of the recalled text (0-1), "
                                                          "as in recall_memory.")
    slots: list[SlotResult] = Field(description="The recalled passages the answer relied on.")


class SessionResult(_Open):
    session_id: str
    turn_count: int = Field(description="Number of turns written (the index of the last one).")
    created_at: Time
    updated_at: Time
    meta: dict[str, Any]


class SessionListResult(_Open):
    sessions: list[SessionResult] = Field(description="This user's sessions, oldest first.")


class DeleteResult(_Open):
    session_id: str
    deleted: bool


class MemoryItem(TurnResult):
    session_id: str
    history: list[RevisionResult] | None = Field(None, description="What edits replaced, oldest first "
                                                                   "(get_memory only).")


class MemoryListResult(_Open):
    session_id: str
    memories: list[MemoryItem] = Field(description="The session's memories (turns) in order, one page.")
    total: int = Field(description="How many the session holds.")
    next_offset: int | None = Field(None, description="Pass as `offset` for the next page; null on the last.")


class ChangeResult(_Open):
    memory: MemoryItem = Field(description="The memory as it now is (update) or as it was (delete).")
    memory_version: int = Field(description="Session memory version rebuilt from the remaining memories.")


class FoundMemory(MemoryItem):
    score: float | None = Field(None, description="Relevance within its session (higher is better).")


class SearchResult(_Open):
    query: str
    memories: list[FoundMemory] = Field(description="Best first, interleaved by rank across sessions.")


class TurnIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    speaker: str = Field(min_length=1, max_length=64, description="Who said it: user, assistant or a name.")
    text: str = Field(min_length=1, description="What was said.")


# ----------------------------------------------------------------------------------- input types

SessionArg = Annotated[str | None, Field(
    default=None, min_length=1, max_length=128,
    description="Session to use (any short name, e.g. a project or conversation id); omit for the default session.")]
TokensArg = Annotated[bool, Field(
    description="Also return every reconstructed piece with its probability (long: about 30 characters of "
                "JSON per token). Off: each slot's confidence as numbers only.")]


def _compact(slots: list[dict[str, Any]], include_tokens: bool) -> list[dict[str, Any]]:
    """Slots without their per-token lists unless asked: an agent's context is not the place for them."""
    return slots if include_tokens else [{k: v for k, v in s.items() if k != "tokens"} for s in slots]


MinConfidenceArg = Annotated[float | None, Field(
    ge=0, le=1,
    description="Flag a recalled slot whose confidence is under this as probably wrong, and give the stored "
                "turns it was written from instead of its reconstruction (each slot's `read` says which). "
                "recall_memory: none by default; answer_from_memory: 0.5 by default (0 or null: never).")]
QueryArg = Annotated[str | None, Field(
    default=None, min_length=1, max_length=MAX_QUERY_CHARS,
    description="What to look for: the `top_k` slots that best match it are recalled. Omit it "
                "(and `index`) to reconstruct every slot of the level, which can be long.")]
LevelArg = Annotated[Literal["document", "paragraph", "entity"], Field(
    description="Granularity: paragraph (one per written turn or paragraph; the usual choice), entity (short "
                "spans about one name) or document (a summary of the whole session).")]
IndexArg = Annotated[int | None, Field(
    default=None, description="Recall exactly this slot (0-based, negative counts from the end) instead of searching.")]
TopKArg = Annotated[int, Field(ge=1, le=32, description="How many slots to recall for `query` (1-32).")]


def _turn(t: Turn) -> dict[str, Any]:
    return {"index": t.index, "speaker": t.speaker, "text": t.text, "timestamp": t.timestamp}


def _item(t: Turn, **extra: Any) -> MemoryItem:
    return MemoryItem(session_id=t.session_id, **_turn(t), **extra)


IndexOfArg = Annotated[int, Field(ge=1, le=2**31 - 1, description="The memory's index in its session "
                                                                   "(`index` from list_memories or a recall's "
                                                                   "`turn_id`).")]


def _session(s: Session) -> dict[str, Any]:
    return {"session_id": s.session_id, "turn_count": s.turn_count, "created_at": s.created_at,
            "updated_at": s.updated_at, "meta": s.meta}


def _confidence(slots: list[dict[str, Any]]) -> float | None:
    vals = [(s.get("confidence") or {}).get("geo_mean") for s in slots]
    vals = [v for v in vals if v is not None]
    return min(vals) if vals else None


def _reporter(ctx: Context | None):
    """A `ChatAgent` progress callback that sends MCP progress notifications (tools run in a worker thread;
    the notification is sent on the server's event loop). A client that gave no progress token gets none."""
    if ctx is None:
        return None
    import anyio.from_thread

    def report(done: int, total: int) -> None:
        anyio.from_thread.run(ctx.report_progress, done, total, f"{done}/{total} turns written into memory")

    return report


def _tool_errors(fn: Callable[..., _T]) -> Callable[..., _T]:
    """Library errors become tool errors with their one-line message (the agent sees it and can retry)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> _T:
        try:
            return fn(*args, **kwargs)
        except LIBRARY_ERROR_TYPES as exc:  # the service's 4xx/503 errors: NotFound, Conflict, bad input...
            raise ToolError(first_line(exc)) from exc

    return wrapper


def create_server(  # noqa: C901 - the tools are closures over one engine and store; each one is small
        engine, store: MemoryStore, user_id: str = "local", *, default_session: str = DEFAULT_SESSION,
        name: str = "r3mem", lock: AbstractContextManager | None = None) -> MCPServer:
    """An `MCPServer` whose tools act on `user_id`'s sessions in `store` through `engine`.

    `lock` is held around every model call (a `threading.Lock` by default: tools run in worker threads
    and one torch model must not run in several at once). The caller owns and closes engine and store.
    """
    model_lock = lock if lock is not None else threading.Lock()
    server = MCPServer(name, title="r3mem memory", version=__version__, instructions=INSTRUCTIONS,
                       description="Reversible compressed long-term memory for an LLM agent.")

    retrievers: dict[str, Any] = {}  # one per kind, shared (agents use it under model_lock): loaded once
    memories = MemoryCache()  # decoded session memories, reused while their version stands

    def agent(session_id: str | None, *, create: bool = False, retrieval: str | None = None,
              top_k: int = 2, read: str = "text", min_confidence: float | None = DEFAULT_MIN_CONFIDENCE) -> ChatAgent:
        sid = session_id or default_session
        if create:
            ensure_session(store, user_id, sid)
        else:
            store.get_session(user_id, sid)  # unknown session: NotFound before any model work
        if retrieval is not None and retrieval not in retrievers:
            with model_lock:
                from r3mem.retrieval import make_retriever

                retrievers.setdefault(retrieval, make_retriever(retrieval))
        return ChatAgent(engine, store, user_id, sid, retrieval, top_k=top_k, lock=model_lock,
                         retriever=retrievers.get(retrieval) if retrieval else None, cache=memories, read=read,
                         min_confidence=min_confidence)

    writes = ToolAnnotations(title="Write to memory", read_only_hint=False, destructive_hint=False,
                             idempotent_hint=False, open_world_hint=False)
    reads = dict(read_only_hint=True, idempotent_hint=True, open_world_hint=False)

    @server.tool(annotations=writes)
    @_tool_errors
    def write_memory(
        text: Annotated[str, Field(min_length=1, description="The text to remember: a conversation turn, a fact "
                                                             "or a note. One paragraph per call works best.")],
        speaker: Annotated[str, Field(min_length=1, max_length=64,
                                      description="Who said it: user, assistant, a person's name, or note for "
                                                  "text nobody said.")] = "user",
        session_id: SessionArg = None,
    ) -> WriteResult:
        """Write text (or one conversation turn) into a session's long-term memory.

        The text is stored as a turn and compressed into the session memory before this returns; the
        session is created if it does not exist. Call it for every user message or fact worth keeping."""
        a = agent(session_id, create=True)
        turn, version = a.write(text, speaker)
        return WriteResult(session_id=a.session_id, turns=[_turn(turn)], memory_version=version)

    @server.tool(annotations=writes.model_copy(update={"title": "Write a conversation to memory"}))
    @_tool_errors
    def write_conversation(
        turns: Annotated[list[TurnIn], Field(min_length=1, max_length=256,
                                             description="The turns in the order they were said.")],
        session_id: SessionArg = None,
        ctx: Context | None = None,
    ) -> WriteResult:
        """Write several conversation turns into a session's memory at once (faster than one call each).

        Each turn is {"speaker": "user" | "assistant" | a name, "text": "..."}. The session is created if
        it does not exist; all turns are in memory when this returns (progress is reported as the turns
        are folded into memory, to a client that asks for it)."""
        a = agent(session_id, create=True)
        stored = a.add_turns([(t.speaker, t.text) for t in turns], progress=_reporter(ctx))
        version = a.sync()
        return WriteResult(session_id=a.session_id, turns=[_turn(t) for t in stored], memory_version=version)

    @server.tool(annotations=ToolAnnotations(title="Recall from memory", **reads))
    @_tool_errors
    def recall_memory(
        query: QueryArg = None,
        level: LevelArg = "paragraph",
        top_k: TopKArg = 1,
        index: IndexArg = None,
        session_id: SessionArg = None,
        include_tokens: TokensArg = False,
        min_confidence: MinConfidenceArg = None,
    ) -> RecallResult:
        """Reconstruct text from a session's memory: what was written about `query`.

        Returns the reconstructed text of the `top_k` best-matching slots, each with the turn it came
        from, its relevance score and the model's confidence (0-1) overall and per token. Low confidence
        (below about 0.5) means the reconstruction may be wrong. Nothing is changed."""
        a = agent(session_id)
        rec = a.recall(query, level, index, top_k, min_confidence=min_confidence).to_dict()
        rec.setdefault("confidence", _confidence(rec["slots"]))
        rec["slots"] = _compact(rec["slots"], include_tokens)
        return RecallResult(session_id=a.session_id, **rec)

    @server.tool(annotations=ToolAnnotations(title="Answer from memory", **reads))
    @_tool_errors
    def answer_from_memory(
        question: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS,
                                       description="The question to answer from memory.")],
        top_k: Annotated[int, Field(ge=1, le=32, description="How many memory slots to base the answer on.")] = 2,
        max_new_tokens: Annotated[int, Field(ge=1, le=512, description="Longest answer, in tokens.")] = 64,
        retrieval: Annotated[Literal["bm25", "embedding"] | None, Field(
            default=None, description="Also re-rank recalled slots with keyword (bm25) or embedding search; "
                                      "omit to use the memory's own ranking.")] = None,
        read: Annotated[Literal["text", "source", "cache"], Field(
            description="What the answering model reads: text (the slots found, reconstructed from memory), "
                        "source (the stored turns they came from; fastest) or cache (the slots' keys and "
                        "values, no text).")] = "text",
        session_id: SessionArg = None,
        include_tokens: TokensArg = False,
        min_confidence: MinConfidenceArg = DEFAULT_MIN_CONFIDENCE,
    ) -> AnswerResult:
        """Answer a question from a session's memory with the memory's own small language model.

        Recalls the most relevant slots, answers from them, and returns the answer with the recalled
        passages and how confident the memory was of them. Nothing is stored. For a stronger answer,
        call recall_memory and answer yourself."""
        a = agent(session_id, retrieval=retrieval, top_k=top_k, read=read, min_confidence=min_confidence)
        reply = a.respond(question, max_new_tokens).to_dict()
        reply.pop("turns", None)
        reply.setdefault("confidence", _confidence(reply["slots"]))
        reply["slots"] = _compact(reply["slots"], include_tokens)
        return AnswerResult(session_id=a.session_id, **reply)

    @server.tool(annotations=ToolAnnotations(title="Search memories in every session", **reads))
    @_tool_errors
    def search_memories(
        query: Annotated[str, Field(min_length=1, max_length=MAX_QUERY_CHARS, description="What to look for.")],
        top_k: Annotated[int, Field(ge=1, le=32, description="How many memories to return.")] = 5,
    ) -> SearchResult:
        """Find the stored memories (turns) about `query` in all of this user's sessions, by the memory's
        search keys (fast: no reconstruction); each comes with its session, index and stored text."""
        try:
            sessions = store.list_sessions(user_id)
        except NotFound:
            sessions = []
        ranked = []
        for s in sessions:
            slots = sorted(agent(s.session_id).find_sources(query, top_k), key=lambda x: -(x["score"] or 0.0))
            ranked += [(rank, -(slot["score"] or 0.0), s.session_id, slot) for rank, slot in enumerate(slots)
                       if slot["turn_id"] is not None]
        seen, found = set(), []
        for *_, sid, slot in sorted(ranked, key=lambda r: r[:2]):
            if len(found) == top_k:
                break
            if (sid, slot["turn_id"]) in seen:
                continue
            seen.add((sid, slot["turn_id"]))
            turn = store.get_turn(user_id, sid, slot["turn_id"])
            found.append(FoundMemory(session_id=sid, score=slot["score"], **_turn(turn)))
        return SearchResult(query=query, memories=found)

    @server.tool(annotations=ToolAnnotations(title="List memories", **reads))
    @_tool_errors
    def list_memories(
        session_id: SessionArg = None,
        offset: Annotated[int, Field(ge=0, description="Skip this many (paging).")] = 0,
        limit: Annotated[int, Field(ge=1, le=200, description="At most this many.")] = 50,
    ) -> MemoryListResult:
        """List a session's memories (its stored turns) in order, a page at a time, with their indices."""
        sid = session_id or default_session
        turns = store.list_turns(user_id, sid)
        page = turns[offset:offset + limit]
        more = offset + limit < len(turns)
        return MemoryListResult(session_id=sid, memories=[_item(t) for t in page], total=len(turns),
                                next_offset=offset + limit if more else None)

    @server.tool(annotations=ToolAnnotations(title="Get a memory", **reads))
    @_tool_errors
    def get_memory(index: IndexOfArg, session_id: SessionArg = None) -> MemoryItem:
        """One stored memory (turn) with the history of its edits."""
        sid = session_id or default_session
        history = [RevisionResult(rev=r.rev, speaker=r.speaker, text=r.text, timestamp=r.timestamp,
                                  replaced_at=r.replaced_at) for r in store.turn_history(user_id, sid, index)]
        return _item(store.get_turn(user_id, sid, index), history=history)

    @server.tool(annotations=ToolAnnotations(title="Update a memory", read_only_hint=False, destructive_hint=True,
                                             idempotent_hint=True, open_world_hint=False))
    @_tool_errors
    def update_memory(
        index: IndexOfArg,
        text: Annotated[str, Field(min_length=1, description="The corrected text.")],
        speaker: Annotated[str | None, Field(min_length=1, max_length=64,
                                             description="A new speaker; omit to keep it.")] = None,
        session_id: SessionArg = None,
    ) -> ChangeResult:
        """Correct a stored memory: its text (and speaker) is replaced, the old text kept in its history,
        and the session memory rebuilt so recalls give the new text."""
        turn, version = agent(session_id).edit_turn(index, text, speaker)
        return ChangeResult(memory=_item(turn), memory_version=version)

    @server.tool(annotations=ToolAnnotations(title="Delete a memory", read_only_hint=False, destructive_hint=True,
                                             idempotent_hint=False, open_world_hint=False))
    @_tool_errors
    def delete_memory(index: IndexOfArg, session_id: SessionArg = None) -> ChangeResult:
        """Forget one stored memory: it is deleted with its history and the session memory is rebuilt
        without it, so no recall or answer can return it. Cannot be undone."""
        turn, version = agent(session_id).delete_turn(index)
        return ChangeResult(memory=_item(turn), memory_version=version)

    @server.tool(annotations=ToolAnnotations(title="List sessions", **reads))
    @_tool_errors
    def list_sessions() -> SessionListResult:
        """List the sessions that have memory, oldest first, with how many turns each holds."""
        try:
            sessions = store.list_sessions(user_id)
        except NotFound:  # the user does not exist yet: nothing was ever written
            sessions = []
        return SessionListResult(sessions=[_session(s) for s in sessions])

    @server.tool(annotations=ToolAnnotations(title="Delete a session", read_only_hint=False, destructive_hint=True,
                                             idempotent_hint=True, open_world_hint=False))
    @_tool_errors
    def delete_session(
        session_id: Annotated[str, Field(min_length=1, max_length=128,
                                         description="The session to delete (see list_sessions).")],
    ) -> DeleteResult:
        """Permanently delete a session: its turns and its memory. Cannot be undone."""
        store.delete_session(user_id, session_id)
        return DeleteResult(session_id=session_id, deleted=True)

    return server


def run(server: MCPServer, transport: str = "stdio", host: str = "127.0.0.1", port: int = 8765,
        path: str = "/mcp") -> None:
    """Serve over stdio (the client starts this process) or streamable HTTP at http://host:port/path."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {TRANSPORTS}, got {transport!r}")
    if transport == "stdio":
        import anyio

        anyio.run(_run_stdio, server)
    else:
        server.run("streamable-http", host=host, port=port, streamable_http_path=path)


def screen(line: str):
    """None if the SDK can read `line` as a JSON-RPC message; else the JSON-RPC error to answer it with.

    The SDK's stdio transport drops a line it cannot validate without replying, so a client waits
    forever for the answer to a request whose `params` is a string or whose text holds a lone
    surrogate escape. Here every request with an id is answered (-32602 invalid params, -32600 invalid
    request) and an unparsable line gets -32700 with a null id, as streamable HTTP answers them;
    a malformed notification (no id) gets nothing, as JSON-RPC asks."""
    return _read_line(line)[1]


def _read_line(line: str):
    """(the JSON-RPC message on `line`, None), or (None, the error `screen` answers it with; None for a
    malformed notification)."""
    import mcp_types as types
    from pydantic import ValidationError

    try:
        return types.jsonrpc_message_adapter.validate_json(line, by_name=False), None
    except ValidationError as exc:
        reason = exc.errors()[0].get("msg", "invalid message") if exc.errors() else "invalid message"

    def error(rid, code: int, message: str):
        return types.JSONRPCError(jsonrpc="2.0", id=rid, error=types.ErrorData(code=code, message=message))

    try:
        raw = json.loads(line)
    except ValueError:
        return None, error(None, types.PARSE_ERROR, "Parse error: the line is not JSON")
    rid = raw.get("id") if isinstance(raw, dict) else None
    if isinstance(rid, bool) or not isinstance(rid, (int, str)):
        has_method = isinstance(raw, dict) and isinstance(raw.get("method"), str) and "id" not in raw
        return None, (None if has_method else error(None, types.INVALID_REQUEST, f"Invalid request: {reason}"))
    try:
        json.dumps(raw, ensure_ascii=False).encode("utf-8")  # a lone surrogate escape cannot be encoded
    except UnicodeEncodeError:
        return None, error(rid, types.INVALID_PARAMS,
                           "Invalid params: the text holds a lone surrogate (not valid Unicode)")
    if not isinstance(raw.get("method"), str):
        return None, error(rid, types.INVALID_REQUEST, f"Invalid request: {reason}")
    return None, error(rid, types.INVALID_PARAMS, f"Invalid params: {reason}")


class _ScreenedLines:
    """The lines of an async text file, those `screen` refuses answered through `reply` and held back.

    At the end of the input the iteration waits until every request passed on has its response sent
    (`answered`): the SDK cancels unfinished handlers once its input ends, so a client that writes its
    requests and closes stdin would otherwise lose the replies still being computed."""

    def __init__(self, lines) -> None:
        self._lines, self.reply = lines, None
        self._pending: set = set()  # ids of requests passed on and not yet answered
        self._idle = anyio.Event()

    def answered(self, request_id) -> None:
        self._pending.discard(request_id)
        if not self._pending:
            self._idle.set()

    def __aiter__(self):
        return self._screened()

    async def _screened(self):
        async for line in self._lines:
            if not line.strip():
                continue
            message, answer = _read_line(line)
            if answer is None:
                if hasattr(message, "method") and getattr(message, "id", None) is not None:  # a request
                    self._pending.add(message.id)
                    self._idle = anyio.Event()
                yield line
            elif self.reply is not None:
                await self.reply(answer)
        if self._pending:
            await self._idle.wait()


class _Replies:
    """The write side of the stdio transport, telling `_ScreenedLines` each response it sends."""

    def __init__(self, stream, screened: _ScreenedLines) -> None:
        self._stream, self._screened = stream, screened

    async def send(self, message) -> None:
        await self._stream.send(message)
        sent = message.message
        if getattr(sent, "id", None) is not None and not hasattr(sent, "method"):  # a response or an error
            self._screened.answered(sent.id)

    def __getattr__(self, name):
        return getattr(self._stream, name)

    async def __aenter__(self):
        await self._stream.__aenter__()
        return self

    async def __aexit__(self, *exc):
        return await self._stream.__aexit__(*exc)


async def _run_stdio(server: MCPServer) -> None:
    """`MCPServer.run("stdio")` with every line screened first (see `screen`)."""
    import sys
    from io import TextIOWrapper

    from mcp.server.stdio import stdio_server
    from mcp.shared.message import SessionMessage

    stdin = _ScreenedLines(anyio.wrap_file(TextIOWrapper(sys.stdin.buffer, encoding="utf-8", errors="replace")))
    async with stdio_server(stdin=stdin) as (read_stream, write_stream):
        stdin.reply = lambda message: write_stream.send(SessionMessage(message))
        low = server._lowlevel_server  # the SDK's own run_stdio_async does this; only the stdin differs
        await low.run(read_stream, _Replies(write_stream, stdin), low.create_initialization_options())
