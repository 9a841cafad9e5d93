"""Row-level helpers of the store: session keys, existence checks, turn-index allocation, memory
reads (checksum verified), slot rows, and conversions from rows to records. They run inside the
caller's transaction (`conn`).
"""

import hashlib
from typing import Any

from sqlalchemy import Connection, insert, select, update

from r3mem.store import schema as S
from r3mem.store.records import NotFound, Session, SlotRecord, StoredMemory, StoreError, Turn, User


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def session_key(table: Any, user_id: str, session_id: str) -> tuple[Any, Any]:
    """WHERE clause selecting one session's rows; always scoped by user as well."""
    return (table.c.user_id == user_id, table.c.session_id == session_id)


def session_not_found(user_id: str, session_id: str) -> NotFound:
    return NotFound(f"session {session_id!r} not found for user {user_id!r}")


def user_exists(conn: Connection, user_id: str) -> bool:
    return conn.execute(select(S.users.c.user_id).where(S.users.c.user_id == user_id)).first() is not None


def require_user(conn: Connection, user_id: str) -> None:
    if not user_exists(conn, user_id):
        raise NotFound(f"user {user_id!r} not found")


def session_row(conn: Connection, user_id: str, session_id: str) -> Any:
    return conn.execute(select(S.sessions).where(*session_key(S.sessions, user_id, session_id))).first()


def require_session(conn: Connection, user_id: str, session_id: str) -> Any:
    row = session_row(conn, user_id, session_id)
    if row is None:
        raise session_not_found(user_id, session_id)
    return row


def touch_session(conn: Connection, user_id: str, session_id: str, now: float) -> None:
    """Update the session row: on PostgreSQL this row lock serialises writers of the session."""
    key = session_key(S.sessions, user_id, session_id)
    done = conn.execute(update(S.sessions).where(*key).values(updated_at=now))
    if done.rowcount == 0:
        raise session_not_found(user_id, session_id)


def allocate_turn_index(conn: Connection, user_id: str, session_id: str, now: float) -> int:
    """Increment the session's turn counter in place and return it.

    The increment is a single UPDATE, so the read that follows sees a value no other
    transaction can also obtain (it holds the row or database write lock until commit).
    """
    key = session_key(S.sessions, user_id, session_id)
    done = conn.execute(update(S.sessions).where(*key).values(turn_count=S.sessions.c.turn_count + 1, updated_at=now))
    if done.rowcount == 0:
        raise session_not_found(user_id, session_id)
    return int(conn.execute(select(S.sessions.c.turn_count).where(*key)).scalar_one())


def memory_version(conn: Connection, user_id: str, session_id: str) -> int | None:
    return conn.execute(
        select(S.memories.c.version).where(*session_key(S.memories, user_id, session_id))
    ).scalar_one_or_none()


def read_memory(conn: Connection, user_id: str, session_id: str) -> StoredMemory | None:
    """Memory row and slots read in the caller's (snapshot) transaction; checksum verified."""
    row = conn.execute(select(S.memories).where(*session_key(S.memories, user_id, session_id))).first()
    if row is None:
        require_session(conn, user_id, session_id)
        return None
    slot_rows = conn.execute(
        select(S.slots).where(*session_key(S.slots, user_id, session_id)).order_by(S.slots.c.ordinal)
    ).all()
    blob = bytes(row.blob)
    if hashlib.sha256(blob).hexdigest() != row.blob_sha256:
        raise StoreError(f"memory of session {session_id!r} of user {user_id!r} is corrupted (checksum mismatch)")
    slots = [_slot(r) for r in slot_rows]
    return StoredMemory(user_id, session_id, blob, row.version, row.through_turn, slots, row.updated_at)


def slot_values(user_id: str, session_id: str, ordinal: int, slot: SlotRecord) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "session_id": session_id,
        "ordinal": ordinal,
        "level": slot.level,
        "slot_key": slot.key,
        "start_pos": slot.start,
        "end_pos": slot.end,
        "turn_id": slot.turn_id,
        "text": slot.text,
        "timestamp": slot.timestamp,
    }


def user_from_row(row: Any) -> User:
    return User(row.user_id, row.created_at, row.token_hash is not None)


def session_from_row(row: Any) -> Session:
    return Session(row.user_id, row.session_id, row.created_at, row.updated_at, dict(row.meta or {}), row.turn_count)


def turn_from_row(row: Any) -> Turn:
    return Turn(row.user_id, row.session_id, row.idx, row.speaker, row.text, row.timestamp)


def _slot(row: Any) -> SlotRecord:
    return SlotRecord(row.level, row.slot_key, row.start_pos, row.end_pos, row.turn_id, row.text, row.timestamp)


def write_slots(conn: Connection, slot_rows: list[dict[str, Any]]) -> None:
    """Insert the new slots (second half of `MemoryStore.put_memory`; one executemany)."""
    if slot_rows:
        conn.execute(insert(S.slots), slot_rows)
