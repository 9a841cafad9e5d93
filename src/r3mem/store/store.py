"""Persistent, multi-user store of sessions, turns and memories (independent of the model).

The model side hands over an opaque, self-checking memory blob plus slot metadata;
this module keeps them, together with the conversation turns, per user and session.

Backends: a file path or ``sqlite:///…`` opens embedded SQLite (WAL journal, busy
timeout, foreign keys, ``synchronous=FULL`` so a returned write survives a crash);
``postgresql://…`` opens PostgreSQL through psycopg 3.

Every public write is exactly one database transaction. Writers serialise on the
session they touch — SQLite by starting write transactions with ``BEGIN IMMEDIATE``
(one writer at a time, waiting instead of failing on lock upgrade), PostgreSQL by the
row lock that ``UPDATE sessions …`` takes — so concurrent appends never lose or
duplicate a turn index and concurrent ``put_memory`` calls see each other's versions.
Reads run in one snapshot (SQLite read transaction, PostgreSQL ``REPEATABLE READ``) so
a memory is never returned with another version's slots.
"""

import hashlib
import hmac
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from r3mem.store import curation, migrations
from r3mem.store import schema as S
from r3mem.store.backends import WRITE, db_reason, describe_failure, make_engine
from r3mem.store.records import (
    Conflict,
    NotFound,
    Session,
    SlotRecord,
    StoredMemory,
    StoreError,
    Turn,
    TurnRevision,
    User,
    check_blob,
    check_count,
    check_id,
    check_meta,
    check_session_id,
    check_slots,
    check_speaker,
    check_text,
    check_time,
)
from r3mem.store.rows import (
    allocate_turn_index,
    memory_version,
    read_memory,
    require_session,
    require_user,
    session_from_row,
    session_key,
    session_not_found,
    session_row,
    slot_values,
    token_digest,
    touch_session,
    turn_from_row,
    user_exists,
    user_from_row,
    write_slots,
)
from r3mem.store.transfer import (
    EXPORT_FORMAT,
    EXPORT_FORMAT_VERSION,
    export_memory,
    export_turn,
    insert_imported,
    parse_export,
)


