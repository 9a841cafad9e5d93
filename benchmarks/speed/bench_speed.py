"""Speed and memory of r3mem against the bare base model, measured in the same run.

- write throughput (tokens/s): r3mem document-level write and hierarchical write (the engine's levels: the
  shipped defaults unless `--levels`), against a plain
  forward pass of the base model over the same tokens in the same segment-sized windows;
- recall latency per reconstructed token (KV-cached greedy expansion) against plain greedy
  generation of the base model with its cache, from a short prompt (no memory) and with the whole
  history as prompt where it fits the window (full context: prefill + per-token);
- memory-state bytes (constant document state + linearly growing slots) and peak RSS vs length.

Usage:
    python benchmarks/speed/bench_speed.py --lengths 1024,4096,16384 --batch-sizes 1,4 \
        --out benchmarks/speed/results/cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import torch

from r3mem.config import R3MemConfig
from r3mem.engine import R3Mem
from r3mem.quant import packed_bytes
from r3mem.text import read_text, strip_gutenberg


def _text_of(engine: R3Mem, source: str, n_tokens: int) -> str:
    text = strip_gutenberg(read_text(source))
    while len(engine.tokenizer(text, add_special_tokens=False)["input_ids"]) < n_tokens:
        text += "\n\n" + text
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"][:n_tokens]
    return engine.tokenizer.decode(ids)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


@torch.no_grad()
def _base_forward(engine: R3Mem, texts: list[str]) -> float:
    """Plain forward of the base model over the same tokens, in segment_len windows, batched."""
    seg, tok = engine.config.segment_len, engine.tokenizer
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    t0 = time.perf_counter()
    with engine.model.adapters_disabled():
        for s in range(0, max(map(len, ids)), seg):
            rows = [i[s:s + seg] for i in ids if len(i) > s]
            width = max(map(len, rows))
            x = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
            m = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
            engine.model.lm(input_ids=x, attention_mask=m)
    return time.perf_counter() - t0


def _base_generate(engine: R3Mem, ids: list[int], n_new: int) -> None:
    prompt = torch.tensor([ids])
    with engine.model.adapters_disabled():
        engine.model.lm.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n_new,
                                 min_new_tokens=n_new, do_sample=False, pad_token_id=engine.tokenizer.pad_token_id)


@torch.no_grad()
def _recall_latency(engine: R3Mem, mem, history: str, n_new: int, repeats: int) -> dict:
    """Per-token latency of recall (KV-cached expansion of a paragraph slot) against plain cached
    greedy generation of the base model: from a short prompt (`no_memory`) and, where the history
    fits the model's window, with the whole history as its prompt (`full_context`, prefill timed
    apart). Median of `repeats` runs, interleaved so that machine noise hits every method alike.

    `r3mem_adapters_off_s_per_token` is the same recall loop with LoRA switched off (the memory is
    still the cache prefix): the difference to `r3mem_s_per_token` is what the expansion adapter's
    LoRA branches cost per token, the rest is the decode loop's own overhead against `generate`."""
    tok, slot = engine.tokenizer, mem.paragraphs[0]
    short = tok("The history of the town", add_special_tokens=False)["input_ids"]
    hist = tok(history, add_special_tokens=False)["input_ids"]
    window = getattr(engine.model.lm.config, "max_position_embeddings", 0) or 0
    fits = len(hist) + n_new <= window
    t_r, t_off, t_b, t_full, t_pre = [], [], [], [], []

    def recall_off():
        with engine.model.adapters_disabled():
            engine.model.reconstruct(slot.state[None], n_new, None)

    for _ in range(repeats):
        t_r.append(_timed(lambda: engine.model.reconstruct(slot.state[None], n_new, None))[1] / n_new)
        t_off.append(_timed(recall_off)[1] / n_new)
        t_b.append(_timed(lambda: _base_generate(engine, short, n_new))[1] / n_new)
        if fits:
            t_pre.append(_timed(lambda: _base_generate(engine, hist, 1))[1])
            t_full.append(max(0.0, _timed(lambda: _base_generate(engine, hist, n_new + 1))[1] - t_pre[-1]) / n_new)
    med = statistics.median
    out = {"new_tokens": n_new, "repeats": repeats, "r3mem_s_per_token": med(t_r), "base_s_per_token": med(t_b),
           "ratio_base_over_r3mem": med(t_b) / med(t_r), "r3mem_adapters_off_s_per_token": med(t_off),
           "r3mem_runs": t_r, "r3mem_adapters_off_runs": t_off, "base_runs": t_b}
    out["full_context"] = ({"prefill_s": med(t_pre), "s_per_token": med(t_full), "prompt_tokens": len(hist)} if fits
                           else {"skipped": f"{len(hist)} tokens do not fit the {window}-token window"})
    return out


