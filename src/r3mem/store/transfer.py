"""Export and import of one session: the `r3mem.session` JSON format, validated in full
(`parse_export`) before an import touches the database.
"""

import base64
import binascii
import hashlib
import time
from dataclasses import asdict
from typing import Any

from sqlalchemy import Connection, insert

from r3mem.store import schema as S
from r3mem.store.records import (
    InvalidExport,
    SlotRecord,
    StoredMemory,
    TurnRevision,
    check_count,
    check_id,
    check_meta,
    check_slots,
    check_speaker,
    check_text,
    check_time,
    short,
)
from r3mem.store.rows import slot_values, write_slots

EXPORT_FORMAT = "r3mem.session"

EXPORT_FORMAT_VERSION = 1


def export_memory(memory: StoredMemory) -> dict[str, Any]:
    return {
        "blob_b64": base64.b64encode(memory.blob).decode("ascii"),
        "blob_sha256": hashlib.sha256(memory.blob).hexdigest(),
        "version": memory.version,
        "through_turn": memory.through_turn,
        "updated_at": memory.updated_at,
        "slots": [asdict(slot) for slot in memory.slots],
    }


def parse_export(data: Any, session_id: str | None = None) -> dict[str, Any]:
    """Validate an export fully before touching the database; errors name what is wrong.

    Returns the parsed export with the id it will be imported under (``session_id`` if given,
    else the exported one). Raises :class:`InvalidExport`, one line, for any malformed input.
    """
    try:
        parsed = _parse_export(data)
        if session_id is None:
            session_id = parsed["session"].get("session_id")
            if session_id is None:
                raise ValueError("session.session_id is missing: give the id to import under")
        check_id("session_id", session_id)
    except (AttributeError, KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise InvalidExport(f"not a valid r3mem session export: {_reason_of(exc)}") from None
    return dict(parsed, session_id=session_id)


def _reason_of(exc: Exception) -> str:
    """What was wrong, one line; a bare KeyError names the missing field."""
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}" if exc.args else "missing field"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _parse_export(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise TypeError(f"an export is a JSON object, got {type(data).__name__}")
    if data.get("format") != EXPORT_FORMAT:
        raise ValueError(f"format is {short(data.get('format'))}, expected {EXPORT_FORMAT!r}")
    if data.get("format_version") != EXPORT_FORMAT_VERSION:
        raise ValueError(f"format_version {short(data.get('format_version'))} is not supported")
    if not isinstance(data.get("session"), dict):
        raise ValueError("session must be an object")
    session = dict(data["session"])
    session["meta"] = check_meta(session.get("meta"))
    if session.get("created_at") is not None:
        session["created_at"] = check_time(session["created_at"], "session.created_at")
    if not isinstance(data.get("turns"), list):
        raise ValueError("turns must be a list")
    turns = [_parse_turn(i, t) for i, t in enumerate(data["turns"])]
    indices = [t["idx"] for t in turns]
    if len(set(indices)) != len(indices):
        raise ValueError("turn indices are not unique")
    turn_count = max([check_count("session.turn_count", session.get("turn_count", 0)), *indices])
    memory = None if data.get("memory") is None else _parse_memory(data["memory"])
    if memory is not None and memory["through_turn"] > turn_count:
        # Later writes would believe the memory already covers their turns and never write them.
        raise ValueError(f"memory.through_turn {memory['through_turn']} is beyond the last turn ({turn_count})")
    return {"session": session, "turns": turns, "memory": memory, "turn_count": turn_count}


def export_turn(row: Any, history: list[TurnRevision]) -> dict[str, Any]:
    """A turn as an export holds it; `history` (what edits replaced, oldest first) only when it has one."""
    out = {"index": row.idx, "speaker": row.speaker, "text": row.text, "timestamp": row.timestamp}
    if history:
        out["history"] = [{"speaker": r.speaker, "text": r.text, "timestamp": r.timestamp,
                           "replaced_at": r.replaced_at} for r in history]
    return out


def _parse_turn(i: int, turn: Any) -> dict[str, Any]:
    if not isinstance(turn, dict):
        raise ValueError(f"turns[{i}] must be an object")
    index = check_count(f"turns[{i}].index", turn.get("index"), low=1)
    speaker = check_speaker(turn.get("speaker"))
    text = check_text(f"turns[{i}].text", turn.get("text"))
    stamp = check_time(turn.get("timestamp"), f"turns[{i}].timestamp")
    history = turn.get("history", [])
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise ValueError(f"turns[{i}].history must be a list of objects")
    revs = [{"rev": r + 1, "speaker": check_speaker(h.get("speaker")),
             "text": check_text(f"turns[{i}].history[{r}].text", h.get("text")),
             "timestamp": check_time(h.get("timestamp"), f"turns[{i}].history[{r}].timestamp"),
             "replaced_at": check_time(h.get("replaced_at"), f"turns[{i}].history[{r}].replaced_at")}
            for r, h in enumerate(history)]
    return {"idx": index, "speaker": speaker, "text": text, "timestamp": stamp, "history": revs}


def _parse_memory(memory: Any) -> dict[str, Any]:
    if not isinstance(memory, dict):
        raise ValueError("memory must be an object or null")
    if not isinstance(memory.get("blob_b64"), str):
        raise ValueError("memory.blob_b64 must be a base64 str")
    blob = base64.b64decode(memory["blob_b64"], validate=True)
    if "blob_sha256" in memory and hashlib.sha256(blob).hexdigest() != memory["blob_sha256"]:
        raise ValueError("memory blob does not match its sha256")
    if not isinstance(memory.get("slots"), list) or not all(isinstance(x, dict) for x in memory["slots"]):
        raise ValueError("memory.slots must be a list of objects")
    slots = list(check_slots([SlotRecord(**slot) for slot in memory["slots"]]))
    version = check_count("memory.version", memory.get("version"), low=1)
    through = check_count("memory.through_turn", memory.get("through_turn"))
    stamp = memory.get("updated_at")
    return {
        "blob": blob,
        "version": version,
        "through_turn": through,
        "updated_at": time.time() if stamp is None else check_time(stamp, "memory.updated_at"),
        "slots": slots,
    }


def insert_imported(conn: Connection, user_id: str, session_id: str, parsed: dict[str, Any]) -> None:
    """Insert a parsed export (session, turns, memory, slots) inside the caller's transaction."""
    session, now = parsed["session"], time.time()
    conn.execute(
        insert(S.sessions).values(
            user_id=user_id,
            session_id=session_id,
            created_at=session.get("created_at") or now,
            updated_at=now,
            meta=session["meta"],
            turn_count=parsed["turn_count"],
        )
    )
    owner = {"user_id": user_id, "session_id": session_id}
    if parsed["turns"]:
        conn.execute(insert(S.turns), [{k: v for k, v in t.items() if k != "history"} | owner
                                       for t in parsed["turns"]])
    revisions = [dict(h, idx=t["idx"]) | owner for t in parsed["turns"] for h in t["history"]]
    if revisions:
        conn.execute(insert(S.turn_revisions), revisions)
    memory = parsed["memory"]
    if memory is not None:
        blob = memory["blob"]
        conn.execute(
            insert(S.memories).values(
                user_id=user_id,
                session_id=session_id,
                blob=blob,
                blob_sha256=hashlib.sha256(blob).hexdigest(),
                version=memory["version"],
                through_turn=memory["through_turn"],
                updated_at=memory["updated_at"],
            )
        )
        slot_rows = [slot_values(user_id, session_id, i, s) for i, s in enumerate(memory["slots"])]
        write_slots(conn, slot_rows)
