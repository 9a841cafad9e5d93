"""Shared pieces of the evaluation harness: options, the skip signal, token helpers, aggregation."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["EvalOptions", "Skip", "mean", "overlaps", "round_metrics", "position_buckets", "bucket_label"]


ANSWER_READS = ("text", "checked", "cache", "source")


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
    # memory methods, QA text reads: a slot whose calibrated confidence is under this is read from the document
    # text it was written from instead of its expansion (`R3Mem.answer(min_confidence=)`); None: never
    min_confidence: float | None = None

    def validate(self) -> None:
        """One `ConfigError` (a ValueError) naming the first bad option by its command-line flag."""
        from r3mem.config import COMPUTE_DTYPES, check
        from r3mem.recall import SELECTS

        def at_least(name: str, low: int, optional: bool = True) -> None:
            v = getattr(self, name)
            check((optional and v is None) or (isinstance(v, int) and v >= low), _flag(name), f"must be >= {low}", v)

        for name, low in (("limit", 0), ("per_doc", 1), ("budget", 1), ("max_tokens", 2), ("segment_len", 2),
                          ("recall_tokens", 0)):
            at_least(name, low)
        for name in ("top_k", "max_new_tokens", "chunk_words"):
            at_least(name, 1, optional=False)
        at_least("distractors", 0, optional=False)
        check(len(self.ratios) > 0 and all(r >= 1 for r in self.ratios), "--ratios", "must be numbers >= 1",
              list(self.ratios))
        check(len(self.lengths) > 0 and all(n >= 1 for n in self.lengths), "--lengths", "must be integers >= 1",
              list(self.lengths))
        check(len(self.depths) > 0 and all(0 <= d <= 1 for d in self.depths), "--depths",
              "must be fractions in [0, 1]", list(self.depths))
        check(self.select is None or self.select in SELECTS, "--select", f"must be one of {SELECTS}", self.select)
        check(self.answer_read in ANSWER_READS, "--answer-read", f"must be one of {ANSWER_READS}", self.answer_read)
        check(self.min_confidence is None or (isinstance(self.min_confidence, (int, float))
                                               and 0 <= self.min_confidence <= 1), "--min-confidence",
              "must be a number in [0, 1]", self.min_confidence)
        check(self.compute_dtype in COMPUTE_DTYPES, "--compute-dtype", f"must be one of {COMPUTE_DTYPES}",
              self.compute_dtype)

    def to_dict(self) -> dict[str, Any]:
        """Every option, as the result document records it (tuples as lists)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v for f in fields(self)}


def _flag(name: str) -> str:
    """The command-line flag of an option field: `per_doc` -> `--per-doc`."""
    return "--" + name.replace("_", "-")


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
