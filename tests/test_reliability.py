"""Reliability and security under bad input, corrupted files, faults and load, with nothing lost.

1. bad text: a streamed 1M-character file (lazy, linear), degenerate and hostile strings through every
   text entry point, invalid UTF-8 / empty files through `r3mem write`, `train` and `eval`;
2. bad adapter folders, refused with one AdapterError before any tensor is used;
3. a stateful property test of MemoryStore against a plain-Python model of it;
4. `r3mem serve` killed with SIGKILL mid-stream and restarted; read-only and full stores through HTTP;
5. a small run of `benchmarks/service/load_test.py` (the full run writes benchmarks/service/results/);
6. two processes writing the same text produce byte-identical memory files and recall.

Tiny in-memory models throughout; torch on one thread.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import sqlite3
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import torch
from conftest import perturb_trainables, tiny_cfg
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from sqlalchemy import event
from typer.testing import CliRunner

from r3mem import writer
from r3mem.adapter import META, WEIGHTS, AdapterError, adapter_hash, read_adapter
from r3mem.cli.main import app as cli
from r3mem.config import ConfigError
from r3mem.engine import R3Mem
from r3mem.memfile import MemoryFileError
from r3mem.service import create_app
from r3mem.store import Conflict, MemoryStore, NotFound, SlotRecord, StoreError
from r3mem.text import iter_text_chunks
from r3mem.tiny import SAMPLE_TEXT, tiny_model, tiny_tokenizer

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
ADMIN = "admin-secret"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("r3mem_load_test", ROOT / "benchmarks" / "service" / "load_test.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


load_test = _load_benchmark()


@contextmanager
def deadline(seconds: float):
    """Fail with TimeoutError instead of hanging (SIGALRM; torch returns to Python between ops)."""
    def expired(signum, frame):
        raise TimeoutError(f"did not finish within {seconds} s: a hang or a quadratic path")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def all_finite(mem) -> bool:
    return all(torch.isfinite(t).all() for t in [mem.doc_state, *(s.state for s in mem.paragraphs + mem.entities)])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def one_error_line(output: str) -> str:
    """The single `error:` line of a failed CLI run (library warnings printed before it are ignored)."""
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output
    return errors[0]


# =============================================================================== 1. bad text input


def _book(path: Path, min_chars: int) -> list[str]:
    """A ≥ min_chars file of paragraphs (every 7th mixes scripts, emoji and control characters)."""
    base = SAMPLE_TEXT.replace("\n\n", " ")
    paras, n, i = [], 0, 0
    while n < min_chars:
        p = (
            f"Chapter {i}. {base}"
            if i % 7
            else f"Kapitel {i}: Zürich, Ελλάδα, Москва, 東京 😀👩‍👩‍👧 عربى\x07\x1b[0m {base}"
        )
        paras.append(p)
        n += len(p) + 2
        i += 1
    path.write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    return paras


def test_million_character_file_streams_lazily_and_completes(tmp_path, tok, monkeypatch):
    path = tmp_path / "book.txt"
    paras = _book(path, 1_000_000)
    size = path.stat().st_size
    # a 1-layer model and 256-token segments keep this to seconds; the code paths are the full hierarchy's
    eng = R3Mem.from_base(tiny_model("llama", hidden=32, layers=1), tok,
                          tiny_cfg(segment_len=256, max_paragraph_tokens=256, paragraph_ratio=16.0, entity_ratio=16.0))
    calls, longest_pending = [], [0]
    real = writer.write_text

    def spy(model, tokenizer, mem, text):
        calls.append(len(text))
        out = real(model, tokenizer, mem, text)
        longest_pending[0] = max(longest_pending[0], len(out.pending_text))
        return out

    monkeypatch.setattr("r3mem.engine.write_text", spy)
    yielded = []

    def chunks():
        for i, c in enumerate(iter_text_chunks(path, 1 << 16)):
            assert len(calls) == i, "write asked for a chunk before it had written the previous one"
            yielded.append(len(c))
            yield c

    with deadline(240):
        t0 = time.perf_counter()
        mem = eng.flush(eng.write(chunks()))
        elapsed = time.perf_counter() - t0
    assert sum(yielded) >= 1_000_000 and len(yielded) >= 15
    assert max(calls) <= 1 << 16  # never more than one chunk of text at a time ...
    assert longest_pending[0] < 5_000  # ... and only the unfinished paragraph held back
    groups: dict[str, list] = {}
    for i, s in enumerate(mem.paragraphs):  # "p12", or "p12.0", "p12.1" for a paragraph over max_paragraph_tokens
        groups.setdefault(s.key.split(".")[0], []).append(s)
        assert s.key.split(".")[0] == f"p{i - len(groups[s.key.split('.')[0]]) + 1}"  # keys count slots
    assert len(groups) == len(paras) and len(mem.paragraphs) > len(paras) and mem.offset == sum(yielded)
    assert all_finite(mem)
    text = path.read_text(encoding="utf-8")  # only now, to check spans
    pieces = list(groups.values())
    for k in (0, 1, 7, len(paras) // 2, len(paras) - 1):
        assert "".join(text[s.start:s.end] for s in pieces[k]) == paras[k]
    assert eng.from_bytes(eng.to_bytes(mem)).n_tokens == mem.n_tokens
    assert isinstance(eng.recall(mem, index=-1).text, str)
    print(f"\n1M-char write: {size} bytes, {len(yielded)} chunks, {mem.n_tokens} tokens, {elapsed:.1f} s")


def test_one_huge_paragraph_costs_linear_decoding(tok, monkeypatch):
    """A long text without blank lines is one paragraph split into many slots; finding each split's
    character span used to decode the whole prefix every time (quadratic: 7 s for a 100k-character
    paragraph, about ten minutes for 1M). Count the tokens decoded."""
    eng = R3Mem.from_base(tiny_model("llama", hidden=32, layers=1), tok, tiny_cfg(max_paragraph_tokens=16))
    text = ("One long line of words, no paragraph break at all; " * 400).strip()
    n_tokens = len(tok(text, add_special_tokens=False)["input_ids"])
    decoded = [0]
    real_decode = type(tok).decode

    def counting(self, ids, *a, **k):
        decoded[0] += len(ids)
        return real_decode(self, ids, *a, **k)

    monkeypatch.setattr(type(tok), "decode", counting)
    with deadline(120):
        mem = eng.flush(eng.write(text))
    monkeypatch.undo()
    assert len(mem.paragraphs) == -(-n_tokens // 16) and all_finite(mem)
    assert decoded[0] <= 3 * n_tokens, f"decoded {decoded[0]} tokens for a {n_tokens}-token paragraph"
    ends = [(s.start, s.end) for s in mem.paragraphs]
    assert ends[0][0] == 0 and ends[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(ends, ends[1:]))  # split slots tile the paragraph
    assert "".join(text[s:e] for s, e in ends) == text


@pytest.mark.parametrize("cut", [1, 40, 75, 76, 120, 200])
def test_split_paragraphs_write_incrementally_like_whole(tok, cut):
    """write(a) then write(b) == write(a + b) also when paragraphs are split into several slots: keys
    and entity parents count slots, whatever the cut (they used to count paragraphs of one write call)."""
    eng = R3Mem.from_base(tiny_model("llama"), tok, tiny_cfg(max_paragraph_tokens=16))
    text = ("Henry Sibley built a stone house near the ferry, and Saint Paul grew quickly.\n\n"
            "In winter Mendota froze.\n\nTraders came by canoe to Saint Paul and met Henry Sibley.\n\nTail")
    whole = eng.write(text)
    assert eng.to_bytes(eng.write(text[cut:], eng.write(text[:cut]))) == eng.to_bytes(whole)
    assert [s.key for s in whole.paragraphs] == ["p0.0", "p0.1", "p0.2", "p3", "p4.0", "p4.1"]
    assert [(e.key, e.parent) for e in whole.entities] == [("Henry Sibley", 0), ("Saint Paul", 0), ("Mendota", 3)]


MIXED = list("abc XYZ.,\n\t ") + ["é", "中", "文", "😀", "👩‍👩‍👧", "\x07", "\x1b", "ß", "Ω", "\u200b", "\ufffd", "ع",
                                   "ह", "\u202e", "\x00"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(MIXED), max_size=200), st.integers(1, 7))
def test_split_offsets_equal_prefix_decoding(chars, limit):
    """The linear span computation gives exactly the old prefix-decoding offsets (byte-level tokenizer,
    multi-byte characters split across tokens)."""
    tok = tiny_tokenizer()
    ids = tok("".join(chars), add_special_tokens=False)["input_ids"]
    n = len(range(0, max(1, len(ids)), limit))
    assert writer._chunk_offsets(tok, ids, limit, n) == [len(tok.decode(ids[:j * limit])) for j in range(n)]


DEGENERATE = {
    "empty": "", "spaces": "   ", "blank lines": "\n\n\n\n", "crlf breaks": "a\r\n\r\nb\r\n\r\n", "tab": "\t",
    "ideographic space": "\u3000", "zero-width space": "\u200b", "one token": "a", "one emoji": "😀",
    "eos marker as text": "<|end|>", "nul only": "\x00\x00", "nul inside": "nul\x00byte\n\nz",
    "controls": "\x01\x02\x07\x08\x0b\x0c\x1b[31mred\x1b[0m\x7f", "bidi override": "\u202eevil\u202c text",
    "mixed scripts": "Zürich Ελλάδα Москва 東京 עברית हिन्दी 😀👩‍👩‍👧\n\nHenry Sibley in 東京.",
    "no spaces": "x" * 3000, "only punctuation": ".!?" * 50,
}


def test_degenerate_texts_through_every_entry_point(trained_like):
    eng = trained_like
    with deadline(120):
        mems = eng.write_many(list(DEGENERATE.values()))
        for (name, text), many in zip(DEGENERATE.items(), mems):
            one = eng.write(text)
            assert eng.to_bytes(one) == eng.to_bytes(eng.write(iter([text[:1], text[1:]]))), name
            assert [s.key for s in many.paragraphs] == [s.key for s in one.paragraphs], name
            mem = eng.flush(one)
            assert all_finite(mem), name
            assert eng.to_bytes(eng.from_bytes(eng.to_bytes(mem))) == eng.to_bytes(mem), name
            for s in mem.paragraphs:  # spans point into the text written (NUL dropped)
                assert text.replace("\x00", "")[s.start:s.end].strip(), name
            assert isinstance(eng.recall(mem, level="document", max_new_tokens=3).text, str)
            assert isinstance(eng.recall(mem, level="entity").text, str)
            if mem.paragraphs:
                assert isinstance(eng.recall(mem, index=0, max_new_tokens=3).text, str)
            if text.strip():
                rec = eng.recall(mem, query=text, top_k=2, max_new_tokens=3)
                assert len(rec.slots) == min(2, len(mem.paragraphs) + bool(mem.pending_text.strip()))
                assert isinstance(eng.generate(text, mem, max_new_tokens=2), str)
                assert isinstance(eng.read(text, max_new_tokens=2), str)


def test_overlong_query_and_prompt_are_bounded(trained_like, monkeypatch):
    """A query or reader prompt of the service's whole body limit must neither hang nor exhaust memory:
    the query is cut to max_paragraph_tokens, the reader prompt to the model's window (their ends kept)."""
    eng = trained_like
    mem = eng.write(SAMPLE_TEXT)
    long_text = "Where did Henry Sibley build his stone house, and when? " * 18_000  # ~1 MB
    with deadline(60):
        rec = eng.recall(mem, query=long_text, top_k=2, max_new_tokens=4)
        assert len(rec.slots) == 2
        seen = []
        real_generate = type(eng.model.lm).generate

        def generate(self, input_ids, **k):
            seen.append(input_ids.shape[1])
            return real_generate(self, input_ids=input_ids, **k)

        monkeypatch.setattr(type(eng.model.lm), "generate", generate)
        assert isinstance(eng.answer(long_text, mem, max_new_tokens=4)[0], str)
    assert seen == [1024 - 4]  # tiny model: 1024 positions


