"""Loaders for the benchmark formats in ``shared/data`` (any file in the same format works).

Each loader returns a list of small frozen dataclasses and fails with a one-line ``ValueError``
that starts with the file name and says what is wrong ("x.jsonl.gz: line 3 is not valid JSON"),
because an evaluation run that dies deep inside a model call on a bad record wastes hours.
Gzip is detected from the file's magic bytes, not its name, so ``.jsonl`` and ``.jsonl.gz``
copies both load. ``limit`` keeps only the first N records (books, essays) for smoke runs.

Formats are documented in each ``shared/data/<name>/README.md``.
"""

from __future__ import annotations

import gzip
import json
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from r3mem.text import current_encoding, read_text, strip_gutenberg

__all__ = [
    "Pg19Book",
    "load_pg19",
    "Passage",
    "NQExample",
    "load_nq_oracle",
    "KVExample",
    "load_kv",
    "LocomoTurn",
    "LocomoSession",
    "LocomoQA",
    "LocomoConversation",
    "load_locomo",
    "DEFAULT_NEEDLE",
    "DEFAULT_QUESTION",
    "DEFAULT_ANSWER",
    "NeedleSample",
    "NeedleHaystack",
    "load_needle",
]

_GZIP_MAGIC = b"\x1f\x8b"


# --------------------------------------------------------------------------------------------
# Reading and validation helpers
# --------------------------------------------------------------------------------------------


def _check_exists(path: Path) -> None:
    if not path.exists():
        raise ValueError(f"{path.name}: file not found in {path.parent}")
    if not path.is_file():
        raise ValueError(f"{path.name}: not a regular file")


