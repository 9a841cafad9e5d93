"""Deterministic text segmentation: paragraphs, sentences and entity mentions as character spans.

Every function returns spans into the *original* string (``text[span.start:span.end] == span.text``)
so a memory slot can always point back at the exact source it was compressed from.
Entity detection is a documented rule (no model download): maximal runs of capitalised words,
skipping a lone capitalised word at the start of a sentence unless it recurs mid-sentence elsewhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Span", "paragraph_spans", "sentence_spans", "entity_spans"]


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    text: str

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"span: invalid offsets start={self.start} end={self.end}")

    def contains(self, other: "Span") -> bool:
        return self.start <= other.start and other.end <= self.end


# A paragraph ends at a blank line (two or more newlines, allowing whitespace-only lines between).
_PARA_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")
# Sentence end: . ! ? (optionally followed by closing quotes/brackets) then whitespace.
_SENT_END = re.compile(r"[.!?][\"'”’)\]]*\s+")
_ABBREV = {"mr", "mrs", "ms", "dr", "st", "mt", "vol", "no", "jr", "sr", "prof", "rev", "gen", "col", "capt", "lt"}
_CAP_RUN = re.compile(r"\b[A-Z][a-zA-Z'’\-]*(?:\s+(?:of|the|de|la|van|von|and)?\s*[A-Z][a-zA-Z'’\-]*)*")
_STOP_CAPS = {
    "The", "A", "An", "And", "But", "Or", "If", "In", "On", "At", "It", "He", "She", "They", "We", "I",
    "You", "This", "That", "These", "Those", "There", "Then", "When", "While", "What", "Who", "Why",
    "How", "His", "Her", "Their", "Our", "My", "Your", "As", "So", "For", "To", "Of", "By", "With",
    "From", "Not", "No", "Yes", "All", "Some", "One", "Its", "After", "Before", "Upon", "Yet", "Now",
}


def _stripped(text: str, start: int, end: int) -> Span | None:
    piece = text[start:end]
    left = len(piece) - len(piece.lstrip())
    right = len(piece.rstrip())
    if right <= left:
        return None
    return Span(start + left, start + right, piece[left:right])


def paragraph_spans(text: str) -> list[Span]:
    """Non-empty paragraphs separated by blank lines, whitespace trimmed, in order."""
    spans, pos = [], 0
    for m in _PARA_BREAK.finditer(text):
        if (s := _stripped(text, pos, m.start())) is not None:
            spans.append(s)
        pos = m.end()
    if (s := _stripped(text, pos, len(text))) is not None:
        spans.append(s)
    return spans


def sentence_spans(text: str, start: int = 0, end: int | None = None) -> list[Span]:
    """Sentences inside ``text[start:end]``; abbreviations such as 'Mr.' do not end a sentence."""
    end = len(text) if end is None else end
    spans, pos = [], start
    for m in _SENT_END.finditer(text, start, end):
        word = re.search(r"(\w+)[.!?]?[\"'”’)\]]*\s*$", text[pos:m.end()])
        if word and word.group(1).lower() in _ABBREV:
            continue
        if (s := _stripped(text, pos, m.end())) is not None:
            spans.append(s)
        pos = m.end()
    if (s := _stripped(text, pos, end)) is not None:
        spans.append(s)
    return spans


def entity_spans(text: str, start: int = 0, end: int | None = None) -> list[Span]:
    """Capitalised-name mentions inside ``text[start:end]`` (rule-based, deterministic)."""
    end = len(text) if end is None else end
    sentence_starts = {s.start for s in sentence_spans(text, start, end)}
    out = []
    for m in _CAP_RUN.finditer(text, start, end):
        words = m.group(0).split()
        # Trim leading stop words ("The Hague" keeps "Hague"; "He" is dropped).
        lead = 0
        while lead < len(words) and words[lead] in _STOP_CAPS:
            lead += 1
        if lead == len(words):
            continue
        s = m.start() + m.group(0).index(words[lead]) if lead else m.start()
        e = m.end()
        if len(words) - lead == 1 and s in sentence_starts:
            continue  # a single capitalised word opening a sentence is usually not a name
        name = text[s:e]
        if len(name) < 2 or not any(c.islower() for c in name) and len(name) < 3:
            continue
        out.append(Span(s, e, name))
    return out
