"""`r3mem eval`: every task on the shipped fixtures with tiny models, the JSON document, the plots,
the bad-input errors, the baseline training overrides and the results-table script."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_cfg
from typer.testing import CliRunner

from r3mem.cli.main import app
from r3mem.engine import R3Mem
from r3mem.evaluate import METHODS
from r3mem.tiny import tiny_model, tiny_tokenizer
from r3mem.train.config import TrainConfig, apply_overrides

ROOT = Path(__file__).parents[1]
FIX = Path(__file__).parent / "fixtures" / "eval"
NQ, KV = FIX / "nq-open-oracle_sample3.jsonl.gz", FIX / "kv-retrieval-75_keys_sample2.jsonl.gz"
LOCOMO, ESSAYS, PG19 = FIX / "locomo_synthetic.json", FIX / "essays", FIX / "pg19"
ADAPTER_VARIANTS = {
    "r3mem": {},
    "recurrent": dict(w_bwd=0.0, w_cyc=0.0, hierarchy_levels=("document",)),
    "autoencoder": dict(w_fwd=0.0, w_cyc=0.0, hierarchy_levels=("document", "paragraph")),
    "r3mem_no_hierarchy": dict(hierarchy_levels=("document",)),
    "r3mem_coupling": dict(reversible_mode="coupling", memory_mode="layerwise"),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models are dominated by thread hand-off; one thread is many times faster on a busy CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    out = {}
    for name, kw in ADAPTER_VARIANTS.items():
        cfg = tiny_cfg(base_model="tiny-llama", segment_len=32, max_recall_tokens=16, **kw)
        R3Mem.from_base(tiny_model("llama"), tiny_tokenizer(), cfg).save_adapter(root / name, trained=False)
        out[name] = root / name
    return out


def run_eval(task: str, data: Path, *args: str, adapters: dict[str, Path] | None = None, out: Path | None = None,
             env: dict[str, str] | None = None):
    base = [] if env and "R3MEM_BASE_MODEL" in env else ["--base-model", "tiny-llama"]
    argv = ["eval", task, "--data", str(data), *base, "--max-new-tokens", "3", *args]
    if adapters:
        argv += ["--model", str(adapters["r3mem"])]
        for name in ("recurrent", "autoencoder", "r3mem_no_hierarchy"):
            argv += ["--method-model", f"{name}={adapters[name]}"]
    if out is not None:
        argv += ["--out", str(out)]
    r = CliRunner().invoke(app, argv, env=env)
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    if out is not None:
        assert json.loads(out.read_text()) == doc
    return doc


def _numeric_or_none(x) -> bool:
    if isinstance(x, dict):
        return all(_numeric_or_none(v) for v in x.values())
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool))


def check_doc(doc: dict, task: str, methods: list[str]) -> dict:
    assert doc["format"] == "r3mem-eval" and doc["task"] == task
    assert {"torch", "transformers", "r3mem", "python"} <= set(doc["versions"])
    assert "commit" in doc["git"]
    assert doc["config"]["methods"] == methods and doc["config"]["base_model"] == "tiny-llama"
    assert list(doc["methods"]) == methods
    for name, r in doc["methods"].items():
        if "skipped" in r:
            assert isinstance(r["skipped"], str) and r["skipped"], name
            continue
        assert _numeric_or_none(r["metrics"]), (name, r["metrics"])
        assert _numeric_or_none(r["summary"]) and r["summary"], name
        for k in ("memory_bytes_per_doc", "memory_tokens_per_doc"):
            assert _numeric_or_none(r[k]), (name, k)
        assert r["wall_time_s"] >= 0 and r["kind"] in ("memory", "text")
    return doc["methods"]


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rag_every_method(adapters, tmp_path):
    doc = run_eval("rag", NQ, "--limit", "1", adapters=adapters, out=tmp_path / "rag.json")
    res = check_doc(doc, "rag", list(METHODS))
    for name in ("r3mem_no_backward", "r3mem_no_cycle", "r3mem_coupling"):
        assert res[name] == {"skipped": "no trained adapter given"}
    assert res["r3mem"]["answer_mode"] == "recall" and res["r3mem"]["adapter_trained"] is False
    assert res["recurrent"]["answer_mode"] == "generate"
    assert res["r3mem_no_hierarchy"]["answer_mode"] == "recall_document"
    assert res["autoencoder"]["answer_mode"] == "recall"
    for name in ("r3mem", "no_memory", "full_context", "bm25"):
        assert set(res[name]["metrics"]) == {"em", "f1", "accuracy", "evidence_recall@2"}
        assert res[name]["n_examples"] == 1
        (one,) = res[name]["per_question"]  # per question, for paired comparisons
        assert set(one) == {"qid", "em", "f1", "accuracy", "evidence_recall"}
        assert one["f1"] == pytest.approx(res[name]["metrics"]["f1"], abs=1e-4)
    assert res["full_context"]["metrics"]["evidence_recall@2"] == 1.0
    assert res["recurrent"]["metrics"]["evidence_recall@2"] is None  # shows the reader no text spans
    assert doc["data_stats"]["n_examples"] == 1
    assert doc["plot"] == str(tmp_path / "rag.png") and is_png(tmp_path / "rag.png")


def test_kv_full_context_does_not_fit(adapters, tmp_path):
    methods = ["r3mem", "no_memory", "full_context", "bm25"]
    doc = run_eval("kv", KV, "--limit", "1", "--methods", ",".join(methods), "--model", str(adapters["r3mem"]),
                   out=tmp_path / "kv.json")
    res = check_doc(doc, "kv", methods)
    assert "does not fit the base model's window" in res["full_context"]["skipped"]
    assert 0 <= res["r3mem"]["metrics"]["accuracy"] <= 1
    assert len(res["bm25"]["metrics"]["accuracy_by_gold_position"]) == 5
    assert res["no_memory"]["memory_tokens_per_doc"] == 256  # the budget: last 256 tokens of 75 pairs
    assert is_png(tmp_path / "kv.png")


def test_locomo_turn_by_turn(adapters, tmp_path):
    methods = ["r3mem", "recurrent", "no_memory", "full_context", "bm25"]
    doc = run_eval("locomo", LOCOMO, "--limit", "3", "--methods", ",".join(methods), adapters=adapters,
                   out=tmp_path / "locomo.json")
    res = check_doc(doc, "locomo", methods)
    assert doc["data_stats"]["n_examples"] == 3
    for name in ("r3mem", "no_memory", "full_context", "bm25"):
        assert res[name]["n_examples"] == 3
        assert res[name]["metrics"]["evidence_recall@2"] is not None
        assert set(res[name]["metrics"]["f1_by_category"]) == {"1", "2", "3", "4"}
    assert res["full_context"]["metrics"]["evidence_recall@2"] == 1.0
    per = res["bm25"]["per_question"]  # per question, for paired comparisons
    assert [p["qid"] for p in per] == [p["qid"] for p in res["r3mem"]["per_question"]] and len(per) == 3
    assert sum(p["f1"] for p in per) / 3 == pytest.approx(res["bm25"]["metrics"]["f1"], abs=1e-3)
    assert is_png(tmp_path / "locomo.png")


def test_memory_bits_and_levels_reach_the_r3mem_engine(adapters):
    doc = run_eval("locomo", LOCOMO, "--limit", "2", "--methods", "r3mem", "--model", str(adapters["r3mem"]),
                   "--memory-bits", "4", "--levels", "document,paragraph")
    cfg = doc["methods"]["r3mem"]["model_config"]
    assert cfg["memory_bits"] == 4 and cfg["hierarchy_levels"] == ["document", "paragraph"]
    r = CliRunner().invoke(app, ["eval", "locomo", "--data", str(LOCOMO), "--base-model", "tiny-llama",
                                 "--methods", "r3mem", "--memory-bits", "3"])
    assert r.exit_code != 0 and "memory_bits" in r.output


def test_locomo_answer_reads_share_one_written_memory(adapters, tmp_path):
    """--memory-cache: the first run writes each conversation's memory, the others load it (no write) and
    answer from it as text (decoded, or checked against the conversation), from the slots' source text,
    or from the slots' cache."""
    cache = tmp_path / "memories"
    args = ["--limit", "3", "--methods", "r3mem", "--model", str(adapters["r3mem"]), "--memory-cache", str(cache)]
    reads = ("text", "checked", "source", "cache")
    docs = {read: run_eval("locomo", LOCOMO, *args, "--answer-read", read) for read in reads}
    files = sorted(cache.glob("*.r3mem"))
    assert len(files) == 1  # one conversation, written once
    for read, doc in docs.items():
        r = doc["methods"]["r3mem"]
        assert r["answer_read"] == read and r["n_examples"] == 3 and r["keys"] == "all-MiniLM-L6-v2"
        assert r["metrics"]["evidence_recall@2"] is not None and r["answer_s_per_question"] >= 0
    # the same slots are found whatever the read: evidence recall does not depend on it
    recalls = {read: doc["methods"]["r3mem"]["metrics"]["evidence_recall@2"] for read, doc in docs.items()}
    assert len(set(recalls.values())) == 1, recalls
    # the checked read is the decoded read's text, found another way: the same answers
    assert docs["checked"]["methods"]["r3mem"]["samples"] == docs["text"]["methods"]["r3mem"]["samples"]
    assert docs["source"]["methods"]["r3mem"]["store_s_per_doc"] < docs["text"]["methods"]["r3mem"]["store_s_per_doc"]
    # --min-confidence 1: every expansion is under it, so each found slot is read from its own text
    sure = run_eval("locomo", LOCOMO, *args, "--answer-read", "checked", "--min-confidence", "1")
    assert sure["config"]["min_confidence"] == 1
    assert sure["methods"]["r3mem"]["samples"] == docs["source"]["methods"]["r3mem"]["samples"]
    assert sure["methods"]["r3mem"]["samples"] != docs["text"]["methods"]["r3mem"]["samples"]


