"""The slots-first document fold: every segment's memory written in one pass from the keys/values the
slot passes give the text (`R3MemModel.local_text`, `fold_over_text`, `fold_local`)."""

import pytest
import torch
from conftest import perturb_trainables, tiny_cfg

from r3mem import kv
from r3mem.model import COMPRESS, SEP, R3MemModel
from r3mem.tiny import tiny_model, tiny_tokenizer
from r3mem.tokens import pad_batch


def _ids(n: int, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, len(tiny_tokenizer()), (n,), generator=g).tolist()


def _model(layers: int = 4) -> R3MemModel:
    model = R3MemModel(tiny_model("llama", layers=layers), tiny_cfg(memory_mode="kv", memory_positions="spread"))
    perturb_trainables(model)
    return model


def _sequential(model: R3MemModel, ids: list[int], state: torch.Tensor) -> list[torch.Tensor]:
    """The fold segment by segment, each segment's text reading only itself (its own <start> before
    it, no memory) and its write tokens reading the memory before it and that text."""
    seg, k, out = model.cfg.segment_len, model.cfg.num_mem_tokens, []
    o = model._continue_at(state)
    for s in range(0, len(ids), seg):
        emb = model.embed(torch.tensor([ids[s:s + seg]]))
        n = emb.shape[1]
        x = torch.cat([model.memory.marker(1, SEP), emb], 1)
        text = kv.from_cache(model._run(x, torch.ones(1, n + 1, dtype=torch.long), COMPRESS, None, 0,
                                        use_cache=True, start=o).cache, n + 1)
        tail = o + 1 + model.spread_positions(torch.tensor([n]), k)
        cache = model._run(model.memory.write_tokens(1, k), torch.ones(1, k, dtype=torch.long), COMPRESS, None, 0,
                           use_cache=True, past=torch.cat([state, text], -2), start=0, tail_positions=tail,
                           write_tail=k).cache
        state = kv.reposition(model._rot, kv.from_cache(cache, k), torch.tensor([-(o + 1)]))
        out.append(state)
    return out


