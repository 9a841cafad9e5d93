"""Request and response bodies of the HTTP service (they make up its OpenAPI schema)."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from r3mem.store import SESSION_ID_PATTERN, SESSION_ID_RULE
from r3mem.text import MAX_QUERY_CHARS


def _utc(value: Any) -> Any:
    """Seconds since the epoch as an aware UTC datetime (pydantic's own conversion would read values past
    2e10 as milliseconds); a datetime or string is left to pydantic."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, timezone.utc)
    return value


# Times are ISO 8601 in UTC ("2026-12-07T01:21:10.123456Z"); the store keeps seconds since the epoch (years
# 1-9999, `store.records.MIN_TIME..MAX_TIME`). Exports keep the seconds (a file format, round-tripped as stored).
Time = Annotated[datetime, BeforeValidator(_utc)]

Retrieval = Literal["bm25", "embedding"] | None
Select = Literal["hybrid", "dense", "lexical", "likelihood"] | None
Read = Literal["text", "source", "cache"]
READ_HELP = ("What the reader is given: text (the slots found, expanded back from memory), source (the stored "
             "turns they were written from: no expansion, fastest) or cache (the slots' keys and values).")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorOut(BaseModel):
    error: str = Field(description="Machine-readable kind: not_found, unauthorized, invalid_request, …")
    message: str = Field(description="One-line human-readable explanation.")


class UserIn(_Strict):
    user_id: str = Field(min_length=1, max_length=128, description="New user's id.")


class UserOut(BaseModel):
    user_id: str
    token: str = Field(description="The user's API token; shown only this once.")


META_RULE = "Free-form JSON object: at most 32 levels deep and 64 KiB as UTF-8 JSON, valid Unicode, finite numbers."


class SessionIn(_Strict):
    session_id: str | None = Field(None, pattern=SESSION_ID_PATTERN,
                                      description=f"Omit for a random id. {SESSION_ID_RULE}.")
    meta: dict[str, Any] = Field(default_factory=dict, description=META_RULE)


class MemoryInfo(BaseModel):
    version: int = Field(description="Increases with every memory write (0: nothing written yet).")
    through_turn: int = Field(description="Index of the last turn the memory covers.")
    slots: int
    bytes: int


class DocumentState(BaseModel):
    shape: list[int] = Field(
        description="Tensor shape of the document memory, e.g. [layers, 2, kv_heads, k, head_dim].")
    dtype: str
    bytes: int = Field(description="Bytes the document state is stored in (its codes when quantized).")
    n_tokens: int = Field(description="Tokens folded into the document memory.")
    n_segments: int
    snapshots: int = Field(0, description="Document states kept every `snapshot_every` segments, so that a rebuild "
                                          "after an edit refolds only from the snapshot before the change.")
    snapshot_bytes: int = 0


class SlotDetail(BaseModel):
    level: Literal["paragraph", "entity"]
    index: int = Field(description="Position within its level: `POST /recall` with this level and index recalls it.")
    key: str
    start: int = Field(description="Character span of the source in the session's turn stream.")
    end: int
    turn_id: int | None = None
    n_tokens: int = Field(description="Source tokens compressed into this slot.")
    mem_tokens: int = Field(description="Memory tokens the slot holds.")
    source: str = Field(description="The text the slot was written from.")
    source_tokens: list[str] = Field(description="`source` as the tokenizer splits it.")


class MemoryDetail(BaseModel):
    version: int
    through_turn: int
    bytes: int = Field(description="Size of the stored memory file.")
    memory_mode: str
    document: DocumentState
    state_bytes: int = Field(description="Bytes of tensor state held (document state, its snapshots and distinct "
                                         "slot states).")
    paragraphs: int
    entities: int
    slots: list[SlotDetail]


class SessionOut(BaseModel):
    session_id: str
    created_at: Time
    updated_at: Time
    meta: dict[str, Any]
    turn_count: int
    memory: MemoryInfo | None = None


class SessionList(BaseModel):
    sessions: list[SessionOut]


class TurnOut(BaseModel):
    index: int = Field(description="1-based position of the turn in its session.")
    speaker: str
    text: str
    timestamp: Time = Field(description="When it was written (ISO 8601, UTC).")


class TurnList(BaseModel):
    turns: list[TurnOut]


class RevisionOut(BaseModel):
    rev: int = Field(description="1 for the turn's first edit, and so on.")
    speaker: str
    text: str = Field(description="The text this edit replaced.")
    timestamp: Time = Field(description="When that text was said.")
    replaced_at: Time


class TurnDetail(TurnOut):
    history: list[RevisionOut] = Field(description="What edits of this turn replaced, oldest first.")


class WriteIn(_Strict):
    text: str = Field(min_length=1, description="The turn's text, written into the session memory.")
    speaker: str = Field("user", min_length=1, max_length=64)
    dedupe: bool = Field(True, description="A turn that repeats a stored one (same speaker; same text up to case, "
                                           "spacing and end punctuation) is not stored again: the stored one is "
                                           "returned.")


class TurnEditIn(_Strict):
    text: str = Field(min_length=1, description="The turn's new text; the old one is kept in its history.")
    speaker: str | None = Field(None, min_length=1, max_length=64, description="A new speaker (omit: unchanged).")


JobState = Literal["queued", "running", "done", "failed", "cancelled"]


