"""Seconds to rebuild a 500-turn conversation's memory after one turn is edited, with and without reusing
the slots of the unchanged turns (`ChatAgent.reusable_slots`), and after a delete.

The conversation is the LoCoMo history of `bench_latency.py` written through a `ChatAgent` on a SQLite
store (the service's path). Turn 250 is edited (the rebuild with reuse), edited again through the store and
a plain `sync` (from scratch: what every rebuild cost before), edited back to the first edit (with reuse:
the same slot spans as the first rebuild, checked), then deleted (with reuse). Writes JSON.

    python benchmarks/answers/bench_rebuild.py --out benchmarks/answers/results/rebuild_500.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time
from pathlib import Path

import torch
from bench_latency import history

from r3mem.agent import ChatAgent, ensure_session
from r3mem.engine import R3Mem
from r3mem.evaluate import locomo
from r3mem.evaluate.common import EvalOptions
from r3mem.evaluate.runner import environment, git_info
from r3mem.memcache import MemoryCache
from r3mem.store import MemoryStore


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/locomo/locomo_dev8.json"))
    ap.add_argument("--turns", type=int, default=500)
    ap.add_argument("--edit", type=int, default=250, help="the turn edited (1-based)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    engine = R3Mem.from_pretrained()
    turns = history(locomo.load(a.data, EvalOptions()), a.turns)
    out = {"benchmark": "rebuild after an edit", "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "turns": a.turns, "edited_turn": a.edit, "adapter_hash": engine.adapter_hash,
           "memory_bits": engine.config.memory_bits, "levels": list(engine.config.hierarchy_levels)}
    with tempfile.TemporaryDirectory() as d, MemoryStore(Path(d) / "store.db") as store:
        ensure_session(store, "bench", "s")
        agent = ChatAgent(engine, store, "bench", "s", cache=MemoryCache())
        t0 = time.perf_counter()
        agent.add_turns(("speaker", t) for t in turns)
        out["write_s"] = time.perf_counter() - t0
        edited = [turns[a.edit - 1] + " (edited)", turns[a.edit - 1] + " (edited again)"]
        t0 = time.perf_counter()
        agent.edit_turn(a.edit, edited[0])
        out["edit_rebuild_reusing_s"] = time.perf_counter() - t0
        spans = [(s.key, s.start, s.end) for s in agent.memory()[0].paragraphs]
        t0 = time.perf_counter()
        store.edit_turn("bench", "s", a.edit, edited[1])  # the memory is reset; a plain sync rebuilds it all
        agent.sync()
        out["edit_rebuild_from_scratch_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        agent.edit_turn(a.edit, edited[0])
        out["edit_back_rebuild_reusing_s"] = time.perf_counter() - t0
        assert [(s.key, s.start, s.end) for s in agent.memory()[0].paragraphs] == spans
        t0 = time.perf_counter()
        agent.delete_turn(a.edit)
        out["delete_rebuild_reusing_s"] = time.perf_counter() - t0
    out["versions"], out["git"] = environment(), git_info()
    print(json.dumps({k: v for k, v in out.items() if k.endswith("_s")}), flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
