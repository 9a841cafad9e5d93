"""The HTTP service through real HTTP clients: FastAPI's TestClient, httpx against uvicorn on 127.0.0.1,
and `r3mem serve` in a subprocess stopped with SIGINT. Tiny in-memory model, real SQLite store."""

import base64
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from conftest import tiny_cfg
from r3mem.engine import R3Mem
from r3mem.service import create_app
from r3mem.store import MemoryStore
from r3mem.testing import tiny_model, tiny_tokenizer

ADMIN = "admin-secret"
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture
def store(tmp_path):
    with MemoryStore(tmp_path / "store.db") as opened:
        yield opened


@pytest.fixture
def app(engine, store):
    return create_app(engine, store, admin_token=ADMIN, max_body_bytes=64_000)


@pytest.fixture
def client(app):
    with TestClient(app) as c:
        yield c


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def new_user(client, user_id):
    r = client.post("/users", json={"user_id": user_id}, headers=bearer(ADMIN))
    assert r.status_code == 201, r.text
    return bearer(r.json()["token"])


@pytest.fixture
def alice(client):
    return new_user(client, "alice")


def assert_error(r, status, kind, words=""):
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == kind and isinstance(body["message"], str) and "\n" not in body["message"]
    assert words.lower() in body["message"].lower()


# ----------------------------------------------------------------------------------- basics


def test_health_version_and_openapi(client, engine):
    assert client.get("/health").json() == {"status": "ok"}
    v = client.get("/version").json()
    assert v["base_model_id"] == engine.base_model_id and v["adapter_hash"] == engine.adapter_hash
    schema = client.get("/openapi.json").json()
    for path in ("/users", "/users/me", "/sessions", "/sessions/import", "/sessions/{session_id}",
                 "/sessions/{session_id}/write", "/sessions/{session_id}/recall", "/sessions/{session_id}/answer",
                 "/sessions/{session_id}/chat", "/sessions/{session_id}/export", "/sessions/{session_id}/turns"):
        assert path in schema["paths"], path
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_user_creation_needs_the_admin_token(client, engine, store):
    assert_error(client.post("/users", json={"user_id": "x"}), 401, "unauthorized", "admin")
    assert_error(client.post("/users", json={"user_id": "x"}, headers=bearer("guess")), 401, "unauthorized")
    token = client.post("/users", json={"user_id": "x"}, headers=bearer(ADMIN)).json()["token"]
    assert store.authenticate(token) == "x"
    assert_error(client.post("/users", json={"user_id": "x"}, headers=bearer(ADMIN)), 409, "conflict", "exists")
    with TestClient(create_app(engine, store)) as closed:  # no admin token configured: creation disabled
        assert_error(closed.post("/users", json={"user_id": "y"}, headers=bearer(ADMIN)), 403, "forbidden")


def test_requests_need_a_valid_token(client, alice):
    assert_error(client.get("/sessions"), 401, "unauthorized", "missing bearer token")
    assert_error(client.get("/sessions", headers=bearer("nope")), 401, "unauthorized", "invalid token")
    assert client.get("/sessions", headers=bearer("nope")).headers["www-authenticate"] == "Bearer"
    assert client.get("/sessions", headers=alice).json() == {"sessions": []}


def test_sessions_crud(client, alice):
    r = client.post("/sessions", json={"session_id": "trip", "meta": {"topic": "travel"}}, headers=alice)
    assert r.status_code == 201 and r.json()["session_id"] == "trip" and r.json()["meta"] == {"topic": "travel"}
    random_id = client.post("/sessions", json={}, headers=alice).json()["session_id"]
    listed = [s["session_id"] for s in client.get("/sessions", headers=alice).json()["sessions"]]
    assert listed == ["trip", random_id]
    got = client.get("/sessions/trip", headers=alice).json()
    assert got["turn_count"] == 0 and got["memory"] == {"version": 0, "through_turn": 0, "slots": 0, "bytes": 0}
    assert_error(client.post("/sessions", json={"session_id": "trip"}, headers=alice), 409, "conflict")
    assert client.delete("/sessions/trip", headers=alice).status_code == 204
    assert_error(client.get("/sessions/trip", headers=alice), 404, "not_found", "trip")
    assert_error(client.delete("/sessions/trip", headers=alice), 404, "not_found")


