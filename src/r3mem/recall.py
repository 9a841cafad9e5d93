"""Retrieval by invoking the model backward: choose slots for a query, then expand them into text.

A query picks slots in two stages. First the slots' retrieval keys (written with each slot, `keys.py`)
are searched without any model pass (`index.SlotIndex`: dense, lexical or their fusion, "hybrid");
then the best `rerank` of them are re-ranked by the forward model's own likelihood of the query given
each slot's memory (the compression objective trains exactly p(query | memory)), reading each slot's
compressed memory, not its text. `select="likelihood"` skips the keys and scores every slot by query
likelihood (the only way for a memory without keys; its cost grows with the memory). The chosen slots
are then expanded by the backward model: unconditioned by default, as the slot was trained to be
reconstructed (with the shipped adapter, conditioning on the question lowers token exact match from 0.94
to 0.86 on LoCoMo slots: LOG 2026-12-06), or with `condition=True` after the query. An unconditioned
greedy expansion depends on the slot alone and is kept on it (`Slot.recalled`), so a slot recalled again
costs nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from r3mem.calibration import SlotCalibration
from r3mem.hierarchy import LEVELS
from r3mem.index import CONTEXT, RANKINGS, SlotIndex
from r3mem.keys import KeyEncoder
from r3mem.memory import Memory, Slot
from r3mem.model import GREEDY, R3MemModel, Sampling
from r3mem.tokens import IGNORE_INDEX, pad_batch, tokenize
from r3mem.writer import effective_doc_state, pending_slot, policy_of

__all__ = ["SELECTS", "DEFAULT_SELECT", "DEFAULT_RERANK", "Recalled", "Reconstruction", "find", "rank", "recall",
           "recall_many", "score_query", "reconstruct", "reconstruct_scored", "slot_confidence",
           "check_min_confidence", "trusted"]

SELECTS = (*RANKINGS, "likelihood")
DEFAULT_SELECT = "hybrid"  # benchmarks/retrieval: evidence recall on LoCoMo (LOG.md, 2026-12-06)
# Slots re-ranked by query likelihood after the key search. 0: the shipped adapter's query likelihood
# ranks worse than the keys (LoCoMo evidence recall@2 0.09 re-ranking 32 against 0.33 for the keys alone:
# its query objective was never trained); an adapter trained for it can turn it on.
DEFAULT_RERANK = 0
_BATCH = 8


@dataclass
class Recalled:
    text: str
    level: str
    # level, key, start, end, score, text (this slot's expansion), confidence {geo_mean, min, p_exact},
    # probably_wrong (None: no threshold given) and tokens [{text, p}]: each produced token with the
    # probability the model gave it
    slots: list[dict] = field(default_factory=list)

    @property
    def confidence(self) -> float | None:
        """How far to trust the recall: the least confident slot's geometric-mean token probability."""
        vals = [s["confidence"]["geo_mean"] for s in self.slots if s.get("confidence", {}).get("geo_mean") is not None]
        return min(vals) if vals else None

    @property
    def probably_wrong(self) -> bool | None:
        """Whether some slot's expansion fell under the caller's confidence threshold (None: none given)."""
        flags = [s.get("probably_wrong") for s in self.slots]
        return None if all(f is None for f in flags) else any(bool(f) for f in flags)

    def to_dict(self) -> dict:
        return {"text": self.text, "level": self.level, "confidence": self.confidence,
                "probably_wrong": self.probably_wrong, "slots": self.slots}


def slot_confidence(rec: Reconstruction, calibration: SlotCalibration | None,
                    min_confidence: float | None) -> tuple[dict[str, float | None], bool | None]:
    """A slot expansion's confidence {geo_mean, min, p_exact} (p_exact: calibrated P(the expansion is
    exactly the written text), None without a calibration) and whether it is under `min_confidence`
    (compared with p_exact where there is one, else with geo_mean; None: no threshold)."""
    conf = rec.confidence() | {"p_exact": calibration.p_exact(rec.token_probs) if calibration else None}
    score = conf["p_exact"] if calibration is not None else conf["geo_mean"]
    return conf, (None if min_confidence is None or score is None else score < min_confidence)


