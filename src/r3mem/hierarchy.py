"""Deterministic text segmentation: paragraphs, sentences and entity mentions as character spans.

These are the units of the R³Mem hierarchy (document → paragraph → sentence → entity, as in the R³Mem paper).
Every function returns spans into the *original* string (``text[span.start:span.end] == span.text``)
so a memory slot can always point back at the exact source it was compressed from.

Rules (no model download, linear time):

* paragraph: text between blank lines, whitespace trimmed;
* sentence: ends at ``.``, ``!`` or ``?`` (plus closing quotes/brackets) followed by whitespace, except
  after a known abbreviation ("Mr.", "St.", "Vol.") or a single-letter initial ("J. Smith");
* entity: a maximal run of capitalised words, allowing titles and initials ("Dr. Jones", "St. Paul",
  "J. W. Bond") and lower-case connectors ("Bank of England"). Leading/trailing function words
  ("The Hague" → "Hague") and a possessive "'s" are trimmed; all-caps headings and sentences without a
  lower-case letter are skipped. At a sentence start capitalisation proves nothing, so a lone word there
  is kept only if it also occurs mid-sentence in the scanned range ("Jones left. Then Dr. Jones …" keeps
  both), and a longer run drops an opening word never seen heading a name ("Later Jones" → "Jones").
"""

import re
from dataclasses import dataclass

__all__ = ["LEVELS", "Span", "paragraph_spans", "sentence_spans", "entity_spans"]

# The levels a Memory holds and recall reads, coarse to fine (the one definition in the package).
LEVELS = ("document", "paragraph", "entity")


@dataclass(frozen=True)
class Span:
    """A half-open character range ``[start, end)`` of a source string and the text it covers."""

    start: int
    end: int
    text: str

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"span: invalid offsets start={self.start} end={self.end}")

    def contains(self, other: "Span") -> bool:
        """True if ``other`` lies inside this span (boundaries included)."""
        return self.start <= other.start and other.end <= self.end


# A paragraph ends at a blank line (two or more newlines, allowing whitespace-only lines between).
_PARA_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")
# Sentence end: . ! ? (optionally followed by closing quotes/brackets) then whitespace.
_SENT_END = re.compile(r"[.!?][\"'”’)\]]*\s+")
# The word just before a sentence-end candidate; the window is bounded so the check is O(1).
_WORD_BEFORE = re.compile(r"(?<!\w)(\w+)$")
_ABBREV_WINDOW = 12
_PERSON_TITLES = ("Mr", "Mrs", "Ms", "Dr", "Prof", "Rev", "Gen", "Col", "Capt", "Lt", "Sgt", "Gov")
_TITLES = (*_PERSON_TITLES, "St", "Mt", "Jr", "Sr")
_ABBREV = {t.lower() for t in _TITLES} | {"vol", "no", "vs", "etc", "ft", "co"}

# Capitals of Latin, Greek and Cyrillic scripts, so "Émile" or "Zürich" count as capitalised words.
_UPPER = "".join(c for c in map(chr, range(0x530)) if c.isupper())
_LETTER = r"[^\W\d_]"
_PART = rf"[{_UPPER}]{_LETTER}*(?:['’]{_LETTER}+)*"
_WORD = rf"{_PART}(?:-{_PART})*"  # "Anne-Marie", but "York-based" stops at "York"
_TITLE = rf"(?:{'|'.join(_TITLES)})\."
_SEP = r"(?:[ \t]+(?:\n[ \t]*)?|\n[ \t]*)"  # spaces or one line break, never a blank line
_INITIAL = rf"(?!I\.)[{_UPPER}]\.(?={_SEP}[{_UPPER}])"  # "J." only when a capitalised word follows
_CONNECTOR = r"(?:of|the|de|la|le|du|van|von|der|den|da|di|del)"
_TOKEN = rf"(?:{_TITLE}|{_INITIAL}|{_WORD})"
_CAP_RUN = re.compile(rf"(?<![\w'’-]){_TOKEN}(?:{_SEP}(?:{_CONNECTOR}{_SEP}){{0,2}}{_TOKEN})*")
# A person title inside a run starts a new name: "Yesterday Dr. Jones" → "Yesterday" | "Dr. Jones".
_NEW_NAME = re.compile(rf"(?<=\s)(?:{'|'.join(_PERSON_TITLES)})\.")
_ROMAN = re.compile(r"[IVXLCDM]+")
_POSSESSIVE = re.compile(r"['’]s$")
_STOP_CAPS = {
    "The", "A", "An", "And", "But", "Or", "If", "In", "On", "At", "It", "He", "She", "They", "We", "I",
    "You", "This", "That", "These", "Those", "There", "Then", "When", "While", "What", "Who", "Why",
    "How", "His", "Her", "Their", "Our", "My", "Your", "As", "So", "For", "To", "Of", "By", "With",
    "From", "Not", "No", "Yes", "All", "Some", "One", "Its", "After", "Before", "Upon", "Yet", "Now",
}  # fmt: skip


