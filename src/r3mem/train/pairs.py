"""Hierarchical context–query pairs for R³Mem training.

A document yields pairs at several granularities, each recording the exact character spans it came
from, so losses, curricula and ablations can filter on ``level`` and evaluation can check
reconstructions against the source:

* ``document``:  context = the document (or a window of whole paragraphs, see ``max_doc_chars``);
* ``paragraph``: context = one paragraph;
* ``sentence``:  context = one sentence;
* ``entity``:    context = the first sentence of a paragraph that mentions the entity, target = the
  mention itself (one example per distinct name per paragraph).

For the first three levels ``target == context`` (the backward model expands the query back into the
unit it summarises). Context spans nest: entity ⊆ sentence ⊆ paragraph ⊆ document, and ``parent``
points at the enclosing example of the nearest requested level. Examples come in document order,
parents before children (pre-order), so the output is deterministic for a given input.

The paper does not say how its queries were generated, hence the :class:`QueryGenerator` interface;
the default, :class:`RuleQueryGenerator`, is rule-based and offline.
"""

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from r3mem.hierarchy import Span, entity_spans, paragraph_spans, sentence_spans

__all__ = [
    "PAIR_LEVELS",
    "Example",
    "QueryGenerator",
    "RuleQueryGenerator",
    "build_examples",
]

# Training pairs also come at sentence level, between paragraph and entity (`hierarchy.LEVELS` has no sentence slots).
PAIR_LEVELS = ("document", "paragraph", "sentence", "entity")


@dataclass(frozen=True)
class Example:
    """One context–query pair.

    Attributes:
        level: Granularity, one of :data:`PAIR_LEVELS`.
        context: Source text compressed into memory; ``text[context_span[0]:context_span[1]]``.
        query: Short key the forward model learns to produce from ``context`` (and the backward model
            expands from).
        target: The unit this pair is about; equals ``context`` except at entity level, where it is
            the entity mention inside ``context``.
        context_span: ``(start, end)`` character offsets of ``context`` in the source text.
        target_span: ``(start, end)`` offsets of ``target``; always inside ``context_span``.
        doc_id: Identifier of the source document.
        parent: Index (in the same output list) of the enclosing example, or None at the top level.
    """

    level: str
    context: str
    query: str
    target: str
    context_span: tuple[int, int]
    target_span: tuple[int, int]
    doc_id: str
    parent: int | None


@runtime_checkable
class QueryGenerator(Protocol):
    """Anything that turns a context (and the focus unit inside it) into a short query."""

    def query(self, level: str, context: str, focus: str) -> str:
        """Return the query for ``focus`` (the example's target) seen within ``context``."""
        ...


def _words(text: str, limit: int) -> str:
    """Whitespace-normalised text cut to ``limit`` words (an ellipsis marks the cut)."""
    words = text.split()
    return " ".join(words[:limit]) + (" …" if len(words) > limit else "")


@dataclass(frozen=True)
class RuleQueryGenerator:
    """Deterministic offline queries (no question-generation model needed).

    * document: ``"Summarise the document titled: <title>"`` when the document opens with a short
      one-line paragraph without final punctuation (a title), else
      ``"Summarise the document beginning: <first sentence>"``;
    * paragraph: the paragraph's first sentence, used as its key;
    * sentence: ``"Recall the sentence beginning: <first words>"``;
    * entity: ``"Who or what is <name>?"`` (``entity_style="question"``) or just ``"<name>"``.

    Attributes:
        max_words: Longest query body in words; longer first sentences are cut with "…".
        sentence_prefix_words: Words of a sentence given as its key.
        title_max_chars: Longest first line still treated as a title.
        entity_style: ``"question"`` or ``"name"``.
    """

    max_words: int = 32
    sentence_prefix_words: int = 6
    title_max_chars: int = 80
    entity_style: Literal["question", "name"] = "question"

    def query(self, level: str, context: str, focus: str) -> str:
        """Rule-based query for one example; see the class docstring for the rules."""
        if level == "document":
            return self._document(context)
        if level == "paragraph":
            return _words(sentence_spans(focus)[0].text, self.max_words)
        if level == "sentence":
            return "Recall the sentence beginning: " + _words(focus, self.sentence_prefix_words)
        if level == "entity":
            name = " ".join(focus.split())
            return f"Who or what is {name}?" if self.entity_style == "question" else name
        raise ValueError(f"unknown level {level!r}; expected one of {PAIR_LEVELS}")

    def _document(self, context: str) -> str:
        # Only the head matters, so the cost does not grow with the document.
        head = context[: self.title_max_chars * 20]
        first = paragraph_spans(head)[0].text
        if len(first) <= self.title_max_chars and "\n" not in first and first[-1] not in ".!?,;:":
            return "Summarise the document titled: " + " ".join(first.split())
        return "Summarise the document beginning: " + _words(sentence_spans(first)[0].text, self.max_words)


def _check_levels(levels: Sequence[str]) -> None:
    unknown = [lv for lv in levels if lv not in PAIR_LEVELS]
    if unknown or not levels:
        raise ValueError(f"levels must be a non-empty subset of {PAIR_LEVELS}, got {tuple(levels)}")


