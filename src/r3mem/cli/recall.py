"""`r3mem recall`: reconstruct text from a store session's memory or from a memory file."""

from __future__ import annotations

from typing import Annotated

import typer

from r3mem.cli.common import (
    DEFAULT_USER,
    BaseOpt,
    JsonOpt,
    MemoryOpt,
    ModelOpt,
    SessionOpt,
    StoreOpt,
    UserOpt,
    check_memory_file,
    emit_json,
    load_engine,
    open_store,
    out,
)
from r3mem.cli.write import check_target


def recall_session(engine, store, user: str, session: str, **kw):
    """`ChatAgent.recall` on an existing session (slots carry the turn they came from)."""
    from r3mem.agent import ChatAgent

    store.get_session(user, session)  # NotFound -> one-line error
    return ChatAgent(engine, store, user, session).recall(**kw)


def recall(
    memory: MemoryOpt = None,
    store: StoreOpt = None,
    session: SessionOpt = None,
    user: UserOpt = DEFAULT_USER,
    query: Annotated[str | None, typer.Option("--query", help="What to recall.")] = None,
    level: Annotated[str, typer.Option("--level", help="document | paragraph | entity")] = "paragraph",
    index: Annotated[int | None, typer.Option("--index", help="Recall this slot.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Slots to recall for --query.")] = 1,
    model: ModelOpt = None,
    base_model: BaseOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Reconstruct text from memory by running the model backward (a session, or --memory FILE)."""
    check_target(memory, store, session)
    if memory is not None:
        check_memory_file(memory)  # a bad file is refused before the model loads
    engine = load_engine(model, base_model)
    kw = dict(query=query, level=level, index=index, top_k=top_k)
    if memory is not None:
        rec = engine.recall(engine.load(memory), **kw)
    else:
        with open_store(store) as st:
            rec = recall_session(engine, st, user, session, **kw)
    emit_json(rec.to_dict()) if json_out else out.print(rec.text, markup=False)
