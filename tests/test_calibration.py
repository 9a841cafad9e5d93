"""Calibrated recall confidence: the fit, its file (refused for other weights), and what a "probably
wrong" slot does to a recall, an answer, the agent and the service (tiny models, no mocks)."""

import json

import pytest
from conftest import perturb_trainables
from fastapi.testclient import TestClient

from r3mem.agent import DEFAULT_MIN_CONFIDENCE, ChatAgent, ensure_session, format_turn
from r3mem.calibration import CALIBRATION_FILE, CalibrationError, SlotCalibration, fit, load_calibration
from r3mem.engine import NOTHING_REMEMBERED, R3Mem
from r3mem.recall import check_min_confidence
from r3mem.service.app import create_app
from r3mem.tiny import SAMPLE_TEXT, tiny_config, tiny_model

TURNS = [("Caroline", "Henry Sibley built a stone house near the ferry."),
         ("Melanie", "In winter the river froze and the settlers crossed on foot.")]


def _always(engine, p_high: bool) -> SlotCalibration:
    """A calibration of these weights that says every expansion is (p ~ 1) or is not (p ~ 0) exact."""
    return SlotCalibration((0.0, 0.0), 30.0 if p_high else -30.0, engine.adapter_hash)


def test_fit_learns_that_likelier_expansions_are_exact():
    probs = [[0.99, 0.98, 0.97]] * 20 + [[0.9, 0.4, 0.95]] * 20 + [[0.99, 0.97, 0.6]] * 3 + [[0.95, 0.5, 0.9]] * 3
    exact = [True] * 20 + [False] * 20 + [False] * 3 + [True] * 3
    cal = fit(probs, exact, "h", {"sets": ["synthetic"]})
    assert cal.fitted_on == {"n_slots": 46, "sets": ["synthetic"]}
    sure, unsure = cal.p_exact([0.99, 0.98, 0.99]), cal.p_exact([0.9, 0.3, 0.9])
    assert 0.0 <= unsure < 0.5 < sure <= 1.0
    assert cal.p_exact([]) is None
    with pytest.raises(ValueError, match="needs slots that were reconstructed exactly and slots that were not"):
        fit(probs[:20], exact[:20], "h")


def test_calibration_file_round_trips_and_is_refused_for_other_weights(tmp_path):
    cal = SlotCalibration((1.5, 0.25), -0.5, "abc", {"n_slots": 3})
    path = tmp_path / CALIBRATION_FILE
    cal.save(path)
    assert load_calibration(path, "abc") == cal and not list(tmp_path.glob("*.tmp"))
    with pytest.raises(CalibrationError, match="fitted on adapter abc, these weights are other") as e:
        load_calibration(path, "other")
    assert "\n" not in str(e.value)
    d = json.loads(path.read_text())
    for bad, words in ((dict(d, format="x"), "not a slot calibration"), (dict(d, weights=[1.0]), "two numbers"),
                       (dict(d, bias="0"), "two numbers")):
        path.write_text(json.dumps(bad))
        with pytest.raises(CalibrationError, match=words):
            load_calibration(path, "abc")
    path.write_text("{not json")
    with pytest.raises(CalibrationError, match="not a readable calibration file"):
        load_calibration(path, "abc")


def test_an_adapter_folder_brings_its_calibration_and_refuses_another(tok, tmp_path):
    trained = R3Mem.from_base(tiny_model("llama"), tok, tiny_config())  # "tiny-llama": loadable by name
    perturb_trainables(trained.model)
    trained._refresh_identity()
    folder = tmp_path / "adapter"
    trained.save_adapter(folder)
    assert R3Mem.from_pretrained(folder, keys=None).calibration is None
    cal = SlotCalibration((1.0, 0.5), 2.0, trained.adapter_hash)
    cal.save(folder / CALIBRATION_FILE)
    engine = R3Mem.from_pretrained(folder, keys=None)
    assert engine.calibration == cal
    # trained further in place: the calibration of the old weights is dropped, not misapplied
    next(p for p in engine.model.parameters() if p.requires_grad).data.add_(0.1)
    engine._refresh_identity()
    assert engine.calibration is None
    SlotCalibration((1.0, 0.5), 2.0, "0123456789abcdef").save(folder / CALIBRATION_FILE)
    with pytest.raises(CalibrationError, match="fitted on adapter 0123456789abcdef"):
        R3Mem.from_pretrained(folder, keys=None)


