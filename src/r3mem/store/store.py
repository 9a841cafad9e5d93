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

import base64
import binascii
import hashlib
import hmac
import json
import math
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, delete, event, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError
from sqlalchemy.pool import QueuePool

from . import migrations
from . import schema as S

BUSY_TIMEOUT_S = 30.0
MAX_INT = 2**31 - 1
"""Largest turn index, version or slot offset: PostgreSQL's INTEGER is 32-bit (SQLite's is wider)."""
MAX_META_DEPTH = 32
"""Deepest nesting of a session's ``meta`` (JSON objects and arrays)."""
MAX_META_BYTES = 64 * 1024
"""Largest ``meta`` as UTF-8 JSON."""
"""How long an SQLite writer waits for another writer before giving up with a StoreError."""

EXPORT_FORMAT = "r3mem.session"
EXPORT_FORMAT_VERSION = 1

_WRITE = "r3mem_write"  # execution option: this transaction will write (SQLite: BEGIN IMMEDIATE)


# --------------------------------------------------------------------------- errors


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


# --------------------------------------------------------------------------- records


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
    """One utterance; ``index`` is 1-based and contiguous within the session."""

    user_id: str
    session_id: str
    index: int
    speaker: str
    text: str
    timestamp: float


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
    """The current memory of a session: the blob, its version, coverage and slots."""

    user_id: str
    session_id: str
    blob: bytes
    version: int
    through_turn: int
    slots: list[SlotRecord] = field(default_factory=list)
    updated_at: float = 0.0