def test_lone_surrogates_raise_one_clear_error(trained_like):
    eng = trained_like
    mem = eng.write(SAMPLE_TEXT)
    before = eng.to_bytes(mem)
    calls = [
        lambda: eng.write("ok\n\nbad \ud800 text", mem),
        lambda: eng.write(iter(["fine\n\n", "\udcff"]), mem),
        lambda: eng.write_many(["fine", "\ud83d"], [mem, mem]),
        lambda: eng.recall(mem, query="where \udc80"),
        lambda: eng.generate("\ud800", mem),
        lambda: eng.read("\ud800"),
        lambda: eng.answer("who \ud800?", mem),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="not valid Unicode text.*lone surrogate") as e:
            call()
        assert "\n" not in str(e.value)
    assert eng.to_bytes(mem) == before  # the memory passed in is untouched


@pytest.fixture
def cli_env(monkeypatch, tmp_path):
    monkeypatch.setenv("R3MEM_BASE_MODEL", "tiny-llama")
    monkeypatch.setenv("R3MEM_HOME", str(tmp_path / "home"))
    for var in ("R3MEM_MODEL", "R3MEM_DEBUG", "R3MEM_USER"):
        monkeypatch.delenv(var, raising=False)


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_write_bad_and_odd_files(tmp_path, cli_env):
    db, mem_file = tmp_path / "s.db", tmp_path / "m.r3mem"
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Zürich is fine\n\nbut this is Latin-1: Z\xfcrich\n".encode()[:20] + b"Z\xfcrich\n")
    for target in (["--memory", mem_file], ["--session", "s", "--store", db]):
        r = run_cli("write", bad, *target)
        assert r.exit_code == 1
        line = one_error_line(r.output)
        assert "latin1.txt: invalid UTF-8 at byte 21" in line, line
    assert not mem_file.exists()
    with MemoryStore(db) as store:
        assert store.list_users() == []  # nothing written, not even the session
    for name, data in [("empty", b""), ("blank", b" \n\n\t\n"), ("bom only", b"\xef\xbb\xbf")]:
        f = tmp_path / f"{name}.txt"
        f.write_bytes(data)
        r = run_cli("write", f, "--session", "s", "--store", db)
        assert r.exit_code == 1 and "nothing to write" in one_error_line(r.output), name
    odd = tmp_path / "odd.txt"
    odd.write_bytes("NUL\x00inside\n\n\x07bell \x1b[31mred\x1b[0m\n\nZürich 東京 😀\r\n\r\nA".encode())
    r = run_cli("write", odd, "--session", "s", "--store", db, "--json")
    assert r.exit_code == 0, r.output
    assert run_cli("write", odd, "--memory", mem_file).exit_code == 0
    with MemoryStore(db) as store:
        turns = store.list_turns("local", "s")
        assert [t.text for t in turns] == ["NUL\x00inside", "\x07bell \x1b[31mred\x1b[0m", "Zürich 東京 😀", "A"]
        assert store.get_memory("local", "s").through_turn == 4


