"""A small run of `benchmarks/service/load_test.py` (the full run writes benchmarks/service/results/).

Tiny in-memory models throughout; torch on one thread.
"""

from __future__ import annotations

import json

import torch
from _helpers import load_test

torch.set_num_threads(1)


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