def _check_limit(limit: int | None) -> None:
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be None or >= 0, got {limit}")


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(2) == _GZIP_MAGIC


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of a plain or gzipped UTF-8 file, with one-line errors."""
    _check_exists(path)
    gz = _is_gzip(path)
    opener = gzip.open if gz else open
    try:
        enc = current_encoding()
        with opener(path, "rt", encoding="utf-8-sig" if enc == "utf-8" else enc) as fh:
            yield from enumerate(fh, start=1)
    except UnicodeDecodeError:
        raise ValueError(f"{path.name}: not {'UTF-8' if current_encoding() == 'utf-8' else current_encoding()} text; "
                         "if it is in another encoding, pass it with --encoding (e.g. --encoding latin-1)") from None
    except (gzip.BadGzipFile, EOFError, zlib.error):
        raise ValueError(f"{path.name}: corrupt or truncated gzip data") from None


def _read_text(path: Path) -> str:
    return "".join(line for _, line in _iter_lines(path))


def _iter_jsonl(path: Path, limit: int | None) -> Iterator[tuple[str, dict]]:
    """(location, record) for each non-blank JSON-object line, at most ``limit`` of them."""
    _check_limit(limit)
    count = 0
    for lineno, line in _iter_lines(path):
        if limit is not None and count >= limit:
            return
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise ValueError(f"{path.name}: line {lineno} is not valid JSON") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path.name}: line {lineno} is not a JSON object")
        count += 1
        yield f"line {lineno}", record


def _read_json_list(path: Path, limit: int | None) -> list[tuple[str, dict]]:
    """(location, item) for the objects of a top-level JSON list, at most ``limit`` of them."""
    _check_limit(limit)
    text = _read_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path.name}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path.name}: top level must be a JSON list, got {type(data).__name__}")
    items = data if limit is None else data[:limit]
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"{path.name}: item {i} is not a JSON object")
        out.append((f"item {i}", item))
    return out


_TYPE_NAMES = {str: "a string", list: "a list", dict: "an object", int: "an integer", bool: "a boolean"}


def _get(record: dict, key: str, kind: type, name: str, where: str, default: Any = ...) -> Any:
    """``record[key]`` checked against ``kind``; a missing key is an error unless a default is given."""
    if key not in record:
        if default is not ...:
            return default
        raise ValueError(f"{name}: {where}: missing key '{key}'")
    value = record[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{name}: {where}: '{key}' must be {_TYPE_NAMES[kind]}, got {type(value).__name__}")
    return value


def _str_list(record: dict, key: str, name: str, where: str) -> tuple[str, ...]:
    values = _get(record, key, list, name, where)
    if not all(isinstance(v, str) for v in values):
        raise ValueError(f"{name}: {where}: '{key}' must be a list of strings")
    return tuple(values)


# --------------------------------------------------------------------------------------------
# PG-19 books
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pg19Book:
    """One book with the Project Gutenberg header and licence footer removed."""

    book_id: str
    title: str | None
    text: str
    path: Path


_PG_TITLE = re.compile(r"^Title:\s*(.+?)\s*$", re.MULTILINE)


def _load_book(path: Path) -> Pg19Book:
    """Book text normalised exactly as the training data builder reads corpora, then trimmed.

    ``read_text`` drops the BOM and normalises CRLF; ``strip_gutenberg`` keeps the lines strictly
    between the START and END markers (pg19/README.md) and leaves files without markers (the
    official, already stripped PG-19 release) unchanged. The title is looked up in the header only.
    """
    _check_exists(path)
    raw = read_text(path)
    text = strip_gutenberg(raw).strip()
    if not text:
        raise ValueError(f"{path.name}: no book text after removing the Gutenberg header and footer")
    title = _PG_TITLE.search(raw, 0, raw.find(text))
    return Pg19Book(path.stem, title.group(1) if title else None, text, path)


def load_pg19(path_or_dir: str | Path, limit: int | None = None) -> list[Pg19Book]:
    """One book file, or every ``*.txt`` in a folder (sorted by name), Gutenberg-stripped."""
    _check_limit(limit)
    path = Path(path_or_dir)
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise ValueError(f"{path.name}: folder holds no .txt books")
    else:
        files = [path]
    return [_load_book(f) for f in files[:limit]]


# --------------------------------------------------------------------------------------------
# NQ-Open oracle (Lost in the Middle) and KV retrieval
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Passage:
    """A Wikipedia passage; ``is_gold`` marks the one the NQ annotators linked to the answer."""

    title: str
    text: str
    is_gold: bool
    has_answer: bool


@dataclass(frozen=True)
class NQExample:
    question: str
    answers: tuple[str, ...]
    passages: tuple[Passage, ...]

    @property
    def gold_index(self) -> int | None:
        """Position of the gold passage (the oracle file has exactly one passage, the gold one)."""
        return next((i for i, p in enumerate(self.passages) if p.is_gold), None)

    @property
    def gold(self) -> Passage | None:
        i = self.gold_index
        return None if i is None else self.passages[i]


def _passage(ctx: Any, name: str, where: str) -> Passage:
    if not isinstance(ctx, dict):
        raise ValueError(f"{name}: {where}: each entry of 'ctxs' must be an object")
    return Passage(
        title=_get(ctx, "title", str, name, where, ""),
        text=_get(ctx, "text", str, name, where),
        is_gold=_get(ctx, "isgold", bool, name, where, False),
        has_answer=_get(ctx, "hasanswer", bool, name, where, False),
    )


def load_nq_oracle(path: str | Path, limit: int | None = None) -> list[NQExample]:
    """NQ-Open questions with answers and passages (oracle or 10/20/30-document files)."""
    path = Path(path)
    out = []
    for where, rec in _iter_jsonl(path, limit):
        answers = _str_list(rec, "answers", path.name, where)
        if not answers:
            raise ValueError(f"{path.name}: {where}: 'answers' is empty")
        ctxs = _get(rec, "ctxs", list, path.name, where)
        passages = tuple(_passage(c, path.name, where) for c in ctxs)
        out.append(NQExample(_get(rec, "question", str, path.name, where), answers, passages))
    return out


@dataclass(frozen=True)
class KVExample:
    """75 (or 140, 300) random UUID key/value pairs; the task is to return ``value`` for ``key``."""

    pairs: tuple[tuple[str, str], ...]
    key: str
    value: str

    @property
    def gold_index(self) -> int:
        """Position of the queried pair, for accuracy-by-position plots."""
        return next(i for i, (k, _) in enumerate(self.pairs) if k == self.key)


def _kv_pairs(rec: dict, name: str, where: str) -> tuple[tuple[str, str], ...]:
    records = _get(rec, "ordered_kv_records", list, name, where)
    ok = all(isinstance(p, list) and len(p) == 2 and all(isinstance(s, str) for s in p) for p in records)
    if not ok:
        raise ValueError(f"{name}: {where}: 'ordered_kv_records' must be a list of [key, value] string pairs")
    return tuple((k, v) for k, v in records)


def load_kv(path: str | Path, limit: int | None = None) -> list[KVExample]:
    """Key-value retrieval examples; checks the queried key is present with the stated value."""
    path = Path(path)
    out = []
    for where, rec in _iter_jsonl(path, limit):
        pairs = _kv_pairs(rec, path.name, where)
        key = _get(rec, "key", str, path.name, where)
        value = _get(rec, "value", str, path.name, where)
        if (key, value) not in pairs:
            raise ValueError(f"{path.name}: {where}: ('key', 'value') is not one of the ordered_kv_records")
        out.append(KVExample(pairs, key, value))
    return out


# --------------------------------------------------------------------------------------------
# LoCoMo
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocomoTurn:
    dia_id: str
    speaker: str
    text: str
    session: int
    date_time: str
    blip_caption: str | None = None  # image turns: the released caption stands in for the image


@dataclass(frozen=True)
class LocomoSession:
    index: int
    date_time: str
    turns: tuple[LocomoTurn, ...]


@dataclass(frozen=True)
class LocomoQA:
    """A question; category 5 (adversarial) items have ``answer=None`` and an ``adversarial_answer``."""

    question: str
    answer: str | None
    category: int
    evidence: tuple[str, ...]
    adversarial_answer: str | None = None


@dataclass(frozen=True)
class LocomoConversation:
    sample_id: str
    speaker_a: str
    speaker_b: str
    sessions: tuple[LocomoSession, ...]
    qa: tuple[LocomoQA, ...]

    @property
    def turns(self) -> list[LocomoTurn]:
        """All turns in conversation order, the order in which memory is written."""
        return [t for s in self.sessions for t in s.turns]

    def turn(self, dia_id: str) -> LocomoTurn:
        """The turn with this ``dia_id`` (e.g. "D3:7"); KeyError when absent."""
        for t in self.turns:
            if t.dia_id == dia_id:
                return t
        raise KeyError(f"{self.sample_id}: no turn {dia_id}")


_SESSION_KEY = re.compile(r"^session_(\d+)$")
_DIA_ID = re.compile(r"D:?(\d+):(\d+)")


def _evidence(values: list, name: str, where: str) -> tuple[str, ...]:
    """dia_ids, repairing the few malformed upstream entries.

    The official file has "D8:6; D9:17" (two ids in one string) and "D:11:26" (stray colon);
    both are split/repaired to "D<session>:<turn>". Entries with no id at all ("D") are dropped.
    """
    if not all(isinstance(v, str) for v in values):
        raise ValueError(f"{name}: {where}: 'evidence' must be a list of strings")
    return tuple(f"D{s}:{t}" for v in values for s, t in _DIA_ID.findall(v))


def _locomo_turn(raw: Any, session: int, date_time: str, name: str, where: str) -> LocomoTurn:
    if not isinstance(raw, dict):
        raise ValueError(f"{name}: {where}: session_{session} turns must be objects")
    return LocomoTurn(
        dia_id=_get(raw, "dia_id", str, name, where),
        speaker=_get(raw, "speaker", str, name, where),
        text=_get(raw, "text", str, name, where),
        session=session,
        date_time=date_time,
        blip_caption=_get(raw, "blip_caption", str, name, where, None),
    )


def _locomo_sessions(conv: dict, name: str, where: str) -> tuple[LocomoSession, ...]:
    """Sessions in numeric order; ``session_N_date_time`` keys without a ``session_N`` list are skipped."""
    numbers = sorted(int(m.group(1)) for k in conv if (m := _SESSION_KEY.match(k)))
    sessions = []
    for n in numbers:
        turns_raw = _get(conv, f"session_{n}", list, name, where)
        date_time = _get(conv, f"session_{n}_date_time", str, name, where, "")
        turns = tuple(_locomo_turn(t, n, date_time, name, where) for t in turns_raw)
        sessions.append(LocomoSession(n, date_time, turns))
    return tuple(sessions)


def _locomo_qa(raw: Any, name: str, where: str) -> LocomoQA:
    if not isinstance(raw, dict):
        raise ValueError(f"{name}: {where}: each 'qa' entry must be an object")
    answer = raw.get("answer")
    if answer is not None and not isinstance(answer, (str, int, float)):
        raise ValueError(f"{name}: {where}: qa 'answer' must be a string or number")
    return LocomoQA(
        question=_get(raw, "question", str, name, where),
        answer=None if answer is None else str(answer),
        category=_get(raw, "category", int, name, where),
        evidence=_evidence(_get(raw, "evidence", list, name, where, []), name, where),
        adversarial_answer=_get(raw, "adversarial_answer", str, name, where, None),
    )


def load_locomo(path: str | Path, limit: int | None = None) -> list[LocomoConversation]:
    """LoCoMo conversations (sessions of turns) with their QA items."""
    path = Path(path)
    out = []
    for where, rec in _read_json_list(path, limit):
        conv = _get(rec, "conversation", dict, path.name, where)
        out.append(
            LocomoConversation(
                sample_id=_get(rec, "sample_id", str, path.name, where),
                speaker_a=_get(conv, "speaker_a", str, path.name, where),
                speaker_b=_get(conv, "speaker_b", str, path.name, where),
                sessions=_locomo_sessions(conv, path.name, where),
                qa=tuple(_locomo_qa(q, path.name, where) for q in _get(rec, "qa", list, path.name, where)),
            )
        )
    return out


# --------------------------------------------------------------------------------------------
# Needle in a haystack
# --------------------------------------------------------------------------------------------

DEFAULT_NEEDLE = "The best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day."
DEFAULT_QUESTION = "What is the best thing to do in San Francisco?"
DEFAULT_ANSWER = "eat a sandwich and sit in Dolores Park on a sunny day"


@dataclass(frozen=True)
class NeedleSample:
    context: str
    needle: str
    question: str
    answer: str
    depth: float  # requested depth fraction in [0, 1]
    length: int  # length_fn(context): characters, or tokens when a token counter was given
    needle_start: int  # character offset of the needle, so reconstructions can be checked there


@dataclass(frozen=True)
class NeedleHaystack:
    """Essays plus a needle; ``build`` makes contexts of any length with the needle at any depth."""

    essays: tuple[str, ...]
    names: tuple[str, ...]
    needle: str = DEFAULT_NEEDLE
    question: str = DEFAULT_QUESTION
    answer: str = DEFAULT_ANSWER

    def haystack(self, n_chars: int) -> str:
        """The essays in order, repeated as often as needed, cut to ``n_chars`` characters."""
        pieces, total, i = [], 0, 0
        while total < n_chars:
            essay = self.essays[i % len(self.essays)]
            pieces.append(essay)
            total += len(essay) + 2
            i += 1
        return "\n\n".join(pieces)[:n_chars]

    def _insert(self, hay: str, depth: float) -> tuple[str, int]:
        """Needle placed after the last sentence end at or before the depth position.

        Backing off to a full stop (as the original harness does with tokens) keeps the needle
        from splitting a sentence, which would make the task easier to spot.
        """
        if depth >= 1.0:
            return f"{hay} {self.needle}", len(hay) + 1
        pos = hay.rfind(".", 0, int(depth * len(hay)) + 1) + 1
        if pos == 0:
            return f"{self.needle} {hay}", 0
        return f"{hay[:pos]} {self.needle}{hay[pos:]}", pos + 1

    def build(self, length: int, depth: float, length_fn: Callable[[str], int] = len) -> NeedleSample:
        """The longest context with ``length_fn(context) <= length`` and the needle at ``depth``.

        ``length_fn`` defaults to characters; pass a token counter (e.g.
        ``lambda s: len(tok(s, add_special_tokens=False).input_ids)``) for token lengths. The
        haystack size is found by bisection because token counts are not additive over cuts.
        """
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"needle depth must be in [0, 1], got {depth}")
        if length_fn(self.needle) + 1 > length:
            raise ValueError(f"needle length {length}: too short to hold the needle")

        if length_fn is len:  # characters: the size is known exactly
            context, start = self._insert(self.haystack(length - len(self.needle) - 1), depth)
            return NeedleSample(context, self.needle, self.question, self.answer, depth, len(context), start)

        def fits(n_chars: int) -> bool:
            return length_fn(self._insert(self.haystack(n_chars), depth)[0]) <= length

        lo, hi = 0, max(1, length)
        while fits(hi):  # token lengths allow more characters than ``length``
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        context, start = self._insert(self.haystack(lo), depth)
        return NeedleSample(context, self.needle, self.question, self.answer, depth, length_fn(context), start)


def load_needle(
    essay_dir: str | Path,
    needle: str = DEFAULT_NEEDLE,
    question: str = DEFAULT_QUESTION,
    answer: str = DEFAULT_ANSWER,
    limit: int | None = None,
    min_chars: int = 100,
) -> NeedleHaystack:
    """Essays (``*.txt``, sorted by name) for needle-in-a-haystack contexts.

    Files shorter than ``min_chars`` are skipped: the Paul Graham folder has a 55-byte ``rss.txt``
    stub that is not an essay.
    """
    _check_limit(limit)
    folder = Path(essay_dir)
    if not folder.is_dir():
        raise ValueError(f"{folder.name}: essay folder not found in {folder.parent}")
    if answer.lower() not in needle.lower():
        raise ValueError(f"needle {needle!r} does not contain the answer {answer!r}")
    essays = [(f.name, _read_text(f).strip()) for f in sorted(folder.glob("*.txt"))]
    essays = [(n, t) for n, t in essays if len(t) >= min_chars][:limit]
    if not essays:
        raise ValueError(f"{folder.name}: no essays of at least {min_chars} characters")
    names, texts = zip(*essays)
    return NeedleHaystack(tuple(texts), tuple(names), needle, question, answer)
