"""ChatAgent over a real SQLite MemoryStore and a tiny in-memory model (no mocks)."""

import threading

import pytest
import torch
from conftest import tiny_cfg

from r3mem.agent import QA_PROMPT, ChatAgent, Reply, ensure_session, format_turn
from r3mem.engine import R3Mem
from r3mem.memfile import MemoryFileError
from r3mem.store import MemoryStore, NotFound
from r3mem.tiny import tiny_model, tiny_tokenizer

TURNS = [
    ("Caroline", "Henry Sibley built a stone house near the ferry."),
    ("Melanie", "In winter the river froze and the settlers crossed on foot."),
    ("Caroline", "Traders came by canoe and steamboat to Saint Paul."),
]


@pytest.fixture
def agent(engine, store):
    ensure_session(store, "alice", "s1")
    return ChatAgent(engine, store, "alice", "s1")


def _stored(store, session="s1"):
    return store.get_memory("alice", session)


def test_turns_are_written_incrementally_with_turn_ids(engine, store, agent):
    turns = [agent.turn(text, speaker) for speaker, text in TURNS]
    assert [t.index for t in turns] == [1, 2, 3]
    stored = _stored(store)
    assert stored.version == 3 and stored.through_turn == 3
    # the stored memory is exactly what writing the formatted turns in one go gives
    whole = engine.write("".join(format_turn(s, t) for s, t in TURNS))
    mem = engine.from_bytes(stored.blob)
    assert [(s.key, s.start, s.end) for s in mem.paragraphs] == [(s.key, s.start, s.end) for s in whole.paragraphs]
    assert torch.allclose(mem.doc_state, whole.doc_state, atol=1e-5)
    assert mem.pending_text == ""  # each turn is a complete paragraph
    # slot records mirror the memory's slots, each with the turn it came from
    paragraphs = [r for r in stored.slots if r.level == "paragraph"]
    assert [(r.key, r.turn_id) for r in paragraphs] == [("p0", 1), ("p1", 2), ("p2", 3)]
    entities = {r.key: r.turn_id for r in stored.slots if r.level == "entity"}
    assert entities["Henry Sibley"] == 1 and entities["Saint Paul"] == 3
    assert len(stored.slots) == len(mem.paragraphs) + len(mem.entities)
    assert all(r.timestamp == turns[r.turn_id - 1].timestamp for r in stored.slots)


def test_batched_catch_up_attributes_slots_to_turns(engine, store, agent):
    turns = agent.add_turns(
        [("Caroline", "First part.\n\nSecond part about Mendota."), ("Melanie", "A\x00 short reply.")]
    )
    stored = _stored(store)
    assert [t.index for t in turns] == [1, 2] and stored.version == 1 and stored.through_turn == 2
    assert [(r.key, r.turn_id) for r in stored.slots if r.level == "paragraph"] == [("p0", 1), ("p1", 1), ("p2", 2)]
    assert {r.key: r.turn_id for r in stored.slots if r.level == "entity"}["Mendota"] == 1
    mem = engine.from_bytes(stored.blob)
    stream = "".join(format_turn(t.speaker, t.text) for t in turns)
    assert [stream[p.start:p.end] for p in mem.paragraphs] == ["Caroline: First part.", "Second part about Mendota.",
                                                               "Melanie: A short reply."]


def test_respond_recalls_and_stores_nothing(store, agent):
    for speaker, text in TURNS:
        agent.turn(text, speaker)
    reply = agent.respond("Who built the stone house?", max_new_tokens=8, top_k=2)
    assert isinstance(reply, Reply) and isinstance(reply.text, str)
    assert len(reply.slots) == 2 and all(s["turn_id"] in (1, 2, 3) for s in reply.slots)
    assert reply.recalled == "\n\n".join(s["text"] for s in reply.slots)
    assert store.get_session("alice", "s1").turn_count == 3 and _stored(store).version == 3


def test_chat_stores_question_and_reply(store, agent):
    reply = agent.chat("I moved to Lisbon in May.", max_new_tokens=6)
    turns = store.list_turns("alice", "s1")
    assert [t.speaker for t in turns] == ["user", "assistant"][: len(turns)]
    assert turns[0].text == "I moved to Lisbon in May."
    assert [t.index for t in reply.turns] == [t.index for t in turns]
    assert (len(turns) == 2) == bool(reply.text)
    assert _stored(store).through_turn == len(turns)
    assert reply.to_dict()["turns"][0]["text"] == "I moved to Lisbon in May."