# --------------------------------------------------------------------------- the store


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

    Errors, uniformly: :class:`NotFound` for an unknown user or session (another user's
    session counts as unknown, so ids leak nothing), :class:`Conflict` for duplicates and
    stale versions, :class:`StoreError` for database failures (read-only, full, locked,
    unreachable) and :class:`ValueError` for malformed arguments, raised before any write.
    """

    def __init__(self, url_or_path: str | os.PathLike[str] | None = None, *, read_only: bool | None = None):
        target = self.default_path() if url_or_path is None else url_or_path
        self._engine, self.url = _make_engine(target, read_only)
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
                conn.execution_options(**{_WRITE: write})
                if not write and conn.dialect.name == "postgresql":
                    conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    yield conn
        except IntegrityError as exc:
            raise Conflict(f"cannot {action}: it conflicts with existing data ({_reason(exc)})") from exc
        except DBAPIError as exc:
            raise StoreError(_describe_failure(exc, action, self.url)) from exc

    # ----------------------------------------------------------------- users

    def create_user(self, user_id: str, token: str | None = None) -> User:
        """Create a user; only a sha256 digest of ``token`` is stored."""
        _check_id("user_id", user_id)
        digest = _token_digest(token) if token else None
        now = time.time()
        with self._tx(f"create user {user_id!r}", write=True) as conn:
            if _user_exists(conn, user_id):
                raise Conflict(f"user {user_id!r} already exists")
            conn.execute(insert(S.users).values(user_id=user_id, token_hash=digest, created_at=now))
        return User(user_id, now, digest is not None)

    def set_token(self, user_id: str, token: str | None) -> None:
        """Replace (or with ``None`` revoke) a user's API token."""
        digest = _token_digest(token) if token else None
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
        digest = _token_digest(token)
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
        return _user(row)

    def list_users(self) -> list[User]:
        """All users, ordered by id."""
        with self._tx("list users") as conn:
            rows = conn.execute(select(S.users).order_by(S.users.c.user_id)).all()
        return [_user(row) for row in rows]

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
        session_id = uuid.uuid4().hex if session_id is None else session_id
        _check_id("session_id", session_id)
        meta = _check_meta(meta)
        now = time.time()
        with self._tx(f"create session {session_id!r} for user {user_id!r}", write=True) as conn:
            _require_user(conn, user_id)
            if _session_row(conn, user_id, session_id) is not None:
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
            return _session(_require_session(conn, user_id, session_id))

    def list_sessions(self, user_id: str) -> list[Session]:
        """The user's sessions, oldest first."""
        with self._tx(f"list sessions of user {user_id!r}") as conn:
            _require_user(conn, user_id)
            rows = conn.execute(
                select(S.sessions)
                .where(S.sessions.c.user_id == user_id)
                .order_by(S.sessions.c.created_at, S.sessions.c.session_id)
            ).all()
        return [_session(row) for row in rows]

    def delete_session(self, user_id: str, session_id: str) -> None:
        """Delete a session with its turns, memory and slots."""
        with self._tx(f"delete session {session_id!r} of user {user_id!r}", write=True) as conn:
            done = conn.execute(delete(S.sessions).where(*_session_key(S.sessions, user_id, session_id)))
            if done.rowcount == 0:
                raise _session_not_found(user_id, session_id)

    # ----------------------------------------------------------------- turns

    def append_turn(
        self, user_id: str, session_id: str, text: str, speaker: str = "user", timestamp: float | None = None
    ) -> Turn:
        """Append a turn with the next index of its session (safe under concurrent writers)."""
        return self.append_turns(user_id, session_id, [(speaker, text)], timestamp)[0]

    def append_turns(
        self, user_id: str, session_id: str, items: Sequence[tuple[str, str]], timestamp: float | None = None
    ) -> list[Turn]:
        """Append (speaker, text) turns with consecutive indices in one transaction: all or none."""
        items = [(_check_speaker(speaker), _check_text("turn text", text)) for speaker, text in items]
        stamp = time.time() if timestamp is None else _check_time(timestamp)
        turns = []
        with self._tx(f"append turns to session {session_id!r} of user {user_id!r}", write=True) as conn:
            for speaker, text in items:
                index = _allocate_turn_index(conn, user_id, session_id, stamp)
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
            _require_session(conn, user_id, session_id)
            query = select(S.turns).where(*_session_key(S.turns, user_id, session_id)).order_by(S.turns.c.idx)
            if since is not None:
                query = query.where(S.turns.c.idx > since)
            rows = conn.execute(query).all()
        return [_turn(row) for row in rows]

    # ----------------------------------------------------------------- memories

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
        blob = _check_blob(blob)
        slot_rows = [_slot_values(user_id, session_id, i, slot) for i, slot in enumerate(_check_slots(slots))]
        _check_count("through_turn", through_turn)
        if expected_version is not None:
            _check_count("expected_version", expected_version)
        where = f"session {session_id!r} of user {user_id!r}"
        now = time.time()
        with self._tx(f"write the memory of {where}", write=True) as conn:
            _touch_session(conn, user_id, session_id, now)
            count = conn.execute(
                select(S.sessions.c.turn_count).where(*_session_key(S.sessions, user_id, session_id))
            ).scalar_one()
            if through_turn > count:  # the same rule an import is held to
                raise ValueError(f"through_turn {through_turn} is beyond the last turn ({count}) of {where}")
            current = _memory_version(conn, user_id, session_id)
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
            return _read_memory(conn, user_id, session_id)

    @staticmethod
    def _write_memory_row(
        conn: Connection, user_id: str, session_id: str, values: dict[str, Any], replace: bool
    ) -> None:
        """Insert or overwrite the memory row (first half of :meth:`put_memory`)."""
        if replace:
            key = _session_key(S.memories, user_id, session_id)
            conn.execute(update(S.memories).where(*key).values(**values))
            conn.execute(delete(S.slots).where(*_session_key(S.slots, user_id, session_id)))
        else:
            conn.execute(insert(S.memories).values(user_id=user_id, session_id=session_id, **values))

    @staticmethod
    def _write_slots(conn: Connection, slot_rows: list[dict[str, Any]]) -> None:
        """Insert the new slots (second half of :meth:`put_memory`; one executemany)."""
        if slot_rows:
            conn.execute(insert(S.slots), slot_rows)

    # ----------------------------------------------------------------- export / import

    def export_session(self, user_id: str, session_id: str) -> dict[str, Any]:
        """A JSON-serialisable snapshot of one session (turns, memory as base64, slots)."""
        with self._tx(f"export session {session_id!r} of user {user_id!r}") as conn:
            session = _session(_require_session(conn, user_id, session_id))
            turn_rows = conn.execute(
                select(S.turns).where(*_session_key(S.turns, user_id, session_id)).order_by(S.turns.c.idx)
            ).all()
            memory = _read_memory(conn, user_id, session_id)
        return {
            "format": EXPORT_FORMAT,
            "format_version": EXPORT_FORMAT_VERSION,
            "user_id": user_id,
            "session": {k: v for k, v in asdict(session).items() if k != "user_id"},
            "turns": [
                {"index": r.idx, "speaker": r.speaker, "text": r.text, "timestamp": r.timestamp} for r in turn_rows
            ],
            "memory": None if memory is None else _export_memory(memory),
        }

    def import_session(self, user_id: str, data: dict[str, Any], session_id: str | None = None) -> Session:
        """Recreate an exported session for ``user_id`` (under ``session_id`` if given), in one transaction."""
        parsed = parse_export(data, session_id)
        session_id = parsed["session_id"]
        with self._tx(f"import session {session_id!r} for user {user_id!r}", write=True) as conn:
            _require_user(conn, user_id)
            if _session_row(conn, user_id, session_id) is not None:
                raise Conflict(f"session {session_id!r} of user {user_id!r} already exists")
            _insert_imported(conn, user_id, session_id, parsed)
            return _session(_require_session(conn, user_id, session_id))


