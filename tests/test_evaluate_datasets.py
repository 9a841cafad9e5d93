"""Benchmark loaders on the CI fixtures, on the real shared files when present, and on broken files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from r3mem.evaluate.datasets import (
    DEFAULT_NEEDLE,
    load_kv,
    load_locomo,
    load_needle,
    load_nq_oracle,
    load_pg19,
)

FIXTURES = Path(__file__).parent / "fixtures" / "eval"
SHARED = Path(__file__).parents[2] / "shared" / "data"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data folder not present at {SHARED}")


# --- PG-19 ------------------------------------------------------------------------------------


def test_pg19_fixture_strips_header_and_footer() -> None:
    books = load_pg19(FIXTURES / "pg19")
    assert [b.book_id for b in books] == ["90001", "90002"]
    mill, light = books
    assert mill.title == "A Synthetic Chronicle of the Mill"
    assert mill.text.startswith("CHAPTER I\n\nTHE MILL ON THE RIVER")  # wrapped START marker consumed
    assert mill.text.endswith("by dog sled from Prairie du Chien.")
    assert light.title == "The Lighthouse Keeper"
    assert light.text.startswith("Produced by the r3mem test suite.")
    assert light.text.endswith("End of the synthetic edition of The Lighthouse Keeper.")
    for book in books:
        assert "\r" not in book.text and "\ufeff" not in book.text
        assert "PROJECT GUTENBERG EBOOK" not in book.text


def test_pg19_single_file_limit_and_already_stripped(tmp_path: Path) -> None:
    assert len(load_pg19(FIXTURES / "pg19", limit=1)) == 1
    assert load_pg19(FIXTURES / "pg19" / "90002.txt")[0].book_id == "90002"
    plain = tmp_path / "123.txt"
    plain.write_text("Already stripped PG-19 text.\n", encoding="utf-8")
    assert load_pg19(plain)[0].text == "Already stripped PG-19 text."


def test_pg19_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^nope\.txt: file not found"):
        load_pg19(tmp_path / "nope.txt")
    with pytest.raises(ValueError, match="folder holds no .txt books"):
        load_pg19(tmp_path)
    header_only = tmp_path / "1.txt"
    header_only.write_text("Title: X\n*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"^1\.txt: no book text after removing the Gutenberg header"):
        load_pg19(header_only)
    latin1 = tmp_path / "2.txt"
    latin1.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(ValueError, match=r"2\.txt: invalid UTF-8 at byte 3"):
        load_pg19(latin1)


@needs_shared
def test_pg19_real_books() -> None:
    books = load_pg19(SHARED / "pg19")
    assert len(books) >= 3
    first = next(b for b in books if b.book_id == "10146")
    assert first.title == "Reminiscences of Pioneer Days in St. Paul"
    assert first.text.endswith("to have as a fellow workman.")
    for book in books:
        assert len(book.text) > 200_000
        assert "START OF TH" not in book.text and "END OF TH" not in book.text


# --- NQ-Open and KV retrieval ------------------------------------------------------------------


def test_nq_fixture() -> None:
    examples = load_nq_oracle(FIXTURES / "nq-open-oracle_sample3.jsonl.gz")
    assert len(examples) == 3
    first = examples[0]
    assert first.question == "who got the first nobel prize in physics"
    assert first.answers == ("Wilhelm Conrad Röntgen",)
    assert first.gold_index == 0 and first.gold is not None
    assert first.gold.title == "List of Nobel laureates in Physics"
    assert "Röntgen" in first.gold.text and first.gold.has_answer
    assert len(load_nq_oracle(FIXTURES / "nq-open-oracle_sample3.jsonl.gz", limit=2)) == 2


def test_kv_fixture() -> None:
    examples = load_kv(FIXTURES / "kv-retrieval-75_keys_sample2.jsonl.gz")
    assert len(examples) == 2
    for ex in examples:
        assert len(ex.pairs) == 75
        assert ex.pairs[ex.gold_index] == (ex.key, ex.value)
        assert len(ex.value) == 36  # UUID4 string


@needs_shared
def test_nq_and_kv_real_files() -> None:
    nq = load_nq_oracle(SHARED / "nq_open" / "nq-open-oracle_dev.jsonl.gz")
    assert len(nq) == 2000
    assert all(ex.gold is not None and ex.answers for ex in nq)
    kv = load_kv(SHARED / "nq_open" / "kv-retrieval-75_keys_dev.jsonl.gz")
    assert len(kv) == 400 and all(len(ex.pairs) == 75 for ex in kv)


def _write_gz(path: Path, text: str) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(text)
    return path


def test_jsonl_errors_name_file_and_line(tmp_path: Path) -> None:
    good = json.dumps({"question": "q", "answers": ["a"], "ctxs": [{"title": "t", "text": "x", "isgold": True}]})
    bad = _write_gz(tmp_path / "nq-open-oracle_dev.jsonl.gz", f"{good}\n{good}\n{{not json\n")
    with pytest.raises(ValueError, match=r"^nq-open-oracle_dev\.jsonl\.gz: line 3 is not valid JSON$"):
        load_nq_oracle(bad)
    assert len(load_nq_oracle(bad, limit=2)) == 2  # the broken line is never read

    missing = tmp_path / "m.jsonl"
    missing.write_text(json.dumps({"question": "q", "ctxs": []}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"^m\.jsonl: line 1: missing key 'answers'$"):
        load_nq_oracle(missing)

    wrong_type = tmp_path / "w.jsonl"
    wrong_type.write_text("\n" + json.dumps({"question": "q", "answers": "a", "ctxs": []}) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"^w\.jsonl: line 2: 'answers' must be a list, got str$"):
        load_nq_oracle(wrong_type)

    not_object = tmp_path / "n.jsonl"
    not_object.write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"^n\.jsonl: line 1 is not a JSON object$"):
        load_kv(not_object)


def test_kv_and_gzip_errors(tmp_path: Path) -> None:
    wrong_key = tmp_path / "kv.jsonl"
    wrong_key.write_text(json.dumps({"ordered_kv_records": [["k", "v"]], "key": "k", "value": "w"}) + "\n")
    with pytest.raises(ValueError, match=r"^kv\.jsonl: line 1: \('key', 'value'\) is not one of"):
        load_kv(wrong_key)
    bad_pairs = tmp_path / "kv2.jsonl"
    bad_pairs.write_text(json.dumps({"ordered_kv_records": [["k"]], "key": "k", "value": "v"}) + "\n")
    with pytest.raises(ValueError, match="must be a list of \\[key, value\\] string pairs"):
        load_kv(bad_pairs)

    real = (FIXTURES / "kv-retrieval-75_keys_sample2.jsonl.gz").read_bytes()
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(real[: len(real) // 2])
    with pytest.raises(ValueError, match=r"^cut\.jsonl\.gz: corrupt or truncated gzip data$"):
        load_kv(truncated)
    with pytest.raises(ValueError, match=r"^absent\.jsonl\.gz: file not found in "):
        load_kv(tmp_path / "absent.jsonl.gz")
    with pytest.raises(ValueError, match="limit must be None or >= 0"):
        load_kv(FIXTURES / "kv-retrieval-75_keys_sample2.jsonl.gz", limit=-1)


# --- LoCoMo --------------------------------------------------------------------------------------


def test_locomo_fixture() -> None:
    convs = load_locomo(FIXTURES / "locomo_synthetic.json")
    assert [c.sample_id for c in convs] == ["conv-synth-1", "conv-synth-2"]
    conv = convs[0]
    assert (conv.speaker_a, conv.speaker_b) == ("Alice", "Bruno")
    assert [s.index for s in conv.sessions] == [1, 2]  # session_3 has a date but no turns
    assert len(conv.turns) == 6
    image = conv.turn("D1:3")
    assert image.speaker == "Alice" and image.blip_caption == "a photo of a small dog sitting on grass"
    assert image.session == 1 and image.date_time == "9:15 am on 3 March, 2024"
    assert conv.turn("D2:1").date_time == "6:40 pm on 17 March, 2024"
    with pytest.raises(KeyError):
        conv.turn("D9:9")

    qa = conv.qa
    assert qa[0].answer == "Pepper" and qa[0].category == 4 and qa[0].evidence == ("D1:1",)
    assert qa[2].answer == "3"  # integer answers become strings
    assert qa[3].evidence == ("D1:2", "D2:2")  # "D1:2; D2:2" split
    assert qa[4].answer is None and qa[4].adversarial_answer == "a bowl" and qa[4].evidence == ("D1:4",)
    assert len(load_locomo(FIXTURES / "locomo_synthetic.json", limit=1)) == 1


@needs_shared
def test_locomo_real_file() -> None:
    convs = load_locomo(SHARED / "locomo" / "locomo_dev8.json")
    assert len(convs) == 8 and convs[0].sample_id == "conv-26"
    assert convs[0].turn("D1:1").speaker == "Caroline"
    assert all(len(c.sessions) >= 19 for c in convs)
    categories = {q.category for c in convs for q in c.qa}
    assert categories == {1, 2, 3, 4, 5}
    assert all(q.answer is not None for c in convs for q in c.qa if q.category != 5)


def test_locomo_errors(tmp_path: Path) -> None:
    not_list = tmp_path / "l.json"
    not_list.write_text('{"a": 1}')
    with pytest.raises(ValueError, match=r"^l\.json: top level must be a JSON list, got dict$"):
        load_locomo(not_list)
    broken = tmp_path / "b.json"
    broken.write_text('[{"sample_id": "x",\n')
    with pytest.raises(ValueError, match=r"^b\.json: not valid JSON \(line 2"):
        load_locomo(broken)
    no_text = tmp_path / "t.json"
    conv = {"speaker_a": "A", "speaker_b": "B", "session_1": [{"speaker": "A", "dia_id": "D1:1"}]}
    no_text.write_text(json.dumps([{"sample_id": "x", "conversation": conv, "qa": []}]))
    with pytest.raises(ValueError, match=r"^t\.json: item 0: missing key 'text'$"):
        load_locomo(no_text)


# --- Needle in a haystack ----------------------------------------------------------------------------


def test_needle_fixture_char_lengths() -> None:
    hay = load_needle(FIXTURES / "essays")
    assert hay.names == ("bicycles.txt", "gardens.txt", "ledgers.txt")  # stub.txt skipped
    for depth in (0.0, 0.25, 0.5, 1.0):
        sample = hay.build(3000, depth)  # longer than all essays: they repeat
        assert len(sample.context) == sample.length == 3000
        assert sample.context[sample.needle_start :].startswith(DEFAULT_NEEDLE)
    assert hay.build(3000, 0.0).needle_start == 0
    assert hay.build(3000, 1.0).context.endswith(DEFAULT_NEEDLE)
    middle = hay.build(3000, 0.5)
    assert 1000 < middle.needle_start < 1600
    assert middle.context[middle.needle_start - 2] == "."  # placed after a full sentence


def test_needle_token_lengths_and_errors() -> None:
    hay = load_needle(FIXTURES / "essays", limit=2)
    assert len(hay.essays) == 2

    def words(text: str) -> int:
        return len(text.split())

    sample = hay.build(400, 0.5, length_fn=words)
    assert 395 <= sample.length <= 400 and words(sample.context) == sample.length
    assert DEFAULT_NEEDLE in sample.context
    with pytest.raises(ValueError, match="depth must be in"):
        hay.build(1000, 1.5)
    with pytest.raises(ValueError, match="too short to hold the needle"):
        hay.build(10, 0.5)
    with pytest.raises(ValueError, match="does not contain the answer"):
        load_needle(FIXTURES / "essays", needle="The secret is 42.", answer="43")


@needs_shared
def test_needle_real_essays() -> None:
    hay = load_needle(SHARED / "needle_haystack" / "PaulGrahamEssays")
    assert "rss.txt" not in hay.names and len(hay.essays) >= 39
    sample = hay.build(100_000, 0.3)
    assert len(sample.context) == 100_000 and DEFAULT_NEEDLE in sample.context