class MemoryStore:
    """Users → sessions → turns and memories, in SQLite or PostgreSQL.

    ``MemoryStore(path)`` or ``MemoryStore("sqlite:///path")`` opens (creating if needed)
    an SQLite file; ``MemoryStore("postgresql://user@host/db")`` a PostgreSQL database;
    ``MemoryStore()`` the per-user default file (:meth:`default_path`). Pending schema
    migrations are applied on open. An SQLite file without write permission is opened
    read-only (also for root); writes then raise :class:`StoreError`. ``read_only=True``
    forces that for SQLite (PostgreSQL permissions are the server's business).

    Example::

        with MemoryStore("~/chats.db") as store:
            store.create_user("alice", token=secrets.token_urlsafe())
            session = store.create_session("alice")
            turn = store.append_turn("alice", session.session_id, "I moved to Lisbon.")
            version = store.put_memory("alice", session.session_id, blob, slots, through_turn=turn.index)
            memory = store.get_memory("alice", session.session_id)  # blob, version, slots

    All methods are thread-safe; several processes may share one SQLite file.

    The store does not know the model. A memory is kept as an opaque blob (the bytes of a memory
    file, `R3Mem.to_bytes`: the document state, [levels, m, d] or [L, 2, H, m, hd], and every slot
    state) with a version, the last turn it covers, and one `SlotRecord` (level, key, character
    span, turn) per slot, so slots can be listed and traced to their turn without loading tensors.

    Errors, uniformly: :class:`NotFound` for an unknown user or session (another user's
    session counts as unknown, so ids leak nothing), :class:`Conflict` for duplicates and
    stale versions, :class:`StoreError` for database failures (read-only, full, locked,
    unreachable) and :class:`ValueError` for malformed arguments, raised before any write.
    """

    def __init__(self, url_or_path: str | os.PathLike[str] | None = None, *, read_only: bool | None = None):
        target = self.default_path() if url_or_path is None else url_or_path
        self._engine, self.url = make_engine(target, read_only)
        self._closed = False
        try:
            self._migrate()
        except BaseException:
            self._engine.dispose()
            raise

    # ----------------------------------------------------------------- lifecycle

    @staticmethod
    def default_path() -> Path:
        """Default SQLite file: ``$R3MEM_HOME/store.db``, else the platform's user data dir."""
        home = os.environ.get("R3MEM_HOME")
        if home:
            return Path(home).expanduser() / "store.db"
        try:
            from platformdirs import user_data_path
        except ImportError:  # platformdirs is optional: fall back to the XDG default
            return Path.home() / ".local" / "share" / "r3mem" / "store.db"
        return user_data_path("r3mem", appauthor=False) / "store.db"

    def close(self) -> None:
        """Release all connections (SQLite then checkpoints its WAL). Idempotent."""
        if not self._closed:
            self._closed = True
            self._engine.dispose()

    def __enter__(self) -> "MemoryStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MemoryStore({self.url!r})"

    @property
    def schema_version(self) -> int:
        """The schema version of the open database."""
        with self._tx("read the schema version") as conn:
            return migrations.current_version(conn)

    def _migrate(self) -> None:
        """Bring the schema to the latest version; read-only checks first so read-only stores open."""
        with self._tx("read the schema version") as conn:
            found = migrations.current_version(conn)
        migrations.check_not_newer(found, self.url)
        if found < migrations.LATEST:
            with self._tx("upgrade the schema", write=True) as conn:
                migrations.upgrade(conn, self.url)

    @contextmanager
    def _tx(self, action: str, write: bool = False) -> Iterator[Connection]:
        """One transaction; database failures become a :class:`StoreError` naming ``action``.

        Whatever the body raises, the transaction is rolled back, so no write is ever
        half-applied.
        """
        if self._closed:
            raise StoreError(f"cannot {action}: store {self.url} is closed")
        try:
            with self._engine.connect() as conn:
                conn.execution_options(**{WRITE: write})
                if not write and conn.dialect.name == "postgresql":
                    conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    yield conn
        except IntegrityError as exc:
            raise Conflict(f"cannot {action}: it conflicts with existing data ({db_reason(exc)})") from exc
        except DBAPIError as exc:
            raise StoreError(describe_failure(exc, action, self.url)) from exc

    # ----------------------------------------------------------------- users

    def create_user(self, user_id: str, token: str | None = None) -> User:
        """Create a user; only a sha256 digest of ``token`` is stored."""
        check_id("user_id", user_id)
        digest = token_digest(token) if token else None
        now = time.time()
        with self._tx(f"create user {user_id!r}", write=True) as conn:
            if user_exists(conn, user_id):
                raise Conflict(f"user {user_id!r} already exists")
            conn.execute(insert(S.users).values(user_id=user_id, token_hash=digest, created_at=now))
        return User(user_id, now, digest is not None)

    def set_token(self, user_id: str, token: str | None) -> None:
        """Replace (or with ``None`` revoke) a user's API token."""
        digest = token_digest(token) if token else None
        with self._tx(f"set the token of user {user_id!r}", write=True) as conn:
            done = conn.execute(update(S.users).where(S.users.c.user_id == user_id).values(token_hash=digest))
            if done.rowcount == 0:
                raise NotFound(f"user {user_id!r} not found")

    def authenticate(self, token: str) -> str | None:
        """Return the user owning ``token``, or ``None``.

        The row is looked up by the token's digest, so lookup timing reveals at most
        something about a hash, not the token; the final comparison is constant-time.
        """
        if not token:
            return None
        digest = token_digest(token)
        with self._tx("authenticate a token") as conn:
            row = conn.execute(
                select(S.users.c.user_id, S.users.c.token_hash).where(S.users.c.token_hash == digest)
            ).first()
        if row is None or not hmac.compare_digest(row.token_hash, digest):
            return None
        return row.user_id

    def get_user(self, user_id: str) -> User:
        """Return the user or raise :class:`NotFound`."""
        with self._tx(f"read user {user_id!r}") as conn:
            row = conn.execute(select(S.users).where(S.users.c.user_id == user_id)).first()
        if row is None:
            raise NotFound(f"user {user_id!r} not found")
        return user_from_row(row)

    def list_users(self) -> list[User]:
        """All users, ordered by id."""
        with self._tx("list users") as conn:
            rows = conn.execute(select(S.users).order_by(S.users.c.user_id)).all()
        return [user_from_row(row) for row in rows]

    def delete_user(self, user_id: str) -> None:
        """Delete a user and, by cascade, all their sessions, turns, memories and slots."""
        with self._tx(f"delete user {user_id!r}", write=True) as conn:
            if conn.execute(delete(S.users).where(S.users.c.user_id == user_id)).rowcount == 0:
                raise NotFound(f"user {user_id!r} not found")

    # ----------------------------------------------------------------- sessions

    def create_session(
        self, user_id: str, session_id: str | None = None, meta: dict[str, Any] | None = None
    ) -> Session:
        """Create a session (random id unless given) for an existing user."""
        session_id = uuid.uuid4().hex if session_id is None else check_session_id(session_id)
        meta = check_meta(meta)
        now = time.time()
        with self._tx(f"create session {session_id!r} for user {user_id!r}", write=True) as conn:
            require_user(conn, user_id)
            if session_row(conn, user_id, session_id) is not None:
                raise Conflict(f"session {session_id!r} of user {user_id!r} already exists")
            conn.execute(
                insert(S.sessions).values(
                    user_id=user_id, session_id=session_id, created_at=now, updated_at=now, meta=meta, turn_count=0
                )
            )
        return Session(user_id, session_id, now, now, meta, 0)

    def get_session(self, user_id: str, session_id: str) -> Session:
        """Return the session, or raise :class:`NotFound` (also for another user's session)."""
        with self._tx(f"read session {session_id!r} of user {user_id!r}") as conn:
            return session_from_row(require_session(conn, user_id, session_id))

    def list_sessions(self, user_id: str) -> list[Session]:
        """The user's sessions, oldest first."""
        with self._tx(f"list sessions of user {user_id!r}") as conn:
            require_user(conn, user_id)
            rows = conn.execute(
                select(S.sessions)
                .where(S.sessions.c.user_id == user_id)
                .order_by(S.sessions.c.created_at, S.sessions.c.session_id)
            ).all()
        return [session_from_row(row) for row in rows]

    def sessions_behind(self) -> list[tuple[str, str]]:
        """(user, session) of every session with a stored turn its memory does not cover (no memory yet, a
        reset one, or one behind its last turn): a write whose catch-up was lost to a crash, a restart or a
        cancelled job. One grouped query over the turns' primary key."""
        last = (select(S.turns.c.user_id, S.turns.c.session_id, func.max(S.turns.c.idx).label("last"))
                .group_by(S.turns.c.user_id, S.turns.c.session_id).subquery())
        m = S.memories
        same = (m.c.user_id == last.c.user_id) & (m.c.session_id == last.c.session_id)
        query = (select(last.c.user_id, last.c.session_id).select_from(last.outerjoin(m, same))
                 .where((m.c.through_turn.is_(None)) | (m.c.through_turn < last.c.last))
                 .order_by(last.c.user_id, last.c.session_id))
        with self._tx("list the sessions whose memory is behind their turns") as conn:
            return [(r.user_id, r.session_id) for r in conn.execute(query).all()]

    def delete_session(self, user_id: str, session_id: str) -> None:
        """Delete a session with its turns, memory and slots."""
        with self._tx(f"delete session {session_id!r} of user {user_id!r}", write=True) as conn:
            done = conn.execute(delete(S.sessions).where(*session_key(S.sessions, user_id, session_id)))
            if done.rowcount == 0:
                raise session_not_found(user_id, session_id)

    # ----------------------------------------------------------------- turns

    def append_turn(
        self, user_id: str, session_id: str, text: str, speaker: str = "user", timestamp: float | None = None
    ) -> Turn:
        """Append a turn with the next index of its session (safe under concurrent writers)."""
        return self.append_turns(user_id, session_id, [(speaker, text)], timestamp)[0]

    def append_turns(
        self, user_id: str, session_id: str, items: Sequence[tuple[str, str]], timestamp: float | None = None,
        *, dedupe: bool = False,
    ) -> list[Turn]:
        """Append (speaker, text) turns with consecutive indices in one transaction: all or none.

        With ``dedupe``, an item that is the same turn as one already stored (same speaker, same
        `records.text_key`), or as an earlier item, is not stored again: its place in the result
        holds the existing turn (whose index is not new)."""
        items = [(check_speaker(speaker), check_text("turn text", text)) for speaker, text in items]
        stamp = time.time() if timestamp is None else check_time(timestamp)
        turns: list[Turn] = []
        with self._tx(f"append turns to session {session_id!r} of user {user_id!r}", write=True) as conn:
            if dedupe:
                touch_session(conn, user_id, session_id, stamp)  # PostgreSQL: serialise with other appenders
            for speaker, text in items:
                if dedupe and (same := curation.same_turn(conn, user_id, session_id, speaker, text)) is not None:
                    turns.append(same)
                    continue
                index = allocate_turn_index(conn, user_id, session_id, stamp)
                conn.execute(
                    insert(S.turns).values(
                        user_id=user_id, session_id=session_id, idx=index, speaker=speaker, text=text, timestamp=stamp
                    )
                )
                turns.append(Turn(user_id, session_id, index, speaker, text, stamp))
        return turns

    def list_turns(self, user_id: str, session_id: str, since: int | None = None) -> list[Turn]:
        """Turns in index order; with ``since=n`` only those with index > n (i.e. not yet in a
        memory whose ``through_turn`` is n)."""
        with self._tx(f"list turns of session {session_id!r} of user {user_id!r}") as conn:
            require_session(conn, user_id, session_id)
            query = select(S.turns).where(*session_key(S.turns, user_id, session_id)).order_by(S.turns.c.idx)
            if since is not None:
                query = query.where(S.turns.c.idx > since)
            rows = conn.execute(query).all()
        return [turn_from_row(row) for row in rows]

    def get_turn(self, user_id: str, session_id: str, index: int) -> Turn:
        """One turn (NotFound when the session has no turn with this index)."""
        index = check_count("turn index", index, low=1)
        with self._tx(f"read turn {index} of session {session_id!r} of user {user_id!r}") as conn:
            require_session(conn, user_id, session_id)
            return curation.get_turn_row(conn, user_id, session_id, index)

    def edit_turn(self, user_id: str, session_id: str, index: int, text: str, speaker: str | None = None) -> Turn:
        """Replace a turn's text (and speaker); what it replaced is kept in `turn_history`.

        The memory is invalidated in the same transaction (see `curation`): a memory that covered the turn
        is reset, so nothing recalls the old text; the next write rebuilds it from the turns."""
        index = check_count("turn index", index, low=1)
        text = check_text("turn text", text)
        speaker = None if speaker is None else check_speaker(speaker)
        now = time.time()
        with self._tx(f"edit turn {index} of session {session_id!r} of user {user_id!r}", write=True) as conn:
            touch_session(conn, user_id, session_id, now)
            turn = curation.edit_turn_row(conn, user_id, session_id, index, speaker, text, now)
            curation.invalidate_memory(conn, user_id, session_id, index, now)
        return turn

    def delete_turn(self, user_id: str, session_id: str, index: int) -> Turn:
        """Delete a turn and its history (forgotten: no export or recall returns its text once the memory is
        rebuilt, and the memory that covered it is reset in the same transaction). Returns what was deleted."""
        index = check_count("turn index", index, low=1)
        now = time.time()
        with self._tx(f"delete turn {index} of session {session_id!r} of user {user_id!r}", write=True) as conn:
            touch_session(conn, user_id, session_id, now)
            turn = curation.delete_turn_row(conn, user_id, session_id, index)
            curation.invalidate_memory(conn, user_id, session_id, index, now)
        return turn

    def turn_history(self, user_id: str, session_id: str, index: int | None = None) -> list[TurnRevision]:
        """What edits replaced: of one turn (which must exist) or, with ``index=None``, of every turn."""
        with self._tx(f"read the turn history of session {session_id!r} of user {user_id!r}") as conn:
            require_session(conn, user_id, session_id)
            if index is not None:
                curation.get_turn_row(conn, user_id, session_id, check_count("turn index", index, low=1))
            return curation.revisions(conn, user_id, session_id, index)

    def get_turns(self, user_id: str, session_id: str, indices: Sequence[int]) -> list[Turn]:
        """The turns with these indices, in index order (indices that do not exist are left out)."""
        wanted = sorted({int(i) for i in indices})
        if not wanted:
            self.get_session(user_id, session_id)  # an unknown session is NotFound all the same
            return []
        with self._tx(f"read turns of session {session_id!r} of user {user_id!r}") as conn:
            require_session(conn, user_id, session_id)
            rows = conn.execute(select(S.turns).where(*session_key(S.turns, user_id, session_id),
                                                      S.turns.c.idx.in_(wanted)).order_by(S.turns.c.idx)).all()
        return [turn_from_row(row) for row in rows]

    # ----------------------------------------------------------------- memories

    def memory_stamp(self, user_id: str, session_id: str) -> tuple[int, str] | None:
        """(version, sha256 of the blob) of the session's memory, None when none was written, without
        reading the memory: a reader holding a decoded copy with that stamp can keep using it (the
        checksum tells a recreated session's version 1 from the deleted one's)."""
        with self._tx(f"read the memory version of session {session_id!r} of user {user_id!r}") as conn:
            key = session_key(S.memories, user_id, session_id)
            row = conn.execute(select(S.memories.c.version, S.memories.c.blob_sha256).where(*key)).first()
            if row is None:
                require_session(conn, user_id, session_id)
                return None
        return int(row.version), str(row.blob_sha256)

    def put_memory(
        self,
        user_id: str,
        session_id: str,
        blob: bytes,
        slots: Sequence[SlotRecord],
        through_turn: int,
        expected_version: int | None = None,
    ) -> int:
        """Atomically replace the session's memory and slots; return the new version.

        Versions start at 1 (0 means "no memory yet"). With ``expected_version`` the write
        only succeeds if the stored version still equals it: concurrent writers thereby
        detect that they worked from a stale memory instead of silently overwriting.

        Args:
            blob: The serialized, self-checking memory file (opaque to the store).
            slots: Slot metadata in the model's order; replaces all previous slots.
            through_turn: Index of the last turn the memory covers (0: none).
            expected_version: Version the caller based its memory on, or ``None`` to overwrite.

        Raises:
            Conflict: ``expected_version`` differs from the stored version (nothing written).
            NotFound: Unknown user or session.
            ValueError: ``through_turn`` is beyond the session's last turn (nothing written).
        """
        blob = check_blob(blob)
        slot_rows = [slot_values(user_id, session_id, i, slot) for i, slot in enumerate(check_slots(slots))]
        check_count("through_turn", through_turn)
        if expected_version is not None:
            check_count("expected_version", expected_version)
        where = f"session {session_id!r} of user {user_id!r}"
        now = time.time()
        with self._tx(f"write the memory of {where}", write=True) as conn:
            touch_session(conn, user_id, session_id, now)
            count = conn.execute(
                select(S.sessions.c.turn_count).where(*session_key(S.sessions, user_id, session_id))
            ).scalar_one()
            if through_turn > count:  # the same rule an import is held to
                raise ValueError(f"through_turn {through_turn} is beyond the last turn ({count}) of {where}")
            current = memory_version(conn, user_id, session_id)
            if expected_version is not None and expected_version != (current or 0):
                raise Conflict(
                    f"memory of {where} is at version {current or 0}, not the expected {expected_version}"
                )
            version = (current or 0) + 1
            values = dict(
                blob=blob,
                blob_sha256=hashlib.sha256(blob).hexdigest(),
                version=version,
                through_turn=through_turn,
                updated_at=now,
            )
            self._write_memory_row(conn, user_id, session_id, values, replace=current is not None)
            self._write_slots(conn, slot_rows)
        return version

    def get_memory(self, user_id: str, session_id: str) -> StoredMemory | None:
        """The session's current memory, or ``None`` if none was written yet."""
        with self._tx(f"read the memory of session {session_id!r} of user {user_id!r}") as conn:
            return read_memory(conn, user_id, session_id)

    # Second half of put_memory, an attribute so that tests can inject a failure between the two halves.
    _write_slots = staticmethod(write_slots)

    @staticmethod
    def _write_memory_row(
        conn: Connection, user_id: str, session_id: str, values: dict[str, Any], replace: bool
    ) -> None:
        """Insert or overwrite the memory row (first half of :meth:`put_memory`)."""
        if replace:
            key = session_key(S.memories, user_id, session_id)
            conn.execute(update(S.memories).where(*key).values(**values))
            conn.execute(delete(S.slots).where(*session_key(S.slots, user_id, session_id)))
        else:
            conn.execute(insert(S.memories).values(user_id=user_id, session_id=session_id, **values))

    # ----------------------------------------------------------------- export / import

    def export_session(self, user_id: str, session_id: str) -> dict[str, Any]:
        """A JSON-serialisable snapshot of one session (turns, memory as base64, slots)."""
        with self._tx(f"export session {session_id!r} of user {user_id!r}") as conn:
            session = session_from_row(require_session(conn, user_id, session_id))
            turn_rows = conn.execute(
                select(S.turns).where(*session_key(S.turns, user_id, session_id)).order_by(S.turns.c.idx)
            ).all()
            history: dict[int, list[TurnRevision]] = {}
            for rev in curation.revisions(conn, user_id, session_id):
                history.setdefault(rev.index, []).append(rev)
            memory = read_memory(conn, user_id, session_id)
        return {
            "format": EXPORT_FORMAT,
            "format_version": EXPORT_FORMAT_VERSION,
            "user_id": user_id,
            "session": {k: v for k, v in asdict(session).items() if k != "user_id"},
            "turns": [export_turn(r, history.get(r.idx, [])) for r in turn_rows],
            # a reset memory (a covered turn was edited or deleted) holds nothing: the import rebuilds it
            "memory": None if memory is None or not memory.blob else export_memory(memory),
        }

    def import_session(self, user_id: str, data: dict[str, Any], session_id: str | None = None) -> Session:
        """Recreate an exported session for ``user_id`` (under ``session_id`` if given), in one transaction."""
        parsed = parse_export(data, session_id)
        session_id = check_session_id(parsed["session_id"])
        with self._tx(f"import session {session_id!r} for user {user_id!r}", write=True) as conn:
            require_user(conn, user_id)
            if session_row(conn, user_id, session_id) is not None:
                raise Conflict(f"session {session_id!r} of user {user_id!r} already exists")
            insert_imported(conn, user_id, session_id, parsed)
            return session_from_row(require_session(conn, user_id, session_id))
