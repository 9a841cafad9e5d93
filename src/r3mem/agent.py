"""`ChatAgent`: a conversation whose every turn is written into a session memory kept in a `MemoryStore`.

    agent = ChatAgent(engine, store, "alice", "trip")
    agent.turn("I moved to Lisbon in May.")             # stored turn + memory updated, then returns
    agent.respond("Where do I live?").text             # recall from memory, answer with the base model
    agent.chat("What did I say about May?")             # turn + respond + the reply stored as a turn

Writing is incremental and safe under concurrent writers (threads or processes sharing the store):
a turn is appended to the store first, then the session memory *catches up* with every stored turn it
does not cover yet, in turn order, and is put back with the version it was read at. If another writer
got there first (`Conflict`), the memory is reloaded and the catch-up repeats, until the memory covers
the new turn. So no acknowledged turn is ever missing from memory, and a turn whose memory write was
interrupted (crash, kill) is folded in by the next write.

All state lives in the store; the agent only holds references (engine, store, ids, options).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from itertools import accumulate
from typing import Any

from r3mem.memcache import MemoryCache
from r3mem.memfile import IdentityMismatch
from r3mem.memory import Memory, stored_bytes
from r3mem.prompts import QA_PROMPT
from r3mem.recall import Recalled, check_min_confidence, token_pieces, trusted
from r3mem.store import Conflict, MemoryStore, NotFound, Session, SlotRecord, StoredMemory, StoreError, Turn
from r3mem.text import MAX_QUERY_CHARS, check_query, check_text, without_nul
from r3mem.tokens import tokenize
from r3mem.writer import Reuse, reusable

__all__ = ["ChatAgent", "Reply", "RETRIEVALS", "READS", "CHAT_PROMPT", "QA_PROMPT", "format_turn", "ensure_session"]

RETRIEVALS = (None, "bm25", "embedding")
READS = ("text", "source", "cache")  # what the reader is given: recalled text, the stored turns, the slots' cache
CHAT_PROMPT = "Relevant memory of our conversation:\n{context}\n\n{question}"
MAX_SYNC_ATTEMPTS = 200  # conflicts only happen when another writer made progress, so this is never reached in practice
WRITE_BATCH = 64  # turns per engine.write when catching up (their paragraphs are compressed in shared batches)
# answers read a slot whose calibrated confidence is under this from its stored turns (LOG 2026-12-07: F1 up on
# LoCoMo, NQ oracle and NQ with distractors; 7% of 4x conversation slots are under it)
DEFAULT_MIN_CONFIDENCE = 0.5
POOL_FACTOR = 3  # with a retriever, recall this many times top_k slots and let the retriever re-rank them
_RRF_K = 60  # reciprocal-rank-fusion constant (Cormack et al. 2009)

Progress = Callable[[int, int], None]  # (turns written so far, turns to write)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reply:
    """An answer, the memory text it was conditioned on, the recalled slots (with turn ids) and,
    from `chat`, the turns it stored."""

    text: str
    recalled: str
    slots: list[dict[str, Any]] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        turns = [{"index": t.index, "speaker": t.speaker, "text": t.text, "timestamp": t.timestamp} for t in self.turns]
        return {"text": self.text, "recalled": self.recalled, "slots": self.slots, "turns": turns}


def format_turn(speaker: str, text: str) -> str:
    """The text a turn contributes to memory: one paragraph "Speaker: text" (its own slot)."""
    return f"{speaker}: {without_nul(text).strip()}\n\n"  # NUL is dropped here so slot offsets stay exact


def _stream(turns: Iterable[Turn], through: int) -> str:
    """The text the memory was written from: turns up to index `through`, each formatted by `format_turn`
    (slot offsets point into it)."""
    return "".join(format_turn(t.speaker, t.text) for t in turns if t.index <= through)


def ensure_session(store: MemoryStore, user_id: str, session_id: str | None = None) -> Session:
    """The session, created (with its user) if missing; a random id when `session_id` is None."""
    try:
        store.get_user(user_id)
    except NotFound:
        with contextlib.suppress(Conflict):  # another process created it meanwhile
            store.create_user(user_id)
    if session_id is not None:
        try:
            return store.get_session(user_id, session_id)
        except NotFound:
            pass
    try:
        return store.create_session(user_id, session_id)
    except Conflict:
        return store.get_session(user_id, session_id)  # type: ignore[arg-type]


def _slot_records(mem: Memory, known: dict[tuple[str, str], SlotRecord]) -> list[SlotRecord]:
    """One record per slot, in the memory's order (paragraphs, then entities)."""
    return [known.get((s.level, s.key)) or SlotRecord(s.level, s.key, s.start, s.end)
            for s in mem.paragraphs + mem.entities]


