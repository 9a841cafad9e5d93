"""r3mem: R³Mem reversible, hierarchical memory for Hugging Face causal language models."""

__version__ = "0.1.0"
