"""write / recall / generate / answer / save / load / reset, and refusal of bad memory files."""

import struct

import pytest
import torch
from conftest import perturb_trainables, tiny_cfg

from r3mem import WritePolicy
from r3mem.engine import R3Mem
from r3mem.memfile import FORMAT_VERSION, MemoryFileError, encode_memory
from r3mem.model import Sampling
from r3mem.tiny import SAMPLE_TEXT, tiny_model


def _same(m1, m2):
    assert torch.equal(m1.doc_state, m2.doc_state)
    assert m1.pending_ids == m2.pending_ids and m1.pending_text == m2.pending_text and m1.offset == m2.offset
    assert [(s.key, s.start, s.end) for s in m1.paragraphs] == [(s.key, s.start, s.end) for s in m2.paragraphs]
    assert all(torch.equal(a.state, b.state) for a, b in zip(m1.paragraphs + m1.entities, m2.paragraphs + m2.entities))
    assert [(e.key, e.mentions) for e in m1.entities] == [(e.key, e.mentions) for e in m2.entities]
    assert m1.n_segments == m2.n_segments and m1.doc_chain == m2.doc_chain
    assert [s.n_segments for s in m1.snapshots] == [s.n_segments for s in m2.snapshots]
    assert all(torch.equal(a.state, b.state) for a, b in zip(m1.snapshots, m2.snapshots))


@pytest.mark.parametrize("cut", [1, 57, 98, 99, 100, 101, 150, 290, len(SAMPLE_TEXT) - 1])
def test_incremental_write_equals_whole(trained_like, cut):
    eng = trained_like
    whole = eng.write(SAMPLE_TEXT)
    parts = eng.write(SAMPLE_TEXT[cut:], eng.write(SAMPLE_TEXT[:cut]))
    _same(whole, parts)


def test_write_streams_chunks_and_does_not_mutate_input(trained_like):
    eng = trained_like
    first = eng.write(SAMPLE_TEXT[:150])
    snapshot = (first.doc_state.clone(), list(first.pending_ids), len(first.paragraphs))
    chunks = [SAMPLE_TEXT[i:i + 37] for i in range(0, len(SAMPLE_TEXT), 37)]
    _same(eng.write(iter(chunks)), eng.write(SAMPLE_TEXT))
    eng.write(SAMPLE_TEXT[150:], first)
    assert (
        torch.equal(first.doc_state, snapshot[0])
        and first.pending_ids == snapshot[1]
        and len(first.paragraphs) == snapshot[2]
    )


