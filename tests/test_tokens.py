"""Token helpers: padding, loss labels, memory tokens per slot."""

import torch

from r3mem.tokens import IGNORE_INDEX, lm_labels, pad_batch, slot_tokens


def test_pad_batch_right_pads_with_a_mask():
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, device=torch.device("cpu"))
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]


def test_lm_labels_ignore_padding_and_leave_the_ids_alone():
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, device=torch.device("cpu"))
    labels = lm_labels(ids, mask)
    assert labels.tolist() == [[5, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    labels[:, 0] = IGNORE_INDEX  # callers edit labels in place (the recurrence masks a segment's first token)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]


def test_slot_tokens_is_ceil_len_over_ratio_within_bounds():
    assert slot_tokens(96, 8.0, 64) == 12
    assert slot_tokens(97, 8.0, 64) == 13
    assert slot_tokens(1, 8.0, 64) == 1
    assert slot_tokens(1000, 2.0, 64) == 64