def trusted(slots: list[dict[str, Any]], source: Callable[[dict[str, Any]], str | None] | None,
            keep_unsourced: bool) -> list[dict[str, Any]]:
    """The recalled slots as a reader should take them (new dicts; `read` says which): a slot's expansion
    ("expansion"), or for one flagged `probably_wrong` the text `source(slot)` says it was written from
    ("source"). A flagged slot without a source keeps its expansion when `keep_unsourced` (still flagged),
    else is dropped ("dropped", empty text)."""
    out = []
    for s in slots:
        text = source(s) if s.get("probably_wrong") and source is not None else None
        if text and text.strip():
            out.append(dict(s, text=text, read="source"))
        elif s.get("probably_wrong") and not keep_unsourced:
            out.append(dict(s, text="", read="dropped"))
        else:
            out.append(dict(s, read="expansion"))
    return out


def _groups(states: list[torch.Tensor]) -> dict[int, list[int]]:
    g: dict[int, list[int]] = {}
    for i, s in enumerate(states):
        g.setdefault(s.shape[-2], []).append(i)
    return {k: [idx[c:c + _BATCH] for c in range(0, len(idx), _BATCH)] for k, idx in g.items()}  # type: ignore[misc]


def _decode_chunks(model: R3MemModel, states: list[torch.Tensor]) -> list[list[int]]:
    """Batches of at most `_BATCH` states to expand together. Spread kv memories of different sizes share
    a batch (the shorter padded and masked: a reader's positions do not depend on the memory's size), so
    the two or three slots an answer recalls expand in one decoding loop, not one per size."""
    if not model.spread:
        return [chunk for chunks in _groups(states).values() for chunk in chunks]
    order = sorted(range(len(states)), key=lambda i: states[i].shape[-2])  # little padding per batch
    return [order[c:c + _BATCH] for c in range(0, len(order), _BATCH)]