# --------------------------------------------------------------------------- engine setup


def _make_engine(target: str | os.PathLike[str], read_only: bool | None) -> tuple[Engine, str]:
    """Create the engine for a path or URL; returns it with a password-free URL for messages."""
    text = os.fspath(target)
    if "://" not in text:
        return _sqlite_engine(Path(text), read_only)
    try:
        url = make_url(text)
    except ArgumentError as exc:
        raise StoreError(f"invalid store URL {text!r}: {exc}") from exc
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            raise StoreError("in-memory SQLite cannot be shared between connections; give a file path")
        return _sqlite_engine(Path(url.database), read_only)
    if url.get_backend_name() == "postgresql":
        if url.drivername in ("postgresql", "postgres"):
            url = url.set(drivername="postgresql+psycopg")
        engine = create_engine(url, pool_pre_ping=True)
        return engine, url.render_as_string(hide_password=True)
    shown = url.render_as_string(hide_password=True)
    raise StoreError(f"unsupported store URL {shown!r}: use a path, sqlite:/// or postgresql://")


def _sqlite_engine(path: Path, read_only: bool | None) -> tuple[Engine, str]:
    """SQLite engine: WAL, busy timeout, foreign keys, FULL sync, and our own BEGIN statements."""
    if str(path) == ":memory:":
        raise StoreError("in-memory SQLite cannot be shared between connections; give a file path")
    path = path.expanduser().absolute()
    if read_only is None:
        read_only = path.exists() and not _writable(path)
    if not read_only:
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _create_private(path)
        except OSError as exc:
            raise StoreError(f"cannot create store {path}: {exc.strerror}") from exc
    elif not path.exists():
        raise StoreError(f"cannot open store {path} read-only: no such file")
    uri = path.as_uri() + ("?mode=ro" if read_only else "")

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA foreign_keys = ON")
        if not read_only:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
        return conn

    engine = create_engine("sqlite://", creator=connect, poolclass=QueuePool, pool_size=5, max_overflow=20)
    event.listen(engine, "begin", _sqlite_begin)
    return engine, f"sqlite:///{path}"


