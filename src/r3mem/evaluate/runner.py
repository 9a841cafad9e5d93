"""Run one task over every requested method and assemble the result document.

    doc = run_eval("rag", "nq.jsonl.gz", engine=engine, methods=["r3mem", "bm25"], opts=EvalOptions(limit=5))

Order of work, so that bad input fails in a second rather than after model loading: task name,
method names, adapter folders, data file; then models, lazily, one memory method at a time (the
main engine stays loaded: its base model, adapters disabled, is the reader for every text method).
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from r3mem.evaluate.common import EvalOptions, Skip, round_metrics
from r3mem.evaluate.methods import ADAPTER_METHODS, METHODS, TEXT_METHODS, MemoryMethod
from r3mem.evaluate.tasks import TASKS, Task

__all__ = ["TASKS", "run_eval", "parse_method_models", "parse_methods", "check_inputs", "environment", "RESULT_FORMAT"]

RESULT_FORMAT = 1
NO_ADAPTER = "no trained adapter given"
_PACKAGES = ("r3mem", "torch", "transformers", "peft", "safetensors", "numpy", "sentence-transformers", "rank-bm25",
             "sacrebleu", "rouge-score", "matplotlib")


def task_of(task: str) -> Task:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    return TASKS[task]


def parse_methods(spec: str | None) -> list[str]:
    """'a,b' -> ['a', 'b'] (checked, order kept, duplicates dropped); None or 'all' -> every method."""
    if spec is None or spec.strip() in ("", "all"):
        return list(METHODS)
    names = list(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
    bad = [n for n in names if n not in METHODS]
    if bad:
        raise ValueError(f"--methods: unknown method {bad[0]!r}; choose from {', '.join(METHODS)}")
    return names


def parse_method_models(items: list[str] | None) -> dict[str, Path]:
    """['recurrent=DIR', ...] -> {'recurrent': Path(DIR)}; every folder is checked to be an adapter."""
    from r3mem.adapter import read_adapter

    out: dict[str, Path] = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        name = name.strip()
        if not sep or not name or not path.strip():
            raise ValueError(f"--method-model {item!r}: expected NAME=DIR")
        if name == "r3mem":
            raise ValueError("--method-model r3mem=...: give the full method's adapter with --model")
        if name not in ADAPTER_METHODS:
            raise ValueError(
                f"--method-model {name}: not a method with an adapter; choose from {', '.join(ADAPTER_METHODS[1:])}"
            )
        if name in out:
            raise ValueError(f"--method-model {name}: given twice")
        out[name] = Path(path.strip()).expanduser()
        read_adapter(out[name])  # AdapterError names the folder and what is wrong
    return out


def check_inputs(task: str, data: str | Path, opts: EvalOptions, model: Path | None = None):
    """Everything that can be checked without a model; returns (task, loaded data)."""
    from r3mem.adapter import read_adapter

    mod = task_of(task)
    opts.validate()
    if model is not None:
        read_adapter(model)
    data = Path(data)
    if not data.exists():
        raise ValueError(f"{data}: no such file or folder")
    loaded = mod.load(data, opts)
    n = mod.count(loaded)
    if n == 0 and opts.limit != 0:
        raise ValueError(f"{data}: no examples for task {task} in this file")
    return mod, loaded


def environment() -> dict[str, Any]:
    versions = {"python": platform.python_version()}
    for p in _PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    return versions


def git_info() -> dict[str, Any]:
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip()) if dirty.returncode == 0 else None}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def _clean(x: Any) -> Any:
    """JSON-safe: NaN / infinity become null, tuples lists."""
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def _load_adapter_engine(name: str, path: Path, base_model: str | None, reader, device: str,
                         compute_dtype: str = "float32"):
    from r3mem.engine import R3Mem

    engine = R3Mem.from_pretrained(path, base_model=base_model, compute_dtype=compute_dtype)
    if engine.base_model_id != reader.base_model_id:
        raise ValueError(f"{path}: adapter for {name} runs on base model {engine.base_model_id!r}, but the run uses "
                         f"{reader.base_model_id!r}; pass --base-model or adapters trained on the same base")
    engine.model.to(device)
    return engine


def run_eval(
    task: str,
    data: str | Path,
    *,
    engine,
    methods: list[str] | None = None,
    opts: EvalOptions | None = None,
    method_models: dict[str, Path] | None = None,
    model_source: str | None = None,
    base_model: str | None = None,
    out: Path | None = None,
    checked: tuple | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Evaluate and return the result document (also written to ``out`` with a PNG beside it)."""
    opts = opts or EvalOptions()
    methods = methods or list(METHODS)
    method_models = method_models or {}
    log = log or (lambda s: None)
    mod, loaded = checked or check_inputs(task, data, opts)
    engine.model.to(opts.device)
    loaded = mod.prepare(loaded, engine, opts)
    budget = opts.budget or mod.default_budget(engine)
    results: dict[str, Any] = {}
    for name in methods:
        log(f"{task}: {name}")
        t0 = time.perf_counter()
        method = None
        try:
            if name == "r3mem":
                method = MemoryMethod(name, engine, opts, model_source)
            elif name in ADAPTER_METHODS:
                if name not in method_models:
                    raise Skip(NO_ADAPTER)
                method = MemoryMethod(
                    name,
                    _load_adapter_engine(name, method_models[name], base_model, engine, opts.device,
                                         opts.compute_dtype),
                    opts,
                    str(method_models[name]),
                )
            else:
                method = TEXT_METHODS[name](name, engine, opts)
            load_s = time.perf_counter() - t0
            res = mod.run(method, loaded, opts, budget)
            res = {**res, "load_time_s": load_s, **method.info()}
            results[name] = round_metrics(res)
        except Skip as s:
            results[name] = {"skipped": s.reason}
        finally:
            if method is not None and name != "r3mem":
                method.close()
    doc = {
        "format": "r3mem-eval", "format_version": RESULT_FORMAT, "task": task, "data": str(Path(data).resolve()),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "git": git_info(), "versions": environment(),
        "config": {**opts.to_dict(), "budget": budget, "methods": methods,
                   "model": model_source, "method_models": {k: str(v) for k, v in method_models.items()},
                   "base_model": base_model, "base_model_id": engine.base_model_id,
                   "reader_window": _window(engine), "argv": sys.argv[1:]},
        "data_stats": _clean(round_metrics(mod.stats(loaded, engine.tokenizer))),
        "methods": _clean(results), "plot": None,
    }
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        png = out.with_suffix(".png")
        if mod.plot(doc["methods"], png, opts):
            doc["plot"] = str(png)
        import json

        out.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return doc


def _window(engine) -> int:
    from r3mem.backbone import max_positions

    return max_positions(engine.model.lm)