def test_write_recall_answer_chat(client, alice):
    client.post("/sessions", json={"session_id": "s"}, headers=alice)
    w = client.post("/sessions/s/write", json={"text": "Henry Sibley built a stone house.", "speaker": "Caroline"},
                    headers=alice)
    assert w.status_code == 201
    assert w.json()["turn"]["index"] == 1 and w.json()["turn"]["speaker"] == "Caroline" and w.json()["memory_version"] == 1
    client.post("/sessions/s/write", json={"text": "The river froze in winter."}, headers=alice)
    rec = client.post("/sessions/s/recall", json={"query": "stone house", "top_k": 2}, headers=alice).json()
    assert rec["level"] == "paragraph" and sorted(s["turn_id"] for s in rec["slots"]) == [1, 2]
    by_index = client.post("/sessions/s/recall", json={"index": 1}, headers=alice).json()
    assert by_index["slots"][0]["key"] == "p1" and by_index["slots"][0]["turn_id"] == 2
    ans = client.post("/sessions/s/answer", json={"question": "Who built the house?", "max_new_tokens": 4,
                                                   "top_k": 1, "retrieval": "bm25"}, headers=alice).json()
    assert isinstance(ans["text"], str) and len(ans["slots"]) == 1 and ans["recalled"] == ans["slots"][0]["text"]
    chat = client.post("/sessions/s/chat", json={"text": "Remember the ferry.", "max_new_tokens": 4}, headers=alice).json()
    assert chat["turns"][0] == {**chat["turns"][0], "index": 3, "speaker": "user", "text": "Remember the ferry."}
    turns = client.get("/sessions/s/turns", headers=alice).json()["turns"]
    assert [t["index"] for t in turns] == list(range(1, 3 + len(chat["turns"])))
    info = client.get("/sessions/s", headers=alice).json()
    assert info["memory"]["through_turn"] == len(turns) and info["memory"]["slots"] >= len(turns)
    assert_error(client.post("/sessions/s/recall", json={"index": 99}, headers=alice), 400, "invalid_request", "index")


def test_export_import_round_trip(client, alice, engine):
    client.post("/sessions", json={"session_id": "s"}, headers=alice)
    client.post("/sessions/s/write", json={"text": "Henry Sibley built a stone house."}, headers=alice)
    exported = client.get("/sessions/s/export", headers=alice).json()
    blob = base64.b64decode(exported["memory"]["blob_b64"])
    assert len(engine.from_bytes(blob).paragraphs) == 1  # a memory file this engine loads
    r = client.post("/sessions/import", params={"session_id": "copy"}, json=exported, headers=alice)
    assert r.status_code == 201 and r.json()["turn_count"] == 1 and r.json()["memory"]["version"] == 1
    copy = client.get("/sessions/copy/export", headers=alice).json()
    assert copy["turns"] == exported["turns"] and copy["memory"]["blob_b64"] == exported["memory"]["blob_b64"]
    # the copy keeps working: a new turn lands after the imported ones
    assert client.post("/sessions/copy/write", json={"text": "More."}, headers=alice).json()["turn"]["index"] == 2
    assert_error(client.post("/sessions/import", json=exported, headers=alice), 409, "conflict", "exists")
    assert_error(client.post("/sessions/import", json={"format": "zip"}, headers=alice), 400, "invalid_request",
                 "not a valid r3mem session export")
    other = R3Mem.from_base(tiny_model("gpt2"), tiny_tokenizer(), tiny_cfg())
    foreign = dict(exported, memory=dict(exported["memory"], blob_b64=base64.b64encode(other.to_bytes(other.new_memory())).decode(),
                                         blob_sha256=None))
    foreign["memory"].pop("blob_sha256")
    assert_error(client.post("/sessions/import", params={"session_id": "f"}, json=foreign, headers=alice), 400,
                 "invalid_request", "base_model_id")


def test_users_reach_only_their_own_sessions(client, alice):
    bob = new_user(client, "bob")
    client.post("/sessions", json={"session_id": "private"}, headers=alice)
    client.post("/sessions/private/write", json={"text": "My PIN is 1234."}, headers=alice)
    for method, path, body in [("get", "/sessions/private", None), ("get", "/sessions/private/turns", None),
                               ("post", "/sessions/private/write", {"text": "hi"}),
                               ("post", "/sessions/private/recall", {"query": "PIN"}),
                               ("post", "/sessions/private/answer", {"question": "PIN?"}),
                               ("post", "/sessions/private/chat", {"text": "PIN?"}),
                               ("get", "/sessions/private/export", None), ("delete", "/sessions/private", None)]:
        r = client.request(method, path, json=body, headers=bob)
        assert r.status_code in (403, 404) and r.json()["error"] == "not_found", (method, path, r.text)
    assert client.get("/sessions", headers=bob).json() == {"sessions": []}
    assert client.get("/sessions/private", headers=alice).json()["turn_count"] == 1  # untouched


def test_deleting_user_data(client, alice, store):
    client.post("/sessions", json={"session_id": "s"}, headers=alice)
    client.post("/sessions/s/write", json={"text": "hello"}, headers=alice)
    assert client.delete("/users/me", headers=alice).status_code == 204
    assert_error(client.get("/sessions", headers=alice), 401, "unauthorized")
    assert [u.user_id for u in store.list_users()] == []


