"""`r3mem mcp`: serve a store's memory to MCP-capable agents (Model Context Protocol; needs `r3mem[mcp]`)."""

from __future__ import annotations

import contextlib
import sys
from typing import Annotated

import typer

from r3mem.cli.common import (
    DEFAULT_USER,
    BaseOpt,
    CLIError,
    ModelOpt,
    StoreOpt,
    UserOpt,
    console,
    load_engine,
    open_store,
)


def mcp(
    transport: Annotated[
        str,
        typer.Option(
            "--transport", help="stdio (the client starts this command) | streamable-http (a long-running server)."
        ),
    ] = "stdio",
    store: StoreOpt = None,
    user: UserOpt = DEFAULT_USER,
    session: Annotated[str, typer.Option("--session", help="Session used when the agent names none.")] = "default",
    host: Annotated[
        str, typer.Option("--host", help="streamable-http: interface (no auth: keep it local).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="streamable-http: TCP port.")] = 8765,
    path: Annotated[str, typer.Option("--path", help="streamable-http: endpoint path.")] = "/mcp",
    model: ModelOpt = None,
    base_model: BaseOpt = None,
) -> None:
    """Serve memory over the Model Context Protocol: tools to write, recall, answer, list and delete sessions."""
    try:
        from r3mem.mcp_server import TRANSPORTS, create_server, run
    except ImportError as e:
        raise CLIError(str(e)) from None
    if transport not in TRANSPORTS:
        raise CLIError(f"--transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    with contextlib.redirect_stdout(sys.stderr):  # over stdio, stdout carries the protocol and nothing else
        engine = load_engine(model, base_model)
    with open_store(store) as st:
        console.print(
            f"store: {st.url}; user {user!r}; MCP over {transport}"
            + (f" at http://{host}:{port}{path}" if transport != "stdio" else ""),
            markup=False,
            highlight=False,
        )
        try:
            run(create_server(engine, st, user, default_session=session), transport, host=host, port=port, path=path)
        except KeyboardInterrupt:  # Ctrl-C: every acknowledged write is already committed
            console.print("stopped", markup=False, highlight=False)
