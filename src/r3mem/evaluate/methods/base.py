"""The interface every compared system implements (`Method`), its `Answer`, and the helpers the
methods share: first line of a reply, head and tail of a text in tokens, NLL of a tail under the bare
base model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from r3mem.evaluate.common import EvalOptions, Skip
from r3mem.tokens import tokenize

METHODS = ("r3mem", "r3mem_no_hierarchy", "r3mem_no_backward", "r3mem_no_cycle", "r3mem_coupling", "recurrent",
           "autoencoder", "no_memory", "full_context", "bm25", "embedding")

ADAPTER_METHODS = METHODS[:7]  # need an adapter folder (r3mem: --model or the shipped one)

DESCRIPTIONS = {
    "r3mem": "R3Mem, full method (hierarchy, forward + backward + cycle losses)",
    "r3mem_no_hierarchy": "ablation: document level only",
    "r3mem_no_backward": "ablation: no backward (reconstruction) or cycle loss",
    "r3mem_no_cycle": "ablation: no cycle-consistency loss",
    "r3mem_coupling": "variant B: invertible coupling adapters",
    "recurrent": "RMT/AutoCompressor-style recurrent memory tokens (LM loss only, no hierarchy)",
    "autoencoder": "ICAE-style single-shot paragraph autoencoder (reconstruction only, no recurrence)",
    "no_memory": "base model, truncated window (last budget tokens)",
    "full_context": "base model, whole context in its window",
    "bm25": "BM25 retrieval of raw-text chunks into the base model's prompt",
    "embedding": "MiniLM dense retrieval of raw-text chunks into the base model's prompt",
}


def first_line(text: str) -> str:
    return text.split("\n")[0].strip()



def head_text(tok, text: str, n: int) -> str:
    """The first n tokens of text (whole text if shorter)."""
    ids = tokenize(tok, text)
    return text if len(ids) <= n else tok.decode(ids[:n])



def tail_start(tok, text: str, n: int) -> int:
    """Character offset where the last n tokens of text begin (0 if the text is shorter)."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    return 0 if len(offsets) <= n else int(offsets[len(offsets) - n][0])



@torch.no_grad()
def score_tail(engine, ids: list[int], n_tail: int) -> tuple[float, int]:
    """NLL sum over the last ``n_tail`` tokens except the first of them, with the bare base model."""
    n_tail = min(n_tail, len(ids))
    first = len(ids) - n_tail + 1  # index of the first scored token (the segment's second)
    if n_tail < 2:
        return 0.0, 0
    x = torch.tensor([ids], device=engine.device)
    with engine.model.adapters_disabled():
        logits = engine.model.lm(input_ids=x).logits[0].float()
    nll = F.cross_entropy(logits[first - 1:len(ids) - 1], x[0, first:], reduction="sum")
    return float(nll), len(ids) - first



@dataclass
class Answer:
    text: str
    spans: list[tuple[int, int]] | None  # character spans of the context the reader was shown (None: not text)



class Method:
    """One compared system. Unsupported protocols raise :class:`Skip` with the reason."""

    name: str = ""
    kind: str = "text"

    def __init__(self, name: str, reader, opts: EvalOptions) -> None:
        self.name, self.reader, self.opts = name, reader, opts
        self.tok = reader.tokenizer

    def info(self) -> dict[str, Any]:
        return {"description": DESCRIPTIONS[self.name], "kind": self.kind}

    def budget(self, default: int) -> int:
        return self.opts.budget or default

    # --- QA (rag, kv, locomo, needle) ---------------------------------------------------------
    def qa_store(self, doc) -> Any:
        return doc

    def qa_answer(self, store: Any, doc, question: str, budget: int) -> Answer:
        raise Skip("not applicable to question answering")

    def qa_memory(self, store: Any, doc, budget: int) -> tuple[int, int]:
        """(bytes, tokens) this method keeps for one document."""
        return len(doc.context.encode()), len(tokenize(self.tok, doc.context))

    # --- language modelling ---------------------------------------------------------------------
    def lm_score(self, ids: list[int], seg_len: int, budget: int) -> list[tuple[int, float, int]]:
        """(segment start, NLL sum, scored tokens) for every segment; the first token of each
        segment is not scored, so every method is scored on the same tokens."""
        raise Skip("not applicable to language modelling")

    def lm_score_reset(self, ids: list[int], seg_len: int, budget: int) -> list[tuple[int, float, int]] | None:
        """The same segments scored with the memory reset before each one (memory methods only): what
        the adapter does as a language model, without anything remembered. None where not applicable."""
        return None

    def lm_score_recall(self, ids: list[int], seg_len: int, budget: int) -> list[tuple[int, float, int]] | None:
        """The same segments scored given the memory and the text recalled from it (methods with a
        backward path only). None where not applicable."""
        return None

    def lm_memory(self, ids: list[int], budget: int) -> tuple[int, int]:
        return 0, 0

    # --- reconstruction -----------------------------------------------------------------------------
    def recon(self, text: str, ratio: float) -> dict[str, Any]:
        raise Skip("stores the raw text: reconstruction is exact by construction (compression ratio 1)")

    def close(self) -> None:
        pass
