"""Two-process data-parallel training (gloo on CPU) equals one process with the same global batch."""

import os
import subprocess
import sys
from pathlib import Path

import torch

from r3mem.adapter import read_adapter
from r3mem.cli.train import resolve_config_path
from r3mem.config import load_config
from r3mem.train.config import TrainConfig
from r3mem.train.loop import train


def _run_cli(args, tmp):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    r = subprocess.run(
        [sys.executable, "-m", "r3mem.cli.main", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return r


def test_two_processes_equal_one_with_same_global_batch(tmp_path):
    two = tmp_path / "two"
    _run_cli(["train", "--config", "tiny", "--out", str(two), "--num-processes", "2",
              "--set", "grad_accum=1", "--set", "steps=4", "--set", "checkpoint_every=2"], tmp_path)
    cfg = load_config(resolve_config_path("tiny"), TrainConfig)
    cfg.grad_accum, cfg.steps, cfg.checkpoint_every = 2, 4, 2
    one = tmp_path / "one"
    train(cfg, one, progress=False)
    _, a, _ = read_adapter(two / "adapter")
    _, b, _ = read_adapter(one / "adapter")
    assert a.keys() == b.keys()
    moved = False
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    _, init, _ = read_adapter(two / "checkpoints" / "step_0000002")
    moved = any(not torch.equal(init[k], a[k]) for k in a)
    assert moved, "training must change the weights"

    # a checkpoint written by the two-process run resumes in a single process
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    import shutil

    shutil.copytree(two / "checkpoints" / "step_0000002", resumed / "checkpoints" / "step_0000002")
    train(cfg, resumed, progress=False)
    _, c, _ = read_adapter(resumed / "adapter")
    for k in a:
        torch.testing.assert_close(c[k], b[k], rtol=1e-4, atol=1e-5)
