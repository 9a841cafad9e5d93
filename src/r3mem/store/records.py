"""The store's errors, the records it returns and the validators of what it is given.

Records are frozen values (`User`, `Session`, `Turn`, `SlotRecord`, `StoredMemory`); the `_check_*`
functions refuse bad input with one-line messages before any database work.
"""

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from r3mem.store import schema as S

MAX_INT = 2**31 - 1
"""Largest turn index, version or slot offset: PostgreSQL's INTEGER is 32-bit (SQLite's is wider)."""

MAX_META_DEPTH = 32
"""Deepest nesting of a session's ``meta`` (JSON objects and arrays)."""

MAX_META_BYTES = 64 * 1024
"""Largest ``meta`` as UTF-8 JSON."""



class StoreError(Exception):
    """Any failure of the store that callers may want to report as one line."""



class NotFound(StoreError):
    """The user or session does not exist (or belongs to another user)."""



class Conflict(StoreError):
    """The write conflicts with existing data or a concurrent writer (e.g. stale version)."""



class SchemaTooNew(StoreError):
    """The database was written by a newer r3mem whose schema this code does not know."""



class InvalidExport(ValueError, StoreError):
    """An export to import is malformed; nothing was written. A ValueError first (a 400 in the
    service), a StoreError for callers that catch every store failure."""



@dataclass(frozen=True)
class User:
    """A user; the API token itself is never stored or returned."""

    user_id: str
    created_at: float
    has_token: bool



@dataclass(frozen=True)
class Session:
    """A conversation; ``turn_count`` is the index of its last turn (0 when empty)."""

    user_id: str
    session_id: str
    created_at: float
    updated_at: float
    meta: dict[str, Any]
    turn_count: int



@dataclass(frozen=True)
class Turn:
    """One utterance; ``index`` is 1-based and increasing within the session (a deleted turn leaves a gap)."""

    user_id: str
    session_id: str
    index: int
    speaker: str
    text: str
    timestamp: float



@dataclass(frozen=True)
class TurnRevision:
    """What an edit of a turn replaced: its speaker and text then, when it was said (``timestamp``) and
    when the edit replaced it (``replaced_at``); ``rev`` counts the turn's edits from 1."""

    index: int
    rev: int
    speaker: str
    text: str
    timestamp: float
    replaced_at: float



@dataclass(frozen=True)
class SlotRecord:
    """Metadata of one memory slot as produced by the model side (stored verbatim)."""

    level: str
    key: str
    start: int
    end: int
    turn_id: int | None = None
    text: str | None = None
    timestamp: float | None = None



@dataclass(frozen=True)
class StoredMemory:
    """The current memory of a session: the blob, its version, coverage and slots. An empty blob (with
    ``through_turn`` 0 and no slots) is a reset memory: a turn it covered was edited or deleted, and the
    next write rebuilds it from the turns (see `curation`)."""

    user_id: str
    session_id: str
    blob: bytes
    version: int
    through_turn: int
    slots: list[SlotRecord] = field(default_factory=list)
    updated_at: float = 0.0



def text_key(text: str) -> str:
    """What two turns must share to be the same turn for deduplication: the text after Unicode
    compatibility normalisation (NFKC), case folding, whitespace runs collapsed to one space and
    trailing sentence punctuation dropped ("I moved to Lisbon." == "i moved  to lisbon")."""
    import unicodedata

    folded = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return folded.rstrip(".!?;,… ").strip()


def check_text(kind: str, value: object) -> str:
    """A str the databases can store: UTF-8 encodable, so no lone surrogate (SQLite would fail
    mid-transaction, and a stored one breaks every JSON response that includes it)."""
    if not isinstance(value, str):
        raise ValueError(f"{kind} must be a str, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{kind} is not valid Unicode (lone surrogate at character {exc.start})") from None
    return value



def check_id(kind: str, value: object) -> None:
    """Ids are non-empty strings that fit the column; refuse anything else early and clearly."""
    if not isinstance(value, str) or not value or len(value) > S.ID_LENGTH:
        raise ValueError(f"{kind} must be a non-empty str of at most {S.ID_LENGTH} characters, got {value!r}")
    check_text(kind, value)


SESSION_ID_PATTERN = r"^[A-Za-z0-9_~-][A-Za-z0-9._~-]{0,127}$"
SESSION_ID_RULE = ("1-128 characters from A-Z a-z 0-9 - . _ ~ (URL-safe, so every id round-trips in a path), "
                   "not starting with '.'")


