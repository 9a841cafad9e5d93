"""Needle in a haystack over a folder of essays: the `needle` task.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from r3mem.evaluate.datasets._io import (
    _check_limit,
    _read_text,
)

DEFAULT_NEEDLE = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."

DEFAULT_QUESTION = "What is the best thing to do in San Francisco?"

DEFAULT_ANSWER = "eat a sandwich and sit in Dolores Park on a sunny day"



@dataclass(frozen=True)
class NeedleSample:
    context: str
    needle: str
    question: str
    answer: str
    depth: float  # requested depth fraction in [0, 1]
    length: int  # length_fn(context): characters, or tokens when a token counter was given
    needle_start: int  # character offset of the needle, so reconstructions can be checked there



@dataclass(frozen=True)
class NeedleHaystack:
    """Essays plus a needle; ``build`` makes contexts of any length with the needle at any depth."""

    essays: tuple[str, ...]
    names: tuple[str, ...]
    needle: str = DEFAULT_NEEDLE
    question: str = DEFAULT_QUESTION
    answer: str = DEFAULT_ANSWER

    def haystack(self, n_chars: int) -> str:
        """The essays in order, repeated as often as needed, cut to ``n_chars`` characters."""
        pieces, total, i = [], 0, 0
        while total < n_chars:
            essay = self.essays[i % len(self.essays)]
            pieces.append(essay)
            total += len(essay) + 2
            i += 1
        return "\n\n".join(pieces)[:n_chars]

    def _insert(self, hay: str, depth: float) -> tuple[str, int]:
        """Needle placed after the last sentence end at or before the depth position.

        Backing off to a full stop (as the original harness does with tokens) keeps the needle
        from splitting a sentence, which would make the task easier to spot.
        """
        if depth >= 1.0:
            return f"{hay} {self.needle}", len(hay) + 1
        pos = hay.rfind(".", 0, int(depth * len(hay)) + 1) + 1
        if pos == 0:
            return f"{self.needle} {hay}", 0
        return f"{hay[:pos]} {self.needle}{hay[pos:]}", pos + 1

    def build(self, length: int, depth: float, length_fn: Callable[[str], int] = len) -> NeedleSample:
        """The longest context with ``length_fn(context) <= length`` and the needle at ``depth``.

        ``length_fn`` defaults to characters; pass a token counter (e.g.
        ``lambda s: len(tok(s, add_special_tokens=False).input_ids)``) for token lengths. The
        haystack size is found by bisection because token counts are not additive over cuts.
        """
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"needle depth must be in [0, 1], got {depth}")
        if length_fn(self.needle) + 1 > length:
            raise ValueError(f"needle length {length}: too short to hold the needle")

        if length_fn is len:  # characters: the size is known exactly
            context, start = self._insert(self.haystack(length - len(self.needle) - 1), depth)
            return NeedleSample(context, self.needle, self.question, self.answer, depth, len(context), start)

        def fits(n_chars: int) -> bool:
            return length_fn(self._insert(self.haystack(n_chars), depth)[0]) <= length

        lo, hi = 0, max(1, length)
        while fits(hi):  # token lengths allow more characters than ``length``
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        context, start = self._insert(self.haystack(lo), depth)
        return NeedleSample(context, self.needle, self.question, self.answer, depth, length_fn(context), start)



def load_needle(
    essay_dir: str | Path,
    needle: str = DEFAULT_NEEDLE,
    question: str = DEFAULT_QUESTION,
    answer: str = DEFAULT_ANSWER,
    limit: int | None = None,
    min_chars: int = 100,
) -> NeedleHaystack:
    """Essays (``*.txt``, sorted by name) for needle-in-a-haystack contexts.

    Files shorter than ``min_chars`` are skipped: the Paul Graham folder has a 55-byte ``rss.txt``
    stub that is not an essay.
    """
    _check_limit(limit)
    folder = Path(essay_dir)
    if not folder.is_dir():
        raise ValueError(f"{folder.name}: essay folder not found in {folder.parent}")
    if answer.lower() not in needle.lower():
        raise ValueError(f"needle {needle!r} does not contain the answer {answer!r}")
    essays = [(f.name, _read_text(f).strip()) for f in sorted(folder.glob("*.txt"))]
    essays = [(n, t) for n, t in essays if len(t) >= min_chars][:limit]
    if not essays:
        raise ValueError(f"{folder.name}: no essays of at least {min_chars} characters")
    names, texts = zip(*essays)
    return NeedleHaystack(tuple(texts), tuple(names), needle, question, answer)