def test_recall_flags_slots_under_min_confidence(trained_like):
    mem = trained_like.flush(trained_like.write(SAMPLE_TEXT))
    plain = trained_like.recall(mem, query="the ferry", top_k=2)
    assert plain.probably_wrong is None and all(s["probably_wrong"] is None for s in plain.slots)
    assert all(s["confidence"]["p_exact"] is None for s in plain.slots)
    # without a calibration the threshold is on the geometric-mean token probability
    assert trained_like.recall(mem, query="the ferry", top_k=2, min_confidence=0.0).probably_wrong is False
    rec = trained_like.recall(mem, query="the ferry", top_k=2, min_confidence=1.0)
    assert rec.probably_wrong is True and rec.to_dict()["probably_wrong"] is True
    assert [s["text"] for s in rec.slots] == [s["text"] for s in plain.slots]  # flagged, not changed
    for p_high in (True, False):
        trained_like.calibration = _always(trained_like, p_high)
        rec = trained_like.recall(mem, query="the ferry", top_k=2, min_confidence=0.5)
        assert all((s["confidence"]["p_exact"] > 0.5) == p_high for s in rec.slots)
        assert rec.probably_wrong is (not p_high)


@pytest.mark.parametrize("bad", [-0.1, 1.5, "0.5", True, float("nan")])
def test_bad_min_confidence_is_refused_before_any_pass(trained_like, bad):
    with pytest.raises(ValueError, match="min_confidence: must be empty or a number in"):
        check_min_confidence(bad)
    mem = trained_like.write(SAMPLE_TEXT)
    with pytest.raises(ValueError, match="min_confidence"):
        trained_like.recall(mem, query="ferry", min_confidence=bad)


def test_answer_reads_the_source_of_a_probably_wrong_slot_or_nothing(trained_like, monkeypatch):
    text = "".join(format_turn(s, t) for s, t in TURNS)
    mem = trained_like.flush(trained_like.write(text))
    prompts = []
    real = trained_like.read
    monkeypatch.setattr(trained_like, "read", lambda prompt, n=32: prompts.append(prompt) or real(prompt, n))
    trained_like.calibration = _always(trained_like, False)
    drafts = lambda s: text[s.start:s.end]  # noqa: E731
    _, rec = trained_like.answer("Who built the stone house?", mem, top_k=2, drafts=drafts, min_confidence=0.5)
    assert [s["read"] for s in rec.slots] == ["source", "source"]
    assert all(drafts(s).strip() in prompts[-1] for s in mem.paragraphs)
    out, rec = trained_like.answer("Who built the stone house?", mem, top_k=2, min_confidence=0.5)
    assert out == NOTHING_REMEMBERED and [s["read"] for s in rec.slots] == ["dropped", "dropped"]
    trained_like.calibration = _always(trained_like, True)
    _, rec = trained_like.answer("Who built the stone house?", mem, top_k=2, min_confidence=0.5)
    assert rec.probably_wrong is False and rec.text in prompts[-1]


def test_agent_gives_the_stored_turns_for_probably_wrong_slots(trained_like, store):
    ensure_session(store, "alice", "s")
    agent = ChatAgent(trained_like, store, "alice", "s")
    for speaker, text in TURNS:
        agent.turn(text, speaker)
    decoded = agent.recall("stone house", top_k=2)
    trained_like.calibration = _always(trained_like, False)
    rec = agent.recall("stone house", top_k=2)  # recall flags only when asked: the reconstruction as it is
    assert rec.probably_wrong is None and [s["read"] for s in rec.slots] == ["expansion", "expansion"]
    rec = agent.recall("stone house", top_k=2, min_confidence=0.5)
    assert [s["read"] for s in rec.slots] == ["source", "source"]
    assert [s["text"] for s in rec.slots] == [format_turn(*TURNS[s["turn_id"] - 1]).strip() for s in rec.slots]
    assert rec.text == "\n\n".join(s["text"] for s in rec.slots)
    # answers use the agent's threshold: 0.5 by default, None (or 0) reads every expansion as decoded
    assert agent.min_confidence == DEFAULT_MIN_CONFIDENCE == 0.5
    reply = agent.respond("Who built the stone house?", max_new_tokens=2)
    assert {s["read"] for s in reply.slots} == {"source"} and format_turn(*TURNS[0]).strip() in reply.recalled
    plain = ChatAgent(trained_like, store, "alice", "s", min_confidence=None).respond("Who built it?", 2)
    assert {s["read"] for s in plain.slots} == {"expansion"} and plain.recalled == "\n\n".join(
        s["text"] for s in decoded.slots)
    trained_like.calibration = _always(trained_like, True)
    assert [s["text"] for s in agent.recall("stone house", top_k=2, min_confidence=0.5).slots] == \
        [s["text"] for s in decoded.slots]
    with pytest.raises(ValueError, match="min_confidence"):
        ChatAgent(trained_like, store, "alice", "s", min_confidence=2)


