"""Shared CLI pieces: option aliases, engine loading, one-line errors and JSON output."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

console = Console(stderr=True)
out = Console(highlight=False, soft_wrap=True)

# Paths are declared readable=False: click's own readability check answers with a usage box and exit
# code 2; the commands' readers (`read_bytes`) give the same one-line error as for a missing file.
ModelOpt = Annotated[
    Path | None,
    typer.Option(
        "--model", readable=False, help="Adapter folder (default: $R3MEM_MODEL, else the shipped trained adapter)."
    ),
]
BaseOpt = Annotated[
    str | None,
    typer.Option(
        "--base-model",
        help="Registry name, local HF checkpoint folder or tiny-llama (default: $R3MEM_BASE_MODEL, else smollm2-135m).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="R3MEM_STORE",
        help="Store file or URL (sqlite:///…, postgresql://…); default: $R3MEM_STORE, else the embedded SQLite "
        "store in your data dir ($R3MEM_HOME/store.db if set).",
    ),
]
UserOpt = Annotated[str, typer.Option("--user", envvar="R3MEM_USER", help="User whose sessions to use.")]
SessionOpt = Annotated[str | None, typer.Option("--session", help="Session id in the store.")]
MemoryOpt = Annotated[
    Path | None, typer.Option("--memory", readable=False, help="Memory file (.r3mem) instead of a store session.")
]
EncodingOpt = Annotated[str, typer.Option("--encoding", help="Text encoding of the input, e.g. latin-1 or cp1252 "
                                           "(many Project Gutenberg files are Latin-1).")]
DEFAULT_USER = "local"
DEFAULT_ENCODING = "utf-8"


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 1."""


class OneLineErrors(TyperGroup):
    """The root command group. Every error a command raises is printed here, once, as one line
    ("error: …", exit code 1); R3MEM_DEBUG=1 shows the traceback instead. Usage errors keep click's
    own message and exit code 2."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException, KeyboardInterrupt):  # TyperException: usage errors
            raise
        except Exception as e:  # noqa: BLE001 - the one place errors become messages
            if debug():
                raise
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            console.print(f"[bold red]error:[/] {escape(msg)}", markup=True, highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None


def debug() -> bool:
    return bool(os.environ.get("R3MEM_DEBUG"))


def read_bytes(path: Path) -> bytes:
    """The bytes of FILE ('-': stdin); any failure is one line naming the file and the reason."""
    if str(path) == "-":
        return sys.stdin.buffer.read()
    if not os.access(path, os.R_OK) and path.exists():
        raise CLIError(f"cannot read {path}: permission denied")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {(exc.strerror or str(exc)).lower()}") from None


def check_encoding(encoding: str) -> str:
    """The codec's canonical name; an unknown one is refused before any work."""
    import codecs

    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise CLIError(f"--encoding: unknown encoding {encoding!r} (try utf-8, latin-1 or cp1252)") from None


def decode_text(data: bytes, name: str, encoding: str = DEFAULT_ENCODING) -> str:
    """Strictly decoded text with a UTF-8 byte-order mark dropped and newlines normalised to \\n;
    invalid bytes are refused with their offset and the option that fixes it."""
    encoding = check_encoding(encoding)
    skip = 3 if encoding in ("utf-8", "utf-8-sig") and data.startswith(b"\xef\xbb\xbf") else 0
    try:
        text = data[skip:].decode(encoding)
    except UnicodeDecodeError as exc:
        shown = "UTF-8" if encoding == "utf-8" else encoding
        raise CLIError(
            f"{name}: invalid {shown} at byte {skip + exc.start} ({exc.reason}); "
            f"if the text is in another encoding, pass it with --encoding (e.g. --encoding latin-1)"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def check_memory_file(path: Path) -> None:
    """Refuse a file that is not a sound memory file *before* the model loads (seconds, or minutes on a
    slow disk); whether it fits the model is checked again once the model is loaded."""
    from r3mem.memfile import decode_memory

    decode_memory(read_bytes(path), {}, name=str(path))  # no identity: structure, version, checksum only


def quiet_libraries() -> None:
    """Keep third-party progress bars and warnings (transformers' "Loading weights", FutureWarnings)
    out of normal output; R3MEM_DEBUG=1 shows them."""
    if debug():
        return
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(transformers|peft|torch|accelerate)(\.|$)")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("transformers", "peft", "accelerate", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # transformers is a dependency; this only guards odd installs
        pass


def load_engine(model: Path | None, base_model: str | None = None, compute_dtype: str | None = None, *,
                memory_bits: int | None = None, levels: tuple[str, ...] | None = None):
    """The engine for a command: `--model`/$R3MEM_MODEL adapter, `--base-model`/$R3MEM_BASE_MODEL base model;
    `memory_bits` and `levels` override the adapter config's (`R3Mem.from_pretrained`).

    A `tiny-<family>` base model without an adapter gets `tiny_config` (tests point commands at it).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    quiet_libraries()
    from r3mem.engine import R3Mem
    from r3mem.tiny import tiny_config

    if model is None and os.environ.get("R3MEM_MODEL"):
        model = Path(os.environ["R3MEM_MODEL"])
    base_model = base_model or os.environ.get("R3MEM_BASE_MODEL") or None
    config = tiny_config(base_model) if model is None and base_model and base_model.startswith("tiny-") else None
    with console.status("loading model…"):
        # tiny test models keep their config's float32 unless asked; real ones default to "auto"
        dtype = compute_dtype or (None if config is not None else "auto")
        engine = R3Mem.from_pretrained(model, base_model=base_model, config=config, compute_dtype=dtype,
                                       memory_bits=memory_bits, levels=levels)
    if not engine.trained:
        console.print(
            "[yellow]note:[/] adapters are UNTRAINED (no trained adapter found); recall will not be faithful.",
            soft_wrap=True,
        )
    return engine


def open_store(store: str | None):
    """The MemoryStore at `--store` (default: `MemoryStore.default_path()`)."""
    from r3mem.store import MemoryStore

    return MemoryStore(store)


def progress_bar():
    """A rich progress bar on stderr (hidden when stderr is not a terminal)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=True, disable=not console.is_terminal)


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
