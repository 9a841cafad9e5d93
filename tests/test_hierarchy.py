"""Rule-based segmentation: spans index the source exactly, nest, and follow the documented rules."""

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r3mem.hierarchy import Span, entity_spans, paragraph_spans, sentence_spans


def _texts(spans: list[Span]) -> list[str]:
    return [s.text for s in spans]


def _assert_valid(text: str, spans: list[Span], lo: int = 0, hi: int | None = None) -> None:
    """Each span is the exact, trimmed source text, inside [lo, hi], in order and disjoint."""
    hi = len(text) if hi is None else hi
    prev_end = lo
    for s in spans:
        assert text[s.start : s.end] == s.text
        assert s.text and s.text == s.text.strip()
        assert prev_end <= s.start <= s.end <= hi
        prev_end = s.end


def test_span_rejects_bad_offsets_and_contains():
    with pytest.raises(ValueError, match="invalid offsets"):
        Span(5, 2, "")
    outer, inner = Span(0, 10, "x" * 10), Span(2, 4, "xx")
    assert outer.contains(inner) and not inner.contains(outer)


def test_paragraphs_split_on_blank_lines_only():
    text = "First line\nstill first.\n\n  \n\nSecond.\r\n\r\nThird"
    assert _texts(paragraph_spans(text)) == ["First line\nstill first.", "Second.", "Third"]
    assert paragraph_spans("   \n\n \t") == []


def test_sentences_respect_abbreviations_and_initials():
    text = 'Mr. Smith met Dr. Jones in St. Paul. J. W. Bond waited! "Why?" he asked. So did I. Then we left'
    assert _texts(sentence_spans(text)) == [
        "Mr. Smith met Dr. Jones in St. Paul.",
        "J. W. Bond waited!",
        '"Why?"',
        "he asked.",
        "So did I.",
        "Then we left",
    ]


def test_sentences_in_a_range_stay_in_the_range():
    text = "Ignore this. Keep one. Keep two. Ignore that."
    lo, hi = text.index("Keep one"), text.index(" Ignore that")
    spans = sentence_spans(text, lo, hi)
    assert _texts(spans) == ["Keep one.", "Keep two."]
    _assert_valid(text, spans, lo, hi)


def test_entities_keep_titles_and_abbreviations():
    text = "Yesterday Dr. Jones walked through St. Paul with J. W. Bond and Mr. Smith."
    assert _texts(entity_spans(text)) == ["Dr. Jones", "St. Paul", "J. W. Bond", "Mr. Smith"]


def test_entities_trim_function_words_and_possessives():
    text = "We sailed to The Hague, then met Paul's friend Anne-Marie at the Bank of England."
    assert _texts(entity_spans(text)) == ["Hague", "Paul", "Anne-Marie", "Bank of England"]


def test_entity_name_may_wrap_one_line_but_not_a_paragraph():
    text = "He lived in St.\nPaul for years.\n\nLondon was\n\nfar away from Boston\n\nHarbor."
    assert _texts(entity_spans(text)) == ["St.\nPaul", "Boston"]


def test_sentence_openers_need_a_mid_sentence_occurrence():
    assert _texts(entity_spans("Jones left early. Nobody saw it.")) == []
    assert _texts(entity_spans("Jones left early. Then Dr. Jones came back.")) == ["Jones", "Dr. Jones"]
    assert _texts(entity_spans("Yesterday it rained. Then Jones came.")) == ["Jones"]


def test_headings_roman_numerals_and_pronouns_are_not_entities():
    text = "CHAPTER IV\n\nREMINISCENCES OF PIONEER DAYS IN ST. PAUL.\n\nSo I met him and the USA agreed. I. II."
    assert _texts(entity_spans(text)) == ["USA"]


def test_non_ascii_capitals_count():
    text = "They went from Zürich to Łódź with Émile Zola."
    assert _texts(entity_spans(text)) == ["Zürich", "Łódź", "Émile Zola"]


def test_entities_in_a_range_stay_in_the_range():
    text = "London is big. Paris is in France. Berlin too."
    lo, hi = text.index("Paris"), text.index(" Berlin")
    spans = entity_spans(text, lo, hi)
    assert _texts(spans) == ["France"]  # "Paris" opens the range's only sentence
    _assert_valid(text, spans, lo, hi)


@pytest.mark.parametrize(
    "text",
    ["Mr. " * 100_000, "A" * 400_000, ("word " * 50 + "\n") * 4_000, "J. " * 100_000, ".\n\n" * 100_000],
)
def test_pathological_inputs_run_in_linear_time(text):
    t0 = time.perf_counter()
    paras = paragraph_spans(text)
    sents = [s for p in paras for s in sentence_spans(text, p.start, p.end)]
    ents = entity_spans(text, sentences=sents)
    assert time.perf_counter() - t0 < 5.0, "segmentation is not linear on this input"
    _assert_valid(text, paras)
    _assert_valid(text, ents)


# Random text built from the pieces the rules care about.
_PIECES = st.sampled_from(
    ["The", "Mr.", "St.", "Dr.", "J.", "I", "Paul", "Jones", "of", "the", "and", "London", "USA", "Émile",
     "word", "it's", "Paul's", "Anne-Marie", "--", ".", "!", "?", '"', "'", ",", " ", " ", "  ", "\n", "\n\n",
     "\r\n", "\t", "3", "x"]
)  # fmt: skip
_RANDOM_TEXT = st.lists(_PIECES, max_size=60).map(" ".join) | st.text(max_size=80)


@settings(max_examples=150, deadline=None)
@given(_RANDOM_TEXT)
def test_random_text_spans_are_valid_and_nest(text):
    paras = paragraph_spans(text)
    _assert_valid(text, paras)
    all_sentences = []
    for p in paras:
        sents = sentence_spans(text, p.start, p.end)
        _assert_valid(text, sents, p.start, p.end)
        assert sents, "a non-empty paragraph has at least one sentence"
        all_sentences += sents
    ents = entity_spans(text, sentences=all_sentences)
    _assert_valid(text, ents)
    assert ents == entity_spans(text), "default sentence splitting must match the per-paragraph one"
    for e in ents:
        assert any(p.contains(e) for p in paras), f"entity {e} crosses a paragraph"
        assert any(s.contains(e) for s in all_sentences), f"entity {e} crosses a sentence"
