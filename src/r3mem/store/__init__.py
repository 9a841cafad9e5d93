"""Persistent store of users, sessions, turns and memories (SQLite or PostgreSQL).

Independent of the neural model: memories are stored as opaque blobs with slot metadata.
"""

from .store import (
    Conflict,
    InvalidExport,
    MemoryStore,
    NotFound,
    SchemaTooNew,
    Session,
    SlotRecord,
    StoredMemory,
    StoreError,
    Turn,
    User,
    parse_export,
)

__all__ = [
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
    "User",
    "parse_export",
]