def _stripped(text: str, start: int, end: int) -> Span | None:
    piece = text[start:end]
    left = len(piece) - len(piece.lstrip())
    right = len(piece.rstrip())
    if right <= left:
        return None
    return Span(start + left, start + right, piece[left:right])


def _paragraphs_in(text: str, start: int, end: int) -> list[Span]:
    spans, pos = [], start
    for m in _PARA_BREAK.finditer(text, start, end):
        if (s := _stripped(text, pos, m.start())) is not None:
            spans.append(s)
        pos = m.end()
    if (s := _stripped(text, pos, end)) is not None:
        spans.append(s)
    return spans


def paragraph_spans(text: str) -> list[Span]:
    """Non-empty paragraphs separated by blank lines, whitespace trimmed, in order."""
    return _paragraphs_in(text, 0, len(text))


def _is_abbreviation(text: str, lo: int, dot: int) -> bool:
    """Whether the word ending at ``dot`` is an abbreviation or initial, so the '.' is not a sentence end."""
    if text[dot] != ".":
        return False
    word = _WORD_BEFORE.search(text, max(lo, dot - _ABBREV_WINDOW), dot)
    if word is None:
        return False
    w = word.group(1)
    return w.lower() in _ABBREV or (len(w) == 1 and w.isupper() and w != "I")


def sentence_spans(text: str, start: int = 0, end: int | None = None) -> list[Span]:
    """Sentences inside ``text[start:end]``; abbreviations such as 'Mr.' do not end a sentence."""
    end = len(text) if end is None else end
    spans, pos = [], start
    for m in _SENT_END.finditer(text, start, end):
        if _is_abbreviation(text, pos, m.start()):
            continue
        if (s := _stripped(text, pos, m.end())) is not None:
            spans.append(s)
        pos = m.end()
    if (s := _stripped(text, pos, end)) is not None:
        spans.append(s)
    return spans


