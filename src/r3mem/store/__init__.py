"""Persistent store of users, sessions, turns and memories (SQLite or PostgreSQL).

Independent of the neural model: memories are stored as opaque blobs with slot metadata.
"""

from .store import (
    Conflict,
    MemoryStore,
    NotFound,
    SchemaTooNew,
    Session,
    SlotRecord,
    StoredMemory,
    StoreError,
    Turn,
    User,
)

__all__ = [
    "Conflict",
    "MemoryStore",
    "NotFound",
    "SchemaTooNew",
    "Session",
    "SlotRecord",
    "StoreError",
    "StoredMemory",
    "Turn",
    "User",
]