def _document_windows(paragraphs: list[Span], max_doc_chars: int | None) -> list[tuple[int, int, int]]:
    """Group consecutive paragraphs into document units ``(start, end, n_paragraphs)``.

    Windows hold whole paragraphs so nesting holds; a paragraph longer than ``max_doc_chars`` forms a
    window on its own rather than being cut.
    """
    if max_doc_chars is None:
        return [(paragraphs[0].start, paragraphs[-1].end, len(paragraphs))]
    windows: list[tuple[int, int, int]] = []
    for p in paragraphs:
        if windows and p.end - windows[-1][0] <= max_doc_chars:
            start, _, n = windows[-1]
            windows[-1] = (start, p.end, n + 1)
        else:
            windows.append((p.start, p.end, 1))
    return windows


@dataclass
class _Builder:
    """Accumulates examples for one document; holds the shared arguments of the helpers below."""

    text: str
    doc_id: str
    levels: Sequence[str]
    generator: QueryGenerator
    examples: list[Example] = field(default_factory=list)

    def add(self, level: str, context: Span, target: Span, parent: int | None) -> int | None:
        """Append an example if ``level`` is requested; return the index children should point at."""
        if level not in self.levels:
            return parent
        query = self.generator.query(level, context.text, target.text)
        self.examples.append(
            Example(
                level=level,
                context=context.text,
                query=query,
                target=target.text,
                context_span=(context.start, context.end),
                target_span=(target.start, target.end),
                doc_id=self.doc_id,
                parent=parent,
            )
        )
        return len(self.examples) - 1

    def paragraph(self, para: Span, sentences: list[Span], entities: list[Span], parent: int | None) -> None:
        """Emit a paragraph, its sentences and the first mention of each entity in it."""
        p_idx = self.add("paragraph", para, para, parent)
        starts = [s.start for s in sentences]
        by_sentence: dict[int, list[Span]] = {}
        seen: set[str] = set()
        for ent in entities:
            key = " ".join(ent.text.split())
            i = bisect.bisect_right(starts, ent.start) - 1
            if key in seen or i < 0 or not sentences[i].contains(ent):
                continue
            seen.add(key)
            by_sentence.setdefault(i, []).append(ent)
        for i, sent in enumerate(sentences):
            s_idx = self.add("sentence", sent, sent, p_idx)
            for ent in by_sentence.get(i, []):
                self.add("entity", sent, ent, s_idx)


def _entities_by_paragraph(text: str, paragraphs: list[Span], sentences: list[list[Span]]) -> list[list[Span]]:
    """Entity mentions of a document unit, grouped by paragraph.

    Scanning the whole unit at once (not paragraph by paragraph) lets a name that opens one paragraph
    count as an entity because it occurs mid-sentence in another.
    """
    flat = [s for para_sentences in sentences for s in para_sentences]
    entities = entity_spans(text, paragraphs[0].start, paragraphs[-1].end, sentences=flat)
    ends = [p.end for p in paragraphs]
    grouped: list[list[Span]] = [[] for _ in paragraphs]
    for ent in entities:
        i = bisect.bisect_left(ends, ent.end)
        if i < len(paragraphs) and paragraphs[i].contains(ent):
            grouped[i].append(ent)
    return grouped


def build_examples(
    text: str,
    doc_id: str,
    levels: Sequence[str] = ("document", "paragraph", "entity"),
    generator: QueryGenerator | None = None,
    max_doc_chars: int | None = None,
) -> list[Example]:
    """Build the hierarchical context–query examples of one document.

    Args:
        text: The document; all spans index into it.
        doc_id: Identifier stored in every example.
        levels: Which of :data:`PAIR_LEVELS` to emit; missing levels are skipped and children point at the
            nearest emitted ancestor.
        generator: Query generator; defaults to :class:`RuleQueryGenerator`.
        max_doc_chars: If set, the document level is a sequence of windows of whole paragraphs, each
            at most this long (so very long books give several document-level pairs of bounded size).

    Returns:
        Examples in document order, each parent before its children. Runs in time linear in
        ``len(text)`` with the rule generator.

    Raises:
        ValueError: ``text`` is empty or whitespace only, ``levels`` is invalid or ``max_doc_chars`` < 1.
    """
    _check_levels(levels)
    if max_doc_chars is not None and max_doc_chars < 1:
        raise ValueError(f"max_doc_chars must be >= 1 or None, got {max_doc_chars}")
    if not text.strip():
        raise ValueError(f"document {doc_id!r} is empty")
    builder = _Builder(text, doc_id, tuple(levels), generator or RuleQueryGenerator())
    paragraphs = paragraph_spans(text)
    first = 0
    for start, end, n in _document_windows(paragraphs, max_doc_chars):
        window = Span(start, end, text[start:end])
        d_idx = builder.add("document", window, window, None)
        paras = paragraphs[first : first + n]
        first += n
        fine = "sentence" in levels or "entity" in levels
        sentences = [sentence_spans(text, p.start, p.end) if fine else [] for p in paras]
        entities = _entities_by_paragraph(text, paras, sentences) if "entity" in levels else [[] for _ in paras]
        for para, para_sentences, ents in zip(paras, sentences, entities):
            builder.paragraph(para, para_sentences, ents, d_idx)
    return builder.examples
