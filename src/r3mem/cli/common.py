"""Shared CLI pieces: option aliases, engine loading, one-line errors and JSON output."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True)
out = Console(highlight=False, soft_wrap=True)

ModelOpt = Annotated[Optional[Path], typer.Option("--model", help="Adapter folder (default: $R3MEM_MODEL, else the shipped trained adapter).")]
BaseOpt = Annotated[Optional[str], typer.Option("--base-model", help="Registry name, local HF checkpoint folder or tiny-llama (default: $R3MEM_BASE_MODEL, else smollm2-135m).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
StoreOpt = Annotated[Optional[str], typer.Option("--store", help="Store file or URL (sqlite:///…, postgresql://…); default: the embedded SQLite store in your data dir ($R3MEM_HOME/store.db if set).")]
UserOpt = Annotated[str, typer.Option("--user", envvar="R3MEM_USER", help="User whose sessions to use.")]
SessionOpt = Annotated[Optional[str], typer.Option("--session", help="Session id in the store.")]
MemoryOpt = Annotated[Optional[Path], typer.Option("--memory", help="Memory file (.r3mem) instead of a store session.")]
DEFAULT_USER = "local"


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 1."""


def user_errors(fn: Callable) -> Callable:
    """Turn library errors into one-line messages; tracebacks only with R3MEM_DEBUG=1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - the one place errors become messages
            if os.environ.get("R3MEM_DEBUG"):
                raise
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            console.print(f"[bold red]error:[/] {escape(msg)}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def tiny_config(base_model: str):
    """A small R3MemConfig for the in-memory `tiny-*` test models (no download, CPU seconds)."""
    from r3mem.config import R3MemConfig

    return R3MemConfig(base_model=base_model, num_mem_tokens=4, segment_len=16, max_slot_tokens=16, max_recall_tokens=24,
                       max_paragraph_tokens=64, coupling_hidden=16)


def load_engine(model: Path | None, base_model: str | None = None):
    """The engine for a command: `--model`/$R3MEM_MODEL adapter, `--base-model`/$R3MEM_BASE_MODEL base model.

    A `tiny-<family>` base model without an adapter gets `tiny_config` (tests point commands at it).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from r3mem.engine import R3Mem

    if model is None and os.environ.get("R3MEM_MODEL"):
        model = Path(os.environ["R3MEM_MODEL"])
    base_model = base_model or os.environ.get("R3MEM_BASE_MODEL") or None
    config = tiny_config(base_model) if model is None and base_model and base_model.startswith("tiny-") else None
    with console.status("loading model…"):
        engine = R3Mem.from_pretrained(model, base_model=base_model, config=config)
    if not engine.trained:
        console.print("[yellow]note:[/] adapters are UNTRAINED (no trained adapter found); recall will not be faithful.",
                      soft_wrap=True)
    return engine


def open_store(store: str | None):
    """The MemoryStore at `--store` (default: `MemoryStore.default_path()`)."""
    from r3mem.store import MemoryStore

    return MemoryStore(store)


def progress_bar():
    """A rich progress bar on stderr (hidden when stderr is not a terminal)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True, disable=not console.is_terminal)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
