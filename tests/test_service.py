"""The HTTP service through real HTTP clients: FastAPI's TestClient, httpx against uvicorn on 127.0.0.1,
and `r3mem serve` in a subprocess stopped with SIGINT. Tiny in-memory model, real SQLite store."""

import base64
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import free_port, tiny_cfg, uvicorn_server, wait_healthy
from fastapi.testclient import TestClient

from r3mem.agent import ChatAgent
from r3mem.engine import R3Mem
from r3mem.service import create_app
from r3mem.store import MemoryStore
from r3mem.tiny import tiny_model, tiny_tokenizer

ADMIN = "admin-secret"
SRC = Path(__file__).resolve().parents[1] / "src"


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


def test_docs_pages_work_offline_with_named_operations(client):
    import re

    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assets = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert assets and all(a.startswith("/") for a in assets), (page, assets)  # nothing from a CDN
        for asset in assets:
            assert client.get(asset).status_code == 200, asset
    ops = {op["operationId"] for path in client.get("/openapi.json").json()["paths"].values() for op in path.values()}
    assert {"list_sessions", "write", "recall", "answer", "edit_turn", "delete_turn", "get_job"} <= ops


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
    assert (
        w.json()["turn"]["index"] == 1 and w.json()["turn"]["speaker"] == "Caroline" and w.json()["memory_version"] == 1
    )
    client.post("/sessions/s/write", json={"text": "The river froze in winter."}, headers=alice)
    rec = client.post("/sessions/s/recall", json={"query": "stone house", "top_k": 2}, headers=alice).json()
    assert rec["level"] == "paragraph" and sorted(s["turn_id"] for s in rec["slots"]) == [1, 2]
    for slot in rec["slots"]:  # recall confidence travels with every slot
        assert "".join(t["text"] for t in slot["tokens"]) == slot["text"]
        assert 0 < slot["confidence"]["min"] <= slot["confidence"]["geo_mean"] <= 1
    assert rec["confidence"] == min(s["confidence"]["geo_mean"] for s in rec["slots"])
    by_index = client.post("/sessions/s/recall", json={"index": 1}, headers=alice).json()
    assert by_index["slots"][0]["key"] == "p1" and by_index["slots"][0]["turn_id"] == 2
    ans = client.post("/sessions/s/answer", json={"question": "Who built the house?", "max_new_tokens": 4,
                                                   "top_k": 1, "retrieval": "bm25"}, headers=alice).json()
    assert isinstance(ans["text"], str) and len(ans["slots"]) == 1 and ans["recalled"] == ans["slots"][0]["text"]
    chat = client.post(
        "/sessions/s/chat", json={"text": "Remember the ferry.", "max_new_tokens": 4}, headers=alice
    ).json()
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
    # another engine's memory is kept and rebuilt: test_import_keeps_another_engines_memory_and_rebuilds_it...


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
    assert_error(
        client.post("/sessions/s/recall", json={"level": "chapter"}, headers=alice), 422, "invalid_request", "level"
    )
    assert_error(client.post("/sessions/s/answer", json={"question": "q", "top_k": 0}, headers=alice), 422,
                 "invalid_request", "top_k")
    assert_error(
        client.post("/sessions/s/write", json={"text": "x" * 70_000}, headers=alice), 413, "payload_too_large", "64000"
    )
    streamed = client.post("/sessions/s/write", content=iter([b'{"text": "', b"x" * 40_000, b"y" * 40_000, b'"}']),
                           headers=json_headers)  # chunked: no Content-Length, counted while reading
    assert_error(streamed, 413, "payload_too_large")
    assert_error(client.post("/sessions/nope/write", json={"text": "hi"}, headers=alice), 404, "not_found", "nope")
    assert_error(client.get("/no/such/route"), 404, "not_found")
    # what the framework reported only as "There was an error parsing the body": say what and where
    assert_error(client.post("/sessions/s/write", content=b'{"text": "caf\xe9"}', headers=json_headers), 400,
                 "malformed_json", "not valid UTF-8: byte 0xe9 at offset 13")
    deep = b'{"text": "x", "meta": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    assert_error(client.post("/sessions/s/write", content=deep, headers=json_headers), 400, "malformed_json",
                 "deeper than 512 levels")
    brackets_in_text = {"text": "[[[[" * 100 + '"{{{{' * 50}  # brackets inside a string are text, not nesting
    assert client.post("/sessions/s/write", json=brackets_in_text, headers=alice).status_code == 201
    assert client.get("/sessions/s/turns", headers=alice).json()["turns"][0]["text"] == brackets_in_text["text"]
    assert len(client.get("/sessions/s/turns", headers=alice).json()["turns"]) == 1  # nothing else was written


