"""Context–query builder and text reading: valid nested spans, determinism, edge-case documents, PG-19."""

import re
import time
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r3mem import text as text_module
from r3mem.text import iter_text_chunks, read_text, strip_gutenberg
from r3mem.train.pairs import (
    PAIR_LEVELS,
    Example,
    RuleQueryGenerator,
    build_examples,
)

PG19 = Path(__file__).parents[2] / "shared" / "data" / "pg19"
# Lines strictly between the markers, from shared/data/pg19/README.md (start/end marker line numbers).
PG19_KEPT_LINES = {"10146": 4466 - 26, "10321": 6804 - 19, "10356": 5433 - 19, "10762": 5518 - 22}
_LEVEL_RANK = {level: i for i, level in enumerate(PAIR_LEVELS)}

SAMPLE = """\
A Tale of St. Paul

Dr. Jones came to St. Paul in 1850. He met Mr. Smith at the landing.
Later Jones opened a store.

The winter was hard. Mr. Smith left for Chicago in March!
"""


def assert_valid(text: str, examples: list[Example]) -> None:
    """Every span indexes the source, targets sit in contexts, parents enclose children at a higher level."""
    for i, ex in enumerate(examples):
        cs, ce = ex.context_span
        ts, te = ex.target_span
        assert text[cs:ce] == ex.context and ex.context.strip()
        assert text[ts:te] == ex.target and cs <= ts <= te <= ce
        assert ex.level in PAIR_LEVELS and ex.query.strip()
        if ex.level != "entity":
            assert ex.target_span == ex.context_span
        if ex.parent is not None:
            parent = examples[ex.parent]
            assert ex.parent < i
            assert _LEVEL_RANK[parent.level] < _LEVEL_RANK[ex.level]
            assert parent.context_span[0] <= cs and ce <= parent.context_span[1]


def test_levels_nest_with_expected_queries():
    examples = build_examples(SAMPLE, "tale", levels=PAIR_LEVELS)
    assert_valid(SAMPLE, examples)
    doc = examples[0]
    assert (doc.level, doc.parent) == ("document", None)
    assert doc.query == "Summarise the document titled: A Tale of St. Paul"
    paragraphs = [e for e in examples if e.level == "paragraph"]
    assert [p.query for p in paragraphs] == [
        "A Tale of St. Paul",
        "Dr. Jones came to St. Paul in 1850.",
        "The winter was hard.",
    ]
    # (entity, its query, the key of the paragraph it sits in)
    entities = [
        (e.target, e.query, examples[examples[e.parent].parent].query) for e in examples if e.level == "entity"
    ]
    assert entities == [
        ("Tale of St. Paul", "Who or what is Tale of St. Paul?", "A Tale of St. Paul"),
        ("Dr. Jones", "Who or what is Dr. Jones?", "Dr. Jones came to St. Paul in 1850."),
        ("St. Paul", "Who or what is St. Paul?", "Dr. Jones came to St. Paul in 1850."),
        ("Mr. Smith", "Who or what is Mr. Smith?", "Dr. Jones came to St. Paul in 1850."),
        ("Jones", "Who or what is Jones?", "Dr. Jones came to St. Paul in 1850."),
        ("Mr. Smith", "Who or what is Mr. Smith?", "The winter was hard."),
        ("Chicago", "Who or what is Chicago?", "The winter was hard."),
        ("March", "Who or what is March?", "The winter was hard."),
    ]
    # An entity's context is the sentence that mentions it.
    smith = next(e for e in examples if e.target == "Mr. Smith")
    assert smith.context == "He met Mr. Smith at the landing." and examples[smith.parent].level == "sentence"


def test_one_entity_example_per_name_per_paragraph():
    text = "We love Boston. Boston loves us, and Boston grows.\n\nBoston again."
    examples = build_examples(text, "b", levels=("paragraph", "entity"))
    assert [(e.level, e.target_span) for e in examples] == [
        ("paragraph", (0, 50)),
        ("entity", (8, 14)),
        ("paragraph", (52, 65)),
        ("entity", (52, 58)),
    ]


def test_default_levels_skip_sentences_and_reparent_entities():
    examples = build_examples(SAMPLE, "tale")
    assert_valid(SAMPLE, examples)
    assert {e.level for e in examples} == {"document", "paragraph", "entity"}
    for e in examples:
        if e.level == "entity":
            assert examples[e.parent].level == "paragraph"
    only_entities = build_examples(SAMPLE, "tale", levels=("entity",))
    assert only_entities and all(e.level == "entity" and e.parent is None for e in only_entities)


