"""The reconstruction path can learn: a few dozen steps on one paragraph make greedy recall exact."""

import pytest
import torch
from conftest import ALL_LINEAR, tiny_cfg

from r3mem.losses import pair_losses
from r3mem.model import R3MemModel
from r3mem.recall import reconstruct
from r3mem.tiny import tiny_model
from r3mem.tokens import pad_batch

PARA = "Henry Sibley built a stone house near the ferry."


@pytest.mark.parametrize("family,mode,positions", [("llama", "adapters", "spread"), ("llama", "adapters", "prefix"),
                                                    ("qwen2", "coupling", "spread"), ("gpt2", "adapters", "spread")])
def test_overfit_one_paragraph(tok, family, mode, positions):
    torch.manual_seed(0)
    model = R3MemModel(tiny_model(family), tiny_cfg(reversible_mode=mode, target_modules=ALL_LINEAR[family],
                                                    memory_positions=positions))
    ids = tok(PARA, add_special_tokens=False)["input_ids"]
    ctx = pad_batch([ids], tok.pad_token_id, torch.device("cpu"))
    tgt = pad_batch([ids + [tok.eos_token_id]], tok.pad_token_id, torch.device("cpu"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0)

    def recalled() -> str:
        with torch.no_grad():
            state, _, _ = model.compress(model.embed(ctx[0]), ctx[1], model.slot_prior(1), 7)
        return reconstruct(model, tok, [state[0]], [40])[0]

    assert recalled() != PARA
    for _ in range(100):
        terms = pair_losses(model, ctx, ctx, tgt, 4.0, w_fwd=0.0, w_bwd=1.0, w_cyc=0.0, condition_on_query=False)
        opt.zero_grad()
        terms.backward.backward()
        opt.step()
    assert recalled() == PARA
