"""Shared pieces of the evaluation harness: options, the skip signal, token helpers, aggregation."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["EvalOptions", "Skip", "mean", "overlaps", "round_metrics", "position_buckets", "bucket_label"]


ANSWER_READS = ("text", "cache", "source")


class Skip(Exception):
    """A method cannot run this task or example; the message is the reason reported in the JSON."""

    @property
    def reason(self) -> str:
        return str(self)


@dataclass
class EvalOptions:
    """Everything a task protocol needs besides the data and the methods (resolved into the JSON)."""

    limit: int | None = None  # first N examples (books, paragraphs, questions, needle cells)
    # locomo: first N scored questions of each conversation, so a bounded run still covers every conversation
    per_doc: int | None = None
    budget: int | None = None  # context tokens the reader may see (None: the task's default)
    top_k: int = 2  # slots / chunks recalled per question
    max_new_tokens: int = 32  # answer length
    chunk_words: int = 100  # retrieval chunk size (words) for bm25 / embedding
    ratios: tuple[float, ...] = (4.0, 8.0)  # recon: paragraph compression ratios
    lengths: tuple[int, ...] = (1000, 2000, 4000, 8000)  # needle: context lengths in tokens
    depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # needle: needle depth fractions
    max_tokens: int | None = None  # lm: tokens scored per book (None: whole book)
    segment_len: int | None = None  # lm: segment length (None: the r3mem adapter's segment_len)
    recall_tokens: int | None = None  # lm: tokens recalled from memory per segment (None: segment_len; 0: off)
    samples: int = 3  # example predictions kept per method in the JSON
    device: str = "cpu"
    select: str | None = None  # memory methods: how slots are found (None: the engine's default, see recall.SELECTS)
    # memory methods, QA: "text" (chosen slots expanded into text for the reader), "cache" (the reader reads
    # the slots' keys and values as its cache), "source" (the reader gets the source text of the chosen slots,
    # as an agent whose store keeps the turns does: the memory finds, the store supplies the words)
    answer_read: str = "text"
    compute_dtype: str = "float32"  # every model's arithmetic: float32 or bfloat16 (autocast)
    # memory methods, QA: a folder of written memories (one file per document and engine identity), so runs
    # that only change how questions are answered write each document once
    memory_cache: str | None = None
    distractors: int = 0  # rag: passages of other questions around the gold one (0: the oracle passage alone)

    def validate(self) -> None:
        def check(cond: bool, msg: str) -> None:
            if not cond:
                raise ValueError(msg)

        check(self.limit is None or self.limit >= 0, f"--limit: must be >= 0, got {self.limit}")
        check(self.per_doc is None or self.per_doc >= 1, f"--per-doc: must be >= 1, got {self.per_doc}")
        check(self.budget is None or self.budget >= 1, f"--budget: must be >= 1, got {self.budget}")
        check(self.top_k >= 1, f"--top-k: must be >= 1, got {self.top_k}")
        check(self.max_new_tokens >= 1, f"--max-new-tokens: must be >= 1, got {self.max_new_tokens}")
        check(self.chunk_words >= 1, f"--chunk-words: must be >= 1, got {self.chunk_words}")
        check(
            len(self.ratios) > 0 and all(r >= 1 for r in self.ratios),
            f"--ratios: must be numbers >= 1, got {list(self.ratios)}",
        )
        check(
            len(self.lengths) > 0 and all(n >= 1 for n in self.lengths),
            f"--lengths: must be integers >= 1, got {list(self.lengths)}",
        )
        check(
            len(self.depths) > 0 and all(0 <= d <= 1 for d in self.depths),
            f"--depths: must be fractions in [0, 1], got {list(self.depths)}",
        )
        check(self.max_tokens is None or self.max_tokens >= 2, f"--max-tokens: must be >= 2, got {self.max_tokens}")
        check(self.segment_len is None or self.segment_len >= 2, f"--segment-len: must be >= 2, got {self.segment_len}")
        check(self.recall_tokens is None or self.recall_tokens >= 0,
              f"--recall-tokens: must be >= 0, got {self.recall_tokens}")
        from r3mem.config import COMPUTE_DTYPES
        from r3mem.recall import SELECTS

        check(self.select is None or self.select in SELECTS, f"--select: must be one of {SELECTS}, got {self.select!r}")
        check(self.answer_read in ANSWER_READS,
              f"--answer-read: must be one of {ANSWER_READS}, got {self.answer_read!r}")
        check(self.distractors >= 0, f"--distractors: must be >= 0, got {self.distractors}")
        check(self.compute_dtype in COMPUTE_DTYPES,
              f"--compute-dtype: must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        """Every option, as the result document records it (tuples as lists)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


def mean(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are not None (recall-style scores are None when vacuous)."""
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def round_metrics(d: dict[str, Any], ndigits: int = 4) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, float):
            out[k] = v if math.isinf(v) or math.isnan(v) else round(v, ndigits)
        elif isinstance(v, dict):
            out[k] = round_metrics(v, ndigits)
        else:
            out[k] = v
    return out


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Half-open character spans share at least one character."""
    return a[0] < b[1] and b[0] < a[1]


def position_buckets(first: int = 256) -> Iterable[tuple[int, int]]:
    """[0, 256), [256, 512), [512, 1024), ... (token offsets in a stream)."""
    yield 0, first
    lo = first
    while True:
        yield lo, lo * 2
        lo *= 2


def bucket_label(lo: int, hi: int) -> str:
    return f"{lo}-{hi}"
