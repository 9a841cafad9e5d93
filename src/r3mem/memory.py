"""The memory a text leaves behind: a document-level recurrent state plus hierarchical slots.

- `doc_state` [levels, m, d]: constant size whatever the history length (retention).
- paragraph slots: one per paragraph (long ones split), compressed at `paragraph_ratio`.
- entity slots: one per entity name, compressing the sentence of its first mention; every later
  mention's span is recorded. Each slot keeps the character span it came from.
Text after the last paragraph break stays pending (raw) until a break arrives or `flush` is called,
which is what makes writing A then B identical to writing A+B.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch

from r3mem.config import R3MemConfig, check
from r3mem.hierarchy import LEVELS
from r3mem.quant import Packed, packed_bytes

__all__ = ["Slot", "Snapshot", "Memory", "WritePolicy", "stored_bytes"]


@dataclass(frozen=True)
class WritePolicy:
    """What a write builds: the hierarchy `levels` (always "document"; "paragraph" and "entity" slots
    optional) and the compression ratios of the slots (text tokens per memory token). The weights
    serve every level and ratio, so this is a choice at use, per memory: a memory records the policy
    it was first written with and keeps it (`R3Mem.write(policy=...)`; default: the model config's)."""

    levels: tuple[str, ...] = LEVELS
    paragraph_ratio: float = 4.0
    entity_ratio: float = 4.0
    # Every this many document segments the memory keeps a snapshot of its document state (0: none), so that a
    # rewrite after an edit refolds only from the last snapshot before the change (`writer.reusable`). At
    # 16 segments (2,048 tokens) a 4-bit snapshot (~0.1 MB for SmolLM2-135M) adds about 3% to a memory.
    snapshot_every: int = 16

    def __post_init__(self) -> None:
        levels = (self.levels,) if isinstance(self.levels, str) else tuple(self.levels)
        check(bool(levels) and set(levels) <= set(LEVELS) and "document" in levels and len(set(levels)) == len(levels),
              "levels", f"must be distinct levels of {LEVELS} including 'document'", levels)
        object.__setattr__(self, "levels", tuple(lv for lv in LEVELS if lv in levels))  # one order
        for name in ("paragraph_ratio", "entity_ratio"):
            v = getattr(self, name)
            check(not isinstance(v, bool) and isinstance(v, (int, float)) and 1 <= v < float("inf"), name,
                  "must be a finite number >= 1", v)
            object.__setattr__(self, name, float(v))
        v = self.snapshot_every
        check(type(v) is int and v >= 0, "snapshot_every", "must be an integer >= 0 (segments; 0: no snapshots)", v)

    @classmethod
    def of(cls, cfg: R3MemConfig) -> WritePolicy:
        """The model config's policy: its `hierarchy_levels`, `paragraph_ratio`, `entity_ratio` and
        `snapshot_every`."""
        return cls(cfg.hierarchy_levels, cfg.paragraph_ratio, cfg.entity_ratio, cfg.snapshot_every)

    def to_dict(self) -> dict[str, Any]:
        return {"levels": list(self.levels), "paragraph_ratio": self.paragraph_ratio,
                "entity_ratio": self.entity_ratio, "snapshot_every": self.snapshot_every}


@dataclass
class Slot:
    """One compressed unit of the hierarchy: a paragraph (or a piece of a long one) or an entity.

    Shapes (k = memory tokens of this slot, `slot_tokens(n_tokens, ratio, max_slot_tokens)`):

        state   [levels, k, d]        input / layerwise memory (levels = 1, or 1 + L decoder layers)
                [L, 2, H, k, hd]      kv memory: per layer, keys and values of the k write tokens

        dense   [KEY_DIM] float16     retrieval key: the slot text's sentence embedding (`keys.py`)
        terms   {term: count}         retrieval key: the slot text's BM25 term counts

    `start:end` is the character span of the written stream it was compressed from; an entity also
    lists every later mention's span. States are immutable values and may be shared by several slots.
    The keys are None for a memory written without a key encoder (then only query likelihood finds slots).
    """

    level: str  # "paragraph" | "entity"
    key: str  # "p3", "p3.1" (split paragraph) or the entity name
    start: int  # character span in the written stream
    end: int
    n_tokens: int  # source tokens compressed into this slot
    state: torch.Tensor  # [levels, k, d], or [L, 2, H, k, hd] for a kv memory; may be shared by slots
    parent: int | None = None  # paragraph index an entity was first seen in
    mentions: list[tuple[int, int]] = field(default_factory=list)
    dense: torch.Tensor | None = None  # [KEY_DIM] float16, unit norm
    terms: dict[str, int] | None = None
    packed: Packed | None = None  # `state` quantized (memory_bits < 16): what memory files store; `state` is its value
    # (cap, Reconstruction) of the last greedy expansion without a query: a function of the state alone, so
    # recalling the slot again costs nothing. Not part of the value (not compared, not stored).
    recalled: Any = field(default=None, repr=False, compare=False)

    @property
    def n_mem_tokens(self) -> int:
        return self.state.shape[-2]


def stored_bytes(state: torch.Tensor, packed: Packed | None) -> int:
    """Bytes a state is stored in: its codes when quantized, else the tensor's."""
    return packed_bytes(packed) if packed is not None else state.numel() * state.element_size()


@dataclass(frozen=True)
class Snapshot:
    """The document state after the memory's first `n_segments` segments (`state` [levels, m, d] or
    [L, 2, H, m, hd], as `Memory.doc_state`; `packed` its codes when quantized). `Memory.doc_chain[n_segments
    - 1]` says which tokens it folded."""

    n_segments: int
    state: torch.Tensor
    packed: Packed | None = None

    def nbytes(self) -> int:
        return stored_bytes(self.state, self.packed)


@dataclass
class Memory:
    """What a text leaves behind: a constant-size document state plus the slots of the hierarchy.

    Shapes (m = `num_mem_tokens`, d = hidden size, L = decoder layers, H = key/value heads, hd = head dim):

        doc_state   [levels, m, d]      input / layerwise memory (levels = 1, or 1 + L)
                    [L, 2, H, m, hd]    kv memory (the default)
        paragraphs  list[Slot]          in text order
        entities    list[Slot]          in order of first mention

        doc_chain   list[int]           per folded segment, a 64-bit hash of every token folded so far
        snapshots   list[Snapshot]      the document state every `policy.snapshot_every` segments

    A Memory is a value: `R3Mem.write` returns a new one and never changes the one passed in. `policy`
    is the `WritePolicy` its slots were written with, recorded at its first write. `doc_chain` and
    `snapshots` let a rewrite of the same text with a change take the document state of the unchanged
    prefix instead of folding it again (`writer.reusable`); a memory from an older file has no chain (None).
    `pending_ids` (tokens short of a full segment) and `pending_text` (after the last paragraph
    break) are what make writing A then B identical to writing A + B.
    """

    doc_state: torch.Tensor  # [levels, m, d], or [L, 2, H, m, hd] for a kv memory
    # `doc_state` quantized (memory_bits < 16, once a segment is folded): what memory files store
    doc_packed: Packed | None = None
    pending_ids: list[int] = field(default_factory=list)  # committed tokens short of a full segment
    pending_text: str = ""  # raw text after the last paragraph break
    offset: int = 0  # characters committed; pending_text starts here in the stream
    n_tokens: int = 0  # tokens committed to the document level
    n_segments: int = 0  # segments folded into doc_state
    paragraphs: list[Slot] = field(default_factory=list)
    entities: list[Slot] = field(default_factory=list)
    policy: WritePolicy | None = None  # what it was written with (None: not written yet, or an older file)
    doc_chain: list[int] | None = field(default_factory=list)  # None: unknown (a memory file of format 5 or older)
    snapshots: list[Snapshot] = field(default_factory=list)  # in segment order
    # search indexes over the slots' keys, built on first use (`index.SlotIndex.of`); not part of the value
    indexes: dict = field(default_factory=dict, repr=False, compare=False)

    def copy(self) -> Memory:
        """A new Memory sharing (immutable) tensors, so writes never mutate the caller's state."""
        new = copy.copy(self)
        new.indexes = {}
        new.pending_ids = list(self.pending_ids)
        new.doc_chain = None if self.doc_chain is None else list(self.doc_chain)
        new.snapshots = list(self.snapshots)
        new.paragraphs = list(self.paragraphs)
        new.entities = [copy.copy(e) for e in self.entities]
        for e in new.entities:
            e.mentions = list(e.mentions)
        return new

    def entity(self, name: str) -> Slot | None:
        low = name.lower()
        return next((e for e in self.entities if e.key.lower() == low), None)

    def state_bytes(self) -> int:
        """Bytes of memory state as stored: constant doc state + slots (linear in paragraphs kept) + document
        snapshots (linear in segments: `WritePolicy.snapshot_every`), a quantized state by its codes. A state
        shared by several slots (entities first named in one sentence) counts once, as it is stored."""
        unique = {id(s.state): s for s in self.paragraphs + self.entities}
        slots = sum(stored_bytes(s.state, s.packed) for s in unique.values())
        return stored_bytes(self.doc_state, self.doc_packed) + slots + sum(s.nbytes() for s in self.snapshots)
