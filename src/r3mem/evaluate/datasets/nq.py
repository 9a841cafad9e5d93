"""Natural Questions with oracle passages (lost-in-the-middle JSON lines): the `rag` task.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r3mem.evaluate.datasets._io import (
    _get,
    _iter_jsonl,
    _str_list,
)


@dataclass(frozen=True)
class Passage:
    """A Wikipedia passage; ``is_gold`` marks the one the NQ annotators linked to the answer."""

    title: str
    text: str
    is_gold: bool
    has_answer: bool



@dataclass(frozen=True)
class NQExample:
    question: str
    answers: tuple[str, ...]
    passages: tuple[Passage, ...]

    @property
    def gold_index(self) -> int | None:
        """Position of the gold passage (the oracle file has exactly one passage, the gold one)."""
        return next((i for i, p in enumerate(self.passages) if p.is_gold), None)

    @property
    def gold(self) -> Passage | None:
        i = self.gold_index
        return None if i is None else self.passages[i]



def _passage(ctx: Any, name: str, where: str) -> Passage:
    if not isinstance(ctx, dict):
        raise ValueError(f"{name}: {where}: each entry of 'ctxs' must be an object")
    return Passage(
        title=_get(ctx, "title", str, name, where, ""),
        text=_get(ctx, "text", str, name, where),
        is_gold=_get(ctx, "isgold", bool, name, where, False),
        has_answer=_get(ctx, "hasanswer", bool, name, where, False),
    )



def load_nq_oracle(path: str | Path, limit: int | None = None) -> list[NQExample]:
    """NQ-Open questions with answers and passages (oracle or 10/20/30-document files)."""
    path = Path(path)
    out = []
    for where, rec in _iter_jsonl(path, limit):
        answers = _str_list(rec, "answers", path.name, where)
        if not answers:
            raise ValueError(f"{path.name}: {where}: 'answers' is empty")
        ctxs = _get(rec, "ctxs", list, path.name, where)
        passages = tuple(_passage(c, path.name, where) for c in ctxs)
        out.append(NQExample(_get(rec, "question", str, path.name, where), answers, passages))
    return out
