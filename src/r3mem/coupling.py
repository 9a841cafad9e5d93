"""Invertible coupling adapters (reversible variant B, RevNet/MEFT style).

The hidden vector is split into halves (x1, x2):
    y1 = x1 + F(x2),   y2 = x2 + G(y1)
with exact inverse
    x2 = y2 - G(y1),   x1 = y1 - F(x2).
The compress (forward) pass applies the coupling after each decoder layer; the expand (backward)
pass applies its exact inverse, so both directions are defined by one set of parameters.
F and G end in zero-initialised projections: the coupling starts as the identity, which keeps
the pretrained model's behaviour until training moves it.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Coupling"]


def _branch(half: int, hidden: int, generator: torch.Generator | None) -> nn.Sequential:
    net = nn.Sequential(nn.Linear(half, hidden), nn.GELU(), nn.Linear(hidden, half))
    with torch.no_grad():
        net[0].weight.normal_(0.0, 0.02, generator=generator)
        net[0].bias.zero_()
        net[2].weight.zero_()
        net[2].bias.zero_()
    return net


class Coupling(nn.Module):
    def __init__(self, dim: int, hidden: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"coupling: hidden size must be even, got {dim}")
        self.half = dim // 2
        self.f = _branch(self.half, hidden, generator)
        self.g = _branch(self.half, hidden, generator)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x1, x2 = h.split(self.half, dim=-1)
        y1 = x1 + self.f(x2)
        y2 = x2 + self.g(y1)
        return torch.cat([y1, y2], dim=-1)

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        y1, y2 = h.split(self.half, dim=-1)
        x2 = y2 - self.g(y1)
        x1 = y1 - self.f(x2)
        return torch.cat([x1, x2], dim=-1)
