"""The training mixture: LM windows (document level) and context–query pairs (paragraph, entity).

Every batch is a pure function of (seed, step, micro-step), so a resumed run sees exactly the
batches an uninterrupted run would, with no sampler state to save.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from r3mem.hierarchy import paragraph_spans
from r3mem.text import read_text, strip_gutenberg
from r3mem.tiny import SAMPLE_TEXT
from r3mem.tokens import newline_table, pad_batch, paragraph_pieces, tokenize, tokenize_long
from r3mem.train.config import TrainConfig
from r3mem.train.pairs import build_examples
from r3mem.train.windows import lm_windows

__all__ = ["TrainingMixture", "load_sources", "split_rows"]

_MIN_CONTEXT_TOKENS = 8


@dataclass(frozen=True)
class _Pair:
    ctx: list[int]
    query: list[int]


def load_sources(sources: tuple[str, ...], max_chars: int | None = None) -> list[tuple[str, str]]:
    """(doc_id, text) for each file, every .txt in each folder, or the built-in sample."""
    docs = []
    for src in sources:
        if src == "builtin:sample":
            docs.append(("sample", SAMPLE_TEXT))
            continue
        p = Path(src)
        files = sorted(p.glob("*.txt")) if p.is_dir() else [p]
        if not files or not all(f.is_file() for f in files):
            raise FileNotFoundError(f"{src}: no such text file or folder of .txt files")
        for f in files:
            text = strip_gutenberg(read_text(f))
            if not text.strip():
                raise ValueError(f"{f}: no text to train on (empty or whitespace only)")
            docs.append((f.stem, text))
    return [(d, t[:max_chars] if max_chars else t) for d, t in docs]


class TrainingMixture:
    def __init__(self, cfg: TrainConfig, tokenizer) -> None:
        self.cfg, self.tok = cfg, tokenizer
        self._break = tokenize(tokenizer, "\n\n")  # between paragraphs of a `before` text
        self._newlines: list[int] | None = None  # `newline_table`, built when first needed
        docs = load_sources(cfg.train_files, cfg.max_chars_per_file)
        window = cfg.model.segment_len * cfg.lm_segments
        token_docs = [tokenize_long(tokenizer, t) for _, t in docs]
        self.windows = lm_windows(token_docs, window, min_tokens=min(window, cfg.model.segment_len))
        self.token_docs = token_docs
        self.pairs: dict[str, list[_Pair]] = {"paragraph": [], "entity": []}
        for doc_id, text in docs:
            for ex in build_examples(text, doc_id, levels=("paragraph", "entity")):
                ctx = tokenize(tokenizer, ex.context)[: cfg.max_context_tokens]
                if len(ctx) >= _MIN_CONTEXT_TOKENS:
                    self.pairs[ex.level].append(_Pair(ctx, tokenize(tokenizer, ex.query)[: cfg.max_query_tokens]))
        self.recon = _recon_pools(docs, tokenizer, cfg.max_context_tokens, _source_names(cfg.train_files)) \
            if any("recon" in p.levels for p in cfg.curriculum) else []
        if any("recon" in p.levels for p in cfg.curriculum) and not self.recon:
            raise ValueError(f"train_files: no paragraph of at least {_MIN_CONTEXT_TOKENS} tokens to reconstruct")
        for level in cfg.model.hierarchy_levels:
            if level == "document" and not self.windows:
                raise ValueError(f"train_files: no text long enough for one {cfg.model.segment_len}-token segment")
            if level != "document" and not self.pairs[level]:
                raise ValueError(f"train_files: no {level}-level examples could be built")

    def _gen(self, step: int, micro: int) -> torch.Generator:
        return torch.Generator().manual_seed((self.cfg.seed * 1_000_003 + step) * 1_009 + micro)

    def batch(self, step: int, micro: int = 0) -> dict:
        g = self._gen(step, micro)
        levels = self.cfg.levels_at(step)
        level = levels[int(torch.randint(len(levels), (1,), generator=g))]
        B = self.cfg.batch_size
        if level == "recon":
            return self._in_pass(self._with_bits(self._recon_batch(step, g), g), g)
        if level == "document":
            rows = [self.windows[int(i)] for i in torch.randint(len(self.windows), (B,), generator=g)]
            seqs = [self.token_docs[w.doc][w.start:w.start + w.length] for w in rows]
            ids, mask = pad_batch(seqs, self.tok.pad_token_id, torch.device("cpu"))
            # Drawn only when asked for, so that runs without it keep their batches.
            read_previous = self.cfg.lm_read_previous > 0 and bool(
                torch.rand((), generator=g) < self.cfg.lm_read_previous)
            batch = {"level": level, "ids": ids, "mask": mask, "read_previous": read_previous}
            if self.cfg.lm_slots_first_p > 0 and bool(torch.rand((), generator=g) < self.cfg.lm_slots_first_p):
                batch["piece"] = self._pieces(seqs, ids.shape[1])
            return batch
        pool = self.pairs[level]
        items = [pool[int(i)] for i in torch.randint(len(pool), (B,), generator=g)]
        ratios = self.cfg.ratios_at(step)
        ratio = ratios[int(torch.randint(len(ratios), (1,), generator=g))]
        use_query = bool(torch.rand((), generator=g) >= self.cfg.query_dropout)
        pad, eos = self.tok.pad_token_id, self.tok.eos_token_id
        return self._with_bits({"level": level, "ratio": ratio, "use_query": use_query,
                                "ctx": pad_batch([p.ctx for p in items], pad, torch.device("cpu")),
                                "query": pad_batch([p.query + [eos] for p in items], pad, torch.device("cpu")),
                                "target": pad_batch([p.ctx + [eos] for p in items], pad, torch.device("cpu"))}, g)

    def _pieces(self, seqs: list[list[int]], width: int) -> torch.Tensor:
        """[B, width] each token's paragraph slot piece (`paragraph_pieces`; -1 on breaks and padding)."""
        if self._newlines is None:
            self._newlines = newline_table(self.tok)
        limit = self.cfg.model.max_paragraph_tokens
        rows = [paragraph_pieces(s, self._newlines, limit) for s in seqs]
        return torch.tensor([r + [-1] * (width - len(r)) for r in rows], dtype=torch.long)

    def _with_bits(self, batch: dict, g: torch.Generator) -> dict:
        """The slot batch with the bits its memory tokens are read at (`quant_bits` for a `quant_p`
        share of batches, else 16); drawn only when asked for, so that runs without it keep their batches."""
        quantized = self.cfg.quant_bits < 16 and bool(torch.rand((), generator=g) < self.cfg.quant_p)
        return {**batch, "bits": self.cfg.quant_bits if quantized else 16}

    def _in_pass(self, batch: dict, g: torch.Generator) -> dict:
        """The batch, for a `recon_in_pass_p` share, with `before`: for each row 0..segment_len - len tokens
        (uniform) of other paragraphs of a source drawn uniformly, ending where the row's text begins.
        Drawn only when asked for, so that runs without it keep their batches."""
        if not (self.cfg.recon_in_pass_p > 0 and bool(torch.rand((), generator=g) < self.cfg.recon_in_pass_p)):
            return batch
        seg, rows = self.cfg.model.segment_len, []
        for n in batch["ctx"][1].sum(1).tolist():
            a = int(torch.randint(max(1, seg - n + 1), (1,), generator=g))
            pool = self.recon[int(torch.randint(len(self.recon), (1,), generator=g))]
            text: list[int] = []
            while len(text) < a:
                text = pool[int(torch.randint(len(pool), (1,), generator=g))] + self._break + text
            rows.append(text[len(text) - a:])
        return {**batch, "before": pad_batch(rows, self.tok.pad_token_id, torch.device("cpu"))}

    def _recon_batch(self, step: int, g: torch.Generator) -> dict:
        """Autoencoding: a source drawn uniformly, then `batch_size` neighbours in its length-sorted pool
        (rows of a batch have about the same length: little padding, memory sized for every row)."""
        pool = self.recon[int(torch.randint(len(self.recon), (1,), generator=g))]
        B = min(self.cfg.batch_size, len(pool))
        first = int(torch.randint(len(pool) - B + 1, (1,), generator=g))
        items = pool[first:first + B]
        ratios = self.cfg.ratios_at(step)
        ratio = ratios[int(torch.randint(len(ratios), (1,), generator=g))]
        pad, eos, cpu = self.tok.pad_token_id, self.tok.eos_token_id, torch.device("cpu")
        return {"level": "recon", "ratio": ratio, "ctx": pad_batch(items, pad, cpu),
                "target": pad_batch([p + [eos] for p in items], pad, cpu)}


