"""Recall through retrieval keys: slots are found without a model pass per slot, keys travel in memory
files, keyless memories are refused or re-keyed, and answering reads either text or the slots' cache."""

import pytest
import torch
from conftest import tiny_cfg

from r3mem import recall as recall_mod
from r3mem.engine import R3Mem
from r3mem.memfile import KeysMismatch
from r3mem.tiny import tiny_model

TURNS = [f"Turn {i}: the weather was mild and nothing happened." for i in range(12)]
TURNS[7] = "Turn 7: Caroline adopted a greyhound called Biscuit from the shelter."


def _written(eng):
    return eng.write("".join(t + "\n\n" for t in TURNS))


def _count_passes(eng, monkeypatch):
    calls = []
    real = eng.model._run
    monkeypatch.setattr(eng.model, "_run", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    return calls


def test_every_slot_is_keyed_when_written_and_keys_round_trip(trained_like):
    mem = _written(trained_like)
    assert all(s.dense is not None and s.dense.dtype == torch.float16 and s.terms for s in mem.paragraphs)
    assert mem.paragraphs[7].terms["greyhound"] == 1 and all(s.terms is not None for s in mem.entities)
    back = trained_like.from_bytes(trained_like.to_bytes(mem))
    for a, b in zip(mem.paragraphs + mem.entities, back.paragraphs + back.entities):
        assert torch.equal(a.dense, b.dense) and a.terms == b.terms


def test_a_query_finds_its_slot_with_one_pass_whatever_the_number_of_slots(trained_like, monkeypatch):
    mem = _written(trained_like)
    calls = _count_passes(trained_like, monkeypatch)
    rec = trained_like.recall(mem, query="Which dog did Caroline adopt?", top_k=1)
    assert [s["key"] for s in rec.slots] == ["p7"]
    assert len(calls) == 1  # the one expansion of the chosen slot: no pass over the 12 slots
    calls.clear()
    trained_like.recall(mem, query="Which dog did Caroline adopt?", top_k=1, select="likelihood")
    assert len(calls) >= 1 + 2  # query likelihood: 12 slots in batches of at most 8, then the expansion


def test_selections_and_rerank(trained_like, monkeypatch):
    mem = _written(trained_like)
    for select in ("hybrid", "dense", "lexical"):
        assert trained_like.recall(mem, query="greyhound Biscuit", select=select).slots[0]["key"] == "p7"
    scored = []
    real = recall_mod.score_query
    monkeypatch.setattr(recall_mod, "score_query", lambda m, t, states, q: scored.append(len(states))
                        or real(m, t, states, q))
    rec = trained_like.recall(mem, query="greyhound Biscuit", top_k=2, rerank=4)
    assert scored == [4] and len(rec.slots) == 2  # the 4 best by the keys, re-ranked by query likelihood
    with pytest.raises(ValueError, match="select: must be one of"):
        trained_like.recall(mem, query="x", select="grep")
    with pytest.raises(ValueError, match="rerank: must be an integer >= 0"):
        trained_like.recall(mem, query="x", rerank=-1)


def test_index_is_built_once_per_memory_value(trained_like, monkeypatch):
    from r3mem import index

    mem = _written(trained_like)
    built = []
    real = index.SlotIndex.__init__
    monkeypatch.setattr(index.SlotIndex, "__init__", lambda self, *a, **k: built.append(1) or real(self, *a, **k))
    for q in ("greyhound", "weather", "shelter"):
        trained_like.recall(mem, query=q)
    assert built == [1]
    more = trained_like.write("Turn 12: a new paragraph.\n\n", mem)
    assert trained_like.recall(more, query="new paragraph").slots[0]["key"] == "p12" and built == [1, 1]


def test_keyless_memories_are_refused_or_rekeyed(tok, trained_like):
    plain = R3Mem.from_base(tiny_model("llama"), tok, tiny_cfg(), keys=None)
    plain.load_adapter_state(trained_like.model.trainable_state_dict())
    assert plain.adapter_hash == trained_like.adapter_hash
    old = _written(plain)
    assert all(s.dense is None and s.terms is None for s in old.paragraphs)
    blob = plain.to_bytes(old)
    with pytest.raises(KeysMismatch, match="without retrieval keys.*rebuild_keys=True"):
        trained_like.from_bytes(blob)
    with pytest.raises(KeysMismatch, match="keyed by 'all-MiniLM-L6-v2'"):
        plain.from_bytes(trained_like.to_bytes(_written(trained_like)))
    rekeyed = trained_like.from_bytes(blob, rebuild_keys=True)
    assert all(s.dense is not None for s in rekeyed.paragraphs + rekeyed.entities)
    assert trained_like.from_bytes(trained_like.to_bytes(rekeyed)).n_tokens == old.n_tokens
    # a keyless engine finds slots by query likelihood; asking it for a key search is a clear error
    assert len(plain.recall(old, query="greyhound").slots) == 1
    with pytest.raises(ValueError, match="no retrieval keys"):
        plain.recall(old, query="greyhound", select="hybrid")


def test_pending_paragraph_is_keyed_at_read_time(trained_like):
    mem = trained_like.write("First paragraph about tea.\n\nThe unfinished one mentions a greyhound")
    assert len(mem.paragraphs) == 1 and mem.pending_text
    assert trained_like.recall(mem, query="greyhound", top_k=1).slots[0]["key"] == "p1"


def test_answer_reads_text_or_the_slots_as_a_cache(trained_like, monkeypatch):
    mem = _written(trained_like)
    text, rec = trained_like.answer("Which dog did Caroline adopt?", mem, top_k=2, max_new_tokens=3)
    assert isinstance(text, str) and len(rec.slots) == 2 and rec.text
    seen = []
    real = trained_like.model.continue_text
    monkeypatch.setattr(trained_like.model, "continue_text",
                        lambda state, *a, **k: seen.append(state) or real(state, *a, **k))
    text, rec = trained_like.answer("Which dog did Caroline adopt?", mem, top_k=2, max_new_tokens=3, read="cache")
    keys = [s["key"] for s in rec.slots]
    assert isinstance(text, str) and rec.text == "" and len(keys) == 2 and "p7" in keys
    (state,) = seen  # one decode: the question after both slots' memories, no expansion
    assert state.shape[-2] == sum(mem.paragraphs[int(k[1:])].n_mem_tokens for k in keys)
    with pytest.raises(ValueError, match="read: must be 'text' or 'cache'"):
        trained_like.answer("x?", mem, read="both")


def test_bad_questions_fail_before_any_model_pass(trained_like, monkeypatch):
    mem = _written(trained_like)
    calls = _count_passes(trained_like, monkeypatch)
    for bad, msg in (("", "must not be empty"), ("   ", "must not be empty"), ("x" * 2001, "at most 2000 characters")):
        with pytest.raises(ValueError, match=msg):
            trained_like.answer(bad, mem)
    with pytest.raises(ValueError, match="at most 2000 characters"):
        trained_like.recall(mem, query="y" * 2001)
    assert calls == []


def test_a_memory_with_nothing_written_answers_nothing_remembered(trained_like, monkeypatch):
    calls = _count_passes(trained_like, monkeypatch)
    for read in ("text", "cache"):
        text, rec = trained_like.answer("Who adopted a dog?", trained_like.new_memory(), read=read)
        assert text == "nothing remembered" and rec.slots == []
    assert calls == []


def test_expansion_is_unconditioned_cached_and_batched_across_sizes(trained_like, monkeypatch):
    from r3mem.recall import reconstruct_scored

    mem = trained_like.write("A short one.\n\n" + "".join(t + "\n\n" for t in TURNS))
    sizes = {s.n_mem_tokens for s in mem.paragraphs}
    assert len(sizes) > 1  # slots of different sizes
    decodes, queries = [], []
    real_decode = trained_like.model.reconstruct
    monkeypatch.setattr(trained_like.model, "reconstruct", lambda st, *a, **k: decodes.append(st.shape[0])
                        or real_decode(st, *a, **k))
    real_rs = recall_mod.reconstruct_scored
    monkeypatch.setattr(recall_mod, "reconstruct_scored",
                        lambda m, t, st, mx, q=None, *a, **k: queries.append(q) or real_rs(m, t, st, mx, q, *a, **k))
    first = trained_like.recall(mem, top_k=12)  # no query: every slot, all sizes in one decoding batch of 8 + 5
    assert decodes == [8, 5] and queries == [[None] * 13]
    model, tok = trained_like.model, trained_like.tokenizer
    alone = [reconstruct_scored(model, tok, [s.state], [min(24, s.n_tokens + 8)])[0].text for s in mem.paragraphs]
    assert [s["text"] for s in first.slots] == alone  # padded and masked in a batch == expanded alone
    decodes.clear()
    again = trained_like.recall(mem, query="Which dog did Caroline adopt?", top_k=2)
    assert decodes == [] and again.slots[0]["text"] in alone  # unconditioned: the slots' cached expansions
    trained_like.recall(mem, query="Which dog did Caroline adopt?", top_k=2, condition=True)
    assert decodes == [2] and queries[-1] == ["Which dog did Caroline adopt?"] * 2


def test_a_draft_that_is_the_greedy_expansion_is_accepted_in_one_pass(trained_like, monkeypatch):
    from r3mem.recall import reconstruct_scored, verify_drafts

    mem = trained_like.write("".join(t + "\n\n" for t in TURNS))
    model, tok = trained_like.model, trained_like.tokenizer
    states = [s.state for s in mem.paragraphs]
    caps = [min(24, s.n_tokens + 8) for s in mem.paragraphs]
    decoded = reconstruct_scored(model, tok, states, caps)
    checked = verify_drafts(model, tok, states, [r.token_ids for r in decoded], caps)
    for d, c in zip(decoded, checked):  # the decoder's own output is accepted, with the same probabilities
        assert c is not None and c.token_ids == d.token_ids and c.text == d.text
        assert c.token_probs == pytest.approx(d.token_probs, abs=1e-4)
    wrong = [r.token_ids[:-1] + [(r.token_ids[-1] + 1) % len(tok)] for r in decoded]
    assert verify_drafts(model, tok, states, wrong, caps, repairs=0) == [None] * len(states)  # one token off
    repaired = verify_drafts(model, tok, states, wrong, caps, repairs=1)  # ... fixed by one more pass
    assert [r.token_ids for r in repaired] == [r.token_ids for r in decoded]
    far = [[(t + 7) % len(tok) for t in r.token_ids] for r in decoded]  # every token wrong: beyond repair
    assert verify_drafts(model, tok, states, far, caps, repairs=2) == [None] * len(states)
    # recall with drafts: the same text as decoding, and no decoding loop for accepted drafts
    by_key = {s.key: r.token_ids for s, r in zip(mem.paragraphs, decoded)}
    decodes = []
    real_decode = model.reconstruct
    monkeypatch.setattr(model, "reconstruct",
                        lambda st, *a, **k: decodes.append(st.shape[0]) or real_decode(st, *a, **k))
    fresh = trained_like.from_bytes(trained_like.to_bytes(mem))  # no cached expansions
    got = trained_like.recall(fresh, drafts=lambda s: by_key[s.key])  # every slot
    assert [s["text"] for s in got.slots] == [r.text for r in decoded] and decodes == []
    drafted = []
    real_drafted = model.reconstruct_drafted
    monkeypatch.setattr(model, "reconstruct_drafted",
                        lambda st, *a, **k: drafted.append(1) or real_drafted(st, *a, **k))
    fresh = trained_like.from_bytes(trained_like.to_bytes(mem))
    bad = trained_like.recall(fresh, drafts=lambda s: "something else entirely")  # refused: decoded with the draft
    assert [s["text"] for s in bad.slots] == [r.text for r in decoded]
    assert decodes == [] and len(drafted) == len(decoded)


def test_drafted_decoding_gives_greedy_decodings_tokens_in_fewer_passes(trained_like):
    from r3mem.model import _realign
    from r3mem.recall import reconstruct_scored

    mem = trained_like.write("".join(t + "\n\n" for t in TURNS))
    model, tok = trained_like.model, trained_like.tokenizer
    passes = []  # tokens run by each decoder pass
    hook = model.body.register_forward_hook(lambda _m, _a, kw, _o: passes.append(kw["inputs_embeds"].shape[1]),
                                            with_kwargs=True)
    try:
        for slot in mem.paragraphs:
            cap = min(24, slot.n_tokens + 8)
            want = reconstruct_scored(model, tok, [slot.state], [cap])[0]
            g = want.token_ids
            assert len(g) >= 4, "the check needs expansions of a few tokens"
            drafts = {"itself": g, "one replaced": g[:2] + [(g[2] + 5) % len(tok)] + g[3:],
                      "one dropped": g[:1] + g[2:], "one added": g[:2] + [(g[1] + 3) % len(tok)] + g[2:],
                      "garbage": [(t + 7) % len(tok) for t in g], "empty": []}
            for name, draft in drafts.items():
                passes.clear()
                probs: list[float] = []
                got = model.reconstruct_drafted(slot.state[None], draft, cap, tok.eos_token_id, probs=probs)
                assert got == g, name
                assert probs == pytest.approx(want.token_probs, abs=1e-4), name
                if name == "itself":  # the prefix pass, then the whole draft in one pass
                    assert len(passes) == 2
                if name == "garbage":  # nothing kept: one pass per token, as decoding, and ever fewer fed
                    assert len(passes) == len(g) + (len(g) < cap)
                    assert passes[2:5] == [9, 3, 2][:len(passes) - 2] and set(passes[5:]) <= {1, 2}, passes
            passes.clear()
            short = model.reconstruct_drafted(slot.state[None], g, 2, tok.eos_token_id)  # the cap is kept
            assert short == g[:2] and len(passes) == 2
    finally:
        hook.remove()
    assert _realign([5, 6, 7, 8], 1, 6) == 2 and _realign([5, 6, 7, 8], 1, 8) == 4  # agree; skipped one
    assert _realign([5, 6, 7, 8], 1, 9) == 2  # another token in its place
