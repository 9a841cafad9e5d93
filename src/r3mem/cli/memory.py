"""`r3mem memory list|show|export|import|delete|edit|forget`: manage the sessions kept in a store, and single
turns in them (`edit` and `forget` load the model to rebuild the memory; `import` of a session with a memory
loads it to check that memory; the others never do)."""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from r3mem.cli.common import (
    DEFAULT_USER,
    BaseOpt,
    CLIError,
    JsonOpt,
    ModelOpt,
    StoreOpt,
    UserOpt,
    console,
    decode_text,
    emit_json,
    load_engine,
    open_store,
    out,
    read_bytes,
)

app = typer.Typer(name="memory", help="List, show, export, import and delete stored sessions; edit or forget "
                  "single turns.", no_args_is_help=True, add_completion=False)
SessionArg = Annotated[str, typer.Argument(help="Session id.")]


def session_summary(store, user: str, session) -> dict[str, Any]:
    """A session with its memory's version, coverage and size."""
    stored = store.get_memory(user, session.session_id)
    return {"session_id": session.session_id, "turns": session.turn_count, "created_at": session.created_at,
            "updated_at": session.updated_at, "meta": session.meta,
            "memory_version": stored.version if stored else 0, "through_turn": stored.through_turn if stored else 0,
            "slots": len(stored.slots) if stored else 0, "memory_bytes": len(stored.blob) if stored else 0}


@app.command("list")
def list_(store: StoreOpt = None, user: UserOpt = DEFAULT_USER, json_out: JsonOpt = False) -> None:
    """The user's sessions with their turn count and memory size."""
    with open_store(store) as st:
        rows = [session_summary(st, user, s) for s in st.list_sessions(user)]
    if json_out:
        emit_json(rows)
        return
    if not rows:
        out.print(f"no sessions for user {user!r}", markup=False)
    for r in rows:
        out.print(f"{r['session_id']}\t{r['turns']} turns\tmemory v{r['memory_version']} ({r['slots']} slots, "
                  f"{r['memory_bytes']} bytes)", markup=False)


@app.command("show")
def show(session: SessionArg, store: StoreOpt = None, user: UserOpt = DEFAULT_USER,
         last: Annotated[int, typer.Option("--last", help="Show this many latest turns (0: all).")] = 20,
         json_out: JsonOpt = False) -> None:
    """A session: memory summary, slots (with the turn each came from) and its latest turns."""
    with open_store(store) as st:
        info = session_summary(st, user, st.get_session(user, session))
        turns = st.list_turns(user, session)
        turns = turns[-last:] if last > 0 else turns  # indices have gaps where turns were forgotten
        stored = st.get_memory(user, session)
    slots = [{"level": s.level, "key": s.key, "start": s.start, "end": s.end, "turn_id": s.turn_id}
             for s in (stored.slots if stored else [])]
    info["slot_list"] = slots
    info["turn_list"] = [
        {"index": t.index, "speaker": t.speaker, "text": t.text, "timestamp": t.timestamp} for t in turns
    ]
    if json_out:
        emit_json(info)
        return
    out.print(f"session {session!r} of {user!r}: {info['turns']} turns, memory v{info['memory_version']} "
              f"through turn {info['through_turn']}, {len(slots)} slots, {info['memory_bytes']} bytes", markup=False)
    for t in turns:
        out.print(f"  [{t.index}] {t.speaker}: {t.text}", markup=False)


