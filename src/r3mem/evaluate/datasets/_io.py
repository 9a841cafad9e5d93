"""Reading and validation helpers shared by the loaders: gzip sniffing, JSON lines and lists,
typed field access with one-line errors that name the file and the record.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from r3mem.text import current_encoding

_GZIP_MAGIC = b"\x1f\x8b"



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
