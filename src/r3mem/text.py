"""Reading raw text corpora: strict UTF-8, normalised newlines, Project Gutenberg headers removed.

Corpus files (e.g. PG-19 books) come with CRLF line endings, sometimes a
UTF-8 byte-order mark, and a Gutenberg licence header/footer that is not part of the book. Span offsets
produced by the data builder index into the text *after* this normalisation, so every reader here
returns exactly the same string for the same file (``"".join(iter_text_chunks(p, n)) == read_text(p)``).
"""

import codecs
import contextlib
import contextvars
import os
import re
from collections.abc import Iterator
from pathlib import Path

__all__ = ["read_text", "strip_gutenberg", "iter_text_chunks", "text_encoding", "current_encoding", "check_text",
           "without_nul"]

# The encoding corpus files are read in: UTF-8 unless a caller (the CLI's --encoding) says otherwise
# for the duration of a task, so that every loader below it reads the same way.
_ENCODING: contextvars.ContextVar[str] = contextvars.ContextVar("r3mem_text_encoding", default="utf-8")


@contextlib.contextmanager
def text_encoding(encoding: str):
    """Read corpus files in `encoding` (a codec name, e.g. "latin-1") inside this block."""
    name = codecs.lookup(encoding).name  # LookupError for an unknown name, before anything is read
    token = _ENCODING.set(name)
    try:
        yield name
    finally:
        _ENCODING.reset(token)


def current_encoding() -> str:
    return _ENCODING.get()

_BOM = codecs.BOM_UTF8
# "***START OF THE PROJECT GUTENBERG EBOOK X***" and "*** START OF THIS PROJECT GUTENBERG EBOOK X ***";
# the title may wrap, so the marker runs until the first line that ends with "***".
_MARKER = r"^\*{{3}}[ \t]*{kind}[ \t]+OF[ \t]+(?:THE|THIS)[ \t]+PROJECT[ \t]+GUTENBERG[ \t]+E-?BOOK\b"
_START = re.compile(_MARKER.format(kind="START"), re.IGNORECASE | re.MULTILINE)
_END = re.compile(_MARKER.format(kind="END"), re.IGNORECASE | re.MULTILINE)
_MARKER_CLOSE = re.compile(r"\*{3}[ \t\r]*$", re.MULTILINE)  # "\r": raw CRLF text works too
_MAX_MARKER_LINES = 4  # a wrapped marker never spans more lines than this
_BLOCK_BYTES = 1 << 16  # bytes read per step by iter_text_chunks


def _decode_error(path: str | os.PathLike, offset: int, err: UnicodeDecodeError) -> ValueError:
    enc = _ENCODING.get()
    return ValueError(
        f"{path}: invalid {'UTF-8' if enc == 'utf-8' else enc} at byte {offset} ({err.reason}); if the text is in "
        "another encoding, pass it with --encoding (e.g. --encoding latin-1)"
    )


