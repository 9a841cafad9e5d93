"""`MemoryCache`: decoded session memories kept between requests, by (user, session, version, checksum).

A session's memory changes only when its version does, and decoding it (checksum, safetensors, shape
checks) costs time linear in its size: 0.2-0.5 s for a 500-turn conversation's 160 MB. An agent asks the
store for the version and checksum alone (`MemoryStore.memory_stamp`) and reuses the decoded memory with
that stamp,
so answering a question costs the search and the reader, not a re-read of the whole memory.

Entries are immutable values (`Memory` and the store's slot records, without the blob), evicted least
recently used first once their tensors exceed `max_bytes`. Safe to share between threads.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

from r3mem.memory import Memory
from r3mem.store import StoredMemory

__all__ = ["MemoryCache", "Cached"]


@dataclass(frozen=True)
class Cached:
    memory: Memory
    stored: StoredMemory  # the store's record of that version, its blob dropped (`blob_bytes` says how big)
    blob_bytes: int


class MemoryCache:
    """LRU of decoded memories keyed by (user, session, version, blob sha256), bounded by their tensor bytes."""

    def __init__(self, max_bytes: int = 2 << 30) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes: must be >= 0, got {max_bytes}")
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str, int, str], tuple[Cached, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, user_id: str, session_id: str, stamp: tuple[int, str]) -> Cached | None:
        key = (user_id, session_id, *stamp)
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
            return hit[0] if hit else None

    def put(self, memory: Memory, stored: StoredMemory) -> Cached:
        """Keep `memory`, decoded from `stored`; older versions of the session are dropped."""
        import hashlib
        from dataclasses import replace

        entry = Cached(memory, replace(stored, blob=b""), len(stored.blob))
        size = memory.state_bytes()
        key = (stored.user_id, stored.session_id, stored.version, hashlib.sha256(stored.blob).hexdigest())
        with self._lock:
            for old in [k for k in self._items if k[:2] == key[:2]]:
                self._bytes -= self._items.pop(old)[1]
            if size <= self.max_bytes:
                self._items[key] = (entry, size)
                self._bytes += size
            while self._bytes > self.max_bytes and self._items:
                self._bytes -= self._items.popitem(last=False)[1][1]
        return entry

    def drop(self, user_id: str, session_id: str) -> None:
        """Forget every version of a session (deleted sessions)."""
        with self._lock:
            for old in [k for k in self._items if k[:2] == (user_id, session_id)]:
                self._bytes -= self._items.pop(old)[1]

    def __len__(self) -> int:
        return len(self._items)

    @property
    def bytes(self) -> int:
        return self._bytes
