"""Starting a run from an earlier adapter, at the same or a larger LoRA rank."""

import dataclasses

import pytest
import torch
from conftest import perturb_trainables, tiny_r3

from r3mem.adapter import AdapterError, save_adapter
from r3mem.cli.train import resolve_config_path
from r3mem.config import load_config
from r3mem.losses import recon_losses
from r3mem.tiny import SAMPLE_TEXT, tiny_tokenizer
from r3mem.tokens import pad_batch
from r3mem.train.config import TrainConfig
from r3mem.train.loop import train
from r3mem.train.warmstart import init_from_adapter


def _terms(model, tok):
    ids = tok(SAMPLE_TEXT.split("\n\n")[1], add_special_tokens=False)["input_ids"][:40]
    ctx = pad_batch([ids, ids[:25]], tok.pad_token_id, torch.device("cpu"))
    tgt = pad_batch([ids + [tok.eos_token_id], ids[:25] + [tok.eos_token_id]], tok.pad_token_id, torch.device("cpu"))
    return recon_losses(model, ctx, tgt, 4.0, text_lm=True)  # forward: compress direction; backward: expand


def _saved(tmp_path, **kw):
    small = tiny_r3(memory_mode="kv", **kw)
    perturb_trainables(small)  # non-zero B everywhere, as after training
    save_adapter(tmp_path / "small", small.trainable_state_dict(), small.cfg, "tiny")
    return small


@pytest.mark.parametrize("alpha", [4, 16])  # same scale alpha/r as the small adapter, and a different one
def test_a_grown_rank_computes_what_the_small_adapter_did_and_can_learn(tmp_path, alpha):
    tok = tiny_tokenizer()
    small = _saved(tmp_path, lora_rank=2, lora_alpha=2)
    big = tiny_r3(memory_mode="kv", lora_rank=4, lora_alpha=alpha)
    init_from_adapter(str(tmp_path / "small"), big, big.cfg)
    want, got = _terms(small, tok), _terms(big, tok)
    torch.testing.assert_close(got.forward, want.forward, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.backward, want.backward, rtol=1e-5, atol=1e-5)
    (got.forward + got.backward).backward()
    B = {n: p for n, p in big.named_parameters() if ".lora_B." in n}
    assert all(p.shape[1] == 4 and not p[:, 2:].any() for p in B.values())
    # The added directions learn: their (zero) B columns get a gradient through A's new random rows.
    assert sum(float(p.grad[:, 2:].abs().sum()) for p in B.values() if p.grad is not None) > 0


@pytest.mark.parametrize("rank", [2, 4])  # the write adapter alone, and together with a rank growth
def test_a_write_adapter_starts_as_the_compress_lora_and_changes_nothing(tmp_path, rank):
    tok = tiny_tokenizer()
    small = _saved(tmp_path, lora_rank=2, lora_alpha=2)
    split = tiny_r3(memory_mode="kv", lora_rank=rank, lora_alpha=rank, write_adapter=True)
    init_from_adapter(str(tmp_path / "small"), split, split.cfg)
    want, got = _terms(small, tok), _terms(split, tok)
    torch.testing.assert_close(got.forward, want.forward, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.backward, want.backward, rtol=1e-5, atol=1e-5)
    own = dict(split.named_parameters())
    writes = [n for n in own if ".lora_B.write." in n]
    assert writes and all(own[n].data_ptr() != own[n.replace(".write.", ".compress.")].data_ptr() for n in writes)
    got.backward.backward()  # the memory's reconstruction trains the write LoRA through the write tokens
    assert sum(float(own[n].grad.abs().sum()) for n in writes if own[n].grad is not None) > 0


def test_a_rank_never_shrinks_and_other_shapes_must_match(tmp_path):
    _saved(tmp_path, lora_rank=4, lora_alpha=4)
    with pytest.raises(AdapterError, match="rank 4 cannot shrink to 2"):
        small = tiny_r3(memory_mode="kv", lora_rank=2, lora_alpha=2)
        init_from_adapter(str(tmp_path / "small"), small, small.cfg)
    other = tiny_r3(memory_mode="kv", lora_rank=4, lora_alpha=4, num_mem_tokens=6)
    with pytest.raises(AdapterError, match="has shape"):
        init_from_adapter(str(tmp_path / "small"), other, other.cfg)


def test_a_run_continues_an_adapter_at_a_larger_rank(tmp_path):
    cfg = load_config(resolve_config_path("tiny"), TrainConfig)
    train(cfg, tmp_path / "a", progress=False, stop_after=4)
    grown = dataclasses.replace(cfg, init_adapter=str(tmp_path / "a" / "checkpoints" / "step_0000004"),
                                model=cfg.model.replace(lora_rank=cfg.model.lora_rank * 2))
    res = train(grown, tmp_path / "b", progress=False)
    assert res.steps_done == cfg.steps
