"""The benchmark tasks of `r3mem eval`: what a task provides (`Task`) and the `TASKS` table.

A task loads its data file (`load`, before any model is loaded, so bad input fails in a second),
optionally prepares it with the engine's tokenizer (`prepare`), runs one method over it (`run`),
describes the data (`stats`) and draws its figure (`plot`). `default_budget` is the token budget
used when `--budget` is not given (None: the task does not use one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r3mem.evaluate import kv, lm, locomo, needle, rag, recon
from r3mem.evaluate.common import EvalOptions

__all__ = ["Task", "TASKS"]


def _unchanged(data: Any, engine, opts: EvalOptions) -> Any:
    return data


def _no_budget(engine) -> int | None:
    return None


def _fixed_budget(n: int) -> Callable[[Any], int]:
    def budget(engine) -> int:
        return n

    return budget


@dataclass(frozen=True)
class Task:
    """One benchmark task; the functions are those of its module (`r3mem.evaluate.<name>`)."""

    load: Callable[[Path, EvalOptions], Any]
    run: Callable[[Any, Any, EvalOptions, int | None], dict[str, Any]]  # (method, data, opts, budget)
    stats: Callable[[Any, Any], dict[str, Any]]  # (data, tokenizer)
    plot: Callable[[dict[str, Any], Path, EvalOptions], bool]  # (results by method, png, opts) -> drawn?
    prepare: Callable[[Any, Any, EvalOptions], Any] = _unchanged  # (data, engine, opts) -> data
    default_budget: Callable[[Any], int | None] = _no_budget  # engine -> tokens
    count: Callable[[Any], int] = len  # data -> examples loaded (books, documents, needle cells)


TASKS: dict[str, Task] = {
    "lm": Task(lm.load, lm.run, lm.stats, lm.plot, prepare=lm.prepare, default_budget=lm.default_budget,
               count=lambda d: len(d.books)),
    "recon": Task(recon.load, recon.run, recon.stats, recon.plot, count=lambda d: len(d.docs)),
    "rag": Task(rag.load, rag.run, rag.stats, rag.plot, default_budget=_fixed_budget(rag.DEFAULT_BUDGET)),
    "kv": Task(kv.load, kv.run, kv.stats, kv.plot, default_budget=_fixed_budget(kv.DEFAULT_BUDGET)),
    "locomo": Task(locomo.load, locomo.run, locomo.stats, locomo.plot,
                   default_budget=_fixed_budget(locomo.DEFAULT_BUDGET)),
    "needle": Task(needle.load, needle.run, needle.stats, needle.plot, prepare=needle.prepare,
                   default_budget=_fixed_budget(needle.DEFAULT_BUDGET), count=lambda d: len(d.cells)),
}
