"""Segment-recurrent LM batches: shapes, contiguity, padding, determinism; chunked tokenisation."""

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from r3mem.train.windows import (
    Window,
    _split_at_whitespace,
    lm_batches,
    lm_windows,
    tokenize_documents,
    tokenize_file,
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


def test_tokenize_file_streams_normalised_text(tmp_path, bpe_tokenizer):
    path = tmp_path / "book.txt"
    text = "\n".join(SENTENCES * 20).replace("\r\n", "\n")
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    expected = bpe_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenize_file(path, bpe_tokenizer, chunk_chars=50) == expected
    assert tokenize_documents(["", SENTENCES[0]], bpe_tokenizer) == [[], tokenize_text(SENTENCES[0], bpe_tokenizer)]


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


def test_batches_have_contiguous_rows_and_padding():
    docs = _docs(100, 37, 5, 64)
    batches = list(lm_batches(docs, seg_len=4, n_segments=4, batch_size=3, seed=1))
    rows = []
    for batch in batches:
        assert set(batch) == {"input_ids", "attention_mask"}
        assert batch["input_ids"].dtype == torch.long and batch["attention_mask"].dtype == torch.long
        assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[1] == 16
        for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
            n = int(mask.sum())
            assert mask[:n].all() and not mask[n:].any(), "mask must be 1s then 0s (right padding)"
            assert (ids[n:] == 0).all()
            assert (ids[1:n] - ids[: n - 1] == 1).all(), "row is not a contiguous slice of one document"
            rows.append((int(ids[0]), n))
    sizes = [b["input_ids"].shape[0] for b in batches]
    assert sizes[:-1] == [3] * (len(sizes) - 1) and 1 <= sizes[-1] <= 3
    expected = {(d * 1000 + w.start, w.length) for d, w in ((w.doc, w) for w in lm_windows(docs, 16, 4))}
    assert sorted(rows) == sorted(expected), "each window must appear exactly once per epoch"


def test_batches_are_deterministic_and_seeded():
    docs = _docs(300, 200, 90)

    def run(seed: int) -> list[torch.Tensor]:
        return [b["input_ids"] for b in lm_batches(docs, seg_len=5, n_segments=2, batch_size=4, seed=seed, epochs=2)]

    torch.manual_seed(123)
    before = torch.get_rng_state()
    first, again, other = run(0), run(0), run(1)
    assert torch.equal(before, torch.get_rng_state()), "must not touch the global RNG"
    assert len(first) == len(again) and all(torch.equal(a, b) for a, b in zip(first, again))
    assert any(not torch.equal(a, b) for a, b in zip(first, other))
    half = len(first) // 2
    assert any(not torch.equal(a, b) for a, b in zip(first[:half], first[half:])), "each epoch reshuffles"


def test_drop_last_pad_id_and_endless_epochs():
    docs = _docs(7 * 8)
    batches = list(lm_batches(docs, seg_len=4, n_segments=2, batch_size=3, drop_last=True))
    assert [b["input_ids"].shape for b in batches] == [torch.Size([3, 8])] * 2
    short = next(lm_batches([[5, 6, 7]], seg_len=2, n_segments=3, batch_size=2, pad_id=-1))
    assert short["input_ids"].tolist() == [[5, 6, 7, -1, -1, -1]]
    assert short["attention_mask"].tolist() == [[1, 1, 1, 0, 0, 0]]
    endless = lm_batches(docs, seg_len=4, n_segments=2, batch_size=3, epochs=None)
    assert len([next(endless) for _ in range(25)]) == 25


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"seg_len": 0}, "seg_len"),
        ({"n_segments": -1}, "n_segments"),
        ({"batch_size": 0}, "batch_size"),
        ({"min_tokens": 0}, "min_tokens"),
        ({"seg_len": 50}, "no document has at least min_tokens=50"),
    ],
)
def test_bad_batch_arguments_are_refused(kwargs, message):
    args = {"seg_len": 4, "n_segments": 2, "batch_size": 2} | kwargs
    with pytest.raises(ValueError, match=message):
        next(lm_batches(_docs(20, 30), **args))