def _create_private(path: Path) -> None:
    """Create a new store file readable by its owner only (0600, like memory files); SQLite gives its
    -wal and -shm files the database file's mode. An existing file keeps the mode its owner chose."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def _sqlite_begin(conn: Connection) -> None:
    """Start writes with BEGIN IMMEDIATE: taking the write lock up front means a writer
    waits (busy timeout) instead of failing when upgrading a read lock, and the read of
    e.g. the next turn index happens under that lock."""
    mode = "IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "DEFERRED"
    conn.exec_driver_sql(f"BEGIN {mode}")


def _writable(path: Path) -> bool:
    """Whether the file may be written: honours the permission bits even for root."""
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)


def _reason(exc: DBAPIError) -> str:
    """The driver's message, first line only."""
    return str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)


def _describe_failure(exc: DBAPIError, action: str, url: str) -> str:
    """One-line explanation of a database failure, naming the action and the store."""
    reason = _reason(exc)
    low = reason.lower()
    code = getattr(exc.orig, "sqlstate", None) or ""
    if "readonly" in low or "read-only" in low or code == "25006":
        return f"cannot {action}: store {url} is read-only ({reason}); nothing was written"
    if "disk is full" in low or "no space left" in low or "could not extend" in low or code == "53100":
        return f"cannot {action}: store {url} is full, no space left ({reason}); nothing was written"
    if "database is locked" in low or "busy" in low:
        return f"cannot {action}: store {url} stayed locked by another writer ({reason})"
    if "unable to open" in low:
        return f"cannot {action}: cannot open store {url} ({reason})"
    if "connection" in low or "server" in low:
        return f"cannot {action}: cannot reach store {url} ({reason})"
    return f"cannot {action}: database error in store {url} ({reason})"


# --------------------------------------------------------------------------- validation