def _normalise_newlines(text: str) -> str:
    """CRLF and lone CR become LF, so offsets do not depend on the platform that wrote the file."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def read_text(path: str | os.PathLike, errors: str = "strict") -> str:
    """Read a whole file as UTF-8 (or the `text_encoding` in force) with the BOM dropped and newlines
    normalised to ``\\n``.

    Args:
        path: File to read.
        errors: Codec error handler; ``"strict"`` (default) refuses invalid bytes, ``"replace"`` opts in
            to U+FFFD substitution.

    Raises:
        ValueError: The file is not valid UTF-8 (message names the file and the byte offset).
    """
    data = Path(path).read_bytes()
    enc = _ENCODING.get()
    skip = len(_BOM) if enc == "utf-8" and data.startswith(_BOM) else 0
    try:
        text = data[skip:].decode(enc, errors)
    except UnicodeDecodeError as err:
        raise _decode_error(path, skip + err.start, err) from None
    return _normalise_newlines(text)


def iter_text_chunks(path: str | os.PathLike, chunk_chars: int = 1 << 20, errors: str = "strict") -> Iterator[str]:
    """Stream a file as normalised text in pieces of ``chunk_chars`` characters (the last may be shorter).

    Memory stays O(chunk_chars + 64 KiB) whatever the file size: bytes are decoded incrementally, and a CR at
    the end of a block is held back until the next block shows whether it starts a CRLF pair.

    Raises:
        ValueError: ``chunk_chars`` is not positive, or the file is not valid UTF-8 (with byte offset).
    """
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars must be >= 1, got {chunk_chars}")
    enc = _ENCODING.get()
    decoder = codecs.getincrementaldecoder(enc)(errors)
    buffer = ""
    with open(path, "rb") as f:
        head = f.read(len(_BOM))
        offset = len(head) if head == _BOM and enc == "utf-8" else 0  # file offset of the first byte of `block`
        block = head[offset:] + f.read(_BLOCK_BYTES)
        while True:
            final = not block
            pending = len(decoder.getstate()[0])  # undecoded bytes carried over from the previous block
            try:
                buffer += decoder.decode(block, final=final)
            except UnicodeDecodeError as err:
                raise _decode_error(path, offset - pending + err.start, err) from None
            held = "\r" if not final and buffer.endswith("\r") else ""
            buffer = _normalise_newlines(buffer[: len(buffer) - len(held)])
            cut = len(buffer) - len(buffer) % chunk_chars
            yield from (buffer[i : i + chunk_chars] for i in range(0, cut, chunk_chars))
            buffer = buffer[cut:] + held
            if final:
                break
            offset += len(block)
            block = f.read(_BLOCK_BYTES)
    if buffer:
        yield buffer


def _find_start(text: str) -> int | None:
    """Offset just after the START marker (and its wrapped continuation lines), or None if absent."""
    m = _START.search(text)
    if m is None:
        return None
    line_end = m.start()
    for _ in range(_MAX_MARKER_LINES):
        nl = text.find("\n", line_end)
        line_end = len(text) if nl < 0 else nl
        if _MARKER_CLOSE.search(text, m.start(), line_end) or nl < 0:
            break
        line_end = nl + 1
    else:
        # No closing "***" within a few lines: the marker is the single line it started on.
        nl = text.find("\n", m.start())
        line_end = len(text) if nl < 0 else nl
    return min(line_end + 1, len(text))


def strip_gutenberg(text: str) -> str:
    """Keep only the lines strictly between the Project Gutenberg START and END markers.

    Both marker styles are handled ("***START OF THE PROJECT GUTENBERG EBOOK" and
    "*** START OF THIS PROJECT GUTENBERG EBOOK"), including titles that wrap onto the next line. With
    only one marker present, the text is cut on that side only; with none, it is returned unchanged.
    The result keeps its line endings, so it ends with the newline of the last kept line.
    """
    start = _find_start(text)
    begin = 0 if start is None else start
    end = _END.search(text, begin)
    return text[begin : len(text) if end is None else end.start()]


def check_text(kind: str, text: object, *, non_empty: bool = False) -> str:
    """`text` if it is a str the tokenizer and the store can take; one clear error otherwise.

    Raises TypeError for a non-str and ValueError for text that is not valid Unicode (a lone surrogate,
    e.g. from surrogateescape decoding or bad JSON) or, with `non_empty`, is only whitespace.
    """
    if not isinstance(text, str):
        raise TypeError(f"{kind}: text must be str, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        raise ValueError(f"{kind}: not valid Unicode text (lone surrogate {bad!r} at character {e.start})") from None
    if non_empty and not text.strip():
        raise ValueError(f"{kind} must not be empty")
    return text


MAX_QUERY_CHARS = 2000
"""Longest query or question: a slot is found by a few words; a longer text is refused, not silently cut."""


def check_query(kind: str, text: object, *, non_empty: bool = False) -> str:
    """`check_text`, and at most `MAX_QUERY_CHARS` characters."""
    text = check_text(kind, text, non_empty=non_empty)
    if len(text) > MAX_QUERY_CHARS:
        raise ValueError(f"{kind}: at most {MAX_QUERY_CHARS} characters, got {len(text)}")
    return text


def without_nul(text: str) -> str:
    """`text` without NUL characters, which carry no meaning for a tokenizer (dropped before writing)."""
    return text.replace("\x00", "") if "\x00" in text else text
