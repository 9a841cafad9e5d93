"""Where a checkpoint or adapter folder comes from: its run's training config and the examples it saw.

Shared by `curve.py` (places a checkpoint on the learning curve) and `ship_adapter.py` (writes both
into the shipped adapter's header).
"""

from __future__ import annotations

from pathlib import Path

import yaml


def train_config_of(folder: Path, meta: dict) -> dict | None:
    """The run's training config: the header's (a shipped adapter), else the run folder's
    `train_config.yaml` (a checkpoint sits in RUN/checkpoints/step_N, an adapter in RUN/adapter)."""
    if meta.get("train_config") is not None:
        return meta["train_config"]
    for cand in (folder.parent.parent / "train_config.yaml", folder.parent / "train_config.yaml"):
        if cand.exists():
            return yaml.safe_load(cand.read_text())
    return None


def examples_seen(folder: Path, meta: dict) -> tuple[int, int]:
    """(step, examples seen). Checkpoints record the examples (all processes counted) since 2026-12-02;
    older ones are placed at step x batch x accumulation of their run's config."""
    step = int(meta.get("step") or meta.get("steps") or 0)
    if meta.get("examples_seen") is not None:
        return step, int(meta["examples_seen"])
    tc = train_config_of(folder, meta) or {}
    return step, step * tc.get("batch_size", 1) * tc.get("grad_accum", 1)