def memory_cost(engine: R3Mem, mem, text: str, n_tokens: int) -> dict:
    """What a memory costs to keep: bytes per memory token, per slot, per 1,000 written tokens, and
    the memory file's size against the text's own UTF-8 size."""
    slots = mem.paragraphs + mem.entities
    mem_tokens = mem.doc_state.shape[-2] + sum(s.n_mem_tokens for s in slots)
    state = mem.state_bytes()
    file_bytes = len(engine.to_bytes(mem))
    return {"memory_dtype": str(mem.doc_state.dtype).removeprefix("torch."), "memory_tokens": mem_tokens,
            "bytes_per_memory_token": state / max(mem_tokens, 1),
            "bytes_per_slot": sum(packed_bytes(s.packed) if s.packed is not None
                                  else s.state.numel() * s.state.element_size() for s in slots) / max(len(slots), 1),
            "bytes_per_1k_text_tokens": state / n_tokens * 1000, "memory_file_bytes": file_bytes,
            "file_bytes_per_1k_text_tokens": file_bytes / n_tokens * 1000,
            "text_bytes": len(text.encode()), "file_over_text": file_bytes / max(len(text.encode()), 1)}


def costs(engine: R3Mem, source: str, lengths: list[int]) -> list[dict]:
    """`memory_cost` alone (no timings, so it may run beside other work): one full write per length."""
    rows = []
    for n in lengths:
        text = _text_of(engine, source, n)
        mem = engine.write(text)
        row = {"tokens": n, "paragraph_slots": len(mem.paragraphs), "entity_slots": len(mem.entities),
               "doc_state_shape": list(mem.doc_state.shape), **memory_cost(engine, mem, text, n)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


LEVEL_SETS = (("document",), ("document", "paragraph"), ("document", "paragraph", "entity"))


def cost_grid(model: Path | None, source: str, lengths: list[int], bits: list[int]) -> list[dict]:
    """`costs` for every memory precision and hierarchy setting: what a memory of the same text costs."""
    rows = []
    for b in bits:
        for levels in LEVEL_SETS:
            engine = R3Mem.from_pretrained(model, levels=levels, memory_bits=b)
            for row in costs(engine, source, lengths):
                rows.append({"memory_bits": b, "levels": list(levels), **row})
    return rows


def run(engine: R3Mem, source: str, lengths: list[int], batch_sizes: list[int], repeats: int = 3) -> list[dict]:
    from r3mem.memory import WritePolicy

    rows = []
    doc_only = WritePolicy(levels=("document",))
    levels = engine.config.hierarchy_levels  # the "hierarchy" write: the engine's own levels (the shipped defaults)
    # Warm-up, so that one-off costs (allocator, kernel selection, lazy imports) land on no method.
    warm = _text_of(engine, source, 256)
    _base_forward(engine, [warm])
    engine.write_many([warm])
    for n in lengths:
        text = _text_of(engine, source, n)
        for b in batch_sizes:
            texts = [text] * b
            t_base = _base_forward(engine, texts)
            _, t_doc = _timed(lambda: engine.write_many(texts, policy=doc_only))  # noqa: B023 - called at once
            mems, t_full = _timed(lambda: engine.write_many(texts))  # noqa: B023 - called at once
            mem = mems[0]
            row = {
                "tokens": n,
                "batch": b,
                "base_forward_tok_s": n * b / t_base,
                "r3mem_doc_write_tok_s": n * b / t_doc,
                "r3mem_full_write_tok_s": n * b / t_full,
                "ratio_doc_vs_base": t_base / t_doc,
                "ratio_full_vs_base": t_base / t_full,
                "levels": list(levels), "memory_bits": engine.config.memory_bits,
                "doc_state_bytes": packed_bytes(mem.doc_packed) if mem.doc_packed is not None
                else mem.doc_state.numel() * mem.doc_state.element_size(),
                "total_state_bytes": mem.state_bytes(),
                "paragraph_slots": len(mem.paragraphs),
                "entity_slots": len(mem.entities),
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                **memory_cost(engine, mem, text, n),
            }
            if b == 1:
                row["recall"] = _recall_latency(engine, mem, text, 32, repeats)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    r1 = [r for r in rows if r["batch"] == 1]
    x = [r["tokens"] for r in r1]
    fig, ax = plt.subplots(1, 3, figsize=(15, 3.6))
    ax[0].plot(x, [r["tokens"] / r["r3mem_doc_write_tok_s"] for r in r1], "o-", label="r3mem write (document level)")
    ax[0].plot(x, [r["tokens"] / r["r3mem_full_write_tok_s"] for r in r1], "s-", label="r3mem write (hierarchy)")
    ax[0].plot(x, [r["tokens"] / r["base_forward_tok_s"] for r in r1], "^--", label="base forward")
    ax[0].set(xscale="log", yscale="log", xlabel="history tokens", ylabel="seconds", title="time: linear in length")
    ax[0].legend(fontsize=8)
    ax[1].plot(x, [r["doc_state_bytes"] for r in r1], "o-", label="document state")
    ax[1].plot(x, [r["total_state_bytes"] for r in r1], "s-", label="state + slots")
    ax[1].set(xscale="log", yscale="log", xlabel="history tokens", ylabel="bytes", title="memory state")
    ax[1].legend(fontsize=8)
    rec = [r for r in r1 if "recall" in r]
    xr = [r["tokens"] for r in rec]
    ax[2].plot(xr, [r["recall"]["r3mem_s_per_token"] * 1e3 for r in rec], "o-", label="r3mem recall")
    off = [(r["tokens"], r["recall"]["r3mem_adapters_off_s_per_token"] * 1e3) for r in rec
           if "r3mem_adapters_off_s_per_token" in r["recall"]]
    if off:
        ax[2].plot(*zip(*off), "x-", label="r3mem recall, LoRA off")
    ax[2].plot(xr, [r["recall"]["base_s_per_token"] * 1e3 for r in rec], "^--", label="base, no memory")
    full = [
        (r["tokens"], r["recall"]["full_context"]["s_per_token"] * 1e3)
        for r in rec
        if "s_per_token" in r["recall"]["full_context"]
    ]
    if full:
        ax[2].plot(*zip(*full), "s:", label="base, full context")
    ax[2].set(
        xscale="log", xlabel="history tokens", ylabel="ms per generated token", title="recall / generation latency"
    )
    ax[2].set_ylim(bottom=0)
    ax[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--base-model", default=None, help="e.g. tiny-llama for a smoke run")
    ap.add_argument("--source", default="../shared/data/pg19/10146.txt")
    ap.add_argument("--lengths", default="1024,4096,16384")
    ap.add_argument("--batch-sizes", default="1,4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="recall timings: median of this many runs")
    ap.add_argument("--cost-only", action="store_true", help="only what memories cost on disk (no timings)")
    ap.add_argument("--cost-grid", default=None, help="with --cost-only: memory_bits to cost, e.g. 16,8,4,2, each "
                    "with the document level alone, + paragraphs, + entities")
    ap.add_argument("--levels", default=None, help="hierarchy levels of the timed write (default: the adapter's)")
    ap.add_argument("--memory-bits", type=int, default=None, help="memory_bits (default: the adapter's)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg = R3MemConfig(base_model=a.base_model) if a.base_model else None
    engine = R3Mem.from_pretrained(a.model, base_model=a.base_model, config=cfg,
                                   levels=a.levels.split(",") if a.levels else None, memory_bits=a.memory_bits)
    lengths = [int(x) for x in a.lengths.split(",")]
    if a.cost_only and a.cost_grid:
        rows = cost_grid(a.model, a.source, lengths, [int(x) for x in a.cost_grid.split(",")])
    elif a.cost_only:
        rows = costs(engine, a.source, lengths)
    else:
        rows = run(engine, a.source, lengths, [int(x) for x in a.batch_sizes.split(",")], a.repeats)
    import subprocess

    commit = (
        subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or None
    )
    result = {
        "benchmark": "speed",
        "date": datetime.date.today().isoformat(),
        "commit": commit,
        "device": f"cpu x{a.threads} threads ({platform.processor() or platform.machine()})",
        "torch": torch.__version__,
        "adapter_hash": engine.adapter_hash,
        "config": engine.config.to_dict(),
        "rows": rows,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2))
    if not a.cost_only:
        plot(rows, a.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