# ----------------------------------------------------------------------------------- bad requests


def test_bad_bodies_get_clear_json_errors(client, alice):
    client.post("/sessions", json={"session_id": "s"}, headers=alice)
    json_headers = {**alice, "content-type": "application/json"}
    assert_error(client.post("/sessions/s/write", content=b'{"text": "unterminated', headers=json_headers), 400,
                 "malformed_json", "not valid JSON")
    assert_error(client.post("/sessions/s/write", json={"txt": "x"}, headers=alice), 422, "invalid_request",
                 "text: Field required")
    assert_error(client.post("/sessions/s/write", json={"text": ""}, headers=alice), 422, "invalid_request", "text")
    assert_error(client.post("/sessions/s/write", json={"text": "   "}, headers=alice), 400, "invalid_request", "empty")
    assert_error(client.post("/sessions/s/recall", json={"level": "chapter"}, headers=alice), 422, "invalid_request", "level")
    assert_error(client.post("/sessions/s/answer", json={"question": "q", "top_k": 0}, headers=alice), 422,
                 "invalid_request", "top_k")
    assert_error(client.post("/sessions/s/write", json={"text": "x" * 70_000}, headers=alice), 413, "payload_too_large", "64000")
    streamed = client.post("/sessions/s/write", content=iter([b'{"text": "', b"x" * 40_000, b"y" * 40_000, b'"}']),
                           headers=json_headers)  # chunked: no Content-Length, counted while reading
    assert_error(streamed, 413, "payload_too_large")
    assert_error(client.post("/sessions/nope/write", json={"text": "hi"}, headers=alice), 404, "not_found", "nope")
    assert_error(client.get("/no/such/route"), 404, "not_found")
    assert client.get("/sessions/s/turns", headers=alice).json() == {"turns": []}  # nothing was written


# ----------------------------------------------------------------------------------- real servers


@contextmanager
def uvicorn_server(app):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def test_parallel_writers_over_http_lose_no_turn(app, store):
    with uvicorn_server(app) as url:
        with httpx.Client(base_url=url, timeout=60) as admin:
            token = admin.post("/users", json={"user_id": "alice"}, headers=bearer(ADMIN)).json()["token"]
            admin.post("/sessions", json={"session_id": "s"}, headers=bearer(token))
        acked, failures = [], []

        def writer(w):
            with httpx.Client(base_url=url, timeout=60, headers=bearer(token)) as c:
                for i in range(3):
                    r = c.post("/sessions/s/write", json={"text": f"writer {w} line {i}"})
                    (acked if r.status_code == 201 else failures).append(r.json())

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == [] and len(acked) == 24
    assert sorted(a["turn"]["index"] for a in acked) == list(range(1, 25))
    stored = store.get_memory("alice", "s")
    assert stored.through_turn == 24
    assert [r.turn_id for r in stored.slots if r.level == "paragraph"] == list(range(1, 25))
    texts = {t.index: t.text for t in store.list_turns("alice", "s")}
    assert all(texts[a["turn"]["index"]] == a["turn"]["text"] for a in acked)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_stops_gracefully_without_losing_acknowledged_writes(tmp_path):
    db, port = tmp_path / "served.db", _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "R3MEM_BASE_MODEL": "tiny-llama", "R3MEM_ADMIN_TOKEN": ADMIN, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "r3mem.cli.main", "serve", "--store", str(db), "--port", str(port),
                             "--log-level", "warning"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "server did not start"
            time.sleep(0.2)
        token = httpx.post(f"{url}/users", json={"user_id": "alice"}, headers=bearer(ADMIN)).json()["token"]
        httpx.post(f"{url}/sessions", json={"session_id": "s"}, headers=bearer(token))
        acked, stop = [], threading.Event()

        def writer(w):
            with httpx.Client(base_url=url, timeout=30, headers=bearer(token)) as c:
                i = 0
                while not stop.is_set():
                    try:
                        r = c.post("/sessions/s/write", json={"text": f"writer {w} line {i}"})
                    except httpx.TransportError:
                        return  # the server is going away
                    if r.status_code == 201:
                        acked.append(r.json()["turn"])
                    i += 1

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        while len(acked) < 6 and all(t.is_alive() for t in threads):
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, proc.stderr.read().decode()
    finally:
        stop.set() if "stop" in locals() else None
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for t in threads:
        t.join(30)
    assert len(acked) >= 6
    with MemoryStore(db) as store:
        turns = {t.index: t.text for t in store.list_turns("alice", "s")}
        stored = store.get_memory("alice", "s")
    assert all(turns[a["index"]] == a["text"] for a in acked)
    in_memory = {r.turn_id for r in stored.slots if r.level == "paragraph"}
    assert {a["index"] for a in acked} <= in_memory