def test_rag_distractors_put_the_gold_passage_among_others(tmp_path):
    from r3mem.evaluate import rag
    from r3mem.evaluate.common import EvalOptions

    oracle = rag.load(NQ, EvalOptions(limit=2))
    mixed = rag.load(NQ, EvalOptions(limit=2, distractors=2))
    again = rag.load(NQ, EvalOptions(limit=2, distractors=2))
    assert [len(d.units) for d in oracle] == [1, 1] and [len(d.units) for d in mixed] == [3, 3]
    for o, m, a in zip(oracle, mixed, again):
        assert o.units[0] in m.units and m.units == a.units  # seeded: every run sees the same documents
        (g0, g1), = m.questions[0].gold_spans
        assert m.context[g0:g1] == o.units[0]
    with pytest.raises(ValueError, match="--distractors: 3 needs more than that many questions"):
        rag.load(NQ, EvalOptions(limit=2, distractors=3))


def test_needle_grid_and_heat_map(adapters, tmp_path):
    methods = ["r3mem", "full_context", "bm25"]
    doc = run_eval("needle", ESSAYS, "--lengths", "150,1100", "--depths", "0,1", "--methods", ",".join(methods),
                   "--model", str(adapters["r3mem"]), out=tmp_path / "needle.json")
    res = check_doc(doc, "needle", methods)
    for name in methods:
        g = res[name]["grid"]
        assert g["lengths"] == [150, 1100] and g["depths"] == [0.0, 1.0]
        assert len(g["accuracy"]) == 2 and all(len(row) == 2 for row in g["accuracy"])
    fc = res["full_context"]
    assert [row[1] for row in fc["grid"]["accuracy"]] == [None, None]  # 1100 tokens > the 1024-position window
    assert all(v is not None for v in (row[0] for row in fc["grid"]["accuracy"]))
    assert len(fc["cells_skipped"]) == 2
    assert res["r3mem"]["n_examples"] == 4 and res["r3mem"]["metrics"]["evidence_recall@2"] is not None
    assert is_png(tmp_path / "needle.png")


