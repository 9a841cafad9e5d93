"""Token helpers: chunked tokenisation of long text, padding, loss labels, memory tokens per slot."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from r3mem.tokens import IGNORE_INDEX, lm_labels, pad_batch, slot_tokens, split_at_whitespace, tokenize_long


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


SENTENCES = [
    "Dr. Jones came to St. Paul in 1850.",
    "He met Mr. Smith at the landing,  and   they talked.\n\nThe winter was hard!",
    "Émile wrote letters\tfrom Zürich every week.\r\n",
]


@pytest.fixture(scope="module")
def bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE (GPT-2 style: spaces attach to the next word) that adds <s> … </s> by default."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "</s>", "<pad>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(SENTENCES * 5, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 1)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


@pytest.fixture(scope="module")
def word_tokenizer() -> PreTrainedTokenizerFast:
    words = sorted({w for s in SENTENCES for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(s)})
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def test_fixture_really_adds_special_tokens(bpe_tokenizer):
    # Guards the next test: without add_special_tokens=False the ids would start with <s> (0).
    assert bpe_tokenizer("Dr. Jones")["input_ids"][0] == 0


@pytest.mark.parametrize("chunk_chars", [1, 2, 3, 5, 8, 1000])
def test_chunked_tokenisation_matches_one_call(bpe_tokenizer, word_tokenizer, chunk_chars):
    text = " ".join(SENTENCES) * 3
    for tok in (bpe_tokenizer, word_tokenizer):
        expected = tok(text, add_special_tokens=False)["input_ids"]
        assert tokenize_long(tok, text, chunk_chars=chunk_chars) == expected
    assert 0 not in tokenize_long(bpe_tokenizer, text, chunk_chars) and 1 not in tokenize_long(bpe_tokenizer, text)


def test_chunks_are_small_and_cut_before_whitespace_runs():
    text = " ".join(SENTENCES) * 3
    pieces = list(split_at_whitespace(iter([text[:7], text[7:30], text[30:]]), 4))
    assert "".join(pieces) == text and len(pieces) > 40
    for piece in pieces[1:]:
        assert piece[0].isspace() and not piece[-1].isspace() or piece is pieces[-1]
    assert max(len(p) for p in pieces) <= len(max(text.split(), key=len)) + 4


def test_tokenize_rejects_bad_chunk(bpe_tokenizer):
    with pytest.raises(ValueError, match="chunk_chars"):
        tokenize_long(bpe_tokenizer, "x", chunk_chars=0)


def test_long_text_splits_special_token_strings_as_user_text_does(bpe_tokenizer):
    from r3mem.tokens import tokenize

    text = "He wrote </s> and <s> in a letter. " * 20
    assert 1 in bpe_tokenizer(text, add_special_tokens=False)["input_ids"]  # obeyed by a plain call ...
    got = tokenize_long(bpe_tokenizer, text, chunk_chars=16)
    assert 0 not in got and 1 not in got and got == tokenize(bpe_tokenizer, text)  # ... split here, as in write



def test_paragraph_pieces_break_at_blank_lines_however_spelt_and_cut_long_paragraphs():
    """A blank line is a break whether spelt as one token or two (with spaces between); a line break
    inside a paragraph is not; a paragraph longer than the limit is cut as the writer cuts it into slots."""
    from r3mem.tokens import paragraph_pieces

    W, NL, BLANK, SP = 0, 1, 2, 3  # a word, "\n", "\n\n", " "
    table = [-1, 1, 2, 0]
    ids = [W, W, NL, W, BLANK, W, NL, SP, NL, W, W, W, W, W, W, W]
    assert paragraph_pieces(ids, table, max_len=4) == [0, 0, 0, 0, -1, 1, -1, -1, -1, 2, 2, 2, 2, 3, 3, 3]
    assert paragraph_pieces([NL, BLANK, W], table, max_len=4) == [-1, -1, 0]
    assert paragraph_pieces([W, NL], table, max_len=4) == [0, 0]


def test_newline_table_counts_newlines_of_whitespace_tokens_only(bpe_tokenizer):
    from r3mem.tokens import newline_table, tokenize

    table = newline_table(bpe_tokenizer)
    assert len(table) == len(bpe_tokenizer)
    nl, = tokenize(bpe_tokenizer, "\n")
    assert table[nl] == 1
    assert all(table[i] == -1 for i in tokenize(bpe_tokenizer, "cat"))
    assert table[tokenize(bpe_tokenizer, " ")[0]] == 0
