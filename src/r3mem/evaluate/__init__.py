"""Evaluation harness: every benchmark task against R³Mem, its ablations and the baselines.

One module per task (``lm``, ``recon``, ``rag``, ``kv``, ``locomo``, ``needle``), the compared
systems in ``methods``, the orchestration and result document in ``runner``. The CLI entry point is
``r3mem eval`` (``r3mem.cli.eval``); ``benchmarks/README.md`` has the commands for the real data.
"""

from r3mem.evaluate.common import EvalOptions, Skip
from r3mem.evaluate.methods import ADAPTER_METHODS, METHODS
from r3mem.evaluate.runner import TASKS, run_eval

__all__ = ["EvalOptions", "Skip", "METHODS", "ADAPTER_METHODS", "TASKS", "run_eval"]
