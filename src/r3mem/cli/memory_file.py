"""`r3mem write` / `r3mem recall` on single memory files (`--memory FILE.r3mem`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from r3mem.cli.common import BaseOpt, JsonOpt, ModelOpt, emit_json, load_engine, out, user_errors

MemoryOpt = Annotated[Path, typer.Option("--memory", help="Memory file (.r3mem).")]


def _read_input(path: Path) -> str:
    from r3mem.data.text import read_text, strip_gutenberg

    if str(path) == "-":
        import sys

        return sys.stdin.read()
    return strip_gutenberg(read_text(path))


@user_errors
def write(
    file: Annotated[Path, typer.Argument(help="Text file to write into memory ('-' for stdin).")],
    memory: MemoryOpt,
    model: ModelOpt = None,
    base_model: BaseOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Append a text file to a memory file (created if missing)."""
    text = _read_input(file)
    engine = load_engine(model, base_model)
    mem = engine.load(memory) if memory.exists() else engine.new_memory()
    mem = engine.write(text, mem)
    engine.save(mem, memory)
    info = {"memory": str(memory), "tokens": mem.n_tokens, "paragraphs": len(mem.paragraphs), "entities": len(mem.entities),
            "state_bytes": mem.state_bytes()}
    emit_json(info) if json_out else out.print(
        f"wrote {file} -> {memory}: {mem.n_tokens} tokens, {len(mem.paragraphs)} paragraph slots, {len(mem.entities)} entity slots")


@user_errors
def recall(
    memory: MemoryOpt,
    query: Annotated[Optional[str], typer.Option("--query", help="What to recall.")] = None,
    level: Annotated[str, typer.Option("--level", help="document | paragraph | entity")] = "paragraph",
    index: Annotated[Optional[int], typer.Option("--index", help="Recall this slot.")] = None,
    top_k: Annotated[int, typer.Option("--top-k")] = 1,
    model: ModelOpt = None,
    base_model: BaseOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Reconstruct text from a memory file by running the model backward."""
    engine = load_engine(model, base_model)
    mem = engine.load(memory)
    rec = engine.recall(mem, query=query, level=level, index=index, top_k=top_k)
    emit_json(rec.to_dict()) if json_out else out.print(rec.text)