def test_cli_train_with_empty_or_invalid_data(tmp_path, cli_env):
    files = {"empty.txt": b"", "blank.txt": b"  \n\n \n", "latin1.txt": b"caf\xe9 au lait\n\nmore text here\n"}
    expected = {
        "empty.txt": "no text to train on",
        "blank.txt": "no text to train on",
        "latin1.txt": "invalid UTF-8 at byte 3",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        r = run_cli(
            "train",
            "--config",
            "tiny",
            "--out",
            tmp_path / f"run-{name}",
            "--set",
            f"train_files=[{tmp_path / name}]",
            "--set",
            "steps=1",
        )
        assert r.exit_code == 1, r.output
        line = one_error_line(r.output)
        assert name in line and expected[name] in line, line
        assert not (tmp_path / f"run-{name}" / "adapter").exists()


def test_cli_eval_with_empty_or_invalid_data(tmp_path, cli_env):
    """test_evaluate covers malformed JSON and an empty kv file; here: invalid UTF-8 and empty data for every task."""
    latin1 = b"caf\xe9"
    books, empty_books, essays = tmp_path / "books", tmp_path / "empty_books", tmp_path / "essays"
    for d in (books, empty_books, essays):
        d.mkdir()
    (books / "b.txt").write_bytes(b"Some book text.\n\n" + latin1)
    (empty_books / "e.txt").write_bytes(b"")
    (essays / "e.txt").write_bytes(b"An essay " * 30 + latin1)
    jsonl = tmp_path / "bad.jsonl"
    jsonl.write_bytes(b'{"question": "' + latin1 + b'", "answers": ["a"], "ctxs": []}\n')
    loc = tmp_path / "bad.json"
    loc.write_bytes(b'[{"x": "' + latin1 + b'"}]')
    empty = tmp_path / "empty.json"
    empty.write_bytes(b"")
    cases = [
        ("lm", books, "b.txt"),
        ("recon", books, "b.txt"),
        ("needle", essays, "e.txt"),
        ("rag", jsonl, "bad.jsonl"),
        ("kv", jsonl, "bad.jsonl"),
        ("locomo", loc, "bad.json"),
        ("lm", empty_books, "e.txt"),
        ("recon", empty_books, "e.txt"),
        ("needle", empty_books, "empty_books"),
        ("locomo", empty, "empty.json"),
        ("rag", empty, "empty.json"),
    ]
    for task, data, name in cases:
        r = run_cli("eval", task, "--data", data, "--limit", "1", "--methods", "r3mem")
        assert r.exit_code == 1, (task, data, r.output)
        line = one_error_line(r.output)
        assert name in line, (task, line)
        assert len(r.output.strip().splitlines()) == 1, r.output  # refused before any model was loaded


# =============================================================================== 2. bad adapter folders


@pytest.fixture
def adapter_dir(tmp_path, tok):
    eng = R3Mem.from_base(tiny_model("llama"), tok, tiny_cfg(base_model="tiny-llama"))
    perturb_trainables(eng.model)
    h = eng.save_adapter(tmp_path / "adapter", trained=True)
    return tmp_path / "adapter", h


def _edit_meta(path: Path, **changes):
    meta = json.loads((path / META).read_text())
    for k, v in changes.items():
        if v is KeyError:
            meta.pop(k)
        else:
            meta[k] = v
    (path / META).write_text(json.dumps(meta))


def _rewrite_weights(path: Path, fn):
    """Re-save the weights after fn(state), with a matching hash: a consistent but unusable folder."""
    from safetensors.torch import save

    _, state, meta = read_adapter(path)
    state = {k: v.clone() for k, v in state.items()}
    fn(state)
    (path / WEIGHTS).write_bytes(save(state))
    _edit_meta(path, adapter_hash=adapter_hash(state))


def _flip(path: Path, where: str):
    data = bytearray(path.read_bytes())
    n = struct.unpack("<Q", bytes(data[:8]))[0]
    i = {"tensor data": len(data) - 3, "header": 8 + n // 2, "length": 2}[where]
    data[i] ^= 0x10
    path.write_bytes(bytes(data))


ADAPTER_DAMAGE = {
    "weights truncated": (lambda p: (p / WEIGHTS).write_bytes((p / WEIGHTS).read_bytes()[:-100]), "corrupted weights"),
    "weights empty": (lambda p: (p / WEIGHTS).write_bytes(b""), "corrupted weights"),
    "weights header cut": (lambda p: (p / WEIGHTS).write_bytes((p / WEIGHTS).read_bytes()[:40]), "corrupted weights"),
    "bit flip in tensor data": (lambda p: _flip(p / WEIGHTS, "tensor data"), "hash mismatch"),
    "bit flip in tensor header": (lambda p: _flip(p / WEIGHTS, "header"), "corrupted weights|hash mismatch"),
    "bit flip in header length": (lambda p: _flip(p / WEIGHTS, "length"), "corrupted weights"),
    "weights missing": (lambda p: (p / WEIGHTS).unlink(), "not an r3mem adapter folder"),
    "header missing": (lambda p: (p / META).unlink(), "not an r3mem adapter folder"),
    "header not JSON": (lambda p: (p / META).write_text("{format: r3mem"), "not valid JSON"),
    "header not UTF-8": (lambda p: (p / META).write_bytes(b'{"format": "\xff"}'), "not valid JSON"),
    "header is a list": (lambda p: (p / META).write_text("[1, 2]"), "not an r3mem adapter header"),
    "header of another format": (lambda p: _edit_meta(p, format="r3mem-memory"), "not an r3mem adapter header"),
    "future format version": (lambda p: _edit_meta(p, format_version=2), "newer than this r3mem supports"),
    "format version 0": (lambda p: _edit_meta(p, format_version=0), "invalid adapter format version 0"),
    "format version a string": (lambda p: _edit_meta(p, format_version="1"), "invalid adapter format version '1'"),
    "config missing": (lambda p: _edit_meta(p, config=KeyError), "invalid config"),
    "config invalid": (lambda p: _edit_meta(p, config={"num_mem_tokens": -1}), "invalid config.*num_mem_tokens"),
    "config unknown field": (lambda p: _edit_meta(p, config={"warp_drive": 1}), "invalid config.*warp_drive"),
    "hash missing": (lambda p: _edit_meta(p, adapter_hash=KeyError), "hash mismatch"),
    "NaN weights, consistent hash": (
        lambda p: _rewrite_weights(p, lambda s: s[sorted(s)[0]].view(-1).__setitem__(0, float("nan"))),
        "NaN or infinite",
    ),
}


@pytest.mark.parametrize("damage", list(ADAPTER_DAMAGE), ids=lambda d: d.replace(" ", "-"))
def test_damaged_adapter_is_refused_before_any_tensor_is_used(adapter_dir, damage, monkeypatch):
    path, _ = adapter_dir
    corrupt, message = ADAPTER_DAMAGE[damage]
    corrupt(path)
    with pytest.raises(AdapterError, match=message) as e:
        read_adapter(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)

    def must_not_run(*a, **k):
        raise AssertionError("the base model was loaded for an adapter that fails its checks")

    monkeypatch.setattr("r3mem.engine.load_base", must_not_run)
    with pytest.raises(AdapterError, match=message):
        R3Mem.from_pretrained(path)


def test_good_adapter_loads_and_foreign_ones_are_refused(adapter_dir, tmp_path, tok, monkeypatch):
    path, h = adapter_dir
    eng = R3Mem.from_pretrained(path)  # base_model "tiny-llama" comes from the stored config
    assert eng.adapter_hash == h and eng.trained and eng.base_model_id.startswith("tiny-llama|")
    # written for another base model (same parameter names and shapes: qwen2 vs llama)
    other = tmp_path / "qwen"
    R3Mem.from_base(tiny_model("qwen2"), tok, tiny_cfg(base_model="tiny-qwen2")).save_adapter(other)
    used = []
    monkeypatch.setattr(R3Mem, "load_adapter_state", lambda self, state, source="": used.append(source))
    with pytest.raises(AdapterError, match="trained for base model 'tiny-qwen2"):
        R3Mem.from_pretrained(other, base_model="tiny-llama")
    # a header edited to claim another base model
    claimed = tmp_path / "claimed"
    shutil.copytree(path, claimed)
    _edit_meta(claimed, base_model_id="smollm2|llama|d=576|L=30|V=49152")
    with pytest.raises(AdapterError, match="trained for base model 'smollm2"):
        R3Mem.from_pretrained(claimed)
    assert used == []  # refused before the adapter's tensors went anywhere near the model
    monkeypatch.undo()
    # a consistent folder whose tensors do not fit the config it names
    wrong_shape = tmp_path / "shape"
    shutil.copytree(path, wrong_shape)
    meta = json.loads((wrong_shape / META).read_text())
    _edit_meta(wrong_shape, config={**meta["config"], "num_mem_tokens": 8})
    with pytest.raises(AdapterError, match="shape"):
        R3Mem.from_pretrained(wrong_shape)
    missing = tmp_path / "missing"
    shutil.copytree(path, missing)
    _rewrite_weights(missing, lambda s: s.pop(sorted(s)[-1]))
    with pytest.raises(AdapterError, match="does not fit this model"):
        R3Mem.from_pretrained(missing)
    with pytest.raises(AdapterError, match="does not exist"):
        R3Mem.from_pretrained(tmp_path / "nowhere")


def test_levels_override_gives_the_single_pass_write(adapter_dir, tmp_path):
    path, h = adapter_dir
    full, doc = R3Mem.from_pretrained(path), R3Mem.from_pretrained(path, levels="document")
    assert doc.adapter_hash == h and doc.config.hierarchy_levels == ("document",)
    mf, md = full.write(SAMPLE_TEXT), doc.write(SAMPLE_TEXT)
    assert mf.paragraphs and not md.paragraphs and not md.entities
    torch.testing.assert_close(md.doc_state, mf.doc_state)  # the retention pass does not depend on the slots
    with pytest.raises(ValueError, match="not enabled"):
        doc.recall(md, level="paragraph")
    doc.save(md, tmp_path / "doc.r3mem")
    with pytest.raises(MemoryFileError, match="memory_layout"):  # another layout: refused, not misread
        full.load(tmp_path / "doc.r3mem")
    with pytest.raises(ConfigError, match="hierarchy_levels"):
        R3Mem.from_pretrained(path, levels=["paragraph"])


# =============================================================================== 3. store property test

USERS, SIDS = ("ann", "bob", "cy"), ("s1", "s2", "shared")
turn_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)


class StoreModel(RuleBasedStateMachine):
    """Random create/append/put/delete/export/import sequences against a dict model of the store."""

    def __init__(self):
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="r3mem-sm-")
        self.store = MemoryStore(Path(self.dir) / "store.db")
        self.users: dict[str, dict] = {}  # user -> {"token", "sessions": {sid: {"turns", "count", "memory", "meta"}}}
        self.exports: list[dict] = []
        self.revoked: list[str] = []

    def teardown(self):
        self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _session(self, user, sid):
        return self.users.get(user, {}).get("sessions", {}).get(sid)

    def _user(self, data) -> str:
        """Mostly an existing user (so that rules get past NotFound), sometimes any id."""
        if self.users and data.draw(st.integers(0, 9), label="existing user?") > 0:
            return data.draw(st.sampled_from(sorted(self.users)), label="user")
        return data.draw(st.sampled_from(USERS), label="user")

    def _target(self, data) -> tuple[str, str]:
        """(user, session id), mostly an existing session."""
        user = self._user(data)
        own = sorted(self.users.get(user, {}).get("sessions", {}))
        if own and data.draw(st.integers(0, 9), label="existing session?") > 0:
            return user, data.draw(st.sampled_from(own), label="session")
        return user, data.draw(st.sampled_from(SIDS), label="session")

    @initialize()
    def first_user(self):
        self.store.create_user("ann", token="tok-ann-initial")
        self.store.create_session("ann", "s1")
        self.users["ann"] = {
            "token": "tok-ann-initial",
            "sessions": {"s1": {"turns": [], "count": 0, "memory": None, "meta": {}}},
        }

    @rule(user=st.sampled_from(USERS), with_token=st.booleans())
    def create_user(self, user, with_token):
        token = f"tok-{uuid.uuid4().hex}" if with_token else None
        if user in self.users:
            with pytest.raises(Conflict):
                self.store.create_user(user, token=token)
            return
        self.store.create_user(user, token=token)
        self.users[user] = {"token": token, "sessions": {}}

    @rule(data=st.data(), sid=st.sampled_from(SIDS),
          meta=st.dictionaries(st.text(max_size=3), st.integers(-5, 5) | st.text(max_size=3), max_size=2))
    def create_session(self, data, sid, meta):
        user = self._user(data)
        if user not in self.users:
            with pytest.raises(NotFound):
                self.store.create_session(user, sid, meta)
        elif self._session(user, sid) is not None:
            with pytest.raises(Conflict):
                self.store.create_session(user, sid, meta)
        else:
            assert self.store.create_session(user, sid, meta).turn_count == 0
            self.users[user]["sessions"][sid] = {"turns": [], "count": 0, "memory": None, "meta": meta}

    @rule(data=st.data(), text=turn_text, speaker=st.sampled_from(["user", "assistant", "Caroline"]))
    def append_turn(self, data, text, speaker):
        user, sid = self._target(data)
        s = self._session(user, sid)
        if s is None:
            with pytest.raises(NotFound):
                self.store.append_turn(user, sid, text, speaker)
            return
        turn = self.store.append_turn(user, sid, text, speaker)
        s["count"] += 1
        assert turn.index == s["count"]
        s["turns"].append((turn.index, speaker, text))

    @rule(data=st.data(), blob=st.binary(max_size=48), n_slots=st.integers(0, 3), through=st.integers(0, 6),
          expected=st.sampled_from(["none", "current", "current", "stale"]))
    def put_memory(self, data, blob, n_slots, through, expected):
        user, sid = self._target(data)
        slots = [SlotRecord("paragraph", f"p{i}", i, i + 1, turn_id=i + 1, text=f"slot {i}") for i in range(n_slots)]
        s = self._session(user, sid)
        if s is None:
            with pytest.raises(NotFound):
                self.store.put_memory(user, sid, blob, slots, through)
            return
        current = s["memory"][1] if s["memory"] else 0
        version = {"none": None, "current": current, "stale": current + 1}[expected]
        if through > s["count"]:  # a memory cannot cover turns that do not exist
            with pytest.raises(ValueError, match="beyond the last turn"):
                self.store.put_memory(user, sid, blob, slots, through, expected_version=version)
            return
        if expected == "stale":
            with pytest.raises(Conflict):
                self.store.put_memory(user, sid, blob, slots, through, expected_version=version)
            return
        assert self.store.put_memory(user, sid, blob, slots, through, expected_version=version) == current + 1
        s["memory"] = (blob, current + 1, through, slots)

    @rule(data=st.data())
    def delete_session(self, data):
        if data.draw(st.integers(0, 2), label="delete now?"):  # rarer than writes, or little would accumulate
            return
        user, sid = self._target(data)
        if self._session(user, sid) is None:
            with pytest.raises(NotFound):
                self.store.delete_session(user, sid)
            return
        self.store.delete_session(user, sid)
        del self.users[user]["sessions"][sid]

    @rule(data=st.data())
    def export(self, data):
        user, sid = self._target(data)
        s = self._session(user, sid)
        if s is None:
            with pytest.raises(NotFound):
                self.store.export_session(user, sid)
            return
        data = json.loads(json.dumps(self.store.export_session(user, sid)))
        assert [(t["index"], t["speaker"], t["text"]) for t in data["turns"]] == s["turns"]
        assert data["session"]["turn_count"] == s["count"] and data["session"]["meta"] == s["meta"]
        if s["memory"] is None:
            assert data["memory"] is None
        else:
            assert base64.b64decode(data["memory"]["blob_b64"]) == s["memory"][0]
            assert (data["memory"]["version"], data["memory"]["through_turn"]) == s["memory"][1:3]
        self.exports.append(data)

    @precondition(lambda self: self.exports)
    @rule(data=st.data(), pick=st.integers(0, 50))
    def import_session(self, data, pick):
        user = self._user(data)
        free = [x for x in SIDS if self._session(user, x) is None]
        into = data.draw(
            st.sampled_from([None, *free]) if free and data.draw(st.booleans()) else st.sampled_from((None, *SIDS))
        )
        data = self.exports[pick % len(self.exports)]
        sid = into or data["session"]["session_id"]
        if user not in self.users:
            with pytest.raises(NotFound):
                self.store.import_session(user, data, into)
            return
        if self._session(user, sid) is not None:
            with pytest.raises(Conflict):
                self.store.import_session(user, data, into)
            return
        assert self.store.import_session(user, data, into).session_id == sid
        turns = [(t["index"], t["speaker"], t["text"]) for t in data["turns"]]
        m = data["memory"]
        memory = None if m is None else (base64.b64decode(m["blob_b64"]), m["version"], m["through_turn"],
                                         [SlotRecord(**x) for x in m["slots"]])
        count = max([data["session"]["turn_count"], *(t[0] for t in turns)])
        self.users[user]["sessions"][sid] = {
            "turns": turns,
            "count": count,
            "memory": memory,
            "meta": data["session"]["meta"],
        }

    @rule(data=st.data())
    def delete_user(self, data):
        if data.draw(st.integers(0, 3), label="delete now?"):
            return
        user = self._user(data)
        if user not in self.users:
            with pytest.raises(NotFound):
                self.store.delete_user(user)
            return
        self.store.delete_user(user)
        gone = self.users.pop(user)
        if gone["token"]:
            self.revoked.append(gone["token"])

    @invariant()
    def store_equals_model(self):
        assert [u.user_id for u in self.store.list_users()] == sorted(self.users)
        for token in self.revoked:
            assert self.store.authenticate(token) is None
        for user in USERS:
            if user not in self.users:
                with pytest.raises(NotFound):
                    self.store.list_sessions(user)
                continue
            model = self.users[user]
            if model["token"]:
                assert self.store.authenticate(model["token"]) == user
            listed = {s.session_id: (s.turn_count, s.meta) for s in self.store.list_sessions(user)}
            assert listed == {sid: (s["count"], s["meta"]) for sid, s in model["sessions"].items()}
            for sid, s in model["sessions"].items():
                assert [(t.index, t.speaker, t.text) for t in self.store.list_turns(user, sid)] == s["turns"]
                got = self.store.get_memory(user, sid)
                if s["memory"] is None:
                    assert got is None
                else:
                    assert (got.blob, got.version, got.through_turn, got.slots) == s["memory"]