class JobOut(BaseModel):
    job_id: str
    session_id: str
    kind: Literal["write", "edit", "delete", "sync"]
    state: JobState
    done: int = Field(description="Turns folded into memory so far.")
    total: int | None = Field(None, description="Turns to fold (null until the job starts).")
    memory_version: int | None = Field(None, description="Committed version covering every turn, once done.")
    turn_index: int | None = None
    error: str | None = None
    created_at: Time
    finished_at: Time | None = None


class JobList(BaseModel):
    jobs: list[JobOut]


class WriteOut(BaseModel):
    turn: TurnOut = Field(description="The turn stored (write), edited (PATCH) or deleted (DELETE).")
    memory_version: int | None = Field(
        description="Memory version that covers every turn (committed when returned); null when a job folds them.")
    job: JobOut | None = Field(None, description="With 202: the background job bringing the memory up to date.")


# `agent.DEFAULT_MIN_CONFIDENCE`, written out so that the client need not import the model stack (a test
# checks that they agree)
DEFAULT_MIN_CONFIDENCE = 0.5
MIN_CONFIDENCE_HELP = ("Flag a recalled slot as probably wrong when its confidence (p_exact where calibrated, else "
                       "geo_mean) is under this, and give its stored turns' text instead of its reconstruction. "
                       "recall: none by default; answer and chat: 0.5 by default (0 or null: never).")


class RecallIn(_Strict):
    query: str | None = Field(None, min_length=1, max_length=MAX_QUERY_CHARS,
                              description="Find the slots that best match this query.")
    level: Literal["document", "paragraph", "entity"] = "paragraph"
    index: int | None = Field(None, description="Recall this slot instead of searching.")
    top_k: int = Field(1, ge=1, le=32)
    select: Select = Field(None, description="How slots are found: hybrid (default: the slots' dense and lexical "
                                             "keys), dense, lexical, or likelihood (the model over every slot).")
    min_confidence: float | None = Field(None, ge=0, le=1, description=MIN_CONFIDENCE_HELP)


class Confidence(BaseModel):
    geo_mean: float | None = Field(None, description="Geometric mean of the recalled tokens' probabilities (0-1).")
    min: float | None = Field(None, description="Probability of the least likely recalled token (0-1).")
    p_exact: float | None = Field(None, description="Calibrated probability that the slot's text is exactly what was "
                                                    "written (null: the adapter has no calibration).")


class TokenOut(BaseModel):
    text: str = Field(description="A piece of the reconstructed text (the pieces concatenate to the slot's text).")
    p: float = Field(description="Probability the memory's decoder gave this piece when reconstructing it.")


class SlotOut(BaseModel):
    """One recalled slot (the HTTP service's and the MCP server's recall and answer results)."""

    level: str = Field(description="document, paragraph or entity.")
    key: str = Field(description="Slot id within the session memory, e.g. p0.")
    start: int = Field(description="Character offset where the slot's source text starts.")
    end: int
    score: float | None = Field(None, description="Relevance to the query (higher is better; the key search's fused "
                                                  "rank score, or a mean log-probability with select=likelihood).")
    text: str | None = Field(None, description="This slot's reconstructed text.")
    turn_id: int | None = Field(None, description="Index of the turn the slot's text came from.")
    confidence: Confidence | None = Field(None, description="How sure the decoder was of this slot's reconstruction.")
    tokens: list[TokenOut] | None = Field(None, description="The reconstruction piece by piece, with probabilities.")
    probably_wrong: bool | None = Field(None, description="Under the request's min_confidence (null: none given).")
    read: str | None = Field(None, description="What `text` is: expansion (reconstructed from memory), source (the "
                                               "stored turns': the read asked for it, or the expansion was under "
                                               "min_confidence) or cache (no text: the reader read the slot's cache).")


class RecallOut(BaseModel):
    text: str
    level: str
    confidence: float | None = Field(None, description="The least confident slot's geometric-mean token probability.")
    probably_wrong: bool | None = Field(None, description="Some slot is under min_confidence (null: none given).")
    slots: list[SlotOut]


class AnswerIn(_Strict):
    question: str = Field(min_length=1, max_length=MAX_QUERY_CHARS)
    top_k: int = Field(2, ge=1, le=32)
    max_new_tokens: int = Field(64, ge=1, le=512)
    retrieval: Retrieval = Field(None, description="Re-rank recalled slots with bm25 or embedding retrieval.")
    read: Read = Field("text", description=READ_HELP)
    min_confidence: float | None = Field(DEFAULT_MIN_CONFIDENCE, ge=0, le=1, description=MIN_CONFIDENCE_HELP)


class ChatIn(_Strict):
    text: str = Field(min_length=1, description="The user's message; stored as a turn, then answered.")
    top_k: int = Field(2, ge=1, le=32)
    max_new_tokens: int = Field(64, ge=1, le=512)
    retrieval: Retrieval = None
    read: Read = Field("text", description=READ_HELP)
    min_confidence: float | None = Field(DEFAULT_MIN_CONFIDENCE, ge=0, le=1, description=MIN_CONFIDENCE_HELP)


class ReplyOut(BaseModel):
    text: str
    recalled: str = Field(description="The memory text the answer was conditioned on.")
    slots: list[SlotOut]


class ChatOut(ReplyOut):
    turns: list[TurnOut] = Field(description="Turns stored: the user's message and (if non-empty) the reply.")
