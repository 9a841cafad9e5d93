"""`r3mem serve`: run the HTTP service (FastAPI under uvicorn) over a store."""

from __future__ import annotations

import secrets
from typing import Annotated

import typer

from r3mem.cli.common import BaseOpt, CLIError, ModelOpt, StoreOpt, console, load_engine, open_store


def check_listen(host: str, port: int, max_body_bytes: int) -> None:
    """Options the server would only refuse after the model loaded, with a traceback."""
    if not 0 <= port <= 65535:
        raise CLIError(f"--port must be 0-65535, got {port}")
    if not host.strip():
        raise CLIError("--host must not be empty")
    if max_body_bytes < 1:
        raise CLIError(f"--max-body-bytes must be >= 1, got {max_body_bytes}")


def serve(
    store: StoreOpt = None,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    admin_token: Annotated[
        str | None,
        typer.Option(
            "--admin-token",
            envvar="R3MEM_ADMIN_TOKEN",
            help="Token allowed to create users (default: a random one, printed).",
        ),
    ] = None,
    max_body_bytes: Annotated[int, typer.Option("--max-body-bytes", help="Largest request body accepted.")] = 1_000_000,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
    model: ModelOpt = None,
    base_model: BaseOpt = None,
) -> None:
    """Serve sessions, write, recall, answer and chat over HTTP (docs at /docs); Ctrl-C finishes requests in flight."""
    import uvicorn

    from r3mem.service import create_app
    from r3mem.service.protocol import uvicorn_options

    check_listen(host, port, max_body_bytes)  # before the model loads, in one line
    engine = load_engine(model, base_model)
    if not admin_token:
        admin_token = secrets.token_urlsafe(24)
        console.print(f"admin token (for POST /users): {admin_token}", markup=False, highlight=False)
    with open_store(store) as st:
        console.print(f"store: {st.url}", markup=False, highlight=False)
        app = create_app(engine, st, max_body_bytes=max_body_bytes, admin_token=admin_token)
        uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=60,
                    **uvicorn_options())