def _source_names(sources: tuple[str, ...]) -> list[str]:
    """The source of each document `load_sources` returns: its folder (files listed one by one
    from one folder are one source), so each corpus weighs the same whatever its size."""
    names = []
    for src in sources:
        p = Path(src)
        if src == "builtin:sample":
            names.append("sample")
        elif p.is_dir():
            names += [p.resolve().name] * len(list(p.glob("*.txt")))
        else:
            names.append(p.resolve().parent.name)
    return names


def _recon_pools(
    docs: list[tuple[str, str]], tok, max_tokens: int, sources: list[str] | None = None
) -> list[list[list[int]]]:
    """Token lists to reconstruct, one length-sorted pool per source (a folder, or a file).

    Every paragraph is taken with its whitespace collapsed (as the held-out benchmark reads it) and,
    where it differs, as written (hard-wrapped lines, as a memory write sees it); paragraphs longer
    than `max_tokens` are cut into chunks of at most `max_tokens`, so long ones teach segment-like text.
    """
    pools: dict[str, list[list[int]]] = {}
    for i, (doc_id, text) in enumerate(docs):
        src = sources[i] if sources else doc_id
        out = pools.setdefault(src, [])
        for p in paragraph_spans(text):
            flat = " ".join(p.text.split())
            for form in {flat, p.text}:
                ids = tokenize(tok, form)
                out.extend(c for c in (ids[j:j + max_tokens] for j in range(0, len(ids), max_tokens))
                           if len(c) >= _MIN_CONTEXT_TOKENS)
    return [sorted(p, key=len) for p in pools.values() if p]


def split_rows(batch: dict, size: int | None) -> list[tuple[dict, float]]:
    """A batch as chunks of at most `size` rows, each with its share of the rows (the weight of its
    loss, so that the chunks' gradients add up to the batch's). None, or a batch of at most `size`
    rows: the batch itself, weight 1. Tensors and (ids, mask) pairs are cut along their first axis."""
    def rows(v) -> int | None:
        if isinstance(v, tuple):
            return rows(v[0])
        return v.shape[0] if torch.is_tensor(v) else None

    n = next(r for r in map(rows, batch.values()) if r is not None)
    if size is None or n <= size:
        return [(batch, 1.0)]

    def cut(v, a: int, b: int):
        if isinstance(v, tuple):
            return tuple(cut(x, a, b) for x in v)
        return v[a:b] if torch.is_tensor(v) else v

    return [({k: cut(v, a, min(a + size, n)) for k, v in batch.items()}, (min(a + size, n) - a) / n)
            for a in range(0, n, size)]