TestStoreModel = StoreModel.TestCase
TestStoreModel.settings = settings(max_examples=30, stateful_step_count=25, deadline=None,
                                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


# =============================================================================== 4. faults through the service


def _serve(db: Path, port: int, log: Path):
    return load_test.start_server(db, port, "tiny-llama", None, 1, log, timeout=120)


def test_sigkill_mid_writes_then_restart_loses_nothing_acknowledged(tmp_path):
    db, log = tmp_path / "served.db", tmp_path / "server.log"
    port = load_test.free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(db, port, log)
    acked, stop, threads = [], threading.Event(), []
    try:
        admin = bearer(load_test.ADMIN)
        alice = bearer(httpx.post(f"{url}/users", json={"user_id": "alice"}, headers=admin).json()["token"])
        bob = bearer(httpx.post(f"{url}/users", json={"user_id": "bob"}, headers=admin).json()["token"])
        httpx.post(f"{url}/sessions", json={"session_id": "s"}, headers=alice).raise_for_status()
        httpx.post(f"{url}/sessions", json={"session_id": "b"}, headers=bob).raise_for_status()

        def writer(w):
            with httpx.Client(base_url=url, timeout=30, headers=alice) as c:
                i = 0
                while not stop.is_set():
                    try:
                        r = c.post("/sessions/s/write", json={"text": f"writer {w} line {i}"})
                    except httpx.TransportError:
                        return  # killed
                    if r.status_code == 201:
                        acked.append(r.json())
                    i += 1

        threads = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(3)]
        for t in threads:
            t.start()
        t_end = time.monotonic() + 90
        while len(acked) < 8 and time.monotonic() < t_end and all(t.is_alive() for t in threads):
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # no shutdown handler runs
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for t in threads:
        t.join(30)
    assert len(acked) >= 8, log.read_text()[-2000:]
    with sqlite3.connect(db) as conn:  # the store file opens cleanly
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with MemoryStore(db) as store:
        turns = {t.index: t.text for t in store.list_turns("alice", "s")}
        stored = store.get_memory("alice", "s")
    assert sorted(turns) == list(range(1, len(turns) + 1))  # contiguous: no partial turn
    assert all(turns[a["turn"]["index"]] == a["turn"]["text"] for a in acked)
    assert stored.version >= max(a["memory_version"] for a in acked)
    assert max(a["turn"]["index"] for a in acked) <= stored.through_turn <= len(turns)
    # at most the writes in flight at the kill are stored but not yet in memory (unacknowledged)
    assert len(turns) - stored.through_turn <= len(threads)

    port = load_test.free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(db, port, log)  # restarted on the same store
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            assert c.get("/sessions", headers=bearer("guess")).status_code == 401
            assert c.get("/sessions/s", headers=bob).status_code == 404  # isolation still holds
            assert c.post("/sessions/s/write", json={"text": "bob was here"}, headers=bob).status_code == 404
            w = c.post("/sessions/s/write", json={"text": "after the restart"}, headers=alice)  # the old token works
            assert w.status_code == 201 and w.json()["turn"]["index"] == len(turns) + 1
            info = c.get("/sessions/s", headers=alice).json()
            assert info["memory"]["through_turn"] == info["turn_count"] == len(turns) + 1  # caught up
            exported = c.get("/sessions/s/export", headers=alice).json()
            rec = c.post("/sessions/s/recall", json={"query": "writer 1", "top_k": 2}, headers=alice)
            assert rec.status_code == 200 and len(rec.json()["slots"]) == 2
    finally:
        assert load_test.stop_server(proc) == 0
    slot_turns = [s["turn_id"] for s in exported["memory"]["slots"] if s["level"] == "paragraph"]
    assert slot_turns == list(range(1, len(turns) + 2))  # every turn written into memory exactly once, in order
    from r3mem.cli.common import load_engine

    mem = load_engine(None, "tiny-llama").from_bytes(base64.b64decode(exported["memory"]["blob_b64"]))
    assert len(mem.paragraphs) == len(turns) + 1 and all_finite(mem)


