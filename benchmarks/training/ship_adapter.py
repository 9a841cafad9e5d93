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
from provenance import examples_seen, train_config_of

from r3mem.adapter import read_adapter, save_adapter


def ship(ckpt: Path, dest: Path) -> str:
    cfg, state, meta = read_adapter(ckpt)
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
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--dest", type=Path, default=Path("src/r3mem/pretrained/smollm2-135m"))
    a = ap.parse_args()
    print(ship(a.checkpoint, a.dest))
    # the folder is replaced whole: a calibration of the old weights does not survive (it would be refused)
    print("no calibration.json: fit one for these weights with benchmarks/recon/calibrate.py --ship")


if __name__ == "__main__":
    main()