def test_lm_perplexity_by_position(adapters, tmp_path):
    methods = ["r3mem", "r3mem_coupling", "recurrent", "no_memory", "full_context", "bm25"]
    doc = run_eval("lm", PG19, "--max-tokens", "300", "--methods", ",".join(methods), "--method-model",
                   f"r3mem_coupling={adapters['r3mem_coupling']}", adapters=adapters, out=tmp_path / "lm.json")
    res = check_doc(doc, "lm", methods)
    assert doc["data_stats"]["segment_len"] == 32 and doc["config"]["budget"] == 4  # the adapter's memory size
    scored = {res[m]["metrics"]["scored_tokens"] for m in methods}
    assert len(scored) == 1 and scored.pop() > 0  # every method scored on the same tokens
    for m in methods:
        assert res[m]["metrics"]["ppl"] > 1
        assert list(res[m]["metrics"]["ppl_by_position"]) == ["0-256", "256-512"]
        assert set(res[m]["metrics"]["ppl_by_book"]) == {"90001", "90002"}
    assert res["r3mem"]["memory_tokens_per_doc"] == 4 and res["no_memory"]["memory_tokens_per_doc"] == 0
    # per-segment NLL of each reading: the segments sum to the overall figure, on the same segments everywhere
    for m in methods:
        mm = res[m]["metrics"]
        rows = res[m]["segments"]["ppl"]
        assert {r[0] for r in rows} == {"90001", "90002"} and sum(r[3] for r in rows) == mm["scored_tokens"]
        assert math.exp(sum(r[2] for r in rows) / mm["scored_tokens"]) == pytest.approx(mm["ppl"], rel=1e-4)
        assert [r[:2] + r[3:] for r in rows] == [r[:2] + r[3:] for r in res["no_memory"]["segments"]["ppl"]]
    assert set(res["r3mem"]["segments"]) == {"ppl", "reset", "recall"} and set(res["no_memory"]["segments"]) == {"ppl"}
    # memory methods are also scored with memory reset per segment; the gain is the NLL difference
    for m in ("r3mem", "r3mem_coupling", "recurrent"):
        mm = res[m]["metrics"]
        assert mm["memory_gain_nll_per_token"] == pytest.approx(
            math.log(mm["ppl_memory_reset"]) - math.log(mm["ppl"]), abs=1e-3
        )
        assert mm["memory_gain_nll_per_token"] != 0  # carried memory changes the scores
    assert all("ppl_memory_reset" not in res[m]["metrics"] for m in ("no_memory", "full_context", "bm25"))
    # methods with a backward path are also scored after the text recalled from their memory
    for m in ("r3mem", "r3mem_coupling"):
        mm = res[m]["metrics"]
        assert mm["recall_gain_nll_per_token"] == pytest.approx(
            math.log(mm["ppl"]) - math.log(mm["ppl_recall"]), abs=1e-3
        )
        assert mm["recall_gain_nll_per_token"] != 0  # the recalled text changes the scores
        assert list(mm["ppl_recall_by_position"]) == ["0-256", "256-512"]
    assert all("ppl_recall" not in res[m]["metrics"] for m in ("recurrent", "no_memory", "full_context", "bm25"))
    # layerwise memory keeps one state per layer besides the input one: more bytes for the same tokens
    assert res["r3mem_coupling"]["memory_bytes_per_doc"] > res["r3mem"]["memory_bytes_per_doc"]
    assert is_png(tmp_path / "lm.png")


