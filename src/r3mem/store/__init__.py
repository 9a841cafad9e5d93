"""Persistent store of users, sessions, turns and memories (SQLite or PostgreSQL).

Independent of the neural model: memories are stored as opaque blobs with slot metadata.
`store` holds `MemoryStore`; `records` its errors, records and validators; `backends` the SQLite and
PostgreSQL engines; `rows` the row helpers;
`curation` edits, deletes and deduplication of single turns; `transfer` export and import; `schema` and `migrations`
the tables and their versions.
"""

from r3mem.store.records import (
    SESSION_ID_PATTERN,
    SESSION_ID_RULE,
    Conflict,
    InvalidExport,
    NotFound,
    SchemaTooNew,
    Session,
    SlotRecord,
    StoredMemory,
    StoreError,
    Turn,
    TurnRevision,
    User,
    check_session_id,
    text_key,
)
from r3mem.store.store import MemoryStore
from r3mem.store.transfer import parse_export

__all__ = [
    "SESSION_ID_PATTERN",
    "SESSION_ID_RULE",
    "check_session_id",
    "Conflict",
    "InvalidExport",
    "MemoryStore",
    "NotFound",
    "SchemaTooNew",
    "Session",
    "SlotRecord",
    "StoreError",
    "StoredMemory",
    "Turn",
    "TurnRevision",
    "User",
    "text_key",
    "parse_export",
]
