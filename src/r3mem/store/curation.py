"""Curation of single turns inside a store transaction: find the same turn (deduplication), edit a turn
(its earlier text kept as a revision), delete one (with its revisions), and invalidate the memory that
read the old text.

The memory is a recurrent compression of the turns in order, so a change to turn *i* changes every
later slot as well: a memory that covers turn *i* is *reset* (its row keeps counting versions, with an
empty blob and no slots) and the next write rebuilds it from the remaining turns. A memory that does not
reach turn *i* yet only gets a new version, so a writer that read it before the change conflicts and
rereads the turns instead of writing the old text.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import Connection, delete, func, insert, select, update

from r3mem.store import schema as S
from r3mem.store.records import NotFound, Turn, TurnRevision, text_key
from r3mem.store.rows import session_key, turn_from_row

__all__ = ["same_turn", "get_turn_row", "edit_turn_row", "delete_turn_row", "revisions", "invalidate_memory"]

_EMPTY_SHA = hashlib.sha256(b"").hexdigest()


def _turn_key(user_id: str, session_id: str, index: int) -> tuple:
    return (*session_key(S.turns, user_id, session_id), S.turns.c.idx == index)


def same_turn(conn: Connection, user_id: str, session_id: str, speaker: str, text: str) -> Turn | None:
    """The session's earliest turn by `speaker` whose `text_key` equals that of `text`, if any.

    Reads the speaker's turns (one indexed range of the primary key): linear in their number, which is
    milliseconds for the 10,000-turn sessions the benchmarks write."""
    want = text_key(text)
    rows = conn.execute(
        select(S.turns).where(*session_key(S.turns, user_id, session_id), S.turns.c.speaker == speaker)
        .order_by(S.turns.c.idx)
    ).all()
    return next((turn_from_row(r) for r in rows if text_key(r.text) == want), None)


def get_turn_row(conn: Connection, user_id: str, session_id: str, index: int) -> Turn:
    row = conn.execute(select(S.turns).where(*_turn_key(user_id, session_id, index))).first()
    if row is None:
        raise NotFound(f"turn {index} of session {session_id!r} of user {user_id!r} not found")
    return turn_from_row(row)


def edit_turn_row(conn: Connection, user_id: str, session_id: str, index: int, speaker: str | None, text: str,
                  now: float) -> Turn:
    """Replace the turn's text and speaker (None: unchanged; its timestamp stays: when it was said); the
    old ones become the turn's next revision."""
    old = get_turn_row(conn, user_id, session_id, index)
    speaker = speaker or old.speaker
    rev = conn.execute(
        select(func.coalesce(func.max(S.turn_revisions.c.rev), 0)).where(
            *session_key(S.turn_revisions, user_id, session_id), S.turn_revisions.c.idx == index)
    ).scalar_one()
    conn.execute(insert(S.turn_revisions).values(
        user_id=user_id, session_id=session_id, idx=index, rev=int(rev) + 1, speaker=old.speaker, text=old.text,
        timestamp=old.timestamp, replaced_at=now))
    conn.execute(update(S.turns).where(*_turn_key(user_id, session_id, index)).values(speaker=speaker, text=text))
    return Turn(user_id, session_id, index, speaker, text, old.timestamp)


def delete_turn_row(conn: Connection, user_id: str, session_id: str, index: int) -> Turn:
    """Delete the turn; its revisions go with it (foreign key cascade)."""
    old = get_turn_row(conn, user_id, session_id, index)
    conn.execute(delete(S.turn_revisions).where(*session_key(S.turn_revisions, user_id, session_id),
                                                S.turn_revisions.c.idx == index))  # SQLite without FK pragma too
    conn.execute(delete(S.turns).where(*_turn_key(user_id, session_id, index)))
    return old


def revisions(conn: Connection, user_id: str, session_id: str, index: int | None = None) -> list[TurnRevision]:
    """The session's turn revisions (of one turn if `index` is given), by turn then revision."""
    table = S.turn_revisions
    query = select(table).where(*session_key(table, user_id, session_id)).order_by(table.c.idx, table.c.rev)
    if index is not None:
        query = query.where(table.c.idx == index)
    return [TurnRevision(r.idx, r.rev, r.speaker, r.text, r.timestamp, r.replaced_at)
            for r in conn.execute(query).all()]


def invalidate_memory(conn: Connection, user_id: str, session_id: str, index: int, now: float) -> None:
    """After turn `index` changed: reset a memory that covers it, else give the memory a new version.

    With no memory row yet, an empty one is inserted at version 1, so a first write that began before the
    change conflicts as well."""
    key = session_key(S.memories, user_id, session_id)
    row = conn.execute(select(S.memories.c.version, S.memories.c.through_turn).where(*key)).first()
    if row is None:
        conn.execute(insert(S.memories).values(user_id=user_id, session_id=session_id, blob=b"",
                                               blob_sha256=_EMPTY_SHA, version=1, through_turn=0, updated_at=now))
        return
    if row.through_turn < index:
        conn.execute(update(S.memories).where(*key).values(version=row.version + 1, updated_at=now))
        return
    conn.execute(update(S.memories).where(*key).values(blob=b"", blob_sha256=_EMPTY_SHA, version=row.version + 1,
                                                       through_turn=0, updated_at=now))
    conn.execute(delete(S.slots).where(*session_key(S.slots, user_id, session_id)))
