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

console = Console(stderr=True)
out = Console(highlight=False, soft_wrap=True)

ModelOpt = Annotated[Optional[Path], typer.Option("--model", help="Adapter folder (default: the shipped trained adapter).")]
BaseOpt = Annotated[Optional[str], typer.Option("--base-model", help="Registry name or local HF checkpoint folder.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


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
            console.print(f"[bold red]error:[/] {msg}", markup=True, highlight=False)
            raise typer.Exit(1) from None

    return wrapper


def load_engine(model: Path | None, base_model: str | None = None):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from r3mem.engine import R3Mem

    with console.status("loading model…"):
        engine = R3Mem.from_pretrained(model, base_model=base_model)
    if not engine.trained:
        console.print("[yellow]note:[/] adapters are UNTRAINED (no trained adapter found); recall will not be faithful.")
    return engine


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
