"""Ship a training checkpoint as the package's adapter, its tensors stored in 16-bit.

Weights are rounded to float16 (half the size of the float32 checkpoint); loading copies them into
the model's float32 parameters. The run's config, step and examples seen go into the header, so a
later run can continue from the shipped adapter (`init_adapter`) and the learning curve can place it.

Usage: python benchmarks/training/ship_adapter.py CHECKPOINT [--dest src/r3mem/pretrained/smollm2-135m]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
import yaml

from r3mem.adapter import read_adapter, save_adapter


def ship(ckpt: Path, dest: Path, run_config: Path | None) -> str:
    cfg, state, meta = read_adapter(ckpt)
    half = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state.items()}
    if run_config and run_config.exists():
        train_cfg = yaml.safe_load(run_config.read_text())
    else:
        train_cfg = meta.get("train_config")
    step = int(meta.get("step") or meta.get("steps") or 0)
    per_step = (train_cfg or {}).get("batch_size", 1) * (train_cfg or {}).get("grad_accum", 1)
    seen = meta.get("examples_seen", step * per_step)  # recorded by checkpoints since 2026-12-02 (counts processes)
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
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--dest", type=Path, default=Path("src/r3mem/pretrained/smollm2-135m"))
    a = ap.parse_args()
    print(ship(a.checkpoint, a.dest, a.checkpoint.parent.parent / "train_config.yaml"))


if __name__ == "__main__":
    main()
