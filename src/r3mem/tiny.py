"""Tiny randomly initialised models and a byte-level tokenizer, built in memory (no downloads).

Used by the test-suite and the tiny training config so everything runs on a CPU in seconds.
"""

from __future__ import annotations

import functools
from importlib import resources

import torch
import yaml

from r3mem.config import R3MemConfig

__all__ = ["tiny_tokenizer", "tiny_model", "tiny_config", "FAMILIES", "SAMPLE_TEXT"]

FAMILIES = ("llama", "gpt2", "qwen2")

SAMPLE_TEXT = (
    "The river town of Saint Paul grew quickly in the early years. Traders came by canoe and steamboat.\n\n"
    "Henry Sibley built a stone house near the ferry. His neighbours traded furs, flour and news.\n\n"
    "In winter the river froze, and the settlers crossed it on foot to reach the mission at Mendota.\n\n"
    "Numbers tell the story: 840 people in 1849, 10,000 by 1857, and more every spring after the thaw."
)


@functools.lru_cache(maxsize=2)
def tiny_tokenizer(vocab_size: int = 320):
    """A byte-level BPE trained on a few sentences; eos/pad is '<|end|>' (id 0)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([SAMPLE_TEXT] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|end|>", pad_token="<|end|>")
    return fast


def tiny_model(family: str = "llama", vocab_size: int | None = None, hidden: int = 64, layers: int = 2, seed: int = 0):
    """A 2-layer randomly initialised causal LM of the given family, in float32, eager attention."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, Qwen2Config

    vocab = vocab_size or len(tiny_tokenizer())
    if family in ("llama", "qwen2"):
        config_class = LlamaConfig if family == "llama" else Qwen2Config
        cfg = config_class(
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=2 * hidden,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            initializer_range=0.1,
        )
    elif family == "gpt2":
        cfg = GPT2Config(
            vocab_size=vocab,
            n_embd=hidden,
            n_layer=layers,
            n_head=4,
            n_positions=1024,
            bos_token_id=0,
            eos_token_id=0,
            initializer_range=0.1,
        )
    else:
        raise ValueError(f"family: unknown tiny model family {family!r}; choose from {FAMILIES}")
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.config._r3mem_model_id = f"tiny-{family}"
    return model.eval()


def tiny_config(base_model: str = "tiny-llama", **overrides):
    """The small R3MemConfig for the `tiny-*` models: the `model` section of the shipped
    `configs/tiny.yaml`, with `base_model` and any field overridden."""
    shipped = resources.files("r3mem") / "configs" / "tiny.yaml"
    fields = yaml.safe_load(shipped.read_text(encoding="utf-8"))["model"]
    return R3MemConfig(**{**fields, "base_model": base_model, **overrides})