def test_one_pass_over_segment_local_text_is_the_fold_segment_by_segment():
    """Each segment one piece: the one-pass fold gives every memory the sequential fold gives, at the
    positions it gives them (a last segment shorter than the others included)."""
    model = _model()
    seg = model.cfg.segment_len
    ids = _ids(3 * seg + 5, seed=1)
    piece = torch.tensor([[i // seg for i in range(len(ids))]])
    with torch.no_grad():
        state = model.initial_state(1)
        want = _sequential(model, ids, state)
        got = model.fold_local(model.embed(torch.tensor([ids])), torch.ones_like(piece), piece, state)
    assert got.shape[1] == 4
    for t, w in enumerate(want):
        torch.testing.assert_close(got[:, t], w, atol=1e-5, rtol=1e-4)


def test_local_text_gives_each_piece_the_keys_values_of_its_own_slot_pass():
    """Pieces that cross segment boundaries, breaks between them: each piece's keys/values are those its
    slot pass computes alone, moved to where the piece sits (four layers: leakage would show)."""
    model = _model()
    spans = [(0, 7), (8, 29), (31, 40)]  # tokens 7, 29 and 30 are breaks
    ids = _ids(40, seed=2)
    piece = torch.full((1, 40), -1)
    for j, (a, b) in enumerate(spans):
        piece[0, a:b] = j
    first = 17
    with torch.no_grad():
        text = model.local_text(model.embed(torch.tensor([ids])), piece, first)
        for a, b in spans:
            _, alone, at = model.compress_keeping_text(model.embed(torch.tensor([ids[a:b]])), None, 2)
            moved = kv.reposition(model._rot, text[..., a:b, :], torch.tensor([at - first - a]))
            torch.testing.assert_close(moved[0], alone, atol=1e-5, rtol=1e-4)


def test_breaks_and_padding_are_not_read_and_rows_batch_like_alone():
    """A break token's text does not reach any memory (a piece's token does); a shorter row, padded,
    gets the memories it gets alone, and its segment of padding keeps the memory before it."""
    model = _model()
    seg = model.cfg.segment_len
    a, b = _ids(2 * seg + 3, seed=3), _ids(seg + 2, seed=4)
    pa = [0] * 10 + [-1] + [1] * (len(a) - 11)
    pb = [0] * len(b)
    ids, mask = pad_batch([a, b], 0, torch.device("cpu"))
    piece = torch.tensor([pa, pb + [-1] * (len(a) - len(b))])
    with torch.no_grad():
        state = model.initial_state(2)
        both = model.fold_local(model.embed(ids), mask, piece, state)
        alone = model.fold_local(model.embed(torch.tensor([b])), torch.ones(1, len(b), dtype=torch.long),
                                 torch.tensor([pb]), state[:1])
        changed = list(a)
        changed[10] = (a[10] % 50) + 1
        other = model.fold_local(model.embed(torch.tensor([changed])), mask[:1], piece[:1], state[:1])
        changed[12] = (a[12] % 50) + 1
        read = model.fold_local(model.embed(torch.tensor([changed])), mask[:1], piece[:1], state[:1])
    torch.testing.assert_close(both[1:, :2], alone, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(both[1, 2], both[1, 1])
    torch.testing.assert_close(other, both[:1], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(read, both[:1], atol=1e-4), "a piece's token must shape the memory"


def test_fold_over_text_needs_spread_kv_memory():
    model = R3MemModel(tiny_model("llama"), tiny_cfg(memory_mode="kv", memory_positions="prefix"))
    with pytest.raises(ValueError, match="spread"):
        model.fold_local(model.embed(torch.tensor([_ids(8)])), torch.ones(1, 8, dtype=torch.long),
                         torch.zeros(1, 8, dtype=torch.long), model.initial_state(1))


def test_the_fold_from_slot_passes_is_the_fold_training_runs():
    """Paragraphs compressed as slots (batched, padded), their passes' keys/values placed in the
    document: the same memories as `fold_local` over the document cut into those pieces, and the slots
    are those `compress` writes."""
    model = _model()
    seg = model.cfg.segment_len
    paras = [_ids(n, seed=10 + n) for n in (9, 23, 5, 14)]
    doc, piece, offsets = [], [], []
    for j, p in enumerate(paras):
        offsets.append(len(doc))
        doc += p + [7]  # a break after each paragraph
        piece += [j] * len(p) + [-1]
    assert len(doc) > 2 * seg
    ids, mask = pad_batch(paras, 0, torch.device("cpu"))
    with torch.no_grad():
        slots, texts = model.slots_keeping_text(model.embed(ids), mask, 3)
        want_slots, _, _ = model.compress(model.embed(ids), mask, None, 3)
        state = model.initial_state(1)
        got = model.fold_over_pieces(state, list(zip(texts, offsets)), len(doc))
        want = model.fold_local(model.embed(torch.tensor([doc])), torch.ones(1, len(doc), dtype=torch.long),
                                torch.tensor([piece]), state)
    torch.testing.assert_close(slots, want_slots)
    torch.testing.assert_close(got, want[0], atol=1e-5, rtol=1e-4)


def test_the_writer_compresses_slots_keeping_their_text_as_it_compresses_them():
    """`compress_texts_keeping_text`: the slots `compress_texts` writes (grouped and padded, repeats
    once), each with its own text's keys/values."""
    from r3mem.writer import compress_texts, compress_texts_keeping_text

    model = _model()
    seqs = [_ids(n, seed=20 + n) for n in (6, 17, 9, 17)] + [_ids(6, seed=26)]
    with torch.no_grad():
        kept = compress_texts_keeping_text(model, seqs, 4.0, 0)
        plain = compress_texts(model, seqs, 4.0, 0)
        for (state, text), want, s in zip(kept, plain, seqs):
            torch.testing.assert_close(state, want)
            _, alone, _ = model.compress_keeping_text(model.embed(torch.tensor([s])), None, state.shape[-2])
            torch.testing.assert_close(text, alone, atol=1e-5, rtol=1e-4)


def test_a_long_text_is_read_in_passes_cut_between_pieces_with_the_same_memories(monkeypatch):
    import r3mem.model as model_mod

    model = _model()
    seg = model.cfg.segment_len
    ids = _ids(3 * seg, seed=30)
    piece = torch.tensor([[i // 7 if i % 7 else -1 for i in range(len(ids))]])
    with torch.no_grad():
        state = model.initial_state(1)
        whole = model.fold_local(model.embed(torch.tensor([ids])), torch.ones_like(piece), piece, state)
        monkeypatch.setattr(model_mod, "LOCAL_TEXT_TOKENS", 10)
        cut = model.fold_local(model.embed(torch.tensor([ids])), torch.ones_like(piece), piece, state)
    torch.testing.assert_close(cut, whole, atol=1e-5, rtol=1e-4)
