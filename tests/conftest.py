import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tiny models gain nothing from a second thread, and on a busy 2-core machine oversubscription
# makes them many times slower.
torch.set_num_threads(1)

from r3mem.config import R3MemConfig  # noqa: E402
from r3mem.engine import R3Mem  # noqa: E402
from r3mem.model import R3MemModel  # noqa: E402
from r3mem.tiny import SAMPLE_TEXT, tiny_config, tiny_model, tiny_tokenizer  # noqa: E402

ALL_LINEAR = {
    "llama": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "qwen2": ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
}


def tiny_cfg(**kw) -> R3MemConfig:
    return tiny_config(**{"base_model": "tiny", **kw})


def tiny_r3(family: str = "llama", **kw) -> R3MemModel:
    return R3MemModel(tiny_model(family), tiny_cfg(**kw))


@pytest.fixture
def tok():
    return tiny_tokenizer()


@pytest.fixture
def engine(tok):
    return R3Mem.from_base(tiny_model("llama"), tok, tiny_cfg())


@pytest.fixture
def sample_text():
    return SAMPLE_TEXT


@pytest.fixture
def trained_like(tok):
    """A tiny engine whose adapters are non-zero, so memories depend on them (as after training)."""
    eng = R3Mem.from_base(tiny_model("llama"), tok, tiny_cfg())
    perturb_trainables(eng.model)
    eng._refresh_identity()
    return eng


def perturb_trainables(model, scale: float = 0.05, seed: int = 1) -> None:
    """Give zero-initialised adapters non-zero values so 'adapters on' differs from 'off'."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * scale)
