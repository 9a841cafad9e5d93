"""Start a run from an earlier adapter (`init_adapter`), optionally at a larger LoRA rank or with a
write adapter it did not have.

Same-shape tensors are copied as they are. A LoRA pair of a smaller rank is grown to the run's
rank without changing what the adapter computes, so a rank ablation can continue the shipped
adapter instead of training from scratch: peft computes ``scale * B @ A`` with
``scale = lora_alpha / r``; the grown A keeps the old rows and the run's own random rows below
them, the grown B the old columns times ``old_scale / new_scale`` and zeros beside them, so
``new_scale * B' @ A' == old_scale * B @ A`` exactly while the new directions can still learn
(gradient reaches B's zero columns through A's random rows).

An adapter trained without `write_adapter` continued by a run with it: the write LoRA starts as a
copy of the compress LoRA, which is what the write tokens used before, so the model again computes
exactly what the old adapter did and the two then specialise.
"""

from __future__ import annotations

import torch

from r3mem.adapter import AdapterError, load_trainable_state, read_adapter
from r3mem.config import R3MemConfig
from r3mem.model import COMPRESS, WRITE

__all__ = ["grow_lora_rank", "init_from_adapter", "seed_write_adapter"]


def _scale(cfg: R3MemConfig) -> float:
    return cfg.lora_alpha / cfg.lora_rank


def grow_lora_rank(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], old: R3MemConfig,
                   new: R3MemConfig) -> dict[str, torch.Tensor]:
    """`state` (an adapter of rank `old.lora_rank`) with every LoRA pair grown to `new.lora_rank`.

    `own`: the model's parameters (the rows A gains are taken from it). lora_A weights are [r, in],
    lora_B weights [out, r]. Returns `state` itself when the ranks are equal.
    """
    r_old, r_new = old.lora_rank, new.lora_rank
    if r_new == r_old:
        return state
    if r_new < r_old:
        raise AdapterError(f"init_adapter: LoRA rank {r_old} cannot shrink to {r_new} (only grow)")
    ratio = _scale(old) / _scale(new)
    out = {}
    for name, t in state.items():
        mine = own.get(name)
        if mine is None or mine.shape == t.shape:
            out[name] = t
        elif ".lora_A." in name and t.shape == (r_old, mine.shape[1]):
            grown = mine.detach().clone()
            grown[:r_old] = t
            out[name] = grown
        elif ".lora_B." in name and t.shape == (mine.shape[0], r_old):
            grown = torch.zeros_like(mine)
            grown[:, :r_old] = t.to(grown.dtype) * ratio
            out[name] = grown
        else:
            out[name] = t  # a mismatch load_trainable_state reports by name
    return out


def seed_write_adapter(state: dict[str, torch.Tensor], old: R3MemConfig,
                       new: R3MemConfig) -> dict[str, torch.Tensor]:
    """`state` plus a write LoRA copied from its compress LoRA when `new` has one and `old` had not.

    Returns `state` itself otherwise. Tensor names follow peft: ``...lora_A.compress.weight`` gives
    ``...lora_A.write.weight`` (same shapes).
    """
    if not new.write_adapter or old.write_adapter:
        return state
    out = dict(state)
    for name, t in state.items():
        if ".lora_" in name and f".{COMPRESS}." in name:
            out[name.replace(f".{COMPRESS}.", f".{WRITE}.")] = t.clone()
    return out


def init_from_adapter(path: str, model: torch.nn.Module, cfg: R3MemConfig) -> int:
    """Load an adapter's weights into `model` (names must match; LoRA may grow in rank and gain a
    write adapter, see above) and return the step its run had reached."""
    old, state, meta = read_adapter(path)
    own = dict(model.named_parameters())
    state = grow_lora_rank(seed_write_adapter(state, old, cfg), own, old, cfg)
    load_trainable_state(model, state, f"init_adapter {path}")
    return int(meta.get("step") or meta.get("steps") or 0)
