"""Key/value memory: per decoder layer, the keys and values of the write tokens, read as a cache prefix.

A kv memory has shape [B, L, 2, H_kv, k, head_dim]: decoder layer, key/value, key/value head,
memory token, head dimension (one memory without the batch axis: [L, 2, H_kv, k, head_dim]).

Cached keys carry the rotary position they were computed at. A memory is stored *canonically*, in
a frame that does not depend on where it was written (`memory_positions`):

* ``spread`` (default): as if the text it came from sat at positions 0..n-1, memory token j at the
  end of its share of that text, floor((j+1) n / k) - 1. A reader reconstructing the text puts its
  token i at position i (its prefix at negative positions), so each memory token sits beside the
  text it holds; a reader continuing after a document segment starts at `segment_len`.
* ``prefix``: the k memory tokens at positions 0..k-1, every reader starting at position k.

Rotary embeddings compose (R(a) R(b) = R(a + b)), so moving a key from position p to q is one more
rotation by q - p; `reposition` does that. Models with absolute position embeddings (GPT-2) have
position-free keys, read memory as a prefix, and repositioning is the identity.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["rotary_of", "reposition", "join", "to_cache", "from_cache", "mem_len"]


def rotary_of(body: nn.Module) -> nn.Module | None:
    """The decoder stack's rotary embedding module (Llama, Qwen2, ...) or None (absolute positions)."""
    rot = getattr(body, "rotary_emb", None)
    if rot is not None and float(getattr(rot, "attention_scaling", 1.0)) != 1.0:
        # Scaled RoPE multiplies cos/sin by a factor: a second rotation would apply it twice.
        raise ValueError("memory_mode 'kv': rotary embeddings with attention scaling are not supported")
    return rot


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def reposition(rot: nn.Module | None, state: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Move every key of `state` [B, L, 2, H, k, hd] by `delta` positions ([B] or [B, k], any sign)."""
    if rot is None:
        return state
    B, k = state.shape[0], state.shape[-2]
    delta = delta.reshape(B, -1).expand(B, k).to(state.device)
    keys = state[:, :, 0]  # [B, L, H, k, hd]
    cos, sin = rot(keys, delta)  # [B, k, hd]
    cos, sin = cos[:, None, None].to(keys.dtype), sin[:, None, None].to(keys.dtype)
    keys = keys * cos + _rotate_half(keys) * sin
    return torch.stack([keys, state[:, :, 1]], dim=2)


def join(rot: nn.Module | None, states: list[torch.Tensor], lengths: list[int], end: int) -> torch.Tensor:
    """Several canonical memories [L, 2, H, k_i, hd] as one [1, L, 2, H, sum k_i, hd], as if the texts
    they hold (`lengths` positions each) followed one another and the last one ended at `end`: memory
    i is moved by (the lengths before it) - (all the lengths) + `end`. Attention under rotary
    embeddings sees only position differences, so a reader after them reads them as one text."""
    total, parts, before = sum(lengths), [], 0
    for st, n in zip(states, lengths):
        shift = torch.tensor([before - total + end], device=st.device)
        parts.append(reposition(rot, st[None].float(), shift))
        before += n
    return torch.cat(parts, dim=-2)


def to_cache(state: torch.Tensor, dtype: torch.dtype):
    """A fresh DynamicCache holding `state` [B, L, 2, H, k, hd] (the memory is never mutated)."""
    from transformers import DynamicCache

    s = state.to(dtype)
    return DynamicCache(ddp_cache_data=[(s[:, i, 0], s[:, i, 1]) for i in range(s.shape[1])])


def from_cache(cache, n_last: int) -> torch.Tensor:
    """The last `n_last` positions of every layer of a cache: [B, L, 2, H, n_last, hd]."""
    layers = [(layer.keys[:, :, -n_last:], layer.values[:, :, -n_last:]) for layer in cache.layers]
    return torch.stack([torch.stack(kv, dim=1) for kv in layers], dim=1)


def mem_len(state: torch.Tensor) -> int:
    """Number of memory tokens of a state (any memory mode): the second-to-last axis."""
    return state.shape[-2]