def test_service_takes_min_confidence_and_says_what_was_read(trained_like, store):
    trained_like.calibration = _always(trained_like, False)
    app = create_app(trained_like, store, admin_token="admin-token-0123456789")
    with TestClient(app) as c:
        user = c.post("/users", json={"user_id": "alice"}, headers={"Authorization": "Bearer admin-token-0123456789"})
        h = {"Authorization": f"Bearer {user.json()['token']}"}
        c.post("/sessions", json={"session_id": "s"}, headers=h)
        for speaker, text in TURNS:
            c.post("/sessions/s/write", json={"text": text, "speaker": speaker}, headers=h)
        rec = c.post("/sessions/s/recall", json={"query": "stone house", "top_k": 2, "min_confidence": 0.5},
                     headers=h).json()
        assert rec["probably_wrong"] is True and {s["read"] for s in rec["slots"]} == {"source"}
        assert all(s["probably_wrong"] and s["confidence"]["p_exact"] < 0.5 for s in rec["slots"])
        plain = c.post("/sessions/s/recall", json={"query": "stone house", "top_k": 2}, headers=h).json()
        assert plain["probably_wrong"] is None and {s["read"] for s in plain["slots"]} == {"expansion"}
        ans = c.post("/sessions/s/answer", json={"question": "Who built it?", "max_new_tokens": 2}, headers=h).json()
        assert {s["read"] for s in ans["slots"]} == {"source"}  # answers: 0.5 by default
        assert format_turn(*TURNS[0]).strip() in ans["recalled"] or format_turn(*TURNS[1]).strip() in ans["recalled"]
        off = c.post("/sessions/s/answer", json={"question": "Who built it?", "max_new_tokens": 2,
                                                  "min_confidence": 0}, headers=h).json()
        assert {s["read"] for s in off["slots"]} == {"expansion"}
        null = c.post("/sessions/s/answer", json={"question": "Who built it?", "max_new_tokens": 2,
                                                   "min_confidence": None}, headers=h).json()
        assert {s["read"] for s in null["slots"]} == {"expansion"}  # null: no threshold, as 0
        bad = c.post("/sessions/s/recall", json={"query": "x", "min_confidence": 1.5}, headers=h)
        assert bad.status_code == 422 and "min_confidence" in bad.json()["message"], bad.text


def test_the_service_schemas_default_is_the_agents():
    from r3mem.service import schemas

    assert schemas.DEFAULT_MIN_CONFIDENCE == DEFAULT_MIN_CONFIDENCE
    assert schemas.AnswerIn(question="q").min_confidence == schemas.ChatIn(text="t").min_confidence == \
        DEFAULT_MIN_CONFIDENCE and schemas.RecallIn().min_confidence is None


def test_mcp_recall_takes_min_confidence(trained_like, store):
    pytest.importorskip("mcp")
    import anyio
    from mcp import Client

    from r3mem.mcp_server import create_server

    trained_like.calibration = _always(trained_like, False)
    server = create_server(trained_like, store, user_id="ann")

    async def go():
        async with Client(server) as c:
            await c.call_tool("write_memory", {"text": TURNS[0][1], "speaker": TURNS[0][0], "session_id": "s"})
            return [await c.call_tool("recall_memory", {"session_id": "s", "query": "house", **extra})
                    for extra in ({"min_confidence": 0.5}, {}, {"min_confidence": -1})]

    flagged, plain, bad = anyio.run(go)
    got = flagged.structured_content
    assert got["probably_wrong"] is True and got["slots"][0]["read"] == "source"
    assert got["text"] == format_turn(*TURNS[0]).strip()
    plain = plain.structured_content
    assert plain["probably_wrong"] is None and plain["slots"][0]["read"] == "expansion"
    assert bad.is_error and "min_confidence" in bad.content[0].text


def test_agent_keeps_the_document_expansion_even_when_flagged(trained_like, store):
    ensure_session(store, "alice", "d")
    agent = ChatAgent(trained_like, store, "alice", "d")
    for speaker, text in TURNS:
        agent.turn(text, speaker)
    rec = agent.recall(level="document", min_confidence=1.0)  # every expansion is under 1
    assert rec.probably_wrong is True and [s["read"] for s in rec.slots] == ["expansion"]
    assert rec.text == agent.recall(level="document").text