def test_document_query_uses_first_sentence_without_title():
    text = "It was a dark night and the wind howled. Nobody slept.\n\nMorning came."
    doc = build_examples(text, "d", levels=("document",))
    assert [e.query for e in doc] == ["Summarise the document beginning: It was a dark night and the wind howled."]


def test_same_input_gives_identical_examples():
    assert build_examples(SAMPLE, "tale", levels=PAIR_LEVELS) == build_examples(SAMPLE, "tale", levels=PAIR_LEVELS)


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t \r\n"])
def test_empty_document_is_refused(text):
    with pytest.raises(ValueError, match="'blank' is empty"):
        build_examples(text, "blank")


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="levels"):
        build_examples(SAMPLE, "x", levels=("document", "chapter"))
    with pytest.raises(ValueError, match="levels"):
        build_examples(SAMPLE, "x", levels=())
    with pytest.raises(ValueError, match="max_doc_chars"):
        build_examples(SAMPLE, "x", max_doc_chars=0)


def test_one_word_document():
    text = "  Hello\n"
    examples = build_examples(text, "tiny", levels=PAIR_LEVELS)
    assert_valid(text, examples)
    assert [(e.level, e.context_span) for e in examples] == [
        ("document", (2, 7)),
        ("paragraph", (2, 7)),
        ("sentence", (2, 7)),
    ]


def test_max_doc_chars_windows_cover_paragraphs_once():
    paragraph = "Mr. Smith walked to Boston. It rained."
    text = "\n\n".join(f"{paragraph} Day {i}." for i in range(40))
    examples = build_examples(text, "w", max_doc_chars=200)
    assert_valid(text, examples)
    docs = [e for e in examples if e.level == "document"]
    assert len(docs) > 5 and all(len(d.context) <= 200 for d in docs)
    paragraphs = [e for e in examples if e.level == "paragraph"]
    assert len(paragraphs) == 40 and all(examples[p.parent].level == "document" for p in paragraphs)
    # Windows are disjoint and in order.
    assert all(a.context_span[1] < b.context_span[0] for a, b in zip(docs, docs[1:]))


def test_huge_document_builds_in_linear_time():
    unit = SAMPLE.replace("1850", "{}") + "\n"
    text = "".join(unit.format(i) for i in range(1_100_000 // len(unit) + 1))
    assert len(text) > 1_000_000
    t0 = time.perf_counter()
    examples = build_examples(text, "huge")
    assert time.perf_counter() - t0 < 15.0, "1M characters should take seconds, not minutes"
    assert_valid(text, examples)
    n_units = text.count("A Tale of St. Paul")
    assert sum(e.level == "paragraph" for e in examples) == 3 * n_units


def test_rule_generator_entity_name_style_and_unknown_level():
    gen = RuleQueryGenerator(entity_style="name")
    assert gen.query("entity", "He saw St.\nPaul.", "St.\nPaul") == "St. Paul"
    with pytest.raises(ValueError, match="unknown level"):
        gen.query("chapter", "x", "x")


_WORDS = st.sampled_from(
    ["Mr.", "Dr.", "St.", "Paul", "Jones", "London", "the", "of", "went", "home", "J.", "I", "it", ".", "!", "?",
     ",", "\n", "\n\n", "  ", "Émile", "USA", "CHAPTER", "Anne-Marie's"]
)  # fmt: skip


@settings(max_examples=80, deadline=None)
@given(st.lists(_WORDS, min_size=1, max_size=50).map(" ".join))
def test_random_documents_give_valid_nested_examples(text):
    if not text.strip():
        with pytest.raises(ValueError, match="is empty"):
            build_examples(text, "r")
        return
    examples = build_examples(text, "r", levels=PAIR_LEVELS, max_doc_chars=60)
    assert_valid(text, examples)
    assert examples == build_examples(text, "r", levels=PAIR_LEVELS, max_doc_chars=60)


# --- reading text -----------------------------------------------------------------------------------


def test_read_text_strips_bom_and_normalises_newlines(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"\xef\xbb\xbfOne\r\nTwo\rThree\n\xc3\xa9")
    assert read_text(path) == "One\nTwo\nThree\né"


def test_invalid_utf8_names_file_and_offset(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"\xef\xbb\xbfok\r\n\xff rest")
    with pytest.raises(ValueError, match=r"bad\.txt: invalid UTF-8 at byte 7") as err:
        read_text(path)
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=r"bad\.txt: invalid UTF-8 at byte 7"):
        list(iter_text_chunks(path, 2))
    assert read_text(path, errors="replace") == "ok\n\ufffd rest"


@settings(max_examples=150, deadline=None)
@given(
    data=st.lists(
        st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b"\xef\xbb\xbf", "é€".encode(), b"\xff", b"\xe2\x82"]),
        max_size=40,
    ).map(b"".join),
    chunk=st.integers(1, 7),
    block=st.integers(1, 5),
    errors=st.sampled_from(["strict", "replace"]),
)
def test_streamed_chunks_equal_whole_read(tmp_path_factory, data, chunk, block, errors):
    """Tiny read blocks split CRLF pairs, multi-byte characters and the BOM across reads."""
    path = tmp_path_factory.mktemp("s") / "f.txt"
    path.write_bytes(data)
    with mock.patch.object(text_module, "_BLOCK_BYTES", block):
        try:
            whole = read_text(path, errors=errors)
        except ValueError as err:
            with pytest.raises(ValueError) as streamed:
                list(iter_text_chunks(path, chunk, errors=errors))
            assert str(streamed.value) == str(err)
            return
        chunks = list(iter_text_chunks(path, chunk, errors=errors))
    assert "".join(chunks) == whole
    assert all(len(c) == chunk for c in chunks[:-1]) and all(chunks)


