"""The segment recurrence's reversible read: each segment scored after a text prefix read from the memory."""

import pytest
import torch
from conftest import perturb_trainables, tiny_r3

from r3mem.recurrence import fold
from r3mem.tiny import tiny_tokenizer


def _ids(n: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, len(tiny_tokenizer()), (batch, n), generator=g)


def _model(memory_mode: str):
    model = tiny_r3("llama", segment_len=8, memory_mode=memory_mode)
    perturb_trainables(model)
    return model.eval()


def _fold(model, ids, read_prefix=None, score_first=False):
    with torch.no_grad():
        return fold(model, model.initial_state(ids.shape[0]), ids, torch.ones_like(ids), with_loss=True,
                    score_first=score_first, read_prefix=read_prefix)


@pytest.mark.parametrize("memory_mode", ["kv", "input"])
@pytest.mark.parametrize("score_first", [False, True])
def test_an_empty_prefix_scores_as_the_plain_fold(memory_mode, score_first):
    model, ids = _model(memory_mode), _ids(24)
    plain = _fold(model, ids, score_first=score_first)
    empty = _fold(model, ids, lambda st: [[] for _ in range(st.shape[0])], score_first=score_first)
    for (a, na), (b, nb) in zip(plain.per_segment, empty.per_segment):
        torch.testing.assert_close(a, b)
        assert int(na) == int(nb)
    torch.testing.assert_close(plain.state, empty.state)


@pytest.mark.parametrize("memory_mode", ["kv", "input"])
def test_the_prefix_is_read_not_scored_and_leaves_the_memory_alone(memory_mode):
    model, ids = _model(memory_mode), _ids(24)
    seen: list[torch.Tensor] = []

    def prefix(st):
        seen.append(st)
        return [ids[0, :8].tolist()]  # the first segment's text, read again before every later segment

    plain, read = _fold(model, ids), _fold(model, ids, prefix)
    assert len(seen) == 2  # asked before segments 2 and 3 only (segment 1 has no memory to read)
    with torch.no_grad():  # ... each time given the memory of the segments before it
        for t, st in enumerate(seen, start=1):
            head = ids[:, :8 * t]
            torch.testing.assert_close(st, fold(model, model.initial_state(1), head, torch.ones_like(head)).state)
    torch.testing.assert_close(plain.per_segment[0][0], read.per_segment[0][0])
    for (a, na), (b, nb) in zip(plain.per_segment[1:], read.per_segment[1:]):
        assert int(na) == int(nb) == 7  # the same segment tokens scored, none of the prefix
        assert not torch.isclose(a, b), "the prefix must change the segment's scores"
    torch.testing.assert_close(plain.state, read.state)  # the memory is written from the segments alone


def test_rows_with_prefixes_of_different_lengths_score_as_alone():
    model, ids = _model("kv"), _ids(20, batch=2, seed=3)
    lengths = [3, 7]

    def rows_prefix(rows):
        return lambda st: [ids[r, :lengths[r]].tolist()[::-1] for r in rows]

    both = _fold(model, ids, rows_prefix([0, 1]))
    alone = [_fold(model, ids[r:r + 1], rows_prefix([r])) for r in (0, 1)]
    for t, (loss, n) in enumerate(both.per_segment):
        torch.testing.assert_close(loss, alone[0].per_segment[t][0] + alone[1].per_segment[t][0], rtol=1e-4, atol=1e-4)
        assert int(n) == int(alone[0].per_segment[t][1]) + int(alone[1].per_segment[t][1])
