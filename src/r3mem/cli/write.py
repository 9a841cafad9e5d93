"""`r3mem write FILE`: append a text file to a store session (one turn per paragraph) or to a memory file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from r3mem.cli.common import (
    DEFAULT_ENCODING,
    DEFAULT_USER,
    BaseOpt,
    CLIError,
    EncodingOpt,
    JsonOpt,
    MemoryOpt,
    ModelOpt,
    SessionOpt,
    StoreOpt,
    UserOpt,
    check_memory_file,
    decode_text,
    emit_json,
    load_engine,
    open_store,
    out,
    progress_bar,
    read_bytes,
)

PIECE_CHARS = 4000  # memory-file form: write in pieces for the progress bar (write(a)+write(b) == write(a+b))


def read_input(path: Path, encoding: str = DEFAULT_ENCODING) -> str:
    """The text of FILE ('-' for stdin), decoded strictly (a bad byte is refused with its offset, before
    anything is stored), with a Project Gutenberg header/footer stripped from files."""
    from r3mem.text import strip_gutenberg

    text = decode_text(read_bytes(path), "stdin" if str(path) == "-" else str(path), encoding)
    return text if str(path) == "-" else strip_gutenberg(text)


def check_target(memory: Path | None, store: str | None, session: str | None) -> None:
    """Exactly one of `--memory FILE` or `--session ID` (with an optional `--store`)."""
    if memory is not None and (store is not None or session is not None):
        raise CLIError("give either --memory FILE.r3mem or --session ID [--store PATH], not both")
    if memory is None and session is None:
        raise CLIError("missing target: give --session ID [--store PATH] or --memory FILE.r3mem")
    if session is not None:
        from r3mem.store import check_session_id

        check_session_id(session)  # before the model loads: the store would refuse it after


def write_memory_file(engine, text: str, path: Path) -> dict:
    """Append `text` to the memory file at `path` (created if missing); returns a summary."""
    mem = engine.load(path) if path.exists() else engine.new_memory()
    pieces = [text[i:i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)]
    with progress_bar() as bar:
        task = bar.add_task(f"writing {len(text)} chars", total=len(pieces))
        for piece in pieces:
            mem = engine.write(piece, mem)
            bar.advance(task)
    engine.save(mem, path)
    return {
        "memory": str(path),
        "tokens": mem.n_tokens,
        "paragraphs": len(mem.paragraphs),
        "entities": len(mem.entities),
        "state_bytes": mem.state_bytes(),
    }


def write_session(engine, store, user: str, session: str, text: str, speaker: str) -> dict:
    """Append each paragraph of `text` as a turn of the session (created if missing), then update its memory."""
    from r3mem.agent import ChatAgent, ensure_session
    from r3mem.hierarchy import paragraph_spans

    paragraphs = [p.text for p in paragraph_spans(text)]
    if not paragraphs:
        raise CLIError("nothing to write: the input holds no text")
    ensure_session(store, user, session)
    agent = ChatAgent(engine, store, user, session)
    with progress_bar() as bar:
        task = bar.add_task("writing turns", total=len(paragraphs))
        turns = agent.add_turns(
            [(speaker, p) for p in paragraphs], progress=lambda done, total: bar.update(task, completed=done)
        )
    stored = store.get_memory(user, session)
    return {"store": store.url, "user": user, "session": session, "turns": len(turns), "first_turn": turns[0].index,
            "last_turn": turns[-1].index, "memory_version": stored.version, "slots": len(stored.slots)}


def write(
    file: Annotated[Path, typer.Argument(readable=False, help="Text file to write into memory ('-' for stdin).")],
    memory: MemoryOpt = None,
    store: StoreOpt = None,
    session: SessionOpt = None,
    user: UserOpt = DEFAULT_USER,
    speaker: Annotated[str, typer.Option("--speaker", help="Speaker of the turns written to a session.")] = "user",
    model: ModelOpt = None,
    base_model: BaseOpt = None,
    json_out: JsonOpt = False,
    encoding: EncodingOpt = DEFAULT_ENCODING,
) -> None:
    """Append a text file to a store session (one turn per paragraph) or to a memory file (--memory)."""
    check_target(memory, store, session)
    text = read_input(file, encoding)  # all input is checked before the model loads or anything is stored
    if not text.strip():
        raise CLIError(f"{file}: nothing to write (empty input)")
    if memory is not None and memory.exists():
        check_memory_file(memory)
    engine = load_engine(model, base_model)
    if memory is not None:
        info = write_memory_file(engine, text, memory)
        msg = (f"wrote {file} -> {memory}: {info['tokens']} tokens, {info['paragraphs']} paragraph slots, "
               f"{info['entities']} entity slots")
    else:
        with open_store(store) as st:
            info = write_session(engine, st, user, session, text, speaker)
        msg = (f"wrote {file} -> session {session!r} of {user!r}: turns {info['first_turn']}-{info['last_turn']}, "
               f"memory version {info['memory_version']}, {info['slots']} slots")
    emit_json(info) if json_out else out.print(msg, markup=False)
