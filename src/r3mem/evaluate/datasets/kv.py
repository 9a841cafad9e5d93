"""Synthetic key-value retrieval (lost-in-the-middle JSON lines): the `kv` task.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from r3mem.evaluate.datasets._io import (
    _get,
    _iter_jsonl,
)


@dataclass(frozen=True)
class KVExample:
    """75 (or 140, 300) random UUID key/value pairs; the task is to return ``value`` for ``key``."""

    pairs: tuple[tuple[str, str], ...]
    key: str
    value: str

    @property
    def gold_index(self) -> int:
        """Position of the queried pair, for accuracy-by-position plots."""
        return next(i for i, (k, _) in enumerate(self.pairs) if k == self.key)



def _kv_pairs(rec: dict, name: str, where: str) -> tuple[tuple[str, str], ...]:
    records = _get(rec, "ordered_kv_records", list, name, where)
    ok = all(isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in records)
    if not ok:
        raise ValueError(f"{name}: {where}: 'ordered_kv_records' must be a list of [key, value] string pairs")
    return tuple((k, v) for k, v in records)



def load_kv(path: str | Path, limit: int | None = None) -> list[KVExample]:
    """Key-value retrieval examples; checks the queried key is present with the stated value."""
    path = Path(path)
    out = []
    for where, rec in _iter_jsonl(path, limit):
        pairs = _kv_pairs(rec, path.name, where)
        key = _get(rec, "key", str, path.name, where)
        value = _get(rec, "value", str, path.name, where)
        if (key, value) not in pairs:
            raise ValueError(f"{path.name}: {where}: ('key', 'value') is not one of the ordered_kv_records")
        out.append(KVExample(pairs, key, value))
    return out