def test_iter_text_chunks_large_file(tmp_path):
    path = tmp_path / "big.txt"
    path.write_bytes(("line é\r\n" * 50_000).encode())  # 9-byte lines: 64 KiB blocks end mid-line
    chunks = list(iter_text_chunks(path, 70_001))
    assert "".join(chunks) == read_text(path) and [len(c) for c in chunks[:-1]] == [70_001] * (len(chunks) - 1)


def test_strip_gutenberg_marker_styles():
    wrapped = (
        "H\n***START OF THE PROJECT GUTENBERG EBOOK A LONG\nTITLE***\nBody 1\nBody 2\n"
        "***END OF THE PROJECT GUTENBERG EBOOK A\nB***"
    )
    assert strip_gutenberg(wrapped) == "Body 1\nBody 2\n"
    spaced = (
        "H\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n\nBody\n"
        "*** END OF THIS PROJECT GUTENBERG EBOOK X ***\nL"
    )
    assert strip_gutenberg(spaced) == "\nBody\n"
    assert strip_gutenberg(spaced.replace("\n", "\r\n")) == "\r\nBody\r\n"
    assert strip_gutenberg("No markers here.\n") == "No markers here.\n"
    assert strip_gutenberg("H\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\nBody") == "Body"
    # The licence's own "*** START: FULL LICENSE ***" is not a book marker.
    assert strip_gutenberg("Body\n*** START: FULL LICENSE ***\n") == "Body\n*** START: FULL LICENSE ***\n"


@pytest.fixture(scope="module")
def pg19_files() -> list[Path]:
    files = sorted(PG19.glob("*.txt"))
    if not files:
        pytest.skip(f"PG-19 sample not found at {PG19} (the shared data folder sits next to the repo)")
    return files


def test_pg19_stripping_keeps_exactly_the_book(pg19_files):
    for path in pg19_files:
        text = read_text(path)
        assert "\r" not in text and not text.startswith("\ufeff")
        book = strip_gutenberg(text)
        assert book.count("\n") == PG19_KEPT_LINES[path.stem], path.name
        assert not re.search(r"^\*{3} ?(START|END) OF TH(E|IS) PROJECT", book, re.MULTILINE)
        assert "FULL LICENSE" not in book and "Title:" not in book
        assert not book.startswith("ST. PAUL***")
        assert len(book) < len(text) - 15_000  # header and licence removed


def test_pg19_book_builds_valid_examples(pg19_files):
    path = next(p for p in pg19_files if p.stem == "10146")
    text = strip_gutenberg(read_text(path))
    examples = build_examples(text, path.stem)
    assert_valid(text, examples)
    assert {e.doc_id for e in examples} == {"10146"}
    entities = {e.target for e in examples if e.level == "entity"}
    assert {"St. Paul", "Dr. Foster", "Mr. Moore", "A. Lincoln"} <= entities and not {"St", "Dr", "Mr"} & entities
    assert sum(e.level == "paragraph" for e in examples) > 300