@pytest.fixture
def populated_store(tmp_path, engine):
    path = tmp_path / "store" / "store.db"
    with MemoryStore(path) as store, TestClient(create_app(engine, store, admin_token=ADMIN)) as c:
        token = c.post("/users", json={"user_id": "alice"}, headers=bearer(ADMIN)).json()["token"]
        c.post("/sessions", json={"session_id": "s"}, headers=bearer(token))
        for text in ("Henry Sibley built a stone house.", "The river froze in winter."):
            assert c.post("/sessions/s/write", json={"text": text}, headers=bearer(token)).status_code == 201
    return path, bearer(token)


def assert_503(r, *words):
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["error"] == "store_unavailable" and "\n" not in body["message"], body
    assert all(w in body["message"] for w in words), body


def test_read_only_store_through_the_service(populated_store, engine):
    path, alice = populated_store
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    path.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    try:
        with MemoryStore(path) as store, TestClient(create_app(engine, store, admin_token=ADMIN)) as c:
            assert c.get("/health").json() == {"status": "ok"}
            assert len(c.get("/sessions/s/turns", headers=alice).json()["turns"]) == 2  # reads work
            assert c.post("/sessions/s/recall", json={"index": 0}, headers=alice).status_code == 200
            assert_503(
                c.post("/sessions/s/write", json={"text": "more"}, headers=alice), "read-only", "nothing was written"
            )
            assert_503(c.post("/sessions", json={"session_id": "t"}, headers=alice), "read-only")
            assert_503(c.delete("/sessions/s", headers=alice), "read-only")
            assert_503(c.post("/users", json={"user_id": "bob"}, headers=bearer(ADMIN)), "read-only")
            assert_503(c.delete("/users/me", headers=alice), "read-only")
            assert c.get("/sessions", headers=bearer("guess")).status_code == 401  # auth still holds
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_full_disk_through_the_service_keeps_data_and_recovers(populated_store, engine, monkeypatch):
    path, alice = populated_store
    with MemoryStore(path) as store, TestClient(create_app(engine, store, admin_token=ADMIN)) as c:
        old = store.get_memory("alice", "s")
        with sqlite3.connect(path) as conn:
            pages = conn.execute("PRAGMA page_count").fetchone()[0]

        def cap(dbapi_conn, record):  # noqa: ARG001
            dbapi_conn.execute(f"PRAGMA max_page_count = {pages}")

        event.listen(store._engine, "connect", cap)
        store._engine.dispose()  # every new connection sees a database that cannot grow
        # Larger than the free room of a capped database's last pages (16-bit memories are small).
        r = c.post("/sessions/s/write", json={"text": "A small turn about the ferry. " * 40}, headers=alice)
        stranded = len(store.list_turns("alice", "s")) - 2  # a small turn may fit where its memory does not
        if stranded:
            assert_503(r, "turn 3 stored, but the memory was not updated", "full")
        else:
            assert_503(r, "cannot append a turn", "full", "nothing was written")
        big = "A long turn about the ferry and the stone house. " * 400
        for _ in range(2):
            assert_503(c.post("/sessions/s/write", json={"text": big}, headers=alice), "full")
        export = store.export_session("alice", "s")
        export["turns"][0]["text"] += " " + big  # more than the capped database's free room
        assert_503(c.post("/sessions/import", json=export, params={"session_id": "copy"},
                          headers=alice), "full", "nothing was written")
        assert len(store.list_turns("alice", "s")) == 2 + stranded
        kept = store.get_memory("alice", "s")
        assert (kept.blob, kept.version, kept.through_turn, kept.slots) == (
            old.blob,
            old.version,
            old.through_turn,
            old.slots,
        )
        assert len(engine.from_bytes(kept.blob).paragraphs) == 2
        event.remove(store._engine, "connect", cap)
        store._engine.dispose()
        w = c.post("/sessions/s/write", json={"text": "Space again."}, headers=alice)
        assert w.status_code == 201 and w.json()["turn"]["index"] == 3 + stranded
        info = c.get("/sessions/s", headers=alice).json()
        assert info["memory"]["through_turn"] == info["turn_count"] == 3 + stranded  # the stranded turn folded in
        assert [s.session_id for s in store.list_sessions("alice")] == ["s"]

        # the memory write alone failing (deterministically): the 503 says the turn was kept
        real_put = store.put_memory

        def full(*a, **k):
            raise StoreError("cannot write the memory: store is full, no space left; nothing was written")

        monkeypatch.setattr(store, "put_memory", full)
        assert_503(c.post("/sessions/s/write", json={"text": "Kept turn."}, headers=alice),
                   f"turn {4 + stranded} stored, but the memory was not updated (the next write will fold it in)")
        monkeypatch.setattr(store, "put_memory", real_put)
        assert c.post("/sessions/s/write", json={"text": "Last."}, headers=alice).status_code == 201
        turns = c.get("/sessions/s/turns", headers=alice).json()["turns"]
        assert [t["text"] for t in turns][-2:] == ["Kept turn.", "Last."]
        exported = c.get("/sessions/s/export", headers=alice).json()
        # every turn is in memory, in order (a long turn's paragraph is split into several slots)
        slot_turns = [x["turn_id"] for x in exported["memory"]["slots"] if x["level"] == "paragraph"]
        assert list(dict.fromkeys(slot_turns)) == [t["index"] for t in turns]
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# =============================================================================== 5. load