def test_lm_recall_tokens_recorded_and_zero_switches_the_recall_reading_off(adapters, tmp_path):
    doc = run_eval("lm", PG19, "--max-tokens", "100", "--methods", "r3mem", "--recall-tokens", "0",
                   adapters=adapters, out=tmp_path / "lm0.json")
    assert doc["config"]["recall_tokens"] == 0  # the result says how it was read, not only argv
    mm = check_doc(doc, "lm", ["r3mem"])["r3mem"]["metrics"]
    assert "ppl_memory_reset" in mm and "ppl_recall" not in mm


def test_recon_keyed_by_ratio(adapters, tmp_path):
    methods = ["r3mem", "autoencoder", "bm25", "no_memory"]
    doc = run_eval("recon", PG19, "--limit", "3", "--ratios", "2,4", "--methods", ",".join(methods), adapters=adapters,
                   out=tmp_path / "recon.json")
    res = check_doc(doc, "recon", methods)
    for m in ("r3mem", "autoencoder"):
        assert set(res[m]["metrics"]) == {"2", "4"}
        for ratio in ("2", "4"):
            mt = res[m]["metrics"][ratio]
            assert {"token_exact_match", "token_accuracy", "bleu", "corpus_bleu", "rouge_l", "entity_recall",
                    "number_recall", "achieved_ratio"} <= set(mt)
            assert mt["n_paragraphs"] >= 3
        assert res[m]["memory_tokens_per_doc"]["2"] > res[m]["memory_tokens_per_doc"]["4"]
    assert "exact by construction" in res["bm25"]["skipped"] and "no memory" in res["no_memory"]["skipped"]
    assert is_png(tmp_path / "recon.png")


