"""Validated configuration dataclasses for the R³Mem model, serialisable to JSON and YAML.

Choices the R³Mem paper leaves open are fields here so ablations can flip them:
memory placement, BPTT depth, reversible variant, hierarchy levels and loss weights.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from r3mem.hierarchy import LEVELS
from r3mem.io import atomic_write_bytes

__all__ = ["ConfigError", "R3MemConfig", "load_config", "save_config", "apply_overrides"]

MEMORY_MODES = ("kv", "input", "layerwise")
MEMORY_DTYPES = ("float16", "bfloat16", "float32")
COMPUTE_DTYPES = ("float32", "bfloat16")
MEMORY_POSITIONS = ("spread", "prefix")


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field."""


def auto_compute_dtype(device: str = "cpu") -> str:
    """"bfloat16" where the hardware computes in it natively (a CUDA GPU with bfloat16, a CPU with
    AVX-512 BF16 or AMX), else "float32": elsewhere bfloat16 autocast can be slower than float32."""
    import torch  # here, not at the top: configs load (and `r3mem --help` runs) without importing torch

    if str(device).startswith("cuda"):
        return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return "float32"
    return "bfloat16" if {"avx512_bf16", "amx_bf16"} & set(flags) else "float32"


def check(cond: bool, name: str, msg: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{name}: {msg} (got {value!r})")


@dataclass
class R3MemConfig:
    # Backbone: a registry name ("smollm2-135m") or a local Hugging Face checkpoint folder.
    base_model: str = "smollm2-135m"
    # Retention: document-level recurrent memory of `num_mem_tokens` virtual tokens over segments.
    num_mem_tokens: int = 16
    segment_len: int = 128
    # "kv": per layer, the write tokens' keys/values, read as a cache prefix | "input" (RMT-style read
    # embeddings) | "layerwise" (write states added to hidden states at every layer). Ablations: input, layerwise.
    memory_mode: str = "kv"
    # How memories are stored (slots, document state, memory files); compute stays in the model's dtype.
    memory_dtype: str = "float16"  # float16 | bfloat16 | float32
    # Bits per number of the memory tokens (slots and document state): 16 (stored in `memory_dtype`), or 8, 4, 2
    # (group-wise quantized, `quant.py`; the document recurrence carries the quantized state on). A storage
    # choice at use time: memory files record it.
    memory_bits: int = 16
    # kv mode, rotary models: where memory tokens sit. "spread": token j at the end of its share of the text
    # it was written from, and a reader reconstructing that text puts token i at position i (a local
    # alignment prior, 50x faster to learn: LOG 2026-12-02); "prefix": memory at 0..k-1, readers after it.
    memory_positions: str = "spread"
    bptt_depth: int = 2  # segments gradients flow back through; older memory is detached
    layer_gate_init: float = 1.0  # layerwise mode: initial weight of the per-layer memory added to hidden states
    # Hierarchy: paragraph and entity slots compressed at a ratio chosen at inference time.
    hierarchy_levels: tuple[str, ...] = LEVELS
    max_slot_tokens: int = 64  # size of the write-token table, bounds tokens per slot
    max_paragraph_tokens: int = 256  # longer paragraphs are split into several slots
    paragraph_ratio: float = 4.0
    entity_ratio: float = 4.0
    # A snapshot of the document state every this many segments (0: none), so that a rebuild after an edit
    # refolds the recurrence only from the snapshot before the change (`WritePolicy.snapshot_every`).
    snapshot_every: int = 16
    # Reversibility: "adapters" = (A) direction-specific LoRA adapters over one backbone;
    # "coupling" = (B) invertible coupling adapters whose exact inverse runs the backward pass.
    reversible_mode: str = "adapters"
    coupling_hidden: int = 64
    # LoRA (peft). target_modules=None lets peft pick the family's attention projections.
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    # Loss weights: forward (LM / query given memory), backward (reconstruction), cycle consistency.
    w_fwd: float = 1.0
    w_bwd: float = 1.0
    w_cyc: float = 0.5
    # Reconstruction batches also train next-token LM on the text in their compress pass (forward term,
    # weight w_fwd; free: the pass runs anyway), as ICAE pretrains on autoencoding plus continuation, so the
    # compress direction keeps learning language modelling between LM windows (LOG 2026-12-02, fifth session).
    recon_lm: bool = False
    # A third LoRA for the write tokens of the compress pass (as Activation Beacon gives its beacon tokens
    # their own projections): the text tokens keep the compress adapter, which then serves next-token LM,
    # while compressing into memory gets weights of its own. Direction-specific adapters (A) only.
    write_adapter: bool = False
    max_recall_tokens: int = 256
    # Arithmetic of every model pass: "float32", or "bfloat16": the frozen base weights stored in bfloat16 and
    # every pass under bfloat16 autocast (adapters and memory tokens stay float32). On a CPU with AVX-512 BF16
    # writes are 2x and decoding 1.7x faster, reconstruction the same (LOG 2026-12-06); on CPUs without native
    # bfloat16 it can be slower (`auto_compute_dtype` picks).
    compute_dtype: str = "float32"
    seed: int = 0

    def __post_init__(self) -> None:
        self.hierarchy_levels = tuple(self.hierarchy_levels)
        if self.target_modules is not None:
            self.target_modules = tuple(self.target_modules)
        self.validate()

    def validate(self) -> None:
        check(
            isinstance(self.base_model, str) and self.base_model.strip() != "",
            "base_model",
            "must be a non-empty string",
            self.base_model,
        )
        for name in ("num_mem_tokens", "segment_len", "bptt_depth", "max_slot_tokens", "max_paragraph_tokens",
                     "coupling_hidden", "lora_rank", "lora_alpha", "max_recall_tokens"):
            v = getattr(self, name)
            check(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name, "must be an integer >= 1", v)
        check(self.memory_mode in MEMORY_MODES, "memory_mode", f"must be one of {MEMORY_MODES}", self.memory_mode)
        check(self.memory_positions in MEMORY_POSITIONS, "memory_positions", f"must be one of {MEMORY_POSITIONS}",
               self.memory_positions)
        check(self.memory_dtype in MEMORY_DTYPES, "memory_dtype", f"must be one of {MEMORY_DTYPES}", self.memory_dtype)
        check(self.compute_dtype in COMPUTE_DTYPES, "compute_dtype", f"must be one of {COMPUTE_DTYPES}",
               self.compute_dtype)
        check(self.memory_bits in (16, 8, 4, 2) and not isinstance(self.memory_bits, bool), "memory_bits",
               "must be one of 16, 8, 4, 2", self.memory_bits)
        check(self.memory_bits == 16 or self.memory_dtype == "float16", "memory_bits",
               "below 16 needs memory_dtype float16", self.memory_bits)
        check(
            self.reversible_mode in ("adapters", "coupling"),
            "reversible_mode",
            "must be 'adapters' or 'coupling'",
            self.reversible_mode,
        )
        check(len(self.hierarchy_levels) > 0 and set(self.hierarchy_levels) <= set(LEVELS), "hierarchy_levels",
               f"must be a non-empty subset of {LEVELS}", self.hierarchy_levels)
        check(
            "document" in self.hierarchy_levels, "hierarchy_levels", "must include 'document'", self.hierarchy_levels
        )
        for name in ("paragraph_ratio", "entity_ratio"):
            v = getattr(self, name)
            check(isinstance(v, (int, float)) and v >= 1.0, name, "must be a number >= 1", v)
        check(type(self.snapshot_every) is int and self.snapshot_every >= 0, "snapshot_every",
              "must be an integer >= 0 (segments; 0: no snapshots)", self.snapshot_every)
        for name in ("w_fwd", "w_bwd", "w_cyc"):
            v = getattr(self, name)
            check(isinstance(v, (int, float)) and v >= 0.0, name, "must be a number >= 0", v)
        check(isinstance(self.recon_lm, bool), "recon_lm", "must be true or false", self.recon_lm)
        check(isinstance(self.write_adapter, bool), "write_adapter", "must be true or false", self.write_adapter)
        check(not self.write_adapter or self.reversible_mode == "adapters", "write_adapter",
               "needs reversible_mode 'adapters'", self.write_adapter)
        check(0.0 <= self.lora_dropout < 1.0, "lora_dropout", "must be in [0, 1)", self.lora_dropout)
        check(
            self.num_mem_tokens <= self.max_slot_tokens,
            "num_mem_tokens",
            "must be <= max_slot_tokens",
            self.num_mem_tokens,
        )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hierarchy_levels"] = list(self.hierarchy_levels)
        if self.target_modules is not None:
            d["target_modules"] = list(self.target_modules)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> R3MemConfig:
        return dataclass_from_dict(cls, data)

    def replace(self, **changes: Any) -> R3MemConfig:
        return dataclasses.replace(self, **changes)


def dataclass_from_dict(cls: type, data: Any) -> Any:
    """Build a config dataclass from a mapping; unknown keys and wrong types fail naming the field."""
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown config field")
    try:
        return cls(**data)
    except TypeError as e:  # e.g. a list where a number belongs
        raise ConfigError(f"config: {e}") from None


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a config dataclass as YAML (.yaml/.yml) or JSON (anything else)."""
    path = Path(path)
    data = cfg.to_dict()
    text = yaml.safe_dump(data, sort_keys=False) if path.suffix in (".yaml", ".yml") else json.dumps(data, indent=2)
    atomic_write_bytes(path, text.encode())


def load_config(path: str | Path, cls: type = R3MemConfig, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """A config dataclass `cls` from a YAML (.yaml/.yml) or JSON file, after `key=value` overrides.

    Every failure (unreadable file, bad syntax, unknown field, invalid value) is a one-line `ConfigError`.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config ({e.strerror})") from None
    try:
        data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        raise ConfigError(
            f"{path}: not valid {'YAML' if path.suffix in ('.yaml', '.yml') else 'JSON'} ({str(e).splitlines()[0]})"
        ) from None
    return cls.from_dict(apply_overrides(data or {}, list(overrides)))


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key=value` (dotted keys for nesting, values parsed as YAML) to a config mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {part} is not a section")
        node[parts[-1]] = _parse_value(raw)
    return data


def _parse_value(raw: str) -> Any:
    """YAML scalar/list parsing, plus numbers YAML 1.1 leaves as strings ("1e-3")."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value
