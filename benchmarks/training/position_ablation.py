"""Position numbering of a key/value memory: a controlled ablation (issue 12, item 1).

Each run trains a fresh SmolLM2-135M R3MemModel (both LoRA adapters + memory tokens, lr 1e-3, batch
4) to autoencode fixed-length chunks of the training books into ``chunk / ratio`` memory tokens, the
same chunks in the same order for every scheme, then scores held-out chunks of book 10356
(teacher-forced loss/accuracy, greedy token exact match). Fixed-length chunks need no padding, so the
position ids of every token are set here explicitly:

* ``prefix``  (the library's scheme): the memory at 0..k-1, the reader after it (k, k+1, ...).
* ``spread``  memory token j sits at the end of the chunk of the text it summarises, in the compress
  pass (the write token's rotary position inside the text span) and when read: the reader's tokens
  take the positions the text had, so the memory token of text position i is near position i.
* ``center``  like ``spread`` with memory token j at the middle of its chunk.

Rotary attention depends only on relative positions, so "prefix" is the compress pass's geometry
(reader after the write tokens), and "spread"/"center" give the decoder a local alignment prior.

Usage: python benchmarks/training/position_ablation.py --scheme spread --seed 0 --out DIR/spread_seed0.json
       python benchmarks/training/position_ablation.py --summarize benchmarks/training/results/positions
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from r3mem import kv
from r3mem.backbone import load_base
from r3mem.config import R3MemConfig
from r3mem.model import COMPRESS, EXPAND, EXPAND_MARK, SEP, R3MemModel
from r3mem.text import read_text, strip_gutenberg

TRAIN_BOOKS = ["10146", "10321", "10762"]
SCHEMES = ("prefix", "spread", "center")


def chunks(tok, path: Path, n: int) -> list[list[int]]:
    ids = tok(" ".join(strip_gutenberg(read_text(path)).split()))["input_ids"]
    return [ids[i:i + n] for i in range(0, len(ids) - n, n)]


def mem_positions(scheme: str, n: int, k: int) -> torch.Tensor:
    """Canonical positions [k] of the memory tokens, in the frame where the text sits at 0..n-1."""
    j = torch.arange(k)
    if scheme == "prefix":
        return j  # unused by the reader offsets below: prefix reads memory at 0..k-1
    if scheme == "spread":
        return (j + 1) * n // k - 1
    return ((2 * j + 1) * n) // (2 * k)


def compress(model: R3MemModel, ids: torch.Tensor, k: int, scheme: str) -> torch.Tensor:
    """[B, n] -> kv memory [B, L, 2, H, k, hd] with keys at canonical positions."""
    B, n = ids.shape
    x = torch.cat([model.memory.marker(B, SEP), model.embed(ids), model.memory.write_tokens(B, k)], 1)
    text_pos = torch.arange(n + 1)  # SEP at 0, text at 1..n
    if scheme == "prefix":
        write_pos = n + 1 + torch.arange(k)
        shift = -(n + 1)  # -> 0..k-1
    else:
        write_pos = 1 + mem_positions(scheme, n, k)
        shift = -1  # -> text frame 0..n-1
    pos = torch.cat([text_pos, write_pos]).expand(B, -1)
    model._set_direction(COMPRESS)
    # An explicit mask: without one (and no cache) transformers reads non-consecutive position ids as
    # packed sequences and would cut the write tokens off from the text.
    out = model.body(inputs_embeds=x, attention_mask=torch.ones(B, x.shape[1], dtype=torch.long), position_ids=pos,
                     use_cache=True)
    mem = kv.from_cache(out.past_key_values, k)
    return kv.reposition(model._rot, mem, torch.full((B,), shift))


def _reader_positions(scheme: str, k: int, length: int) -> tuple[torch.Tensor, int]:
    """Positions of [EXPAND, SEP, t_0, ...] (length tokens) and the shift applied to memory keys."""
    if scheme == "prefix":
        return k + torch.arange(length), 0
    return torch.arange(length), 2  # t_i at 2 + i, memory token of text position i near 2 + i


def recon_loss(model: R3MemModel, mem: torch.Tensor, ids: torch.Tensor, scheme: str):
    B, n = ids.shape
    k = mem.shape[-2]
    pos, shift = _reader_positions(scheme, k, n + 1)
    m = kv.reposition(model._rot, mem, torch.full((B,), shift))
    x = torch.cat([model.memory.marker(B, EXPAND_MARK), model.memory.marker(B, SEP), model.embed(ids[:, :-1])], 1)
    model._set_direction(EXPAND)
    out = model.body(inputs_embeds=x, position_ids=pos.expand(B, -1), past_key_values=kv.to_cache(m, x.dtype),
                     use_cache=True)
    logits = model.logits(out.last_hidden_state[:, 1:]).float()
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids.reshape(-1))
    acc = (logits.argmax(-1) == ids).float().mean()
    return loss, acc


@torch.no_grad()
def greedy(model: R3MemModel, mem: torch.Tensor, n: int, scheme: str) -> torch.Tensor:
    B, k = mem.shape[0], mem.shape[-2]
    pos, shift = _reader_positions(scheme, k, n + 1)
    cache = kv.to_cache(kv.reposition(model._rot, mem, torch.full((B,), shift)), mem.dtype)
    model._set_direction(EXPAND)
    x = torch.cat([model.memory.marker(B, EXPAND_MARK), model.memory.marker(B, SEP)], 1)
    out = model.body(inputs_embeds=x, position_ids=pos[:2].expand(B, -1), past_key_values=cache, use_cache=True)
    toks = []
    for i in range(n):
        nxt = model.logits(out.last_hidden_state[:, -1]).argmax(-1)
        toks.append(nxt)
        if i == n - 1:
            break
        out = model.body(inputs_embeds=model.embed(nxt[:, None]), position_ids=pos[2 + i:3 + i].expand(B, -1),
                         past_key_values=out.past_key_values, use_cache=True)
    return torch.stack(toks, 1)


def evaluate(model: R3MemModel, held: list[list[int]], k: int, scheme: str) -> dict:
    model.eval()
    ids = torch.tensor(held)
    with torch.no_grad():
        mem = compress(model, ids, k, scheme)
        loss, acc = recon_loss(model, mem, ids, scheme)
        hyp = greedy(model, mem, ids.shape[1], scheme)
    model.train()
    em = (hyp == ids).float().mean(1)
    return {"recon_loss": round(float(loss), 4), "teacher_forced_acc": round(float(acc), 4),
            "greedy_token_em": round(float(em.mean()), 4), "chunks_exact": int((em == 1).sum())}


def summarize(folder: Path) -> None:
    """summary.json (final held-out figures per run) and curves.png (held-out greedy EM and loss vs step)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*_seed*.json"))]
    rows = [{"scheme": r["scheme"], "seed": r["seed"], "steps": r["steps"], **r["final"]} for r in runs]
    summary = {"benchmark": "kv-position-ablation", "runs": rows}
    (folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colors = {"prefix": "tab:red", "spread": "tab:blue", "center": "tab:green"}
    for r in runs:
        pts = [(x["step"], x["held_out"]) for x in r["log"] if "held_out" in x]
        style = "-" if r["seed"] == 0 else "--"
        label = f"{r['scheme']} seed {r['seed']}"
        axes[0].plot([s for s, _ in pts], [h["greedy_token_em"] for _, h in pts], style, color=colors[r["scheme"]],
                     marker="o", label=label)
        axes[1].plot([s for s, _ in pts], [h["recon_loss"] for _, h in pts], style, color=colors[r["scheme"]],
                     marker="o", label=label)
    axes[0].set(xlabel="step (batch 4)", ylabel="held-out greedy token exact match", title="4x, 64-token chunks")
    axes[1].set(xlabel="step (batch 4)", ylabel="held-out reconstruction loss (nats/token)")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(folder / "curves.png", dpi=120)
    for row in rows:
        print(json.dumps(row))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--summarize", type=Path, help="folder of finished runs: write summary.json and curves.png")
    ap.add_argument("--scheme", choices=SCHEMES)
    ap.add_argument("--seed", type=int, default=0, help="model initialisation (LoRA, memory tokens)")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--ratio", type=float, default=4.0)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--held", type=int, default=16)
    ap.add_argument("--data", default="../shared/data/pg19")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.summarize:
        return summarize(a.summarize)
    if a.scheme is None or a.out is None:
        ap.error("--scheme and --out are required for a run")
    if a.threads:
        torch.set_num_threads(a.threads)
    k = max(1, round(a.chunk / a.ratio))
    base, tok = load_base("smollm2-135m")
    cfg = R3MemConfig(memory_mode="kv", num_mem_tokens=16, max_slot_tokens=64, lora_rank=8, lora_alpha=16,
                      target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
                      seed=a.seed)
    model = R3MemModel(base, cfg)
    data = Path(a.data)
    train = [c for b in TRAIN_BOOKS for c in chunks(tok, data / f"{b}.txt", a.chunk)]
    random.Random(1234).shuffle(train)  # data order fixed across schemes and seeds
    held_all = chunks(tok, data / "10356.txt", a.chunk)
    held = held_all[20:20 + a.held]  # past the front matter
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=a.lr, weight_decay=0.0)
    log, t0 = [], time.perf_counter()
    model.train()
    for step in range(a.steps):
        ids = torch.tensor(train[step * a.batch:(step + 1) * a.batch])
        loss, acc = recon_loss(model, compress(model, ids, k, a.scheme), ids, a.scheme)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        row = {"step": step + 1, "loss": round(loss.item(), 4), "acc": round(acc.item(), 4),
               "elapsed_s": round(time.perf_counter() - t0, 1)}
        if (step + 1) % a.eval_every == 0 or step + 1 == a.steps:
            row["held_out"] = evaluate(model, held, k, a.scheme)
            print(json.dumps(row), flush=True)
        log.append(row)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    res = {"benchmark": "kv-position-ablation", "scheme": a.scheme, "seed": a.seed, "steps": a.steps,
           "chunk": a.chunk, "ratio": a.ratio, "memory_tokens": k, "batch": a.batch, "lr": a.lr,
           "held_out_chunks": a.held, "final": log[-1]["held_out"], "log": log,
           "wall_s": round(time.perf_counter() - t0, 1), "threads": torch.get_num_threads()}
    out.write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
