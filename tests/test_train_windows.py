"""Segment-recurrent LM windows and chunked tokenisation."""

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from r3mem.train.windows import (
    Window,
    _split_at_whitespace,
    lm_windows,
    tokenize_text,
)

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
        assert tokenize_text(text, tok, chunk_chars=chunk_chars) == expected
    assert 0 not in tokenize_text(text, bpe_tokenizer, chunk_chars) and 1 not in tokenize_text(text, bpe_tokenizer)


def test_chunks_are_small_and_cut_before_whitespace_runs():
    text = " ".join(SENTENCES) * 3
    pieces = list(_split_at_whitespace(iter([text[:7], text[7:30], text[30:]]), 4))
    assert "".join(pieces) == text and len(pieces) > 40
    for piece in pieces[1:]:
        assert piece[0].isspace() and not piece[-1].isspace() or piece is pieces[-1]
    assert max(len(p) for p in pieces) <= len(max(text.split(), key=len)) + 4


def test_tokenize_rejects_bad_chunk(bpe_tokenizer):
    with pytest.raises(ValueError, match="chunk_chars"):
        tokenize_text("x", bpe_tokenizer, chunk_chars=0)


def _docs(*lengths: int) -> list[list[int]]:
    """Document d holds the ids d*1000, d*1000+1, …: a row is contiguous iff its ids increase by one."""
    return [list(range(d * 1000, d * 1000 + n)) for d, n in enumerate(lengths)]


def test_windows_tile_documents_and_drop_short_tails():
    assert lm_windows(_docs(25, 3, 10), window_len=10, min_tokens=4) == [
        Window(0, 0, 10),
        Window(0, 10, 10),
        Window(0, 20, 5),
        Window(2, 0, 10),
    ]