@app.command("export")
def export(
    session: SessionArg,
    store: StoreOpt = None,
    user: UserOpt = DEFAULT_USER,
    to: Annotated[str, typer.Option("--out", help="JSON file to write ('-': stdout).")] = "-",
    memory_file: Annotated[
        Path | None, typer.Option("--memory-file", readable=False, help="Also write the bare memory file (.r3mem).")
    ] = None,
) -> None:
    """Export a session (turns, slots, memory file as base64) as JSON, for `memory import`."""
    from r3mem.io import atomic_write_bytes

    with open_store(store) as st:
        data = st.export_session(user, session)
    if memory_file is not None:
        if data["memory"] is None:
            raise CLIError(f"session {session!r} has no memory yet")
        atomic_write_bytes(memory_file, base64.b64decode(data["memory"]["blob_b64"]))
    text = json.dumps(data, ensure_ascii=False, indent=1) + "\n"
    if to == "-":
        sys.stdout.write(text)
    else:
        atomic_write_bytes(Path(to), text.encode("utf-8"))
        console.print(
            f"exported session {session!r} ({len(data['turns'])} turns) -> {to}", markup=False, highlight=False
        )


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(readable=False, help="JSON from `r3mem memory export` ('-': stdin).")],
    store: StoreOpt = None,
    user: UserOpt = DEFAULT_USER,
    session: Annotated[
        str | None, typer.Option("--session", help="Import under this id (default: the exported one).")
    ] = None,
    json_out: JsonOpt = False,
    model: ModelOpt = None,
    base_model: BaseOpt = None,
) -> None:
    """Recreate an exported session for the user (created if missing); an existing id is refused.

    The export is checked whole before anything is stored; its memory is decoded by the model
    (identity, checksum, shapes, dtype, token ids), which is loaded only when there is a memory."""
    from r3mem.memfile import IdentityMismatch
    from r3mem.store import Conflict, parse_export

    try:
        data = json.loads(decode_text(read_bytes(file), "stdin" if str(file) == "-" else str(file)))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CLIError(f"{file}: not JSON ({str(exc).splitlines()[0]})") from None
    parsed = parse_export(data, session)
    stale = False
    if parsed["memory"] is not None:
        try:
            load_engine(model, base_model).from_bytes(parsed["memory"]["blob"], name=f"{file}: memory")
        except IdentityMismatch:  # another engine's memory (an older adapter): rebuilt from the turns at first use
            stale = True
    with open_store(store) as st:
        try:
            st.create_user(user)
        except Conflict:
            pass
        created = st.import_session(user, data, session)
    info = {"user": user, "session": created.session_id, "turns": created.turn_count, "memory_rebuilt": stale}
    note = "; its memory was written by another model or adapter and is rebuilt from the turns at first use" \
        if stale else ""
    emit_json(info) if json_out else out.print(f"imported session {created.session_id!r} for {user!r} "
                                               f"({created.turn_count} turns){note}", markup=False)


@app.command("delete")
def delete(session: Annotated[str | None, typer.Argument(help="Session id (omit with --all).")] = None,
           store: StoreOpt = None, user: UserOpt = DEFAULT_USER,
           all_: Annotated[bool, typer.Option("--all", help="Delete the user with all their sessions.")] = False,
           yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False) -> None:
    """Delete one session (turns, memory, slots), or with --all every session of the user."""
    if (session is None) == (not all_):
        raise CLIError("give a SESSION id, or --all to delete all of the user's data")
    what = f"all data of user {user!r}" if all_ else f"session {session!r} of {user!r}"
    if not yes and not typer.confirm(f"delete {what}?"):
        raise typer.Exit(1)
    with open_store(store) as st:
        st.delete_user(user) if all_ else st.delete_session(user, session)
    console.print(f"deleted {what}", markup=False, highlight=False)


IndexArg = Annotated[int, typer.Argument(help="The turn's index (see `r3mem memory show`).")]


def _curate(session: str, index: int, store, user: str, model, base_model, change):
    """Check the session and turn exist (before the model loads), then apply `change(agent)` and report."""
    from r3mem.agent import ChatAgent

    with open_store(store) as st:
        st.get_turn(user, session, index)
        agent = ChatAgent(load_engine(model, base_model), st, user, session)
        turn, version = change(agent)
    return turn, version


@app.command("edit")
def edit(session: SessionArg, index: IndexArg,
         text: Annotated[str, typer.Argument(help="The turn's new text.")],
         speaker: Annotated[str | None, typer.Option("--speaker", help="A new speaker (default: unchanged).")] = None,
         store: StoreOpt = None, user: UserOpt = DEFAULT_USER, json_out: JsonOpt = False,
         model: ModelOpt = None, base_model: BaseOpt = None) -> None:
    """Replace a turn's text (its old text stays in the turn's history) and rebuild the memory from the turns."""
    from r3mem.text import check_text

    check_text("text", text, non_empty=True)
    turn, version = _curate(session, index, store, user, model, base_model,
                            lambda agent: agent.edit_turn(index, text, speaker))
    info = {"session": session, "index": turn.index, "speaker": turn.speaker, "text": turn.text,
            "memory_version": version}
    emit_json(info) if json_out else out.print(f"edited turn {index} of {session!r}; memory v{version}",
                                               markup=False)


@app.command("forget")
def forget(session: SessionArg, index: IndexArg, store: StoreOpt = None, user: UserOpt = DEFAULT_USER,
           yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
           json_out: JsonOpt = False, model: ModelOpt = None, base_model: BaseOpt = None) -> None:
    """Delete one turn with its history and rebuild the memory without it (no recall returns it after)."""
    if not yes and not typer.confirm(f"forget turn {index} of session {session!r} of {user!r}?"):
        raise typer.Exit(1)
    turn, version = _curate(session, index, store, user, model, base_model, lambda agent: agent.delete_turn(index))
    info = {"session": session, "index": turn.index, "forgotten": True, "memory_version": version}
    emit_json(info) if json_out else out.print(f"forgot turn {index} of {session!r}; memory v{version}",
                                               markup=False)
