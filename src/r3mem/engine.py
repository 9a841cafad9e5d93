"""`R3Mem`: the user-facing memory API over a model, its tokenizer and its identity.

    engine = R3Mem.from_pretrained()            # default base model + shipped adapter
    mem = engine.write(book_text)               # incremental: write(a) then write(b) == write(a + b)
    engine.recall(mem, query="the ferry").text  # backward expansion of the best-matching slot
    engine.save(mem, "book.r3mem"); mem = engine.load("book.r3mem")

Memories are plain values passed in and out; the engine never keeps per-user state.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from r3mem import kv
from r3mem.adapter import AdapterError, adapter_hash, load_trainable_state, read_adapter, save_adapter
from r3mem.backbone import base_model_id, ensure_pad_token, load_base, max_positions, quietly
from r3mem.calibration import CALIBRATION_FILE, SlotCalibration, load_calibration
from r3mem.config import R3MemConfig, auto_compute_dtype
from r3mem.keys import KeyEncoder, MiniLMKeys
from r3mem.memfile import (
    KeysMismatch,
    MemorySpec,
    check_memory,
    decode_memory,
    encode_memory,
    load_memory,
    save_memory,
)
from r3mem.memory import Memory, Slot, WritePolicy
from r3mem.model import R3MemModel, Sampling
from r3mem.prompts import MEMORY_QA_PROMPT, answer_prompt
from r3mem.recall import (
    DEFAULT_RERANK,
    DEFAULT_SELECT,
    Recalled,
    find,
    rank,
    recall_many,
    reconstruct,
    slot_cap,
    trusted,
)
from r3mem.text import check_query, check_text, without_nul
from r3mem.tokens import pad_batch, tokenize
from r3mem.writer import Reuse, add_keys, effective_doc_state, flush, settle, write_text, write_texts

__all__ = ["R3Mem", "default_adapter_dir", "KEYS", "NOTHING_REMEMBERED"]

NOTHING_REMEMBERED = "nothing remembered"  # the answer from a memory with no slot to read (no model pass)

KEYS = ("minilm", None)  # key encoders an engine can be built with (None: slots carry no retrieval keys)


def default_adapter_dir() -> Path:
    return Path(__file__).parent / "pretrained" / "smollm2-135m"


def _key_encoder(keys: str | KeyEncoder | None) -> KeyEncoder | None:
    if keys is None or not isinstance(keys, str):
        return keys
    if keys == "minilm":
        return MiniLMKeys()
    raise ValueError(f"keys: must be one of {KEYS} or a KeyEncoder, got {keys!r}")


class R3Mem:
    """The user-facing API: write text into a `Memory`, recall text from it, answer from it, save it.

        engine = R3Mem.from_pretrained()            # the shipped adapter over SmolLM2-135M
        mem = engine.write("First paragraph.\n\nSecond one.")
        engine.recall(mem, query="What came first?").text
        engine.save(mem, "notes.r3mem")

    Memories are values: every call takes one and returns a new one (`doc_state` [levels, m, d], or
    [L, 2, H, m, hd] for a kv memory, plus one slot per paragraph and entity; see `Memory`). The
    engine keeps no per-user state, so one engine serves many memories; `write_many` and
    `recall_many` batch several at once with the same results as separate calls.

    `keys` is the encoder of the slots' retrieval keys ("minilm", the default: every slot written gets
    a dense and a lexical key, and a query finds slots without running the model over all of them;
    None: no keys, slots are found by query likelihood alone). Memory files record it.
    """

    def __init__(
        self, model: R3MemModel, tokenizer, *, trained: bool = False, meta: dict[str, Any] | None = None,
        keys: str | KeyEncoder | None = "minilm",
    ) -> None:
        self.keys = _key_encoder(keys)
        self.model = model.eval()
        self.tokenizer = tokenizer
        ensure_pad_token(tokenizer)
        self.trained = trained
        self.meta = meta or {}
        # P(a slot's expansion is exact) from its token probabilities, where fitted for these weights
        # (`calibration.py`; the shipped adapter's is in its folder): None leaves only the raw confidence
        self.calibration: SlotCalibration | None = None
        self._refresh_identity()

    def _refresh_identity(self) -> None:
        """What depends only on the weights, computed once per weight set: the adapter hash, the initial
        memory M_0 (in kv mode a model pass) and the memory spec. Loading or creating a memory then never
        touches the model. Call it after changing the trainable weights in place."""
        self.adapter_hash = adapter_hash(self.model.trainable_state_dict())
        if self.calibration is not None and self.calibration.adapter_hash != self.adapter_hash:
            self.calibration = None  # fitted on the weights these replaced
        self.base_model_id = base_model_id(self.model.lm)
        with torch.no_grad():
            init = self.model.initial_state(1)[0].to(self.model.store_dtype).clone()
        self._initial_doc_state = init
        self._memory_spec = MemorySpec(tuple(init.shape), init.shape[-2], self.config.max_slot_tokens, init.dtype,
                                       int(self.model.lm.get_input_embeddings().weight.shape[0]),
                                       self.keys.dim if self.keys is not None else None)

    # ----- construction ---------------------------------------------------------------------
    @classmethod
    @quietly
    def from_base(cls, base, tokenizer, config: R3MemConfig | None = None,
                  keys: str | KeyEncoder | None = "minilm") -> R3Mem:
        """Fresh (untrained) adapters over an already loaded base model."""
        return cls(R3MemModel(base, config or R3MemConfig()), tokenizer, keys=keys)

    @classmethod
    @quietly
    def from_pretrained(cls, adapter_dir: str | Path | None = None, base_model: str | None = None,
                        config: R3MemConfig | None = None, levels: Iterable[str] | None = None,
                        keys: str | KeyEncoder | None = "minilm", compute_dtype: str | None = "auto",
                        memory_bits: int | None = None) -> R3Mem:
        """Load base model + adapter folder. With no folder: the shipped adapter, else untrained adapters.

        `levels` overrides which hierarchy levels `write` builds, e.g. `("document",)` for the
        single-pass write (no paragraph/entity slots): the weights serve every level, so this is a
        speed/granularity choice at use time. Memory files record it and are refused by an engine
        built with other levels. `keys`: the slots' retrieval-key encoder (see the class docstring).
        `compute_dtype`: "float32", "bfloat16" (autocast: 2x faster writes on a CPU with AVX-512 BF16, the
        same reconstruction: LOG 2026-12-06), "auto" (bfloat16 where the hardware has it natively) or
        None (the config's). `memory_bits`: 8, 4 or 2 store the memory tokens (slots and document state) quantized
        (`quant.py`; memory files record it), 16 in float16."""
        keys = _key_encoder(keys)  # an unknown name fails before the model loads
        if adapter_dir is None and config is None and (default_adapter_dir() / "r3mem_adapter.json").exists():
            adapter_dir = default_adapter_dir()
        over: dict[str, Any] = {}  # what the arguments change in the adapter's (or the given) config
        if base_model:
            over["base_model"] = base_model
        levels = (levels,) if isinstance(levels, str) else tuple(levels or ())
        if levels:
            over["hierarchy_levels"] = levels
        if compute_dtype is not None:
            over["compute_dtype"] = auto_compute_dtype() if compute_dtype == "auto" else compute_dtype
        if memory_bits is not None:
            over["memory_bits"] = memory_bits
        if adapter_dir is None:
            cfg = (config or R3MemConfig()).replace(**over)
            base, tok = load_base(cfg.base_model)
            return cls(R3MemModel(base, cfg), tok, trained=False, keys=keys)
        cfg, state, meta = read_adapter(adapter_dir)
        cfg = cfg.replace(**over)
        base, tok = load_base(cfg.base_model)
        if base_model_id(base) != meta.get("base_model_id"):  # refused before any adapter tensor is used
            raise AdapterError(
                f"{adapter_dir}: trained for base model {meta.get('base_model_id')!r}, got {base_model_id(base)!r}"
            )
        engine = cls(R3MemModel(base, cfg), tok, trained=bool(meta.get("trained", True)), meta=meta, keys=keys)
        engine.load_adapter_state(state, source=str(adapter_dir))
        if (Path(adapter_dir) / CALIBRATION_FILE).exists():  # refused (one line) if fitted on other weights
            engine.calibration = load_calibration(Path(adapter_dir) / CALIBRATION_FILE, engine.adapter_hash)
        return engine

    def load_adapter_state(self, state: dict[str, torch.Tensor], source: str = "adapter") -> None:
        """Load trained tensors (names and shapes checked, see `adapter.load_trainable_state`)."""
        load_trainable_state(self.model, state, source)
        self._refresh_identity()

    def save_adapter(self, path: str | Path, **extra: Any) -> str:
        h = save_adapter(path, self.model.trainable_state_dict(), self.model.cfg, self.base_model_id, extra)
        self._refresh_identity()
        return h

    @property
    def config(self) -> R3MemConfig:
        return self.model.cfg

    @property
    def can_expand(self) -> bool:
        """Whether the adapter has a backward path (memory -> text): trained with a reconstruction term.
        Adapters without one (the `recurrent` baseline) only read memory forward: no recall read."""
        return self.model.cfg.w_bwd > 0

    @property
    def identity(self) -> dict[str, Any]:
        """What a memory file must match to be loaded by this engine."""
        c = self.model.cfg
        return {
            "base_model_id": self.base_model_id,
            "adapter_hash": self.adapter_hash,
            "memory_layout": {
                "mode": c.memory_mode,
                **({"positions": "spread" if self.model.spread else "prefix"} if c.memory_mode == "kv" else {}),
                "num_mem_tokens": c.num_mem_tokens,
                "levels": list(c.hierarchy_levels),
                "dtype": c.memory_dtype,
                # the slots' and (format 5 on) the document state's precision
                **({"bits": c.memory_bits, "doc_bits": c.memory_bits} if c.memory_bits != 16 else {}),
            },
            "keys": self.keys.name if self.keys is not None else None,
        }

    # ----- memory API -----------------------------------------------------------------------
    def new_memory(self) -> Memory:
        """An empty memory: the initial document state M_0 (computed with the weights, no model pass here)."""
        return Memory(doc_state=self._initial_doc_state.clone())

    def write(self, text: str | Iterable[str], memory: Memory | None = None, *,
              policy: WritePolicy | None = None, reuse: Reuse | None = None, settle: bool = True) -> Memory:
        """Append text (a string or an iterable of chunks, e.g. a file streamed in pieces).

        `policy` (`WritePolicy`: levels and slot ratios) is what a new memory is written with (default:
        the model config's); a memory keeps the policy of its first write, and another one is refused.
        `reuse` (`writer.reusable`: an earlier memory's paragraph slots by their text, its document snapshots)
        lets a rewrite of mostly unchanged text take those slots instead of compressing them again and start
        the document recurrence at the snapshot before the first change; the result is the memory a write
        without `reuse` makes. A rewrite in several writes passes `settle=False` to all but the last: whole
        segments that match the old memory up to their end then stay pending, for a later piece of the rewrite
        to jump over (`settle` folds them)."""
        mem = memory if memory is not None else self.new_memory()
        chunks = [text] if isinstance(text, str) else text
        for chunk in chunks:
            mem = write_text(self.model, self.tokenizer, mem, without_nul(check_text("write", chunk)), self.keys,
                             policy, reuse)
        return self.settle(mem) if reuse is not None and settle else mem

    def write_many(self, texts: list[str], memories: list[Memory] | None = None, *,
                   policy: WritePolicy | None = None) -> list[Memory]:
        """Batched write: many documents at once (slots and segment recurrence share batches)."""
        mems = memories if memories is not None else [self.new_memory() for _ in texts]
        for t in texts:
            check_text("write", t)
        return write_texts(self.model, self.tokenizer, mems, [without_nul(t) for t in texts], self.keys, policy)

    def settle(self, memory: Memory) -> Memory:
        """The end of a rewrite with `write(reuse=..., settle=False)`: fold the whole segments it left pending."""
        return settle(self.model, self.tokenizer, memory)

    def flush(self, memory: Memory, *, policy: WritePolicy | None = None) -> Memory:
        """Commit the pending paragraph and fold the last partial segment (`policy` as for `write`)."""
        return flush(self.model, self.tokenizer, memory, self.keys, policy)

    def recall(self, memory: Memory, query: str | None = None, level: str = "paragraph", *,
               select: str | None = None, rerank: int | None = None, **kw: Any) -> Recalled:
        """Expand slots of `memory` back into text: slot `index=`, the `top_k=` best for `query`, or all.

        With a query, `select` says how slots are found ("hybrid": dense + lexical keys, the default for a
        memory with keys; "dense", "lexical"; "likelihood": query likelihood over every slot, the default
        without keys) and `rerank` how many of them are then re-ranked by query likelihood (default 0:
        none, see `recall.DEFAULT_RERANK`). Each slot's confidence carries `p_exact` (calibrated P(its
        expansion is exactly what was written), where the adapter has a calibration) and, with
        `min_confidence=`, a `probably_wrong` flag (`recall.slot_confidence`)."""
        (out,) = self.recall_many([memory], [query], level, select=select, rerank=rerank, **kw)
        return out

    def recall_many(self, memories: list[Memory], queries: list[str | None] | None = None, level: str = "paragraph",
                    *, select: str | None = None, rerank: int | None = None, **kw: Any) -> list[Recalled]:
        """Batched recall: the slots chosen in every memory are expanded together."""
        for q in queries or []:
            if q is not None:
                check_query("query", q)
        select = select or (DEFAULT_SELECT if self.keys is not None else "likelihood")
        rerank = DEFAULT_RERANK if rerank is None else rerank
        return recall_many(self.model, self.tokenizer, memories, queries, level, select=select, rerank=rerank,
                           keys=self.keys, calibration=self.calibration, **kw)

    def find(self, memory: Memory, query: str, top_k: int = 1, level: str = "paragraph", *,
             select: str | None = None, rerank: int | None = None) -> list[tuple[Slot, float]]:
        """The `top_k` slots for `query`, best first, with their scores, without expanding them (with
        retrieval keys: no model pass at all). `select` and `rerank` as for `recall`."""
        check_query("query", query, non_empty=True)
        slots, scores = rank(self.model, self.tokenizer, memory, query, level, top_k,
                             select or (DEFAULT_SELECT if self.keys is not None else "likelihood"),
                             DEFAULT_RERANK if rerank is None else rerank, self.keys)
        return list(zip(slots, scores))

    @torch.no_grad()
    def generate(self, prompt: str, memory: Memory | None = None, max_new_tokens: int = 64, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None, read: str = "cache",
                 recall_tokens: int | None = None) -> str:
        """Continue `prompt` with the document memory as extra context (forward direction).

        `read="cache"`: the memory is the cache prefix the prompt attends to. `read="recall"`: R³Mem's
        reversible read, the one `r3mem eval lm` scores as `ppl_recall`: the document memory is first
        run backward into at most `recall_tokens` tokens of text (greedy; default the adapter's
        `segment_len`), which go before the prompt, the memory staying the cache prefix. It costs one
        expansion per call and needs an adapter trained with a backward path (`w_bwd > 0`); a memory
        with nothing written has nothing to recall and reads as the cache alone.
        """
        check_text("prompt", prompt)
        if read not in ("cache", "recall"):
            raise ValueError(f"read: must be 'cache' or 'recall', got {read!r}")
        if recall_tokens is not None and (isinstance(recall_tokens, bool) or not isinstance(recall_tokens, int)
                                          or recall_tokens < 1):
            raise ValueError(f"recall_tokens: must be an integer >= 1, got {recall_tokens!r}")
        if read == "recall" and not self.can_expand:
            raise ValueError("read='recall': this adapter has no backward path (w_bwd 0); use read='cache'")
        mem = memory if memory is not None else self.new_memory()
        ids = tokenize(self.tokenizer, prompt)
        if not ids:
            raise ValueError("prompt: must not be empty")
        state = effective_doc_state(self.model, self.tokenizer, mem).unsqueeze(0)
        written = mem.n_segments > 0 or bool(mem.pending_ids) or bool(mem.pending_text.strip())
        if read == "recall" and written:
            n = recall_tokens if recall_tokens is not None else self.config.segment_len
            ids = self.model.reconstruct(state, n, self.tokenizer.eos_token_id)[0] + ids
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        out = self.model.continue_text(state, pad_batch([ids], self.tokenizer.pad_token_id, state.device),
                                       max_new_tokens, self.tokenizer.eos_token_id,
                                       sampling=Sampling(temperature, top_p, gen))
        return self.tokenizer.decode(out[0], skip_special_tokens=True)

    @property
    def device(self) -> torch.device:
        return self.model.memory.init_mem.device

    def prompt_ids(self, prompt: str) -> torch.Tensor:
        """Reader prompt as token ids [1, T] on the model's device (chat template when the model has one)."""
        check_text("prompt", prompt)
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            # Render the template around a marker and tokenize the user's text on its own, so control
            # tokens written inside the text stay plain text (no prompt injection via "<|im_end|>").
            marker = "\x00R3MEM_PROMPT\x00"
            rendered = tok.apply_chat_template(
                [{"role": "user", "content": marker}], add_generation_prompt=True, tokenize=False
            )
            head, _, tail = rendered.partition(marker)
            ids = torch.tensor([tok(head, add_special_tokens=False)["input_ids"] + tokenize(tok, prompt)
                                + tok(tail, add_special_tokens=False)["input_ids"]])
        else:
            ids = torch.tensor([tokenize(tok, prompt)])
        return ids.to(self.device)

    @torch.no_grad()
    def read(self, prompt: str, max_new_tokens: int = 32) -> str:
        """Plain greedy generation with the bare base model (the reader used by `answer`).

        A prompt longer than the model's window (less `max_new_tokens`) keeps its end: the question and
        the chat template's answer header.
        """
        tok = self.tokenizer
        ids = self.prompt_ids(prompt)
        room = max_positions(self.model.lm) - max_new_tokens
        if ids.shape[1] > room > 0:
            ids = ids[:, -room:]
        with self.model.adapters_disabled():
            out = self.model.lm.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()

    def answer(self, question: str, memory: Memory, top_k: int = 2, max_new_tokens: int = 32, *,
               read: str = "text", select: str | None = None, drafts=None,
               min_confidence: float | None = None) -> tuple[str, Recalled]:
        """Answer a question from the memory: find the `top_k` slots for it, then

        - `read="text"`: expand them back into text and give it to the bare base model (`read`); with
          `drafts` (slot -> the text it was written from, where the caller keeps it) each expansion is
          checked against it in one pass and decoded only if the check fails (`recall.verify_drafts`);
        - `read="cache"`: no expansion; the chosen slots' keys and values, joined as if their texts
          followed one another, are the cache prefix the question is read after (compress adapter),
          about `paragraph_ratio` times fewer tokens than their text (kv memories only).
        With `min_confidence` (text read), a slot whose expansion is probably wrong (`recall`) is not read:
        the reader gets the text it was written from where `drafts` has it, else nothing of that slot
        (each slot's `read` says which: "expansion", "source" or "dropped").
        A memory with no paragraph slot (nothing written yet), or none the reader may trust, answers
        `NOTHING_REMEMBERED`.
        """
        check_query("question", question, non_empty=True)
        if read not in ("text", "cache"):
            raise ValueError(f"read: must be 'text' or 'cache', got {read!r}")
        if read == "cache" and not self.model.kv:
            raise ValueError(f"read='cache': needs a key/value memory (memory_mode 'kv'), this adapter has "
                             f"{self.config.memory_mode!r}")
        if not memory.paragraphs and not memory.pending_text.strip():
            return NOTHING_REMEMBERED, Recalled("", "paragraph", [])
        if read == "text":
            rec = self.recall(memory, query=question, top_k=top_k, select=select, drafts=drafts,
                              min_confidence=min_confidence)
            context = self.trusted_text(memory, rec, drafts)
            if rec.probably_wrong and not context:  # every slot found was dropped
                return NOTHING_REMEMBERED, rec
            return self.read(answer_prompt(context, question), max_new_tokens).split("\n")[0].strip(), rec
        slots, scores = find(self.model, self.tokenizer, memory, question, "paragraph", None, top_k,
                             select or (DEFAULT_SELECT if self.keys is not None else "likelihood"), DEFAULT_RERANK,
                             self.keys)
        meta = [{"level": s.level, "key": s.key, "start": s.start, "end": s.end, "score": sc}
                for s, sc in zip(slots, scores)]
        return self._read_cache(slots, question, max_new_tokens), Recalled("", "paragraph", meta)

    def trusted_text(self, memory: Memory, rec: Recalled, drafts) -> str:
        """The recalled text a reader may trust (`recall.trusted`, marking each slot's `read`): each slot's
        expansion, or for one flagged probably wrong the text `drafts` says it was written from, or nothing."""
        if not rec.probably_wrong:
            return rec.text
        by_key = {s.key: s for s in memory.paragraphs}

        def source(m: dict) -> str | None:
            got = drafts(by_key[m["key"]]) if drafts and m["key"] in by_key else None
            return self.tokenizer.decode(got, skip_special_tokens=True) if isinstance(got, (list, tuple)) else got

        rec.slots = trusted(rec.slots, source, keep_unsourced=False)
        return "\n\n".join(m["text"] for m in rec.slots if m["text"].strip())  # joined as `recall` joins them

    @torch.no_grad()
    def _read_cache(self, slots: list, question: str, max_new_tokens: int) -> str:
        """The question read after the slots' memories as one cache prefix (greedy, first line)."""
        ids = self.prompt_ids(MEMORY_QA_PROMPT.format(question=question.strip()))[0].tolist()
        end = self.config.segment_len if self.model.spread else sum(s.n_mem_tokens for s in slots)
        lengths = [s.n_tokens if self.model.spread else s.n_mem_tokens for s in slots]
        state = kv.join(self.model._rot, [s.state for s in slots], lengths, end)
        out = self.model.continue_text(state, pad_batch([ids], self.tokenizer.pad_token_id, state.device),
                                       max_new_tokens, self.tokenizer.eos_token_id)
        return self.tokenizer.decode(out[0], skip_special_tokens=True).split("\n")[0].strip()

    def save(self, memory: Memory, path: str | Path) -> None:
        save_memory(path, memory, self.identity)

    def load(self, path: str | Path, rebuild_keys: bool = False) -> Memory:
        """The memory file at `path` (refused with one line unless written by this model and adapter).

        A memory whose slots have no retrieval keys (format 2, or an engine with `keys=None`) is refused
        by an engine that keys slots unless `rebuild_keys`: then every slot is recalled and keyed from
        the recalled text (a model pass per slot, once)."""
        return self._checked(lambda identity: load_memory(path, identity), str(path), rebuild_keys)

    def to_bytes(self, memory: Memory) -> bytes:
        return encode_memory(memory, self.identity)

    def from_bytes(self, data: bytes, name: str = "memory", rebuild_keys: bool = False) -> Memory:
        """`load` from bytes."""
        return self._checked(lambda identity: decode_memory(data, identity, name), name, rebuild_keys)

    def _checked(self, read, name: str, rebuild_keys: bool) -> Memory:
        try:
            return check_memory(read(self.identity), self.memory_spec, name)
        except KeysMismatch:
            if not rebuild_keys or self.keys is None:
                raise
        mem = read({**self.identity, "keys": None})
        check_memory(mem, replace(self.memory_spec, key_dim=None), name)
        return self.rebuild_keys(mem)

    def rebuild_keys(self, memory: Memory) -> Memory:
        """A copy of `memory` whose slots are keyed from their recalled text (greedy backward expansion)."""
        if self.keys is None:
            raise ValueError("rebuild_keys: this engine has no key encoder (keys=None)")
        mem = memory.copy()
        mem.paragraphs = [replace(s) for s in mem.paragraphs]
        mem.entities = [replace(s) for s in mem.entities]
        slots = mem.paragraphs + mem.entities
        cap = self.config.max_recall_tokens
        texts = reconstruct(self.model, self.tokenizer, [s.state for s in slots],
                            [slot_cap(s, cap) for s in slots])
        add_keys(slots, texts, self.keys)
        return mem

    @property
    def memory_spec(self) -> MemorySpec:
        """Shapes, dtype and id range of the memories this engine writes and reads (no model pass)."""
        return self._memory_spec
