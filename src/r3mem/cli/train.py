"""`r3mem train`: train adapters + memory tokens from a YAML config."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from r3mem.cli.common import console, emit_json


def resolve_config_path(name: str) -> Path:
    """A file path, or the name of a shipped config ("tiny", "smollm2-135m")."""
    p = Path(name)
    if p.exists():
        return p
    shipped = resources.files("r3mem") / "configs" / f"{name}.yaml"
    if shipped.is_file():
        return Path(str(shipped))
    raise FileNotFoundError(f"{name}: no such config file or shipped config")


def train(
    config: Annotated[
        str, typer.Option("--config", help="YAML/JSON config file or shipped name (tiny, smollm2-135m).")
    ],
    out: Annotated[
        Path,
        typer.Option("--out", readable=False, help="Run folder: checkpoints, metrics.jsonl, losses.png, adapter/."),
    ],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Override: key=value (dotted keys, YAML values).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Continue from the newest checkpoint in --out.")
    ] = True,
    stop_after: Annotated[
        int | None, typer.Option("--stop-after", help="Stop after this many steps (resume later).")
    ] = None,
    max_minutes: Annotated[
        float | None, typer.Option("--max-minutes", help="Stop after this much training time, at a checkpoint.")
    ] = None,
    num_processes: Annotated[
        int, typer.Option("--num-processes", help="Data-parallel processes on this machine (torchrun).")
    ] = 1,
) -> None:
    """Train R³Mem (AdamW, warmup+cosine, curriculum document -> entity, checkpoints, exact resume)."""
    import os

    if num_processes > 1 and "WORLD_SIZE" not in os.environ:
        _launch(num_processes)
        return

    from r3mem.config import load_config
    from r3mem.train.config import TrainConfig
    from r3mem.train.loop import train as run

    cfg = load_config(resolve_config_path(config), TrainConfig, set_ or [])
    result = run(cfg, out, resume=resume, stop_after=stop_after,
                 time_limit_s=None if max_minutes is None else max_minutes * 60)
    console.print(f"trained {result.steps_done}/{cfg.last_step} steps -> {out}")
    emit_json(
        {
            "out": str(out),
            "steps_done": result.steps_done,
            "adapter": str(result.adapter_dir) if result.adapter_dir else None,
            "last": result.last_metrics,
        }
    )


def _launch(n: int) -> None:
    """Re-run this very command under torchrun with n processes (gloo on CPU, NCCL on GPUs)."""
    import socket
    import sys

    from torch.distributed.run import main as torchrun

    with socket.socket() as sock:  # a free loopback port for the rendezvous
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = [a for a in sys.argv[1:]]
    if "--num-processes" in args:
        i = args.index("--num-processes")
        del args[i:i + 2]
    args = [a for a in args if not a.startswith("--num-processes=")]
    torchrun(["--nproc-per-node", str(n), "--master-addr", "127.0.0.1", "--master-port", str(port),
              "-m", "r3mem.cli.main", *args])
