"""Entry point: `r3mem COMMAND` (also `python -m r3mem`). Each command lives in its own module.

Errors are formatted in one place, the root group `OneLineErrors`: one line each, exit code 1.
"""

from __future__ import annotations

import typer

from r3mem import __version__
from r3mem.cli import chat, demo, mcp, memory, recall, serve, train, write
from r3mem.cli import eval as eval_cmd
from r3mem.cli.common import OneLineErrors

app = typer.Typer(name="r3mem", help="R³Mem: reversible compressed memory for language models.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False, cls=OneLineErrors)
app.command("demo")(demo.demo)
app.command("write")(write.write)
app.command("recall")(recall.recall)
app.command("chat")(chat.chat)
app.command("serve")(serve.serve)
app.command("mcp")(mcp.mcp)
app.add_typer(memory.app, name="memory")
app.command("train")(train.train)
app.command("eval")(eval_cmd.evaluate)


@app.command("version")
def version() -> None:
    """Print the r3mem version."""
    print(__version__)


def _print_version(value: bool) -> None:
    if value:
        print(__version__)
        raise typer.Exit()


@app.callback()
def _root(ctx: typer.Context,
          version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                       help="Print the r3mem version and exit.")) -> None:
    """R³Mem: reversible compressed memory for language models (defaults for options: $R3MEM_CONFIG or
    ~/.config/r3mem/config.toml, see `r3mem.cli.config`)."""
    from r3mem.cli.config import default_map

    if ctx.resilient_parsing:  # shell completion: no file reading
        return
    ctx.default_map = default_map(ctx.command)


def main() -> None:
    """The `r3mem` console script and `python -m r3mem`."""
    app()


if __name__ == "__main__":
    main()
