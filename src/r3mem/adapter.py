"""Adapter folders: the trained part of R³Mem (LoRA + memory tokens + couplings) beside its config.

Layout of a folder:
    adapter.safetensors   every trainable tensor, by parameter name
    r3mem_adapter.json    format version, R3MemConfig, base model id, adapter hash, training notes
Loading = base model + this folder. The hash is checked so a modified folder is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from r3mem import __version__
from r3mem.config import ConfigError, R3MemConfig
from r3mem.io import atomic_write_bytes, sha256_hex

__all__ = ["AdapterError", "ADAPTER_FORMAT_VERSION", "adapter_hash", "save_adapter", "read_adapter", "is_adapter_dir",
           "load_trainable_state"]

ADAPTER_FORMAT_VERSION = 1
WEIGHTS, META = "adapter.safetensors", "r3mem_adapter.json"


class AdapterError(ValueError):
    """An adapter folder is missing, corrupted, or does not fit the base model."""


def adapter_hash(state: dict[str, torch.Tensor]) -> str:
    parts = []
    for name in sorted(state):
        t = state[name].detach().to("cpu", torch.float32).contiguous()
        parts += [f"{name}|{tuple(t.shape)}|".encode(), t.numpy().tobytes()]
    return sha256_hex(*parts)[:16]


def is_adapter_dir(path: str | Path) -> bool:
    p = Path(path)
    return (p / META).is_file() and (p / WEIGHTS).is_file()


def save_adapter(path: str | Path, state: dict[str, torch.Tensor], cfg: R3MemConfig, base_model_id: str,
                 extra: dict[str, Any] | None = None) -> str:
    """Write the folder atomically file by file (weights first, then the header that names them)."""
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    h = adapter_hash(state)
    atomic_write_bytes(path / WEIGHTS, st_save(state))
    meta = {"format": "r3mem-adapter", "format_version": ADAPTER_FORMAT_VERSION, "r3mem_version": __version__,
            "adapter_hash": h, "base_model_id": base_model_id, "config": cfg.to_dict(), **(extra or {})}
    atomic_write_bytes(path / META, json.dumps(meta, indent=2).encode())
    return h


def read_adapter(path: str | Path) -> tuple[R3MemConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Validate and read an adapter folder; nothing is returned unless every check passes."""
    path = Path(path)
    if not path.is_dir():
        raise AdapterError(f"{path}: adapter folder does not exist")
    if not is_adapter_dir(path):
        raise AdapterError(f"{path}: not an r3mem adapter folder (needs {META} and {WEIGHTS})")
    meta = _read_meta(path)
    try:
        conf = dict(meta["config"])
        # Adapters saved before `memory_positions` existed were trained with memory as a prefix.
        conf.setdefault("memory_positions", "prefix")
        cfg = R3MemConfig.from_dict(conf)
    except (ConfigError, KeyError, TypeError, ValueError) as e:
        raise AdapterError(f"{path / META}: invalid config ({e})") from None
    return cfg, _read_weights(path, meta), meta


def _read_meta(path: Path) -> dict[str, Any]:
    """The adapter's header, checked to be one and of a format version this r3mem reads."""
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError):
        raise AdapterError(f"{path / META}: not valid JSON") from None
    except OSError as e:
        raise AdapterError(f"{path / META}: cannot read ({e.strerror})") from None
    if not isinstance(meta, dict) or meta.get("format") != "r3mem-adapter":
        raise AdapterError(f"{path / META}: not an r3mem adapter header")
    v = meta.get("format_version")
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise AdapterError(f"{path / META}: invalid adapter format version {v!r}")
    if v > ADAPTER_FORMAT_VERSION:
        raise AdapterError(
            f"{path}: adapter format version {v} is newer than this r3mem supports ({ADAPTER_FORMAT_VERSION})"
        )
    return meta


def _read_weights(path: Path, meta: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The adapter's tensors, checked against the header's hash and for non-finite values."""
    try:
        state = st_load((path / WEIGHTS).read_bytes())
    except Exception as e:
        raise AdapterError(f"{path / WEIGHTS}: corrupted weights ({e})") from None
    if adapter_hash(state) != meta.get("adapter_hash"):
        raise AdapterError(f"{path}: adapter hash mismatch, the weights were modified or corrupted")
    bad = next((n for n, t in sorted(state.items()) if t.is_floating_point() and not torch.isfinite(t).all()), None)
    if bad is not None:  # e.g. a diverged training run: every memory written with it would be NaN
        raise AdapterError(f"{path}: tensor {bad} holds NaN or infinite values")
    return state


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str = "adapter") -> None:
    """Copy `state` into `model`'s trainable tensors in place. The names must be exactly the
    trainable parameters and every shape must match; on any mismatch nothing is copied."""
    own = dict(model.named_parameters())
    expected = {n for n, p in own.items() if p.requires_grad}
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise AdapterError(f"{source}: does not fit this model (missing {missing[:2]}, unexpected {extra[:2]})")
    for n, t in state.items():
        if own[n].shape != t.shape:
            raise AdapterError(f"{source}: tensor {n} has shape {tuple(t.shape)}, model expects {tuple(own[n].shape)}")
    with torch.no_grad():
        for n, t in state.items():
            own[n].copy_(t)