def test_empty_memory_answers_without_context(agent):
    reply = agent.respond("Anything?", max_new_tokens=4)
    assert reply.slots == [] and reply.recalled == ""


@pytest.mark.parametrize("retrieval", ["bm25", "embedding"])
def test_retrieval_reranks_recalled_slots(engine, store, retrieval):
    ensure_session(store, "alice", "r")
    agent = ChatAgent(engine, store, "alice", "r", retrieval=retrieval, top_k=1, prompt=QA_PROMPT)
    agent.add_turns(TURNS)
    rec = agent.recall("river", top_k=3)
    reply = agent.respond("river", max_new_tokens=4)
    assert len(reply.slots) == 1 and reply.slots[0]["key"] in {s["key"] for s in rec.slots}
    assert reply.recalled == reply.slots[0]["text"]


def test_a_turn_left_out_of_memory_is_caught_up(store, agent):
    """A writer that died after storing its turn (before the memory write) loses nothing."""
    store.append_turn("alice", "s1", "Henry Sibley built a stone house.", "Caroline")
    agent.turn("The river froze.", "Melanie")
    stored = _stored(store)
    assert stored.through_turn == 2 and stored.version == 1
    assert [(r.key, r.turn_id) for r in stored.slots if r.level == "paragraph"] == [("p0", 1), ("p1", 2)]


class RacingStore(MemoryStore):
    """A real store in which another writer commits a turn just before our first memory write."""

    def __init__(self, path, rival):
        super().__init__(path)
        self.rival, self.raced = rival, False

    def put_memory(self, *args, **kwargs):
        if not self.raced:
            self.raced = True
            self.rival(self)
        return super().put_memory(*args, **kwargs)


def test_conflicting_memory_write_is_retried(engine, tmp_path):
    """Our memory write conflicts with a rival's; we reload and find our turn already covered."""
    def rival(store):
        with MemoryStore(store.url) as other:
            ChatAgent(engine, other, "alice", "s1").turn("rival turn", "bob")

    with RacingStore(tmp_path / "race.db", rival) as store:
        ensure_session(store, "alice", "s1")
        turn = ChatAgent(engine, store, "alice", "s1").turn("my turn")
        stored = store.get_memory("alice", "s1")
    assert store.raced and turn.index == 1
    # the rival caught up our stored turn first (version 1); our stale write was refused, not applied twice
    assert stored.version == 1 and stored.through_turn == 2
    assert [r.turn_id for r in stored.slots if r.level == "paragraph"] == [1, 2]  # turn order, nothing lost
    mem = engine.from_bytes(stored.blob)
    assert [s.end - s.start for s in mem.paragraphs] == [len("user: my turn"), len("bob: rival turn")]


def test_parallel_writers_lose_no_turn(engine, store):
    ensure_session(store, "alice", "s1")
    lock, errors, acked = threading.Lock(), [], []

    def writer(w):
        agent = ChatAgent(engine, store, "alice", "s1", lock=lock)
        try:
            for i in range(3):
                acked.append(agent.turn(f"writer {w} says {i}.").index)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stored = _stored(store)
    assert sorted(acked) == list(range(1, 13)) and stored.through_turn == 12
    assert [r.turn_id for r in stored.slots if r.level == "paragraph"] == list(range(1, 13))
    assert len(engine.from_bytes(stored.blob).paragraphs) == 12


def test_ensure_session_is_idempotent(store):
    a = ensure_session(store, "bob", "x")
    b = ensure_session(store, "bob", "x")
    assert a.session_id == b.session_id == "x"
    fresh = ensure_session(store, "bob")
    assert fresh.session_id != "x" and len(store.list_sessions("bob")) == 2


def test_bad_arguments(engine, store, agent):
    with pytest.raises(ValueError, match="retrieval"):
        ChatAgent(engine, store, "alice", "s1", retrieval="grep")
    with pytest.raises(ValueError, match="top_k"):
        ChatAgent(engine, store, "alice", "s1", top_k=0)
    with pytest.raises(ValueError, match="empty"):
        agent.turn("   ")
    with pytest.raises(ValueError, match="empty"):
        agent.respond("")
    with pytest.raises(NotFound):
        ChatAgent(engine, store, "alice", "nope").turn("hi")
    assert store.get_session("alice", "s1").turn_count == 0


