"""The training loop: AdamW, warmup + cosine schedule, gradient accumulation, mixed precision,
checkpoints with exact resume, every loss term logged (JSONL + PNG).

Resuming restores the trainable weights, optimizer, scheduler and RNG state; batches are a pure
function of (seed, step), so a resumed run reproduces the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from r3mem.adapter import load_trainable_state, read_adapter, save_adapter
from r3mem.backbone import base_model_id, load_base
from r3mem.config import ConfigError, save_config
from r3mem.losses import LossTerms, lm_losses, local_lm_losses, pair_losses, recon_losses
from r3mem.model import R3MemModel
from r3mem.train.config import TrainConfig
from r3mem.train.mixture import TrainingMixture, split_rows
from r3mem.train.warmstart import init_from_adapter

__all__ = ["train", "setup", "TrainResult", "step_losses", "lr_factor", "dist_info"]

_CKPT = "checkpoints"


@dataclass
class TrainResult:
    out_dir: Path
    steps_done: int
    last_metrics: dict
    adapter_dir: Path | None


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay to `min_lr_ratio` of the peak; in a cooldown branch, from
    `cooldown_from` a linear fall from the cosine's value there to `min_lr_ratio` at `last_step`."""
    if cfg.cooldown_from is not None and step >= cfg.cooldown_from:
        at = _cosine_factor(cfg.cooldown_from, cfg)
        t = min(1.0, (step - cfg.cooldown_from + 1) / (cfg.last_step - cfg.cooldown_from))
        return at + (cfg.min_lr_ratio - at) * t
    return _cosine_factor(step, cfg)


