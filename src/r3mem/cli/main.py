"""Entry point: `r3mem COMMAND`. Each command lives in its own module."""

from __future__ import annotations

import typer

from r3mem import __version__
from r3mem.cli import chat, demo, mcp, memory, recall, serve, train, write

app = typer.Typer(name="r3mem", help="R³Mem: reversible compressed memory for language models.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
app.command("demo")(demo.demo)
app.command("write")(write.write)
app.command("recall")(recall.recall)
app.command("chat")(chat.chat)
app.command("serve")(serve.serve)
app.command("mcp")(mcp.mcp)
app.add_typer(memory.app, name="memory")
app.command("train")(train.train)
app.command("eval")(__import__("r3mem.cli.eval", fromlist=["evaluate"]).evaluate)


@app.command("version")
def version() -> None:
    """Print the r3mem version."""
    print(__version__)


if __name__ == "__main__":
    app()