def _stacked(states: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[B, ..., k, hd] with every state padded to the largest k, and the mask of real memory tokens
    [B, k] (None when none is padded)."""
    k = max(s.shape[-2] for s in states)
    if all(s.shape[-2] == k for s in states):
        return torch.stack(states), None
    pad = [torch.nn.functional.pad(s, (0, 0, 0, k - s.shape[-2])) for s in states]
    mask = torch.tensor([[1] * s.shape[-2] + [0] * (k - s.shape[-2]) for s in states], device=states[0].device)
    return torch.stack(pad), mask


def query_ids(model: R3MemModel, tok, query: str) -> list[int]:
    """The query's tokens, at most `max_paragraph_tokens` of them (its end). A longer query adds nothing a
    slot could match, only cost that grows with the square of its length: a 3,000-character query took a
    minute on the tiny test model, a chat message of the service's 1 MB body limit would never finish."""
    return tokenize(tok, query)[-model.cfg.max_paragraph_tokens:]


@torch.no_grad()
def score_query(model: R3MemModel, tok, states: list[torch.Tensor], query: str) -> list[float]:
    """Mean log-probability of the query tokens given each memory (higher = more relevant)."""
    q = query_ids(model, tok, query) + [tok.eos_token_id]
    scores = [0.0] * len(states)
    for _, chunks in _groups(states).items():
        for chunk in chunks:
            st = torch.stack([states[i] for i in chunk])
            ids, mask = pad_batch([q] * len(chunk), tok.pad_token_id, st.device)
            hidden, labels = model.score(st, ids, mask)
            logp = -F.cross_entropy(
                model.logits(hidden).float().transpose(1, 2), labels, ignore_index=IGNORE_INDEX, reduction="none"
            )
            for j, i in enumerate(chunk):
                scores[i] = float(logp[j].sum() / mask[j].sum())
    return scores


@dataclass
class Reconstruction:
    """One backward expansion: its text, the tokens produced and the probability the model gave each."""

    text: str
    token_ids: list[int]
    token_probs: list[float]

    def confidence(self) -> dict[str, float | None]:
        """Slot-level confidence: geometric mean and minimum of the token probabilities (None: no token)."""
        if not self.token_probs:
            return {"geo_mean": None, "min": None}
        logs = [math.log(max(p, 1e-12)) for p in self.token_probs]
        return {"geo_mean": math.exp(sum(logs) / len(logs)), "min": min(self.token_probs)}


@torch.no_grad()
def reconstruct_scored(model: R3MemModel, tok, states: list[torch.Tensor], max_tokens: list[int],
                       query: str | list[str | None] | None = None,
                       sampling: Sampling = GREEDY) -> list[Reconstruction]:
    """Backward expansion of each memory into text (greedy unless `sampling` says otherwise), with
    per-token probabilities from the same decoding pass.

    `query` conditions every expansion, or, as a list, each memory on its own query (None: none).
    """
    out: list[Reconstruction | None] = [None] * len(states)
    queries = query if isinstance(query, list) else [query] * len(states)
    qids = [query_ids(model, tok, q) if q else [] for q in queries]
    for chunk in _decode_chunks(model, states):
        st, past_mask = _stacked([states[i] for i in chunk])
        rows = [qids[i] for i in chunk]
        qb = pad_batch(rows, tok.pad_token_id, st.device) if any(rows) else None
        probs: list[list[float]] = []
        ids = model.reconstruct(st, max(max_tokens[i] for i in chunk), tok.eos_token_id, query=qb,
                                sampling=sampling, probs=probs, past_mask=past_mask)
        for j, i in enumerate(chunk):
            got = ids[j][:max_tokens[i]]
            out[i] = Reconstruction(tok.decode(got, skip_special_tokens=True), got, probs[j][:len(got)])
    return out  # type: ignore[return-value]


REPAIRS = 1  # verification passes after the first, each fixing the first token where a draft was wrong (LOG 2026-12-07)


@torch.no_grad()
def verify_drafts(model: R3MemModel, tok, states: list[torch.Tensor], drafts: list[list[int]],
                  max_tokens: list[int], repairs: int = REPAIRS) -> list[Reconstruction | None]:
    """Greedy expansion checked against a guess, in teacher-forced passes instead of a decoding loop.

    `drafts[i]` is a guess of memory i's greedy unconditioned expansion (token ids; e.g. the stored text
    the slot was written from). The guess followed by EOS (or cut at `max_tokens[i]`, where decoding would
    stop) is fed to the decoder at once; if the decoder's argmax at every position is the guess's next
    token, the guess *is* the greedy expansion (each step of greedy decoding would have produced it), and
    it is returned with the probability of each token from the same pass. Where it is not, the first wrong
    token is replaced by the argmax there (dropped, where the argmax is the guess's next token; an EOS
    there ends the guess) and the rest of the guess kept, and the check repeats, at most `repairs` times:
    a memory that got one word wrong and then went on like its source costs two passes. Still wrong after
    that: None, and the caller decodes that memory.
    Shapes: states [k, d] tensors of one memory each (as `reconstruct_scored`)."""
    out: list[Reconstruction | None] = [None] * len(states)
    eos = tok.eos_token_id
    guess = [list(d) for d in drafts]
    todo = list(range(len(states)))
    for _ in range(repairs + 1):
        if not todo:
            break
        targets = {i: guess[i][:max_tokens[i]] if len(guess[i]) >= max_tokens[i] else guess[i] + [eos] for i in todo}
        wrong = []
        for chunks in _groups([states[i] for i in todo]).values():
            for chunk in chunks:
                rows = [todo[c] for c in chunk]
                st = torch.stack([states[i] for i in rows])
                ids, mask = pad_batch([targets[i] for i in rows], tok.pad_token_id, st.device)
                hidden, _ = model.teacher_force(st, ids, mask)
                logits = model.logits(hidden).float()  # [B, T, vocab]: position t predicts target token t
                best = logits.argmax(-1)
                probs = torch.softmax(logits, -1).gather(-1, ids[..., None])[..., 0]
                for j, i in enumerate(rows):
                    n = int(mask[j].sum())
                    off = (best[j, :n] != ids[j, :n]).nonzero()
                    if len(off) == 0:
                        got = guess[i][:max_tokens[i]]
                        out[i] = Reconstruction(tok.decode(got, skip_special_tokens=True), got,
                                                probs[j, :len(got)].tolist())
                        continue
                    k, fix = int(off[0]), int(best[j, int(off[0])])
                    g = guess[i]
                    if fix == eos:  # the memory ends here
                        guess[i] = g[:k]
                    elif k + 1 < len(g) and fix == g[k + 1]:  # the memory skips a token of its source
                        guess[i] = g[:k] + g[k + 1:]
                    else:  # the memory says another token here
                        guess[i] = g[:k] + [fix] + g[k + 1:]
                    wrong.append(i)
        todo = sorted(wrong)
    return out


def _decode_drafted(model: R3MemModel, tok, state: torch.Tensor, draft: list[int], cap: int) -> Reconstruction:
    """The greedy expansion of one memory (`state` [k, d]) decoded with `draft` fed ahead
    (`R3MemModel.reconstruct_drafted`)."""
    probs: list[float] = []
    ids = model.reconstruct_drafted(state[None], draft, cap, tok.eos_token_id, probs=probs)
    return Reconstruction(tok.decode(ids, skip_special_tokens=True), ids, probs)


def reconstruct(model: R3MemModel, tok, states: list[torch.Tensor], max_tokens: list[int],
                query: str | list[str | None] | None = None, sampling: Sampling = GREEDY) -> list[str]:
    """The texts of `reconstruct_scored`."""
    return [r.text for r in reconstruct_scored(model, tok, states, max_tokens, query, sampling)]


def _candidates(model, tok, mem: Memory, level: str, query: str | None,
                keys: KeyEncoder | None) -> tuple[list[Slot], bool]:
    """The slots to choose from, and whether they are the memory's own list (its index can be cached)."""
    if level == "paragraph":
        pending = pending_slot(model, tok, mem, keys)
        return (mem.paragraphs + [pending], False) if pending else (mem.paragraphs, True)
    named = [e for e in mem.entities if query and e.key.lower() in query.lower()]
    return (named, False) if named else (mem.entities, True)


def _check_args(model: R3MemModel, query: str | None, level: str, top_k: int, select: str = DEFAULT_SELECT,
                rerank: int = DEFAULT_RERANK, mem: Memory | None = None) -> None:
    """One error for the first bad argument; with `mem`, also a level its policy did not write."""
    if select not in SELECTS:
        raise ValueError(f"select: must be one of {SELECTS}, got {select!r}")
    if isinstance(rerank, bool) or not isinstance(rerank, int) or rerank < 0:
        raise ValueError(f"rerank: must be an integer >= 0, got {rerank!r}")
    if level not in LEVELS:
        raise ValueError(f"level: must be one of {LEVELS}, got {level!r}")
    levels = policy_of(model, mem).levels if mem is not None else LEVELS
    if level not in levels:
        raise ValueError(f"level: {level!r} is not in the levels this memory is written with {levels}")
    if query is not None and not query.strip():
        raise ValueError("query: must not be empty or whitespace")
    if top_k < 1:
        raise ValueError(f"top_k: must be >= 1, got {top_k}")


def _rank(model: R3MemModel, tok, mem: Memory, cands: list[Slot], own: bool, level: str, query: str,
          top_k: int, select: str, rerank: int, keys: KeyEncoder | None) -> tuple[list[int], list[float]]:
    """Indices into `cands` of the top-k for `query`, best first, with the score that ranked them."""
    if select == "likelihood":
        pool = list(range(len(cands)))
    else:
        if any(c.dense is None for c in cands) or keys is None:
            raise ValueError(f"select={select!r}: this memory's slots have no retrieval keys (written without a "
                             "key encoder); use select='likelihood'")
        index = SlotIndex.of(cands, mem.indexes if own else None, level, CONTEXT if level == "paragraph" else 0)
        qvec = keys.encode([query])[0] if select != "lexical" else None
        order, found = index.rank(select, query, qvec)
        pool = [int(i) for i in order[:max(top_k, rerank)]]
        if not rerank:
            return pool[:top_k], [float(x) for x in found[:top_k]]
    s = score_query(model, tok, [cands[i].state for i in pool], query)
    best = sorted(range(len(pool)), key=lambda j: -s[j])[:top_k]
    return [pool[j] for j in best], [s[j] for j in best]


def rank(model: R3MemModel, tok, mem: Memory, query: str, level: str = "paragraph", top_k: int = 1,
         select: str = DEFAULT_SELECT, rerank: int = DEFAULT_RERANK,
         keys: KeyEncoder | None = None) -> tuple[list[Slot], list[float]]:
    """The `top_k` slots of `level` ("paragraph" or "entity") for `query`, best first, with their scores."""
    _check_args(model, query, level, top_k, select, rerank, mem)
    if level == "document" or query is None:
        raise ValueError("rank: needs a query and a slot level (paragraph or entity)")
    cands, own = _candidates(model, tok, mem, level, query, keys)
    if not cands:
        return [], []
    order, scores = _rank(model, tok, mem, cands, own, level, query, top_k, select, rerank, keys)
    return [cands[i] for i in order], scores


def find(model: R3MemModel, tok, mem: Memory, query: str | None, level: str = "paragraph", index: int | None = None,
         top_k: int = 1, select: str = DEFAULT_SELECT, rerank: int = DEFAULT_RERANK,
         keys: KeyEncoder | None = None) -> tuple[list[Slot], list[float | None]]:
    """The slots recall would expand, and their scores, without expanding them: slot `index`, the top-k
    for the query (`rank`, then in text order), or all. The document level is one slot, the effective
    document state."""
    _check_args(model, query, level, top_k, select, rerank, mem)
    if level == "document":
        doc = Slot("document", "doc", 0, mem.offset + len(mem.pending_text), mem.n_tokens,
                   effective_doc_state(model, tok, mem))
        return [doc], [None]
    if index is None and query is not None:
        slots, scores = rank(model, tok, mem, query, level, top_k, select, rerank, keys)
        by_text = sorted(range(len(slots)), key=lambda j: slots[j].start)  # recalled slots in text order
        return [slots[j] for j in by_text], [scores[j] for j in by_text]
    cands, _ = _candidates(model, tok, mem, level, query, keys)
    if index is not None and cands:
        if not -len(cands) <= index < len(cands):
            raise IndexError(f"index: {level} slot {index} does not exist (memory has {len(cands)})")
        return [cands[index]], [None]
    return cands, [None] * len(cands)


def check_min_confidence(min_confidence: float | None) -> None:
    if min_confidence is not None and (isinstance(min_confidence, bool) or not isinstance(min_confidence, (int, float))
                                       or not 0.0 <= min_confidence <= 1.0):
        raise ValueError(f"min_confidence: must be empty or a number in [0, 1] (got {min_confidence!r})")


def slot_cap(slot: Slot, cap: int) -> int:
    """Tokens an expansion of `slot` may produce: `cap`, and for a slot a few more than it holds (room
    for the end of its text, not for running on)."""
    return cap if slot.level == "document" else min(cap, slot.n_tokens + 8)


def recall_many(
    model: R3MemModel,
    tok,
    mems: list[Memory],
    queries: list[str | None] | None = None,
    level: str = "paragraph",
    index: int | None = None,
    top_k: int = 1,
    max_new_tokens: int | None = None,
    *,
    sampling: Sampling = GREEDY,
    select: str = DEFAULT_SELECT,
    rerank: int = DEFAULT_RERANK,
    keys: KeyEncoder | None = None,
    condition: bool = False,
    drafts: Callable[[Slot], str | Sequence[int] | None] | None = None,
    calibration: SlotCalibration | None = None,
    min_confidence: float | None = None,
) -> list[Recalled]:
    """Recall from several memories at once: the chosen slots of all of them expand in shared batches.

    `drafts(slot)` may give a guess of a slot's expansion (the text it was written from, where the caller
    keeps it, tokenized as the writer did; or token ids): greedy unconditioned expansions are then checked
    against the guess in one pass (`verify_drafts`) and decoded only where the check fails; the result is
    the greedy expansion either way.

    With a query, `select` chooses how slots are found (`SELECTS`; the key searches need `keys`, the
    encoder the memory's slots were keyed with) and `rerank` how many of the found ones are re-ranked
    by query likelihood before the top `top_k` are expanded.

    Each slot's confidence is calibrated with `calibration` where given (`slot_confidence`), and flagged
    `probably_wrong` under `min_confidence` (in [0, 1]; None: no flag)."""
    check_min_confidence(min_confidence)
    queries = queries if queries is not None else [None] * len(mems)
    if len(queries) != len(mems):
        raise ValueError(f"recall: {len(mems)} memories but {len(queries)} queries")
    for q in queries:
        _check_args(model, q, level, top_k, select, rerank)
    cap = max_new_tokens or model.cfg.max_recall_tokens
    picks = [find(model, tok, m, q, level, index, top_k, select, rerank, keys) for m, q in zip(mems, queries)]
    flat = [(slot, q if condition else None) for (slots, _), q in zip(picks, queries) for slot in slots]
    recs = iter(_expand(model, tok, flat, cap, sampling, drafts))
    out = []
    for slots, scores in picks:
        got = [next(recs) for _ in slots]
        meta = []
        for c, sc, r in zip(slots, scores, got):
            conf, unsure = slot_confidence(r, calibration, min_confidence)
            meta.append({"level": c.level, "key": c.key, "start": c.start, "end": c.end, "score": sc, "text": r.text,
                         "confidence": conf, "probably_wrong": unsure, "tokens": _token_pieces(tok, r)})
        out.append(Recalled("\n\n".join(r.text for r in got), level, meta))
    return out


def _expand(model: R3MemModel, tok, flat: list[tuple[Slot, str | None]], cap: int, sampling: Sampling,
            drafts: Callable[[Slot], str | Sequence[int] | None] | None = None) -> list[Reconstruction]:
    """The expansion of every (slot, query); greedy unconditioned ones of stored slots come from, and go
    to, the slot's own cache, and are first checked against the slot's draft where there is one."""
    cacheable = [sampling.greedy and q is None and s.level != "document" for s, q in flat]
    out: list[Reconstruction | None] = [
        s.recalled[1] if ok and s.recalled is not None and s.recalled[0] == slot_cap(s, cap) else None
        for (s, _), ok in zip(flat, cacheable)]
    if drafts is not None:
        guess = {i: drafts(flat[i][0]) for i, r in enumerate(out) if r is None and cacheable[i]}
        guess = {i: (tokenize(tok, g)[:model.cfg.max_paragraph_tokens] if isinstance(g, str) else list(g))
                 for i, g in guess.items() if g}
        order = list(guess)
        checked = verify_drafts(model, tok, [flat[i][0].state for i in order], [guess[i] for i in order],
                                [slot_cap(flat[i][0], cap) for i in order]) if order else []
        for i, r in zip(order, checked):
            if r is None:  # refused: decoded with its draft fed ahead (the same tokens as `reconstruct_scored`)
                r = _decode_drafted(model, tok, flat[i][0].state, guess[i], slot_cap(flat[i][0], cap))
            out[i] = r
            flat[i][0].recalled = (slot_cap(flat[i][0], cap), r)
    todo = [i for i, r in enumerate(out) if r is None]
    got = reconstruct_scored(model, tok, [flat[i][0].state for i in todo], [slot_cap(flat[i][0], cap) for i in todo],
                             [flat[i][1] for i in todo], sampling) if todo else []
    for i, r in zip(todo, got):
        out[i] = r
        if cacheable[i]:
            flat[i][0].recalled = (slot_cap(flat[i][0], cap), r)
    return out  # type: ignore[return-value]


def token_pieces(tok, ids: Sequence[int]) -> list[tuple[str, list[int]]]:
    """`ids` as decodable pieces: (text, positions in `ids`); the texts concatenate to the decoded
    ids (byte-level tokens that split a character are merged with the next one)."""
    pieces, group = [], []
    for i in range(len(ids)):
        group.append(i)
        text = tok.decode([ids[j] for j in group], skip_special_tokens=True)
        if "\ufffd" in text and i + 1 < len(ids):
            continue  # an incomplete UTF-8 sequence: wait for the rest of the character
        pieces.append((text, group))
        group = []
    return pieces


def _token_pieces(tok, rec: Reconstruction) -> list[dict]:
    """Each produced token's text and probability (a merged piece gets its least likely token's)."""
    return [{"text": text, "p": round(min(rec.token_probs[j] for j in group), 6)}
            for text, group in token_pieces(tok, rec.token_ids)]


def recall(model: R3MemModel, tok, mem: Memory, query: str | None = None, level: str = "paragraph",
           index: int | None = None, top_k: int = 1, max_new_tokens: int | None = None, *,
           sampling: Sampling = GREEDY, select: str = DEFAULT_SELECT, rerank: int = DEFAULT_RERANK,
           keys: KeyEncoder | None = None, condition: bool = False, calibration: SlotCalibration | None = None,
           min_confidence: float | None = None) -> Recalled:
    """`recall_many` of one memory."""
    (out,) = recall_many(model, tok, [mem], [query], level, index, top_k, max_new_tokens, sampling=sampling,
                         select=select, rerank=rerank, keys=keys, condition=condition, calibration=calibration,
                         min_confidence=min_confidence)
    return out