def _cosine_factor(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def step_losses(model: R3MemModel, batch: dict) -> LossTerms:
    c = model.cfg
    if batch["level"] == "recon":
        return recon_losses(model, batch["ctx"], batch["target"], batch["ratio"], c.w_cyc,
                            text_lm=c.recon_lm and c.w_fwd > 0, bits=batch.get("bits", 16),
                            before=batch.get("before"))
    if batch["level"] == "document" and "piece" in batch:
        return local_lm_losses(model, batch["ids"], batch["mask"], batch["piece"], c.w_fwd, c.w_bwd, c.w_cyc)
    if batch["level"] == "document":
        return lm_losses(model, batch["ids"], batch["mask"], c.w_fwd, c.w_bwd, c.w_cyc,
                         read_previous=batch.get("read_previous", False))
    return pair_losses(model, batch["ctx"], batch["query"], batch["target"], batch["ratio"], c.w_fwd, c.w_bwd, c.w_cyc,
                       condition_on_query=batch["use_query"], bits=batch.get("bits", 16))


def _autocast(cfg: TrainConfig, device: torch.device):
    if cfg.precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _device(cfg: TrainConfig, rank: int) -> torch.device:
    """The run's device: under several processes each takes its own GPU (rank modulo GPUs)."""
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but torch sees no CUDA device")
    if cfg.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", rank % torch.cuda.device_count())


def _to(batch: dict, device: torch.device) -> dict:
    """A batch (tensors and (ids, mask) pairs, built on the CPU) on the run's device."""
    def move(v):
        if isinstance(v, tuple):
            return tuple(move(x) for x in v)
        return v.to(device) if torch.is_tensor(v) else v

    return {k: move(v) for k, v in batch.items()}


def _checkpoints(out: Path) -> list[Path]:
    return sorted((out / _CKPT).glob("step_*"), key=lambda p: int(p.name.split("_")[1]))


def _examples_seen(step: int, cfg: TrainConfig, world: int) -> int:
    """Examples seen after `step` steps at this run's global batch (recorded in every adapter header
    the run writes, so a folder copied elsewhere still knows it)."""
    return step * cfg.batch_size * cfg.grad_accum * world


def _save_checkpoint(out: Path, model: R3MemModel, opt, sched, step: int, cfg: TrainConfig, world: int = 1) -> None:
    final = out / _CKPT / f"step_{step:07d}"
    tmp = final.with_name(final.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    save_adapter(tmp, model.trainable_state_dict(), model.cfg, base_model_id(model.lm),
                 {"trained": True, "step": step, "examples_seen": _examples_seen(step, cfg, world)})
    torch.save({"step": step, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                "torch_rng": torch.get_rng_state()}, tmp / "trainer_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)  # a checkpoint exists whole or not at all
    for old in _checkpoints(out)[:-cfg.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)


def _param_groups(model: R3MemModel, cfg: TrainConfig) -> list[dict]:
    """The trainable parameters: one group, or the memory's own apart at lr x `memory_lr_scale`."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.memory_lr_scale == 1.0:
        return [{"params": [p for _, p in named]}]
    mem = [p for n, p in named if n.startswith("memory.")]
    rest = [p for n, p in named if not n.startswith("memory.")]
    return [{"params": rest}, {"params": mem, "lr": cfg.lr * cfg.memory_lr_scale}]


def _resume(out: Path, model: R3MemModel, opt, sched) -> int:
    ckpts = _checkpoints(out)
    if not ckpts:
        return 0
    _, state, _ = read_adapter(ckpts[-1])
    load_trainable_state(model, state, f"checkpoint {ckpts[-1]}")
    ts = torch.load(ckpts[-1] / "trainer_state.pt", weights_only=False)
    if len(ts["optimizer"]["param_groups"]) != len(opt.param_groups):
        raise ConfigError(f"checkpoint {ckpts[-1]}: saved with {len(ts['optimizer']['param_groups'])} parameter "
                          f"group(s), this run has {len(opt.param_groups)} (memory_lr_scale changed; start a new "
                          "run folder with init_adapter instead)")
    opt.load_state_dict(ts["optimizer"])
    sched.load_state_dict(ts["scheduler"])
    torch.set_rng_state(ts["torch_rng"])
    return int(ts["step"])


def _truncate_log(path: Path, upto_step: int) -> None:
    """Drop log lines past the checkpoint we resume from, so the log matches an uninterrupted run."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= upto_step]
    path.write_text("".join(ln + "\n" for ln in keep))


def dist_info() -> tuple[int, int]:
    """(rank, world size) under torchrun / `r3mem train --num-processes N`; (0, 1) otherwise."""
    import os

    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _init_dist(world: int) -> None:
    import torch.distributed as dist

    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def _all_reduce_mean(tensors: list[torch.Tensor], world: int) -> None:
    """Average gradients (and logged sums) over processes: data-parallel gradient synchronisation."""
    if world == 1:
        return
    import torch.distributed as dist

    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat)
    flat /= world
    i = 0
    for t in tensors:
        t.copy_(flat[i:i + t.numel()].view_as(t))
        i += t.numel()


def _n_tokens(batch: dict) -> int:
    if batch["level"] == "document":
        return int(batch["mask"].sum())
    if batch["level"] == "recon":
        before = int(batch["before"][1].sum()) if "before" in batch else 0
        return int(batch["ctx"][1].sum() + batch["target"][1].sum()) + before
    return int(batch["ctx"][1].sum() + batch["target"][1].sum() + batch["query"][1].sum())


@dataclass
class _Run:
    """A run set up to train: its model, data, optimizer and schedule, from `start` (the step resumed)."""

    cfg: TrainConfig
    out: Path
    model: R3MemModel
    data: TrainingMixture
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    params: list[torch.Tensor]
    device: torch.device
    start: int
    log_path: Path
    rank: int
    world: int

    @property
    def lead(self) -> bool:  # only the lead process writes logs, checkpoints and the final adapter
        return self.rank == 0


def setup(cfg: TrainConfig, out_dir: str | Path, resume: bool = True) -> _Run:
    """Everything a run needs before its first step: the process group, the run folder (its config
    written), the model on its device, the data, the optimizer and schedule, resumed from the newest
    checkpoint (`resume`) or started from `init_adapter`, and the log truncated to the step resumed."""
    out = Path(out_dir)
    rank, world = dist_info()
    _init_dist(world)
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        save_config(cfg, out / "train_config.yaml")
    device = _device(cfg, rank)  # before the model loads: a missing GPU fails at once
    torch.manual_seed(cfg.seed)
    base, tok = load_base(cfg.model.base_model)
    model = R3MemModel(base, cfg.model)
    model.to(device)
    data = TrainingMixture(cfg, tok)
    opt = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg))
    start = _resume(out, model, opt, sched) if resume else 0
    if start == 0 and cfg.init_adapter:
        start = init_from_adapter(cfg.init_adapter, model, cfg.model)
        sched.last_epoch = start  # the schedule continues where the adapter's run stopped
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * lr_factor(start, cfg)
    log_path = out / "metrics.jsonl"
    if rank == 0:
        if not resume:
            log_path.unlink(missing_ok=True)
        _truncate_log(log_path, start)
    params = [p for g in opt.param_groups for p in g["params"]]
    return _Run(cfg, out, model, data, opt, sched, params, device, start, log_path, rank, world)


