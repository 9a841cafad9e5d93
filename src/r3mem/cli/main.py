"""Entry point: `r3mem COMMAND`. Each command lives in its own module."""

from __future__ import annotations

import typer

from r3mem import __version__
from r3mem.cli import demo, memory_file, train

app = typer.Typer(name="r3mem", help="R³Mem: reversible compressed memory for language models.", no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)
app.command("demo")(demo.demo)
app.command("write")(memory_file.write)
app.command("recall")(memory_file.recall)
app.command("train")(train.train)


@app.command("version")
def version() -> None:
    """Print the r3mem version."""
    print(__version__)


if __name__ == "__main__":
    app()
