"""Loaders for the benchmark formats (PG-19 books, NQ-open, key-value retrieval, LoCoMo, needle haystacks;
any file in the same format works).

Each loader returns a list of small frozen dataclasses and fails with a one-line ``ValueError``
that starts with the file name and says what is wrong ("x.jsonl.gz: line 3 is not valid JSON"),
because an evaluation run that dies deep inside a model call on a bad record wastes hours.
Gzip is detected from the file's magic bytes, not its name, so ``.jsonl`` and ``.jsonl.gz``
copies both load. ``limit`` keeps only the first N records (books, essays) for smoke runs.

One module per benchmark (``pg19``, ``nq``, ``kv``, ``locomo``, ``needle``), helpers in ``_io``.
Each module's docstring names its format; ``benchmarks/README.md`` says which files were run.
"""

from __future__ import annotations

from r3mem.evaluate.datasets.kv import KVExample, load_kv
from r3mem.evaluate.datasets.locomo import LocomoConversation, LocomoQA, LocomoSession, LocomoTurn, load_locomo
from r3mem.evaluate.datasets.needle import (
    DEFAULT_ANSWER,
    DEFAULT_NEEDLE,
    DEFAULT_QUESTION,
    NeedleHaystack,
    NeedleSample,
    load_needle,
)
from r3mem.evaluate.datasets.nq import NQExample, Passage, load_nq_oracle
from r3mem.evaluate.datasets.pg19 import Pg19Book, load_pg19

__all__ = [
    "Pg19Book",
    "load_pg19",
    "Passage",
    "NQExample",
    "load_nq_oracle",
    "KVExample",
    "load_kv",
    "LocomoTurn",
    "LocomoSession",
    "LocomoQA",
    "LocomoConversation",
    "load_locomo",
    "DEFAULT_NEEDLE",
    "DEFAULT_QUESTION",
    "DEFAULT_ANSWER",
    "NeedleSample",
    "NeedleHaystack",
    "load_needle",
]
