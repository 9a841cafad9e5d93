"""Virtual memory tokens: learned embeddings (not vocabulary ids) that read and write memory.

A memory state has shape [B, levels, k, d]. Level 0 is the input-embedding memory that is placed
before a segment (RMT-style read tokens). In "layerwise" mode levels 1..L hold, per decoder layer,
the write tokens' hidden states, which are *added* to the read positions' hidden states at that layer.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["VirtualMemory"]


class VirtualMemory(nn.Module):
    """The learned memory tokens of an R3MemModel (held at `model.memory`; the parameter names are
    part of the adapter hash).

    Parameters (d = hidden size, m = `num_mem_tokens`, L = decoder layers):

        init_mem    [m, d]          M_0, the initial read memory
        write_emb   [max_slot, d]   write tokens; a segment or slot written into k tokens uses the first k
        markers     [3, d]          role markers: query (forward), expand (backward), separator
        out_proj    d -> d          write states -> next read embeddings (not in kv mode)
        layer_gate  [L]             layerwise mode: weight of the memory added at each layer

    `initial(B)` is M_0 as [B, levels, m, d]; `write_tokens(B, k)` is [B, k, d]; `marker(B, i)` is
    [B, 1, d]; `to_read` maps [B, k, d] write states to [B, k, d] read embeddings.
    """

    def __init__(self, hidden: int, num_mem: int, max_slot: int, num_layers: int, layerwise: bool,
                 emb_rms: float, generator: torch.Generator | None = None, gate_init: float = 1.0,
                 read_map: bool = True) -> None:
        super().__init__()
        self.num_mem = num_mem
        self.levels = 1 + num_layers if layerwise else 1
        self.register_buffer("emb_rms", torch.tensor(float(emb_rms)), persistent=False)
        # Initial read memory M_0 and the write-token table; scaled like real token embeddings.
        self.init_mem = nn.Parameter(torch.randn(num_mem, hidden, generator=generator) * emb_rms)
        self.write_emb = nn.Parameter(torch.randn(max_slot, hidden, generator=generator) * emb_rms)
        # Markers give each call its role: 0 = query (forward), 1 = expand (backward), 2 = separator.
        self.markers = nn.Parameter(torch.randn(3, hidden, generator=generator) * emb_rms)
        # Output map from last-layer write states to next read embeddings; identity at start. A kv
        # memory is read as keys/values, not as embeddings, and has no such map.
        self.out_proj = nn.Linear(hidden, hidden) if read_map else None
        if read_map:
            with torch.no_grad():
                self.out_proj.weight.copy_(torch.eye(hidden))
                self.out_proj.bias.zero_()
        self.layer_gate = nn.Parameter(torch.full((num_layers,), float(gate_init))) if layerwise else None

    @property
    def max_slot(self) -> int:
        return self.write_emb.shape[0]

    def initial(self, batch: int) -> torch.Tensor:
        """M_0 for a batch: [B, levels, num_mem, d]; per-layer levels start at zero."""
        first = self.init_mem.unsqueeze(0).expand(batch, -1, -1)
        if self.levels == 1:
            return first.unsqueeze(1)
        rest = first.new_zeros(batch, self.levels - 1, *first.shape[1:])
        return torch.cat([first.unsqueeze(1), rest], dim=1)

    def write_tokens(self, batch: int, n: int) -> torch.Tensor:
        if not 1 <= n <= self.max_slot:
            raise ValueError(f"write tokens: need 1..{self.max_slot}, got {n}")
        return self.write_emb[:n].unsqueeze(0).expand(batch, -1, -1)

    def marker(self, batch: int, idx: int) -> torch.Tensor:
        return self.markers[idx].view(1, 1, -1).expand(batch, 1, -1)

    def to_read(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """Map final write states to read embeddings with the RMS of real token embeddings.

        Renormalising keeps the recurrence bounded, so 100s of segments cannot blow up or vanish.
        """
        x = self.out_proj(last_hidden)
        rms = x.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
        return x / rms * self.emb_rms
