"""Seconds per answer as the history grows: 100, 1,000 and 10,000 turns, and writing 500 turns.

A history is the LoCoMo conversations' turns one after another (`[date] speaker: text`, as `r3mem eval
locomo` writes them), repeated from the start when more turns are needed. The memory is written once and
grown: 100 turns, then on to 1,000, then to 10,000 (`engine.write` of 64 turns at a time: the same memory
as turn by turn, writes being split-invariant), and at each size the same questions (the first
conversation's, categories 1-4) are answered, model loaded, one at a time:

- `r3mem text`: `engine.answer(q, mem)`: keys search, the top 2 slots expanded (decoded; no slot's
  cached expansion is reused: every question pays for its own), the reader;
- `r3mem text checked`: the same with `drafts=` the slots' source text: each expansion is checked against
  it in one pass, and where it differs decoded with the draft fed ahead (speculative decoding; the same
  text as decoding), as `ChatAgent` does;
- `r3mem cache`: `engine.answer(q, mem, read="cache")`: keys search, the reader reads the slots' cache;
- `r3mem source`: `engine.find` + the reader over the found slots' own turns (`ChatAgent(read="source")`);
- `bm25`: BM25 over the turns (index built once per size) + the reader, the same prompt and budget.

Separately, 500 turns are written one turn per `engine.write` call, as a conversation arrives, and also
through a `ChatAgent` on a SQLite store (`add_turns`, the batched catch-up), and a question is answered
through the agent with its memory cache (the service's path). Writes JSON and a PNG.

    python benchmarks/answers/bench_latency.py --out benchmarks/answers/results/latency_cpu.json

`--write-only SETTINGS` times only the agent's 500-turn catch-up, `--repeats` times for each setting
(`bits:levels`, e.g. `16:document,paragraph,entity;4:document,paragraph`), the settings interleaved run by
run so that a change in the machine's load hits each alike, every run in a fresh process.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from r3mem.engine import R3Mem
from r3mem.evaluate import locomo
from r3mem.evaluate.common import EvalOptions
from r3mem.evaluate.runner import environment, git_info
from r3mem.prompts import answer_prompt
from r3mem.retrieval import BM25Retriever

BATCH = 64


def history(docs, n: int) -> list[str]:
    turns = [u for d in docs for u in d.units]
    return [turns[i % len(turns)] for i in range(n)]


def _stats(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"median_s": statistics.median(xs), "p90_s": xs[min(len(xs) - 1, int(0.9 * len(xs)))],
            "mean_s": statistics.mean(xs), "n": len(xs)}


def answer_latency(engine: R3Mem, mem, turns: list[str], questions: list[str], budget: int = 256) -> dict:
    text = "".join(t + "\n\n" for t in turns)
    bm = BM25Retriever()
    bm.index(turns)
    starts, pos = [], 0
    for t in turns:
        starts.append(pos)
        pos += len(t) + 2
    out: dict[str, list[float]] = {"r3mem text": [], "r3mem text checked": [], "r3mem cache": [],
                                   "r3mem source": [], "bm25": []}
    accepted, same = [], []  # per question: slots whose checked expansion needed no decoding; same answer?
    tok = engine.tokenizer

    def head(s: str) -> str:
        ids = tok(s, add_special_tokens=False)["input_ids"]
        return s if len(ids) <= budget else tok.decode(ids[:budget])

    def cold() -> None:  # every question pays for its expansions (no slot's cached expansion is reused)
        for s in mem.paragraphs:
            s.recalled = None

    for q in questions:
        cold()
        t0 = time.perf_counter()
        plain, _ = engine.answer(q, mem, top_k=2, max_new_tokens=32)
        out["r3mem text"].append(time.perf_counter() - t0)
        cold()
        decoded = _count_decodes(engine)
        t0 = time.perf_counter()
        checked, _ = engine.answer(q, mem, top_k=2, max_new_tokens=32, drafts=lambda s: text[s.start:s.end])
        out["r3mem text checked"].append(time.perf_counter() - t0)
        accepted.append(2 - decoded())
        same.append(plain == checked)
        t0 = time.perf_counter()
        engine.answer(q, mem, top_k=2, max_new_tokens=32, read="cache")
        out["r3mem cache"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        found = sorted((s for s, _ in engine.find(mem, q, top_k=2)), key=lambda s: s.start)
        engine.read(answer_prompt(head("\n\n".join(text[s.start:s.end] for s in found)), q), 32)
        out["r3mem source"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ranked = sorted(i for i, _ in bm.search(q, k=2))
        engine.read(answer_prompt(head("\n\n".join(turns[i] for i in ranked)), q), 32)
        out["bm25"].append(time.perf_counter() - t0)
    res = {name: _stats(v) for name, v in out.items()}
    res["r3mem text checked"]["slots_accepted_per_question"] = statistics.mean(accepted)
    res["r3mem text checked"]["same_answer_as_decoded"] = statistics.mean(same)
    return res


def _count_decodes(engine: R3Mem):
    """Counts the slots the next expansion decodes (those whose draft was refused, decoded with the draft
    fed ahead, and any decoded without one): call the result."""
    from r3mem import recall as recall_mod

    real, real_drafted, rows = recall_mod.reconstruct_scored, recall_mod._decode_drafted, [0]

    def counting(model, tok, states, *a, **k):
        rows[0] += len(states)
        return real(model, tok, states, *a, **k)

    def counting_drafted(*a, **k):
        rows[0] += 1
        return real_drafted(*a, **k)

    recall_mod.reconstruct_scored, recall_mod._decode_drafted = counting, counting_drafted

    def done() -> int:
        recall_mod.reconstruct_scored, recall_mod._decode_drafted = real, real_drafted
        return rows[0]

    return done


def write_500(engine: R3Mem, turns: list[str], by_turn: bool = True) -> dict:
    from r3mem.agent import ChatAgent, ensure_session
    from r3mem.memcache import MemoryCache
    from r3mem.store import MemoryStore

    t0 = time.perf_counter()
    mem = engine.new_memory()
    for t in turns if by_turn else []:
        mem = engine.write(t + "\n\n", mem)
    by_turn_s = time.perf_counter() - t0 if by_turn else None
    with tempfile.TemporaryDirectory() as d, MemoryStore(Path(d) / "store.db") as store:
        ensure_session(store, "bench", "s")
        agent = ChatAgent(engine, store, "bench", "s", cache=MemoryCache(), read="source")
        t0 = time.perf_counter()
        agent.add_turns(("speaker", t) for t in turns)
        catch_up = time.perf_counter() - t0
        t0 = time.perf_counter()
        agent.respond("What did they talk about first?", max_new_tokens=32)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        agent.respond("When did Caroline go to the support group?", max_new_tokens=32)
        cached = time.perf_counter() - t0
        blob = len(store.get_memory("bench", "s").blob)
        mem = agent.memory()[0]
    return {"turns": len(turns), "tokens": mem.n_tokens, "turn_by_turn_s": by_turn_s,
            "agent_add_turns_s": catch_up, "agent_first_answer_s": first, "agent_cached_answer_s": cached,
            "memory_bytes": mem.state_bytes(), "memory_file_bytes": blob,
            "paragraph_slots": len(mem.paragraphs), "entity_slots": len(mem.entities)}


def write_settings(a) -> None:
    """The agent's 500-turn catch-up at each setting, `a.repeats` times, settings interleaved, each run in
    a fresh process (in one long-lived process the same write grew 20-40% slower run after run)."""
    import subprocess
    import sys

    settings = a.write_only.split(";")
    runs: dict[str, list[dict]] = {x: [] for x in settings}
    with tempfile.TemporaryDirectory() as d:
        for r in range(a.repeats):
            for x in settings:
                out = Path(d) / "run.json"
                subprocess.run([sys.executable, __file__, "--write-one", x, "--out", str(out), "--data", str(a.data),
                                "--threads", str(a.threads), "--compute-dtype", a.compute_dtype], check=True)
                runs[x].append(json.loads(out.read_text()))
                print(r, x, round(runs[x][-1]["agent_add_turns_s"], 1), "s", runs[x][-1]["memory_file_bytes"],
                      "bytes", flush=True)
    first = runs[settings[0]][0]
    result = {"benchmark": "writing 500 turns through the agent", "date": datetime.datetime.now().isoformat(
        timespec="seconds"), "threads": a.threads, "compute_dtype": first["compute_dtype"],
        "adapter_hash": first["adapter_hash"],
        "settings": [{"memory_bits": out[0]["memory_bits"], "levels": out[0]["levels"],
                      "agent_add_turns_s": [x["agent_add_turns_s"] for x in out],
                      "median_s": statistics.median(x["agent_add_turns_s"] for x in out), "runs": out}
                     for out in runs.values()],
        "versions": environment(), "git": git_info()}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))


def write_one(a) -> None:
    """One run of `write_settings` (its own process): the 500-turn catch-up at `bits:levels`."""
    bits, levels = a.write_one.split(":")
    engine = R3Mem.from_pretrained(compute_dtype=a.compute_dtype, memory_bits=int(bits), levels=levels.split(","))
    out = write_500(engine, history(locomo.load(a.data, EvalOptions()), 500), by_turn=False)
    out.update(memory_bits=int(bits), levels=levels.split(","), compute_dtype=engine.config.compute_dtype,
               adapter_hash=engine.adapter_hash)
    a.out.write_text(json.dumps(out))


def plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    sizes = [r["turns"] for r in result["per_size"]]
    for name in result["per_size"][0]["answer"]:
        ax.plot(sizes, [r["answer"][name]["median_s"] for r in result["per_size"]], "o-", label=name)
    ax.set_xscale("log")
    ax.set_xlabel("turns in the history")
    ax.set_ylabel("seconds per question (median; recall + answer)")
    ax.axhline(2.0, color="grey", ls=":", lw=1, label="target 2 s")
    ax.set_title(f"Answer latency vs history, {result['threads']} CPU threads, {result['compute_dtype']}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/locomo/locomo_dev8.json"))
    ap.add_argument("--sizes", default="100,1000,10000")
    ap.add_argument("--questions", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compute-dtype", default="auto")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--write-only", help="settings 'bits:levels;...': time only the agent's 500-turn catch-up")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write-one", help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if a.write_only:
        return write_settings(a)
    if a.write_one:
        return write_one(a)
    engine = R3Mem.from_pretrained(compute_dtype=a.compute_dtype)
    docs = locomo.load(a.data, EvalOptions())
    questions = [q.question for q in docs[0].questions][:a.questions]
    sizes = sorted(int(x) for x in a.sizes.split(","))
    turns = history(docs, max(sizes))
    result = {"benchmark": "answer latency", "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "threads": a.threads, "compute_dtype": engine.config.compute_dtype, "adapter_hash": engine.adapter_hash,
              "questions": questions, "per_size": []}
    print("writing 500 turns one by one, then through an agent...", flush=True)
    result["write_500"] = write_500(engine, history(docs, 500))
    print(json.dumps(result["write_500"]), flush=True)
    mem, done, write_s = engine.new_memory(), 0, 0.0
    for n in sizes:
        t0 = time.perf_counter()
        for i in range(done, n, BATCH):
            mem = engine.write("".join(t + "\n\n" for t in turns[i:min(n, i + BATCH)]), mem)
        write_s += time.perf_counter() - t0
        done = n
        lat = answer_latency(engine, mem, turns[:n], questions)
        row = {"turns": n, "tokens": mem.n_tokens, "paragraph_slots": len(mem.paragraphs),
               "entity_slots": len(mem.entities), "memory_bytes": mem.state_bytes(), "write_s_cumulative": write_s,
               "answer": lat}
        result["per_size"].append(row)
        print(n, {k: round(v["median_s"], 2) for k, v in lat.items()}, flush=True)
    result["versions"], result["git"] = environment(), git_info()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    plot(result, a.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
