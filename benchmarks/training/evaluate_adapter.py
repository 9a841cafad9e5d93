"""Held-out evaluation of a trained adapter (training issue targets).

1. Reconstruction from memory: paragraphs of a held-out PG-19 book are compressed at 4x and 8x
   (memory tokens = ceil(tokens / ratio)) and expanded back by greedy decoding; token-level exact
   match = fraction of reference tokens reproduced at the same position.
2. Next-segment perplexity: segment t scored with the compressed previous segments as memory,
   against the bare base model given a truncated window of the same input length (the last
   `num_mem_tokens` raw tokens before the segment), and with no context at all.

Usage: python benchmarks/training/evaluate_adapter.py --model DIR --book ../shared/data/pg19/10356.txt --out FILE.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import platform
import subprocess
import time
from pathlib import Path

import torch

from r3mem.engine import R3Mem
from r3mem.evaluate.metrics import confidence_calibration, reconstruction_scores, token_exact_match
from r3mem.hierarchy import paragraph_spans
from r3mem.recall import reconstruct_scored
from r3mem.text import read_text, strip_gutenberg
from r3mem.tokens import tokenize
from r3mem.writer import compress_slots


def _paragraph_ids(engine: R3Mem, text: str, n: int, min_tokens: int, max_tokens: int) -> list[list[int]]:
    out = []
    for p in paragraph_spans(text):
        ids = tokenize(engine.tokenizer, " ".join(p.text.split()))
        if len(ids) >= min_tokens:
            out.append(ids[:max_tokens])
        if len(out) == n:
            break
    return out


@torch.no_grad()
def teacher_forced(engine: R3Mem, paras: list[list[int]], states: list[torch.Tensor]) -> dict:
    """Reconstruction loss (nats/token) and next-token accuracy of each paragraph (and its end token)
    given its memory, the reference fed in: what greedy decoding would reach without drifting."""
    model, eos = engine.model, engine.tokenizer.eos_token_id
    nll, hits, n = 0.0, 0, 0
    for p, st in zip(paras, states):
        target = torch.tensor([p + [eos]])
        hidden, labels = model.teacher_force(st[None].to(torch.float32), target, torch.ones_like(target))
        logits = model.logits(hidden)[0].float()
        nll += float(torch.nn.functional.cross_entropy(logits, labels[0], reduction="sum"))
        hits += int((logits.argmax(-1) == labels[0]).sum())
        n += labels.shape[1]
    return {"recon_loss": nll / n, "teacher_forced_acc": hits / n}


def reconstruction(engine: R3Mem, paras: list[list[int]], ratios: list[float]) -> dict:
    tok, res = engine.tokenizer, {}
    for r in ratios:
        t0 = time.perf_counter()
        states = [st for st, _ in compress_slots(engine.model, paras, r, tok.pad_token_id)]  # quantized: --bits
        recs = reconstruct_scored(engine.model, tok, states, [len(p) + 4 for p in paras])
        hyps = [x.text for x in recs]
        hyp_ids = [tokenize(tok, h) for h in hyps]
        em = [token_exact_match(p, h) for p, h in zip(paras, hyp_ids)]
        full = [float(p == h[:len(p)]) for p, h in zip(paras, hyp_ids)]
        sc = [reconstruction_scores(tok.decode(p), h) for p, h in zip(paras, hyps)]
        res[str(int(r))] = {
            "token_exact_match": sum(em) / len(em), "paragraph_exact_match": sum(full) / len(full),
            "rouge_l": sum(s.rouge_l for s in sc) / len(sc), "bleu": sum(s.bleu for s in sc) / len(sc),
            "mean_tokens": sum(map(len, paras)) / len(paras),
            "confidence": confidence_calibration(paras, [x.token_ids for x in recs], [x.token_probs for x in recs]),
            "mean_memory_tokens": sum(s.shape[-2] for s in states) / len(states),
            **teacher_forced(engine, paras, states),
            "examples": [{"reference": tok.decode(paras[i]), "recalled": hyps[i]} for i in range(min(3, len(paras)))],
            "wall_s": round(time.perf_counter() - t0, 1),
        }
    return res


@torch.no_grad()
def perplexity(engine: R3Mem, ids: list[int], n_segments: int) -> dict:
    model, cfg = engine.model, engine.config
    seg, k = cfg.segment_len, cfg.num_mem_tokens
    ids = ids[: seg * (n_segments + 1)]
    x = torch.tensor([ids])
    state = model.initial_state(1)
    nll = {"memory": 0.0, "truncated_window": 0.0, "no_context": 0.0}
    n_tok = 0
    for t in range(n_segments + 1):
        s = x[:, t * seg:(t + 1) * seg]
        if t > 0:  # score segment t
            _, loss, n = model.compress(model.embed(s), torch.ones_like(s), state, k, labels=s)
            nll["memory"] += float(loss)
            with model.adapters_disabled():
                window = x[:, t * seg - k:(t + 1) * seg]  # k raw tokens + the segment: same input length
                logits = model.lm(input_ids=window).logits[:, k - 1:-1]
                nll["truncated_window"] += float(torch.nn.functional.cross_entropy(logits[0], s[0], reduction="sum"))
                logits = model.lm(input_ids=s).logits[:, :-1]
                nll["no_context"] += float(torch.nn.functional.cross_entropy(logits[0], s[0, 1:], reduction="sum")) + \
                    float(torch.nn.functional.cross_entropy(logits[0, :1] * 0, s[0, :1]))  # uniform for the 1st token
            n_tok += s.shape[1]
        state, _, _ = model.compress(model.embed(s), torch.ones_like(s), state, k)
    ppl = {m: math.exp(v / n_tok) for m, v in nll.items()}
    return ppl | {"scored_tokens": n_tok, "segment_len": seg, "memory_tokens": k}


def _versions() -> dict:
    import peft
    import transformers

    try:
        git = ["git", "rev-parse", "--short", "HEAD"]
        commit = subprocess.run(git, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__,
            "python": platform.python_version(), "commit": commit}


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rec = result["reconstruction"]
    ratios = sorted(rec, key=float)
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    ax[0].plot([float(r) for r in ratios], [rec[r]["token_exact_match"] for r in ratios], "o-", label="token EM")
    ax[0].plot([float(r) for r in ratios], [rec[r]["rouge_l"] for r in ratios], "s--", label="ROUGE-L")
    ax[0].axhline(0.9, color="grey", lw=0.8, ls=":")
    ax[0].set_xlabel("compression ratio")
    ax[0].set_ylim(0, 1)
    ax[0].legend()
    ax[0].set_title("reconstruction (held-out)")
    ppl = result["perplexity"]
    names = ["memory", "truncated_window", "no_context"]
    ax[1].bar(names, [ppl[n] for n in names])
    ax[1].set_title("next-segment perplexity")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, default=None, help="adapter folder (default: shipped adapter)")
    ap.add_argument("--book", type=Path, default=Path("../shared/data/pg19/10356.txt"))
    ap.add_argument("--paragraphs", type=int, default=40)
    ap.add_argument("--min-tokens", type=int, default=24)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--ratios", default="4,8")
    ap.add_argument("--segments", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2, help="1 while a training run shares the machine")
    ap.add_argument("--compute-dtype", default="float32", choices=["float32", "bfloat16"],
                    help="arithmetic of the model passes (bfloat16: autocast)")
    ap.add_argument("--bits", type=int, default=16, choices=[16, 8, 4, 2],
                    help="memory_bits: the paragraphs' memory tokens quantized to this many bits (16: float16)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    engine = R3Mem.from_pretrained(a.model, compute_dtype=a.compute_dtype, keys=None, memory_bits=a.bits)
    text = strip_gutenberg(read_text(a.book))
    paras = _paragraph_ids(engine, text, a.paragraphs, a.min_tokens, a.max_tokens)
    t0 = time.perf_counter()
    result = {
        "benchmark": "training-targets", "date": datetime.date.today().isoformat(), "book": a.book.name,
        "adapter": str(a.model or "shipped"), "adapter_hash": engine.adapter_hash, "trained": engine.trained,
        "adapter_meta": {k: engine.meta.get(k) for k in ("steps", "step", "examples_seen")},
        "config": engine.config.to_dict(),
        "versions": _versions(), "n_paragraphs": len(paras),
        "reconstruction": reconstruction(engine, paras, [float(r) for r in a.ratios.split(",")]),
        "perplexity": perplexity(engine, tokenize(engine.tokenizer, text[len(text) // 3:]), a.segments),
    }
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    _plot(result, a.out.with_suffix(".png"))
    print(json.dumps({k: result[k] for k in ("reconstruction", "perplexity")}, indent=1)[:3000])


if __name__ == "__main__":
    main()