def test_memory_of_another_engine_is_rebuilt_from_the_turns(engine, store, agent, caplog):
    """An r3mem upgrade (another adapter, other levels or precision, another model) leaves stored memories
    it cannot read: they are rebuilt from the stored turns, never read as they are and never refused."""
    for speaker, text in TURNS[:2]:
        agent.turn(text, speaker)
    lean = R3Mem.from_base(tiny_model("llama"), tiny_tokenizer(), tiny_cfg(hierarchy_levels=("document", "paragraph"),
                                                                            memory_bits=4))
    with pytest.raises(MemoryFileError, match="memory_layout"):
        lean.from_bytes(_stored(store).blob)  # a memory file alone is refused: nothing to rebuild it from
    with caplog.at_level("WARNING", logger="r3mem.agent"):
        rec = ChatAgent(lean, store, "alice", "s1").recall(index=1)  # a read rebuilds it first
    assert caplog.text.count("rebuilding it from its 2 stored turns") == 1
    stored = _stored(store)
    assert stored.version == 3 and stored.through_turn == 2
    rebuilt, want = lean.from_bytes(stored.blob), lean.write("".join(format_turn(s, t) for s, t in TURNS[:2]))
    assert rebuilt.entities == [] and [(s.key, s.start, s.end) for s in rebuilt.paragraphs] == \
        [(s.key, s.start, s.end) for s in want.paragraphs]
    assert all(s.packed is not None for s in rebuilt.paragraphs)
    assert torch.equal(rebuilt.paragraphs[1].state, want.paragraphs[1].state) and rec.slots[0]["key"] == "p1"
    assert [(r.key, r.turn_id) for r in stored.slots] == [("p0", 1), ("p1", 2)]  # old entity records are gone
    # a write by another model folds every turn, the new one included, into a memory of its own
    other = R3Mem.from_base(tiny_model("gpt2"), tiny_tokenizer(), tiny_cfg())
    ChatAgent(other, store, "alice", "s1").turn(TURNS[2][1], TURNS[2][0])
    assert _stored(store).through_turn == 3 and len(other.from_bytes(_stored(store).blob).paragraphs) == 3
    assert store.get_session("alice", "s1").turn_count == 3


def test_a_corrupted_memory_is_refused_before_a_turn_is_stored(engine, store, agent):
    agent.turn("hello there")
    stored = _stored(store)
    store.put_memory("alice", "s1", stored.blob[:-7] + b"garbage", stored.slots, stored.through_turn)
    with pytest.raises(MemoryFileError, match="checksum|truncated"):
        agent.turn("more")
    with pytest.raises(MemoryFileError, match="checksum|truncated"):
        agent.add_turns([("user", "more")])
    assert store.get_session("alice", "s1").turn_count == 1  # refused before anything was stored
    with pytest.raises(ValueError, match="empty"):
        agent.add_turns([("user", "fine"), ("user", " ")])
    assert store.get_session("alice", "s1").turn_count == 1