def _check_text(kind: str, value: object) -> str:
    """A str the databases can store: UTF-8 encodable, so no lone surrogate (SQLite would fail
    mid-transaction, and a stored one breaks every JSON response that includes it)."""
    if not isinstance(value, str):
        raise ValueError(f"{kind} must be a str, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"{kind} is not valid Unicode (lone surrogate at character {exc.start})") from None
    return value


def _check_id(kind: str, value: object) -> None:
    """Ids are non-empty strings that fit the column; refuse anything else early and clearly."""
    if not isinstance(value, str) or not value or len(value) > S.ID_LENGTH:
        raise ValueError(f"{kind} must be a non-empty str of at most {S.ID_LENGTH} characters, got {value!r}")
    _check_text(kind, value)


def _check_speaker(speaker: object) -> str:
    if not isinstance(speaker, str) or not speaker or len(speaker) > 64:
        raise ValueError(f"speaker must be a non-empty str of at most 64 characters, got {speaker!r}")
    return _check_text("speaker", speaker)


def _check_time(value: object, kind: str = "timestamp") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{kind} must be a finite number of seconds (UTC), got {value!r}")
    return float(value)


def _check_count(kind: str, value: object, low: int = 0) -> int:
    """An int that fits every backend's INTEGER column (PostgreSQL's is 32-bit)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_INT:
        raise ValueError(f"{kind} must be an int in {low}..{MAX_INT}, got {_short(value)}")
    return value


def _short(value: object) -> str:
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


def _check_meta(meta: dict[str, Any] | None) -> dict[str, Any]:
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


def _check_blob(blob: object) -> bytes:
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise ValueError(f"memory blob must be bytes, got {type(blob).__name__}")
    return bytes(blob)


def _check_slots(slots: Sequence[SlotRecord]) -> Sequence[SlotRecord]:
    """Validate slot records so that a bad slot fails before the transaction, not inside it."""
    for i, slot in enumerate(slots):
        if not isinstance(slot, SlotRecord):
            raise ValueError(f"slot {i} must be a SlotRecord, got {type(slot).__name__}")
        if not isinstance(slot.level, str) or not slot.level or len(slot.level) > 64:
            raise ValueError(f"slot {i} level must be a non-empty str of at most 64 characters")
        _check_text(f"slot {i} level", slot.level)
        _check_text(f"slot {i} key", slot.key)
        _check_count(f"slot {i} start", slot.start)
        _check_count(f"slot {i} end", slot.end)
        if slot.turn_id is not None:
            _check_count(f"slot {i} turn_id", slot.turn_id)
        if slot.text is not None:
            _check_text(f"slot {i} text", slot.text)
        if slot.timestamp is not None:
            _check_time(slot.timestamp, f"slot {i} timestamp")
    return slots


# --------------------------------------------------------------------------- row helpers


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _session_key(table: Any, user_id: str, session_id: str) -> tuple[Any, Any]:
    """WHERE clause selecting one session's rows; always scoped by user as well."""
    return (table.c.user_id == user_id, table.c.session_id == session_id)


def _session_not_found(user_id: str, session_id: str) -> NotFound:
    return NotFound(f"session {session_id!r} not found for user {user_id!r}")


def _user_exists(conn: Connection, user_id: str) -> bool:
    return conn.execute(select(S.users.c.user_id).where(S.users.c.user_id == user_id)).first() is not None


def _require_user(conn: Connection, user_id: str) -> None:
    if not _user_exists(conn, user_id):
        raise NotFound(f"user {user_id!r} not found")


def _session_row(conn: Connection, user_id: str, session_id: str) -> Any:
    return conn.execute(select(S.sessions).where(*_session_key(S.sessions, user_id, session_id))).first()


def _require_session(conn: Connection, user_id: str, session_id: str) -> Any:
    row = _session_row(conn, user_id, session_id)
    if row is None:
        raise _session_not_found(user_id, session_id)
    return row


def _touch_session(conn: Connection, user_id: str, session_id: str, now: float) -> None:
    """Update the session row: on PostgreSQL this row lock serialises writers of the session."""
    key = _session_key(S.sessions, user_id, session_id)
    done = conn.execute(update(S.sessions).where(*key).values(updated_at=now))
    if done.rowcount == 0:
        raise _session_not_found(user_id, session_id)


def _allocate_turn_index(conn: Connection, user_id: str, session_id: str, now: float) -> int:
    """Increment the session's turn counter in place and return it.

    The increment is a single UPDATE, so the read that follows sees a value no other
    transaction can also obtain (it holds the row or database write lock until commit).
    """
    key = _session_key(S.sessions, user_id, session_id)
    done = conn.execute(update(S.sessions).where(*key).values(turn_count=S.sessions.c.turn_count + 1, updated_at=now))
    if done.rowcount == 0:
        raise _session_not_found(user_id, session_id)
    return int(conn.execute(select(S.sessions.c.turn_count).where(*key)).scalar_one())


def _memory_version(conn: Connection, user_id: str, session_id: str) -> int | None:
    return conn.execute(
        select(S.memories.c.version).where(*_session_key(S.memories, user_id, session_id))
    ).scalar_one_or_none()


def _read_memory(conn: Connection, user_id: str, session_id: str) -> StoredMemory | None:
    """Memory row and slots read in the caller's (snapshot) transaction; checksum verified."""
    row = conn.execute(select(S.memories).where(*_session_key(S.memories, user_id, session_id))).first()
    if row is None:
        _require_session(conn, user_id, session_id)
        return None
    slot_rows = conn.execute(
        select(S.slots).where(*_session_key(S.slots, user_id, session_id)).order_by(S.slots.c.ordinal)
    ).all()
    blob = bytes(row.blob)
    if hashlib.sha256(blob).hexdigest() != row.blob_sha256:
        raise StoreError(f"memory of session {session_id!r} of user {user_id!r} is corrupted (checksum mismatch)")
    slots = [_slot(r) for r in slot_rows]
    return StoredMemory(user_id, session_id, blob, row.version, row.through_turn, slots, row.updated_at)


def _slot_values(user_id: str, session_id: str, ordinal: int, slot: SlotRecord) -> dict[str, Any]:
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


def _user(row: Any) -> User:
    return User(row.user_id, row.created_at, row.token_hash is not None)


def _session(row: Any) -> Session:
    return Session(row.user_id, row.session_id, row.created_at, row.updated_at, dict(row.meta or {}), row.turn_count)


def _turn(row: Any) -> Turn:
    return Turn(row.user_id, row.session_id, row.idx, row.speaker, row.text, row.timestamp)


def _slot(row: Any) -> SlotRecord:
    return SlotRecord(row.level, row.slot_key, row.start_pos, row.end_pos, row.turn_id, row.text, row.timestamp)


# --------------------------------------------------------------------------- export format


def _export_memory(memory: StoredMemory) -> dict[str, Any]:
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
        _check_id("session_id", session_id)
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
        raise ValueError(f"format is {_short(data.get('format'))}, expected {EXPORT_FORMAT!r}")
    if data.get("format_version") != EXPORT_FORMAT_VERSION:
        raise ValueError(f"format_version {_short(data.get('format_version'))} is not supported")
    if not isinstance(data.get("session"), dict):
        raise ValueError("session must be an object")
    session = dict(data["session"])
    session["meta"] = _check_meta(session.get("meta"))
    if session.get("created_at") is not None:
        session["created_at"] = _check_time(session["created_at"], "session.created_at")
    if not isinstance(data.get("turns"), list):
        raise ValueError("turns must be a list")
    turns = [_parse_turn(i, t) for i, t in enumerate(data["turns"])]
    indices = [t["idx"] for t in turns]
    if len(set(indices)) != len(indices):
        raise ValueError("turn indices are not unique")
    turn_count = max([_check_count("session.turn_count", session.get("turn_count", 0)), *indices])
    memory = None if data.get("memory") is None else _parse_memory(data["memory"])
    if memory is not None and memory["through_turn"] > turn_count:
        # Later writes would believe the memory already covers their turns and never write them.
        raise ValueError(f"memory.through_turn {memory['through_turn']} is beyond the last turn ({turn_count})")
    return {"session": session, "turns": turns, "memory": memory, "turn_count": turn_count}


def _parse_turn(i: int, turn: Any) -> dict[str, Any]:
    if not isinstance(turn, dict):
        raise ValueError(f"turns[{i}] must be an object")
    index = _check_count(f"turns[{i}].index", turn.get("index"), low=1)
    speaker = _check_speaker(turn.get("speaker"))
    text = _check_text(f"turns[{i}].text", turn.get("text"))
    stamp = _check_time(turn.get("timestamp"), f"turns[{i}].timestamp")
    return {"idx": index, "speaker": speaker, "text": text, "timestamp": stamp}


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
    slots = list(_check_slots([SlotRecord(**slot) for slot in memory["slots"]]))
    version = _check_count("memory.version", memory.get("version"), low=1)
    through = _check_count("memory.through_turn", memory.get("through_turn"))
    stamp = memory.get("updated_at")
    return {
        "blob": blob,
        "version": version,
        "through_turn": through,
        "updated_at": time.time() if stamp is None else _check_time(stamp, "memory.updated_at"),
        "slots": slots,
    }


def _insert_imported(conn: Connection, user_id: str, session_id: str, parsed: dict[str, Any]) -> None:
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
    if parsed["turns"]:
        conn.execute(insert(S.turns), [dict(t, user_id=user_id, session_id=session_id) for t in parsed["turns"]])
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
        slot_rows = [_slot_values(user_id, session_id, i, s) for i, s in enumerate(memory["slots"])]
        MemoryStore._write_slots(conn, slot_rows)