def test_security_headers(client, alice):
    ui = client.get("/ui/")
    assert ui.status_code == 200 and ui.headers["x-frame-options"] == "DENY"
    csp = ui.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert ui.headers["x-content-type-options"] == "nosniff"
    api = client.get("/sessions", headers=alice)
    assert api.headers["x-content-type-options"] == "nosniff" and "content-security-policy" not in api.headers


# ----------------------------------------------------------------------------------- real servers


def test_huge_headers_get_431_and_malformed_requests_a_json_400(app):
    import socket

    def raw(request: bytes) -> bytes:
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := s.recv(65536):  # a reset (the server closing on unread bytes) fails the test
                got += chunk
        return got

    with uvicorn_server(app) as url:
        host, port = url.removeprefix("http://").split(":")
        huge = raw(b"GET /sessions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"a" * 1_000_000 + b"\r\n\r\n")
        bad = raw(b"GET /sessions HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
    head, _, body = huge.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ") and json.loads(body)["error"] == "headers_too_large", huge[:200]
    head, _, body = bad.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and json.loads(body)["error"] == "bad_request", bad[:200]


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


def test_concurrent_recall_describe_and_import_give_the_sequential_answers(trained_like, store):
    """Adapters that matter (non-zero), one session recalled while other clients read and import memories."""
    app = create_app(trained_like, store, admin_token=ADMIN, max_body_bytes=1_000_000)
    with uvicorn_server(app) as url:
        with httpx.Client(base_url=url, timeout=120) as admin:
            token = admin.post("/users", json={"user_id": "alice"}, headers=bearer(ADMIN)).json()["token"]
            h = bearer(token)
            for sid, lines in (("a", ["Henry Sibley built a stone house.", "The river froze in winter."]),
                               ("b", ["A ferry crossed at Mendota.", "Traders came by canoe."])):
                admin.post("/sessions", json={"session_id": sid}, headers=h)
                for line in lines:
                    admin.post(f"/sessions/{sid}/write", json={"text": line}, headers=h)
            exported = admin.get("/sessions/b/export", headers=h).json()
            queries = [{"query": "stone house", "top_k": 1}, {"index": 1}, {"query": "winter", "top_k": 2}]
            alone = [admin.post("/sessions/a/recall", json=q, headers=h).json()["text"] for q in queries]
        got, failures, stop = [], [], threading.Event()

        def recaller():
            with httpx.Client(base_url=url, timeout=120, headers=h) as c:
                for _ in range(3):
                    got.append([c.post("/sessions/a/recall", json=q).json().get("text") for q in queries])

        def other(i):
            with httpx.Client(base_url=url, timeout=120, headers=h) as c:
                n = 0
                while not stop.is_set():
                    r = c.get("/sessions/b/memory")
                    r2 = c.post("/sessions/import", params={"session_id": f"copy{i}-{n}"}, json=exported)
                    if r.status_code != 200 or r2.status_code != 201:
                        failures.append((r.status_code, r2.status_code))
                    n += 1

        threads = [threading.Thread(target=recaller) for _ in range(2)]
        others = [threading.Thread(target=other, args=(i,)) for i in range(2)]
        for t in threads + others:
            t.start()
        for t in threads:
            t.join()
        stop.set()
        for t in others:
            t.join()
    assert failures == []
    assert len(got) == 6 and all(g == alone for g in got)


def _serve(store: str, port: int) -> subprocess.Popen:
    """`r3mem serve` on 127.0.0.1:port over `store`, tiny model, in a subprocess."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "R3MEM_BASE_MODEL": "tiny-llama", "R3MEM_ADMIN_TOKEN": ADMIN, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "r3mem.cli.main", "serve", "--store", store, "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def test_serve_stops_gracefully_without_losing_acknowledged_writes(tmp_path):
    db, port = tmp_path / "served.db", free_port()
    proc = _serve(str(db), port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url, 90, lambda: proc.stderr.read().decode())
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


# ----------------------------------------------------------------------------------- hardening (issue 13)


def _exported(client, alice, sid="src", texts=("Henry Sibley built a stone house.",)):
    client.post("/sessions", json={"session_id": sid}, headers=alice)
    for text in texts:
        assert client.post(f"/sessions/{sid}/write", json={"text": text}, headers=alice).status_code == 201
    return client.get(f"/sessions/{sid}/export", headers=alice).json()


def post_json(client, path, data, headers, **kw):
    """POST `data` as ASCII JSON (httpx's json= cannot send a lone surrogate, NaN or Infinity)."""
    return client.post(
        path, content=json.dumps(data).encode(), headers={**headers, "content-type": "application/json"}, **kw
    )


def _session_ids(client, headers):
    r = client.get("/sessions", headers=headers)
    assert r.status_code == 200, r.text  # the list always loads
    return [s["session_id"] for s in r.json()["sessions"]]


def test_session_ids_must_be_reachable_in_paths(client, alice):
    for bad in ("a/b", "../etc", "..", ".", ".hidden", "a b", "é", "x" * 129):
        assert_error(client.post("/sessions", json={"session_id": bad}, headers=alice), 422, "invalid_request",
                     "session_id")
    exported = _exported(client, alice, "sa")
    assert_error(client.post("/sessions/import", params={"session_id": "a/b"}, json=exported, headers=alice), 422,
                 "invalid_request", "session_id")
    renamed = dict(exported, session=dict(exported["session"], session_id="x/y"))
    assert_error(client.post("/sessions/import", json=renamed, headers=alice), 422, "invalid_request", "session_id")
    assert _session_ids(client, alice) == ["sa"]
    # %2F is decoded before routing: it must not reach another route (here: the turns of "sa")
    assert_error(client.get("/sessions/sa%2Fturns", headers=alice), 404, "not_found", "%2F")
    assert_error(client.delete("/sessions/sa%2f", headers=alice), 404, "not_found")
    ok = "A-z_0.9~x"
    assert client.post("/sessions", json={"session_id": ok}, headers=alice).status_code == 201
    for method, path in [("get", ""), ("get", "/turns"), ("get", "/export"), ("delete", "")]:
        assert client.request(method, f"/sessions/{ok}{path}", headers=alice).status_code in (200, 204), path
    schema = client.get("/openapi.json").json()["components"]["schemas"]["SessionIn"]["properties"]
    assert "pattern" in str(schema["session_id"]) and "32 levels" in schema["meta"]["description"]


def test_meta_that_cannot_be_served_is_refused_before_storing(client, alice, store):
    deep: dict = {}
    for _ in range(300):
        deep = {"x": deep}
    json_headers = {**alice, "content-type": "application/json"}
    cases = [json.dumps({"session_id": "deep", "meta": deep}).encode(),
             b'{"session_id": "sur", "meta": {"x": "\\ud800"}}',
             b'{"meta": {"x": ["\\udfff"]}}',  # no id: the client would never learn the random one
             b'{"session_id": "nan", "meta": {"x": NaN}}']
    for body in cases:
        assert_error(client.post("/sessions", content=body, headers=json_headers), 400, "invalid_request", "meta")
    exported = _exported(client, alice, "src")
    for meta in (deep, {"x": "\ud800"}):
        bad = dict(exported, session=dict(exported["session"], meta=meta))
        assert_error(post_json(client, "/sessions/import", bad, alice, params={"session_id": "imp"}), 400,
                     "invalid_request", "meta")
    assert _session_ids(client, alice) == ["src"] and client.get("/sessions/src", headers=alice).status_code == 200
    with pytest.raises(ValueError, match="bytes as JSON"):
        store.create_session("alice", "big", meta={"x": "y" * 70_000})


def _set(data, path, value):
    """A deep copy of `data` with the item at `path` (keys and indices) replaced by `value`."""
    data = json.loads(json.dumps(data))
    target = data
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return data


def test_malformed_imports_are_4xx_and_keep_the_connection(client, alice):
    exported = _exported(client, alice, "src")
    cases = [
        (("turns", 0, "index"), 2**63, "turns[0].index"), (("turns", 0, "index"), 10**30, "turns[0].index"),
        (("turns", 0, "index"), 0, "turns[0].index"), (("session", "turn_count"), 10**30, "turn_count"),
        (("memory", "version"), 2**63, "memory.version"), (("memory", "version"), 0, "memory.version"),
        (("memory", "slots", 0, "start"), 10**30, "slot 0 start"),
        (("memory", "slots", 0, "turn_id"), -1, "slot 0 turn_id"),
        (("memory", "through_turn"), 10**9, "through_turn"),  # beyond the last turn: later writes would be skipped
        (("turns", 0, "text"), "\ud800", "turns[0].text"), (("turns", 0, "speaker"), 7, "speaker"),
        (("turns",), {"a": 1}, "turns"), (("memory",), [], "memory"), (("session",), None, "session"),
    ]
    for path, value, words in cases:
        r = post_json(client, "/sessions/import", _set(exported, path, value), alice, params={"session_id": "imp"})
        assert_error(r, 400, "invalid_request", words)
        assert "connection" not in r.headers  # no 500 (after which the server drops the keep-alive connection)
    no_id = _set(exported, ("session",), {k: v for k, v in exported["session"].items() if k != "session_id"})
    assert_error(client.post("/sessions/import", json=no_id, headers=alice), 400, "invalid_request", "session_id")
    assert _session_ids(client, alice) == ["src"]


def test_import_refuses_infinite_timestamps(client, alice):
    exported = _exported(client, alice, "src")
    json_headers = {**alice, "content-type": "application/json"}
    for path in (("session", "created_at"), ("memory", "updated_at"), ("turns", 0, "timestamp")):
        for token in ("Infinity", "1e999", "-Infinity", "NaN"):
            body = json.dumps(_set(exported, path, "@@")).replace('"@@"', token).encode()
            r = client.post("/sessions/import", params={"session_id": "imp"}, content=body, headers=json_headers)
            assert_error(r, 400, "invalid_request", ".".join(str(p) for p in path).replace(".0.", "[0]."))
    assert _session_ids(client, alice) == ["src"]


def _edited_blob(engine, blob_b64, **changes):
    """The memory with `changes` applied, re-encoded with a correct checksum (as an attacker could)."""
    from dataclasses import replace

    mem = engine.from_bytes(base64.b64decode(blob_b64))
    return base64.b64encode(engine.to_bytes(replace(mem, **changes))).decode()


def test_import_refuses_memories_the_engine_cannot_use(client, alice, engine):
    import torch

    exported = _exported(client, alice, "src")
    state = engine.new_memory().doc_state
    vocab = engine.memory_spec.vocab
    for changes, words in [
        ({"doc_state": torch.zeros(*state.shape[:-1], state.shape[-1] + 1, dtype=state.dtype)}, "shape"),
        ({"doc_state": state.float()}, "float32"),
        ({"pending_ids": [10**12]}, "vocabulary"),
        ({"pending_ids": [-5]}, "vocabulary"),
        ({"pending_ids": [vocab]}, "vocabulary"),
    ]:
        bad = _set(exported, ("memory", "blob_b64"), _edited_blob(engine, exported["memory"]["blob_b64"], **changes))
        bad["memory"].pop("blob_sha256")
        assert_error(client.post("/sessions/import", params={"session_id": "imp"}, json=bad, headers=alice), 400,
                     "invalid_request", words)
    assert _session_ids(client, alice) == ["src"]


def test_import_keeps_another_engines_memory_and_rebuilds_it_from_the_turns(client, alice, engine):
    exported = _exported(client, alice, "src", texts=("Henry Sibley built a stone house.", "The river froze."))
    foreign = R3Mem.from_base(tiny_model("gpt2"), tiny_tokenizer(), tiny_cfg())
    data = _set(exported, ("memory", "blob_b64"), base64.b64encode(foreign.to_bytes(foreign.new_memory())).decode())
    data["memory"].pop("blob_sha256")
    r = client.post("/sessions/import", params={"session_id": "imp"}, json=data, headers=alice)
    assert r.status_code == 201, r.text
    rec = client.post("/sessions/imp/recall", json={"index": 1}, headers=alice).json()  # rebuilt before it is read
    assert rec["slots"][0]["turn_id"] == 2 and rec["slots"][0]["key"] == "p1"
    info = client.get("/sessions/imp", headers=alice).json()["memory"]
    assert info["through_turn"] == 2 and info["version"] == exported["memory"]["version"] + 1


def test_a_write_that_fails_stores_no_turn(client, alice, engine, store):
    import torch

    client.post("/sessions", json={"session_id": "s"}, headers=alice)
    state = engine.new_memory().doc_state
    broken = engine.to_bytes(
        engine.new_memory().__class__(doc_state=torch.zeros(*state.shape[:-1], 3, dtype=state.dtype))
    )
    store.put_memory("alice", "s", broken, [], through_turn=0)  # e.g. written by a buggy older release
    assert_error(
        client.post("/sessions/s/write", json={"text": "hello"}, headers=alice), 400, "invalid_request", "shape"
    )
    assert_error(client.post("/sessions/s/write", content=b'{"text": "bad \\udcff here"}',
                             headers={**alice, "content-type": "application/json"}), 422, "invalid_request", "text")
    assert client.get("/sessions/s/turns", headers=alice).json() == {"turns": []}
    assert client.get("/sessions/s", headers=alice).json()["turn_count"] == 0


def test_imported_session_keeps_writing_into_memory(client, alice):
    exported = _exported(client, alice, "src", texts=("One.", "Two."))
    version = exported["memory"]["version"]
    assert (
        client.post("/sessions/import", params={"session_id": "imp"}, json=exported, headers=alice).status_code == 201
    )
    w = client.post("/sessions/imp/write", json={"text": "Three."}, headers=alice).json()
    assert w["turn"]["index"] == 3 and w["memory_version"] == version + 1
    info = client.get("/sessions/imp", headers=alice).json()["memory"]
    assert info["through_turn"] == 3 and info["version"] == version + 1


def _mutations():
    from hypothesis import strategies as st

    edge = st.sampled_from([2**31, 2**63, 10**30, -1, 0, 10**9, float("inf"), float("-inf"), float("nan"), "\ud800",
                            "a/b", "..", "", "AAAA", "x" * 300, None, [], {}])
    odd = st.one_of(
        edge,
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
        st.lists(st.integers(), max_size=2),
        st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    )
    odd = st.one_of(edge, edge, odd)  # edges of every range most often: that is where imports broke
    paths = st.sampled_from([(), ("format",), ("format_version",), ("session",), ("session", "session_id"),
                             ("session", "meta"), ("session", "created_at"), ("session", "turn_count"), ("turns",),
                             ("turns", 0), ("turns", 0, "index"), ("turns", 0, "text"), ("turns", 0, "speaker"),
                             ("turns", 0, "timestamp"), ("memory",), ("memory", "blob_b64"), ("memory", "blob_sha256"),
                             ("memory", "version"), ("memory", "through_turn"), ("memory", "updated_at"),
                             ("memory", "slots"), ("memory", "slots", 0), ("memory", "slots", 0, "start"),
                             ("memory", "slots", 0, "level"), ("memory", "slots", 0, "turn_id")])
    return st.lists(st.tuples(paths, odd), min_size=1, max_size=3)


def test_fuzzed_imports_never_500_nor_write_partially(client, alice):
    from hypothesis import HealthCheck, given, settings

    exported = _exported(client, alice, "src")
    before = _session_ids(client, alice)

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(_mutations())
    def check(mutations):
        data = exported
        for path, value in mutations:
            data = _mutate(data, path, value)
        r = post_json(client, "/sessions/import", data, alice, params={"session_id": "fz"})
        assert r.status_code in (201, 400, 409, 422), r.text
        assert "\n" not in r.json().get("message", "")
        if r.status_code == 201:
            got = client.get("/sessions/fz", headers=alice).json()
            assert got["created_at"].endswith("Z") and got["memory"]["through_turn"] <= got["turn_count"], got
            assert client.get("/sessions/fz/export", headers=alice).status_code == 200
            assert client.delete("/sessions/fz", headers=alice).status_code == 204
        assert _session_ids(client, alice) == before

    check()


def _mutate(data, path, value):
    """`data` with the item at `path` replaced by `value` (the whole of it for `()`); unchanged when an
    earlier mutation removed the place `path` leads to."""
    if not path:
        return value
    target = data
    for key in path:
        fits = isinstance(target, dict) and isinstance(key, str) or isinstance(target, list) and isinstance(key, int)
        if (
            not fits
            or (isinstance(target, list) and key >= len(target))
            or (isinstance(target, dict) and key not in target)
        ):
            return data
        target = target[key]
    return _set(data, path, value)


PG_URL = os.environ.get("R3MEM_TEST_PG_URL")


@pytest.fixture
def pg_store_url():
    """A PostgreSQL store URL on a throw-away schema of the CI's server (see tests/test_store.py)."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(PG_URL)
    base = base.set(drivername="postgresql+psycopg") if base.drivername in ("postgresql", "postgres") else base
    name = f"r3mem_replicas_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{name}"'))
    try:
        yield base.update_query_dict({"options": f"-csearch_path={name}"}).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


@pytest.mark.skipif(not PG_URL, reason="R3MEM_TEST_PG_URL not set (eval \"$(bash scripts/ci_postgres.sh)\")")
def test_two_replicas_on_one_postgres_store(pg_store_url):
    """Two `r3mem serve` processes on one database, writes to one session through both: no lost or
    duplicated turn, the memory covers every acknowledged turn in order, versions increase."""
    with MemoryStore(pg_store_url) as store:  # schema created once, before the replicas start
        store.create_user("alice", token="alice-token")
        store.create_session("alice", "s")
    ports = [free_port(), free_port()]
    procs = [_serve(pg_store_url, port) for port in ports]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    acked, failures = [], []
    try:
        for proc, url in zip(procs, urls):
            wait_healthy(proc, url, 180, lambda p=proc: p.stderr.read().decode())

        def writer(w):
            mine = []
            with httpx.Client(timeout=120, headers=bearer("alice-token")) as c:
                for i in range(4):  # alternate replicas, as a round-robin load balancer would
                    r = c.post(f"{urls[(w + i) % 2]}/sessions/s/write", json={"text": f"writer {w} line {i}"})
                    (mine if r.status_code == 201 else failures).append(r.json())
            acked.append(mine)

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not any(t.is_alive() for t in threads), "writers did not finish"
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    assert failures == [] and sum(map(len, acked)) == 16
    turns = [a["turn"] for mine in acked for a in mine]
    assert sorted(t["index"] for t in turns) == list(range(1, 17))  # none lost, none duplicated
    for mine in acked:  # a writer's next write is covered by a strictly newer memory
        versions = [a["memory_version"] for a in mine]
        assert versions == sorted(set(versions)), versions
    with MemoryStore(pg_store_url) as store:
        texts = {t.index: t.text for t in store.list_turns("alice", "s")}
        stored = store.get_memory("alice", "s")
    assert all(texts[t["index"]] == t["text"] for t in turns) and len(texts) == 16
    assert stored.through_turn == 16 and stored.version >= max(a["memory_version"] for m in acked for a in m)
    assert [r.turn_id for r in stored.slots if r.level == "paragraph"] == list(range(1, 17))


def test_memory_detail_shows_each_slot_with_its_source(client, alice, engine):
    client.post("/sessions", json={"session_id": "s"}, headers=alice)
    assert client.get("/sessions/s/memory", headers=alice).json()["slots"] == []  # nothing written yet
    texts = ["Henry Sibley built a stone house.", "The river froze in winter."]
    for text in texts:
        client.post("/sessions/s/write", json={"text": text, "speaker": "Caroline"}, headers=alice)
    detail = client.get("/sessions/s/memory", headers=alice).json()
    exported = client.get("/sessions/s/export", headers=alice).json()
    mem = engine.from_bytes(base64.b64decode(exported["memory"]["blob_b64"]))
    assert detail["version"] == 2 and detail["through_turn"] == 2 and detail["memory_mode"] == engine.config.memory_mode
    assert detail["document"]["shape"] == list(mem.doc_state.shape)
    assert detail["document"]["bytes"] == mem.doc_state.numel() * mem.doc_state.element_size()
    paragraphs = [s for s in detail["slots"] if s["level"] == "paragraph"]
    assert [s["index"] for s in paragraphs] == list(range(len(mem.paragraphs))) and len(paragraphs) == len(texts)
    for slot, text, turn_id in zip(paragraphs, texts, (1, 2)):
        assert slot["source"].strip() == f"Caroline: {text}" and slot["turn_id"] == turn_id
        assert "".join(slot["source_tokens"]) == slot["source"] and len(slot["source_tokens"]) == slot["n_tokens"]
        # the index is the one recall takes
        recalled = client.post("/sessions/s/recall", json={"index": slot["index"]}, headers=alice).json()
        assert recalled["slots"][0]["key"] == slot["key"]
    assert_error(client.get("/sessions/s/memory"), 401, "unauthorized", "missing bearer token")
    bob = new_user(client, "bob")
    assert_error(client.get("/sessions/s/memory", headers=bob), 404, "not_found", "'s'")


def test_ui_is_served_as_static_files(client):
    page = client.get("/ui/")
    assert page.status_code == 200 and "r3mem inspector" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # no external URLs
    script = client.get("/ui/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "innerHTML" not in script.text  # stored text is only ever set as textContent


# ----------------------------------------------------------------------------------- curation and jobs


def _wait_job(client, headers, job_id, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}", headers=headers).json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def test_edit_and_delete_single_turns(client, alice):
    client.post("/sessions", json={"session_id": "s"}, headers=alice)
    for text in ("My locker code is 4711.", "Henry Sibley built a stone house.", "The river froze in winter."):
        assert client.post("/sessions/s/write", json={"text": text}, headers=alice).status_code == 201
    again = client.post("/sessions/s/write", json={"text": "the river froze in winter"}, headers=alice)
    assert again.status_code == 201 and again.json()["turn"]["index"] == 3  # deduplicated: the stored turn
    r = client.patch("/sessions/s/turns/2", json={"text": "Henry Sibley built a brick house."}, headers=alice)
    assert r.status_code == 200, r.text
    assert r.json()["turn"]["text"] == "Henry Sibley built a brick house." and r.json()["memory_version"] >= 1
    detail = client.get("/sessions/s/turns/2", headers=alice).json()
    assert [h["text"] for h in detail["history"]] == ["Henry Sibley built a stone house."]
    memory = client.get("/sessions/s/memory", headers=alice).json()
    assert any("brick" in s["source"] for s in memory["slots"]) and not any("stone" in s["source"]
                                                                              for s in memory["slots"])
    r = client.delete("/sessions/s/turns/1", headers=alice)
    assert r.status_code == 200 and r.json()["turn"]["text"] == "My locker code is 4711."
    assert [t["index"] for t in client.get("/sessions/s/turns", headers=alice).json()["turns"]] == [2, 3]
    assert "4711" not in client.get("/sessions/s/export", headers=alice).text
    assert "4711" not in client.get("/sessions/s/memory", headers=alice).text
    recalled = client.post("/sessions/s/recall", json={"query": "locker code", "top_k": 4}, headers=alice).json()
    assert all(s["turn_id"] in (2, 3) for s in recalled["slots"])
    # bad input: a clear 4xx and nothing changed
    assert_error(client.delete("/sessions/s/turns/1", headers=alice), 404, "not_found", "turn 1")
    assert_error(client.patch("/sessions/s/turns/9", json={"text": "x"}, headers=alice), 404, "not_found", "turn 9")
    assert client.patch("/sessions/s/turns/2", json={"text": ""}, headers=alice).status_code == 422
    assert client.get("/sessions/s/turns/0", headers=alice).status_code == 422
    bob = new_user(client, "bob")
    assert_error(client.delete("/sessions/s/turns/2", headers=bob), 404, "not_found")
    assert [t["text"] for t in client.get("/sessions/s/turns", headers=alice).json()["turns"]] == [
        "Henry Sibley built a brick house.", "The river froze in winter."]


def test_writes_in_background_jobs_with_status(client, alice):
    client.post("/sessions", json={"session_id": "s"}, headers=alice)
    r = client.post("/sessions/s/write?wait=false", json={"text": "Traders came by canoe."}, headers=alice)
    assert r.status_code == 202, r.text
    job = r.json()["job"]
    assert r.headers["location"] == f"/jobs/{job['job_id']}" and r.json()["memory_version"] is None
    assert job["kind"] == "write" and job["turn_index"] == 1 and job["state"] in ("queued", "running", "done")
    done = _wait_job(client, alice, job["job_id"])
    assert done["state"] == "done" and (done["done"], done["total"]) == (1, 1)
    session = client.get("/sessions/s", headers=alice).json()
    assert session["memory"]["version"] == done["memory_version"] and session["memory"]["through_turn"] == 1
    assert [j["job_id"] for j in client.get("/jobs?session_id=s", headers=alice).json()["jobs"]] == [job["job_id"]]
    bob = new_user(client, "bob")
    assert_error(client.get(f"/jobs/{job['job_id']}", headers=bob), 404, "not_found", "job")
    assert_error(client.delete(f"/jobs/{job['job_id']}", headers=bob), 404, "not_found", "job")
    assert client.get("/jobs", headers=bob).json() == {"jobs": []}
    assert client.delete(f"/jobs/{job['job_id']}", headers=alice).json()["state"] == "done"  # finished: kept


def test_a_long_backlog_goes_to_a_job_instead_of_the_request(engine, store):
    app = create_app(engine, store, admin_token=ADMIN, max_sync_turns=3)
    with TestClient(app) as client:
        alice = new_user(client, "alice")
        client.post("/sessions", json={"session_id": "s"}, headers=alice)
        store.append_turns("alice", "s", [("user", f"imported line {i}.") for i in range(5)])  # no memory yet
        r = client.post("/sessions/s/write", json={"text": "one more"}, headers=alice)
        assert r.status_code == 202 and r.json()["turn"]["index"] == 6  # stored at once; 6 turns to fold > 3
        done = _wait_job(client, alice, r.json()["job"]["job_id"])
        assert done["state"] == "done" and done["total"] == 6
        assert client.get("/sessions/s", headers=alice).json()["memory"]["through_turn"] == 6
        small = client.post("/sessions/s/write", json={"text": "and another"}, headers=alice)
        assert small.status_code == 201 and small.json()["memory_version"] == done["memory_version"] + 1
        r = client.delete("/sessions/s/turns/1", headers=alice)  # the rebuild folds 6 turns: a job
        assert r.status_code == 202 and _wait_job(client, alice, r.json()["job"]["job_id"])["state"] == "done"
        assert client.get("/sessions/s", headers=alice).json()["memory"]["through_turn"] == 7
    with pytest.raises(ValueError, match="max_sync_turns must be an int >= 0"):
        create_app(engine, store, max_sync_turns=-1)


def test_a_restarted_service_catches_up_every_session_left_behind(engine, store):
    """Jobs live in the process: turns stored while (or before) a service ran, whose catch-up was lost, are
    folded by the jobs a new service queues when it starts."""
    store.create_user("alice", token="alice-token-0123456789")
    for sid, n in (("behind", 3), ("reset", 2), ("current", 1), ("empty", 0)):
        store.create_session("alice", sid)
        store.append_turns("alice", sid, [("user", f"{sid} line {i}.") for i in range(n)])
    ChatAgent(engine, store, "alice", "current").sync()
    ChatAgent(engine, store, "alice", "reset").sync()
    store.edit_turn("alice", "reset", 1, "an edited line.")  # the memory is reset, its rebuild not run
    assert store.sessions_behind() == [("alice", "behind"), ("alice", "reset")]
    h = bearer("alice-token-0123456789")
    with TestClient(create_app(engine, store, admin_token=ADMIN)) as client:
        jobs = client.get("/jobs", headers=h).json()["jobs"]
        assert sorted((j["session_id"], j["kind"]) for j in jobs) == [("behind", "sync"), ("reset", "sync")]
        for j in jobs:
            assert _wait_job(client, h, j["job_id"])["state"] == "done"
        assert [client.get(f"/sessions/{sid}", headers=h).json()["memory"]["through_turn"]
                for sid in ("behind", "reset", "current")] == [3, 2, 1]
    assert store.sessions_behind() == []


def test_times_are_iso_8601_utc_even_far_from_now(client, alice, store):
    client.post("/sessions", json={"session_id": "t"}, headers=alice)
    store.append_turn("alice", "t", "late", timestamp=253402300799.0)  # the last second of year 9999
    store.append_turn("alice", "t", "early", timestamp=-62135596800.0)  # the first of year 1
    got = [t["timestamp"] for t in client.get("/sessions/t/turns", headers=alice).json()["turns"]]
    assert got == ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z"]  # seconds, not read as milliseconds