def check_session_id(value: object) -> str:
    """The one rule for a new session's id, whatever door it comes through (CLI, Python, HTTP, MCP,
    import): a session the store holds can always be named in a URL path, listed, read and deleted."""
    import re

    if not isinstance(value, str) or not re.fullmatch(SESSION_ID_PATTERN, value):
        shown = value[:40] if isinstance(value, str) else value
        raise ValueError(f"session_id {shown!r} is not allowed: {SESSION_ID_RULE}")
    return value



def check_speaker(speaker: object) -> str:
    if not isinstance(speaker, str) or not speaker or len(speaker) > 64:
        raise ValueError(f"speaker must be a non-empty str of at most 64 characters, got {speaker!r}")
    return check_text("speaker", speaker)



# Seconds since the epoch of 0001-01-01 and 9999-12-31T23:59:59 UTC: what an ISO 8601 date can say
# (the service and MCP give times in ISO 8601).
MIN_TIME, MAX_TIME = -62135596800.0, 253402300799.0


def check_time(value: object, kind: str = "timestamp") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{kind} must be a finite number of seconds (UTC), got {value!r}")
    if not MIN_TIME <= value <= MAX_TIME:
        raise ValueError(f"{kind} must be between the years 1 and 9999 (seconds {MIN_TIME:.0f}..{MAX_TIME:.0f}), "
                         f"got {short(value)}")
    return float(value)



def check_count(kind: str, value: object, low: int = 0) -> int:
    """An int that fits every backend's INTEGER column (PostgreSQL's is 32-bit)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_INT:
        raise ValueError(f"{kind} must be an int in {low}..{MAX_INT}, got {short(value)}")
    return value



def short(value: object) -> str:
    """repr of a value, cut so that a huge number or string still gives a one-line message."""
    text = (
        repr(value)
        if not isinstance(value, int) or abs(value) < 10**30
        else f"{str(value)[:12]}… ({len(str(value))} digits)"
    )
    return text if len(text) <= 60 else text[:57] + "..."



def _json_depth(value: Any) -> int:
    """Nesting depth of a JSON value (iterative: a deep value must not exhaust the stack)."""
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            if depth > MAX_META_DEPTH:
                return depth
            todo.extend((v, depth + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest



def check_meta(meta: dict[str, Any] | None) -> dict[str, Any]:
    """Session metadata must survive a JSON round trip, identically on both backends, and every
    response that carries it must serialise: bounded depth and size, valid Unicode, finite numbers."""
    meta = {} if meta is None else meta
    if not isinstance(meta, dict):
        raise ValueError(f"meta must be a dict, got {type(meta).__name__}")
    if _json_depth(meta) > MAX_META_DEPTH:
        raise ValueError(f"meta is nested deeper than {MAX_META_DEPTH} levels")
    try:
        encoded = json.dumps(meta, allow_nan=False, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"meta is not valid Unicode (lone surrogate at character {exc.start})") from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"meta must be JSON-serialisable: {str(exc).splitlines()[0]}") from None
    if len(encoded) > MAX_META_BYTES:
        raise ValueError(f"meta is {len(encoded)} bytes as JSON, more than the limit of {MAX_META_BYTES}")
    return json.loads(encoded)



def check_blob(blob: object) -> bytes:
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise ValueError(f"memory blob must be bytes, got {type(blob).__name__}")
    if not blob:
        raise ValueError("memory blob is empty (an empty blob marks a reset memory in the store)")
    return bytes(blob)



def check_slots(slots: Sequence[SlotRecord]) -> Sequence[SlotRecord]:
    """Validate slot records so that a bad slot fails before the transaction, not inside it."""
    for i, slot in enumerate(slots):
        if not isinstance(slot, SlotRecord):
            raise ValueError(f"slot {i} must be a SlotRecord, got {type(slot).__name__}")
        if not isinstance(slot.level, str) or not slot.level or len(slot.level) > 64:
            raise ValueError(f"slot {i} level must be a non-empty str of at most 64 characters")
        check_text(f"slot {i} level", slot.level)
        check_text(f"slot {i} key", slot.key)
        check_count(f"slot {i} start", slot.start)
        check_count(f"slot {i} end", slot.end)
        if slot.turn_id is not None:
            check_count(f"slot {i} turn_id", slot.turn_id)
        if slot.text is not None:
            check_text(f"slot {i} text", slot.text)
        if slot.timestamp is not None:
            check_time(slot.timestamp, f"slot {i} timestamp")
    return slots