def test_limit_zero_gives_empty_figures_and_base_model_from_env(tmp_path):
    doc = run_eval("rag", NQ, "--limit", "0", "--methods", "r3mem,bm25", env={"R3MEM_BASE_MODEL": "tiny-llama"})
    res = check_doc(doc, "rag", ["r3mem", "bm25"])
    assert res["r3mem"]["n_examples"] == 0 and res["r3mem"]["metrics"]["em"] is None


# --- bad input: one line naming the file, exit code 1, before any model is loaded -------------


def _fails(*argv: str) -> str:
    r = CliRunner().invoke(app, ["eval", *argv])
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output
    return lines[0]


def test_bad_inputs(tmp_path):
    assert "nope.jsonl.gz" in _fails("rag", "--data", str(tmp_path / "nope.jsonl.gz"))
    bad = tmp_path / "bad.jsonl.gz"
    bad.write_bytes(gzip.compress(b'{"question": "q", "answers": ["a"], "ctxs": []}\n{not json\n'))
    assert "bad.jsonl.gz: line 2 is not valid JSON" in _fails("rag", "--data", str(bad))
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"not": "a list"}')
    assert "wrong.json: top level must be a JSON list" in _fails("locomo", "--data", str(wrong))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert "empty.jsonl: no examples" in _fails("kv", "--data", str(empty))
    assert "unknown task 'summarise'" in _fails("summarise", "--data", str(NQ))
    not_adapter = tmp_path / "folder"
    not_adapter.mkdir()
    (not_adapter / "weights.bin").write_bytes(b"x")
    assert f"{not_adapter}: not an r3mem adapter folder" in _fails(
        "rag", "--data", str(NQ), "--model", str(not_adapter)
    )
    assert f"{not_adapter}: not an r3mem adapter folder" in _fails(
        "rag", "--data", str(NQ), "--method-model", f"recurrent={not_adapter}")
    assert "expected NAME=DIR" in _fails("rag", "--data", str(NQ), "--method-model", "recurrent")
    assert "not a method with an adapter" in _fails("rag", "--data", str(NQ), "--method-model", f"bm25={not_adapter}")
    assert "unknown method 'rmt'" in _fails("rag", "--data", str(NQ), "--methods", "r3mem,rmt")
    assert "--limit: must be >= 0" in _fails("rag", "--data", str(NQ), "--limit", "-1")
    assert "--recall-tokens: must be >= 0 (got -1)" in _fails("lm", "--data", str(PG19), "--recall-tokens", "-1")
    assert "--ratios: expected comma-separated numbers" in _fails("recon", "--data", str(PG19), "--ratios", "4,x")
    assert "no .txt books" in _fails("lm", "--data", str(not_adapter))


