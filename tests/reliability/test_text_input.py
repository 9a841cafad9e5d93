"""Bad text input: a streamed 1M-character file (lazy, linear), degenerate and hostile strings
through every text entry point, invalid UTF-8 / empty files through `r3mem write`, `train` and `eval`.

Tiny in-memory models throughout; torch on one thread.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from _helpers import all_finite, deadline, one_error_line
from conftest import tiny_cfg
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from r3mem import writer
from r3mem.cli.main import app as cli
from r3mem.engine import R3Mem
from r3mem.store import MemoryStore
from r3mem.text import iter_text_chunks
from r3mem.tiny import SAMPLE_TEXT, tiny_model, tiny_tokenizer

torch.set_num_threads(1)


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

    def spy(model, tokenizer, mem, text, *rest):
        calls.append(len(text))
        out = real(model, tokenizer, mem, text, *rest)
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
                rec = eng.recall(mem, query=text[:2000], top_k=2, max_new_tokens=3)
                assert len(rec.slots) == min(2, len(mem.paragraphs) + bool(mem.pending_text.strip()))
                assert isinstance(eng.generate(text, mem, max_new_tokens=2), str)
                assert isinstance(eng.read(text, max_new_tokens=2), str)


def test_overlong_query_is_refused_and_prompt_is_bounded(trained_like, monkeypatch):
    """A query or question of the service's whole body limit is refused at once (one line, no model pass);
    a reader prompt that long is cut to the model's window (its end kept), neither hanging nor exhausting memory."""
    eng = trained_like
    mem = eng.write(SAMPLE_TEXT)
    long_text = "Where did Henry Sibley build his stone house, and when? " * 18_000  # ~1 MB
    with deadline(60):
        with pytest.raises(ValueError, match="query: at most 2000 characters, got 1008000"):
            eng.recall(mem, query=long_text, top_k=2, max_new_tokens=4)
        with pytest.raises(ValueError, match="question: at most 2000 characters"):
            eng.answer(long_text, mem, max_new_tokens=4)
        seen = []
        real_generate = type(eng.model.lm).generate

        def generate(self, input_ids, **k):
            seen.append(input_ids.shape[1])
            return real_generate(self, input_ids=input_ids, **k)

        monkeypatch.setattr(type(eng.model.lm), "generate", generate)
        assert isinstance(eng.read(long_text, max_new_tokens=4), str)
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
