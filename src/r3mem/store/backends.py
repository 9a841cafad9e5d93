"""Database engines for the store: embedded SQLite (WAL, busy timeout, foreign keys, private file)
or PostgreSQL through psycopg 3, and the one-line descriptions of database failures.
"""

import os
import sqlite3
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.pool import QueuePool

from r3mem.store.records import StoreError

BUSY_TIMEOUT_S = 30.0
"""How long an SQLite writer waits for another writer before giving up with a StoreError."""

WRITE = "r3mem_write"  # execution option: this transaction will write (SQLite: BEGIN IMMEDIATE)



def make_engine(target: str | os.PathLike[str], read_only: bool | None) -> tuple[Engine, str]:
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
    mode = "IMMEDIATE" if conn.get_execution_options().get(WRITE) else "DEFERRED"
    conn.exec_driver_sql(f"BEGIN {mode}")



def _writable(path: Path) -> bool:
    """Whether the file may be written: honours the permission bits even for root."""
    return os.access(path, os.W_OK) and bool(path.stat().st_mode & 0o222)



def db_reason(exc: DBAPIError) -> str:
    """The driver's message, first line only."""
    return str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)



def describe_failure(exc: DBAPIError, action: str, url: str) -> str:
    """One-line explanation of a database failure, naming the action and the store."""
    reason = db_reason(exc)
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