# --- baseline training configs and scripts --------------------------------------------------------


BASELINES = ROOT / "src" / "r3mem" / "configs" / "baselines"


def _baseline_config(name: str) -> TrainConfig:
    base = yaml.safe_load((ROOT / "src" / "r3mem" / "configs" / "smollm2-135m.yaml").read_text())
    overrides = yaml.safe_load((BASELINES / f"{name}.yaml").read_text())
    return TrainConfig.from_dict(apply_overrides(base, [f"{k}={json.dumps(v)}" for k, v in overrides.items()]))


def test_baseline_configs_are_valid_and_keep_the_budget():
    full = _baseline_config("coupling")
    assert full.model.reversible_mode == "coupling"
    rec, ae = _baseline_config("recurrent"), _baseline_config("autoencoder")
    assert rec.model.w_bwd == 0 and rec.model.hierarchy_levels == ("document",)
    assert {lvl for p in rec.curriculum for lvl in p.levels} == {"document"}
    assert ae.model.w_fwd == 0 and ae.query_dropout == 1.0
    assert {lvl for p in ae.curriculum for lvl in p.levels} == {"recon"}  # autoencoding only, on the new pathway
    assert _baseline_config("no_hierarchy").model.hierarchy_levels == ("document",)
    assert _baseline_config("no_backward").model.w_bwd == 0 and _baseline_config("no_cycle").model.w_cyc == 0
    for name in ("recurrent", "autoencoder", "no_hierarchy", "no_backward", "no_cycle", "coupling"):
        c = _baseline_config(name)
        assert (c.steps, c.batch_size, c.lr, c.train_files) == (full.steps, full.batch_size, full.lr, full.train_files)


def test_train_baselines_script_passes_the_overrides():
    env = {**os.environ, "R3MEM": "echo", "PYTHON": sys.executable}
    r = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "train_baselines.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 6
    rec = next(ln for ln in lines if "runs/baselines/recurrent" in ln)
    assert rec.startswith("train --config src/r3mem/configs/smollm2-135m.yaml")
    assert "--set model.w_bwd=0.0" in rec and '--set model.hierarchy_levels=["document"]' in rec


# --- results table ----------------------------------------------------------------------------------