def _split_run(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Cut a capitalised run before each inner person title ("Mr.", "Dr.", ...)."""
    cuts = [m.start() for m in _NEW_NAME.finditer(text, start, end)]
    bounds = [start, *cuts, end]
    return list(zip(bounds[:-1], bounds[1:]))


def _trim_run(text: str, start: int, end: int) -> tuple[int, int] | None:
    """Drop leading/trailing function words and a final possessive from a capitalised run."""
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", text[start:end])]
    while words and text[start + words[0][0] : start + words[0][1]] in _STOP_CAPS:
        words.pop(0)
    while words and text[start + words[-1][0] : start + words[-1][1]] in _STOP_CAPS:
        words.pop()
    if not words:
        return None
    s, e = start + words[0][0], start + words[-1][1]
    if (m := _POSSESSIVE.search(text, s, e)) is not None and m.start() > s:
        e = m.start()
    return s, e


def _is_name(name: str) -> bool:
    """Reject all-caps headings ("CHAPTER I"), roman numerals and one-letter words."""
    letters = [c for c in name if c.isalpha()]
    if len(letters) < 2 or name.endswith(".") and " " not in name:
        return False
    if any(c.islower() for c in letters):
        return True
    return " " not in name and "\n" not in name and len(letters) <= 5 and not _ROMAN.fullmatch(name)


class _RangeSet:
    """Sorted, disjoint ranges queried with increasing positions (a moving pointer keeps it linear)."""

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        self.ranges, self.i = ranges, 0

    def covers(self, pos: int) -> bool:
        while self.i < len(self.ranges) and self.ranges[self.i][1] <= pos:
            self.i += 1
        return self.i < len(self.ranges) and self.ranges[self.i][0] <= pos


def _heading_ranges(sentences: list[Span]) -> _RangeSet:
    """Sentences without a lower-case letter are headings ("CHAPTER I."), not prose naming entities."""
    return _RangeSet([(s.start, s.end) for s in sentences if not any(c.islower() for c in s.text)])


def entity_spans(
    text: str, start: int = 0, end: int | None = None, *, sentences: list[Span] | None = None
) -> list[Span]:
    """Capitalised-name mentions inside ``text[start:end]`` (rule-based, deterministic).

    Args:
        text: The source string; returned spans index into it.
        start: First character of the range to scan.
        end: End of the range (exclusive); ``None`` means ``len(text)``.
        sentences: Precomputed sentence spans of the range (saves re-splitting when the caller already
            has them); by default the range is split into paragraphs and those into sentences.

    Returns:
        Non-overlapping spans in order; a name may span one line break ("St.\\nPaul").
    """
    end = len(text) if end is None else end
    if sentences is None:
        sentences = [s for p in _paragraphs_in(text, start, end) for s in sentence_spans(text, p.start, p.end)]
    sentence_starts = {s.start for s in sentences}
    headings = _heading_ranges(sentences)
    candidates: list[tuple[Span, bool]] = []  # (span, starts a sentence)
    for m in _CAP_RUN.finditer(text, start, end):
        if headings.covers(m.start()):
            continue
        for part_start, part_end in _split_run(text, m.start(), m.end()):
            if (trimmed := _trim_run(text, part_start, part_end)) is None:
                continue
            s, e = trimmed
            if _is_name(name := text[s:e]):
                candidates.append((Span(s, e, name), s in sentence_starts))
    return _resolve_openers(text, candidates)


_OPENER_WORDS = frozenset({
    "Later", "Yesterday", "Today", "Tomorrow", "Meanwhile", "Afterwards", "Afterward", "Still", "Perhaps",
    "Once", "Thus", "Hence", "Here", "Soon", "Next", "Finally", "Indeed", "Besides", "Moreover", "However",
    "Instead", "Sometimes", "Often", "Again", "Even", "Only", "Every", "Each", "Such", "Many", "Several",
    "Dear", "Poor", "Old", "Young", "Ask", "Tell", "Let", "Did", "Does", "Do", "Was", "Were", "Is", "Are",
    "Has", "Have", "Had", "Will", "Would", "Should", "Could", "May", "Might", "Must", "Can", "Shall",
})


def _is_opener_word(word: str) -> bool:
    """Sentence-opening words that are capitalised only by position ("Later Jones" is not a name).

    Everything else keeps a multi-word opener whole: "Henry Sibley built ..." names Henry Sibley.
    """
    return word in _OPENER_WORDS or (word.endswith("ly") and len(word) > 4)


def _resolve_openers(text: str, candidates: list[tuple[Span, bool]]) -> list[Span]:
    """Decide names that start a sentence, where capitalisation says nothing, from mid-sentence evidence.

    A lone opener is kept if it also occurs mid-sentence alone or as the surname of a longer name
    ("Jones left. Later Dr. Jones …"); a longer opener loses its first word only when that word is a
    positional opener such as an adverb ("Later Jones" → "Jones") and does not also head a mid-sentence
    name; "Henry Sibley built …" and "Duke of York" stay whole.
    """
    mid = [span.text.split() for span, opener in candidates if not opener]
    surnames, heads = {w[-1] for w in mid}, {w[0] for w in mid}
    out = []
    for span, opener in candidates:
        words = span.text.split()
        if not opener:
            out.append(span)
        elif len(words) == 1:
            if span.text in surnames:
                out.append(span)
        elif words[0] in heads or words[0].endswith(".") or re.fullmatch(_CONNECTOR, words[1]) \
                or not _is_opener_word(words[0]):
            out.append(span)
        else:
            second = span.start + len(span.text) - len(span.text[len(words[0]) :].lstrip())
            if (rest := _trim_run(text, second, span.end)) is not None and _is_name(text[rest[0] : rest[1]]):
                out.append(Span(rest[0], rest[1], text[rest[0] : rest[1]]))
    return out