def test_hierarchy_slots_link_to_their_spans(trained_like):
    mem = trained_like.flush(trained_like.write(SAMPLE_TEXT))
    assert len(mem.paragraphs) == 4
    for s in mem.paragraphs:
        assert SAMPLE_TEXT[s.start:s.end].strip() == SAMPLE_TEXT[s.start:s.end]
        assert s.state.shape[-2] == max(1, -(-s.n_tokens // 4))  # ceil(n / paragraph_ratio)
    names = {e.key for e in mem.entities}
    assert {"Henry Sibley", "Mendota"} <= names
    for e in mem.entities:
        for a, b in e.mentions:
            assert SAMPLE_TEXT[a:b].lower() == e.key.lower()
        assert mem.paragraphs[e.parent].start <= e.start < mem.paragraphs[e.parent].end
    assert mem.doc_state.shape == trained_like.model.initial_state(1)[0].shape
    assert mem.doc_state.shape[-2] == trained_like.config.num_mem_tokens


def test_memory_state_constant_while_slots_grow_linearly(trained_like):
    eng = trained_like
    mem1 = eng.write(SAMPLE_TEXT + "\n\n")
    mem3 = eng.write((SAMPLE_TEXT + "\n\n") * 3)
    assert mem1.doc_state.shape == mem3.doc_state.shape
    assert len(mem3.paragraphs) == 3 * len(mem1.paragraphs)


def test_recall_modes(trained_like):
    eng = trained_like
    mem = eng.write(SAMPLE_TEXT)
    everything = eng.recall(mem)
    assert [s["key"] for s in everything.slots] == ["p0", "p1", "p2", "p3"]  # p3 is the pending paragraph
    one = eng.recall(mem, index=1)
    assert one.slots[0]["key"] == "p1" and isinstance(one.text, str)
    q = eng.recall(mem, query="Henry Sibley house", top_k=2)
    assert len(q.slots) == 2 and all(s["score"] is not None for s in q.slots)
    ent = eng.recall(mem, query="Who was Henry Sibley?", level="entity")
    assert ent.slots[0]["key"] == "Henry Sibley"
    doc = eng.recall(mem, level="document", max_new_tokens=5)
    assert doc.level == "document"
    assert eng.recall(mem, index=1).text == one.text  # greedy recall is deterministic
    stored = eng.flush(mem)
    greedy = eng.recall(stored, index=1)

    def sampled(seed):
        return eng.recall(stored, index=1, sampling=Sampling(2.0, 0.95, torch.Generator().manual_seed(seed))).text

    draws = [sampled(s) for s in range(4)]
    assert draws[0] == sampled(0) and len(set(draws)) > 1  # drawn, reproducibly from the generator
    assert eng.recall(stored, index=1).text == greedy.text  # a sampled expansion is not cached as the greedy one
    with pytest.raises(ValueError, match="level"):
        eng.recall(mem, level="chapter")
    with pytest.raises(ValueError, match="query"):
        eng.recall(mem, query="   ")
    with pytest.raises(IndexError, match="index"):
        eng.recall(mem, index=9)


def test_generate_answer_reset(trained_like):
    eng = trained_like
    mem = eng.write(SAMPLE_TEXT)
    assert isinstance(eng.generate("The river", mem, max_new_tokens=4), str)
    assert eng.generate("The river", mem, max_new_tokens=4, temperature=1.0, seed=3) == \
        eng.generate("The river", mem, max_new_tokens=4, temperature=1.0, seed=3)
    ans, rec = eng.answer("Who built a stone house?", mem, max_new_tokens=4)
    assert isinstance(ans, str) and rec.slots
    fresh = eng.new_memory()
    assert fresh.paragraphs == [] and fresh.offset == 0
    assert torch.equal(fresh.doc_state, eng.new_memory().doc_state)


def test_generate_recall_read_puts_the_expanded_memory_before_the_prompt(trained_like, tok, monkeypatch):
    eng = trained_like
    mem = eng.flush(eng.write(SAMPLE_TEXT))  # flushed: the state read is the stored one
    calls = []
    real_rec, real_cont = eng.model.reconstruct, eng.model.continue_text

    def spy(name, real):
        def call(state, *a, **kw):
            out = real(state, *a, **kw)
            calls.append((name, state, a, kw, out))
            return out
        return call

    monkeypatch.setattr(eng.model, "reconstruct", spy("reconstruct", real_rec))
    monkeypatch.setattr(eng.model, "continue_text", spy("continue_text", real_cont))
    text = eng.generate("The river", mem, max_new_tokens=3, read="recall", recall_tokens=5)
    (k1, st1, a1, kw1, recalled), (k2, st2, a2, kw2, out) = calls
    assert (k1, a1[0], kw1) == ("reconstruct", 5, {})  # the backward expansion, no query
    assert torch.equal(st1, st2) and torch.equal(st1[0], mem.doc_state)  # read with the memory still the cache
    prompt_ids = a2[0][0][0].tolist()
    assert k2 == "continue_text"
    assert prompt_ids == recalled[0] + eng.tokenizer("The river", add_special_tokens=False)["input_ids"]
    assert a2[1] == 3 and text == eng.tokenizer.decode(out[0], skip_special_tokens=True)
    calls.clear()
    eng.generate("The river", mem, max_new_tokens=3, read="recall")
    assert calls[0][2][0] == eng.config.segment_len  # default: one segment of text
    # a memory with nothing written has nothing to recall: the recall read is the cache read
    calls.clear()
    fresh = eng.new_memory()
    assert eng.generate("The river", fresh, max_new_tokens=3, read="recall") == \
        eng.generate("The river", fresh, max_new_tokens=3)
    assert [c[0] for c in calls] == ["continue_text"] * 2
    for bad, msg in (({"read": "text"}, "read: must be 'cache' or 'recall'"),
                     ({"read": "recall", "recall_tokens": 0}, "recall_tokens: must be an integer >= 1")):
        with pytest.raises(ValueError, match=msg):
            eng.generate("The river", mem, **bad)
    no_bwd = R3Mem.from_base(tiny_model("llama"), tok, tiny_cfg(w_bwd=0.0))
    with pytest.raises(ValueError, match="no backward path"):
        no_bwd.generate("The river", no_bwd.write(SAMPLE_TEXT), read="recall")


def test_memory_file_round_trip(trained_like, tmp_path):
    eng = trained_like
    mem = eng.write(SAMPLE_TEXT)
    path = tmp_path / "m.r3mem"
    eng.save(mem, path)
    back = eng.load(path)
    _same(mem, back)
    assert eng.recall(back, query="the ferry").text == eng.recall(mem, query="the ferry").text
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temporary file


def _bad_files(eng, mem, tok):
    good = eng.to_bytes(mem)
    n = struct.unpack("<Q", good[:8])[0]
    flipped = bytearray(good)
    flipped[-5] ^= 0x01
    header_flip = bytearray(good)
    i = good.index(b"pending_text")
    header_flip[i + 20] = ord("Z") if header_flip[i + 20] != ord("Z") else ord("Y")
    other = R3Mem.from_base(tiny_model("qwen2"), tok, tiny_cfg())
    other_adapter = R3Mem.from_base(tiny_model("llama"), tok, tiny_cfg())
    import r3mem.memfile as memfile

    memfile.FORMAT_VERSION = FORMAT_VERSION + 1  # a file written by a future r3mem
    try:
        future = encode_memory(mem, eng.identity)
    finally:
        memfile.FORMAT_VERSION = FORMAT_VERSION
    return {
        "truncated": (good[: len(good) - 100], "truncated"),
        "truncated header": (good[: n // 2], "truncated"),
        "empty": (b"", "truncated"),
        "bit flip in tensors": (bytes(flipped), "checksum mismatch"),
        "edited header": (bytes(header_flip), "checksum mismatch|not an r3mem"),
        "wrong format": (b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"a":{"b":1}}   ', "not an r3mem memory file"),
        "other model": (other.to_bytes(other.write(SAMPLE_TEXT[:120])), "base_model_id"),
        "other adapter": (other_adapter.to_bytes(other_adapter.write(SAMPLE_TEXT[:120])), "adapter_hash"),
        "future version": (future, "newer than this r3mem supports"),
    }


def test_bad_memory_files_are_refused(trained_like, tok, tmp_path):
    eng = trained_like
    mem = eng.write(SAMPLE_TEXT)
    for name, (data, message) in _bad_files(eng, mem, tok).items():
        path = tmp_path / f"{name.replace(' ', '_')}.r3mem"
        path.write_bytes(data)
        with pytest.raises(MemoryFileError, match=message) as e:
            eng.load(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value), name


def test_failed_save_keeps_previous_file(trained_like, tmp_path, monkeypatch):
    eng = trained_like
    path = tmp_path / "m.r3mem"
    mem = eng.write(SAMPLE_TEXT)
    eng.save(mem, path)
    before = path.read_bytes()
    import os

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        eng.save(eng.write("More text.\n\n", mem), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".*tmp"))


def test_bad_text_input(trained_like):
    eng = trained_like
    for text in ["", "   \n\n  ", "a", "emoji 😀 and 中文 mixed\x07 control\n\nnext", "nul\x00byte\n\nz"]:
        mem = eng.flush(eng.write(text))
        assert torch.isfinite(mem.doc_state).all()
    with pytest.raises(TypeError, match="must be str"):
        eng.write([b"bytes"])


def test_a_write_policy_chooses_levels_and_ratios_and_the_memory_keeps_it(trained_like, monkeypatch):
    from r3mem import WritePolicy, memfile
    from r3mem.config import ConfigError
    from r3mem.tokens import slot_tokens

    eng = trained_like
    lean = WritePolicy(("document", "paragraph"), paragraph_ratio=8)
    mem = eng.write(SAMPLE_TEXT, policy=lean)
    default = eng.write(SAMPLE_TEXT)
    assert mem.policy == lean and default.policy == WritePolicy.of(eng.config)
    assert mem.entities == [] and default.entities  # no entity slots: that level is not in the policy
    assert [s.n_mem_tokens for s in mem.paragraphs] == \
        [slot_tokens(s.n_tokens, 8.0, eng.model.memory.max_slot) for s in mem.paragraphs]
    assert sum(s.n_mem_tokens for s in mem.paragraphs) < sum(s.n_mem_tokens for s in default.paragraphs)
    more = eng.write("Later text about the ferry.\n\n", mem)  # the memory's own policy, without asking again
    assert more.policy == lean and more.entities == []
    with pytest.raises(ValueError, match="^policy: this memory was written with"):
        eng.write("x", mem, policy=WritePolicy())
    with pytest.raises(ValueError, match="not in the levels this memory is written with"):
        eng.recall(mem, query="Who was Henry Sibley?", level="entity")
    # the pending paragraph is read at the memory's ratio, as a flush would write it
    pending = eng.recall(mem, index=-1)
    flushed = eng.flush(mem).paragraphs[-1]
    assert pending.slots[0]["key"] == flushed.key
    assert eng.find(mem, "Henry Sibley house", top_k=1)  # found among the policy's slots
    back = eng.from_bytes(eng.to_bytes(eng.flush(mem)))
    assert back.policy == lean
    # a memory file of format 3 has no policy: it loads, and its next write takes the engine's
    monkeypatch.setattr(memfile, "FORMAT_VERSION", 3)
    no_policy = default.copy()
    no_policy.policy = None
    old = eng.to_bytes(no_policy)
    monkeypatch.undo()
    loaded = eng.from_bytes(old)
    assert loaded.policy is None and eng.write("More.\n\n", loaded).policy == WritePolicy.of(eng.config)
    # write_many: memories of different policies in one batch, as written one by one
    both = eng.write_many([SAMPLE_TEXT, SAMPLE_TEXT], [eng.write("A.\n\n", policy=lean), eng.new_memory()])
    alone = [eng.write(SAMPLE_TEXT, eng.write("A.\n\n", policy=lean)), eng.write(SAMPLE_TEXT)]
    for a, b in zip(both, alone):
        assert a.policy == b.policy and [s.key for s in a.paragraphs + a.entities] == \
            [s.key for s in b.paragraphs + b.entities]
        for x, y in zip(a.paragraphs, b.paragraphs):
            torch.testing.assert_close(x.state, y.state, atol=1e-5, rtol=1e-4)
    for bad, msg in ((dict(paragraph_ratio=0.5), "^paragraph_ratio: must be a finite number >= 1"),
                     (dict(levels=("paragraph",)), "^levels: must be distinct levels"),
                     (dict(entity_ratio=float("nan")), "^entity_ratio")):
        with pytest.raises(ConfigError, match=msg):
            WritePolicy(**bad)


def test_entity_slots_change_no_paragraph_recall_or_answer(trained_like):
    """The hierarchy ablation for answering: paragraph recall and `answer` read only the document state
    and paragraph slots, so leaving the entity level out changes none of their numbers, only the bytes."""
    from r3mem import WritePolicy

    eng = trained_like
    full = eng.flush(eng.write(SAMPLE_TEXT))
    lean = eng.flush(eng.write(SAMPLE_TEXT, policy=WritePolicy(("document", "paragraph"))))
    assert full.entities and not lean.entities and lean.state_bytes() < full.state_bytes()
    torch.testing.assert_close(lean.doc_state, full.doc_state)
    for a, b in zip(full.paragraphs, lean.paragraphs, strict=True):
        assert (a.key, a.start, a.end) == (b.key, b.start, b.end)
        torch.testing.assert_close(a.state, b.state)
    for q in ("Who built the stone house?", "the ferry"):
        assert [s.key for s, _ in eng.find(full, q, top_k=2)] == [s.key for s, _ in eng.find(lean, q, top_k=2)]
        assert eng.answer(q, full, max_new_tokens=4)[0] == eng.answer(q, lean, max_new_tokens=4)[0]


def test_write_many_equals_separate_writes(trained_like):
    eng = trained_like
    texts = [SAMPLE_TEXT, SAMPLE_TEXT[100:] + "\n\nExtra closing words by Mendota.\n\n", "Short one."]
    many = eng.write_many(texts)
    for text, got in zip(texts, many):
        ref = eng.write(text)
        torch.testing.assert_close(got.doc_state, ref.doc_state, atol=1e-5, rtol=1e-4)
        assert got.pending_ids == ref.pending_ids and got.n_segments == ref.n_segments
        assert [(s.key, s.start, s.end) for s in got.paragraphs + got.entities] == \
            [(s.key, s.start, s.end) for s in ref.paragraphs + ref.entities]
        for a, b in zip(got.paragraphs + got.entities, ref.paragraphs + ref.entities):
            torch.testing.assert_close(a.state, b.state, atol=1e-5, rtol=1e-4)
    # batched recall over slots of different sizes equals one-by-one recall
    rec_all = eng.recall(many[0])
    assert rec_all.text.split("\n\n")[1] == eng.recall(many[0], index=1).text


def test_determinism_same_bytes_and_recall(tok):
    def build():
        eng = R3Mem.from_base(tiny_model("llama", seed=3), tok, tiny_cfg(seed=5))
        perturb_trainables(eng.model, seed=7)
        eng._refresh_identity()
        return eng

    a, b = build(), build()
    assert a.adapter_hash == b.adapter_hash
    ma, mb = a.write(SAMPLE_TEXT), b.write(SAMPLE_TEXT)
    assert a.to_bytes(ma) == b.to_bytes(mb)
    assert a.recall(ma, query="ferry").text == b.recall(mb, query="ferry").text


def test_special_token_strings_in_text_stay_plain_text(trained_like, tok):
    from r3mem.tokens import tokenize

    eos = tok.eos_token  # "<|end|>" in the tiny tokenizer
    assert tok.eos_token_id not in tokenize(tok, f"before {eos} after")
    assert tok.eos_token_id not in trained_like.write(f"Para one {eos} injected.\n\nNext.\n\n").pending_ids


def test_recall_many_equals_separate_recalls(trained_like):
    eng = trained_like
    mems = eng.write_many([SAMPLE_TEXT, "Henry Sibley built a mill.\n\nThe river froze early that year.\n\n"])
    queries = ["the ferry house", None]
    many = eng.recall_many(mems, queries, top_k=2)
    for mem, q, got in zip(mems, queries, many):
        one = eng.recall(mem, query=q, top_k=2)
        assert got.text == one.text and [s["key"] for s in got.slots] == [s["key"] for s in one.slots]
    docs = eng.recall_many(mems, level="document", max_new_tokens=6)
    assert [d.text for d in docs] == [eng.recall(m, level="document", max_new_tokens=6).text for m in mems]
    with pytest.raises(ValueError, match="2 memories but 1 queries"):
        eng.recall_many(mems, ["x"])


def test_repeated_slot_text_is_compressed_once_with_the_same_state(trained_like, monkeypatch):
    """Entities first named in one sentence share that sentence's state: one compression, equal
    values (within float tolerance of a separate compression), one tensor held and saved once."""
    from r3mem.writer import compress_texts

    eng = trained_like
    model, pad = eng.model, eng.tokenizer.pad_token_id
    seqs = [[5, 6, 7, 8, 9], [5, 6, 7], [5, 6, 7, 8, 9], [5, 6, 7, 8, 9]]
    calls = []
    orig = model.compress
    monkeypatch.setattr(model, "compress", lambda emb, *a, **k: calls.append(emb.shape[0]) or orig(emb, *a, **k))
    # ratios: the third asks for a different number of memory tokens, so it is not a repeat
    out = compress_texts(model, seqs, [4.0, 4.0, 1.0, 4.0], pad)
    assert sum(calls) == 3
    assert out[0] is out[3]
    assert out[2].shape[-2] == 5 and out[0].shape[-2] == 2
    for s, r, got in zip(seqs, [4.0, 4.0, 1.0, 4.0], out):
        torch.testing.assert_close(got.float(), compress_texts(model, [s], r, pad)[0].float(), atol=2e-3, rtol=2e-3)
    # a text naming several new entities in one sentence compresses that sentence once
    calls.clear()
    mem = eng.flush(eng.write("Henry Sibley met Joseph Renville and Jean Faribault at Mendota."))
    assert len(mem.entities) >= 3 and len(mem.paragraphs) == 1
    # paragraph == its only sentence: one slot sequence, plus one call per document segment
    assert sum(calls) == 1 + mem.n_segments
    # ... and holds and stores it once: in the memory's size and in its file
    states = {id(s.state): s.state for s in mem.paragraphs + mem.entities}
    assert len(states) == 1
    one = mem.paragraphs[0].state
    assert mem.state_bytes() == (
        mem.doc_state.numel() * mem.doc_state.element_size() + one.numel() * one.element_size()
    )
    back = eng.from_bytes(eng.to_bytes(mem))
    assert len({id(s.state) for s in back.paragraphs + back.entities}) == 1
    with pytest.raises(ValueError, match="ratios"):
        compress_texts(model, seqs, [4.0], pad)


@pytest.mark.parametrize("debug", ["", "1"])
def test_building_an_engine_is_quiet_unless_debugging(debug):
    """Library deprecation warnings of transformers/peft (seen while wrapping a model) stay out of the
    caller's output, and the caller's own warning filters are as they were afterwards."""
    import subprocess
    import sys

    code = ("import warnings; from r3mem.engine import R3Mem; from r3mem.tiny import tiny_model, tiny_tokenizer, "
            "tiny_config; e = R3Mem.from_base(tiny_model('llama'), tiny_tokenizer(), tiny_config()); "
            "e.write('A first keyed write loads the key encoder.\\n\\n'); warnings.warn('mine', FutureWarning)")
    env = {**__import__("os").environ, "R3MEM_DEBUG": debug}
    err = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, env=env,
                         timeout=120).stderr
    assert "FutureWarning: mine" in err  # the caller's own warnings still show
    assert ("is_gradient_checkpointing" in err) == bool(debug)
    if not debug:  # nor the key encoder's loading bar (whether transformers draws one when debugging depends
        assert "Loading weights" not in err  # on the terminal, so only its absence is checked)


# ----- rewrites: reused slots and document snapshots ---------------------------------------------------

PARAS = [f"Note {i}: the ferry crossed the river at dawn with {i} settlers and their carts." for i in range(12)]


def _doc(paras):
    return "".join(p + "\n\n" for p in paras)


def _snapshotting(tok, bits=16):
    """A tiny engine that keeps a document snapshot every 2 segments (of 16 tokens). Six layers: a kv document
    state depends on the last L - 1 segments only (a write token's layer-l keys read the memory's layer l - 1),
    so a wrong state taken at a snapshot still shows 5 segments later."""
    eng = R3Mem.from_base(tiny_model("llama", layers=6), tok, tiny_cfg(snapshot_every=2, memory_bits=bits,
                                                             hierarchy_levels=("document", "paragraph")))
    perturb_trainables(eng.model)
    eng._refresh_identity()
    return eng


def _count_folded(monkeypatch) -> list[int]:
    """Segments folded by every document fold from now on."""
    import r3mem.writer as writer

    folded: list[int] = []
    real = writer.fold

    def counting(model, state, ids, mask, **kw):
        folded.append(-(-ids.shape[1] // model.cfg.segment_len))
        return real(model, state, ids, mask, **kw)

    monkeypatch.setattr(writer, "fold", counting)
    return folded


def test_a_memory_keeps_its_document_chain_and_a_snapshot_every_n_segments(tok):
    eng = _snapshotting(tok)
    mem = eng.write(_doc(PARAS))
    assert mem.n_segments >= 8 and len(mem.doc_chain) == mem.n_segments
    assert [s.n_segments for s in mem.snapshots] == list(range(2, mem.n_segments + 1, 2))
    assert torch.equal(mem.snapshots[-1].state, mem.doc_state) == (mem.n_segments % 2 == 0)
    assert mem.state_bytes() == eng.write(_doc(PARAS), policy=WritePolicy(("document", "paragraph"), snapshot_every=0)
                                          ).state_bytes() + sum(s.nbytes() for s in mem.snapshots)
    other = eng.write(_doc(["A different first note.", *PARAS[1:]]))
    assert all(a != b for a, b in zip(other.doc_chain, mem.doc_chain))  # the chain hashes every token before it
    back = eng.from_bytes(eng.to_bytes(mem))
    assert back.doc_chain == mem.doc_chain and all(torch.equal(a.state, b.state) for a, b in
                                                   zip(back.snapshots, mem.snapshots))


@pytest.mark.parametrize("bits", [16, 4])
@pytest.mark.parametrize("change", ["last", "middle", "first", "delete_last", "append"])
def test_a_rewrite_refolds_only_from_the_snapshot_before_the_change(tok, monkeypatch, bits, change):
    from r3mem.writer import reusable

    eng = _snapshotting(tok, bits)
    old_text = _doc(PARAS)
    old = eng.write(old_text)
    paras = list(PARAS)
    at = {"last": 11, "middle": 6, "first": 0, "delete_last": 11, "append": 12}[change]
    if change == "delete_last":
        paras.pop()
    elif change == "append":
        paras.append("A new closing note about the mill.")
    else:
        paras[at] = f"Note {at} was edited: the mill burned down."
    scratch = eng.write(_doc(paras))
    folded = _count_folded(monkeypatch)
    rebuilt = eng.write(_doc(paras), reuse=reusable(old, lambda s, e: old_text[s:e]))
    assert eng.to_bytes(rebuilt) == eng.to_bytes(scratch)  # exactly the memory a write from scratch makes
    _same(rebuilt, scratch)
    same = min(old.n_segments, len(tok(_doc(PARAS[:at]))["input_ids"]) // 16)  # whole segments before the change
    kept = max((s.n_segments for s in old.snapshots if s.n_segments <= same), default=0)
    assert sum(folded) == scratch.n_segments - kept  # from the last snapshot before the change on
    if change == "first":
        assert kept == 0
    else:
        assert kept >= 4


def test_a_rewrite_in_pieces_leaves_segments_pending_until_settled(tok, monkeypatch):
    from r3mem.writer import reusable

    eng = _snapshotting(tok)
    old_text = _doc(PARAS)
    old = eng.write(old_text)
    paras = [*PARAS[:11], "Note 11 was edited: the mill burned down."]
    reuse = reusable(old, lambda s, e: old_text[s:e])
    scratch = eng.write(_doc(paras))
    folded = _count_folded(monkeypatch)
    mem, pending = eng.new_memory(), []
    for i in range(0, 12, 3):  # as ChatAgent rebuilds: the turns in batches, one write each
        mem = eng.write(_doc(paras[i:i + 3]), mem, reuse=reuse, settle=False)
        pending.append(len(mem.pending_ids))
    assert max(pending) >= 16  # whole segments left for a snapshot further on
    settled = eng.settle(mem)
    assert eng.to_bytes(settled) == eng.to_bytes(scratch)
    assert sum(folded) <= 3  # only from the last snapshot before the edited note
    assert eng.settle(scratch) is scratch  # a settled memory is returned as it is
    mem = eng.new_memory()
    for i in range(0, 12, 3):  # each write settled (the default): the same memory at every step
        mem = eng.write(_doc(paras[i:i + 3]), mem, reuse=reuse)
        assert len(mem.pending_ids) < 16
    assert eng.to_bytes(mem) == eng.to_bytes(scratch)


def test_a_memory_from_a_format_5_file_has_no_chain_and_rewrites_from_the_start(tok, monkeypatch):
    from r3mem import memfile
    from r3mem.writer import reusable

    eng = _snapshotting(tok)
    old_text = _doc(PARAS)
    monkeypatch.setattr(memfile, "FORMAT_VERSION", 5)
    blob = eng.to_bytes(eng.write(old_text))
    monkeypatch.undo()
    old = eng.from_bytes(blob)
    assert old.doc_chain is None and old.snapshots == [] and old.policy.snapshot_every == 2
    longer = eng.write("One more note.\n\n" * 8, old)
    assert longer.doc_chain is None and longer.snapshots == []  # no chain to key snapshots by
    assert eng.from_bytes(eng.to_bytes(longer)).doc_chain is None  # and it stays so in a format-6 file
    folded = _count_folded(monkeypatch)
    rebuilt = eng.write(old_text, reuse=reusable(old, lambda s, e: old_text[s:e]))
    assert sum(folded) == rebuilt.n_segments and rebuilt.doc_chain is not None  # refolded whole, chained anew
    assert eng.to_bytes(rebuilt) == eng.to_bytes(eng.write(old_text))


def test_snapshot_every_is_checked(tok):
    from r3mem.config import ConfigError

    for bad in (-1, 2.0, True):
        with pytest.raises(ConfigError, match="^snapshot_every: must be an integer >= 0"):
            WritePolicy(snapshot_every=bad)
        with pytest.raises(ConfigError, match="^snapshot_every: must be an integer >= 0"):
            tiny_cfg(snapshot_every=bad)


def test_write_many_keeps_each_memorys_chain_and_snapshots(tok):
    eng = _snapshotting(tok)
    texts = [_doc(PARAS), _doc(PARAS[3:]), "Short one."]
    starts = [eng.write("A lead-in of some length, to shift the segments.\n\n"), eng.new_memory(), eng.new_memory()]
    many = eng.write_many(texts, starts)
    for text, start, got in zip(texts, starts, many):
        ref = eng.write(text, start)
        assert got.doc_chain == ref.doc_chain and got.n_segments == ref.n_segments
        assert [s.n_segments for s in got.snapshots] == [s.n_segments for s in ref.snapshots]
        torch.testing.assert_close(got.doc_state, ref.doc_state, atol=1e-5, rtol=1e-4)
        for a, b in zip(got.snapshots, ref.snapshots):
            torch.testing.assert_close(a.state, b.state, atol=1e-5, rtol=1e-4)
    assert many[0].snapshots and many[1].snapshots