def _make_table():
    spec = importlib.util.spec_from_file_location("make_table", ROOT / "benchmarks" / "make_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_make_table_with_zero_and_more_results(tmp_path):
    mt = _make_table()
    readme = tmp_path / "README.md"
    readme.write_text(f"# B\n\n{mt.BEGIN}\nold\n{mt.END}\ntail\n")
    assert mt.main(["--root", str(tmp_path)]) == 0
    assert mt.EMPTY in readme.read_text() and readme.read_text().endswith("tail\n")
    res = tmp_path / "rag" / "results"
    res.mkdir(parents=True)
    doc = {"format": "r3mem-eval", "task": "rag", "data": "/d/nq.jsonl.gz", "created": "2026-11-24T10:00:00+00:00",
           "git": {"commit": "0123456789abcdef", "dirty": False},
           "methods": {"r3mem": {"summary": {"em": 0.25, "f1": 0.5}, "memory_tokens_per_doc": 40.0, "n_examples": 4},
                       "recurrent": {"skipped": "no trained adapter given"}}}
    (res / "run.json").write_text(json.dumps(doc))
    (res / "junk.json").write_text("{")
    assert mt.main(["--root", str(tmp_path)]) == 0
    text = readme.read_text()
    assert (
        "| rag | run | r3mem | em 0.250, f1 0.500 | 40.000 | nq.jsonl.gz | 4 | 01234567 | "
        "[2026-11-24](rag/results/run.json) |"
        in text
    )
    assert "recurrent" not in text and "old" not in text


def _lm_result(path, methods: dict, max_tokens: int = 512, scored: int = 500, segments: dict | None = None):
    doc = {"format": "r3mem-eval", "task": "lm", "data": "/d/10356.txt", "config": {"max_tokens": max_tokens},
           "git": {"commit": "0123456789abcdef"},
           "methods": {name: {"metrics": {**m, "scored_tokens": scored}, "segments": (segments or {}).get(name, {})}
                       for name, m in methods.items()}}
    path.write_text(json.dumps(doc))
    return path


def test_compare_runs_reads_one_reading_per_run_and_refuses_other_tokens(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("compare_runs", ROOT / "benchmarks" / "lm" / "compare_runs.py")
    cr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cr)
    a = _lm_result(tmp_path / "a.json",
                   {"recurrent": {"ppl": 40.0, "ppl_by_position": {"0-256": 30.0, "256-512": 50.0}}})
    b = _lm_result(tmp_path / "b.json", {"r3mem": {"ppl": 44.0, "ppl_by_position": {"0-256": 35.0, "256-512": 53.0},
                                                   "ppl_recall": 39.0,
                                                   "ppl_recall_by_position": {"0-256": 31.0, "256-512": 47.0}}})
    out = tmp_path / "cmp"
    b_doc = json.loads(b.read_text())
    b_doc["methods"]["r3mem"]["metrics"]["ppl_memory_reset"] = 46.0  # overall only, no breakdown
    b.write_text(json.dumps(b_doc))
    assert cr.main([f"recurrent={a}:recurrent:ppl", f"r3mem+recall={b}:r3mem:recall", f"r3mem={b}:r3mem:ppl",
                    f"reset={b}:r3mem:reset", "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    assert res["best_overall"] == "r3mem+recall"
    assert res["best_by_bucket"] == {"0-256": "recurrent", "256-512": "r3mem+recall"}
    assert res["nll_gap_vs_first"]["r3mem"] == pytest.approx(0.0953, abs=1e-4)
    assert out.with_suffix(".png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "| r3mem+recall | 39.0 | 31.0 | 47.0 | – |" in printed and "| reset | 46.0 | – | – | – |" in printed
    # with per-segment NLL: a paired comparison with the first row
    starts = (0, 128, 256, 384, 448)
    seg = [["b", s, 400.0, 100] for s in starts]
    better = [["b", s, 390.0 if s < 448 else 420.0, 100] for s in starts]  # -10 x 4, +20 x 1: -0.04 / token
    pos = {"0-256": 50.0, "256-512": 55.0}
    x = _lm_result(tmp_path / "x.json", {"recurrent": {"ppl": 54.6, "ppl_by_position": pos}},
                   segments={"recurrent": {"ppl": seg}})
    y = _lm_result(tmp_path / "y.json", {"r3mem": {"ppl": 52.5, "ppl_by_position": pos, "ppl_recall": 52.5,
                                                   "ppl_recall_by_position": pos}},
                   segments={"r3mem": {"recall": better, "ppl": seg[:4]}})
    assert cr.main([f"recurrent={x}:recurrent:ppl", f"r3mem={y}:r3mem:recall", "--out", str(out)]) == 0
    p = json.loads(out.with_suffix(".json").read_text())["rows"][1]["paired_vs_first"]
    assert p["nll_diff_per_token"] == pytest.approx(-0.04) and p["share_of_segments_better"] == 0.8
    assert p["ci95"][0] <= -0.04 <= p["ci95"][1] and p["ci95"][0] >= -0.1 and p["ci95"][1] <= 0.2
    by_bucket = json.loads(out.with_suffix(".json").read_text())["rows"][1]["paired_vs_first_by_bucket"]
    assert by_bucket["0-256"]["nll_diff_per_token"] == pytest.approx(-0.1) and by_bucket["0-256"]["segments"] == 2
    assert by_bucket["256-512"]["nll_diff_per_token"] == pytest.approx(0.0) and by_bucket["256-512"]["segments"] == 3
    assert cr.main([f"recurrent={x}:recurrent:ppl", f"r3mem={y}:r3mem:ppl", "--out", str(out)]) == 1
    assert "segments differ" in capsys.readouterr().err
    other = _lm_result(tmp_path / "c.json", {"recurrent": {"ppl": 41.0}}, max_tokens=2048, scored=2032)
    assert cr.main([f"x={a}:recurrent:ppl", f"y={other}:recurrent:ppl", "--out", str(out)]) == 1
    assert "scored different tokens" in capsys.readouterr().err
    assert cr.main([f"x={a}:recurrent:recall", "--out", str(out)]) == 1  # recurrent has no recall reading
    assert "no 'ppl_recall'" in capsys.readouterr().err
    assert cr.main([f"x={a}:recurrent:cache", "--out", str(out)]) == 1
    assert "expected LABEL=FILE:METHOD:READING" in capsys.readouterr().err


def test_compare_runs_block_bootstrap_counts_neighbouring_segments_together():
    spec = importlib.util.spec_from_file_location("compare_runs", ROOT / "benchmarks" / "lm" / "compare_runs.py")
    cr = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cr)
    ref = [["b", 128 * i, 100.0, 100] for i in range(20)]
    # the first ten segments 1 nat better, the last ten 1 nat worse: a difference that runs along the book
    other = [["b", 128 * i, 99.0 if i < 10 else 101.0, 100] for i in range(20)]
    interleaved = [other[j] for i in range(10) for j in (i, i + 10)]  # given out of order: read in book order
    iid, blocks = cr.paired(ref, other), cr.paired(ref, interleaved, block=10)
    assert iid["nll_diff_per_token"] == blocks["nll_diff_per_token"] == 0.0 and blocks["block"] == 10
    width = [p["ci95"][1] - p["ci95"][0] for p in (iid, blocks)]
    assert width[1] > 1.5 * width[0]  # resampling runs of neighbours sees the drift that single segments hide
    whole = cr.paired(ref, other, block=15)  # fewer than two blocks: no interval rather than a false one
    assert whole["ci95"] is None and whole["nll_diff_per_token"] == 0.0
    with pytest.raises(ValueError, match="block must be >= 1"):
        cr.paired(ref, other, block=0)


def test_latin1_book_needs_and_takes_encoding(tmp_path):
    book = tmp_path / "latin1.txt"
    book.write_bytes(("Le caf\u00e9 du port ouvrait t\u00f4t chaque matin pour les marins.\n\n"
                      "Les p\u00eacheurs y buvaient un caf\u00e9 noir avant de partir en mer.\n\n").encode("latin-1"))
    msg = _fails("recon", "--data", str(book), "--base-model", "tiny-llama", "--methods", "no_memory")
    assert "invalid UTF-8 at byte" in msg and "--encoding" in msg
    doc = run_eval("recon", book, "--limit", "1", "--ratios", "4", "--methods", "no_memory", "--encoding", "latin-1")
    assert doc["task"] == "recon"
    assert "unknown encoding" in _fails("recon", "--data", str(book), "--encoding", "klingon")


def test_locomo_per_doc_keeps_the_first_questions_of_every_conversation():
    from r3mem.evaluate import locomo
    from r3mem.evaluate.common import EvalOptions

    every = locomo.load(LOCOMO, EvalOptions())
    one_each = locomo.load(LOCOMO, EvalOptions(per_doc=1))
    assert len(every) == len(one_each) == 2 and sum(len(d.questions) for d in every) > 2
    assert [[q.qid for q in d.questions] for d in one_each] == [[d.questions[0].qid] for d in every]
    with pytest.raises(ValueError, match=r"--per-doc: must be >= 1 \(got 0\)"):
        EvalOptions(per_doc=0).validate()
