"""Passes without gradient compute with each LoRA direction merged into a copy of the weights (`merged.py`)."""

import torch
from conftest import perturb_trainables, tiny_cfg

from r3mem.engine import R3Mem
from r3mem.model import COMPRESS, EXPAND, R3MemModel
from r3mem.tiny import SAMPLE_TEXT, tiny_model, tiny_tokenizer


def _model(dtype: str = "bfloat16") -> R3MemModel:
    m = R3MemModel(tiny_model("llama"), tiny_cfg(compute_dtype=dtype))
    perturb_trainables(m)  # LoRA B starts at zero: merged and unmerged would agree trivially
    return m


def _compress(m: R3MemModel, ids: torch.Tensor) -> torch.Tensor:
    return m.compress(m.embed(ids), torch.ones_like(ids), None, 4)[0]


def _unmerged(m: R3MemModel, fn):
    """`fn()` with LoRA applied on top of the base weights, as training computes it."""
    merged = m._merged
    merged.use(None)
    m._merged = None
    try:
        return fn()
    finally:
        m._merged = merged


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool(((a.float() - b.float()).abs().max() / b.float().abs().max()) < 0.05)


@torch.no_grad()
def test_a_merged_pass_computes_what_lora_on_the_base_weights_does():
    m = _model()
    ids = torch.randint(3, 300, (2, 24), generator=torch.Generator().manual_seed(0))
    fast = _compress(m, ids)
    assert m._merged.in_use == COMPRESS and all(t._active_adapter == [] for t in m._tuners)
    slow = _unmerged(m, lambda: _compress(m, ids))
    assert _close(fast, slow)
    # the bare model reads with the base weights, exactly as if no merged pass had run
    fresh = _model()
    assert torch.equal(_logits_bare(m, ids), _logits_bare(fresh, ids))
    with m.adapters_disabled():  # a pass of the model's own inside stays bare (LoRA off, base weights)
        _compress(m, ids)
        assert m._merged.in_use is None and all(t._active_adapter == [] for t in m._tuners)


def _logits_bare(m, ids):
    with m.adapters_disabled():
        return m.lm(input_ids=ids).logits


@torch.no_grad()
def test_merged_copies_follow_changes_to_the_adapter():
    m = _model()
    ids = torch.randint(3, 300, (1, 16), generator=torch.Generator().manual_seed(1))
    before = _compress(m, ids)
    state = {n: p.detach().clone() for n, p in m.named_parameters() if p.requires_grad}
    perturb_trainables(m, seed=7)  # an optimizer step, in place
    after = _compress(m, ids)
    assert not _close(after, before) and _close(after, _unmerged(m, lambda: _compress(m, ids)))
    from r3mem.adapter import load_trainable_state

    load_trainable_state(m, state)  # a loaded adapter
    assert torch.equal(_compress(m, ids), before)


def test_training_passes_use_lora_and_reading_keeps_every_adapter_trainable():
    m = _model()
    trainable = {n for n, p in m.named_parameters() if p.requires_grad}
    with torch.no_grad():
        _compress(m, torch.tensor([[5, 6, 7, 8]]))
        _logits_bare(m, torch.tensor([[5, 6, 7]]))
    assert {n for n, p in m.named_parameters() if p.requires_grad} == trainable  # nothing frozen by a read
    out = _compress(m, torch.tensor([[5, 6, 7, 8]]))
    assert m._merged.in_use is None  # with gradient: the base weights, LoRA on top
    out.float().square().sum().backward()
    # (a kv memory is the write tokens' keys and values: the last layer's MLP and output projection feed none)
    grads = [p.grad for n, p in m.named_parameters() if ".lora_" in n and f".{COMPRESS}." in n and "layers.0." in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_float32_engines_do_not_merge():
    assert _model("float32")._merged is None


def test_an_engine_writes_and_recalls_with_merged_weights():
    cfg = tiny_cfg(compute_dtype="bfloat16")
    eng = R3Mem.from_base(tiny_model("llama"), tiny_tokenizer(), cfg)
    perturb_trainables(eng.model)
    mem = eng.write(SAMPLE_TEXT)
    assert eng.model._merged.in_use == COMPRESS
    eng.recall(mem, index=0)
    assert eng.model._merged.in_use == EXPAND and set(eng.model._merged._copies) == {COMPRESS, EXPAND}
    whole, cut = eng.write(SAMPLE_TEXT), len(SAMPLE_TEXT) // 2
    split = eng.write(SAMPLE_TEXT[cut:], eng.write(SAMPLE_TEXT[:cut]))
    assert eng.to_bytes(split) == eng.to_bytes(whole)  # split-invariant with merged weights too
