"""Key/value memory: cache-prefix reading, key repositioning, gradients, 16-bit memory files."""

import math

import pytest
import torch
from conftest import ALL_LINEAR, perturb_trainables, tiny_cfg

from r3mem import kv
from r3mem.engine import R3Mem
from r3mem.losses import recon_losses
from r3mem.memfile import MemoryFileError, encode_memory
from r3mem.model import COMPRESS, R3MemModel
from r3mem.tiny import FAMILIES, SAMPLE_TEXT, tiny_model, tiny_tokenizer
from r3mem.tokens import pad_batch


def _ids(n: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, len(tiny_tokenizer()), (batch, n), generator=g)


@pytest.mark.parametrize("family", FAMILIES)
def test_kv_mode_without_memory_equals_the_bare_model(family):
    """Fresh adapters (LoRA B = 0) and no memory: the model's pass is the base model's, bit for bit."""
    bare = tiny_model(family)
    model = R3MemModel(tiny_model(family), tiny_cfg(memory_mode="kv"))
    ids = _ids(12, 2)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ref = bare(input_ids=ids, attention_mask=mask).logits
        hidden, _, _, _, _ = model._run(model.embed(ids), mask, COMPRESS, None, 0)
        torch.testing.assert_close(model.logits(hidden), ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_repositioned_cache_reads_like_the_original(family):
    """Moving cached keys by c positions and reading them from c positions later changes nothing:
    rotary attention sees only relative positions."""
    base = tiny_model(family)
    rot = kv.rotary_of(base.model)
    prefix, cont = _ids(7), _ids(5, seed=1)
    with torch.no_grad():
        out = base.model(input_ids=prefix, use_cache=True)
        state = kv.from_cache(out.past_key_values, 7)  # [1, L, 2, H, 7, hd]

        def read(st, start):
            return base.model(input_ids=cont, past_key_values=kv.to_cache(st, torch.float32),
                              position_ids=torch.arange(start, start + 5)[None]).last_hidden_state

        ref = read(state, 7)
        moved = kv.reposition(rot, state, torch.tensor([11]))
        torch.testing.assert_close(read(moved, 18), ref, rtol=1e-4, atol=1e-5)
        assert not torch.allclose(read(moved, 7), ref, atol=1e-4), "positions must matter"
        back = kv.reposition(rot, moved, torch.tensor([-11]))
        torch.testing.assert_close(back, state, rtol=1e-4, atol=1e-5)


def test_gradients_reach_write_tokens_and_compress_adapter_through_the_cache(tok):
    model = R3MemModel(tiny_model("llama"), tiny_cfg(memory_mode="kv"))
    perturb_trainables(model)
    ids = tok(SAMPLE_TEXT.split("\n\n")[1], add_special_tokens=False)["input_ids"]
    ctx = pad_batch([ids], tok.pad_token_id, torch.device("cpu"))
    tgt = pad_batch([ids + [tok.eos_token_id]], tok.pad_token_id, torch.device("cpu"))
    recon_losses(model, ctx, tgt, 4.0).backward.backward()
    assert model.memory.write_emb.grad[: -(-len(ids) // 4)].abs().sum() > 0
    # Every compress-direction LoRA that can shape a cached key/value gets a gradient: all of them but
    # those of the last layer after its key/value projections (its output is never read).
    last = f"layers.{model.lm.config.num_hidden_layers - 1}."
    comp = {n: p.grad for n, p in model.named_parameters() if ".compress." in n and "lora_B" in n}
    reach = {n: g for n, g in comp.items() if last not in n or any(k in n for k in ("k_proj", "v_proj"))}
    assert len(reach) > len(comp) // 2
    assert all(g is not None and g.abs().sum() > 0 for g in reach.values()), [
        n for n, g in reach.items() if g is None or not g.abs().sum()
    ]


def test_recon_text_lm_trains_the_whole_compress_direction_and_only_it(tok):
    """The text's own LM loss in the compress pass reaches the compress LoRA of every layer, the last
    layer's MLP too (which the reconstruction loss cannot reach), and never the expand direction."""
    model = R3MemModel(tiny_model("llama"), tiny_cfg(memory_mode="kv", target_modules=ALL_LINEAR["llama"]))
    perturb_trainables(model)
    ids = tok(SAMPLE_TEXT.split("\n\n")[1], add_special_tokens=False)["input_ids"]
    ctx = pad_batch([ids, ids[:9]], tok.pad_token_id, torch.device("cpu"))
    tgt = pad_batch([ids + [tok.eos_token_id], ids[:9] + [tok.eos_token_id]], tok.pad_token_id, torch.device("cpu"))
    assert float(recon_losses(model, ctx, tgt, 4.0).forward) == 0.0
    terms = recon_losses(model, ctx, tgt, 4.0, text_lm=True)
    assert 0 < terms.forward.item() < 2 * math.log(len(tok))
    terms.forward.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if "lora_B" in n}
    last_mlp = f"layers.{model.lm.config.num_hidden_layers - 1}.mlp.down_proj"
    assert any(last_mlp in n and ".compress." in n and g is not None and g.abs().sum() > 0 for n, g in grads.items())
    assert all(g is None or not g.abs().sum() for n, g in grads.items() if ".expand." in n)
    # The loss is the text's: changing one token of the short row's context changes it.
    other = ctx[0].clone()
    other[1, 3] = (other[1, 3] + 1) % len(tok)
    again = recon_losses(model, (other, ctx[1]), tgt, 4.0, text_lm=True).forward
    assert not torch.isclose(again, terms.forward)


def test_state_shape_is_layers_kv_heads_tokens_head_dim():
    model = R3MemModel(tiny_model("llama"), tiny_cfg(memory_mode="kv"))
    c = model.lm.config
    L, H, hd = c.num_hidden_layers, c.num_key_value_heads, c.hidden_size // c.num_attention_heads
    assert model.initial_state(3).shape == (3, L, 2, H, model.cfg.num_mem_tokens, hd)


@pytest.fixture
def kv_engine(tok):
    model = R3MemModel(tiny_model("llama"), tiny_cfg(memory_mode="kv", target_modules=ALL_LINEAR["llama"]))
    perturb_trainables(model)
    return R3Mem(model, tok)


def test_memory_is_stored_in_16_bit_and_round_trips_exactly(kv_engine, tmp_path):
    mem = kv_engine.flush(kv_engine.write(SAMPLE_TEXT))
    assert mem.doc_state.dtype == torch.float16
    assert all(s.state.dtype == torch.float16 for s in mem.paragraphs + mem.entities)
    kv_engine.save(mem, tmp_path / "m.r3mem")
    back = kv_engine.load(tmp_path / "m.r3mem")
    assert torch.equal(back.doc_state, mem.doc_state)
    assert all(torch.equal(a.state, b.state) for a, b in zip(back.paragraphs, mem.paragraphs))
    assert kv_engine.recall(back, index=1).text == kv_engine.recall(mem, index=1).text


def test_incremental_write_equals_whole_with_16_bit_rounding(kv_engine):
    paras = SAMPLE_TEXT.split("\n\n")
    whole = kv_engine.flush(kv_engine.write("\n\n".join(paras * 3) + "\n\n"))
    mem = kv_engine.new_memory()
    for p in (paras * 3):
        mem = kv_engine.write(p + "\n\n", mem)
    parts = kv_engine.flush(mem)
    assert whole.n_segments == parts.n_segments > 2
    assert torch.equal(whole.doc_state, parts.doc_state)


def test_old_format_version_is_refused_naming_both_versions(kv_engine, monkeypatch):
    from r3mem import memfile

    mem = kv_engine.write(SAMPLE_TEXT)
    monkeypatch.setattr(memfile, "FORMAT_VERSION", 1)
    old = encode_memory(mem, kv_engine.identity)
    monkeypatch.undo()
    with pytest.raises(
        MemoryFileError, match=r"format version 1 is no longer supported \(this r3mem reads versions 2-6\)"
    ):
        kv_engine.from_bytes(old)


def test_memory_of_the_wrong_shape_dtype_or_ids_is_refused_at_load(kv_engine):
    mem = kv_engine.write(SAMPLE_TEXT)
    bad_shape = mem.copy()
    bad_shape.doc_state = mem.doc_state[:, :, :1]
    bad_dtype = mem.copy()
    bad_dtype.doc_state = mem.doc_state.float()
    bad_ids = mem.copy()
    bad_ids.pending_ids = [10**12]
    for m, msg in (
        (bad_shape, "doc_state has shape"),
        (bad_dtype, "doc_state is float32"),
        (bad_ids, "outside the vocabulary"),
    ):
        data = encode_memory(m, kv_engine.identity)  # checksum recomputed: only the content check can refuse it
        with pytest.raises(MemoryFileError, match=msg):
            kv_engine.from_bytes(data)


def test_spread_positions_put_each_memory_token_at_the_end_of_its_share():
    pos = R3MemModel.spread_positions(torch.tensor([64, 5, 16]), 16)
    assert pos[0].tolist() == list(range(3, 64, 4))
    assert pos[2].tolist() == list(range(16))
    assert pos[1].min() >= 0 and pos[1].max() == 4 and bool((pos[1].diff() >= 0).all())


def _hand_positions_model():
    model = R3MemModel(tiny_model("llama"), tiny_cfg(memory_mode="kv", target_modules=ALL_LINEAR["llama"]))
    perturb_trainables(model)
    model.eval()
    return model


def test_spread_memory_is_written_and_read_at_the_documented_positions():
    """A slot of n tokens in k memory tokens: compress sees <sep> at 0, the text at 1..n and write token
    j at 1 + floor((j+1) n / k) - 1; the memory is stored as if the text sat at 0..n-1; an expansion
    puts [<expand>, <sep>] at -2, -1 and the target at 0, 1, ... (hand-built passes of the body)."""
    from r3mem.model import EXPAND, EXPAND_MARK, SEP

    model = _hand_positions_model()
    assert model.spread
    n, k = 11, 3
    ids = _ids(n, seed=7)
    one = torch.ones(1, n, dtype=torch.long)
    with torch.no_grad():
        mem, _, _ = model.compress(model.embed(ids), one, None, k)
        hidden, _ = model.teacher_force(mem, ids, one)
        c = R3MemModel.spread_positions(torch.tensor([n]), k)[0]
        x = torch.cat([model.memory.marker(1, SEP), model.embed(ids), model.memory.write_tokens(1, k)], 1)
        model._set_direction(COMPRESS)
        out = model.body(inputs_embeds=x, attention_mask=torch.ones(1, n + 1 + k, dtype=torch.long),
                         position_ids=torch.cat([torch.arange(n + 1), 1 + c])[None], use_cache=True)
        ref = kv.reposition(model._rot, kv.from_cache(out.past_key_values, k), torch.tensor([-1]))
        torch.testing.assert_close(mem, ref, rtol=1e-4, atol=1e-5)
        y = torch.cat([model.memory.marker(1, EXPAND_MARK), model.memory.marker(1, SEP), model.embed(ids)], 1)
        model._set_direction(EXPAND)
        out = model.body(inputs_embeds=y, attention_mask=torch.ones(1, k + n + 2, dtype=torch.long),
                         position_ids=torch.arange(-2, n)[None], past_key_values=kv.to_cache(ref, torch.float32))
        torch.testing.assert_close(hidden, out.last_hidden_state[:, 1:1 + n], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("positions", ["spread", "prefix"])
def test_slots_of_different_lengths_batch_like_single_rows(positions):
    """Each row's memory is spread over its own length: padding must not move it."""
    model = R3MemModel(tiny_model("llama"), tiny_cfg(memory_mode="kv", memory_positions=positions))
    perturb_trainables(model)
    a, b = _ids(14, seed=2)[0], _ids(6, seed=3)[0]
    ids, mask = pad_batch([a.tolist(), b.tolist()], 0, torch.device("cpu"))
    with torch.no_grad():
        both, _, _ = model.compress(model.embed(ids), mask, None, 4)
        one, _, _ = model.compress(model.embed(a[None]), mask[:1], None, 4)
        two, _, _ = model.compress(model.embed(b[None]), mask[1:, :6], None, 4)
        torch.testing.assert_close(both, torch.cat([one, two]), atol=1e-5, rtol=1e-4)
        assert model.reconstruct(both, 5, None) == model.reconstruct(one, 5, None) + model.reconstruct(two, 5, None)


@pytest.mark.parametrize("positions", ["spread", "prefix"])
def test_generation_after_a_memory_predicts_as_the_segment_scoring_does(positions):
    """`decode` with a prompt (what `generate` runs) reads the prompt after a memory exactly as
    `compress` reads a segment after it when scoring next-segment LM: the probability it gives the
    token it generates is the one the LM loss gives that token after the same prompt."""
    from r3mem.tokens import IGNORE_INDEX

    model = R3MemModel(tiny_model("llama"), tiny_cfg(memory_mode="kv", memory_positions=positions))
    perturb_trainables(model)
    one = torch.ones(1, 16, dtype=torch.long)
    prompt = _ids(5, seed=5)
    with torch.no_grad():
        mem, _, _ = model.compress(model.embed(_ids(16, seed=4)), one, None, 4)
        probs: list[list[float]] = []
        (g,) = model.continue_text(mem, (prompt, torch.ones_like(prompt)), 1, None, probs=probs)
        seq = torch.cat([prompt, torch.tensor([g])], 1)
        labels = torch.full_like(seq, IGNORE_INDEX)
        labels[0, -1] = g[0]  # score only the token after the prompt
        _, nll, n = model.compress(model.embed(seq), torch.ones_like(seq), mem, 4, labels)
    assert int(n) == 1
    assert probs[0][0] == pytest.approx(math.exp(-float(nll)), rel=1e-4)


def test_the_two_position_schemes_store_different_memories():
    cfgs = [tiny_cfg(memory_mode="kv", memory_positions=p) for p in ("spread", "prefix")]
    mems = []
    for cfg in cfgs:
        model = R3MemModel(tiny_model("llama"), cfg)
        perturb_trainables(model)
        with torch.no_grad():
            mems.append(model.compress(model.embed(_ids(12)), torch.ones(1, 12, dtype=torch.long), None, 3)[0])
    assert not torch.allclose(mems[0], mems[1], atol=1e-3)


def test_an_adapter_saved_before_memory_positions_existed_reads_memory_as_a_prefix(tmp_path):
    import json

    from r3mem.adapter import META, read_adapter, save_adapter

    model = R3MemModel(tiny_model("llama"), tiny_cfg(memory_mode="kv"))
    save_adapter(tmp_path, model.trainable_state_dict(), model.cfg, "tiny")
    meta = json.loads((tmp_path / META).read_text())
    assert meta["config"].pop("memory_positions") == "spread"
    (tmp_path / META).write_text(json.dumps(meta))
    assert read_adapter(tmp_path)[0].memory_positions == "prefix"


@pytest.mark.parametrize("positions", ["spread", "prefix"])
def test_a_slot_written_in_a_pass_reads_its_text_where_the_slot_pass_does(positions):
    """`compress_in_pass` over a text with no memory and no text before it reads the same keys/values,
    at the same positions, as `compress`: the same slot, rows of different lengths batched."""
    model = R3MemModel(tiny_model("llama"), tiny_cfg(memory_mode="kv", memory_positions=positions))
    perturb_trainables(model)
    a, b = _ids(14, seed=2)[0], _ids(6, seed=3)[0]
    ids, mask = pad_batch([a.tolist(), b.tolist()], 0, torch.device("cpu"))
    with torch.no_grad():
        ref, _, _ = model.compress(model.embed(ids), mask, None, 4)
        got = model.compress_in_pass(model.embed(ids), mask, mask.sum(1), None, 4)
        # Two layers: the slot's keys/values read the text's at layer 0 only, which no earlier token
        # shapes, so text before it (and a memory) leave it as the slot pass writes it, if every position is right.
        before = _ids(7, seed=6)[0].tolist()
        ids, mask = pad_batch([before + a.tolist(), before[:2] + b.tolist()], 0, torch.device("cpu"))
        after = model.compress_in_pass(model.embed(ids), mask, torch.tensor([14, 6]), model.initial_state(2), 4)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(after, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("positions", ["spread", "prefix"])
def test_a_slot_written_in_a_pass_reads_only_its_text_as_the_pass_saw_it(positions):
    """After a memory and other text, the slot depends on them (the pass's keys/values of its text
    do) but not on how the batch is padded; it is not the slot of the text alone. Four layers: a slot's
    keys/values at layer l read the text's below l, which read the text before below l - 1."""
    model = R3MemModel(tiny_model("llama", layers=4), tiny_cfg(memory_mode="kv", memory_positions=positions))
    perturb_trainables(model)
    text, before = _ids(9, seed=4)[0].tolist(), _ids(11, seed=5)[0].tolist()
    rows = [before + text, before[:3] + text]
    ids, mask = pad_batch(rows, 0, torch.device("cpu"))
    n = torch.tensor([9, 9])
    with torch.no_grad():
        mem = model.initial_state(1)
        both = model.compress_in_pass(model.embed(ids), mask, n, mem.expand(2, -1, -1, -1, -1, -1), 3)
        one = model.compress_in_pass(model.embed(torch.tensor([rows[0]])), torch.ones(1, 20, dtype=torch.long),
                                     n[:1], mem, 3)
        alone, _, _ = model.compress(model.embed(torch.tensor([text])), torch.ones(1, 9, dtype=torch.long), None, 3)
    torch.testing.assert_close(both[:1], one, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(both[0], both[1], atol=1e-4), "the text before must shape the slot"
    assert not torch.allclose(one, alone, atol=1e-4)


def test_recon_in_pass_trains_through_the_document_pass(tok):
    """The in-pass reconstruction loss reaches the write tokens and the initial memory (read by the text
    in the pass), and its text before changes the loss (four layers, as above)."""
    model = R3MemModel(tiny_model("llama", layers=4), tiny_cfg(memory_mode="kv"))
    perturb_trainables(model)
    ids = tok(SAMPLE_TEXT.split("\n\n")[1], add_special_tokens=False)["input_ids"]
    ctx = pad_batch([ids, ids[:9]], tok.pad_token_id, torch.device("cpu"))
    tgt = pad_batch([ids + [tok.eos_token_id], ids[:9] + [tok.eos_token_id]], tok.pad_token_id, torch.device("cpu"))
    before = pad_batch([ids[-5:], []], tok.pad_token_id, torch.device("cpu"))
    terms = recon_losses(model, ctx, tgt, 4.0, before=before)
    terms.backward.backward()
    assert model.memory.write_emb.grad.abs().sum() > 0
    assert model.memory.init_mem.grad is not None and model.memory.init_mem.grad.abs().sum() > 0
    other = pad_batch([ids[-7:], []], tok.pad_token_id, torch.device("cpu"))
    assert not torch.isclose(recon_losses(model, ctx, tgt, 4.0, before=other).backward, terms.backward)
    assert not torch.isclose(recon_losses(model, ctx, tgt, 4.0).backward, terms.backward)


@pytest.mark.parametrize("positions", ["spread", "prefix"])
def test_one_pass_folds_the_segment_and_writes_its_spans_slots(positions):
    """`compress_with_slots`: the document state `compress` folds, and each span's slot as written in
    a pass over the segment's text up to the span's end (causal: later text changes nothing)."""
    model = R3MemModel(tiny_model("llama", layers=4), tiny_cfg(memory_mode="kv", memory_positions=positions))
    perturb_trainables(model)
    ids = _ids(15, seed=7)
    mem = model.initial_state(1)
    spans = [(0, 6, 2), (6, 13, 2), (13, 15, 1)]
    with torch.no_grad():
        new, slots = model.compress_with_slots(model.embed(ids), mem, 4, spans)
        ref, _, _ = model.compress(model.embed(ids), torch.ones_like(ids), mem, 4)
        torch.testing.assert_close(new, ref, atol=1e-5, rtol=1e-4)
        for (a, b, k), slot in zip(spans, slots):
            part = ids[:, :b]
            want = model.compress_in_pass(model.embed(part), torch.ones_like(part), torch.tensor([b - a]), mem, k)
            torch.testing.assert_close(slot[None], want, atol=1e-5, rtol=1e-4)
        assert slots[0].shape[-2] == 2 and slots[2].shape[-2] == 1


def test_slots_from_text_are_the_same_packed_in_one_pass_or_each_alone(monkeypatch):
    """Pieces of different lengths and memory tokens share a pass behind a block mask: each slot is
    the one its piece writes alone, however the pieces are cut into passes."""
    import r3mem.model as model_mod

    model = R3MemModel(tiny_model("llama", layers=4), tiny_cfg(memory_mode="kv"))
    perturb_trainables(model)
    ids = _ids(30, seed=8)
    with torch.no_grad():
        _, text, first = model.compress_keeping_text(model.embed(ids), model.initial_state(1), 4)
        pieces = [(text[..., a:b, :], first + a, k) for a, b, k in [(0, 5, 2), (5, 17, 3), (17, 18, 1), (18, 30, 3)]]
        alone = [model.slots_from_text([p])[0] for p in pieces]
        packed = model.slots_from_text(pieces)
        monkeypatch.setattr(model_mod, "SLOT_TOKENS_PER_PASS", 4)
        cut = model.slots_from_text(pieces)
    for a, p, c in zip(alone, packed, cut):
        torch.testing.assert_close(p, a, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(c, a, atol=1e-5, rtol=1e-4)