def _train_step(run: _Run, step: int) -> tuple[dict, int]:
    """One optimizer step: the global batch (world x grad_accum micro-batches, each cut into chunks of
    `micro_batch_size` rows), gradients averaged over processes and clipped. Returns (the logged loss
    terms, gradient norm and level of the step; tokens seen)."""
    cfg, model = run.cfg, run.model
    run.opt.zero_grad(set_to_none=True)
    sums = {"forward": 0.0, "backward": 0.0, "cycle": 0.0, "total": 0.0}
    levels, toks = [], 0
    for micro in range(cfg.grad_accum):
        # The global batch is world x grad_accum micro-batches; each process takes its own share,
        # so N processes with accumulation A equal one process with accumulation N*A.
        batch = _to(run.data.batch(step, run.rank * cfg.grad_accum + micro), run.device)
        levels.append(batch["level"])
        for part, share in split_rows(batch, cfg.micro_batch_size):  # rows per pass: a memory bound
            with _autocast(cfg, run.device):
                terms = step_losses(model, part)
                total = terms.total(cfg.model.w_fwd, cfg.model.w_bwd, cfg.model.w_cyc) * share / cfg.grad_accum
            total.backward()
            for k, v in terms.to_dict().items():
                sums[k] += v * share / cfg.grad_accum
            sums["total"] += float(total.detach())
        toks += _n_tokens(batch)
    for p in run.params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    logged = torch.tensor([sums[k] for k in ("forward", "backward", "cycle", "total")], dtype=torch.float64)
    _all_reduce_mean([p.grad for p in run.params] + [logged], run.world)
    sums = dict(zip(("forward", "backward", "cycle", "total"), logged.tolist()))
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.params, cfg.max_grad_norm))
    run.opt.step()
    run.sched.step()
    return {"level": "+".join(sorted(set(levels))), "lr": run.opt.param_groups[0]["lr"],
            **{k: round(v, 5) for k, v in sums.items()}, "grad_norm": round(grad_norm, 4)}, toks


def _save_final(run: _Run) -> Path:
    """The finished run's adapter (with its training config) and the loss plot."""
    cfg, world = run.cfg, run.world
    adapter_dir = run.out / "adapter"
    save_adapter(adapter_dir, run.model.trainable_state_dict(), run.model.cfg, base_model_id(run.model.lm),
                 {"trained": True, "steps": cfg.last_step,
                  "examples_seen": _examples_seen(cfg.last_step, cfg, world), "train_config": cfg.to_dict()})
    from r3mem.train.plot import plot_metrics

    plot_metrics(run.log_path, run.out / "losses.png")
    return adapter_dir


def train(cfg: TrainConfig, out_dir: str | Path, *, resume: bool = True, stop_after: int | None = None,
          time_limit_s: float | None = None, progress: bool = True,
          on_step: Callable[[dict], None] | None = None) -> TrainResult:
    """Train adapters + memory tokens. `stop_after` (a step) or `time_limit_s` (seconds of this
    call's training) ends the run early, after a checkpoint of the last step: rerunning resumes it."""
    run = setup(cfg, out_dir, resume)
    end = cfg.last_step if stop_after is None else min(cfg.last_step, stop_after)
    bar = _progress(progress and run.lead, run.start, cfg.last_step)
    metrics: dict = {}
    t0, toks = time.perf_counter(), 0
    run.model.train()
    for step in range(run.start, end):
        logged, n = _train_step(run, step)
        toks += n
        elapsed = time.perf_counter() - t0
        metrics = {"step": step + 1, **logged, "tokens_per_s": round(toks / max(elapsed, 1e-9), 1),
                   "elapsed_s": round(elapsed, 2)}
        if run.lead and ((step + 1) % cfg.log_every == 0 or step == run.start or step + 1 == end):
            with run.log_path.open("a") as f:
                f.write(json.dumps(metrics) + "\n")
        if on_step:
            on_step(metrics)
        bar(metrics)
        out_of_time = _out_of_time(time_limit_s, elapsed, run.world, run.device)
        if run.lead and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.last_step or out_of_time):
            _save_checkpoint(run.out, run.model, run.opt, run.sched, step + 1, cfg, run.world)
        _barrier(run.world)
        if out_of_time:
            end = step + 1
            break
    adapter_dir = _save_final(run) if end == cfg.last_step and run.lead else None
    return TrainResult(run.out, end, metrics, adapter_dir)


def _out_of_time(limit_s: float | None, elapsed: float, world: int, device: torch.device) -> bool:
    """Whether the time limit is reached; every process stops at the same step (the lead's clock)."""
    if limit_s is None:
        return False
    flag = torch.tensor([float(elapsed >= limit_s)], device=device)
    if world > 1:
        import torch.distributed as dist

        dist.broadcast(flag, 0)
    return bool(flag.item())


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _progress(enabled: bool, start: int, total: int) -> Callable[[dict], None]:
    if not enabled:
        return lambda m: None
    from tqdm import tqdm

    bar = tqdm(total=total, initial=start, desc="train", unit="step", dynamic_ncols=True)

    def update(m: dict) -> None:
        bar.update(1)
        bar.set_postfix(loss=f"{m['total']:.3f}", fwd=f"{m['forward']:.3f}", bwd=f"{m['backward']:.3f}",
                        tok_s=f"{m['tokens_per_s']:.0f}")
        if m["step"] >= total:
            bar.close()

    return update
