"""Recall confidence: per-token probabilities from the decoding pass itself, and slot-level summaries."""

import math

import torch
from conftest import perturb_trainables, tiny_cfg

from r3mem.engine import R3Mem
from r3mem.model import R3MemModel
from r3mem.recall import reconstruct_scored
from r3mem.tiny import SAMPLE_TEXT, tiny_model


def _engine(tok):
    model = R3MemModel(tiny_model("llama"), tiny_cfg())
    perturb_trainables(model)
    return R3Mem(model, tok)


def test_token_probabilities_equal_a_teacher_forced_pass_over_the_output(tok):
    eng = _engine(tok)
    mem = eng.flush(eng.write(SAMPLE_TEXT))
    state = mem.paragraphs[1].state
    rec = reconstruct_scored(eng.model, tok, [state], [12])[0]
    assert len(rec.token_probs) == len(rec.token_ids) > 0
    ids = torch.tensor([rec.token_ids])
    with torch.no_grad():
        hidden, _ = eng.model.teacher_force(state[None], ids, torch.ones_like(ids))
        p = torch.softmax(eng.model.logits(hidden).float(), -1)[0].gather(-1, ids[0, :, None])[:, 0]
    torch.testing.assert_close(torch.tensor(rec.token_probs), p, atol=1e-4, rtol=1e-3)


def test_recall_reports_tokens_and_confidence_that_add_up(tok):
    eng = _engine(tok)
    mem = eng.flush(eng.write(SAMPLE_TEXT))
    rec = eng.recall(mem, query="the ferry", top_k=2)
    assert len(rec.slots) == 2
    for s in rec.slots:
        assert "".join(t["text"] for t in s["tokens"]) == s["text"]
        ps = [t["p"] for t in s["tokens"]]
        assert all(0 < p <= 1 for p in ps)
        c = s["confidence"]
        assert c["min"] <= c["geo_mean"] <= 1 and abs(min(ps) - c["min"]) < 1e-6
    assert rec.confidence == min(s["confidence"]["geo_mean"] for s in rec.slots)
    d = rec.to_dict()
    assert d["confidence"] == rec.confidence and d["slots"][0]["tokens"] == rec.slots[0]["tokens"]
    assert math.isfinite(rec.confidence)