def test_small_load_run_passes_its_own_checks(tmp_path):
    out = tmp_path / "load.json"
    doc = load_test.main(["--clients", "2", "--requests", "40", "--users", "2", "--torch-threads", "1",
                          "--max-seconds", "120", "--out", str(out)])
    assert json.loads(out.read_text()) == doc and out.with_suffix(".png").stat().st_size > 5_000
    v = doc["verification"]
    assert v["passed"], v
    assert doc["error_rate"] == 0 and doc["requests_done"] == 40 and doc["service"]["exit_code"] == 0, doc["errors"]
    assert set(doc["endpoints"]) == {"write", "recall", "answer", "cross"}
    assert v["acked_writes"] == doc["endpoints"]["write"]["count"] and v["cross_user_requests"] >= 2
    for e in doc["endpoints"].values():
        assert 0 < e["p50_ms"] <= e["p99_ms"] <= e["max_ms"]


# =============================================================================== 6. determinism across processes

_WRITER = """
import json, sys, torch
torch.set_num_threads(1)
from r3mem.text import iter_text_chunks
from r3mem.engine import R3Mem
adapter, text, out = sys.argv[1:4]
eng = R3Mem.from_pretrained(adapter)
mem = eng.write(iter_text_chunks(text, 97))
eng.save(mem, out)
flushed = eng.flush(mem)
print(json.dumps({
    "hash": eng.adapter_hash,
    "query": eng.recall(mem, query="Who built the stone house?", top_k=2).text,
    "index": eng.recall(flushed, index=1).text,
    "entity": eng.recall(flushed, level="entity", query="Henry Sibley").text,
    "document": eng.recall(flushed, level="document", max_new_tokens=12).text,
    "flushed_sha": __import__("hashlib").sha256(eng.to_bytes(flushed)).hexdigest(),
}))
"""


