"""Ship a training checkpoint as the package's adapter, its tensors stored in 16-bit.

Weights are rounded to float16 (half the size of the float32 checkpoint); loading copies them into
the model's float32 parameters. The run's config, step and examples seen go into the header, so a
later run can continue from the shipped adapter (`init_adapter`) and the learning curve can place it.

The shipped config also carries the use-time defaults an engine loaded from the folder writes with:
`--levels` (default document,paragraph: no answer reads entity slots, LOG 2026-12-07) and `--memory-bits`
(default 4: the adapter was trained with the quantizer in the loop and reconstructs as well at 4 bits as
at 16). `--defaults-only` rewrites only those in an already shipped folder (weights and calibration kept).

Usage: python benchmarks/training/ship_adapter.py CHECKPOINT [--dest src/r3mem/pretrained/smollm2-135m]
       python benchmarks/training/ship_adapter.py --defaults-only [--levels ...] [--memory-bits ...]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from provenance import examples_seen, train_config_of

from r3mem.adapter import META, read_adapter, save_adapter
from r3mem.io import atomic_write_bytes


def use_defaults(cfg, levels: tuple[str, ...], bits: int):
    """The config an engine loaded from the shipped folder writes with (validated by `R3MemConfig`)."""
    return cfg.replace(hierarchy_levels=levels, memory_bits=bits)


def set_defaults(dest: Path, levels: tuple[str, ...], bits: int) -> None:
    """Rewrite the use-time defaults of a shipped folder; the weights (and so the hash and the
    calibration fitted for them) stay as they are."""
    import json

    cfg, _, meta = read_adapter(dest)  # checked whole first
    meta["config"] = use_defaults(cfg, levels, bits).to_dict()
    atomic_write_bytes(dest / META, json.dumps(meta, indent=2).encode())


def ship(ckpt: Path, dest: Path, levels: tuple[str, ...], bits: int) -> str:
    cfg, state, meta = read_adapter(ckpt)
    cfg = use_defaults(cfg, levels, bits)
    half = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state.items()}
    train_cfg = train_config_of(ckpt, meta)
    step, seen = examples_seen(ckpt, meta)
    extra = {"trained": True, "step": step, "examples_seen": seen, "stored_dtype": "float16",
             "train_config": train_cfg, "source_checkpoint": ckpt.name}
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    h = save_adapter(tmp, half, cfg, meta["base_model_id"], extra)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return h


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", type=Path, nargs="?")
    ap.add_argument("--dest", type=Path, default=Path("src/r3mem/pretrained/smollm2-135m"))
    ap.add_argument("--levels", default="document,paragraph", help="hierarchy levels written by default")
    ap.add_argument("--memory-bits", type=int, default=4, help="memory_bits by default (16: float16)")
    ap.add_argument("--defaults-only", action="store_true", help="only rewrite the shipped folder's use defaults")
    a = ap.parse_args()
    levels = tuple(a.levels.split(","))
    if a.defaults_only:
        set_defaults(a.dest, levels, a.memory_bits)
        print(f"{a.dest}: writes {','.join(levels)} at {a.memory_bits} bits by default")
        return
    if a.checkpoint is None:
        ap.error("a CHECKPOINT to ship (or --defaults-only)")
    print(ship(a.checkpoint, a.dest, levels, a.memory_bits))
    # the folder is replaced whole: a calibration of the old weights does not survive (it would be refused)
    print("no calibration.json: fit one for these weights with benchmarks/recon/calibrate.py --ship")


if __name__ == "__main__":
    main()
