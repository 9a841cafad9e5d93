"""SlotIndex: search over the slots' retrieval keys (dense and lexical, alone and in context), and the
keys the writer gives every slot."""

import numpy as np
import pytest
import torch

from r3mem.index import SlotIndex, fuse
from r3mem.keys import KEY_DIM, MiniLMKeys, terms_of
from r3mem.memory import Slot


def _slot(i: int, text: str, vec=None) -> Slot:
    dense = torch.tensor(vec, dtype=torch.float16) if vec is not None else torch.zeros(KEY_DIM, dtype=torch.float16)
    return Slot("paragraph", f"p{i}", 10 * i, 10 * i + 5, 4, torch.zeros(1), dense=dense, terms=terms_of(text))


def _unit(*hot: int, dim: int = 4) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[list(hot)] = 1.0
    return v / np.linalg.norm(v)


def test_fuse_adds_reciprocal_ranks_and_breaks_ties_by_index():
    order, scores = fuse([[2, 0, 1], [0, 2, 1]], 3, k=10)
    assert order.tolist() == [0, 2, 1]  # 0 and 2 tie on 1/10 + 1/11; the lower index first
    assert scores[0] == pytest.approx(1 / 10 + 1 / 11) and scores[2] == pytest.approx(2 / 12)


def test_lexical_and_dense_rankings():
    slots = [_slot(0, "the ferry crossed the river", _unit(0)), _slot(1, "a stone house by the mill", _unit(1)),
             _slot(2, "winter froze the river", _unit(2))]
    index = SlotIndex(slots)
    order, scores = index.rank("lexical", "stone house")
    assert order[0] == 1 and scores[0] > scores[1] == scores[2]
    order, _ = index.rank("dense", "anything", _unit(2))
    assert order.tolist()[0] == 2
    order, _ = index.rank("hybrid", "stone house", _unit(1))
    assert order.tolist()[0] == 1


def test_context_ranks_a_reply_after_the_turn_it_answers():
    """"Yes, last week." holds nothing of the question; with the turn before it in its context it is found."""
    away = lambda j: (-_unit(0) + _unit(j)) / np.sqrt(2)  # noqa: E731 - a key pointing away from the query
    chat = ["I like tea", "nice weather today", "my cat sleeps", "the bus was late", "we met at noon"]
    slots = [_slot(i, f"Caroline: {t}", away(1 + i % 2)) for i, t in enumerate(chat)]
    slots += [_slot(5, "Caroline: did you go to the pottery class?", _unit(0)),
              _slot(6, "Melanie: yes, last week, it was fun", _unit(3))]
    q, qv = "pottery class", _unit(0)
    rank_alone = SlotIndex(slots).rank("hybrid", q, qv)[0].tolist()
    rank_ctx = SlotIndex(slots, context=1).rank("hybrid", q, qv)[0].tolist()
    assert rank_alone[0] == 5 and rank_alone.index(6) > 1
    assert rank_ctx[:2] == [5, 6]


def test_index_is_cached_per_list_and_rebuilt_when_the_list_grows():
    slots = [_slot(0, "alpha", _unit(0)), _slot(1, "beta", _unit(1))]
    cache: dict = {}
    a = SlotIndex.of(slots, cache, "paragraph")
    assert SlotIndex.of(slots, cache, "paragraph") is a
    slots.append(_slot(2, "gamma", _unit(2)))
    b = SlotIndex.of(slots, cache, "paragraph")
    assert b is not a and b.n == 3 and b.rank("lexical", "gamma")[0][0] == 2


def test_empty_and_keyless_slots():
    index = SlotIndex([_slot(0, "", _unit(0)), _slot(1, "", _unit(1))])
    order, scores = index.rank("lexical", "anything")  # no terms anywhere: all 0, text order
    assert order.tolist() == [0, 1] and scores.tolist() == [0, 0]
    assert SlotIndex([]).rank("hybrid", "x", _unit(0))[0].tolist() == []
    bare = Slot("paragraph", "p0", 0, 1, 1, torch.zeros(1))
    with pytest.raises(ValueError, match="slot 0 has no retrieval keys"):
        SlotIndex([bare])
    with pytest.raises(ValueError, match="ranking"):
        index.rank("bm42", "x")
    with pytest.raises(ValueError, match="needs the query's dense key"):
        index.rank("dense", "x")


def test_minilm_keys_are_unit_vectors_independent_of_their_batch():
    keys = MiniLMKeys()
    texts = ["The ferry crossed the river at dawn.", "Snow.", "A much longer sentence about the stone house " * 3]
    together = keys.encode(texts)
    alone = np.stack([keys.encode([t])[0] for t in texts])
    assert together.shape == (3, KEY_DIM) and np.allclose(np.linalg.norm(together, axis=1), 1, atol=1e-5)
    assert np.array_equal(together, alone)  # a key depends on its text only: writes stay split-invariant
    assert keys.encode([]).shape == (0, KEY_DIM)
    near, far = keys.encode(["Where did the ferry cross?"])[0] @ together[0], together[1] @ together[0]
    assert near > far