def test_locomo_example_runs(capsys):
    """examples/chat_agent.py: replay LoCoMo turns through ChatAgent and answer questions (tiny model)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "chat_agent.py"
    spec = importlib.util.spec_from_file_location("chat_agent_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    if not example.DATA.exists():
        pytest.skip(f"{example.DATA} not present")
    assert example.main(["--base-model", "tiny-llama", "--limit", "2", "--max-turns", "12"]) == 0
    printed = capsys.readouterr().out
    assert "12 turns in" in printed and printed.count("gold  :") == 2 and "mean evidence recall@3" in printed


def test_memory_cache_decodes_each_version_once(engine, store):
    from r3mem.memcache import MemoryCache

    ensure_session(store, "alice", "c")
    cache = MemoryCache()
    agent = ChatAgent(engine, store, "alice", "c", cache=cache)
    for speaker, text in TURNS:
        agent.turn(text, speaker)
    decoded = []
    real = engine.from_bytes
    engine.from_bytes = lambda *a, **k: decoded.append(1) or real(*a, **k)
    try:
        for q in ("stone house", "river", "canoe"):
            agent.recall(q)
        fresh = ChatAgent(engine, store, "alice", "c", cache=cache)  # another request, same cache
        assert fresh.describe()["bytes"] == len(store.get_memory("alice", "c").blob)
        assert decoded == []  # the writer put the new version in the cache; nobody decoded it again
        mem, stored = fresh.memory()
        assert stored.version == 3 and len(mem.paragraphs) == 3
        other = ChatAgent(engine, store, "alice", "c")  # no cache: a decode per call
        other.recall("canoe")
        assert decoded == [1]
        store.delete_session("alice", "c")  # recreated with the same id: version 1 again, other text
        ensure_session(store, "alice", "c")
        ChatAgent(engine, store, "alice", "c").turn("Only this now.")
        mem, _ = fresh.memory()
        assert len(mem.paragraphs) == 1  # the stamp's checksum tells it from the deleted session's version 1
    finally:
        engine.from_bytes = real


def test_respond_reads_recalled_text_stored_turns_or_the_cache(engine, store):
    ensure_session(store, "alice", "r")
    texts = {}
    for mode in ("text", "source", "cache"):
        agent = ChatAgent(engine, store, "alice", "r", read=mode, prompt=QA_PROMPT)
        if mode == "text":
            for speaker, text in TURNS:
                agent.turn(text, speaker)
        reply = agent.respond("Who built the stone house?", max_new_tokens=3, top_k=2)
        assert len(reply.slots) == 2 and all(s["turn_id"] in (1, 2, 3) for s in reply.slots)
        texts[mode] = reply
    src = texts["source"]
    assert [s["text"] for s in src.slots] == [format_turn(*TURNS[s["turn_id"] - 1]).strip() for s in src.slots]
    assert src.recalled == "\n\n".join(s["text"] for s in src.slots)
    assert texts["cache"].recalled == "" and [s["key"] for s in texts["cache"].slots] == [
        s["key"] for s in src.slots]
    with pytest.raises(ValueError, match="read must be one of"):
        ChatAgent(engine, store, "alice", "r", read="both")


# ----- curation: edit, delete, dedupe -----------------------------------------------------------


def _same_memory(engine, stored, turns):
    """The stored memory is exactly what writing these (speaker, text) turns from scratch gives."""
    whole = engine.write("".join(format_turn(s, t) for s, t in turns))
    mem = engine.from_bytes(stored.blob)
    assert [(s.key, s.start, s.end) for s in mem.paragraphs] == [(s.key, s.start, s.end) for s in whole.paragraphs]
    assert torch.allclose(mem.doc_state, whole.doc_state, atol=1e-5)


def test_delete_turn_rebuilds_the_memory_and_nothing_returns_its_text(engine, store, agent):
    secret = "The locker code is Wabasha nine."
    for speaker, text in [TURNS[0], ("Melanie", secret), *TURNS[1:]]:
        agent.turn(text, speaker)
    assert any("Wabasha" in s["source"] for s in agent.describe()["slots"])  # in memory before the delete
    gone, version = agent.delete_turn(2)
    assert gone.text == secret and version == _stored(store).version
    stored = _stored(store)
    assert stored.through_turn == 4 and [r.turn_id for r in stored.slots if r.level == "paragraph"] == [1, 3, 4]
    _same_memory(engine, stored, TURNS)  # as if the turn had never been said
    assert all("Wabasha" not in (s["source"] + s["key"]) for s in agent.describe()["slots"])
    assert "Wabasha" not in str(store.export_session("alice", "s1"))
    reply = agent.respond("What is the locker code?", max_new_tokens=4)
    assert all(s["turn_id"] != 2 for s in reply.slots)
    with pytest.raises(NotFound, match="turn 2 of session 's1'"):
        agent.delete_turn(2)


def test_edit_turn_rebuilds_from_the_new_text_and_keeps_the_old(engine, store, agent):
    for speaker, text in TURNS:
        agent.turn(text, speaker)
    turn, _ = agent.edit_turn(1, "Henry Sibley built a brick house near the mill.")
    assert turn.index == 1 and turn.speaker == "Caroline"
    edited = [("Caroline", "Henry Sibley built a brick house near the mill."), *TURNS[1:]]
    _same_memory(engine, _stored(store), edited)
    assert [r.text for r in store.turn_history("alice", "s1", 1)] == [TURNS[0][1]]
    with pytest.raises(ValueError, match="text must not be empty"):
        agent.edit_turn(1, "  ")
    assert store.get_turn("alice", "s1", 1).text == edited[0][1]  # nothing changed by the refused edit


def test_a_rebuild_compresses_only_the_paragraphs_that_changed(store, monkeypatch):
    import r3mem.writer as writer

    lean = R3Mem.from_base(tiny_model("llama"), tiny_tokenizer(), tiny_cfg(hierarchy_levels=("document", "paragraph")))
    ensure_session(store, "alice", "r")
    agent = ChatAgent(lean, store, "alice", "r")
    turns = [*TURNS, ("Melanie", "The mill burned in the spring flood.")]
    agent.add_turns(turns)
    compressed: list[int] = []
    real = writer.compress_slots
    monkeypatch.setattr(writer, "compress_slots", lambda m, seqs, *a: compressed.append(len(seqs)) or real(m, seqs, *a))
    agent.edit_turn(2, "In winter the river froze over.")
    agent.delete_turn(3)
    assert compressed == [1, 0]  # the edited turn's paragraph; nothing for a delete
    now = [turns[0], ("Melanie", "In winter the river froze over."), turns[3]]
    _same_memory(lean, _stored(store, "r"), now)
    whole = lean.write("".join(format_turn(s, t) for s, t in now))
    for a, b in zip(lean.from_bytes(_stored(store, "r").blob).paragraphs, whole.paragraphs):
        assert torch.allclose(a.state, b.state, atol=1e-5) and torch.equal(a.dense, b.dense) and a.terms == b.terms
    assert "canoe" not in str(store.export_session("alice", "r"))  # the deleted turn (an edit keeps its history)


def test_a_rebuild_refolds_the_document_only_from_the_snapshot_before_the_change(store, monkeypatch):
    import r3mem.writer as writer

    eng = R3Mem.from_base(tiny_model("llama"), tiny_tokenizer(),
                          tiny_cfg(hierarchy_levels=("document", "paragraph"), snapshot_every=2))
    ensure_session(store, "alice", "long")
    agent = ChatAgent(eng, store, "alice", "long")
    turns = [("Caroline" if i % 2 else "Melanie", f"Entry {i}: the ferry left the landing with {i} carts of grain.")
             for i in range(40)]
    agent.add_turns(turns)
    before = eng.from_bytes(_stored(store, "long").blob)
    assert before.snapshots and len(before.doc_chain) == before.n_segments
    now = [*turns[:37], (turns[37][0], "Entry 37 was struck out."), turns[38], turns[39]]
    scratch = eng.write("".join(format_turn(s, t) for s, t in now))
    folded: list[int] = []
    real = writer.fold
    monkeypatch.setattr(writer, "fold", lambda model, state, ids, *a, **kw: folded.append(
        -(-ids.shape[1] // model.cfg.segment_len)) or real(model, state, ids, *a, **kw))
    agent.edit_turn(38, "Entry 37 was struck out.")  # turn 38 holds entry 37
    assert _stored(store, "long").blob == eng.to_bytes(scratch)  # exactly the memory a write from scratch makes
    assert 0 < sum(folded) < before.n_segments // 4  # from the snapshot before the edited turn on
    agent.delete_turn(40)  # the rest is a prefix of what was written: the rebuild waits for a snapshot, then settles
    assert _stored(store, "long").blob == eng.to_bytes(eng.write("".join(format_turn(s, t) for s, t in now[:-1])))


def test_write_dedupes_a_repeated_fact_but_chat_keeps_the_dialogue(engine, store, agent):
    first, v1 = agent.write("I moved to Lisbon in May.")
    again, v2 = agent.write("i moved to lisbon in may")
    assert again == first and v2 == v1 and len(store.list_turns("alice", "s1")) == 1
    assert len([r for r in _stored(store).slots if r.level == "paragraph"]) == 1
    kept, _ = agent.write("I moved to Lisbon in May.", dedupe=False)
    assert kept.index == 2
    plain = ChatAgent(engine, store, "alice", "s1", dedupe=False)
    assert plain.turn("I moved to Lisbon in May.").index == 3


def test_recall_checks_expansions_against_the_stored_turns(engine, store, agent, monkeypatch):
    for speaker, text in TURNS:
        agent.turn(text, speaker)
    seen = []
    real = engine.recall
    monkeypatch.setattr(engine, "recall", lambda mem, **kw: seen.append(kw.get("drafts")) or real(mem, **kw))
    agent.recall("stone house", top_k=2)
    mem, _ = agent.memory()
    assert [seen[-1](s) for s in mem.paragraphs] == [format_turn(sp, t).strip() for sp, t in TURNS]
    ChatAgent(engine, store, "alice", "s1", verify=False).recall("stone house")
    assert seen[-1] is None
