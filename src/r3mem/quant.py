"""Quantized memory tokens: slot states stored at 8, 4 or 2 bits per number instead of 16.

A slot's kv memory [L, 2, H, k, hd] is cut along its last axis (the head dimension) into groups of
`GROUP` numbers; each group keeps a float16 minimum and step, and each number the index of its nearest
step, `bits` wide (asymmetric uniform quantization, as KIVI quantizes values per token; group-wise for keys
too, because a slot has too few memory tokens, 1-64, for KIVI's per-channel key statistics to pay for
their own storage). Codes are packed `8 // bits` to a byte.

    packed = quantize(state, 4)        # Packed: codes uint8 [..., hd * 4 / 8], low / step float16 [..., hd / GROUP]
    state = dequantize(packed)         # float16 [L, 2, H, k, hd]: what every reader of the memory sees

The writer quantizes each slot when it is written and keeps the dequantized state beside the codes, so the
memory in use and the memory loaded from its file are the same numbers; the file stores only the codes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["BITS", "GROUP", "Packed", "group_of", "quantize", "dequantize", "fake_quantize", "packed_bytes"]

BITS = (16, 8, 4, 2)  # 16: float16, not quantized
GROUP = 32


def group_of(n: int) -> int:
    """Group size for a last axis of n numbers: `GROUP`, or its largest divisor that divides n (16 for
    the head dimension 16 of the tiny test models)."""
    return math.gcd(n, GROUP)


@dataclass(frozen=True)
class Packed:
    """A quantized tensor: `codes` uint8 [..., n * bits / 8] (n = the last axis of `shape`), `low` and
    `step` float16 [..., n / group_of(n)]; `bits` per number."""

    codes: torch.Tensor
    low: torch.Tensor
    step: torch.Tensor
    bits: int
    shape: tuple[int, ...]

    @property
    def n_mem_tokens(self) -> int:
        return self.shape[-2]


def _check(bits: int, n: int) -> None:
    if bits not in BITS[1:]:
        raise ValueError(f"memory_bits: must be one of {BITS}, got {bits!r}")
    if group_of(n) * bits % 8:
        raise ValueError(f"quantize: a last axis of {n} numbers cannot be packed at {bits} bits")


def quantize(x: torch.Tensor, bits: int) -> Packed:
    """`x` [..., n] at `bits` per number (8, 4 or 2), in groups of `group_of(n)` along the last axis."""
    n = x.shape[-1]
    _check(bits, n)
    G = group_of(n)
    g = x.detach().float().reshape(*x.shape[:-1], n // G, G)
    low = g.amin(-1).to(torch.float16)
    top = g.amax(-1)
    levels = (1 << bits) - 1
    # The step in float16 first, so the codes are computed against exactly the numbers dequantize uses.
    step = ((top - low.float()) / levels).to(torch.float16)
    safe = torch.where(step > 0, step.float(), torch.ones_like(step, dtype=torch.float32))
    codes = ((g - low.float()[..., None]) / safe[..., None]).round().clamp(0, levels).to(torch.uint8)
    codes = codes.reshape(*x.shape[:-1], n)
    per = 8 // bits
    if per > 1:  # pack `per` codes into each byte, the first in the low bits
        c = codes.reshape(*x.shape[:-1], n // per, per).to(torch.int32)
        shifts = torch.arange(per, dtype=torch.int32) * bits
        codes = (c << shifts).sum(-1).to(torch.uint8)
    return Packed(codes.contiguous(), low.contiguous(), step.contiguous(), bits, tuple(x.shape))


def dequantize(p: Packed, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """The tensor `p` stands for, [*p.shape] in `dtype`."""
    n = p.shape[-1]
    per = 8 // p.bits
    codes = p.codes.to(torch.int32)
    if per > 1:
        shifts = torch.arange(per, dtype=torch.int32) * p.bits
        codes = ((codes[..., None] >> shifts) & ((1 << p.bits) - 1)).reshape(*p.codes.shape[:-1], n)
    G = group_of(n)
    g = codes.reshape(*p.shape[:-1], n // G, G).float()
    x = p.low.float()[..., None] + g * p.step.float()[..., None]
    return x.reshape(p.shape).to(dtype)


def fake_quantize(x: torch.Tensor, bits: int) -> torch.Tensor:
    """`x` [..., n] as a reader of its `bits`-bit memory sees it (cast to float16, quantized, dequantized:
    the numbers the writer stores), with the gradient of the identity (straight-through estimator), so
    training can put the quantizer in the loop: the reader learns from quantized memory tokens and the
    writer's gradient passes the rounding unchanged. 16: `x` itself."""
    if bits == 16:
        return x
    q = dequantize(quantize(x.detach().to(torch.float16), bits), x.dtype)
    return q + (x - x.detach())  # exactly q forward (x - x is 0), the identity backward


def packed_bytes(p: Packed) -> int:
    """Bytes stored for `p`: its codes, minima and steps."""
    return sum(t.numel() * t.element_size() for t in (p.codes, p.low, p.step))