def test_two_processes_write_identical_memory_files(tmp_path, tok):
    eng = R3Mem.from_base(tiny_model("llama"), tok, tiny_cfg(base_model="tiny-llama", seed=7))
    perturb_trainables(eng.model, seed=11)
    eng.save_adapter(tmp_path / "adapter")
    text = tmp_path / "text.txt"
    text.write_text(SAMPLE_TEXT + "\n\nZürich 東京 😀, and Henry Sibley again.\n\nA pending tail", encoding="utf-8")
    procs = []
    for k in (1, 2):  # different hash seeds: no set or dict order may leak into the memory
        env = {**os.environ, "PYTHONPATH": str(SRC), "PYTHONHASHSEED": str(k), "OMP_NUM_THREADS": "1",
               "HF_HUB_OFFLINE": "1"}
        procs.append(subprocess.Popen([sys.executable, "-c", _WRITER, str(tmp_path / "adapter"), str(text),
                                       str(tmp_path / f"m{k}.r3mem")], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=240)
        assert p.returncode == 0, stderr[-2000:]
        outs.append(json.loads(stdout.strip().splitlines()[-1]))
    a, b = (tmp_path / "m1.r3mem").read_bytes(), (tmp_path / "m2.r3mem").read_bytes()
    assert a == b and outs[0] == outs[1]
    assert outs[0]["query"] and outs[0]["index"]
    # this process (a third one) loads the file and recalls the same; another seed gives another memory
    here = R3Mem.from_pretrained(tmp_path / "adapter")
    mem = here.load(tmp_path / "m1.r3mem")
    assert here.recall(mem, query="Who built the stone house?", top_k=2).text == outs[0]["query"]
    assert hashlib.sha256(here.to_bytes(here.flush(mem))).hexdigest() == outs[0]["flushed_sha"]
    assert len(mem.entities) >= 3 and mem.pending_text == "A pending tail"  # entity order and the tail are covered