def _fuse(question: str, slots: list[dict[str, Any]], k: int, retriever) -> list[dict[str, Any]]:
    """Reciprocal-rank fusion of the memory's own ranking (query likelihood) and a retriever's
    ranking over the recalled texts; returns the best k slots in text order."""
    from r3mem.retrieval import bm25_tokenize

    texts = [s.get("text") or "" for s in slots]
    by_memory = sorted(range(len(slots)), key=lambda i: -(slots[i].get("score") or 0.0))
    fused = {i: 1.0 / (_RRF_K + r) for r, i in enumerate(by_memory)}
    if any(bm25_tokenize(t) for t in texts):  # BM25 over only empty texts divides by zero
        retriever.index(texts)
        for r, (i, _) in enumerate(retriever.search(question, k=len(texts))):
            fused[i] += 1.0 / (_RRF_K + r)
    best = sorted(fused, key=lambda i: (-fused[i], i))[:k]
    return [slots[i] for i in sorted(best, key=lambda i: slots[i]["start"])]


class ChatAgent:
    """One user's session: write turns into its memory, answer from what memory recalls.

    Args:
        engine: an `R3Mem` (any base model; the session memory must have been written by it).
        store: the `MemoryStore` holding users, sessions, turns and memories.
        user_id, session_id: an existing session (see `ensure_session`).
        retrieval: None (memory ranking only), "bm25" or "embedding": re-rank the recalled slot texts
            with that retriever, fused with the memory's own ranking.
        top_k: slots recalled per question.
        prompt: template for the reader with `{context}` and `{question}` (CHAT_PROMPT, QA_PROMPT).
        lock: context manager held around every model call (the HTTP service shares one lock,
            since one torch model must not run in several threads at once).
        retriever: an already built retriever to share (else one is made lazily from `retrieval`).
        cache: a `MemoryCache` to keep decoded memories in between calls (shared by the service's
            agents); None decodes the stored memory on every call.
        read: what `respond` gives the reader for the slots found for a question: "text" (each slot
            expanded back from memory), "source" (the stored turns the slots were written from: no
            expansion; the memory finds, the store supplies the words) or "cache" (the slots' keys
            and values read as the reader's cache, no text).
        dedupe: `write` / `turn` store a turn that repeats a stored one (same speaker and normalised
            text) only once; `chat` and `add_turns` keep every turn of a transcript.
        verify: recalled slots are checked against the stored turns they were written from in one model
            pass and decoded only where the memory's greedy expansion differs (`recall.verify_drafts`):
            the same text as decoding, at a fraction of the cost. False: always decode.
        min_confidence: when answering (`respond`, `chat`), a slot whose calibrated confidence (`p_exact`,
            where the adapter has a calibration; else the expansion's geometric-mean token probability) is
            under it is flagged `probably_wrong`, and the reader gets the stored turns it was written from
            instead of its expansion (default `DEFAULT_MIN_CONFIDENCE`, 0.5: better answers on LoCoMo and
            NQ, LOG 2026-12-07; None or 0: every expansion is read as decoded). `recall` flags only when
            asked (its own `min_confidence`).
    """

    def __init__(
        self,
        engine,
        store: MemoryStore,
        user_id: str,
        session_id: str,
        retrieval: str | None = None,
        *,
        top_k: int = 2,
        prompt: str = CHAT_PROMPT,
        lock: AbstractContextManager | None = None,
        retriever=None,
        cache: MemoryCache | None = None,
        read: str = "text",
        dedupe: bool = True,
        verify: bool = True,
        min_confidence: float | None = DEFAULT_MIN_CONFIDENCE,
    ) -> None:
        if retrieval not in RETRIEVALS:
            raise ValueError(f"retrieval must be one of {RETRIEVALS}, got {retrieval!r}")
        if read not in READS:
            raise ValueError(f"read must be one of {READS}, got {read!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
        self.engine, self.store = engine, store
        self.user_id, self.session_id = user_id, session_id
        self.retrieval, self.top_k, self.prompt = retrieval, top_k, prompt
        self._lock = lock if lock is not None else contextlib.nullcontext()
        self._retriever = retriever
        self._cache = cache
        check_min_confidence(min_confidence)
        self.read, self.dedupe, self.verify, self.min_confidence = read, dedupe, verify, min_confidence

    def __repr__(self) -> str:
        return f"ChatAgent(user={self.user_id!r}, session={self.session_id!r}, retrieval={self.retrieval!r})"

    # ----- writing ---------------------------------------------------------------------------
    def turn(self, text: str, speaker: str = "user", timestamp: float | None = None) -> Turn:
        """Store one turn and return once the session memory (committed) covers it (see `write`)."""
        return self.write(text, speaker, timestamp)[0]

    def write(self, text: str, speaker: str = "user", timestamp: float | None = None,
              dedupe: bool | None = None) -> tuple[Turn, int]:
        """`turn`, also returning the committed memory version that covers the new turn.

        With `dedupe` (default: the agent's), a turn that is the same as one stored before (same speaker,
        same `store.text_key`: case, spacing and end punctuation aside) is not stored or written again:
        the stored turn is returned, with the memory version that covers it."""
        turn = self.store_turn(text, speaker, timestamp, dedupe)
        return turn, self.sync_after([turn])

    def store_turn(self, text: str, speaker: str = "user", timestamp: float | None = None,
                   dedupe: bool | None = None) -> Turn:
        """The store half of `write`: the turn is stored (or found, see `write`), the memory is not
        touched; `sync` (or any later write) folds it in."""
        text = check_text("text", text, non_empty=True)
        self._current()  # a corrupted memory fails here, before the turn is stored (another engine's is rebuilt)
        (turn,) = self.store.append_turns(self.user_id, self.session_id, [(speaker, text)], timestamp,
                                          dedupe=self.dedupe if dedupe is None else dedupe)
        return turn

    def backlog(self) -> int:
        """Stored turns the memory does not cover yet (what the next `sync` writes)."""
        _, stored, *_ = self._current()
        return len(self.store.list_turns(self.user_id, self.session_id, since=stored.through_turn if stored else 0))

    # ----- curation --------------------------------------------------------------------------
    def edit_turn(self, index: int, text: str, speaker: str | None = None) -> tuple[Turn, int]:
        """Replace turn `index`'s text (and speaker), then bring the memory up to date; returns the edited
        turn and the memory version that covers every turn. What the edit replaced stays in the turn's
        history (`store.turn_history`); a memory that read the old text is rebuilt from the turns."""
        text = check_text("text", text, non_empty=True)
        reuse = self.reusable()
        turn = self.store.edit_turn(self.user_id, self.session_id, index, text, speaker)
        return turn, self.sync_after([turn], "edited", reuse=reuse)

    def delete_turn(self, index: int) -> tuple[Turn, int]:
        """Forget turn `index`: it is deleted with its history and the memory is rebuilt from the other
        turns, so no recall, answer or export returns its text. Returns the deleted turn and the version."""
        reuse = self.reusable()
        turn = self.store.delete_turn(self.user_id, self.session_id, index)
        return turn, self.sync_after([turn], "deleted", reuse=reuse)

    def reusable(self) -> Reuse | None:
        """What the rebuild after an edit or delete can take from the memory, read *before* the change
        (`writer.reusable`): the paragraph slots by the text of the turns they were written from (a slot
        depends on its own text alone), so only changed paragraphs are compressed, and the document
        snapshots, so the recurrence restarts at the last snapshot before the first changed turn. None for
        a stale memory."""
        mem, stored, _, stale = self._current()
        written = self._written_text(stored)
        return None if stale or written is None else reusable(mem, written)

    def add_turns(self, turns: Iterable[tuple[str, str]], progress: Progress | None = None) -> list[Turn]:
        """Store many (speaker, text) turns, then bring the memory up to date in one write (a transcript:
        repeated turns are kept; `write` deduplicates)."""
        items = [
            (speaker, check_text("text", text, non_empty=True)) for speaker, text in turns
        ]  # all checked before any is stored
        if items:
            self._current()
        # One transaction: a failure stores none of them, so a rerun does not store any twice.
        stored = self.store.append_turns(self.user_id, self.session_id, items) if items else []
        if stored:
            self.sync_after(stored, progress=progress)
        return stored

    def sync_after(self, turns: list[Turn], done: str = "stored", progress: Progress | None = None,
                   reuse: Reuse | None = None) -> int:
        """`sync` after `turns` were `done` (stored, edited, deleted) in the store; a store failure then says
        that the change was made (the store's own message, "nothing was written", is true of the memory
        only). After a write, stops once the memory covers the new turns; after an edit or delete, brings
        the memory over every turn."""
        try:
            return self.sync(until=turns[-1].index if done == "stored" else None, progress=progress, reuse=reuse)
        except StoreError as e:
            if isinstance(e, (NotFound, Conflict)):
                raise
            which = f"turn {turns[0].index}" if len(turns) == 1 else f"turns {turns[0].index}-{turns[-1].index}"
            raise StoreError(f"{which} {done}, but the memory was not updated (the next write will "
                             f"{'fold it in' if done == 'stored' else 'rebuild it'}): {str(e).splitlines()[0]}"
                             ) from e

    def sync(self, until: int | None = None, progress: Progress | None = None,
             reuse: Reuse | None = None) -> int:
        """Write every stored turn the memory does not cover yet; return the memory version.

        Retries on `Conflict` (another writer updated the memory first) from a fresh read, and
        stops early once the memory covers turn `until`. `reuse` (`reusable`) offers the slots of
        paragraphs written before, by their text, and the document snapshots of the unchanged prefix.
        """
        for attempt in range(MAX_SYNC_ATTEMPTS):
            current, stored, _, stale = self._current()
            version, through = (stored.version, stored.through_turn) if stored else (0, 0)
            if until is not None and through >= until:
                return version
            pending = self.store.list_turns(self.user_id, self.session_id, since=through)
            if not pending:
                return version
            if stale and attempt == 0:
                log.warning("%s; rebuilding it from its %d stored turns", stale, len(pending))
            mem, records = self._write_turns(current, stored, pending, progress, reuse)
            blob = self.engine.to_bytes(mem)
            try:
                new = self.store.put_memory(self.user_id, self.session_id, blob, records,
                                            through_turn=pending[-1].index, expected_version=version)
            except Conflict:
                time.sleep(random.uniform(0, 0.002 * min(attempt + 1, 20)))  # jitter: let the winner finish
                continue
            if self._cache is not None:  # the next question reads this version without decoding it
                self._cache.put(mem, StoredMemory(self.user_id, self.session_id, blob, new, pending[-1].index,
                                                  records))
            return new
        raise StoreError(
            f"session {self.session_id!r}: memory kept changing under {MAX_SYNC_ATTEMPTS} attempts to write it"
        )

    def _write_turns(self, mem: Memory, stored: StoredMemory | None, turns: Sequence[Turn],
                     progress: Progress | None, reuse: Reuse | None = None
                     ) -> tuple[Memory, list[SlotRecord]]:
        """Append the turns to `mem` (the stored memory, decoded); new slots are recorded with the turn
        their text came from.

        Turns are written in batches (one `engine.write` per batch compresses its paragraphs together);
        a slot belongs to the turn whose character span holds the slot's start.
        """
        n_par, n_ent = len(mem.paragraphs), len(mem.entities)
        texts = [format_turn(t.speaker, t.text) for t in turns]
        starts = list(accumulate((len(x) for x in texts[:-1]), initial=mem.offset + len(mem.pending_text)))
        for first in range(0, len(texts), WRITE_BATCH):
            last = first + WRITE_BATCH >= len(texts)  # a rebuild's batches skip what matches up to its last
            with self._lock:
                mem = self.engine.write("".join(texts[first:first + WRITE_BATCH]), mem, reuse=reuse, settle=last)
            if progress is not None:
                progress(min(first + WRITE_BATCH, len(texts)), len(texts))
        known = {(r.level, r.key): r for r in (stored.slots if stored else [])}
        for s in mem.paragraphs[n_par:] + mem.entities[n_ent:]:
            t = turns[max(0, bisect_right(starts, s.start) - 1)]
            known[(s.level, s.key)] = SlotRecord(s.level, s.key, s.start, s.end, turn_id=t.index, timestamp=t.timestamp)
        return mem, _slot_records(mem, known)

    # ----- reading ---------------------------------------------------------------------------
    def _decode(self, stored: StoredMemory | None) -> tuple[Memory, StoredMemory | None, str | None]:
        """(memory, record, why it is stale or None) of a store record. A memory written by another
        engine (another adapter, base model, levels, precision or key encoder: an r3mem upgrade, a new
        adapter) is *stale*: it is not read, and the record is seen as reset, so the next `sync` rebuilds
        it from the stored turns, which are what it was written from. A corrupted memory is refused
        (`MemoryFileError`)."""
        if stored is None or not stored.blob:  # none yet, or reset by an edit: the next write rebuilds it
            return self.engine.new_memory(), stored, None
        try:
            return self.engine.from_bytes(stored.blob, name=f"memory of session {self.session_id!r}"), stored, None
        except IdentityMismatch as e:
            return self.engine.new_memory(), replace(stored, blob=b"", through_turn=0, slots=[]), str(e).splitlines()[0]

    def memory(self) -> tuple[Memory, StoredMemory | None]:
        """The session's current memory (a fresh one if nothing was written) and its store record (whose
        blob is empty when the memory came from the agent's `cache`). A stale memory (written by another
        engine) is rebuilt from the stored turns first."""
        mem, stored, _ = self._fresh()
        return mem, stored

    def _fresh(self) -> tuple[Memory, StoredMemory | None, int]:
        """`_current` (memory, record, file bytes) with a stale memory rebuilt from the stored turns first."""
        mem, stored, size, stale = self._current()
        if stale:
            self.sync()
            mem, stored, size, _ = self._current()
        return mem, stored, size

    def _current(self) -> tuple[Memory, StoredMemory | None, int, str | None]:
        """(memory, store record, memory file bytes, why it is stale) with the memory from the cache when it holds
        the stored version; see `_decode` for a stale one."""
        if self._cache is not None:
            stamp = self.store.memory_stamp(self.user_id, self.session_id)
            if stamp is None:
                return self.engine.new_memory(), None, 0, None
            hit = self._cache.get(self.user_id, self.session_id, stamp)
            if hit is not None:
                return hit.memory, hit.stored, hit.blob_bytes, None
        stored = self.store.get_memory(self.user_id, self.session_id)
        size = len(stored.blob) if stored else 0
        mem, stored, stale = self._decode(stored)
        if self._cache is not None and stored is not None and not stale:
            self._cache.put(mem, stored)
        return mem, stored, size, stale

    def describe(self, max_slots: int = 500) -> dict[str, Any]:
        """What the session memory holds, for inspection: its size, the document state, and each slot
        (at most `max_slots`) with the text span it was written from, as the tokenizer splits it.

        Slot `index` is its position within its level, as `recall(level=..., index=...)` takes it;
        `source` is the span of the turns' stream (each turn formatted by `format_turn`)."""
        mem, stored, blob_bytes = self._fresh()
        turns = self.store.list_turns(self.user_id, self.session_id)
        through = stored.through_turn if stored else 0
        stream = _stream(turns, through)
        turn_ids = {(r.level, r.key): r.turn_id for r in (stored.slots if stored else [])}
        tok = self.engine.tokenizer
        doc = mem.doc_state
        listed = [(level, i, s) for level, items in (("paragraph", mem.paragraphs), ("entity", mem.entities))
                  for i, s in enumerate(items)][:max_slots]
        slots = []
        for level, i, s in listed:
            source = stream[s.start:s.end]
            with self._lock:  # the tokenizer is shared with the model's users
                pieces = [text for text, _ in token_pieces(tok, tokenize(tok, source))]
            slots.append({"level": level, "index": i, "key": s.key, "start": s.start, "end": s.end,
                          "turn_id": turn_ids.get((level, s.key)), "n_tokens": s.n_tokens,
                          "mem_tokens": s.n_mem_tokens, "source": source, "source_tokens": pieces})
        return {"version": stored.version if stored else 0, "through_turn": through,
                "bytes": blob_bytes, "memory_mode": self.engine.config.memory_mode,
                "document": {"shape": list(doc.shape), "dtype": str(doc.dtype).removeprefix("torch."),
                             "bytes": stored_bytes(doc, mem.doc_packed),
                             "n_tokens": mem.n_tokens, "n_segments": mem.n_segments,
                             "snapshots": len(mem.snapshots),
                             "snapshot_bytes": sum(s.nbytes() for s in mem.snapshots)},
                "state_bytes": mem.state_bytes(), "paragraphs": len(mem.paragraphs), "entities": len(mem.entities),
                "slots": slots}

    def _written_text(self, stored: StoredMemory | None):
        """(start, end) -> the text of the stored turns a slot with that span was written from (the stream
        `format_turn` builds), None past what the memory has read; read from the store at the first call."""
        if stored is None:
            return None

        @functools.cache  # read the turns only if a slot needs them (not when its expansion is cached)
        def stream() -> str:
            return _stream(self.store.list_turns(self.user_id, self.session_id), stored.through_turn)

        return lambda start, end: stream()[start:end] if end <= len(stream()) else None

    def _drafts(self, stored: StoredMemory | None):
        """slot -> its written text, for `recall(drafts=...)`: an expansion that equals it is checked in
        one pass instead of decoded (None with `verify=False`)."""
        written = self._written_text(stored) if self.verify else None
        return None if written is None else (lambda slot: written(slot.start, slot.end))

    def recall(self, query: str | None = None, level: str = "paragraph", index: int | None = None,
               top_k: int = 1, select: str | None = None, min_confidence: float | None = None) -> Recalled:
        """`engine.recall` on the session memory; each slot also carries the `turn_id` it came from and
        `read`: "expansion", or "source" where its expansion is under `min_confidence` and the text given
        is its stored turns'."""
        mem, stored = self.memory()
        drafts = self._drafts(stored) if level != "document" else None
        with self._lock:
            rec = self.engine.recall(mem, query=query, level=level, index=index, top_k=top_k, select=select,
                                     drafts=drafts, min_confidence=min_confidence)
        turn_ids = {(r.level, r.key): r.turn_id for r in (stored.slots if stored else [])}
        rec.slots = [dict(s, turn_id=turn_ids.get((s["level"], s["key"]))) for s in rec.slots]
        rec.slots = self._trusted(rec.slots, stored)
        if rec.probably_wrong:
            rec.text = "\n\n".join(s["text"] for s in rec.slots)
        return rec

    def _trusted(self, slots: list[dict[str, Any]], stored: StoredMemory | None) -> list[dict[str, Any]]:
        """Slots whose expansion is probably wrong get the stored turns' text instead (`recall.trusted`; `read`:
        "source"). A slot whose turns are gone, or the document state, keeps its expansion, flagged."""
        written = self._written_text(stored)

        def source(s: dict[str, Any]) -> str | None:
            # the document level's source is the whole history: its expansion stays, flagged
            got = written(s["start"], s["end"]) if written and s["level"] != "document" else None
            return got.strip() if got else None

        return trusted(slots, source, keep_unsourced=True)

    def recall_for(self, question: str, top_k: int | None = None) -> list[dict[str, Any]]:
        """Slots recalled for a question: memory ranking, re-ranked by the retriever if one is set."""
        k, unsure = top_k or self.top_k, self.min_confidence
        if self.retrieval is None:
            return self.recall(question, top_k=k, min_confidence=unsure).slots
        slots = self.recall(question, top_k=k * POOL_FACTOR, min_confidence=unsure).slots
        if len(slots) <= k:
            return slots
        with self._lock:  # the retriever is stateful (index, then search) and may run a model
            if self._retriever is None:
                from r3mem.retrieval import make_retriever

                self._retriever = make_retriever(self.retrieval)
            return _fuse(question, slots, k, self._retriever)

    def respond(self, question: str, max_new_tokens: int = 64, top_k: int | None = None) -> Reply:
        """Answer with the base model from the memory recalled for `question` (nothing is stored)."""
        check_query("question", question, non_empty=True)
        if self.read == "cache":
            return self._respond_cache(question, max_new_tokens, top_k or self.top_k)
        slots = self.find_sources(question, top_k or self.top_k) if self.read == "source" \
            else self.recall_for(question, top_k)
        context = "\n\n".join(s.get("text") or "" for s in slots)
        prompt = self.prompt.format(context=context or "(nothing remembered yet)", question=question.strip())
        with self._lock:
            text = self.engine.read(prompt, max_new_tokens=max_new_tokens)
        return Reply(text.strip(), context, slots)

    def find_sources(self, question: str, k: int) -> list[dict[str, Any]]:
        """The `k` slots found for `question` by their keys (no expansion, no model pass over the slots), in
        text order, each with `score` and the stored turn it was written from as `text`."""
        mem, stored = self.memory()
        with self._lock:
            found = self.engine.find(mem, question, top_k=k)
        turn_ids = {(r.level, r.key): r.turn_id for r in (stored.slots if stored else [])}
        ids = [turn_ids.get((s.level, s.key)) for s, _ in found]
        turns = {t.index: t for t in self.store.get_turns(self.user_id, self.session_id, [i for i in ids if i])}
        found = sorted(zip(found, ids), key=lambda x: x[0][0].start)  # text order, as recall gives them
        return [{"level": s.level, "key": s.key, "start": s.start, "end": s.end, "score": score, "turn_id": i,
                 "text": format_turn(turns[i].speaker, turns[i].text).strip() if i in turns else "", "read": "source"}
                for (s, score), i in found]

    def _respond_cache(self, question: str, max_new_tokens: int, k: int) -> Reply:
        mem, stored = self.memory()
        with self._lock:
            text, rec = self.engine.answer(question, mem, top_k=k, max_new_tokens=max_new_tokens, read="cache")
        turn_ids = {(r.level, r.key): r.turn_id for r in (stored.slots if stored else [])}
        return Reply(text, "", [dict(s, turn_id=turn_ids.get((s["level"], s["key"])), read="cache") for s in rec.slots])

    def chat(self, text: str, max_new_tokens: int = 64, speaker: str = "user") -> Reply:
        """Store the user's turn, answer it from memory, store the (non-empty) reply as an assistant turn."""
        turns = [self.write(text, speaker, dedupe=False)[0]]  # a dialogue's repeated "thanks" are its turns
        reply = self.respond(text[-MAX_QUERY_CHARS:], max_new_tokens)  # a long message is asked by its end
        if reply.text:
            turns.append(self.write(reply.text, "assistant", dedupe=False)[0])
        return replace(reply, turns=turns)
