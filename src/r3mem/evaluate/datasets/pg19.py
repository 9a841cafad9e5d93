"""PG-19 books (one Project Gutenberg text file per book): the `lm` and `recon` tasks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from r3mem.evaluate.datasets._io import (
    _check_exists,
    _check_limit,
)
from r3mem.text import read_text, strip_gutenberg


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
