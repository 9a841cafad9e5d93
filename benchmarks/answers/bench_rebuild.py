"""Seconds to rebuild a conversation's memory after one turn is edited or deleted, against rebuilding it
from scratch, and for edits at several places in it (a curve: the cost follows the turns after the change).

The conversation is the LoCoMo history of `bench_latency.py` (500 turns by default) written through a
`ChatAgent` on a SQLite store (the service's path). A rebuild after `edit_turn` / `delete_turn` reuses the
unchanged turns' paragraph slots and refolds the document recurrence from the memory's last snapshot before
the changed turn (`ChatAgent.reusable`, `WritePolicy.snapshot_every`). For each turn in `--edits` the turn is
edited (timed: segments refolded, slots compressed); then the last one is edited again through the store and a
plain `sync` (from scratch: what a rebuild without reuse costs), edited back and forth with reuse, and the
memory is compared with the one the from-scratch rebuild wrote; finally a turn is deleted. Writes JSON.

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

import r3mem.writer as writer
from r3mem.agent import ChatAgent, ensure_session
from r3mem.engine import R3Mem
from r3mem.evaluate import locomo
from r3mem.evaluate.common import EvalOptions
from r3mem.evaluate.runner import environment, git_info
from r3mem.memcache import MemoryCache
from r3mem.store import MemoryStore


class _Work:
    """Counts what the model does in a rebuild: document segments folded and paragraph slots compressed."""

    def __init__(self) -> None:
        self.segments = self.slots = 0
        fold, compress = writer.fold, writer.compress_slots

        def counting_fold(model, state, ids, *a, **kw):
            self.segments += -(-ids.shape[1] // model.cfg.segment_len)
            return fold(model, state, ids, *a, **kw)

        def counting_compress(model, seqs, *a, **kw):
            self.slots += len(seqs)
            return compress(model, seqs, *a, **kw)

        writer.fold, writer.compress_slots = counting_fold, counting_compress

    def take(self) -> dict[str, int]:
        out = {"segments_folded": self.segments, "slots_compressed": self.slots}
        self.segments = self.slots = 0
        return out


def _timed(work: _Work, fn) -> dict[str, float | int]:
    work.take()
    t0 = time.perf_counter()
    fn()
    return {"s": round(time.perf_counter() - t0, 3), **work.take()}


def plot(out: dict, path: Path) -> None:
    """Seconds and segments refolded per rebuild against the edited turn, beside the from-scratch rebuild."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    turns = [e["turn"] for e in out["edits"]]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax1.plot(turns, [e["s"] for e in out["edits"]], "o-", label="edit, reusing slots and snapshots")
    ax1.axhline(out["from_scratch"]["s"], color="gray", ls="--", label="from scratch")
    ax1.set(xlabel=f"edited turn (of {out['turns']})", ylabel="rebuild seconds", ylim=(0, None))
    ax2.plot(turns, [e["segments_folded"] for e in out["edits"]], "o-")
    ax2.axhline(out["from_scratch"]["segments_folded"], color="gray", ls="--")
    ax2.set(xlabel=f"edited turn (of {out['turns']})", ylabel="document segments refolded", ylim=(0, None))
    ax1.legend(fontsize=8)
    fig.suptitle(f"Rebuild after an edit: {out['turns']} turns, snapshot every {out['snapshot_every']} segments, "
                 f"{out['threads']} thread(s)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/locomo/locomo_dev8.json"))
    ap.add_argument("--turns", type=int, default=500)
    ap.add_argument("--edits", default="50,250,450,500", help="turns edited, one rebuild each (1-based)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    engine = R3Mem.from_pretrained()
    turns = history(locomo.load(a.data, EvalOptions()), a.turns)
    edits = [int(x) for x in a.edits.split(",")]
    out = {"benchmark": "rebuild after an edit", "date": datetime.datetime.now().isoformat(timespec="seconds"),
           "turns": a.turns, "threads": a.threads, "adapter_hash": engine.adapter_hash,
           "memory_bits": engine.config.memory_bits, "levels": list(engine.config.hierarchy_levels),
           "snapshot_every": engine.config.snapshot_every, "segment_len": engine.config.segment_len}
    work = _Work()
    with tempfile.TemporaryDirectory() as d, MemoryStore(Path(d) / "store.db") as store:
        ensure_session(store, "bench", "s")
        agent = ChatAgent(engine, store, "bench", "s", cache=MemoryCache())
        out["write"] = _timed(work, lambda: agent.add_turns(("speaker", t) for t in turns))
        mem = agent.memory()[0]
        out["memory"] = {"n_segments": mem.n_segments, "paragraph_slots": len(mem.paragraphs),
                         "state_bytes": mem.state_bytes(), "snapshots": len(mem.snapshots),
                         "snapshot_bytes": sum(s.nbytes() for s in mem.snapshots),
                         "file_bytes": len(store.get_memory("bench", "s").blob)}
        out["edits"] = [{"turn": i, **_timed(work, lambda i=i: agent.edit_turn(i, turns[i - 1] + " (edited)"))}
                        for i in edits]
        last = edits[-1]
        again, back = turns[last - 1] + " (edited again)", turns[last - 1] + " (edited)"

        def from_scratch() -> None:
            store.edit_turn("bench", "s", last, again)  # the memory is reset; a plain sync rebuilds it all
            agent.sync()

        out["from_scratch"] = {"turn": last, **_timed(work, from_scratch)}
        scratch_blob = store.get_memory("bench", "s").blob
        out["edit_back"] = {"turn": last, **_timed(work, lambda: agent.edit_turn(last, back))}
        out["edit_again"] = {"turn": last, **_timed(work, lambda: agent.edit_turn(last, again))}
        # The same turns rebuilt with reuse and from scratch: the same file, or how far apart (slots reused were
        # compressed in other batches than a scratch write batches them).
        rebuilt, scratch = (engine.from_bytes(b) for b in (store.get_memory("bench", "s").blob, scratch_blob))
        out["rebuild_vs_scratch"] = {
            "same_bytes": engine.to_bytes(rebuilt) == scratch_blob,
            "same_spans": [(p.key, p.start, p.end) for p in rebuilt.paragraphs] ==
                          [(p.key, p.start, p.end) for p in scratch.paragraphs],
            "doc_state_max_abs_diff": float((rebuilt.doc_state.float() - scratch.doc_state.float()).abs().max()),
            "slot_state_max_abs_diff": max(float((x.state.float() - y.state.float()).abs().max())
                                           for x, y in zip(rebuilt.paragraphs, scratch.paragraphs)),
        }
        middle = edits[len(edits) // 2]
        out["delete"] = {"turn": middle, **_timed(work, lambda: agent.delete_turn(middle))}
    out["versions"], out["git"] = environment(), git_info()
    print(json.dumps({k: out[k] for k in ("write", "edits", "from_scratch", "edit_again", "delete", "memory",
                                          "rebuild_vs_scratch")}),
          flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))
    plot(out, a.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
