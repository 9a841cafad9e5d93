"""r3mem: R³Mem reversible, hierarchical memory for Hugging Face causal language models."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["R3Mem", "R3MemConfig", "Memory", "Slot", "WritePolicy", "__version__"]

_LAZY = {"R3Mem": "r3mem.engine", "R3MemConfig": "r3mem.config", "Memory": "r3mem.memory", "Slot": "r3mem.memory",
         "WritePolicy": "r3mem.memory"}


def __getattr__(name: str):
    # Lazy so that `r3mem --help` does not pay for importing torch and transformers.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'r3mem' has no attribute {name!r}")
