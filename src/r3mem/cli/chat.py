"""`r3mem chat`: an interactive conversation on a store session; every turn is written to memory."""

from __future__ import annotations

from typing import Annotated

import click
import typer

from r3mem.cli.common import (
    DEFAULT_USER,
    BaseOpt,
    ModelOpt,
    SessionOpt,
    StoreOpt,
    UserOpt,
    console,
    load_engine,
    open_store,
    out,
)

QUIT = ("/quit", "/exit")


def read_line() -> str | None:
    """The next user line, or None at end of input (Ctrl-D) or Ctrl-C."""
    try:
        return click.prompt("you", prompt_suffix="> ", default="", show_default=False)
    except (click.Abort, EOFError, KeyboardInterrupt):
        return None


def repl(agent, max_new_tokens: int, show_recall: bool) -> int:
    """Read-answer loop until /quit or end of input; returns the number of messages answered."""
    answered = 0
    while (line := read_line()) is not None:
        line = line.strip()
        if line in QUIT:
            break
        if not line:
            continue
        reply = agent.chat(line, max_new_tokens=max_new_tokens)
        if show_recall:
            out.print(f"[recalled] {reply.recalled}", markup=False)
        out.print(f"assistant> {reply.text}", markup=False)
        answered += 1
    return answered


def chat(
    session: SessionOpt = None,
    store: StoreOpt = None,
    user: UserOpt = DEFAULT_USER,
    retrieval: Annotated[
        str | None, typer.Option("--retrieval", help="Re-rank recalled memory: bm25 | embedding.")
    ] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Memory slots recalled per message.")] = 2,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="Longest reply, in tokens.")] = 64,
    show_recall: Annotated[bool, typer.Option("--show-recall", help="Also print what memory recalled.")] = False,
    model: ModelOpt = None,
    base_model: BaseOpt = None,
) -> None:
    """Chat on a session (created if missing; a new one without --session). /quit or Ctrl-D exits."""
    from r3mem.agent import ChatAgent, ensure_session
    from r3mem.store import check_session_id

    if session is not None:
        check_session_id(session)  # before the model loads
    engine = load_engine(model, base_model)
    with open_store(store) as st:
        sess = ensure_session(st, user, session)
        agent = ChatAgent(engine, st, user, sess.session_id, retrieval, top_k=top_k)
        console.print(f"session {sess.session_id!r} of {user!r} ({sess.turn_count} earlier turns); /quit to exit",
                      markup=False, highlight=False)
        answered = repl(agent, max_new_tokens, show_recall)
    console.print(f"bye ({answered} messages answered; session {sess.session_id!r})", markup=False, highlight=False)
