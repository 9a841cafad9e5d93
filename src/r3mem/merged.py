"""Inference with each LoRA direction merged into its own copy of the base weights.

A LoRA layer computes `x W^T + s (x A^T) B^T`: two more small matrix products, a scale and an add per
layer, in every pass. With no gradient to compute, `x (W + s B A)^T` is the same function in one product;
on 2 CPU cores it writes a conversation 10-20% faster (LOG 2026-12-07). The base weights stay as they are
(the bare model reads with them, and training adds LoRA on top of them): each direction gets a merged
copy, built on first use and rebuilt when its LoRA tensors change (an optimizer step, a loaded adapter:
their version counters move), and a layer's weight is pointed at the copy in use.

    merged = MergedWeights(tuner_layers)
    merged.use("compress")   # layers compute with W + s B A of "compress"; their LoRA is off
    merged.use(None)         # base weights back, LoRA as the layer's active adapters say

Merging rounds W + s B A to the weights' dtype (bfloat16): the same rounding the base weights already
carry, so it is used only where they are bfloat16 (`R3MemModel`, compute dtype bfloat16, no gradient).
"""

from __future__ import annotations

import torch
from peft.tuners.tuners_utils import BaseTunerLayer

__all__ = ["MergedWeights"]


class MergedWeights:
    """Per-direction merged copies of the weights of `layers` (PEFT LoRA layers), switched in place."""

    def __init__(self, layers: list[BaseTunerLayer]) -> None:
        self.layers = layers
        self.base = [m.base_layer.weight.data for m in layers]  # references: the base weights are never copied
        self._copies: dict[str, tuple[tuple[int, ...], list[torch.Tensor]]] = {}
        self.in_use: str | None = None
        self._active: list = []

    def _stamp(self, name: str) -> tuple[int, ...]:
        """The version counters of `name`'s LoRA tensors: they move on every in-place change."""
        return tuple(p._version for m in self.layers for p in (m.lora_A[name].weight, m.lora_B[name].weight))

    @torch.no_grad()
    def _merged(self, name: str) -> list[torch.Tensor]:
        stamp = self._stamp(name)
        held = self._copies.get(name)
        if held is None or held[0] != stamp:
            self._copies.pop(name, None)  # free the stale copy before building the new one
            merged = [(w.float() + m.get_delta_weight(name).float()).to(w.dtype)
                      for m, w in zip(self.layers, self.base)]
            self._copies[name] = held = (stamp, merged)
        return held[1]

    def use(self, name: str | None) -> None:
        """Compute with `name`'s merged weights (LoRA off in every layer), or with the base weights (None)."""
        if name is None:
            if self.in_use is not None:
                for m, w, a in zip(self.layers, self.base, self._active):
                    m.base_layer.weight.data = w
                    m._active_adapter = a
                self.in_use = None
            return
        weights = self._merged(name)
        if self.in_use is None:  # the layers' own active adapters, given back with the base weights
            self._active = [m._active_adapter for m in self.layers]
        for m, w in zip(self.layers, weights):
            m.base_layer.weight.data = w
            m._active_adapter = []  # the update is in the weights: no LoRA on top
        self.in_use = name
